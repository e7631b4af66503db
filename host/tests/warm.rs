//! Warm instances through the API: an instance serves only its caller's
//! executions of one function version, and goes after anything its glue
//! cannot vouch for.
//!
//! The function counts its calls in a global: a count that goes on means
//! the same instance answered, a count back at 1 a fresh one.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with, status_and_body};

/// A Rust function with a call counter in a global; `do` makes it panic
/// (a trap), spin forever (a timeout), return an error of its own or keep
/// 8 MiB more in a global.
fn counter_source(version: &str) -> String {
    format!(
        r#"use serde_json::{{json, Value}};
use std::sync::Mutex;
use std::sync::atomic::{{AtomicU64, Ordering}};

static CALLS: AtomicU64 = AtomicU64::new(0);
static HOARD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

pub fn handler(event: Value) -> Result<Value, String> {{
    let calls = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    match event["params"]["do"].as_str() {{
        Some("panic") => panic!("asked to panic on call {{calls}}"),
        Some("spin") => loop {{
            std::hint::black_box(calls);
        }},
        Some("fail") => Err(format!("asked to fail on call {{calls}}")),
        Some("hoard") => {{
            let mut hoard = HOARD.lock().unwrap();
            hoard.push(vec![1u8; 8 << 20]);
            Ok(json!({{ "calls": calls, "hoarded_mib": hoard.len() * 8 }}))
        }}
        _ => Ok(json!({{ "calls": calls, "version": "{version}" }})),
    }}
}}
"#
    )
}

/// A client of one session: every execution gets params of its own, so
/// the result cache never answers in the function's place.
struct Caller<'a> {
    app: &'a TestApp,
    token: String,
    session: String,
    sent: u64,
}

