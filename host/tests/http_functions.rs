//! HTTP functions: a `wasi:http/proxy` component built outside the host (as
//! a user builds one), uploaded as `wasm-<title>` and served at
//! `/fn/<language-title>/<path>`; what the upload check refuses; and what a
//! hostile or broken function gets.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::helpers::{TestApp, repo_root, spawn_app, spawn_app_with, status_and_body};

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
    // A component that asks for raw sockets, next to a real HTTP export.
    let spy = wat::parse_str(
        r#"(component
             (import "wasi:sockets/tcp@0.2.0" (instance))
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
            .contains("`wasi:sockets/tcp@0.2.0`"),
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
        spawn_app_with(|settings| settings.runtime.outbound_policy = Some(policy.clone())).await;
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
        .args(["serve", "--listen", "127.0.0.1:0", "--outbound-policy"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("outbound policy"), "{stderr}");
}
