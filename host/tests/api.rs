//! The REST API against a real server on a free port, with real
//! components: every endpoint and every error code of API.md.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_with, status_and_body};

const ALL: &str = "execute:all read:functions";

fn fixture_source(path: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(path),
    )
    .unwrap()
}

async fn error_of(response: reqwest::Response) -> (u16, String, Value) {
    let (status, body) = status_and_body(response).await;
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code: {body}"))
        .to_owned();
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, code, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_predefined_functions_initialize_execute_and_report_their_sessions() {
    let app = spawn_app().await;
    let token = app.token("alice", ALL);
    for (name, params, expected) in [
        (
            "nodejs-calculator",
            json!({"operation": "add", "a": 5, "b": 3}),
            json!({"result": 8}),
        ),
        (
            "python-text_processor",
            json!({"action": "count_words", "text": "Hello world"}),
            json!({"result": 2}),
        ),
        (
            "rust-data_validator",
            json!({"data": {"age": 25}, "rules": ["required", "numeric"]}),
            json!({"valid": true, "errors": []}),
        ),
    ] {
        let response = app.initialize(&token, name, json!({})).await;
        let (status, init) = status_and_body(response).await;
        assert_eq!(status, 200, "{init}");
        assert_eq!(init["status"], "initialized");
        assert!(init["expires_at"].as_str().unwrap().ends_with('Z'));
        let id = init["request_id"].as_str().unwrap();

        let (status, body) = status_and_body(app.execute(&token, id, params).await).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"], expected, "{name}");
        assert_eq!(body["language_title"], name);
        assert_eq!(body["request_id"], id);
        assert_eq!(body["cached"], false);
        assert!(body["execution_time"].is_u64());

        let session = app
            .client
            .get(app.url(&format!("/api/v1/sessions/{id}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let (status, session) = status_and_body(session).await;
        assert_eq!(status, 200);
        assert_eq!(session["status"], "active");
        assert_eq!(session["execution_count"], 1);
        assert_eq!(session["language_title"], name);
        assert!(session["last_executed_at"].is_string());
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dynamic_function_in_each_language_is_built_cached_and_listed_with_its_owner() {
    let app = spawn_app().await;
    let token = app.token("dana", ALL);
    let sources = [
        (
            "nodejs-shout",
            "export default (event) => ({ shout: event.params.word.toUpperCase() + '!' });\n",
        ),
        (
            "python-shout",
            "def handler(event):\n    return {\"shout\": event[\"params\"][\"word\"].upper() + \"!\"}\n",
        ),
        (
            "rust-shout",
            "use serde_json::{json, Value};\npub fn handler(event: Value) -> Result<Value, String> {\n    let word = event[\"params\"][\"word\"].as_str().ok_or(\"word must be a string\")?;\n    Ok(json!({ \"shout\": format!(\"{}!\", word.to_uppercase()) }))\n}\n",
        ),
    ];
    for (name, source) in sources {
        let id = app
            .session(&token, name, json!({ "script_content": source }))
            .await;
        let params = json!({ "word": "héllo" });
        let (_, first) = status_and_body(app.execute(&token, &id, params.clone()).await).await;
        assert_eq!(
            first["result"],
            json!({ "shout": "HÉLLO!" }),
            "{name}: {first}"
        );
        assert_eq!(first["cached"], false);
        let (_, second) = status_and_body(app.execute(&token, &id, params.clone()).await).await;
        assert_eq!(second["cached"], true, "{name}");
        assert_eq!(second["result"], first["result"]);
        let fresh = app
            .client
            .post(app.url(&format!("/api/v1/execute/{id}")))
            .bearer_auth(&token)
            .header("X-Cache-Control", "no-cache")
            .json(&json!({ "params": params }))
            .send()
            .await
            .unwrap();
        let (_, fresh) = status_and_body(fresh).await;
        assert_eq!(fresh["cached"], false, "{name}");
    }
    let list = app
        .client
        .get(app.url("/api/v1/functions?type=dynamic"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, list) = status_and_body(list).await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 3, "{list}");
    for entry in list["functions"].as_array().unwrap() {
        assert_eq!(entry["type"], "dynamic");
        assert_eq!(entry["user_id"], "dana");
    }
    let detail = app
        .client
        .get(app.url("/api/v1/functions/python-shout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (_, detail) = status_and_body(detail).await;
    assert!(
        detail["script_content"]
            .as_str()
            .unwrap()
            .contains("def handler")
    );
    assert!(detail["component_size"].as_u64().unwrap() > 1_000_000);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_are_filtered_paginated_and_described() {
    let app = spawn_app().await;
    let token = app.token("reader", "read:functions");
    let get = |path: &str| app.client.get(app.url(path)).bearer_auth(&token).send();
    let (_, all) = status_and_body(get("/api/v1/functions").await.unwrap()).await;
    assert_eq!(
        (
            all["total"].as_u64(),
            all["page"].as_u64(),
            all["per_page"].as_u64()
        ),
        (Some(3), Some(1), Some(20))
    );
    let names: Vec<&str> = all["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["language_title"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "nodejs-calculator",
            "python-text_processor",
            "rust-data_validator"
        ]
    );
    assert!(
        all["functions"][0].get("user_id").is_none(),
        "predefined functions have no owner"
    );

    let (_, page) =
        status_and_body(get("/api/v1/functions?per_page=1&page=2").await.unwrap()).await;
    assert_eq!(page["functions"].as_array().unwrap().len(), 1);
    assert_eq!(
        page["functions"][0]["language_title"],
        "python-text_processor"
    );
    let (_, python) = status_and_body(
        get("/api/v1/functions?language=python&type=predefined")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(python["total"], 1);
    let (_, js) = status_and_body(get("/api/v1/functions?language=js").await.unwrap()).await;
    assert_eq!(js["functions"][0]["language"], "nodejs");

    let (status, detail) =
        status_and_body(get("/api/v1/functions/nodejs-calculator").await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(detail["type"], "predefined");
    assert_eq!(
        detail["schema"]["params"]["required"],
        json!(["operation", "a", "b"])
    );
    assert!(detail["examples"].as_array().unwrap().len() >= 4);
    assert_eq!(detail["component_digest"].as_str().unwrap().len(), 64);

    for bad in [
        "/api/v1/functions?per_page=101",
        "/api/v1/functions?page=0",
        "/api/v1/functions?type=other",
        "/api/v1/functions?language=cobol",
    ] {
        let (status, code, _) = error_of(get(bad).await.unwrap()).await;
        assert_eq!((status, code.as_str()), (400, "INVALID_REQUEST"), "{bad}");
    }
    let (status, code, _) =
        error_of(get("/api/v1/functions/rust-nothing_here").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (404, "NOT_FOUND"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_language_titles_are_invalid_requests_naming_the_supported_languages() {
    let app = spawn_app().await;
    let token = app.token("alice", ALL);
    for (title, mention) in [
        ("calculator", "<language>-<title>"),
        ("nodejs-Bad Title", "title"),
        ("cobol-payroll", "nodejs, python, rust"),
    ] {
        let (status, code, body) = error_of(app.initialize(&token, title, json!({})).await).await;
        assert_eq!((status, code.as_str()), (400, "INVALID_REQUEST"), "{title}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(mention),
            "{body}"
        );
    }
    let missing = app
        .client
        .post(app.url("/api/v1/initialize"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(missing).await;
    assert_eq!((status, code.as_str()), (400, "INVALID_REQUEST"));
    let (status, code, _) = error_of(
        app.initialize(&token, "rust-unknown_function", json!({}))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "NOT_FOUND"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_invalid_and_expired_tokens_are_unauthorized_and_wrong_scopes_forbidden() {
    let app = spawn_app().await;
    let url = app.url("/api/v1/initialize");
    let send = |token: Option<String>| {
        let mut request = app
            .client
            .post(&url)
            .header("Language-Title", "nodejs-calculator")
            .json(&json!({}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let (status, code, _) = error_of(send(None).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));
    let (status, code, _) = error_of(send(Some("not-a-jwt".into())).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));
    let expired = app
        .keys
        .mint("alice", &["execute:all".into()], Duration::ZERO)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, code, body) = error_of(send(Some(expired)).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    let forged = lambda_host::auth::JwtKeys::from_secret(&[1u8; 32])
        .unwrap()
        .mint("eve", &["execute:all".into()], Duration::from_secs(60))
        .unwrap();
    let (status, _, _) = error_of(send(Some(forged)).await.unwrap()).await;
    assert_eq!(status, 401);

    // execute:python does not reach a JavaScript function, nor the listing.
    let python_only = app.token("alice", "execute:python");
    let (status, code, _) = error_of(send(Some(python_only.clone())).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (403, "FORBIDDEN"));
    assert_eq!(
        app.initialize(&python_only, "python-text_processor", json!({}))
            .await
            .status(),
        200
    );
    let list = app
        .client
        .get(app.url("/api/v1/functions"))
        .bearer_auth(&python_only)
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(list).await;
    assert_eq!((status, code.as_str()), (403, "FORBIDDEN"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_private_expire_and_end_when_not_retained() {
    let app = spawn_app_with(|s| s.server.session_ttl = Duration::from_secs(2)).await;
    let alice = app.token("alice", ALL);
    let bob = app.token("bob", ALL);
    let params = json!({"operation": "multiply", "a": 6, "b": 7});

    // Another user's session is as unknown as a missing one.
    let id = app.session(&alice, "nodejs-calculator", json!({})).await;
    let (status, code, body) = error_of(app.execute(&bob, &id, params.clone()).await).await;
    assert_eq!((status, code.as_str()), (404, "NOT_FOUND"));
    assert_eq!(body["request_id"], id.as_str());
    let peek = app
        .client
        .get(app.url(&format!("/api/v1/sessions/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(peek.status(), 404);
    let (status, code, _) =
        error_of(app.execute(&alice, "no-such-session", params.clone()).await).await;
    assert_eq!((status, code.as_str()), (404, "NOT_FOUND"));

    // A client-chosen id is reused.
    let chosen = format!("client-{}", uuid::Uuid::new_v4().simple());
    let response = app
        .client
        .post(app.url("/api/v1/initialize"))
        .bearer_auth(&alice)
        .header("Language-Title", "nodejs-calculator")
        .header("X-Request-ID", &chosen)
        .json(&json!({ "context": { "retain_session": false } }))
        .send()
        .await
        .unwrap();
    let (_, body) = status_and_body(response).await;
    assert_eq!(body["request_id"], chosen.as_str());
    // retain_session: false ends the session after its first execution.
    assert_eq!(
        app.execute(&alice, &chosen, params.clone()).await.status(),
        200
    );
    assert_eq!(
        app.execute(&alice, &chosen, params.clone()).await.status(),
        404
    );

    // An expired session is gone.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, code, _) = error_of(app.execute(&alice, &id, params).await).await;
    assert_eq!((status, code.as_str()), (404, "NOT_FOUND"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn params_that_are_not_an_object_and_malformed_bodies_are_refused_in_our_format() {
    let app = spawn_app().await;
    let token = app.token("alice", ALL);
    let id = app.session(&token, "rust-data_validator", json!({})).await;
    for params in [json!([1, 2]), json!("text"), json!(null)] {
        let (status, code, _) = error_of(app.execute(&token, &id, params).await).await;
        assert_eq!((status, code.as_str()), (400, "INVALID_PARAMS"));
    }
    let raw = |body: &'static str| {
        app.client
            .post(app.url(&format!("/api/v1/execute/{id}")))
            .bearer_auth(&token)
            .body(body)
            .send()
    };
    let (status, code, _) = error_of(raw("{}").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "INVALID_PARAMS"));
    let (status, code, _) = error_of(raw("{\"params\": {").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "INVALID_REQUEST"));
    let bad_context = app
        .initialize(
            &token,
            "rust-data_validator",
            json!({ "context": { "timeout_ms": "soon" } }),
        )
        .await;
    let (status, code, _) = error_of(bad_context).await;
    assert_eq!((status, code.as_str()), (400, "INVALID_REQUEST"));
    let nowhere = app
        .client
        .get(app.url("/api/v2/everything"))
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(nowhere).await;
    assert_eq!((status, code.as_str()), (404, "NOT_FOUND"));
    let (status, code, _) = error_of(
        app.client
            .get(app.url("/api/v1/initialize"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // A method the route does not serve.
    assert_eq!((status, code.as_str()), (405, "INVALID_REQUEST"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_cannot_confine_builds_refuses_them_and_says_why() {
    // A supervisor that cannot confine anything, as on a kernel without
    // Landlock: the start-up check fails, and no language builds.
    let app = spawn_app_with(|s| s.toolchain.sandbox_supervisor = "/bin/false".into()).await;
    let (status, health) =
        status_and_body(app.client.get(app.url("/health")).send().await.unwrap()).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(
        health["components"]["build_sandbox"]["status"],
        "unavailable"
    );
    let alice = app.token("alice", ALL);
    let (status, code, body) = error_of(
        app.initialize(
            &alice,
            "python-refused",
            json!({ "script_content": "def handler(event):\n    return 1\n" }),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "INVALID_REQUEST"), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("not available"), "{message}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_past_its_limit_is_a_422_naming_the_limit() {
    // No predefined functions: on a fresh machine their first builds at
    // start would not fit in this test's short timeout.
    let no_components = tempfile::tempdir().unwrap();
    let app = spawn_app_with(|s| {
        s.toolchain.build_timeout = std::time::Duration::from_secs(10);
        s.components_dir = no_components.path().to_owned();
    })
    .await;
    let alice = app.token("alice", ALL);
    let forever = format!(
        "# {}\nwhile True:\n    pass\n\ndef handler(event):\n    return 1\n",
        uuid::Uuid::new_v4()
    );
    let started = std::time::Instant::now();
    let (status, code, body) = error_of(
        app.initialize(
            &alice,
            "python-forever",
            json!({ "script_content": forever }),
        )
        .await,
    )
    .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!((status, code.as_str()), (422, "COMPILE_ERROR"), "{body}");
    assert_eq!(body["error"]["details"]["limit"], "time", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("time limit of 10 s"), "{message}");
    // Counted as a timed-out build.
    let metrics = app.metrics().await;
    assert!(
        metrics
            .contains("lambda_component_builds_total{language=\"python\",outcome=\"timeout\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compile_errors_are_422_with_the_line_and_functions_are_not_overwritten() {
    let app = spawn_app().await;
    let alice = app.token("alice", ALL);
    let broken = "export default function (event) {\n  return {;\n}\n";
    let (status, code, body) = error_of(
        app.initialize(&alice, "nodejs-broken", json!({ "script_content": broken }))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (422, "COMPILE_ERROR"));
    assert_eq!(
        body["error"]["details"]["diagnostics"][0]["line"], 2,
        "{body}"
    );

    let source = "def handler(event):\n    return 1\n";
    assert_eq!(
        app.initialize(&alice, "python-mine", json!({ "script_content": source }))
            .await
            .status(),
        200
    );
    let bob = app.token("bob", ALL);
    let (status, code, _) = error_of(
        app.initialize(&bob, "python-mine", json!({ "script_content": source }))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "FORBIDDEN"));
    let (status, code, _) = error_of(
        app.initialize(
            &bob,
            "python-text_processor",
            json!({ "script_content": source }),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "FORBIDDEN"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_errors_carry_the_message_and_line() {
    let app = spawn_app().await;
    let token = app.token("alice", ALL);
    let id = app.session(&token, "nodejs-calculator", json!({})).await;
    let (status, code, body) = error_of(
        app.execute(&token, &id, json!({"operation": "divide", "a": 1, "b": 0}))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (500, "RUNTIME_ERROR"));
    assert_eq!(body["request_id"], id.as_str());
    let details = &body["error"]["details"];
    assert_eq!(details["message"], "RangeError: division by zero", "{body}");
    assert_eq!(details["line"], 10, "{body}");
    assert!(
        details["stack_trace"]
            .as_str()
            .unwrap()
            .contains("handler.js")
    );

    let id = app
        .session(&token, "python-text_processor", json!({}))
        .await;
    let (status, code, body) = error_of(
        app.execute(&token, &id, json!({"action": "reverse", "text": "x"}))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (500, "RUNTIME_ERROR"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("ValueError: unknown action")
    );
    assert_eq!(body["error"]["details"]["line"], 20, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_past_its_deadline_is_a_504_and_one_past_its_memory_cap_a_runtime_error() {
    let app = spawn_app_with(|s| s.runtime.memory_limit_bytes = 64 << 20).await;
    let token = app.token("alice", ALL);
    let timeout_ms = 400;
    let id = app
        .session(&token, "rust-spin", json!({ "script_content": fixture_source("rust/endless_loop.rs"), "context": { "timeout_ms": timeout_ms } }))
        .await;
    let started = Instant::now();
    let (status, code, body) = error_of(app.execute(&token, &id, json!({})).await).await;
    let elapsed = started.elapsed();
    assert_eq!((status, code.as_str()), (504, "TIMEOUT"), "{body}");
    assert_eq!(body["request_id"], id.as_str());
    // The guest is interrupted at its deadline, not abandoned: the answer
    // follows the deadline closely (the margin absorbs a loaded CI machine).
    eprintln!("504 after {elapsed:?} for a {timeout_ms} ms deadline");
    assert!(
        elapsed < Duration::from_millis(timeout_ms + 1000),
        "{elapsed:?}"
    );

    let id = app
        .session(
            &token,
            "rust-hog",
            json!({ "script_content": fixture_source("rust/memory_hog.rs") }),
        )
        .await;
    let (status, code, body) = error_of(app.execute(&token, &id, json!({})).await).await;
    assert_eq!((status, code.as_str()), (500, "RUNTIME_ERROR"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("memory limit"),
        "{body}"
    );
    assert_eq!(body["error"]["details"]["reason"], "out_of_memory");
    // The next execution of the same function, within its cap, works.
    let (status, body) =
        status_and_body(app.execute(&token, &id, json!({ "megabytes": 4 })).await).await;
    assert_eq!((status, &body["result"]), (200, &json!({ "held_mb": 4 })));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_limit_is_413_in_our_format() {
    let app = spawn_app_with(|s| s.server.body_limit_bytes = 4096).await;
    let token = app.token("alice", ALL);
    let huge = format!("def handler(event):\n    return {:?}\n", "x".repeat(10_000));
    let (status, code, _) = error_of(
        app.initialize(&token, "python-huge", json!({ "script_content": huge }))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (413, "INVALID_REQUEST"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn executions_past_the_rate_limit_are_429_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.server.rate_limits.execute_per_subject = 3;
        s.server.rate_limits.execute_per_anonymous_ip = 2;
    })
    .await;
    let token = app.token("alice", ALL);
    let id = app.session(&token, "rust-data_validator", json!({})).await;
    let params = json!({"data": {"a": 1}, "rules": ["numeric"]});
    for _ in 0..3 {
        assert_eq!(app.execute(&token, &id, params.clone()).await.status(), 200);
    }
    let limited = app.execute(&token, &id, params.clone()).await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    let (status, code, _) = error_of(limited).await;
    assert_eq!((status, code.as_str()), (429, "RATE_LIMITED"));
    // Another subject has its own budget; anonymous callers share their IP's.
    let other = app.token("bob", ALL);
    assert_eq!(
        app.execute(&other, "nobody", params.clone()).await.status(),
        404
    );
    let anonymous = || {
        app.client
            .post(app.url("/api/v1/execute/x"))
            .json(&json!({ "params": {} }))
            .send()
    };
    assert_eq!(anonymous().await.unwrap().status(), 401);
    assert_eq!(anonymous().await.unwrap().status(), 401);
    assert_eq!(anonymous().await.unwrap().status(), 429);
    // Health is never limited.
    for _ in 0..5 {
        assert_eq!(
            app.client
                .get(app.url("/health"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_preflights_are_answered_for_the_api_headers() {
    let app = spawn_app_with(|s| s.server.cors_origins = vec!["https://app.example".into()]).await;
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/initialize"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,language-title,x-request-id",
        )
        .send()
        .await
        .unwrap();
    let headers = preflight.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(headers["access-control-max-age"], "86400");
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("language-title")
    );
    let foreign = app
        .client
        .get(app.url("/health"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_embedded_stores_and_metrics_move_with_requests() {
    let app = spawn_app().await;
    let (status, health) =
        status_and_body(app.client.get(app.url("/health")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["components"]["redis"], "embedded");
    assert_eq!(health["components"]["postgres"], "embedded");
    assert_eq!(
        health["components"]["runtimes"],
        json!({ "nodejs": "ok", "python": "ok", "rust": "ok", "wasm": "ok" })
    );
    let sandbox = &health["components"]["build_sandbox"];
    assert_eq!(sandbox["status"], "ok", "{sandbox}");
    assert!(sandbox["landlock_abi"].as_i64().unwrap() >= 6, "{sandbox}");
    assert_eq!(sandbox["seccomp"], true);

    let token = app.token("alice", ALL);
    let id = app.session(&token, "rust-data_validator", json!({})).await;
    let params = json!({"data": {}, "rules": ["required"]});
    app.execute(&token, &id, params.clone()).await;
    app.execute(&token, &id, params).await;
    let metrics = app.metrics().await;
    for line in [
        "lambda_http_requests_total{endpoint=\"/api/v1/execute/{request_id}\",status=\"200\"} 2",
        "lambda_executions_total{language=\"rust\",outcome=\"ok\",tier=\"1\"} 1",
        "lambda_cache_hits_total 1",
        "lambda_cache_misses_total 1",
        "lambda_sessions_created_total 1",
        "lambda_sessions_active 1",
        "lambda_execution_duration_seconds_count{language=\"rust\",tier=\"1\"} 1",
        // Every series exists from the start, at zero, so rate() sees the
        // first event of each.
        "lambda_executions_total{language=\"python\",outcome=\"ok\",tier=\"0\"} 0",
        "lambda_tier_ups_total{language=\"python\",outcome=\"failed\"} 0",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in\n{metrics}");
    }
    assert!(metrics.contains("lambda_component_compiles_total"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_leaves_a_request_log_row_and_every_error_an_error_row() {
    let app = spawn_app().await;
    let token = app.token("logger", ALL);
    let id = app.session(&token, "rust-data_validator", json!({})).await;
    app.execute(&token, &id, json!({"data": {}, "rules": []}))
        .await;
    app.execute(&token, &id, json!([1])).await; // INVALID_PARAMS
    app.execute(&token, "missing", json!({})).await; // NOT_FOUND
    app.client.get(app.url("/health")).send().await.unwrap();
    let data_dir = app.stop().await;
    let database = data_dir.path().join(lambda_host::server::SQLITE_FILE);

    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", database.display()))
        .await
        .unwrap();
    let rows: Vec<(String, i64, Option<String>)> =
        sqlx::query_as("SELECT endpoint, status, user_id FROM request_logs ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let statuses: Vec<i64> = rows.iter().map(|r| r.1).collect();
    assert_eq!(statuses, [200, 200, 400, 404, 200], "{rows:?}");
    assert!(rows[..4].iter().all(|r| r.2.as_deref() == Some("logger")));
    assert_eq!(rows[4].0, "/health");
    let errors: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT code, request_id FROM error_logs ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        errors,
        [
            ("INVALID_PARAMS".to_owned(), Some(id.clone())),
            ("NOT_FOUND".to_owned(), Some("missing".to_owned()))
        ]
    );
    let sessions: Vec<(String, i64)> =
        sqlx::query_as("SELECT request_id, execution_count FROM sessions")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(sessions, [(id, 1)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_works_the_same_on_redis_and_postgresql() {
    let app = crate::helpers::spawn_production_app().await;
    let (_, health) =
        status_and_body(app.client.get(app.url("/health")).send().await.unwrap()).await;
    assert_eq!(health["components"]["redis"], "ok", "{health}");
    assert_eq!(health["components"]["postgres"], "ok", "{health}");
    let token = app.token("prod", ALL);
    let id = app.session(&token, "rust-data_validator", json!({})).await;
    let params = json!({"data": {"age": 25}, "rules": ["required", "numeric"]});
    let (_, first) = status_and_body(app.execute(&token, &id, params.clone()).await).await;
    assert_eq!(first["result"], json!({"valid": true, "errors": []}));
    let (_, second) = status_and_body(app.execute(&token, &id, params).await).await;
    assert_eq!(second["cached"], true);
    let source = "def handler(event):\n    return {\"n\": event[\"params\"][\"n\"] + 1}\n";
    let id = app
        .session(
            &token,
            "python-plus_one",
            json!({ "script_content": source }),
        )
        .await;
    let (_, body) = status_and_body(app.execute(&token, &id, json!({ "n": 41 })).await).await;
    assert_eq!(body["result"], json!({ "n": 42 }));
    let list = app
        .client
        .get(app.url("/api/v1/functions?type=dynamic&user_id=prod"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (_, list) = status_and_body(list).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["functions"][0]["language_title"], "python-plus_one");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_sessions_and_built_components() {
    use crate::helpers::{spawn_app_with, test_database_url, use_production_stores};
    let database = test_database_url().await;
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    // Each replica has its own data directory: nothing is shared on disk.
    let replica = |database: String, prefix: String| {
        spawn_app_with(move |s| {
            use_production_stores(s, &database, &prefix);
            s.toolchain.artifacts_dir = s.data_dir.join("artifacts");
        })
    };
    let a = replica(database.clone(), prefix.clone()).await;
    let b = replica(database, prefix).await;
    let token = a.token("carol", ALL);

    // Initialize on A, execute on B.
    let id = a.session(&token, "nodejs-calculator", json!({})).await;
    let (status, body) = status_and_body(
        b.execute(
            &token,
            &id,
            json!({"operation": "subtract", "a": 10, "b": 4}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, &body["result"]),
        (200, &json!({"result": 6})),
        "{body}"
    );

    // Built on A, fetched by B: B's toolchain never runs.
    let source = "export default (event) => ({ twice: event.params.n * 2 });\n";
    let built_on_b = b.state.functions.toolchains().stats().built;
    a.session(&token, "nodejs-twice", json!({ "script_content": source }))
        .await;
    let id = b
        .session(&token, "nodejs-twice", json!({ "script_content": source }))
        .await;
    assert_eq!(
        b.state.functions.toolchains().stats().built,
        built_on_b,
        "B rebuilt what A built"
    );
    let (_, body) = status_and_body(b.execute(&token, &id, json!({ "n": 21 })).await).await;
    assert_eq!(body["result"], json!({ "twice": 42 }));

    // A stops; B keeps serving A's session.
    a.stop().await;
    let (status, _) = status_and_body(b.execute(&token, &id, json!({ "n": 1 })).await).await;
    assert_eq!(status, 200);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_request_can_jam_the_log_pipeline() {
    use crate::helpers::{test_database_url, use_production_stores};
    let database = test_database_url().await;
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let app = {
        let database = database.clone();
        spawn_app_with(move |s| use_production_stores(s, &database, &prefix)).await
    };
    // Values wider than their columns: an unauthenticated method of nine
    // letters, a 100-character session id, a 300-character subject.
    let proppatch = reqwest::Method::from_bytes(b"PROPPATCH").unwrap();
    let response = app
        .client
        .request(proppatch, app.url("/health"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    let token = app.token("mallory", ALL);
    let (status, _) = status_and_body(app.execute(&token, &"r".repeat(100), json!({})).await).await;
    assert_eq!(status, 404);
    let wide = app.token(&"s".repeat(300), ALL);
    let response = app
        .client
        .get(app.url("/api/v1/functions"))
        .bearer_auth(&wide)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // An ordinary request after them.
    let marker = uuid::Uuid::new_v4().to_string();
    let (status, _) = status_and_body(app.execute(&token, &marker, json!({})).await).await;
    assert_eq!(status, 404);
    tokio::time::timeout(Duration::from_secs(60), app.stop())
        .await
        .expect("the host cannot stop: its log writer is stuck");

    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    let logged: Vec<(Option<String>, String, Option<String>)> =
        sqlx::query_as("SELECT request_id, method, user_id FROM public.request_logs")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        logged.iter().any(|(_, method, _)| method == "PROPPATC"),
        "{logged:?}"
    );
    assert!(
        logged
            .iter()
            .any(|(id, _, _)| id.as_deref() == Some(&"r".repeat(64))),
        "{logged:?}"
    );
    assert!(
        logged
            .iter()
            .any(|(_, _, user)| user.as_deref() == Some(&"s".repeat(128))),
        "{logged:?}"
    );
    assert!(
        logged
            .iter()
            .any(|(id, _, _)| id.as_deref() == Some(marker.as_str())),
        "the request after them is not logged: {logged:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_result_is_never_served_to_another_user_or_another_context() {
    let app = spawn_app().await;
    let alice = app.token("alice", ALL);
    let mallory = app.token("mallory", ALL);
    let name = format!("rust-echo_{}", uuid::Uuid::new_v4().simple());
    let mine = app
        .session(
            &alice,
            &name,
            json!({ "script_content": fixture_source("rust/echo.rs"), "context": { "role": "owner" } }),
        )
        .await;
    // Another user starts alice's function with a context of their
    // choosing and asks for a long-lived entry.
    let planted = app
        .session(&mallory, &name, json!({ "context": { "role": "admin" } }))
        .await;
    let params = json!({ "q": 1 });
    let response = app
        .client
        .post(app.url(&format!("/api/v1/execute/{planted}")))
        .bearer_auth(&mallory)
        .header("X-Cache-Control", "max-age=86400")
        .json(&json!({ "params": params }))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_body(response).await;
    assert_eq!(
        (status, &body["result"]["context"]["role"]),
        (200, &json!("admin"))
    );
    // Alice gets her own result, computed for her.
    let (_, body) = status_and_body(app.execute(&alice, &mine, params.clone()).await).await;
    assert_eq!(body["cached"], false, "{body}");
    assert_eq!(body["result"]["context"]["role"], "owner", "{body}");
    let (_, body) = status_and_body(app.execute(&alice, &mine, params.clone()).await).await;
    assert_eq!(body["cached"], true, "her own entry serves her: {body}");
    // The same user with another context is another entry too.
    let other = app
        .session(&alice, &name, json!({ "context": { "role": "guest" } }))
        .await;
    let (_, body) = status_and_body(app.execute(&alice, &other, params.clone()).await).await;
    assert_eq!(
        (&body["cached"], &body["result"]["context"]["role"]),
        (&json!(false), &json!("guest"))
    );
    // Absurd ages are refused, not a 500.
    for age in ["max-age=18446744073709551615", "max-age=1e9", "max-age=0"] {
        let response = app
            .client
            .post(app.url(&format!("/api/v1/execute/{mine}")))
            .bearer_auth(&alice)
            .header("X-Cache-Control", age)
            .json(&json!({ "params": params }))
            .send()
            .await
            .unwrap();
        let (status, code, _) = error_of(response).await;
        assert_eq!((status, code.as_str()), (400, "INVALID_REQUEST"), "{age}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_filling_the_host_with_endless_executions_gets_its_share_and_no_more() {
    let app = spawn_app_with(|s| {
        s.runtime.max_instances = 8;
        s.runtime.slot_wait = Duration::from_secs(10);
    })
    .await;
    let greedy = app.token("greedy", ALL);
    let patient = app.token("patient", ALL);
    let endless = app
        .session(
            &greedy,
            &format!("rust-spin_{}", uuid::Uuid::new_v4().simple()),
            json!({ "script_content": fixture_source("rust/endless_loop.rs"), "context": { "timeout_ms": 60_000 } }),
        )
        .await;
    let echo = app
        .session(
            &patient,
            &format!("rust-echo_{}", uuid::Uuid::new_v4().simple()),
            json!({ "script_content": fixture_source("rust/echo.rs") }),
        )
        .await;
    // As many never-ending executions as the host has slots.
    let mut running = Vec::new();
    for _ in 0..8 {
        let request = app
            .client
            .post(app.url(&format!("/api/v1/execute/{endless}")))
            .bearer_auth(&greedy)
            .header("X-Cache-Control", "no-cache")
            .json(&json!({ "params": {} }))
            .send();
        running.push(tokio::spawn(request));
    }
    // A quarter of the slots (2) run; the rest are refused at once.
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused < 6 && Instant::now() < deadline {
        let mut still = Vec::new();
        for request in running {
            if request.is_finished() {
                let response = request.await.unwrap().unwrap();
                assert!(response.headers().contains_key("retry-after"));
                let (status, code, _) = error_of(response).await;
                assert_eq!((status, code.as_str()), (429, "RATE_LIMITED"));
                refused += 1;
            } else {
                still.push(request);
            }
        }
        running = still;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((refused, running.len()), (6, 2));
    assert_eq!(app.state.functions.runtime().instances_in_use(), 2);
    // Another user is served as usual meanwhile.
    for i in 0..5 {
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            app.execute(&patient, &echo, json!({ "i": i })),
        )
        .await
        .expect("another user's execution waits behind the greedy one's");
        assert_eq!(response.status(), 200);
    }
    for request in running {
        request.abort();
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_host_answers_503_after_a_bounded_wait() {
    let app = spawn_app_with(|s| {
        s.runtime.max_instances = 2;
        s.runtime.caller_slot_share = 0.5;
        s.runtime.slot_wait = Duration::from_millis(300);
    })
    .await;
    let name = format!("rust-spin_{}", uuid::Uuid::new_v4().simple());
    let source = fixture_source("rust/endless_loop.rs");
    let mut running = Vec::new();
    for user in ["a", "b"] {
        let token = app.token(user, ALL);
        // a registers the function, b starts a's function.
        let mut body = json!({ "context": { "timeout_ms": 60_000 } });
        if user == "a" {
            body["script_content"] = json!(source);
        }
        let id = app.session(&token, &name, body).await;
        let request = app
            .client
            .post(app.url(&format!("/api/v1/execute/{id}")))
            .bearer_auth(&token)
            .json(&json!({ "params": {} }))
            .send();
        running.push(tokio::spawn(request));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.state.functions.runtime().instances_in_use() < 2 {
        assert!(
            Instant::now() < deadline,
            "the endless executions never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let third = app.token("c", ALL);
    let id = app.session(&third, &name, json!({})).await;
    let response =
        tokio::time::timeout(Duration::from_secs(10), app.execute(&third, &id, json!({})))
            .await
            .expect("the wait for a slot is not bounded");
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (503, "OVERLOADED"));
    for request in running {
        request.abort();
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_users_registering_one_new_name_at_once_exactly_one_wins() {
    let app = spawn_app().await;
    let name = format!("rust-race_{}", uuid::Uuid::new_v4().simple());
    let source = |who: &str| {
        format!(
            "use serde_json::{{json, Value}};\npub fn handler(_: Value) -> Result<Value, String> {{ Ok(json!(\"{who}\")) }}\n"
        )
    };
    let register = |who: &'static str| {
        app.client
            .post(app.url("/api/v1/initialize"))
            .bearer_auth(app.token(who, ALL))
            .header("Language-Title", &name)
            .json(&json!({ "script_content": source(who) }))
            .send()
    };
    let (first, second) = tokio::join!(register("ann"), register("ben"));
    let (first, second) = (
        status_and_body(first.unwrap()).await,
        status_and_body(second.unwrap()).await,
    );
    let mut statuses = [first.0, second.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 403], "{first:?} {second:?}");
    let (winner, session) = if first.0 == 200 {
        ("ann", &first.1)
    } else {
        ("ben", &second.1)
    };
    // The name is the winner's, with the winner's code.
    let title = lambda_host::language::LanguageTitle::parse(&name).unwrap();
    let record = app.state.functions.get(&title).await.unwrap().unwrap();
    assert_eq!(record.owner.as_deref(), Some(winner));
    let id = session["request_id"].as_str().unwrap();
    let (_, body) =
        status_and_body(app.execute(&app.token(winner, ALL), id, json!({})).await).await;
    assert_eq!(body["result"], winner);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn initialize_is_rate_limited_builds_more_tightly_and_a_context_is_capped() {
    let app = spawn_app_with(|s| {
        s.server.rate_limits.builds_per_subject = 2;
        s.server.rate_limits.initialize_per_subject = 5;
    })
    .await;
    let builder = app.token("builder", ALL);
    let build = |i: usize| {
        let name = format!("rust-echo_{i}_{}", uuid::Uuid::new_v4().simple());
        let builder = &builder;
        let app = &app;
        async move {
            app.initialize(
                builder,
                &name,
                json!({ "script_content": fixture_source("rust/echo.rs") }),
            )
            .await
        }
    };
    for i in 0..2 {
        assert_eq!(build(i).await.status(), 200);
    }
    let response = build(2).await;
    assert!(response.headers().contains_key("retry-after"));
    let (status, code, body) = error_of(response).await;
    assert_eq!((status, code.as_str()), (429, "RATE_LIMITED"));
    assert_eq!(body["error"]["details"]["reason"], "builds");
    // Starting a function without building counts against initialize's
    // own limit: 3 requests so far, 2 more pass.
    for _ in 0..2 {
        let response = app
            .initialize(&builder, "rust-data_validator", json!({}))
            .await;
        assert_eq!(response.status(), 200);
    }
    let (status, code, _) = error_of(
        app.initialize(&builder, "rust-data_validator", json!({}))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (429, "RATE_LIMITED"));
    // Another user is not affected.
    let other = app.token("other", ALL);
    assert_eq!(
        app.initialize(&other, "rust-data_validator", json!({}))
            .await
            .status(),
        200
    );
    // A context beyond 64 KiB is refused, whatever the body limit allows.
    let big = json!({ "blob": "x".repeat(70 << 10) });
    let (status, code, body) = error_of(
        app.initialize(&other, "rust-data_validator", json!({ "context": big }))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (413, "INVALID_REQUEST"), "{body}");
    assert_eq!(body["error"]["details"]["limit_bytes"], 64 << 10);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_cannot_fill_the_session_store() {
    let app = spawn_app_with(|s| s.server.session_quota_bytes = 200 << 10).await;
    let hoarder = app.token("hoarder", ALL);
    let context = json!({ "blob": "x".repeat(60 << 10) });
    // Three sessions of ~60 KiB fit in 200 KiB; the fourth does not.
    for _ in 0..3 {
        app.session(
            &hoarder,
            "rust-data_validator",
            json!({ "context": context }),
        )
        .await;
    }
    let response = app
        .initialize(
            &hoarder,
            "rust-data_validator",
            json!({ "context": context }),
        )
        .await;
    assert!(response.headers().contains_key("retry-after"));
    let (status, code, body) = error_of(response).await;
    assert_eq!((status, code.as_str()), (429, "RATE_LIMITED"), "{body}");
    assert_eq!(body["error"]["details"]["reason"], "session_quota");
    // Others still start sessions.
    let other = app.token("other", ALL);
    app.session(&other, "rust-data_validator", json!({ "context": context }))
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_covers_every_route_and_error_code() {
    let app = spawn_app().await;
    let (status, document) = status_and_body(
        app.client
            .get(app.url("/api/v1/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    // Every route of API.md, the routes of HTTP functions (any method;
    // the usual ones documented), and these operations only.
    let mut operations: Vec<String> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    operations.sort();
    assert_eq!(
        operations,
        [
            "DELETE /fn/{language_title}/{path}",
            "GET /api/v1/functions",
            "GET /api/v1/functions/{language_title}",
            "GET /api/v1/openapi.json",
            "GET /api/v1/sessions/{request_id}",
            "GET /fn/{language_title}/{path}",
            "GET /health",
            "GET /metrics",
            "PATCH /fn/{language_title}/{path}",
            "POST /api/v1/execute/{request_id}",
            "POST /api/v1/initialize",
            "POST /fn/{language_title}/{path}",
            "PUT /fn/{language_title}/{path}",
        ]
    );
    // Every error code is named, and every status an error can have is
    // documented on some operation.
    let codes: Vec<&str> = document["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let statuses: std::collections::HashSet<String> = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .flat_map(|operation| operation["responses"].as_object().unwrap().keys().cloned())
        .collect();
    for code in lambda_host::api::Code::ALL {
        assert!(
            codes.contains(&code.as_str()),
            "{code:?} is not in ErrorCode"
        );
        // The answer to a method the document does not list.
        if code == lambda_host::api::Code::MethodNotAllowed {
            continue;
        }
        let status = code.status().as_u16().to_string();
        assert!(
            statuses.contains(&status),
            "no operation documents {status} ({code:?})"
        );
    }
    // Protected operations say so.
    assert_eq!(
        document["paths"]["/api/v1/execute/{request_id}"]["post"]["security"],
        json!([{ "bearer": [] }])
    );
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // And a browsable page of it.
    let page = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/api/v1/openapi.json"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_fuzzer_found_is_answered_by_the_contract() {
    let app = spawn_app().await;
    let token = app.token("fuzz", ALL);
    // A body must be an object (serde would read a struct from an array).
    let response = app
        .client
        .post(app.url("/api/v1/initialize"))
        .bearer_auth(&token)
        .header("Language-Title", "nodejs-calculator")
        .header("Content-Type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (400, "INVALID_REQUEST"));
    // A source with a NUL character is no source (and PostgreSQL would
    // refuse to store it).
    let (status, code, _) = error_of(
        app.initialize(
            &token,
            "nodejs-nul",
            json!({ "script_content": "export default () => 'a\u{0}b';" }),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "INVALID_REQUEST"));
    // `null` is no body.
    let response = app
        .client
        .post(app.url("/api/v1/initialize"))
        .bearer_auth(&token)
        .header("Language-Title", "nodejs-calculator")
        .header("Content-Type", "application/json")
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A method a route does not serve is 405 with the methods it does.
    let response = app
        .client
        .request(reqwest::Method::TRACE, app.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok()),
        Some("GET,HEAD")
    );
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (405, "INVALID_REQUEST"));
    // Pages past any registry are refused, as the document says.
    let response = app
        .client
        .get(app.url("/api/v1/functions?user_id=a%00b"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (400, "INVALID_REQUEST"));
    let response = app
        .client
        .get(app.url("/api/v1/functions?page=2147483648"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (400, "INVALID_REQUEST"));
    app.stop().await;
}

/// The bug: the sweep task was aborted the moment the host began serving,
/// so while it served nothing past its retention was ever deleted.
#[tokio::test(flavor = "multi_thread")]
async fn the_retention_sweep_runs_while_the_host_serves() {
    let no_functions = tempfile::tempdir().unwrap();
    let app = spawn_app_with(|s| {
        // Nothing the other tests share may be swept: no predefined
        // functions, and stores of builds of its own.
        s.components_dir = no_functions.path().to_owned();
        s.toolchain.artifacts_dir = s.data_dir.join("own-artifacts");
        s.runtime.aot_cache_dir = Some(s.data_dir.join("own-aot"));
        std::fs::create_dir_all(&s.toolchain.artifacts_dir).unwrap();
        std::fs::create_dir_all(s.data_dir.join("own-aot")).unwrap();
        s.server.log_retention = Duration::from_secs(1);
        s.server.log_sweep_interval = Duration::from_millis(200);
    })
    .await;
    let database = app.data_dir.path().join("lambda.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", database.display()))
        .await
        .unwrap();
    let logged = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM request_logs")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let started = Instant::now();
    let mut seen = 0;
    // Requests keep coming; each is logged, then swept a second later.
    while started.elapsed() < Duration::from_secs(15) {
        app.client.get(app.url("/health")).send().await.unwrap();
        seen = seen.max(logged().await);
        if seen > 0 && started.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen > 0, "requests are logged");
    let oldest: String = sqlx::query_scalar("SELECT MIN(created_at) FROM request_logs")
        .fetch_one(&pool)
        .await
        .unwrap();
    let oldest = chrono::DateTime::parse_from_rfc3339(&oldest).unwrap();
    let age = chrono::Utc::now().signed_duration_since(oldest);
    assert!(
        age < chrono::Duration::seconds(3),
        "the oldest request log is {age} old: nothing was swept"
    );
    app.stop().await;
}

/// The bug: `/metrics` copied the runtime's counters into its own by
/// read-then-add, so scrapes that overlapped added the same compilations
/// again, for good. They are read at each scrape now.
#[tokio::test(flavor = "multi_thread")]
async fn overlapping_scrapes_report_compilations_exactly() {
    // One function, compiled by this host (an AOT cache of its own).
    let components = tempfile::tempdir().unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(crate::helpers::repo_root().join("components/rust-data_validator"))
        .arg(components.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let app = spawn_app_with(|s| {
        s.components_dir = components.path().to_owned();
        s.runtime.aot_cache_dir = Some(s.data_dir.join("own-aot"));
        std::fs::create_dir_all(s.data_dir.join("own-aot")).unwrap();
    })
    .await;
    let compiles = app.state.functions.runtime().cache_stats().compiles;
    assert_eq!(compiles, 1);
    let scrapes: Vec<_> = (0..32)
        .map(|_| app.client.get(app.url("/metrics")).send())
        .collect();
    for scrape in futures::future::join_all(scrapes).await {
        assert_eq!(scrape.unwrap().status(), 200);
    }
    let text = app.metrics().await;
    assert!(
        text.contains("\nlambda_component_compiles_total 1\n"),
        "{}",
        text.lines()
            .filter(|l| l.contains("compiles"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    app.stop().await;
}
