//! Cross-cutting layers: authentication, rate limits, and the observer
//! that turns every response into a request log row, an error log row where
//! it failed, and metrics.

use std::any::Any;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Response, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use chrono::Utc;

use super::error::{ApiError, Code, ErrorRecord};
use super::extract::AuthOutcome;
use super::{AppState, Cached, FunctionName, RequestId};
use crate::auth::AuthError;
use crate::store::{ErrorLog, LogRecord, RateDecision, RequestLog};

const MINUTE: Duration = Duration::from_secs(60);

/// Verifies the bearer token, if any, and leaves the outcome for the
/// `Authenticated` extractor and the rate limiter.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response<Body> {
    let outcome = match request.headers().get(header::AUTHORIZATION) {
        None => Err(AuthError::Missing),
        Some(value) => match value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            Some(token) => state.keys.verify(token.trim()),
            None => Err(AuthError::Invalid),
        },
    };
    let subject = outcome.as_ref().ok().map(|p| Subject(p.subject.clone()));
    request.extensions_mut().insert(AuthOutcome(outcome));
    let mut response = next.run(request).await;
    if let Some(subject) = subject {
        response.extensions_mut().insert(subject);
    }
    response
}

/// The authenticated subject of a request, for the request log.
#[derive(Clone, Debug)]
pub struct Subject(pub String);

/// `/api/v1/execute`: per subject with a valid token, per client IP
/// without one.
pub async fn rate_limit_execute(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response<Body> {
    let limits = &state.config.rate_limits;
    let limit = match subject(&request) {
        Some(_) => limits.execute_per_subject,
        None => limits.execute_per_anonymous_ip,
    };
    let key = caller_key("execute", &request);
    limit_then_run(&state, &key, limit, request, next).await
}

/// `/api/v1/initialize`: per subject (per IP without a valid token, which
/// is refused anyway). Builds have a tighter limit of their own, checked by
/// the handler, which knows whether the request carries a source.
pub async fn rate_limit_initialize(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response<Body> {
    let limit = state.config.rate_limits.initialize_per_subject;
    let key = caller_key("initialize", &request);
    limit_then_run(&state, &key, limit, request, next).await
}

/// `/api/v1/functions`: per subject (per IP without a valid token, which
/// is refused anyway).
pub async fn rate_limit_functions(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response<Body> {
    let limit = state.config.rate_limits.functions_per_subject;
    let key = caller_key("functions", &request);
    limit_then_run(&state, &key, limit, request, next).await
}

/// The limiter's key of a request to `endpoint`: its subject's, or its
/// client IP's without a valid token.
fn caller_key(endpoint: &str, request: &Request) -> String {
    match subject(request) {
        Some(sub) => format!("{endpoint}:sub:{sub}"),
        None => format!("{endpoint}:ip:{}", client_ip(request).unwrap_or_default()),
    }
}

async fn limit_then_run(
    state: &AppState,
    key: &str,
    limit: u32,
    request: Request,
    next: Next,
) -> Response<Body> {
    match state.limiter.check(key, limit, MINUTE).await {
        Ok(RateDecision::Allowed) => next.run(request).await,
        Ok(RateDecision::Limited { retry_after_secs }) => {
            ApiError::rate_limited(retry_after_secs).into_response()
        }
        // The limiter's store is down: serve rather than refuse everyone.
        Err(e) => {
            tracing::warn!("rate limiter unavailable, request let through: {e}");
            next.run(request).await
        }
    }
}

fn subject(request: &Request) -> Option<String> {
    match request.extensions().get::<AuthOutcome>() {
        Some(AuthOutcome(Ok(principal))) => Some(principal.subject.clone()),
        _ => None,
    }
}

fn client_ip(request: &Request) -> Option<String> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string())
}

/// Logs and measures every request. The route template is the endpoint
/// label: bounded, unlike the path with its ids.
pub async fn observe(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().to_string();
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let client_ip = client_ip(&request);
    // The caller's own id, for requests refused before a handler sets one
    // (the log writer cuts it to its column, as every logged value).
    let claimed_request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    let response = next.run(request).await;

    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let metrics = &state.metrics;
    metrics
        .http_requests
        .with_label_values(&[endpoint.as_str(), &status.to_string()])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[endpoint.as_str()])
        .observe(elapsed.as_secs_f64());

    let extensions = response.extensions();
    let request_id = extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .or(claimed_request_id);
    let user_id = extensions.get::<Subject>().map(|s| s.0.clone());
    let language_title = extensions.get::<FunctionName>().map(|f| f.0.clone());
    let cached = extensions.get::<Cached>().map(|c| c.0);
    let error = extensions.get::<ErrorRecord>();
    let duration_ms = elapsed.as_secs_f64() * 1e3;
    // The access log: one line per request, built only from what the
    // handlers chose to expose — never headers, so never a token.
    tracing::info!(
        target: "lambda_host::access",
        request_id = request_id.as_deref(),
        method = method.as_str(),
        endpoint = endpoint.as_str(),
        status,
        duration_ms = (duration_ms * 1e3).round() / 1e3,
        language_title = language_title.as_deref(),
        user_id = user_id.as_deref(),
        cached,
        error_code = error.map(|e| e.code),
        "request"
    );
    let now = Utc::now();
    // Time-ordered (UUIDv7), so its index in the request log grows at one
    // end instead of at a random page per row: the log database does less
    // work per request.
    let request_log_id = uuid::Uuid::now_v7();
    // The request row first: the error row refers to it.
    state.logs.record(LogRecord::Request(RequestLog {
        id: request_log_id,
        request_id: request_id.clone(),
        method,
        endpoint: endpoint.clone(),
        status,
        duration_ms,
        user_id,
        language_title,
        cached,
        client_ip,
        created_at: now,
    }));
    if let Some(error) = error {
        if let Some(cause) = &error.cause {
            tracing::error!(request_id = ?request_id, %endpoint, "internal error: {cause}");
        }
        state.logs.record(LogRecord::Error(ErrorLog {
            request_log_id,
            request_id,
            endpoint,
            code: error.code.to_owned(),
            message: error.message.clone(),
            details: error.details.clone(),
            created_at: now,
        }));
    }
    response
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        Code::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

/// A panic in a handler: a bug of ours, answered as an internal error.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    tracing::error!("a request handler panicked: {message}");
    ApiError::internal("a request handler panicked").into_response()
}
