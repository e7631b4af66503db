//! `GET /api/v1/functions` and `GET /api/v1/functions/{language_title}`.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::Authenticated;
use crate::language::{Language, LanguageTitle};
use crate::store::{FunctionFilter, FunctionKind, FunctionRecord, TierState};

const MAX_PER_PAGE: u32 = 100;
/// Far past any registry; keeps the offset a sane number.
const MAX_PAGE: u32 = 1_000_000;

fn require_read(principal: &crate::auth::Principal) -> Result<(), ApiError> {
    if principal.may_read_functions() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "the token does not grant read:functions",
        ))
    }
}

/// A registered function, as listed.
#[derive(Serialize, ToSchema)]
pub struct FunctionSummary {
    language: String,
    title: String,
    language_title: String,
    description: String,
    /// `predefined` or `dynamic`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// RFC 3339, milliseconds.
    created_at: String,
    updated_at: String,
    /// The owner of a dynamic function.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct FunctionList {
    total: u64,
    page: u32,
    per_page: u32,
    functions: Vec<FunctionSummary>,
}

/// A registered function, whole.
#[derive(Serialize, ToSchema)]
pub struct FunctionDetail {
    #[serde(flatten)]
    summary: FunctionSummary,
    /// The source of a dynamic function.
    script_content: Option<String>,
    /// `{"params": <JSON Schema>, "result": <JSON Schema>}` where known.
    schema: Value,
    examples: Value,
    compile_options: Value,
    /// The component that runs the function now: its own, or (tier 0) its
    /// language's interpreter.
    component_digest: String,
    component_size: u64,
    /// 0: the language's interpreter runs the function's source; 1: the
    /// function's own component runs.
    #[schema(minimum = 0, maximum = 1)]
    tier: u8,
    /// The function's own component: `ready` (it runs), `pending` (being
    /// built; the interpreter runs the function meanwhile), `failed` (see
    /// `tier1_error`; the interpreter keeps running it) or `off` (this host
    /// does not build it).
    #[schema(pattern = "^(ready|pending|failed|off)$")]
    tier1: &'static str,
    /// Why the function's own component could not be built.
    #[serde(skip_serializing_if = "Option::is_none")]
    tier1_error: Option<String>,
    /// Whether an instance may serve the same caller's next executions of
    /// this version (a warm instance): globals may then persist between
    /// them, as in a warm Lambda environment.
    warm_instances: bool,
    /// What an HTTP function declared it needs at initialize
    /// (`{"hosts": [...], "key_value": bool, "variables": [names]}`):
    /// the operator's policy is narrowed to it. Absent: nothing declared.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    capabilities: Option<crate::runtime::policy::Declared>,
}

/// One page of the registered functions, by name.
#[utoipa::path(
    get,
    path = "/api/v1/functions",
    tag = "functions",
    params(
        ("language" = Option<String>, Query, nullable = false, description = "nodejs, python, rust or wasm", pattern = "^(nodejs|python|rust|wasm)$"),
        ("user_id" = Option<String>, Query, nullable = false, description = "The owner of dynamic functions", pattern = "^[^\\u0000]*$"),
        ("type" = Option<String>, Query, nullable = false, description = "predefined or dynamic", pattern = "^(predefined|dynamic)$"),
        ("page" = Option<u32>, Query, nullable = false, description = "1-based, default 1", minimum = 1, maximum = 1000000),
        ("per_page" = Option<u32>, Query, nullable = false, description = "1 to 100, default 20", minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, description = "One page", body = FunctionList),
        (status = 400, description = "INVALID_REQUEST: a bad filter or page", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token does not grant read:functions", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED", body = ErrorBody),
        (status = 500, description = "INTERNAL_ERROR", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FunctionList>, ApiError> {
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
        // PostgreSQL refuses a NUL character in text: a filter with one
        // matches no owner, and is refused as such rather than failing.
        owner: query
            .get("user_id")
            .map(|owner| {
                if owner.contains('\0') {
                    Err(ApiError::invalid_request("user_id must not contain NUL"))
                } else {
                    Ok(owner.clone())
                }
            })
            .transpose()?,
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
    if filter.page > MAX_PAGE {
        return Err(ApiError::invalid_request(format!(
            "page is at most {MAX_PAGE}"
        )));
    }
    if filter.per_page > MAX_PER_PAGE {
        return Err(ApiError::invalid_request(format!(
            "per_page is at most {MAX_PER_PAGE}"
        )));
    }
    let (total, functions) = state.functions.registry().list(&filter).await?;
    Ok(Json(FunctionList {
        total,
        page: filter.page,
        per_page: filter.per_page,
        functions: functions.iter().map(summary).collect(),
    }))
}

/// One registered function, with its source, schema and examples.
#[utoipa::path(
    get,
    path = "/api/v1/functions/{language_title}",
    tag = "functions",
    params(("language_title" = String, Path, description = "`<language>-<title>`", pattern = "^(nodejs|python|rust|wasm)-[a-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "The function", body = FunctionDetail),
        (status = 400, description = "INVALID_REQUEST: not a language title", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token does not grant read:functions", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED", body = ErrorBody),
        (status = 500, description = "INTERNAL_ERROR", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn detail(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(language_title): Path<String>,
) -> Result<Json<FunctionDetail>, ApiError> {
    require_read(&principal)?;
    let language_title = LanguageTitle::parse(&language_title)
        .map_err(|e| ApiError::invalid_request(e.to_string()))?;
    let function = state
        .functions
        .get(&language_title)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no function {language_title}")))?;
    Ok(Json(FunctionDetail {
        summary: summary(&function),
        script_content: function.script_content.clone(),
        schema: function.schema.clone(),
        examples: function.examples.clone(),
        compile_options: function.compile_options.clone(),
        component_digest: function.component_digest.to_string(),
        component_size: function.component_size,
        tier: if function.tier.is_compiled() { 1 } else { 0 },
        tier1: match &function.tier {
            TierState::Compiled => "ready",
            TierState::Pending => "pending",
            TierState::Failed(_) => "failed",
            TierState::Interpreted => "off",
        },
        tier1_error: function.tier.error().map(str::to_owned),
        warm_instances: function.warm_instances,
        capabilities: function.capabilities.clone(),
    }))
}

fn summary(function: &FunctionRecord) -> FunctionSummary {
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    FunctionSummary {
        language: function.language_title.language().as_str().to_owned(),
        title: function.language_title.title().to_owned(),
        language_title: function.language_title.to_string(),
        description: function.description.clone(),
        kind: function.kind.as_str(),
        created_at: time(function.created_at),
        updated_at: time(function.updated_at),
        user_id: (function.kind == FunctionKind::Dynamic)
            .then(|| function.owner.clone())
            .flatten(),
    }
}
