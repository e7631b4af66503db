//! `POST /api/v1/initialize`: resolve or build a function, start a session.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::error::{ApiError, Code, ErrorBody};
use super::extract::{Authenticated, JsonBody};
use super::middleware::check_build_rate;
use super::{AppState, tagged};
use crate::language::LanguageTitle;
use crate::store::{Insert, LogRecord, Session};
use crate::toolchain::BuildOptions;

#[derive(Default, Deserialize, ToSchema)]
pub struct InitializeRequest {
    /// A JSON object every execution of the session sees; the host reads
    /// `timeout_ms`, `retain_session` and `compile_options` from it.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    context: Option<Value>,
    /// The function's source: creates the dynamic function named by
    /// `Language-Title`, or replaces the caller's own.
    #[serde(default)]
    script_content: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct InitializeResponse {
    /// The session id, for execute.
    request_id: String,
    /// Always `initialized`.
    status: &'static str,
    /// RFC 3339, seconds.
    expires_at: String,
}

/// What initialize reads from `context`; the rest is kept for the handler.
#[derive(Default, Deserialize)]
struct SessionOptions {
    timeout_ms: Option<u64>,
    retain_session: Option<bool>,
    compile_options: Option<BuildOptions>,
}

/// Resolves or builds a function and starts a session of it.
#[utoipa::path(
    post,
    path = "/api/v1/initialize",
    tag = "sessions",
    params(
        ("Language-Title" = String, Header, description = "`<language>-<title>`: nodejs, python or rust, then a title of lowercase letters, digits, `_` and `-`", pattern = "^(nodejs|python|rust)-[a-z0-9_-]{1,64}$"),
        ("X-Request-ID" = Option<String>, Header, nullable = false, description = "A session id of the caller's choosing: 1 to 64 letters, digits, `-` or `_`", pattern = "^[A-Za-z0-9_-]{1,64}$"),
    ),
    request_body(content = Option<InitializeRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "The session started", body = InitializeResponse),
        (status = 400, description = "INVALID_REQUEST: a bad header, context or body", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: no execute scope for the language, or another user's function", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such function and no source", body = ErrorBody),
        (status = 413, description = "INVALID_REQUEST: the body or the context is too large", body = ErrorBody),
        (status = 422, description = "COMPILE_ERROR: the source does not build", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED: too many initializes or builds, or the session quota is full", body = ErrorBody),
        (status = 500, description = "INTERNAL_ERROR", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn initialize(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    headers: HeaderMap,
    JsonBody(body): JsonBody<InitializeRequest>,
) -> Result<Response, ApiError> {
    let requested_id = client_request_id(&headers)?;
    let fail = |e: ApiError| match &requested_id {
        Some(id) => e.with_request_id(id.clone()),
        None => e,
    };

    let language_title = headers
        .get("language-title")
        .ok_or_else(|| {
            fail(ApiError::invalid_request(
                "the Language-Title header is required",
            ))
        })?
        .to_str()
        .map_err(|_| {
            fail(ApiError::invalid_request(
                "the Language-Title header is not text",
            ))
        })
        .and_then(|raw| {
            LanguageTitle::parse(raw.trim())
                .map_err(|e| fail(ApiError::invalid_request(e.to_string())))
        })?;
    if !principal.may_execute(language_title.language()) {
        return Err(fail(ApiError::forbidden(format!(
            "the token does not grant execute:{} or execute:all",
            language_title.language()
        ))));
    }

    let context = body.context.unwrap_or_else(|| json!({}));
    if !context.is_object() {
        return Err(fail(ApiError::invalid_request(
            "context must be a JSON object",
        )));
    }
    // A session keeps its context for its lifetime, in every store: its
    // size is bounded apart from the body's.
    let context_bytes = context.to_string().len();
    let max_context = state.config.max_context_bytes;
    if context_bytes > max_context {
        return Err(fail(
            ApiError::new(
                Code::PayloadTooLarge,
                format!("context is {context_bytes} bytes of JSON, at most {max_context}"),
            )
            .with_details(json!({ "limit_bytes": max_context })),
        ));
    }
    let options: SessionOptions = serde_json::from_value(context.clone())
        .map_err(|e| fail(ApiError::invalid_request(format!("invalid context: {e}"))))?;
    let max_ms = state.max_timeout.as_millis() as u64;
    let timeout_ms = match options.timeout_ms {
        Some(0) => {
            return Err(fail(ApiError::invalid_request(
                "context.timeout_ms must be positive",
            )));
        }
        Some(ms) => ms.min(max_ms),
        None => state.default_timeout.as_millis() as u64,
    };

    let function = match body.script_content {
        Some(source) => {
            // No language's source holds a NUL character, and PostgreSQL
            // would refuse to store one: refused before any build.
            if source.contains('\0') {
                return Err(fail(ApiError::invalid_request(
                    "script_content must not contain NUL characters",
                )));
            }
            check_build_rate(&state, &principal.subject)
                .await
                .map_err(fail)?;
            state
                .functions
                .register_dynamic(
                    &language_title,
                    &principal.subject,
                    &source,
                    &options.compile_options.unwrap_or_default(),
                )
                .await
                .map_err(|e| fail(e.into()))?
        }
        None => state
            .functions
            .get(&language_title)
            .await
            .map_err(|e| fail(e.into()))?
            .ok_or_else(|| {
                fail(ApiError::not_found(format!(
                    "no function {language_title}: send script_content to create it"
                )))
            })?,
    };
    // Compile (or load from the AOT cache) now, so the first execution
    // does not pay for it.
    state
        .functions
        .load(
            &function.language_title,
            &function.build_digest,
            &function.component_digest,
        )
        .await
        .map_err(|e| fail(e.into()))?;

    let now = Utc::now();
    let mut session = Session {
        request_id: requested_id.clone().unwrap_or_else(new_id),
        language_title: function.language_title.clone(),
        owner: principal.subject.clone(),
        build_digest: function.build_digest.clone(),
        component_digest: function.component_digest.clone(),
        context,
        timeout_ms,
        retain_session: options.retain_session.unwrap_or(true),
        created_at: now,
        expires_at: now + state.config.session_ttl,
        execution_count: 0,
        last_executed_at: None,
    };
    // A client id already in use is not reused: the session gets a fresh one.
    let quota = state.config.session_quota_bytes;
    loop {
        match state
            .sessions
            .insert_new(&session, quota)
            .await
            .map_err(|e| fail(e.into()))?
        {
            Insert::Inserted => break,
            Insert::IdTaken => session.request_id = new_id(),
            Insert::OverQuota { used_bytes } => {
                return Err(fail(
                    ApiError::new(
                        Code::RateLimited,
                        format!(
                            "your live sessions hold {used_bytes} bytes; one more would pass your \
                             quota of {quota}: let sessions expire, or initialize with \
                             retain_session: false"
                        ),
                    )
                    .with_details(json!({
                        "reason": "session_quota",
                        "used_bytes": used_bytes,
                        "quota_bytes": quota,
                    }))
                    .retry_after(60),
                ));
            }
        }
    }
    state.metrics.sessions_created.inc();
    state.logs.record(LogRecord::Session(session.clone()));

    let body = Json(InitializeResponse {
        request_id: session.request_id.clone(),
        status: "initialized",
        expires_at: session
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    Ok(tagged(body, session.request_id, session.language_title))
}

/// A client-chosen id: 1 to 64 characters of letters, digits, `-` and `_`
/// (a UUID qualifies).
fn client_request_id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("x-request-id") else {
        return Ok(None);
    };
    let id = value.to_str().unwrap_or_default().trim();
    let valid = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(ApiError::invalid_request(
            "X-Request-ID must be 1 to 64 characters of letters, digits, `-` and `_`",
        ));
    }
    Ok(Some(id.to_owned()))
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_request_ids_are_validated() {
        let mut headers = HeaderMap::new();
        assert_eq!(client_request_id(&headers).unwrap(), None);
        headers.insert(
            "x-request-id",
            "3f1c2a9e-0b7d-4c55-9d0e-6a1f2b3c4d5e".parse().unwrap(),
        );
        assert!(client_request_id(&headers).unwrap().is_some());
        headers.insert("x-request-id", "no spaces allowed".parse().unwrap());
        assert!(client_request_id(&headers).is_err());
    }
}
