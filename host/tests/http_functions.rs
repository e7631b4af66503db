//! HTTP functions: a `wasi:http/proxy` component built outside the host (as
//! a user builds one), uploaded as `wasm-<title>` and served at
//! `/fn/<language-title>/<path>`; what the upload check refuses; and what a
//! hostile or broken function gets.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use lambda_host::language::Language;

use crate::helpers::{
    LoopbackTrap, TestApp, fixture_source, repo_root, spawn_app, spawn_app_with, status_and_body,
};

/// `tests/fixtures/http-echo`, built once per test binary with cargo for
/// `wasm32-wasip2` (its own lockfile), as a user would build it.
async fn echo_component() -> &'static [u8] {
    static BUILT: OnceCell<Vec<u8>> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let manifest =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/http-echo/Cargo.toml");
            let target = repo_root().join("target/fixtures");
            let output = tokio::process::Command::new("cargo")
                .args([
                    "build",
                    "--release",
                    "--locked",
                    "--target",
                    "wasm32-wasip2",
                ])
                .arg("--manifest-path")
                .arg(&manifest)
                .env("CARGO_TARGET_DIR", &target)
                // The fixture is a user's crate, not ours: no clippy gate.
                .env_remove("RUSTC_WORKSPACE_WRAPPER")
                .env_remove("CLIPPY_ARGS")
                .output()
                .await
                .unwrap();
            assert!(
                output.status.success(),
                "building the http-echo fixture: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::fs::read(target.join("wasm32-wasip2/release/http_echo.wasm")).unwrap()
        })
        .await
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Uploads `component` as `language_title`; the initialize's status and body.
async fn upload(
    app: &TestApp,
    token: &str,
    language_title: &str,
    component: &[u8],
) -> (u16, Value) {
    status_and_body(
        app.initialize(
            token,
            language_title,
            json!({ "script_content": base64(component) }),
        )
        .await,
    )
    .await
}

