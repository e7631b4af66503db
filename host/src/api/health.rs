//! `GET /health` and `GET /metrics`: no token, never rate limited.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};

use super::AppState;
use crate::language::Language;
use crate::toolchain::SandboxState;

/// The host's health.
///
/// 200 when the host can serve: `ok`, or `degraded` when a store is
/// unreachable or a toolchain missing (loaded functions still execute, from
/// the in-process fallbacks). 503 when it cannot serve at all: no language
/// has a toolchain.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "Serving: `ok` or `degraded`, with each component's state", body = Object),
        (status = 503, description = "Cannot serve: no language has a toolchain", body = Object),
    ),
)]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let sessions = match state.session_store.health().await {
        Ok(status) => status.to_owned(),
        Err(e) => {
            tracing::warn!("health: session store: {e}");
            "unavailable".to_owned()
        }
    };
    let registry = match state.functions.registry().health().await {
        Ok(status) => status.to_owned(),
        Err(e) => {
            tracing::warn!("health: registry: {e}");
            "unavailable".to_owned()
        }
    };
    let mut runtimes = Map::new();
    // Whether any language builds from source: uploads of prebuilt
    // components (`wasm`) need no toolchain and do not count.
    let mut some_language_builds = false;
    for language in Language::ALL {
        let status = match state.functions.toolchains().status(language) {
            Ok(()) => "ok",
            Err(_) => "unavailable",
        };
        some_language_builds |= status == "ok" && language != Language::Wasm;
        runtimes.insert(language.as_str().to_owned(), json!(status));
    }
    // The host's own machinery: the log writer every request feeds.
    let controller = state.logs.health();
    let (code, status) = if !some_language_builds {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if registry == "unavailable"
        || sessions == "unavailable"
        || controller != "ok"
        || runtimes.values().any(|s| s != "ok")
    {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ok")
    };
    // Builds of user source: confined (the layers it has), turned off by
    // the operator, or impossible here (then no language builds).
    let build_sandbox = match state.functions.toolchains().sandbox_state() {
        SandboxState::Confined(confinement) => json!({
            "status": "ok",
            "landlock_abi": confinement.landlock_abi,
            "seccomp": confinement.seccomp,
            "namespaces": confinement.namespaces,
            "kernel_task_cap": confinement.kernel_task_cap,
        }),
        SandboxState::Off => json!({ "status": "off" }),
        SandboxState::Unavailable(_) => json!({ "status": "unavailable" }),
        SandboxState::Unchecked => json!({ "status": "unchecked" }),
    };
    // The interpreters (tier 0) of the languages that have one: `ready`
    // once loaded; until then new functions of that language wait for
    // their build.
    let tiers = state.functions.tiers();
    let interpreters: Map<String, Value> = [Language::Nodejs, Language::Python]
        .into_iter()
        .map(|language| {
            let status = if !tiers.enabled() {
                "off"
            } else if tiers.interpreter(language).is_some() {
                "ready"
            } else if tiers.prepared() {
                "unavailable"
            } else {
                "preparing"
            };
            (language.as_str().to_owned(), json!(status))
        })
        .collect();
    // Where fresh instances of the interpreters run: `off` (in the host
    // process), `idle` (no child started yet: they start on first use),
    // `confined` (the newest child closed the file system on itself) or
    // `unconfined` (Landlock missing: the wasm sandbox is their only wall).
    let execution_processes = match state.functions.runtime().process_stats() {
        None => json!({ "status": "off" }),
        Some(stats) => json!({
            "status": match &stats.ready {
                None => "idle",
                Some(ready) if ready.files_closed => "confined",
                Some(_) => "unconfined",
            },
            "running": stats.pids.len(),
            "started": stats.started,
        }),
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "components": {
            "controller": controller,
            "redis": sessions,
            "postgres": registry,
            "runtimes": Value::Object(runtimes),
            "build_sandbox": build_sandbox,
            "interpreters": Value::Object(interpreters),
            "execution_processes": execution_processes,
        },
    });
    (code, Json(body))
}

/// The Prometheus text exposition.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let metrics = &state.metrics;
    if let Ok(active) = state.session_store.active_count().await {
        metrics.sessions_active.set(active as i64);
    }
    let runtime = state.functions.runtime();
    metrics
        .instances_in_use
        .set(runtime.instances_in_use() as i64);
    metrics
        .warm_instances_idle
        .set(runtime.warm_stats().idle as i64);
    if let Some(processes) = runtime.process_stats() {
        metrics
            .execution_processes_running
            .set(processes.pids.len() as i64);
        metrics
            .execution_processes_started
            .set(processes.started as i64);
    }
    metrics
        .pool_size
        .set(i64::from(runtime.config().max_instances));
    let (loaded, loaded_bytes) = runtime.loaded_components().await;
    metrics.loaded_components.set(loaded as i64);
    metrics.loaded_component_bytes.set(loaded_bytes as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}
