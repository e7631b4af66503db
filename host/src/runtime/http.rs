//! HTTP functions: components of the `wasi:http/proxy` world, each request
//! served by a fresh instance under the same deadline, memory cap and
//! instance slots as an execution.
//!
//! The response's head goes back as soon as the guest sets it; its body
//! streams from the guest while the call goes on, until the call ends or
//! its deadline stops it (the client then sees the body cut short).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http;
use wasmtime::Engine;
use wasmtime::component::Linker;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiBody, WasiHttpView as _};

use super::invoke::{self, GuestState};
use super::outbound::OutboundPolicy;
use super::policy::FunctionGrant;
use super::spin::{CallCapabilities, CallScope, FunctionOwner, KeyValueScope};
use http_body_util::BodyExt as _;
use serde_json::Value;

use super::{Entry, Error, Execution, Invocation, LoadedFunction, Runtime};

/// The linker of HTTP functions: WASI 0.2 over an empty context (as for
/// every component), `wasi:http/types` and `wasi:http/outgoing-handler`,
/// whose every request the operator's policy decides
/// ([`super::outbound`]), and Spin's key-value and variables
/// ([`super::spin`]), which it decides too. Nothing else.
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("linking WASI")?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("linking wasi:http")?;
    super::spin::add_to_linker(&mut linker).context("linking Spin's key-value and variables")?;
    Ok(linker)
}

/// The key-value namespace of a function and its owner: a digest of both,
/// so no choice of names makes two owners' namespaces meet, and a title
/// that passes to another owner starts empty.
fn key_value_namespace(name: &str, owner: &FunctionOwner) -> Option<String> {
    let (kind, owner): (&[u8], &[u8]) = match owner {
        FunctionOwner::Predefined => (b"predefined", b""),
        FunctionOwner::User(subject) => (b"user", subject.as_bytes()),
        FunctionOwner::Unknown => return None,
    };
    Some(crate::digest::Digest::of_fields([name.as_bytes(), kind, owner]).to_string())
}

/// The most of an HTTP function's response body that `execute` reads.
pub const MAX_EXECUTE_BODY_BYTES: usize = 1 << 20;

/// The guest's response: its head, and a body that streams from the guest.
pub type Response = http::Response<WasiBody>;

impl Runtime {
    /// What one call of function `name` of `owner` may use: its grant,
    /// and its key-value namespace if the grant includes key-value.
    fn call_capabilities(
        &self,
        grant: Option<Arc<FunctionGrant>>,
        name: &str,
        owner: &FunctionOwner,
    ) -> CallCapabilities {
        let key_value = match (&grant, &self.key_value) {
            (Some(g), Some(store)) if g.key_value => {
                key_value_namespace(name, owner).map(|namespace| KeyValueScope {
                    store: store.clone(),
                    namespace,
                    quota_bytes: g.key_value_limits.quota_bytes,
                })
            }
            _ => None,
        };
        CallCapabilities { grant, key_value }
    }