async fn call(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: &str,
) -> (u16, String) {
    let response = app
        .client
        .request(method, app.url(path))
        .bearer_auth(token)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn an_uploaded_http_component_answers_at_its_route() {
    let app = spawn_app().await;
    let alice = app.token("alice", "execute:all");
    let (status, body) = upload(&app, &alice, "wasm-echo", echo_component().await).await;
    assert_eq!(status, 200, "{body}");

    let (status, text) = call(
        &app,
        &alice,
        reqwest::Method::POST,
        "/fn/wasm-echo/hello/world?x=1&y=%2F",
        "ping",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("method POST\n"), "{text}");
    assert!(
        text.contains("path /hello/world?x=1&y=%2F\n"),
        "the raw path and query: {text}"
    );
    assert!(text.contains("body ping\n"), "{text}");
    // The caller's token is the platform's, never the function's.
    let headers = text.lines().find(|l| l.starts_with("headers ")).unwrap();
    assert!(!headers.contains("authorization"), "{headers}");
    assert!(headers.contains("content-length"), "{headers}");

    let (status, text) = call(&app, &alice, reqwest::Method::GET, "/fn/wasm-echo", "").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("method GET\npath /\n"), "{text}");

    // Another user with execute scope may call it, as with execute.
    let bob = app.token("bob", "execute:wasm");
    let (status, _) = call(&app, &bob, reqwest::Method::PUT, "/fn/wasm-echo/x", "").await;
    assert_eq!(status, 200);

    // Executed, it gets the params as a JSON POST and answers its status
    // and body.
    let id = app.session(&alice, "wasm-echo", json!({})).await;
    let (status, body) = status_and_body(app.execute(&alice, &id, json!({ "a": 1 })).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["status"], 200, "{body}");
    let text = body["result"]["body"].as_str().unwrap();
    assert!(text.contains("method POST\npath /\n"), "{text}");
    assert!(
        text.contains("content-type") && text.contains("body {\"a\":1}\n"),
        "{text}"
    );
    // A JSON function is not served at /fn: it says where to go.
    let response = app
        .client
        .get(app.url("/fn/rust-data_validator/"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("execute"),
        "{body}"
    );
}

#[tokio::test]
async fn routes_refuse_missing_tokens_scopes_and_functions() {
    let app = spawn_app().await;
    let alice = app.token("alice", "execute:all");
    assert_eq!(
        upload(&app, &alice, "wasm-echo", echo_component().await)
            .await
            .0,
        200
    );
    let anonymous = app
        .client
        .get(app.url("/fn/wasm-echo/"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let rust_only = app.token("carol", "execute:rust");
    let (status, _) = call(&app, &rust_only, reqwest::Method::GET, "/fn/wasm-echo/", "").await;
    assert_eq!(status, 403);
    let (status, _) = call(&app, &alice, reqwest::Method::GET, "/fn/wasm-nothing/", "").await;
    assert_eq!(status, 404);
    let (status, _) = call(&app, &alice, reqwest::Method::GET, "/fn/not a title/", "").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn uploads_that_are_not_a_granted_component_are_refused_by_name() {
    let app = spawn_app().await;
    let token = app.token("mallory", "execute:all");
    // A component that asks for an interface this host does not serve
    // (another platform's key-value), next to a real HTTP export.
    let spy = wat::parse_str(
        r#"(component
             (import "wasi:keyvalue/store@0.2.0-draft" (instance))
             (instance $i)
             (export "wasi:http/incoming-handler@0.2.0" (instance $i)))"#,
    )
    .unwrap();
    let (status, body) = upload(&app, &token, "wasm-spy", &spy).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("COMPILE_ERROR")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`wasi:keyvalue/store@0.2.0-draft`"),
        "{body}"
    );

    let core_module = wat::parse_str("(module)").unwrap();
    let (status, body) = upload(&app, &token, "wasm-core", &core_module).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("core WebAssembly module"),
        "{body}"
    );

    for garbage in [
        "not base64 at all!",
        "aGVsbG8gd29ybGQ=", /* "hello world" */
    ] {
        let (status, body) = status_and_body(
            app.initialize(&token, "wasm-garbage", json!({ "script_content": garbage }))
                .await,
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("COMPILE_ERROR")),
            "{body}"
        );
    }
    // Nothing was registered under the refused names.
    let (status, _) = call(&app, &token, reqwest::Method::GET, "/fn/wasm-spy/", "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_broken_or_hostile_http_function_gets_a_clean_error() {
    let app = spawn_app_with(|settings| {
        settings.runtime.default_timeout = Some(Duration::from_millis(500));
        settings.runtime.memory_limit_bytes = 64 << 20;
    })
    .await;
    let token = app.token("alice", "execute:all");
    assert_eq!(
        upload(&app, &token, "wasm-echo", echo_component().await)
            .await
            .0,
        200
    );

    let (status, text) = call(
        &app,
        &token,
        reqwest::Method::GET,
        "/fn/wasm-echo/panic",
        "",
    )
    .await;
    assert_eq!(status, 500, "{text}");
    assert!(
        text.contains("RUNTIME_ERROR") && text.contains("asked to panic"),
        "{text}"
    );

    let (status, text) = call(
        &app,
        &token,
        reqwest::Method::GET,
        "/fn/wasm-echo/silent",
        "",
    )
    .await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("without setting a response"), "{text}");

    let started = std::time::Instant::now();
    let (status, text) = call(&app, &token, reqwest::Method::GET, "/fn/wasm-echo/loop", "").await;
    assert_eq!(status, 504, "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let (status, text) = call(&app, &token, reqwest::Method::GET, "/fn/wasm-echo/hog", "").await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("memory limit"), "{text}");

    // Nothing is granted: a request to a server on loopback never leaves.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (status, text) = call(
        &app,
        &token,
        reqwest::Method::GET,
        &format!("/fn/wasm-echo/fetch?http://{upstream}/"),
        "",
    )
    .await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("HttpRequestDenied"), "{text}");
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "the denied request reached the upstream");

    // After all of that, the function still answers.
    let (status, _) = call(&app, &token, reqwest::Method::GET, "/fn/wasm-echo/ok", "").await;
    assert_eq!(status, 200);
}

