// The example handler the template is built with while warming the shared
// dependency cache; a real build replaces this file with the user's source.
use serde_json::{Value, json};

pub fn handler(event: Value) -> Result<Value, String> {
    Ok(json!({ "echo": event["params"] }))
}
