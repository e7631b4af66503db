//! `GET /api/v1/sessions/{request_id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use chrono::SecondsFormat;
use serde_json::json;

use super::error::ApiError;
use super::extract::Authenticated;
use super::{AppState, owned_session, tagged};

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
    let session = owned_session(&state, &request_id, &principal.subject)
        .await
        .map_err(fail)?;
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let body = Json(json!({
        "request_id": session.request_id,
        "language_title": session.language_title,
        "status": "active",
        "created_at": time(session.created_at),
        "expires_at": time(session.expires_at),
        "execution_count": session.execution_count,
        "last_executed_at": session.last_executed_at.map(time),
    }));
    Ok(tagged(body, session.request_id, session.language_title))
}