/// A loopback upstream for outbound tests, counting the connections it
/// accepts. By path: `/ok` answers `hello`; `/big` 1 MiB; `/slow` never
/// answers; `/redirect?<url>` answers 302 to `<url>`.
async fn upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (status, extra, body): (&str, String, Vec<u8>) = match target.split_once('?') {
                    Some(("/redirect", to)) => {
                        ("302 Found", format!("location: {to}\r\n"), Vec::new())
                    }
                    _ if target == "/big" => ("200 OK", String::new(), vec![b'x'; 1 << 20]),
                    _ if target == "/slow" => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    _ => ("200 OK", String::new(), b"hello".to_vec()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    (address, accepted)
}

#[tokio::test]
async fn outbound_http_reaches_only_what_the_policy_grants() {
    use std::sync::atomic::Ordering;
    let (upstream, accepted) = upstream().await;
    let port = upstream.port();
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("outbound.toml");
    std::fs::write(
        &policy,
        format!(
            r#"
            [limits]
            first_byte_timeout_ms = 300
            max_response_bytes = 65536

            # The test's upstream, on loopback: named, and its address allowed.
            [[grant]]
            functions = ["wasm-echo"]
            hosts = ["127.0.0.1:{port}"]
            private_addresses = true

            # Granted by name, but they are (or resolve to) special addresses.
            [[grant]]
            functions = ["wasm-echo"]
            hosts = ["localhost:{port}", "169.254.169.254", "[::ffff:127.0.0.1]:{port}"]
            "#
        ),
    )
    .unwrap();
    let app =
        spawn_app_with(|settings| settings.runtime.capability_policy = Some(policy.clone())).await;
    let token = app.token("alice", "execute:all");
    assert_eq!(
        upload(&app, &token, "wasm-echo", echo_component().await)
            .await
            .0,
        200
    );
    assert_eq!(
        upload(&app, &token, "wasm-other", echo_component().await)
            .await
            .0,
        200
    );
    let fetch = |function: &'static str, route: &'static str, url: String| {
        let app = &app;
        let token = &token;
        async move {
            call(
                app,
                token,
                reqwest::Method::GET,
                &format!("/fn/{function}/{route}?{url}"),
                "",
            )
            .await
        }
    };

    // Allowed: named in the policy, address allowed.
    let (status, text) = fetch("wasm-echo", "fetch", format!("http://127.0.0.1:{port}/ok")).await;
    assert_eq!(
        (status, text.as_str()),
        (200, "upstream answered 200 with 5 bytes")
    );

    // Another host, another port, another function: denied before any lookup.
    for (function, url) in [
        ("wasm-echo", format!("http://127.0.0.3:{port}/ok")),
        (
            "wasm-echo",
            format!("http://127.0.0.1:{}/ok", port.wrapping_add(1)),
        ),
        ("wasm-other", format!("http://127.0.0.1:{port}/ok")),
    ] {
        let (status, text) = fetch(function, "fetch", url.clone()).await;
        assert_eq!(status, 502, "{function} {url}: {text}");
        assert!(
            text.contains("HttpRequestDenied"),
            "{function} {url}: {text}"
        );
    }

    // Granted names that are, or resolve to, loopback or link-local
    // addresses without `private_addresses`: refused by address.
    for url in [
        format!("http://localhost:{port}/ok"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::ffff:127.0.0.1]:{port}/ok"),
    ] {
        let (status, text) = fetch("wasm-echo", "fetch", url.clone()).await;
        assert_eq!(status, 502, "{url}: {text}");
        assert!(text.contains("DestinationIpProhibited"), "{url}: {text}");
    }

    // A redirect to a host not granted: the guest's second request is its
    // own, and it is denied.
    let (status, text) = fetch(
        "wasm-echo",
        "follow",
        format!("http://127.0.0.1:{port}/redirect?http://127.0.0.3:{port}/ok"),
    )
    .await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("HttpRequestDenied"), "{text}");

    // An oversized response is cut at the cap; a slow upstream times out.
    let (status, text) = fetch("wasm-echo", "fetch", format!("http://127.0.0.1:{port}/big")).await;
    assert_eq!(status, 502, "{text}");
    // The guest's read fails past the cap (wasmtime reports the stream
    // error as text, without an error code).
    assert!(
        text.contains("body size exceeds limit: 65536 bytes"),
        "{text}"
    );
    let started = std::time::Instant::now();
    let (status, text) = fetch(
        "wasm-echo",
        "fetch",
        format!("http://127.0.0.1:{port}/slow"),
    )
    .await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("HttpResponseTimeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Only the allowed requests connected: ok, the redirect's first hop,
    // big and slow.
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[test]
fn a_malformed_policy_file_stops_the_host_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("outbound.toml");
    std::fs::write(
        &policy,
        "[[grant]]\nfunctions = [\"wasm-a\"]\nhosts = [\"http://everything/\"]\n",
    )
    .unwrap();
    let output = crate::helpers::lambda_host(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--capability-policy"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("capability policy"), "{stderr}");
}

/// The initialize of a Rust source; its status and body.
async fn initialize_source(
    app: &TestApp,
    token: &str,
    language_title: &str,
    source: &str,
) -> (u16, Value) {
    status_and_body(
        app.initialize(token, language_title, json!({ "script_content": source }))
            .await,
    )
    .await
}

#[tokio::test]
async fn a_spin_sdk_source_is_built_by_the_rust_toolchain_and_checked_like_an_upload() {
    let app = spawn_app().await;
    let alice = app.token("alice", "execute:all");
    let hello = fixture_source(Language::Rust, "http_hello");
    let (status, body) = initialize_source(&app, &alice, "rust-http_hello", &hello).await;
    assert_eq!(status, 200, "{body}");
    let response = app
        .client
        .get(app.url("/fn/rust-http_hello/some/path?x=1"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(
        response.text().await.unwrap(),
        "Hello from GET /some/path?x=1"
    );
    // The JSON API still runs it: the params as a JSON POST to `/`.
    let session = app.session(&alice, "rust-http_hello", json!({})).await;
    let (status, body) =
        status_and_body(app.execute(&alice, &session, json!({ "a": 1 })).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["status"], 200, "{body}");
    assert_eq!(body["result"]["body"], "Hello from POST /", "{body}");

    // An interface the host does not serve: it compiles, and is refused
    // by name at initialize, not at its first call.
    let sqlite = "use spin_sdk::http::{IntoResponse, Request, Response};\n\
                  use spin_sdk::http_component;\n\
                  #[http_component]\n\
                  fn handle(_req: Request) -> anyhow::Result<impl IntoResponse> {\n\
                      let db = spin_sdk::sqlite::Connection::open_default()?;\n\
                      db.execute(\"SELECT 1\", &[])?;\n\
                      Ok(Response::new(200, \"\"))\n\
                  }\n";
    let (status, body) = initialize_source(&app, &alice, "rust-http_sqlite", sqlite).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("COMPILE_ERROR")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("fermyon:spin/sqlite@2.0.0"), "{message}");

    // A JSON handler that reaches for a Spin interface: HTTP functions'
    // grants are not a JSON function's.
    let json_with_variables = "use serde_json::Value;\n\
        pub fn handler(_event: Value) -> Result<Value, String> {\n\
            spin_sdk::variables::get(\"x\").map(Value::String).map_err(|e| format!(\"{e:?}\"))\n\
        }\n";
    let (status, body) =
        initialize_source(&app, &alice, "rust-json_variables", json_with_variables).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("COMPILE_ERROR")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("fermyon:spin/variables@2.0.0") && message.contains("lambda:function"),
        "{message}"
    );
    for refused in ["rust-http_sqlite", "rust-json_variables"] {
        let (status, _) = call(
            &app,
            &alice,
            reqwest::Method::GET,
            &format!("/fn/{refused}/"),
            "",
        )
        .await;
        assert_eq!(status, 404, "{refused} was registered");
    }
}

#[tokio::test]
async fn an_http_function_gets_no_raw_sockets_even_to_a_host_it_may_fetch() {
    let trap = LoopbackTrap::new();
    let port = trap.address.port();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    // The policy lets the function fetch the trap over wasi:http; that is
    // no grant of wasi:sockets.
    std::fs::write(
        &policy,
        format!(
            "[[grant]]\nfunctions = [\"rust-http_sockets\"]\n\
             hosts = [\"127.0.0.1:{port}\"]\nprivate_addresses = true\n"
        ),
    )
    .unwrap();
    let app =
        spawn_app_with(|settings| settings.runtime.capability_policy = Some(policy.clone())).await;
    let alice = app.token("alice", "execute:all");
    let source = fixture_source(Language::Rust, "http_sockets");
    let (status, body) = initialize_source(&app, &alice, "rust-http_sockets", &source).await;
    assert_eq!(status, 200, "{body}");
    let (status, report) = call(
        &app,
        &alice,
        reqwest::Method::GET,
        &format!("/fn/rust-http_sockets/?{}", trap.address),
        "",
    )
    .await;
    assert_eq!(status, 200, "{report}");
    for attempt in ["tcp", "udp", "lookup", "listen"] {
        assert!(
            report.contains(&format!("{attempt}: refused ")),
            "{attempt} got through: {report}"
        );
    }
    assert_eq!(trap.arrivals(), 0, "{report}");
    trap.assert_it_counts();
}

#[tokio::test]
async fn key_value_data_is_the_function_owners_and_bounded_by_its_quota() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        r#"
        [key_value]
        quota_bytes = 64

        [[grant]]
        functions = ["rust-store_a", "rust-store_b"]
        key_value = true
        "#,
    )
    .unwrap();
    let app = spawn_app_with(|settings| settings.runtime.capability_policy = Some(policy)).await;
    let alice = app.token("alice", "execute:rust");
    let bob = app.token("bob", "execute:rust");
    let carol = app.token("carol", "execute:rust");
    let source = fixture_source(Language::Rust, "http_store");
    for (token, title) in [
        (&alice, "rust-store_a"),
        (&bob, "rust-store_b"),
        (&carol, "rust-store_c"),
    ] {
        let (status, body) = initialize_source(&app, token, title, &source).await;
        assert_eq!(status, 200, "{title}: {body}");
    }
    let put = reqwest::Method::PUT;
    let get = reqwest::Method::GET;
    assert_eq!(
        call(
            &app,
            &alice,
            put.clone(),
            "/fn/rust-store_a/kv/color",
            "blue"
        )
        .await,
        (200, "stored".into())
    );
    assert_eq!(
        call(&app, &alice, get.clone(), "/fn/rust-store_a/kv/color", "").await,
        (200, "blue".into())
    );

    // Bob's function runs the same code under another owner: an empty
    // store of its own, whose writes alice's never sees.
    assert_eq!(
        call(&app, &bob, get.clone(), "/fn/rust-store_b/kv/color", "").await,
        (404, "no such key".into())
    );
    assert_eq!(
        call(&app, &bob, get.clone(), "/fn/rust-store_b/keys", "").await,
        (200, String::new())
    );
    assert_eq!(
        call(&app, &bob, put.clone(), "/fn/rust-store_b/kv/color", "red")
            .await
            .0,
        200
    );
    assert_eq!(
        call(&app, &alice, get.clone(), "/fn/rust-store_a/kv/color", "").await,
        (200, "blue".into())
    );
    assert_eq!(
        call(&app, &alice, get.clone(), "/fn/rust-store_a/keys", "").await,
        (200, "color".into())
    );
    // Bob cannot take alice's title to read her data.
    let (status, body) = initialize_source(&app, &bob, "rust-store_a", &source).await;
    assert_ne!(status, 200, "{body}");
    // Calling alice's function reaches alice's function's data, as that
    // function decides: the store belongs to the function, not the caller.
    assert_eq!(
        call(&app, &bob, get.clone(), "/fn/rust-store_a/kv/color", "").await,
        (200, "blue".into())
    );

    // No grant: the store does not open.
    let (status, text) = call(&app, &carol, get.clone(), "/fn/rust-store_c/kv/color", "").await;
    assert_eq!((status, text.as_str()), (403, "Error::AccessDenied"));

    // 64 bytes: "color" + "blue" = 9 used; 60 more do not fit.
    let big = "x".repeat(60);
    let (status, text) = call(&app, &alice, put.clone(), "/fn/rust-store_a/kv/big", &big).await;
    assert_eq!((status, text.as_str()), (507, "Error::StoreTableFull"));
    assert_eq!(
        call(&app, &alice, get.clone(), "/fn/rust-store_a/kv/big", "")
            .await
            .0,
        404
    );
    assert_eq!(
        call(
            &app,
            &alice,
            reqwest::Method::DELETE,
            "/fn/rust-store_a/kv/color",
            ""
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            &app,
            &alice,
            put.clone(),
            "/fn/rust-store_a/kv/big",
            &"x".repeat(61)
        )
        .await
        .0,
        200
    );
    // An over-long key is an error, not a write.
    let long_key = format!("/fn/rust-store_a/kv/{}", "k".repeat(300));
    let (status, text) = call(&app, &alice, put.clone(), &long_key, "v").await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("at most 256 bytes"), "{text}");
    // Bob's store is untouched by all of it.
    assert_eq!(
        call(&app, &bob, get.clone(), "/fn/rust-store_b/keys", "").await,
        (200, "color".into())
    );
}

