//! `POST /api/v1/initialize`: resolve or build a function, start a session.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{Authenticated, JsonBody};
use super::{AppState, tagged};
use crate::language::LanguageTitle;
use crate::sessions::StartRequest;

#[derive(Default, Deserialize, ToSchema)]
pub struct InitializeRequest {
    /// A JSON object every execution of the session sees; the host reads
    /// `timeout_ms`, `retain_session` and `compile_options` from it, and,
    /// with `script_content`, `warm_instances` (the function's opt-in to
    /// warm instances: an instance may serve the same caller's next
    /// executions of this version, and globals may persist between them)
    /// and `capabilities` (what an HTTP function needs: `{"hosts":
    /// ["host[:port]"], "key_value": true, "variables": ["name"]}`; its
    /// grant from the operator's policy is narrowed to it, and what the
    /// policy does not grant is refused with 403).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    context: Option<Value>,
    /// The function's source: creates the dynamic function named by
    /// `Language-Title`, or replaces the caller's own. No NUL characters
    /// (400): sources are stored as text. For `wasm-<title>`, the
    /// component's bytes in base64 (a `lambda:function` or a
    /// `wasi:http/proxy` component; see docs/http-functions.md).
    #[serde(default)]
    #[schema(pattern = "^[^\\u0000]*$")]
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

/// Resolves or builds a function and starts a session of it.
#[utoipa::path(
    post,
    path = "/api/v1/initialize",
    tag = "sessions",
    params(
        ("Language-Title" = String, Header, description = "`<language>-<title>`: nodejs, python, rust or wasm (a prebuilt component), then a title of lowercase letters, digits, `_` and `-`", pattern = "^(nodejs|python|rust|wasm)-[a-z0-9_-]{1,64}$"),
        ("X-Request-ID" = Option<String>, Header, nullable = false, description = "A session id of the caller's choosing: 1 to 64 letters, digits, `-` or `_`", pattern = "^[A-Za-z0-9_-]{1,64}$"),
    ),
    request_body(content = Option<InitializeRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "The session started", body = InitializeResponse),
        (status = 400, description = "INVALID_REQUEST: a bad header, context or body", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: no execute scope for the language, another user's function, or capabilities the operator's policy does not grant", body = ErrorBody),
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
    let language_title = language_title(&headers).map_err(fail)?;
    let session = state
        .sessions
        .start(StartRequest {
            caller: &principal,
            language_title,
            context: body.context,
            source: body.script_content,
            requested_id: requested_id.clone(),
        })
        .await
        .map_err(|e| fail(e.into()))?;
    let body = Json(InitializeResponse {
        request_id: session.request_id.clone(),
        status: "initialized",
        expires_at: session
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    Ok(tagged(
        body,
        session.request_id,
        session.language_title.to_string(),
    ))
}

/// The `Language-Title` header, parsed.
fn language_title(headers: &HeaderMap) -> Result<LanguageTitle, ApiError> {
    let raw = headers
        .get("language-title")
        .ok_or_else(|| ApiError::invalid_request("the Language-Title header is required"))?
        .to_str()
        .map_err(|_| ApiError::invalid_request("the Language-Title header is not text"))?;
    LanguageTitle::parse(raw.trim()).map_err(|e| ApiError::invalid_request(e.to_string()))
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
