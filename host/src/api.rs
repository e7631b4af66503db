//! The REST API of `shared/API.md`: [`router`] builds it over an
//! [`AppState`], so tests can drive it with or without a socket.

pub mod error;
mod execute;
mod extract;
mod functions;
mod health;
mod http_functions;
mod initialize;
mod middleware;
mod openapi;
mod sessions;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_scalar::{Scalar, Servable as _};

pub use error::{ApiError, Code};

use crate::auth::JwtKeys;
use crate::config::ServerConfig;
use crate::functions::Functions;
use crate::sessions::Sessions;
use crate::store::{LogWriter, RateLimiter, SessionStore};
use crate::telemetry::Metrics;

/// Everything a handler needs; cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct AppState {
    pub functions: Arc<Functions>,
    /// The use cases of sessions: initialize, execute, lookup.
    pub sessions: Arc<Sessions>,
    /// The live sessions' store, for health and the active-session gauge.
    pub session_store: Arc<dyn SessionStore>,
    /// The request rate limits of the middleware.
    pub limiter: Arc<dyn RateLimiter>,
    pub logs: LogWriter,
    pub keys: Arc<JwtKeys>,
    pub metrics: Arc<Metrics>,
    pub config: Arc<ServerConfig>,
}

/// The request id a response belongs to, for logs and metrics.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The function a response is about, for logs.
#[derive(Clone, Debug)]
pub struct FunctionName(pub String);

/// Whether an execute response came from the result cache, for logs.
#[derive(Clone, Copy, Debug)]
pub struct Cached(pub bool);

/// Tags a response with the session and function it is about, for the
/// request log.
fn tagged(
    response: impl axum::response::IntoResponse,
    request_id: String,
    function: String,
) -> axum::response::Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(RequestId(request_id));
    response.extensions_mut().insert(FunctionName(function));
    response
}

/// The whole API, and its OpenAPI document.
pub fn router(state: AppState) -> Router {
    router_and_document(state).0
}

/// The router and the document its handlers describe: every route is
/// registered through `routes!`, which adds the handler's entry.
pub fn router_and_document(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let execute = OpenApiRouter::new()
        .routes(routes!(execute::execute))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::rate_limit_execute,
        ));
    let functions = OpenApiRouter::new()
        .routes(routes!(functions::list))
        .routes(routes!(functions::detail))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::rate_limit_functions,
        ));
    let initialize = OpenApiRouter::new()
        .routes(routes!(initialize::initialize))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::rate_limit_initialize,
        ));
    // Any method reaches an HTTP function; the document lists the usual ones.
    let http_functions = OpenApiRouter::new()
        .route(
            "/fn/{language_title}/{*path}",
            axum::routing::any(http_functions::serve),
        )
        .route(
            "/fn/{language_title}",
            axum::routing::any(http_functions::serve_root),
        )
        .route(
            "/fn/{language_title}/",
            axum::routing::any(http_functions::serve_root),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::rate_limit_execute,
        ));
    let api = OpenApiRouter::new()
        .merge(initialize)
        .routes(routes!(sessions::get))
        .merge(execute)
        .merge(http_functions)
        .merge(functions)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::authenticate,
        ));
    let (routes, mut document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(api)
        .routes(routes!(health::health))
        .routes(routes!(health::metrics))
        .split_for_parts();
    // The catch-all route of HTTP functions is documented apart: its axum
    // path (`{*path}`) is not an OpenAPI path.
    document.merge(http_functions::Document::openapi());
    // The document describes itself too; the route serves it from here.
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let served = openapi::Document(Arc::new(document.clone()));
    let docs: Router<AppState> = Scalar::with_url("/docs", document.clone()).into();
    let router = routes
        .route(
            "/api/v1/openapi.json",
            get(openapi::document).with_state(served),
        )
        .merge(docs)
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        // Inside the observer, so a panic is logged as the 500 it becomes.
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::observe,
        ))
        .layer(cors(&state.config))
        .with_state(state);
    (router, document)
}

fn cors(config: &ServerConfig) -> CorsLayer {
    let origins = if config.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("language-title"),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-cache-control"),
        ])
        .max_age(Duration::from_secs(86400))
}
