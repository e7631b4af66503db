//! `POST /api/v1/execute/{request_id}`: run a session's function once, or
//! answer from the result cache.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{Authenticated, JsonBody};
use super::{AppState, Cached, owned_session, tagged};
use crate::digest::Digest;
use crate::language::{Language, LanguageTitle};
use crate::runtime::Invocation;
use crate::store::{LogRecord, Session};
use crate::telemetry::ExecutionOutcome;

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

/// What `X-Cache-Control` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CachePolicy {
    Default,
    NoCache,
    MaxAge(Duration),
}

/// The largest `max-age` taken seriously; beyond it the header is refused
/// (a value this large is a mistake, not a wish).
const MAX_AGE_LIMIT_SECS: u64 = 10 * 365 * 24 * 3600;

/// The cache policy a request asks for; `max_ttl` caps what `max-age` sets.
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
        return Ok(CachePolicy::MaxAge(
            Duration::from_secs(seconds).min(max_ttl),
        ));
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
    let fail = |e: ApiError| e.with_request_id(request_id.clone());
    let JsonBody(body) = body.map_err(fail)?;
    let started = Instant::now();

    let session = owned_session(&state, &request_id, &principal.subject)
        .await
        .map_err(fail)?;
    let language = LanguageTitle::parse(&session.language_title)
        .map(|lt| lt.language())
        .map_err(|e| fail(ApiError::internal(e)))?;
    if !principal.may_execute(language) {
        return Err(fail(ApiError::forbidden(format!(
            "the token does not grant execute:{language} or execute:all"
        ))));
    }
    let params = match body.params {
        Some(params @ Value::Object(_)) => params,
        Some(_) => {
            return Err(fail(ApiError::invalid_params(
                "params must be a JSON object",
            )));
        }
        None => {
            return Err(fail(ApiError::invalid_params(
                "params is required: a JSON object",
            )));
        }
    };
    let policy = cache_policy(&headers, state.config.cache_max_ttl).map_err(fail)?;
    let key = cache_key(&session, &params);

    let cached = if policy == CachePolicy::NoCache {
        None
    } else {
        lookup(&state, &key).await
    };
    let (result, from_cache) = match cached {
        Some(result) => (result, true),
        None => {
            let outcome = run(&state, &session, language, &params).await;
            end_or_extend(&state, &session).await;
            let result = outcome.map_err(fail)?;
            let ttl = match policy {
                CachePolicy::MaxAge(ttl) => ttl,
                _ => state.config.cache_ttl,
            };
            if let Err(e) = state.cache.put(&key, &result, ttl).await {
                tracing::warn!("result cache unavailable, result not stored: {e}");
            }
            (result, false)
        }
    };
    if from_cache {
        end_or_extend(&state, &session).await;
    }

    let body = Json(ExecuteResponse {
        request_id: session.request_id.clone(),
        language_title: session.language_title.clone(),
        execution_time: started.elapsed().as_millis() as u64,
        cached: from_cache,
        result,
    });
    let mut response = tagged(body, session.request_id, session.language_title);
    response.extensions_mut().insert(Cached(from_cache));
    Ok(response)
}

/// A cached result; a cache that cannot be reached is a miss, not an error.
async fn lookup(state: &AppState, key: &str) -> Option<Value> {
    match state.cache.get(key).await {
        Ok(Some(result)) => {
            state.metrics.cache_hits.inc();
            Some(result)
        }
        Ok(None) => {
            state.metrics.cache_misses.inc();
            None
        }
        Err(e) => {
            tracing::warn!("result cache unavailable, executing: {e}");
            state.metrics.cache_misses.inc();
            None
        }
    }
}

