//! rust-data_validator behind spin-sdk's `#[http_component]`: reads the JSON
//! body `{"params": {...}}`, runs the predefined function's own source,
//! answers its JSON, like `bench/anchor-http` does with the bare `wasi`
//! crate. Served by `wasmtime serve` and uploaded to our host as
//! `wasm-bench_spin`, the same file both times.

use serde_json::{Value, json};
use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

#[allow(dead_code)]
mod handler {
    include!("../../../components/rust-data_validator/handler.rs");
}

#[http_component]
fn validate(request: Request) -> anyhow::Result<impl IntoResponse> {
    let (status, answer) = match serde_json::from_slice::<Value>(request.body()) {
        Ok(body) => {
            let event = json!({ "params": body["params"], "context": {} });
            match handler::handler(event) {
                Ok(result) => (200, json!({ "result": result })),
                Err(message) => (500, json!({ "error": message })),
            }
        }
        Err(e) => (400, json!({ "error": e.to_string() })),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(answer.to_string())
        .build())
}