    /// `execute` of an HTTP function: the params as the JSON body of a
    /// `POST /`, the answer as `{"status": <code>, "body": <the body as
    /// JSON, or as text when it is not JSON>}`. The body is read up to
    /// [`MAX_EXECUTE_BODY_BYTES`]; past that the execution fails.
    pub async fn execute_http(
        self: &Arc<Self>,
        function: Arc<LoadedFunction>,
        invocation: &Invocation,
        scope: &CallScope,
        timeout: Option<Duration>,
    ) -> Result<Execution, Error> {
        let started = std::time::Instant::now();
        let body = serde_json::to_vec(&invocation.params).map_err(|e| Error::Internal(e.into()))?;
        let request = http::Request::post("http://localhost/")
            .header(http::header::HOST, "localhost")
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-request-id", invocation.request_id.as_str())
            .body(
                http_body_util::Full::new(bytes::Bytes::from(body))
                    .map_err(|never| -> wasmtime_wasi_http::Error { match never {} }),
            )
            .map_err(|e| Error::Internal(e.into()))?;
        let response = self
            .serve_http(
                function,
                &invocation.language_title,
                scope,
                &invocation.caller,
                request,
                timeout,
            )
            .await?;
        let status = response.status().as_u16();
        let collected = http_body_util::Limited::new(response.into_body(), MAX_EXECUTE_BODY_BYTES)
            .collect()
            .await;
        let body = match collected {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Error::InvalidResult(format!(
                    "the response body is over {MAX_EXECUTE_BODY_BYTES} bytes"
                )));
            }
            // The call ended mid-body: a trap, or the deadline.
            Err(e) => {
                return Err(Error::Trap {
                    message: format!("the response body was cut short: {e}"),
                });
            }
        };
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok(Execution {
            result: serde_json::json!({ "status": status, "body": body }),
            logs: Vec::new(),
            stdout: String::new(),
            stderr: String::new(),
            duration: started.elapsed(),
        })
    }

    /// Serves one request with an HTTP function in a fresh instance, in a
    /// slot of the caller's share. `timeout` bounds the whole call,
    /// streaming included; `None` takes the default. `name` is the
    /// function's language title; `scope` whose function it is (which with
    /// the name scopes its key-value data) and what it may use.
    pub async fn serve_http<B>(
        self: &Arc<Self>,
        function: Arc<LoadedFunction>,
        name: &str,
        scope: &CallScope,
        caller: &str,
        request: http::Request<B>,
        timeout: Option<Duration>,
    ) -> Result<Response, Error>
    where
        B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let Entry::Http(pre) = &function.entry else {
            return Err(Error::WrongWorld(
                "this is a JSON function (lambda:function): call it with execute",
            ));
        };
        let pre = pre.clone();
        let timeout = timeout
            .unwrap_or_else(|| self.config.default_timeout())
            .min(self.config.max_timeout);
        let (response_sender, response) = tokio::sync::oneshot::channel();
        let runtime = self.clone();
        let caller = caller.to_owned();
        let grant = scope.grant.clone();
        let capabilities = self.call_capabilities(grant.clone(), name, &scope.owner);
        // The call runs in its own task so that the body can stream while
        // the guest writes it; the task holds the slot until it ends.
        let call = tokio::spawn(async move {
            let _slot = runtime.slots.acquire(&caller).await?;
            let mut store = invoke::fresh_store(&runtime.engine, &runtime.config);
            store.data_mut().start_request();
            store.data_mut().outbound = OutboundPolicy::new(grant);
            store.data_mut().capabilities = capabilities;
            let internal = |e: wasmtime::Error| Error::Internal(anyhow::Error::from(e));
            let guest_request = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, request)
                .map_err(internal)?;
            let out = store
                .data_mut()
                .http()
                .new_response_outparam(response_sender)
                .map_err(internal)?;
            invoke::start_deadline(&mut store, timeout);
            let handled = tokio::time::timeout(timeout, async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, guest_request, out)
                    .await
            })
            .await;
            match handled {
                Err(_elapsed) => Err(Error::Timeout(timeout)),
                Ok(Err(trap)) => Err(invoke::trap_error(&store, trap, &runtime.config, timeout)),
                Ok(Ok(())) => Ok(()),
            }
        });
        match response.await {
            Ok(Ok(response)) => Ok(response),
            // The guest answered with an error code instead of a response.
            Ok(Err(code)) => Err(Error::Guest(super::GuestError {
                message: format!("the function answered an error instead of a response: {code:?}"),
                stack_trace: None,
                line: None,
                column: None,
            })),
            // The call ended without setting a response: why is in its result.
            Err(_) => match call.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Err(Error::Trap {
                    message: "the function returned without setting a response".to_owned(),
                }),
                Err(join) => Err(Error::Internal(anyhow::anyhow!(
                    "the call's task failed: {join}"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_owner_of_a_name_has_its_own_namespace() {
        let alice = FunctionOwner::User("alice".into());
        let bob = FunctionOwner::User("bob".into());
        let a = key_value_namespace("rust-store", &alice).unwrap();
        assert_eq!(Some(a.clone()), key_value_namespace("rust-store", &alice));
        assert_ne!(Some(a.clone()), key_value_namespace("rust-store", &bob));
        assert_ne!(Some(a.clone()), key_value_namespace("rust-other", &alice));
        assert_ne!(
            Some(a),
            key_value_namespace("rust-store", &FunctionOwner::Predefined)
        );
        // An empty subject is still a user, not the operator.
        assert_ne!(
            key_value_namespace("rust-store", &FunctionOwner::User("".into())),
            key_value_namespace("rust-store", &FunctionOwner::Predefined)
        );
        assert_eq!(
            key_value_namespace("rust-store", &FunctionOwner::Unknown),
            None
        );
    }
}
