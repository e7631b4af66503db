//! `GET /api/v1/functions` and `GET /api/v1/functions/{language_title}`.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::SecondsFormat;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::Authenticated;
use crate::language::{Language, LanguageTitle};
use crate::store::{FunctionFilter, FunctionKind, FunctionRecord};

const MAX_PER_PAGE: u32 = 100;

fn require_read(principal: &crate::auth::Principal) -> Result<(), ApiError> {
    if principal.may_read_functions() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "the token does not grant read:functions",
        ))
    }
}

pub async fn list(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require_read(&principal)?;
    let Query(query) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let number = |name: &str, default: u32| -> Result<u32, ApiError> {
        match query.get(name) {
            None => Ok(default),
            Some(text) => text.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                ApiError::invalid_request(format!("{name} must be a positive integer"))
            }),
        }
    };
    let filter = FunctionFilter {
        language: query
            .get("language")
            .map(|l| l.parse::<Language>().map(|l| l.as_str().to_owned()))
            .transpose()
            .map_err(|e| ApiError::invalid_request(e.to_string()))?,
        owner: query.get("user_id").cloned(),
        kind: query
            .get("type")
            .map(|t| {
                FunctionKind::parse(t)
                    .ok_or_else(|| ApiError::invalid_request("type is `predefined` or `dynamic`"))
            })
            .transpose()?,
        page: number("page", 1)?,
        per_page: number("per_page", 20)?,
    };
    if filter.per_page > MAX_PER_PAGE {
        return Err(ApiError::invalid_request(format!(
            "per_page is at most {MAX_PER_PAGE}"
        )));
    }
    let (total, functions) = state.functions.registry().list(&filter).await?;
    Ok(Json(json!({
        "total": total,
        "page": filter.page,
        "per_page": filter.per_page,
        "functions": functions.iter().map(summary).collect::<Vec<_>>(),
    })))
}

pub async fn detail(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(language_title): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_read(&principal)?;
    let language_title = LanguageTitle::parse(&language_title)
        .map_err(|e| ApiError::invalid_request(e.to_string()))?;
    let function = state
        .functions
        .get(&language_title)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no function {language_title}")))?;
    let mut body = summary(&function);
    body["script_content"] = json!(function.script_content);
    body["schema"] = function.schema.clone();
    body["examples"] = function.examples.clone();
    body["compile_options"] = function.compile_options.clone();
    body["component_digest"] = json!(function.component_digest);
    body["component_size"] = json!(function.component_size);
    Ok(Json(body))
}

fn summary(function: &FunctionRecord) -> Value {
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut entry = json!({
        "language": function.language,
        "title": function.title,
        "language_title": function.language_title,
        "description": function.description,
        "type": function.kind.as_str(),
        "created_at": time(function.created_at),
        "updated_at": time(function.updated_at),
    });
    if function.kind == FunctionKind::Dynamic {
        entry["user_id"] = json!(function.owner);
    }
    entry
}
