//! Glue between the `lambda:function` world and a user's Rust handler.
//!
//! The user writes one file, `handler.rs`, holding
//! `pub fn handler(event: serde_json::Value) -> Result<serde_json::Value, String>`.
//! This crate turns the WIT `invocation` into the `event` object of API.md,
//! calls the handler and turns its answer back into JSON text or an
//! `error-info`. Nothing here is specific to one function.

mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "function",
    });
}

#[allow(dead_code)]
mod handler;

use bindings::lambda::function::types::{ErrorInfo, Invocation};
use serde_json::Value;

/// Logging for handlers: `crate::log::info("...")` appends a line to the
/// execution's log on the host.
#[allow(dead_code)]
pub mod log {
    use crate::bindings::lambda::function::host::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

struct Function;

impl bindings::Guest for Function {
    fn handle(inv: Invocation) -> Result<String, ErrorInfo> {
        let params = parse_json("params", &inv.params)?;
        let context = parse_json("context", &inv.context)?;
        let event = serde_json::json!({
            "params": params,
            "context": context,
            "request_id": inv.request_id,
            "language_title": inv.language_title,
        });
        let result = handler::handler(event).map_err(failure)?;
        serde_json::to_string(&result)
            .map_err(|e| failure(format!("the handler's result is not JSON: {e}")))
    }
}

fn parse_json(what: &str, text: &str) -> Result<Value, ErrorInfo> {
    serde_json::from_str(text).map_err(|e| failure(format!("{what} is not valid JSON: {e}")))
}

fn failure(message: String) -> ErrorInfo {
    ErrorInfo {
        message,
        stack_trace: None,
        line: None,
        column: None,
    }
}

bindings::export!(Function with_types_in bindings);
