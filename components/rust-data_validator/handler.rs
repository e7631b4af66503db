// rust-data_validator: checks an object against a list of rules.
//
// params: { "data": { ... }, "rules": ["required", "numeric", ...] }
// result: { "valid": bool, "errors": [ "..." ] }
use serde_json::{Value, json};

pub fn handler(event: Value) -> Result<Value, String> {
    let params = &event["params"];
    let data = params
        .get("data")
        .and_then(Value::as_object)
        .ok_or("params.data must be an object")?;
    let rules = params
        .get("rules")
        .and_then(Value::as_array)
        .ok_or("params.rules must be an array of rule names")?;

    let mut errors = Vec::new();
    for rule in rules {
        match rule.as_str() {
            Some("required") => {
                if data.is_empty() {
                    errors.push("required: data must not be empty".to_string());
                }
            }
            Some("numeric") => {
                for (field, value) in data {
                    if !value.is_number() {
                        errors.push(format!("numeric: field '{field}' is not a number"));
                    }
                }
            }
            Some(other) => errors.push(format!("unknown rule '{other}'")),
            None => errors.push(format!("a rule must be a string, got {rule}")),
        }
    }
    Ok(json!({ "valid": errors.is_empty(), "errors": errors }))
}
