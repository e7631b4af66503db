//! rust-data_validator behind `wasi:http/incoming-handler`: reads the JSON
//! body `{"params": {...}}`, runs the very same handler source as the
//! predefined function, answers its JSON. The work per request matches an
//! execute of ours; only the host around it differs.

use std::io::{Read as _, Write as _};

use serde_json::{Value, json};
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

// The predefined function's source, compiled in unchanged.
#[allow(dead_code)]
mod handler {
    include!("../../../components/rust-data_validator/handler.rs");
}

wasi::http::proxy::export!(Anchor);

struct Anchor;

impl wasi::exports::http::incoming_handler::Guest for Anchor {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let mut body = Vec::new();
        if let Ok(incoming) = request.consume() {
            if let Ok(mut stream) = incoming.stream() {
                let _ = stream.read_to_end(&mut body);
            }
        }
        let (status, answer) = match serde_json::from_slice::<Value>(&body) {
            Ok(request) => {
                let event = json!({ "params": request["params"], "context": {} });
                match handler::handler(event) {
                    Ok(result) => (200, json!({ "result": result })),
                    Err(message) => (500, json!({ "error": message })),
                }
            }
            Err(e) => (400, json!({ "error": e.to_string() })),
        };
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"application/json".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(status);
        let outgoing = response.body().expect("a fresh response has a body");
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = outgoing.write().expect("a fresh body has a stream");
        let _ = out.write_all(answer.to_string().as_bytes());
        let _ = out.flush();
        drop(out);
        let _ = OutgoingBody::finish(outgoing, None);
    }
}
