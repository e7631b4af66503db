//! Log records cut to what every durable store accepts, before they are
//! queued.
//!
//! Most fields of a log record come from the request: the method, the
//! request id in the path, the token's subject, a guest's error message.
//! PostgreSQL refuses a value longer than its column, a NUL character in
//! text, and `\u0000` in JSONB; a refused record must never hold up the
//! records queued behind it. So the widths of `migrations/postgres` are
//! applied here (SQLite accepts anything PostgreSQL does), NUL characters
//! become U+FFFD, and what is still refused is quarantined by the writer.

use serde_json::Value;

use super::{ErrorLog, LogRecord, RequestLog, Session};

/// `VARCHAR` widths of the log tables, in characters.
pub const REQUEST_ID: usize = 64;
pub const SESSION_ID: usize = 128;
pub const METHOD: usize = 8;
pub const ENDPOINT: usize = 128;
pub const USER_ID: usize = 128;
pub const LANGUAGE_TITLE: usize = 128;
pub const CLIENT_IP: usize = 45;
pub const ERROR_CODE: usize = 64;
/// An error message is `TEXT`; it is capped so one error cannot make a
/// batch megabytes long.
pub const ERROR_MESSAGE: usize = 16 << 10;
/// The details of an error, serialized; beyond it only their size is kept.
pub const ERROR_DETAILS_BYTES: usize = 64 << 10;

impl LogRecord {
    /// This record with every value within what the stores accept.
    pub fn bounded(self) -> LogRecord {
        match self {
            LogRecord::Request(r) => LogRecord::Request(bounded_request(r)),
            LogRecord::Error(e) => LogRecord::Error(bounded_error(e)),
            LogRecord::Session(s) => LogRecord::Session(bounded_session(s)),
        }
    }

    /// The kind of record and its request id, to name it in the host's log.
    pub fn describe(&self) -> (&'static str, Option<&str>) {
        match self {
            LogRecord::Request(r) => ("request", r.request_id.as_deref()),
            LogRecord::Error(e) => ("error", e.request_id.as_deref()),
            LogRecord::Session(s) => ("session", Some(&s.request_id)),
        }
    }
}

fn bounded_request(mut r: RequestLog) -> RequestLog {
    bound_option(&mut r.request_id, REQUEST_ID);
    bound(&mut r.method, METHOD);
    bound(&mut r.endpoint, ENDPOINT);
    bound_option(&mut r.user_id, USER_ID);
    bound_option(&mut r.language_title, LANGUAGE_TITLE);
    bound_option(&mut r.client_ip, CLIENT_IP);
    if !r.duration_ms.is_finite() || r.duration_ms < 0.0 {
        r.duration_ms = 0.0;
    }
    r
}

fn bounded_error(mut e: ErrorLog) -> ErrorLog {
    bound_option(&mut e.request_id, REQUEST_ID);
    bound(&mut e.endpoint, ENDPOINT);
    bound(&mut e.code, ERROR_CODE);
    bound(&mut e.message, ERROR_MESSAGE);
    without_nul(&mut e.details);
    let size = e.details.to_string().len();
    if size > ERROR_DETAILS_BYTES {
        e.details = serde_json::json!({ "omitted_bytes": size });
    }
    e
}

fn bounded_session(mut s: Session) -> Session {
    // Its language title and digests are valid by their types.
    bound(&mut s.request_id, SESSION_ID);
    bound(&mut s.owner, USER_ID);
    without_nul(&mut s.context);
    s
}

/// At most `max` characters, none of them NUL.
fn bound(text: &mut String, max: usize) {
    if text.contains('\0') {
        *text = text.replace('\0', "\u{FFFD}");
    }
    if let Some((cut, _)) = text.char_indices().nth(max) {
        text.truncate(cut);
    }
}

fn bound_option(text: &mut Option<String>, max: usize) {
    if let Some(text) = text {
        bound(text, max);
    }
}

/// JSON without NUL characters in any string or key.
fn without_nul(value: &mut Value) {
    match value {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
        Value::Array(items) => items.iter_mut().for_each(without_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (k.replace('\0', "\u{FFFD}"), v))
                    .collect();
            }
            map.values_mut().for_each(without_nul);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_is_cut_by_characters_and_loses_its_nul_characters() {
        let mut method = "PROPPATCHX".to_owned();
        bound(&mut method, METHOD);
        assert_eq!(method, "PROPPATC");
        let mut wide = "é".repeat(70);
        bound(&mut wide, REQUEST_ID);
        assert_eq!(wide.chars().count(), 64);
        let mut nul = "a\0b".to_owned();
        bound(&mut nul, 10);
        assert_eq!(nul, "a\u{FFFD}b");
    }

    #[test]
    fn json_loses_nul_characters_in_keys_and_strings_at_any_depth() {
        let mut value = json!({ "a\u{0}": ["x\u{0}", { "b": "\u{0}" }], "n": 1 });
        without_nul(&mut value);
        assert_eq!(
            value,
            json!({ "a\u{FFFD}": ["x\u{FFFD}", { "b": "\u{FFFD}" }], "n": 1 })
        );
    }
}
