//! `GET /api/v1/sessions/{request_id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use chrono::SecondsFormat;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::Authenticated;
use super::{AppState, tagged};

#[derive(Serialize, ToSchema)]
pub struct SessionResponse {
    request_id: String,
    language_title: String,
    /// Always `active`: an ended session is not found.
    status: &'static str,
    /// RFC 3339, milliseconds.
    created_at: String,
    expires_at: String,
    execution_count: u64,
    last_executed_at: Option<String>,
}

/// The state of one of the caller's sessions.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{request_id}",
    tag = "sessions",
    params(("request_id" = String, Path, description = "The session id from initialize")),
    responses(
        (status = 200, description = "The session", body = SessionResponse),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token grants no execute scope", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such session of the caller's, or it expired", body = ErrorBody),
        (status = 500, description = "INTERNAL_ERROR", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(request_id): Path<String>,
) -> Result<Response, ApiError> {
    let fail = |e: ApiError| e.with_request_id(request_id.clone());
    if !principal.may_execute_something() {
        return Err(fail(ApiError::forbidden(
            "the token grants no execute scope",
        )));
    }
    let session = state
        .sessions
        .owned_session(&request_id, &principal.subject)
        .await
        .map_err(|e| fail(e.into()))?;
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let body = Json(SessionResponse {
        request_id: session.request_id.clone(),
        language_title: session.language_title.to_string(),
        status: "active",
        created_at: time(session.created_at),
        expires_at: time(session.expires_at),
        execution_count: session.execution_count,
        last_executed_at: session.last_executed_at.map(time),
    });
    Ok(tagged(
        body,
        session.request_id,
        session.language_title.to_string(),
    ))
}
