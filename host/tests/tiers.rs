//! The two tiers of JavaScript and Python functions through the API: a new
//! function answers on its language's interpreter at once, moves to its
//! own component when that is built, with no failed request on the way,
//! and stays on the interpreter, saying why, when its own component
//! cannot be built.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lambda_host::config::Settings;
use lambda_host::language::Language;
use serde_json::{Value, json};

use crate::helpers::{TestApp, interpreter, spawn_app_with, status_and_body};

const SCOPES: &str = "execute:all read:functions";

/// A server whose interpreters are loaded: new functions start on them.
async fn app_with_interpreters(configure: impl FnOnce(&mut Settings)) -> TestApp {
    // Built (or found) in the shared artifact store first, with the
    // default build limits, whatever `configure` sets.
    for language in [Language::Nodejs, Language::Python] {
        interpreter(language).await;
    }
    let app = spawn_app_with(|settings| {
        settings.toolchain.no_interpreters = false;
        // Executions and function reads without pause, as one user.
        settings.server.rate_limits.execute_per_subject = 1_000_000;
        settings.server.rate_limits.functions_per_subject = 1_000_000;
        configure(settings);
    })
    .await;
    let tiers = app.state.functions.tiers();
    // Loading them compiles two 12-18 MB components per replica (about
    // 10 s each in release on an idle core); a CI machine running the other
    // tests on the same two cores has needed more than two minutes.
    let deadline = Instant::now() + Duration::from_secs(360);
    while tiers.interpreter(Language::Nodejs).is_none()
        || tiers.interpreter(Language::Python).is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the interpreters never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app
}