impl<'a> Caller<'a> {
    async fn start(app: &'a TestApp, sub: &str, body: Value) -> Caller<'a> {
        let token = app.token(sub, "execute:all read:functions");
        let session = app.session(&token, "rust-warm_counter", body).await;
        Caller {
            app,
            token,
            session,
            sent: 0,
        }
    }

    async fn call(&mut self, what: &str) -> (u16, Value) {
        self.sent += 1;
        let params = json!({ "do": what, "n": self.sent });
        status_and_body(self.app.execute(&self.token, &self.session, params).await).await
    }

    /// The count of a call that answered.
    async fn count(&mut self) -> u64 {
        let (status, body) = self.call("count").await;
        assert_eq!(status, 200, "{body}");
        body["result"]["calls"].as_u64().unwrap()
    }

    async fn counts(&mut self, n: usize) -> Vec<u64> {
        let mut counts = Vec::new();
        for _ in 0..n {
            counts.push(self.count().await);
        }
        counts
    }
}

fn register(version: &str, warm: bool) -> Value {
    json!({
        "script_content": counter_source(version),
        "context": { "warm_instances": warm, "timeout_ms": 1000 },
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn two_callers_never_share_a_warm_instance() {
    let app = spawn_app().await;
    let mut alice = Caller::start(&app, "alice", register("v1", true)).await;
    assert_eq!(alice.counts(3).await, [1, 2, 3]);
    // Bob runs Alice's function: the same version, in an instance of his.
    let mut bob = Caller::start(&app, "bob", json!({ "context": { "timeout_ms": 1000 } })).await;
    assert_eq!(bob.counts(2).await, [1, 2]);
    assert_eq!(alice.counts(1).await, [4]);
    // Another session of Alice's, same version: her instance again.
    let mut alice_again =
        Caller::start(&app, "alice", json!({ "context": { "timeout_ms": 1000 } })).await;
    assert_eq!(alice_again.counts(1).await, [5]);
    assert_eq!(bob.counts(1).await, [3]);

    // What the function says of itself and what the metrics count.
    let detail = app
        .state
        .functions
        .get(&"rust-warm_counter".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(detail.warm_instances);
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Two fresh instances (one per caller), every other execution warm.
    let started = |start| {
        metric(
            &metrics,
            &format!("lambda_instances_started_total{{start=\"{start}\"}}"),
        )
    };
    assert_eq!((started("fresh"), started("warm")), (2.0, 6.0));
    assert!(metric(&metrics, "lambda_warm_instances_idle") >= 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_or_a_timeout_retires_the_instance_but_a_reported_error_does_not() {
    let app = spawn_app().await;
    let mut alice = Caller::start(&app, "alice", register("v1", true)).await;
    assert_eq!(alice.counts(2).await, [1, 2]);

    // An error the function returned itself: its glue answered as meant,
    // the instance stays.
    let (status, body) = alice.call("fail").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("RUNTIME_ERROR")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("call 3"),
        "{body}"
    );
    assert_eq!(alice.counts(1).await, [4]);

    // A panic traps: the next execution is in a fresh instance.
    let (status, body) = alice.call("panic").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("RUNTIME_ERROR")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("call 5"),
        "{body}"
    );
    assert_eq!(alice.counts(2).await, [1, 2]);

    // So does a timeout.
    let (status, body) = alice.call("spin").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (504, Some("TIMEOUT")),
        "{body}"
    );
    assert_eq!(alice.counts(1).await, [1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_warm_instance_holds_counts_towards_each_cap_and_running_out_retires_it() {
    let app = spawn_app_with(|settings| settings.runtime.memory_limit_bytes = 64 << 20).await;
    let mut alice = Caller::start(&app, "alice", register("v1", true)).await;
    // Each execution alone needs 8 MiB more; the instance keeps them all.
    let mut hoarded = 0;
    let out_of_memory = loop {
        let (status, body) = alice.call("hoard").await;
        if status != 200 {
            break body;
        }
        hoarded = body["result"]["hoarded_mib"].as_u64().unwrap();
        assert!(hoarded < 64, "{hoarded} MiB held under a 64 MiB cap");
    };
    assert!(hoarded >= 32, "only {hoarded} MiB before the cap");
    let message = out_of_memory["error"]["message"].as_str().unwrap();
    assert!(message.contains("memory limit"), "{out_of_memory}");
    // The instance that ran out is gone: the next one starts empty.
    assert_eq!(alice.counts(1).await, [1]);
    let (status, body) = alice.call("hoard").await;
    assert_eq!(
        (status, &body["result"]["hoarded_mib"]),
        (200, &json!(8)),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_function_version_never_runs_in_an_old_instance() {
    let app = spawn_app().await;
    let mut old = Caller::start(&app, "alice", register("v1", true)).await;
    assert_eq!(old.counts(2).await, [1, 2]);
    // Alice replaces her function: a new version, new instances.
    let mut new = Caller::start(&app, "alice", register("v2", true)).await;
    let (status, body) = new.call("count").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!({ "calls": 1, "version": "v2" }));
    // The session of the old version keeps its own instance.
    let (status, body) = old.call("count").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!({ "calls": 3, "version": "v1" }));
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_instances_are_opt_in_and_retired_after_their_uses_or_idle_time() {
    let app = spawn_app_with(|settings| {
        settings.runtime.warm_instance_uses = 3;
        settings.runtime.warm_instance_idle = Duration::from_millis(300);
    })
    .await;
    // Not opted in: a fresh instance every time.
    let mut cold = Caller::start(&app, "alice", register("v1", false)).await;
    assert_eq!(cold.counts(3).await, [1, 1, 1]);

    let mut warm = Caller::start(&app, "alice", register("v2", true)).await;
    assert_eq!(warm.counts(5).await, [1, 2, 3, 1, 2]);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(warm.counts(1).await, [1]);
    // The reaper retired the idle one without waiting for a caller.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(app.state.functions.runtime().warm_stats().idle, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_warm_instance_is_kept_when_the_host_keeps_none() {
    let app = spawn_app_with(|settings| settings.runtime.warm_instances = 0).await;
    let mut alice = Caller::start(&app, "alice", register("v1", true)).await;
    assert_eq!(alice.counts(3).await, [1, 1, 1]);
}

/// The value of one series in a Prometheus text exposition.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the metrics"))
}