#[tokio::test]
async fn a_request_body_past_the_limit_is_cut_and_the_host_serves_on() {
    let app = spawn_app_with(|settings| settings.server.body_limit_bytes = 512 << 10).await;
    let alice = app.token("alice", "execute:wasm");
    assert_eq!(
        upload(&app, &alice, "wasm-echo", echo_component().await)
            .await
            .0,
        200
    );
    // Within the limit: the whole body.
    let small = "a".repeat(500 << 10);
    let (status, text) = call(
        &app,
        &alice,
        reqwest::Method::POST,
        "/fn/wasm-echo/",
        &small,
    )
    .await;
    assert_eq!(status, 200);
    assert!(text.contains(&small));
    // 4 MiB against 512 KiB: the function's read stops at the limit, and
    // what it answers is its own (this one echoes what it got).
    // The server closes the connection with the rest unread, so the
    // client may see it reset before or while it reads the answer.
    let big = "b".repeat(4 << 20);
    let sent = app
        .client
        .post(app.url("/fn/wasm-echo/"))
        .bearer_auth(&alice)
        .body(big)
        .send()
        .await;
    if let Ok(response) = sent {
        let status = response.status();
        // The function read what it was given and answered.
        assert_eq!(status, 200);
        if let Ok(text) = response.text().await {
            let echoed = text.matches('b').count();
            assert!(
                echoed <= 512 << 10,
                "{status}: {echoed} bytes reached the function"
            );
        }
    }
    // And the host still serves.
    let (status, _) = call(&app, &alice, reqwest::Method::GET, "/fn/wasm-echo/", "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_javascript_fetch_listener_is_an_http_function() {
    let app = spawn_app().await;
    let alice = app.token("alice", "execute:nodejs");
    let source = fixture_source(Language::Nodejs, "http_hello");
    // Built before it answers: no interpreter runs an HTTP function.
    let (status, body) = initialize_source(&app, &alice, "nodejs-http_hello", &source).await;
    assert_eq!(status, 200, "{body}");
    let (status, text) = call(
        &app,
        &alice,
        reqwest::Method::POST,
        "/fn/nodejs-http_hello/some/path?x=1",
        "ping",
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (200, "Hello from POST /some/path?x=1 ping")
    );

    // `fetch` goes through the same policy as every outbound request:
    // nothing is granted here, so a loopback listener sees no connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (status, text) = call(
        &app,
        &alice,
        reqwest::Method::GET,
        &format!("/fn/nodejs-http_hello/fetch?http://127.0.0.1:{port}/"),
        "",
    )
    .await;
    assert_eq!(status, 502, "{text}");
    assert!(text.starts_with("fetch failed"), "{text}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err(),
        "the denied fetch reached the listener"
    );
}