async fn info(app: &TestApp, token: &str, name: &str) -> Value {
    let response = app
        .client
        .get(app.url(&format!("/api/v1/functions/{name}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn executions(app: &TestApp, language: Language, tier: &str) -> u64 {
    app.state
        .metrics
        .executions
        .with_label_values(&[language.as_str(), tier, "ok"])
        .get()
}

/// A source unique to this test run, so no earlier build of it exists.
fn javascript() -> String {
    format!(
        "// {}\nconst loadedAt = Date.now();\nexport function handler(event) {{\n  \
         return {{ doubled: event.params.n * 2, age_ms: Date.now() - loadedAt }};\n}}\n",
        uuid::Uuid::new_v4()
    )
}

fn python() -> String {
    format!(
        "# {}\nimport time\nLOADED_AT = time.time()\n\ndef handler(event):\n    \
         return {{\"doubled\": event[\"params\"][\"n\"] * 2, \"age_ms\": (time.time() - LOADED_AT) * 1000}}\n",
        uuid::Uuid::new_v4()
    )
}

/// Initializes `source` and runs executions without pause from two
/// clients until the function's own component runs, then a few more.
/// Every request must succeed with the right result.
async fn swaps_under_load(app: Arc<TestApp>, language: Language, source: String) {
    let token = app.token("alice", SCOPES);
    let name = format!("{language}-swap");
    let started = Instant::now();
    let session = app
        .session(&token, &name, json!({ "script_content": source }))
        .await;
    let initialized = started.elapsed();
    let before = info(&app, &token, &name).await;
    assert_eq!(before["tier"], 0, "{before}");
    assert_eq!(before["tier1"], "pending", "{before}");

    let swapped = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..2u64 {
        let (app, token, session, swapped) =
            (app.clone(), token.clone(), session.clone(), swapped.clone());
        clients.push(tokio::spawn(async move {
            let mut n = client * 1_000_000;
            let mut after_swap = 0;
            let mut ages = Vec::new();
            while after_swap < 5 {
                n += 1;
                let (status, body) =
                    status_and_body(app.execute(&token, &session, json!({ "n": n })).await).await;
                assert_eq!(status, 200, "{language}: {body}");
                assert_eq!(
                    body["result"]["doubled"],
                    json!(n * 2),
                    "{language}: {body}"
                );
                if swapped.load(Ordering::Relaxed) {
                    after_swap += 1;
                    ages.push(body["result"]["age_ms"].as_f64().unwrap());
                }
            }
            ages
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let now = info(&app, &token, &name).await;
        if now["tier"] == 1 {
            assert_eq!(now["tier1"], "ready", "{now}");
            break;
        }
        assert_eq!(now["tier1"], "pending", "{language}: {now}");
        assert!(Instant::now() < deadline, "{language}: tier 1 never came");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Top-level code ran at build time in tier 1: a second later, its
    // clock reading is at least a second old (on the interpreter it is
    // read at every call).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    swapped.store(true, Ordering::Relaxed);
    for client in clients {
        let ages = client.await.unwrap();
        assert!(
            ages.iter().all(|age| *age >= 1000.0),
            "{language}: {ages:?}"
        );
    }
    assert!(
        executions(&app, language, "0") > 0,
        "{language}: nothing ran on tier 0"
    );
    assert!(
        executions(&app, language, "1") >= 10,
        "{language}: too little ran on tier 1"
    );
    assert!(
        initialized < Duration::from_secs(5),
        "{language}: initialize took {initialized:?}, as long as a build"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn new_functions_answer_on_the_interpreter_and_move_to_their_own_component_without_a_failed_request()
 {
    let app = Arc::new(app_with_interpreters(|_| {}).await);
    tokio::join!(
        swaps_under_load(app.clone(), Language::Nodejs, javascript()),
        swaps_under_load(app.clone(), Language::Python, python()),
    );
    // Each version's tier 1 was built once, and time to tier 1 is measured.
    for language in ["nodejs", "python"] {
        let tier_ups = &app.state.metrics.tier_ups;
        assert_eq!(tier_ups.with_label_values(&[language, "ok"]).get(), 1);
        let histogram = app
            .state
            .metrics
            .tier_up_duration
            .with_label_values(&[language]);
        assert_eq!(histogram.get_sample_count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_interpreter_refuses_what_a_build_refuses_with_the_place_of_the_mistake() {
    let app = app_with_interpreters(|settings| {
        settings.runtime.default_timeout = Some(Duration::from_secs(1));
    })
    .await;
    let token = app.token("alice", SCOPES);
    let builds_before = app.state.functions.toolchains().stats();
    let cases: [(&str, &str, &str, Option<u64>); 5] = [
        (
            "nodejs-syntax",
            "export function handler(event) {\n  return {;\n}\n",
            "SyntaxError",
            Some(2),
        ),
        (
            "nodejs-import",
            "import fs from 'node:fs';\nexport default () => 1;\n",
            "a function is one file",
            Some(1),
        ),
        (
            "nodejs-top-level",
            "const x = 1;\nthrow new Error('at load');\n",
            "Error: at load",
            Some(2),
        ),
        (
            "python-syntax",
            "def handler(event):\n    return (\n",
            "SyntaxError",
            Some(2),
        ),
        (
            "python-top-level",
            "x = 1\nraise ValueError('at load')\n",
            "ValueError: at load",
            Some(2),
        ),
    ];
    for (name, source, message, line) in cases {
        let started = Instant::now();
        let response = app
            .initialize(&token, name, json!({ "script_content": source }))
            .await;
        let (status, body) = status_and_body(response).await;
        assert_eq!(status, 422, "{name}: {body}");
        assert_eq!(body["error"]["code"], "COMPILE_ERROR", "{name}: {body}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{name}: {body}");
        let diagnostic = &body["error"]["details"]["diagnostics"][0];
        assert_eq!(diagnostic["line"].as_u64(), line, "{name}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
        // Nothing was registered.
        let missing = app
            .client
            .get(app.url(&format!("/api/v1/functions/{name}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404, "{name}");
    }
    // No build ran for any of them.
    assert_eq!(app.state.functions.toolchains().stats(), builds_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn top_level_code_longer_than_an_execution_is_left_to_the_build() {
    // An execution may last a second; a build five minutes (a JavaScript
    // build takes 20-30 s on an idle core, and more than 40 s when the
    // machine's two cores are shared with other tests).
    let no_predefined = tempfile::tempdir().unwrap();
    let app = app_with_interpreters(|settings| {
        settings.runtime.default_timeout = Some(Duration::from_secs(1));
        settings.toolchain.build_timeout = Duration::from_secs(300);
        settings.components_dir = no_predefined.path().to_owned();
    })
    .await;
    let token = app.token("alice", SCOPES);
    // Two seconds of work at load: more than the interpreter may spend,
    // well within a build, which runs it once.
    let slow = format!(
        "// {}\nconst until = Date.now() + 2000;\nwhile (Date.now() < until) {{}}\n\
         export default (event) => ({{ ok: event.params.n }});\n",
        uuid::Uuid::new_v4()
    );
    let id = app
        .session(
            &token,
            "nodejs-slow_start",
            json!({ "script_content": slow }),
        )
        .await;
    let built = info(&app, &token, "nodejs-slow_start").await;
    assert_eq!(
        (&built["tier"], &built["tier1"]),
        (&json!(1), &json!("ready")),
        "{built}"
    );
    let (status, body) = status_and_body(app.execute(&token, &id, json!({ "n": 7 })).await).await;
    assert_eq!(
        (status, &body["result"]),
        (200, &json!({ "ok": 7 })),
        "{body}"
    );
    // Endless top-level code ends at the build's time limit, as
    // hostile_builds::never_ending_builds_end_at_the_time_limit_with_their_whole_tree
    // shows.
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_whose_own_component_cannot_be_built_stays_on_the_interpreter_and_says_why() {
    // 64 MiB is far too little for a build (node and wizer, or CPython);
    // no predefined function is built under it.
    let no_predefined = tempfile::tempdir().unwrap();
    let app = app_with_interpreters(|settings| {
        settings.toolchain.build_memory_bytes = 64 << 20;
        settings.components_dir = no_predefined.path().to_owned();
    })
    .await;
    let token = app.token("alice", SCOPES);
    let name = "nodejs-stays";
    let session = app
        .session(&token, name, json!({ "script_content": javascript() }))
        .await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let info = loop {
        let now = info(&app, &token, name).await;
        if now["tier1"] != "pending" {
            break now;
        }
        assert!(Instant::now() < deadline, "tier 1 never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(info["tier"], 0, "{info}");
    assert_eq!(info["tier1"], "failed", "{info}");
    let reason = info["tier1_error"].as_str().unwrap();
    assert!(reason.contains("memory"), "{info}");
    assert!(
        !reason.contains(app.data_dir.path().to_str().unwrap()),
        "{info}"
    );
    let (status, body) =
        status_and_body(app.execute(&token, &session, json!({ "n": 21 })).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["doubled"], 42);
    assert_eq!(
        app.state
            .metrics
            .tier_ups
            .with_label_values(&["nodejs", "failed"])
            .get(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_function_runs_at_once_on_another_replica_which_later_runs_the_first_ones_tier_1() {
    use crate::helpers::{test_database_url, use_production_stores};
    let database = test_database_url().await;
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    // Each replica has its own data directory; they share Redis and
    // PostgreSQL (the registry and the artifact store). Without predefined
    // functions, which each replica would otherwise build anew into its
    // own directory: this test needs none of them.
    let replica = |database: String, prefix: String| {
        app_with_interpreters(move |s| {
            use_production_stores(s, &database, &prefix);
            s.toolchain.artifacts_dir = s.data_dir.join("artifacts");
            s.components_dir = s.data_dir.join("no-predefined-functions");
            std::fs::create_dir_all(&s.components_dir).unwrap();
        })
    };
    let a = replica(database.clone(), prefix.clone()).await;
    let b = replica(database, prefix).await;
    let token = a.token("carol", SCOPES);
    let built_on_b = b.state.functions.toolchains().stats().built;

    let id = a
        .session(
            &token,
            "nodejs-elsewhere",
            json!({ "script_content": javascript() }),
        )
        .await;
    // B runs it on its interpreter at once.
    let (status, body) = status_and_body(b.execute(&token, &id, json!({ "n": 1 })).await).await;
    assert_eq!(
        (status, &body["result"]["doubled"]),
        (200, &json!(2)),
        "{body}"
    );
    assert!(executions(&b, Language::Nodejs, "0") >= 1);

    // A builds tier 1; B learns of it from the registry and moves to it,
    // every request answered meanwhile, without building anything.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut n = 1;
    while executions(&b, Language::Nodejs, "1") == 0 {
        assert!(Instant::now() < deadline, "B never ran tier 1");
        n += 1;
        let (status, body) = status_and_body(b.execute(&token, &id, json!({ "n": n })).await).await;
        assert_eq!(
            (status, &body["result"]["doubled"]),
            (200, &json!(n * 2)),
            "{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(info(&b, &token, "nodejs-elsewhere").await["tier"], 1);
    assert_eq!(
        b.state.functions.toolchains().stats().built,
        built_on_b,
        "B built what A built"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tier_1_left_pending_by_a_host_that_stopped_is_built_by_the_next_that_runs_it() {
    use lambda_host::store::{FunctionKind, FunctionRecord, TierState};
    use lambda_host::toolchain::BuildOptions;
    let app = app_with_interpreters(|_| {}).await;
    let token = app.token("dave", SCOPES);
    let functions = &app.state.functions;
    let source = python();
    let options = BuildOptions::default();
    let interpreter = functions.tiers().interpreter(Language::Python).unwrap();
    // What a host leaves when it stops between registering a function on
    // the interpreter and recording its tier 1: a pending record, older
    // than any build could take.
    let registered = chrono::Utc::now() - chrono::Duration::minutes(11);
    let record = FunctionRecord {
        language_title: "python-orphan".parse().unwrap(),
        kind: FunctionKind::Dynamic,
        owner: Some("dave".to_owned()),
        description: String::new(),
        script_content: Some(source.clone()),
        build_digest: functions
            .toolchains()
            .digest(Language::Python, &source, &options)
            .unwrap(),
        component_digest: interpreter.component_digest,
        component_size: interpreter.component_size,
        tier: TierState::Pending,
        warm_instances: false,
        capabilities: None,
        compile_options: serde_json::to_value(options).unwrap(),
        schema: json!({}),
        examples: json!([]),
        created_at: registered,
        updated_at: registered,
    };
    assert!(functions.registry().upsert(&record).await.unwrap());

    let id = app.session(&token, "python-orphan", json!({})).await;
    let (status, body) = status_and_body(app.execute(&token, &id, json!({ "n": 4 })).await).await;
    assert_eq!(
        (status, &body["result"]["doubled"]),
        (200, &json!(8)),
        "{body}"
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    while info(&app, &token, "python-orphan").await["tier"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the abandoned tier 1 was never built"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        app.state
            .metrics
            .tier_ups
            .with_label_values(&["python", "ok"])
            .get(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_forges_its_prepared_form_breaks_only_itself() {
    let app = app_with_interpreters(|_| {}).await;
    let mallory = app.token("mallory", SCOPES);
    let alice = app.token("alice", SCOPES);
    let honest = app
        .session(
            &alice,
            "nodejs-honest",
            json!({ "script_content": javascript() }),
        )
        .await;
    // Top-level code that replaces what the check answers: a prepared
    // form that is not one.
    let forger = format!(
        "// {}\nconst real = JSON.stringify;\n\
         JSON.stringify = (v) => typeof v === 'string' ? real('not a prepared body') : real(v);\n\
         export default () => ({{ ok: true }});\n",
        uuid::Uuid::new_v4()
    );
    let forged = app
        .session(
            &mallory,
            "nodejs-forger",
            json!({ "script_content": forger }),
        )
        .await;
    let (status, body) = status_and_body(app.execute(&mallory, &forged, json!({})).await).await;
    // Its own execution fails as its own runtime error, nothing of the
    // host's; another user's function is untouched.
    assert_eq!(body["error"]["code"], "RUNTIME_ERROR", "{status} {body}");
    let (status, body) =
        status_and_body(app.execute(&alice, &honest, json!({ "n": 5 })).await).await;
    assert_eq!(
        (status, &body["result"]["doubled"]),
        (200, &json!(10)),
        "{body}"
    );
}