async fn run(
    state: &AppState,
    session: &Session,
    language: Language,
    params: &Value,
) -> Result<Value, ApiError> {
    let function = state
        .functions
        .load(
            &session.language_title,
            &session.build_digest,
            &session.component_digest,
        )
        .await?;
    let invocation = Invocation {
        request_id: session.request_id.clone(),
        language_title: session.language_title.clone(),
        params: params.clone(),
        context: session.context.clone(),
        caller: session.owner.clone(),
    };
    let timeout = Duration::from_millis(session.timeout_ms);
    let started = Instant::now();
    let outcome = state
        .functions
        .runtime()
        .invoke(&function, &invocation, Some(timeout))
        .await;
    let label = match &outcome {
        Ok(_) => ExecutionOutcome::Ok,
        Err(e) => e.outcome(),
    };
    state.metrics.count_execution(language, label);
    state
        .metrics
        .execution_duration
        .with_label_values(&[language.as_str()])
        .observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok(execution) => {
            for line in &execution.logs {
                tracing::debug!(request_id = %session.request_id, level = line.level, "guest: {}", line.message);
            }
            Ok(execution.result)
        }
        Err(e) => Err(e.into()),
    }
}

/// Counts the execution on the session, and ends a session that asked not
/// to be retained.
async fn end_or_extend(state: &AppState, session: &Session) {
    let at = Utc::now();
    let stored = if session.retain_session {
        state.sessions.record_execution(session, at).await
    } else {
        state.sessions.remove(session).await.map(|()| None)
    };
    let counted = match stored {
        Ok(Some(counted)) => counted,
        // Removed (not retained, or gone meanwhile), or the store failed:
        // the durable record still gets this execution.
        outcome => {
            if let Err(e) = outcome {
                tracing::warn!(request_id = %session.request_id, "cannot count the execution on the session: {e}");
            }
            let mut counted = session.clone();
            counted.execution_count += 1;
            counted.last_executed_at = Some(at);
            counted
        }
    };
    state.logs.record(LogRecord::Session(counted));
}

/// The cache key of a result: everything the result depends on or belongs
/// to — the function version, the caller (an entry is never served to
/// another user), the session's context and the params, the JSON in a
/// canonical form (object keys sorted) so `{"a":1,"b":2}` and
/// `{"b":2,"a":1}` share an entry.
pub fn cache_key(session: &Session, params: &Value) -> String {
    let context = canonical_json(&session.context);
    let params = canonical_json(params);
    format!(
        "result:{}",
        Digest::of_fields([
            session.component_digest.as_bytes(),
            session.owner.as_bytes(),
            context.as_bytes(),
            params.as_bytes(),
        ])
    )
}

fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let fields: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical_json(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session(version: &str, owner: &str, context: Value) -> Session {
        let now = Utc::now();
        Session {
            request_id: "r".into(),
            language_title: "rust-f".into(),
            owner: owner.into(),
            build_digest: "b".into(),
            component_digest: version.into(),
            context,
            timeout_ms: 1000,
            retain_session: true,
            created_at: now,
            expires_at: now,
            execution_count: 0,
            last_executed_at: None,
        }
    }

    #[test]
    fn the_cache_key_ignores_key_order_but_not_values_versions_callers_or_contexts() {
        let v1 = session("v1", "alice", json!({ "k": 1 }));
        let a = cache_key(&v1, &json!({ "a": 1, "b": { "x": [1, 2], "y": null } }));
        let b = cache_key(&v1, &json!({ "b": { "y": null, "x": [1, 2] }, "a": 1 }));
        assert_eq!(a, b);
        let params = json!({ "a": 1, "b": { "x": [1, 2], "y": null } });
        assert_ne!(
            a,
            cache_key(&v1, &json!({ "a": 2, "b": { "x": [1, 2], "y": null } }))
        );
        for other in [
            session("v2", "alice", json!({ "k": 1 })),
            session("v1", "mallory", json!({ "k": 1 })),
            session("v1", "alice", json!({ "k": 2 })),
        ] {
            assert_ne!(a, cache_key(&other, &params));
        }
        assert_ne!(
            cache_key(&v1, &json!({ "a": [1, 2] })),
            cache_key(&v1, &json!({ "a": [2, 1] }))
        );
    }

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
        // Capped by the server's maximum.
        headers.insert("x-cache-control", "max-age=31536000".parse().unwrap());
        assert_eq!(
            cache_policy(&headers, day).unwrap(),
            CachePolicy::MaxAge(day)
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
