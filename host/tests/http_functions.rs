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

    // A function in the other world is called with execute, and this one
    // is not: each says where to go.
    let id = app.session(&alice, "wasm-echo", json!({})).await;
    let (status, body) = status_and_body(app.execute(&alice, &id, json!({})).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("INVALID_REQUEST")),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("/fn/"),
        "{body}"
    );
    let response = app
        .client
        .get(app.url("/fn/rust-data_validator/"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 400, "{body}");
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
