//! `POST /api/v1/execute/{request_id}`: run a session's function once, or
//! answer from the result cache.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{Authenticated, JsonBody};
use super::{AppState, Cached, owned_session, tagged};
use crate::digest::Digest;
use crate::language::{Language, LanguageTitle};
use crate::runtime::{self, Invocation};
use crate::store::{LogRecord, Session};

#[derive(Default, Deserialize)]
pub struct ExecuteRequest {
    #[serde(default)]
    params: Option<Value>,
}

/// What `X-Cache-Control` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CachePolicy {
    Default,
    NoCache,
    MaxAge(Duration),
}

fn cache_policy(headers: &HeaderMap) -> Result<CachePolicy, ApiError> {
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
        && seconds > 0
    {
        return Ok(CachePolicy::MaxAge(Duration::from_secs(seconds)));
    }
    Err(ApiError::invalid_request(
        "X-Cache-Control is `no-cache` or `max-age=<seconds>` (seconds > 0)",
    ))
}

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
    let policy = cache_policy(&headers).map_err(fail)?;
    let key = cache_key(&session.component_digest, &params);

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

    let body = Json(json!({
        "request_id": session.request_id,
        "language_title": session.language_title,
        "execution_time": started.elapsed().as_millis() as u64,
        "cached": from_cache,
        "result": result,
    }));
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
    };
    let timeout = Duration::from_millis(session.timeout_ms);
    let started = Instant::now();
    let outcome = state
        .functions
        .runtime()
        .invoke(&function, &invocation, Some(timeout))
        .await;
    let label = match &outcome {
        Ok(_) => "ok",
        Err(runtime::Error::Timeout(_)) => "timeout",
        Err(runtime::Error::OutOfMemory { .. }) => "out_of_memory",
        Err(runtime::Error::Internal(_) | runtime::Error::InvalidComponent(_)) => "error",
        Err(_) => "runtime_error",
    };
    state
        .metrics
        .executions
        .with_label_values(&[language.as_str(), label])
        .inc();
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
        state
            .sessions
            .remove(&session.request_id)
            .await
            .map(|()| None)
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

/// The cache key of a result: the function version and the params, in a
/// canonical form (object keys sorted) so `{"a":1,"b":2}` and
/// `{"b":2,"a":1}` share an entry.
pub fn cache_key(component_digest: &str, params: &Value) -> String {
    let canonical = canonical_json(params);
    format!(
        "result:{}",
        Digest::of_fields([component_digest.as_bytes(), canonical.as_bytes()])
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

    #[test]
    fn the_cache_key_ignores_key_order_but_not_values_or_versions() {
        let a = cache_key("v1", &json!({ "a": 1, "b": { "x": [1, 2], "y": null } }));
        let b = cache_key("v1", &json!({ "b": { "y": null, "x": [1, 2] }, "a": 1 }));
        assert_eq!(a, b);
        assert_ne!(
            a,
            cache_key("v1", &json!({ "a": 2, "b": { "x": [1, 2], "y": null } }))
        );
        assert_ne!(
            a,
            cache_key("v2", &json!({ "a": 1, "b": { "x": [1, 2], "y": null } }))
        );
        assert_ne!(
            cache_key("v1", &json!({ "a": [1, 2] })),
            cache_key("v1", &json!({ "a": [2, 1] }))
        );
    }

    #[test]
    fn x_cache_control_is_parsed_strictly() {
        let mut headers = HeaderMap::new();
        assert_eq!(cache_policy(&headers).unwrap(), CachePolicy::Default);
        headers.insert("x-cache-control", "no-cache".parse().unwrap());
        assert_eq!(cache_policy(&headers).unwrap(), CachePolicy::NoCache);
        headers.insert("x-cache-control", "max-age=60".parse().unwrap());
        assert_eq!(
            cache_policy(&headers).unwrap(),
            CachePolicy::MaxAge(Duration::from_secs(60))
        );
        for bad in ["max-age=0", "max-age=-1", "max-age=soon", "forever"] {
            headers.insert("x-cache-control", bad.parse().unwrap());
            assert!(cache_policy(&headers).is_err(), "{bad}");
        }
    }
}
