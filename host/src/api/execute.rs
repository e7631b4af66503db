//! `POST /api/v1/execute/{request_id}`: run a session's function once, or
//! answer from the result cache.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{Authenticated, JsonBody};
use super::{AppState, Cached, tagged};
use crate::sessions::{self, CachePolicy};

#[derive(Default, Deserialize, ToSchema)]
pub struct ExecuteRequest {
    /// The function's input: a JSON object.
    #[serde(default)]
    #[schema(value_type = Object, required = true)]
    params: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct ExecuteResponse {
    request_id: String,
    language_title: String,
    /// Milliseconds, from the request to the result.
    execution_time: u64,
    /// Whether the result came from the result cache.
    cached: bool,
    /// What the function returned: any JSON.
    result: Value,
}

/// The largest `max-age` taken seriously; beyond it the header is refused
/// (a value this large is a mistake, not a wish).
const MAX_AGE_LIMIT_SECS: u64 = 10 * 365 * 24 * 3600;

/// The cache policy `X-Cache-Control` asks for (the use case caps
/// `max-age` by the server's maximum; `max_ttl` is for the message).
fn cache_policy(headers: &HeaderMap, max_ttl: Duration) -> Result<CachePolicy, ApiError> {
    let Some(value) = headers.get("x-cache-control") else {
        return Ok(CachePolicy::Default);
    };
    let value = value
        .to_str()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if value == "no-cache" {
        return Ok(CachePolicy::NoCache);
    }
    if let Some(seconds) = value.strip_prefix("max-age=")
        && let Ok(seconds) = seconds.parse::<u64>()
        && (1..=MAX_AGE_LIMIT_SECS).contains(&seconds)
    {
        return Ok(CachePolicy::MaxAge(Duration::from_secs(seconds)));
    }
    Err(ApiError::invalid_request(format!(
        "X-Cache-Control is `no-cache` or `max-age=<seconds>` (0 < seconds <= {MAX_AGE_LIMIT_SECS}; \
         results are kept at most {} s)",
        max_ttl.as_secs()
    )))
}

/// Runs a session's function once, or answers from the result cache.
#[utoipa::path(
    post,
    path = "/api/v1/execute/{request_id}",
    tag = "sessions",
    params(
        ("request_id" = String, Path, description = "The session id from initialize"),
        ("X-Cache-Control" = Option<String>, Header, nullable = false, description = "`no-cache` or `max-age=<seconds>` (capped by the server's maximum)", pattern = "^(no-cache|max-age=[1-9][0-9]{0,7})$"),
    ),
    request_body(content = ExecuteRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The function's result", body = ExecuteResponse),
        (status = 400, description = "INVALID_PARAMS or INVALID_REQUEST", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: no execute scope for the language", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such session of the caller's, or it expired", body = ErrorBody),
        (status = 413, description = "INVALID_REQUEST: the body is too large", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED: too many executions, or the caller's share of the slots is in use", body = ErrorBody),
        (status = 500, description = "RUNTIME_ERROR (the function failed) or INTERNAL_ERROR", body = ErrorBody),
        (status = 503, description = "OVERLOADED: no execution slot became free in time", body = ErrorBody),
        (status = 504, description = "TIMEOUT: the function ran past its deadline", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn execute(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(request_id): Path<String>,
    headers: HeaderMap,
    body: Result<JsonBody<ExecuteRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let fail = |e: ApiError| e.with_request_id(request_id.clone());
    let JsonBody(body) = body.map_err(fail)?;
    let cache = cache_policy(&headers, state.config.cache_max_ttl).map_err(fail)?;
    let executed = state
        .sessions
        .execute(sessions::ExecuteRequest {
            session_id: &request_id,
            caller: &principal,
            params: body.params,
            cache,
        })
        .await
        .map_err(|e| fail(e.into()))?;
    let session = executed.session;
    let body = Json(ExecuteResponse {
        request_id: session.request_id.clone(),
        language_title: session.language_title.to_string(),
        execution_time: started.elapsed().as_millis() as u64,
        cached: executed.cached,
        result: executed.result,
    });
    let mut response = tagged(body, session.request_id, session.language_title.to_string());
    response.extensions_mut().insert(Cached(executed.cached));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_cache_control_is_parsed_strictly() {
        let day = Duration::from_secs(86_400);
        let mut headers = HeaderMap::new();
        assert_eq!(cache_policy(&headers, day).unwrap(), CachePolicy::Default);
        headers.insert("x-cache-control", "no-cache".parse().unwrap());
        assert_eq!(cache_policy(&headers, day).unwrap(), CachePolicy::NoCache);
        headers.insert("x-cache-control", "max-age=60".parse().unwrap());
        assert_eq!(
            cache_policy(&headers, day).unwrap(),
            CachePolicy::MaxAge(Duration::from_secs(60))
        );
        for bad in [
            "max-age=0",
            "max-age=-1",
            "max-age=soon",
            "forever",
            "max-age=18446744073709551615",
            "max-age=99999999999999999999999",
        ] {
            headers.insert("x-cache-control", bad.parse().unwrap());
            assert!(cache_policy(&headers, day).is_err(), "{bad}");
        }
    }
}