#[tokio::test]
async fn a_function_gets_what_it_declares_and_the_policy_grants_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        r#"
        [[grant]]
        functions = ["rust-narrow"]
        hosts = ["api.example.com"]
        key_value = true
        variables = { api_key = "k-123", region = "eu" }
        "#,
    )
    .unwrap();
    let app = spawn_app_with(|settings| settings.runtime.capability_policy = Some(policy)).await;
    let alice = app.token("alice", "execute:rust read:functions");
    let source = fixture_source(Language::Rust, "http_store");
    let initialize = |capabilities: Value| {
        let app = &app;
        let alice = &alice;
        let source = &source;
        async move {
            status_and_body(
                app.initialize(
                    alice,
                    "rust-narrow",
                    json!({ "script_content": source, "context": { "capabilities": capabilities } }),
                )
                .await,
            )
            .await
        }
    };
    // Asking for what the policy does not grant: refused, each named.
    let (status, body) = initialize(json!({
        "hosts": ["api.example.com", "evil.example:8080"],
        "variables": ["region", "root_password"]
    }))
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("host evil.example:8080") && message.contains("variable root_password"),
        "{message}"
    );
    assert!(
        !message.contains("api.example.com") && !message.contains("region"),
        "{message}"
    );
    // Malformed: a 400.
    let (status, body) = initialize(json!({ "variables": ["Not A Name"] })).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = initialize(json!({ "sockets": true })).await;
    assert_eq!(status, 400, "{body}");

    // Declaring less than the policy grants: it gets only that.
    let (status, body) = initialize(json!({ "variables": ["region"] })).await;
    assert_eq!(status, 200, "{body}");
    let get = reqwest::Method::GET;
    assert_eq!(
        call(&app, &alice, get.clone(), "/fn/rust-narrow/var/region", "").await,
        (200, "eu".into())
    );
    let (status, text) = call(&app, &alice, get.clone(), "/fn/rust-narrow/var/api_key", "").await;
    assert_eq!(status, 404, "{text}");
    assert!(!text.contains("k-123"), "{text}");
    let (status, text) = call(&app, &alice, get.clone(), "/fn/rust-narrow/kv/x", "").await;
    assert_eq!((status, text.as_str()), (403, "Error::AccessDenied"));
    let detail: Value = app
        .client
        .get(app.url("/api/v1/functions/rust-narrow"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        detail["capabilities"],
        json!({ "hosts": [], "key_value": false, "variables": ["region"] }),
        "{detail}"
    );

    // Declared again with key-value: the store opens. A source registered
    // again needs no new build, and the new declaration applies at once
    // (within the second the host caches a name's version).
    let (status, body) = initialize(json!({ "key_value": true, "variables": ["region"] })).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        call(&app, &alice, get.clone(), "/fn/rust-narrow/kv/x", "").await,
        (404, "no such key".into())
    );
}
