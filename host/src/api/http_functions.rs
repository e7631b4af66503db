//! `ANY /fn/{language_title}/{*path}`: a request handed to an HTTP function
//! (a `wasi:http/proxy` component), its response streamed back.
//!
//! What the guest sees: the method, `/<path>?<query>` under the host it was
//! called at, the headers except the caller's `Authorization` (a token of
//! the platform is not the function's to read or replay), and the body,
//! capped like every body of the API. The same bearer scopes, slots,
//! deadline, memory cap and metrics as `execute` apply.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;

use super::error::{ApiError, ErrorBody};
use super::extract::Authenticated;
use super::{AppState, FunctionName};
use crate::language::LanguageTitle;
use crate::telemetry::ExecutionOutcome;

/// The OpenAPI entry of the catch-all route.
#[derive(utoipa::OpenApi)]
#[openapi(paths(serve))]
pub struct Document;

/// Serves a request with an HTTP function.
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/fn/{language_title}/{path}",
    tag = "http functions",
    params(
        ("language_title" = String, Path, description = "The HTTP function, e.g. `wasm-hello`", pattern = "^(nodejs|python|rust|wasm)-[a-z0-9_-]{1,64}$"),
        ("path" = String, Path, description = "The rest of the path, handed to the function as `/<path>` with the query string"),
    ),
    request_body(content = Vec<u8>, content_type = "*/*", description = "Any body, up to the server's body limit; streamed to the function"),
    responses(
        (status = 200, description = "The function's own response: any status, headers and body it sets"),
        (status = 400, description = "INVALID_REQUEST: a malformed language title or path", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: no execute scope for the language", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such function, or it is a JSON function (call it with execute)", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED: the caller's share of the slots is in use", body = ErrorBody),
        (status = 500, description = "RUNTIME_ERROR: the function trapped, ran out of memory or set no response", body = ErrorBody),
        (status = 503, description = "OVERLOADED: no execution slot became free in time", body = ErrorBody),
        (status = 504, description = "TIMEOUT: the function ran past its deadline before its response began", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn serve(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path((language_title, _path)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    serve_function(state, principal, language_title, request).await
}

/// `/fn/{language_title}` without a path: the function's root, `/`.
pub async fn serve_root(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(language_title): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    serve_function(state, principal, language_title, request).await
}

async fn serve_function(
    state: AppState,
    principal: crate::auth::Principal,
    language_title: String,
    request: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let language_title = LanguageTitle::parse(&language_title)
        .map_err(|e| ApiError::invalid_request(e.to_string()))?;
    let language = language_title.language();
    if !principal.may_execute(language) {
        return Err(ApiError::forbidden(format!(
            "this token has no execute scope for {language}"
        )));
    }
    let version = state
        .functions
        .current_version(&language_title)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no function {language_title}")))?;
    let executable = state
        .functions
        .executable(
            &language_title,
            version.build_digest,
            version.component_digest,
        )
        .await?;
    let request = for_the_guest(request, state.config.body_limit_bytes)?;
    // The deadline of an execute without `timeout_ms`.
    let outcome = state
        .functions
        .runtime()
        .serve_http(
            executable.function,
            &language_title.to_string(),
            &version.scope,
            &principal.subject,
            request,
            None,
        )
        .await;
    let label = match &outcome {
        Ok(_) => ExecutionOutcome::Ok,
        Err(e) => e.outcome(),
    };
    state
        .metrics
        .count_execution(language, executable.tier, label);
    state
        .metrics
        .execution_duration
        .with_label_values(&[language.as_str(), executable.tier.as_str()])
        .observe(started.elapsed().as_secs_f64());
    let mut response = outcome?.map(Body::new).into_response();
    // For the request log: which function answered (there is no session).
    response
        .extensions_mut()
        .insert(FunctionName(language_title.to_string()));
    Ok(response)
}

type GuestRequest = axum::http::Request<wasmtime_wasi_http::WasiBody>;

/// The request as the guest gets it: `http://<host>/<path>?<query>`
/// (the host it was called at, `localhost` when the client named none),
/// without the caller's credentials.
fn for_the_guest(request: Request, body_limit: usize) -> Result<GuestRequest, ApiError> {
    let (mut parts, body) = request.into_parts();
    // The raw path after `/fn/<language-title>`, as the client sent it
    // (not decoded and encoded again), with its query.
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let after_prefix = path_and_query.strip_prefix("/fn/").unwrap_or_default();
    let rest = match after_prefix.find(['/', '?']) {
        Some(at) if after_prefix[at..].starts_with('?') => format!("/{}", &after_prefix[at..]),
        Some(at) => after_prefix[at..].to_owned(),
        None => "/".to_owned(),
    };
    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.parse::<axum::http::uri::Authority>().is_ok())
        .unwrap_or("localhost")
        .to_owned();
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(rest)
        .build()
        .map_err(|e| {
            ApiError::invalid_request(format!("a path the function cannot be given: {e}"))
        })?;
    parts.headers.remove(header::AUTHORIZATION);
    parts.headers.remove(header::COOKIE);
    if !parts.headers.contains_key(header::HOST) {
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    // Past the limit the guest's read fails (`HTTP-request-body-size`);
    // the function answers what it makes of that.
    let body = http_body_util::Limited::new(body, body_limit)
        .map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                wasmtime_wasi_http::Error::HttpRequestBodySize(Some(body_limit as u64))
            } else {
                wasmtime_wasi_http::Error::InternalError(Some(format!(
                    "reading the request body: {e}"
                )))
            }
        })
        .boxed_unsync();
    Ok(axum::http::Request::from_parts(parts, body))
}
