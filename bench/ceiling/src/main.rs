//! The same JSON in, the same work, the same JSON out as an execute of
//! rust-data_validator, with nothing else: the upper bound of this machine
//! for that request.
//!
//!   ceiling <listen address>

use axum::Json;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};

#[allow(dead_code)]
mod handler {
    include!("../../../components/rust-data_validator/handler.rs");
}

async fn validate(Json(request): Json<Value>) -> (StatusCode, Json<Value>) {
    let event = json!({ "params": request["params"], "context": {} });
    match handler::handler(event) {
        Ok(result) => (StatusCode::OK, Json(json!({ "result": result }))),
        Err(message) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": message }))),
    }
}

#[tokio::main]
async fn main() {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8090".into());
    let listener = tokio::net::TcpListener::bind(&address).await.expect("bind");
    let app = axum::Router::new().route("/", post(validate));
    axum::serve(listener, app).await.expect("serve");
}
