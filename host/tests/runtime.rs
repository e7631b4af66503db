//! The runtime core: isolation, deadlines, memory caps, output bounds, the
//! AOT cache and back-pressure, each shown with a real guest.

use std::time::Duration;

use lambda_host::runtime::Error;
use serde_json::json;

use lambda_host::runtime::Runtime;

use crate::helpers::{LoopbackTrap, invocation, private_aot_settings, runtime, rust_fixture};

/// A runtime whose AOT cache is the directory's own, for counting compiles.
fn private_aot_runtime(dir: &std::path::Path) -> Runtime {
    Runtime::new(&private_aot_settings(dir).runtime).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn native_code_no_function_uses_is_swept_and_what_is_used_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = std::sync::Arc::new(private_aot_runtime(dir.path()));
    let echo = runtime.load(rust_fixture("echo").await).await.unwrap();
    let sleeper = runtime.load(rust_fixture("sleeper").await).await.unwrap();
    let entries = || std::fs::read_dir(dir.path().join("aot")).unwrap().count();
    let before = entries();
    assert!(before >= 2, "{before} AOT files");
    let soon = std::time::SystemTime::now() + Duration::from_secs(60);
    let day_ago = std::time::SystemTime::now() - Duration::from_secs(86_400);
    // Nothing is that old.
    let keep = std::collections::HashSet::new();
    assert_eq!(
        runtime
            .remove_unused_native_code(keep, day_ago)
            .await
            .unwrap(),
        0
    );
    // The echo's native code is kept, the sleeper's (entry and lock) goes.
    let keep = std::collections::HashSet::from([echo.digest()]);
    let removed = runtime.remove_unused_native_code(keep, soon).await.unwrap();
    assert!(removed >= 1);
    assert_eq!(entries(), before - removed as usize);
    let left: Vec<String> = std::fs::read_dir(dir.path().join("aot"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter()
            .any(|n| n.starts_with(&echo.digest().to_string()) && n.ends_with(".cwasm.sealed"))
    );
    assert!(
        !left
            .iter()
            .any(|n| n.starts_with(&sleeper.digest().to_string())),
        "{left:?}"
    );
}

/// Fails a test that hangs instead of letting the suite stall.
const TEST_GUARD: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn the_handler_receives_the_event_of_api_md_and_its_logs_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |_| {});
    let function = runtime.load(rust_fixture("echo").await).await.unwrap();
    let mut call = invocation(
        "rust-echo",
        json!({ "text": "héllo ✓", "n": [1, 2.5, null] }),
    );
    call.context = json!({ "user_id": "u1" });
    let execution = runtime.invoke(&function, &call, None).await.unwrap();
    assert_eq!(
        execution.result,
        json!({
            "params": { "text": "héllo ✓", "n": [1, 2.5, null] },
            "context": { "user_id": "u1" },
            "request_id": call.request_id,
            "language_title": "rust-echo",
        })
    );
    assert_eq!(execution.logs.len(), 1);
    assert_eq!(
        (
            execution.logs[0].level.as_str(),
            execution.logs[0].message.as_str()
        ),
        ("info", "echo called")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_loop_is_stopped_by_the_deadline_and_reported_as_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |_| {});
    let function = runtime
        .load(rust_fixture("endless_loop").await)
        .await
        .unwrap();
    let call = invocation("rust-endless_loop", json!({}));
    let outcome = tokio::time::timeout(
        TEST_GUARD,
        runtime.invoke(&function, &call, Some(Duration::from_millis(300))),
    )
    .await
    .expect("the deadline did not stop the guest");
    assert!(
        matches!(outcome, Err(Error::Timeout(t)) if t == Duration::from_millis(300)),
        "{outcome:?}"
    );

    // The interrupted instance is gone; the next execution starts fresh.
    let echo = runtime.load(rust_fixture("echo").await).await.unwrap();
    runtime
        .invoke(&echo, &invocation("rust-echo", json!({})), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_blocked_in_a_host_call_is_stopped_by_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |_| {});
    let function = runtime.load(rust_fixture("sleeper").await).await.unwrap();
    let call = invocation("rust-sleeper", json!({}));
    let outcome = tokio::time::timeout(
        TEST_GUARD,
        runtime.invoke(&function, &call, Some(Duration::from_millis(300))),
    )
    .await
    .expect("the deadline did not stop the guest");
    assert!(matches!(outcome, Err(Error::Timeout(_))), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_growing_its_memory_past_the_cap_is_reported_as_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |s| s.runtime.memory_limit_bytes = 32 << 20);
    let function = runtime
        .load(rust_fixture("memory_hog").await)
        .await
        .unwrap();

    // Under the cap: fine.
    let small = invocation("rust-memory_hog", json!({ "megabytes": 8 }));
    let execution = runtime.invoke(&function, &small, None).await.unwrap();
    assert_eq!(execution.result, json!({ "held_mb": 8 }));

    // Past it: a distinct error, not a crash.
    let greedy = invocation("rust-memory_hog", json!({}));
    let outcome = runtime.invoke(&function, &greedy, None).await;
    assert!(
        matches!(outcome, Err(Error::OutOfMemory { limit_bytes }) if limit_bytes == 32 << 20),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_cap_holds_without_the_pooling_allocator_too() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |s| {
        s.runtime.no_pooling = true;
        s.runtime.memory_limit_bytes = 32 << 20;
    });
    let function = runtime
        .load(rust_fixture("memory_hog").await)
        .await
        .unwrap();
    let outcome = runtime
        .invoke(&function, &invocation("rust-memory_hog", json!({})), None)
        .await;
    assert!(
        matches!(outcome, Err(Error::OutOfMemory { .. })),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_gets_no_files_no_environment_no_arguments_and_no_network() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |_| {});
    let trap = LoopbackTrap::new();
    let function = runtime
        .load(rust_fixture("sandbox_probe").await)
        .await
        .unwrap();
    let execution = runtime
        .invoke(
            &function,
            &invocation(
                "rust-sandbox_probe",
                json!({ "reach": trap.address.to_string() }),
            ),
            None,
        )
        .await
        .unwrap();
    let seen = execution.result;
    for attempt in [
        "file",
        "cwd_listing",
        "connect",
        "datagram",
        "lookup",
        "listen",
    ] {
        assert!(
            seen[attempt]["error"].is_string(),
            "{attempt} got through: {seen}"
        );
    }
    assert_eq!(
        seen["env_vars"],
        json!([]),
        "saw environment variables: {seen}"
    );
    assert_eq!(seen["home"], json!(null));
    assert_eq!(seen["args"], json!([]));
    // Refused before the kernel: nothing arrived at the listening port.
    assert_eq!(trap.arrivals(), 0, "{seen}");
    trap.assert_it_counts();
}

#[tokio::test(flavor = "multi_thread")]
async fn output_beyond_the_limit_is_cut_without_failing_the_execution() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |s| s.runtime.output_limit_bytes = 4096);
    let function = runtime.load(rust_fixture("chatty").await).await.unwrap();
    let execution = runtime
        .invoke(&function, &invocation("rust-chatty", json!({})), None)
        .await
        .unwrap();
    assert_eq!(execution.result, json!("still answered"));
    assert!(execution.stdout.starts_with("stdout line 0\n"));
    assert!(execution.stdout.ends_with("[output truncated]"));
    assert!(execution.stdout.len() < 4096 + 64);
    assert!(execution.stderr.starts_with("stderr line 0\n"));
    let logged: usize = execution.logs.iter().map(|l| l.message.len()).sum();
    assert!(logged <= 4096 + 64, "kept {logged} bytes of logs");
    assert!(
        execution
            .logs
            .last()
            .unwrap()
            .message
            .ends_with("[log truncated]")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_returned_err_is_a_guest_error_and_a_panic_a_trap_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |_| {});
    let function = runtime
        .load(rust_fixture("returns_err").await)
        .await
        .unwrap();
    match runtime
        .invoke(&function, &invocation("rust-returns_err", json!({})), None)
        .await
    {
        Err(Error::Guest(e)) => assert_eq!(e.message, "the input was rejected"),
        other => panic!("expected a guest error, got {other:?}"),
    }

    let function = runtime.load(rust_fixture("panics").await).await.unwrap();
    match runtime
        .invoke(
            &function,
            &invocation("rust-panics", json!({ "n": 0 })),
            None,
        )
        .await
    {
        Err(Error::Trap { message }) => {
            assert!(message.contains("boom: n must not be zero"), "{message}")
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    // The same function still serves the next call.
    let execution = runtime
        .invoke(
            &function,
            &invocation("rust-panics", json!({ "n": 4 })),
            None,
        )
        .await
        .unwrap();
    assert_eq!(execution.result, json!(25));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_start_loads_the_component_from_the_aot_cache_without_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let component = rust_fixture("echo").await;
    {
        let first = private_aot_runtime(dir.path());
        first.load(component.clone()).await.unwrap();
        first.load(component.clone()).await.unwrap();
        let stats = first.cache_stats();
        assert_eq!(
            (stats.compiles, stats.aot_hits, stats.memory_hits),
            (1, 0, 1)
        );
        assert!(stats.compile_micros > 0, "a compilation takes time");
    }
    let second = private_aot_runtime(dir.path());
    let function = second.load(component).await.unwrap();
    let stats = second.cache_stats();
    assert_eq!(
        (stats.compiles, stats.aot_hits, stats.compile_micros),
        (0, 1, 0)
    );
    second
        .invoke(
            &function,
            &crate::helpers::invocation("rust-echo", json!({})),
            None,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_aot_artifact_is_discarded_and_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let component = rust_fixture("echo").await;
    private_aot_runtime(dir.path())
        .load(component.clone())
        .await
        .unwrap();
    for entry in std::fs::read_dir(dir.path().join("aot")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"not a cwasm").unwrap();
    }
    let second = private_aot_runtime(dir.path());
    let function = second.load(component).await.unwrap();
    assert_eq!(second.cache_stats().compiles, 1);
    assert_eq!(second.cache_stats().aot_rejected, 1);
    second
        .invoke(&function, &invocation("rust-echo", json!({})), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn native_code_the_host_did_not_seal_is_never_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let component = rust_fixture("echo").await;
    private_aot_runtime(dir.path())
        .load(component.clone())
        .await
        .unwrap();
    // Valid native code for this very engine, but written by someone else:
    // the entry without its seal, and the entry sealed by another host.
    let entry = std::fs::read_dir(dir.path().join("aot"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".cwasm.sealed"))
        .unwrap();
    let sealed = std::fs::read(&entry).unwrap();
    let name = entry.file_name().unwrap().to_str().unwrap().to_owned();
    let key = lambda_host::integrity::IntegrityKey::derive(crate::helpers::TEST_SECRET.as_bytes());
    let native = key
        .open_file(lambda_host::integrity::Kind::NativeCode, &name, &sealed)
        .expect("the host's own entry opens")
        .to_vec();
    let other_host = lambda_host::integrity::IntegrityKey::derive(b"another host's secret");
    for forged in [
        native.clone(),
        other_host.seal_into_file(lambda_host::integrity::Kind::NativeCode, &name, &native),
    ] {
        std::fs::write(&entry, forged).unwrap();
        let runtime = private_aot_runtime(dir.path());
        runtime.load(component.clone()).await.unwrap();
        let stats = runtime.cache_stats();
        assert_eq!(
            (stats.aot_hits, stats.aot_rejected, stats.compiles),
            (0, 1, 1)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_that_are_not_a_component_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |_| {});
    let outcome = runtime.load(b"\0asm not really".to_vec().into()).await;
    assert!(matches!(outcome, Err(Error::InvalidComponent(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn more_concurrent_executions_than_pool_slots_wait_for_a_slot() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = std::sync::Arc::new(runtime(dir.path(), |s| s.runtime.max_instances = 2));
    let function = runtime.load(rust_fixture("echo").await).await.unwrap();
    // Sixteen callers, so no one's share of the slots stands in the way:
    // each waits (within the bounded wait) for one of the two slots.
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let runtime = runtime.clone();
            let function = function.clone();
            tokio::spawn(async move {
                let mut call = invocation("rust-echo", json!({ "i": i }));
                call.caller = format!("caller-{i}");
                runtime
                    .invoke(&function, &call, None)
                    .await
                    .map(|e| e.result["params"]["i"].clone())
            })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), json!(i));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn loaded_functions_beyond_the_memory_bound_are_dropped_and_reloaded_from_the_aot_cache() {
    let dir = tempfile::tempdir().unwrap();
    let echo = rust_fixture("echo").await;
    let chatty = rust_fixture("chatty").await;
    // Room for the larger of the two, not for both.
    let bound = echo.len().max(chatty.len()) as u64 + 4096;
    assert!(bound < (echo.len() + chatty.len()) as u64);
    let mut settings = private_aot_settings(dir.path());
    settings.runtime.loaded_components_max_bytes = bound;
    let runtime = Runtime::new(&settings.runtime).unwrap();

    for component in [&echo, &chatty, &echo, &chatty] {
        let function = runtime.load(component.clone()).await.unwrap();
        let outcome = runtime
            .invoke(&function, &invocation("rust-echo", json!({"n": 1})), None)
            .await;
        assert!(outcome.is_ok(), "{outcome:?}");
        let (count, bytes) = runtime.loaded_components().await;
        assert_eq!(count, 1, "one function fits");
        assert!(bytes <= bound, "{bytes} > {bound}");
    }
    let stats = runtime.cache_stats();
    // Each compiled once; the second round came back from disk, not memory.
    assert_eq!(stats.compiles, 2);
    assert!(stats.aot_hits >= 1, "{stats:?}");
    assert_eq!(stats.compiles + stats.aot_hits + stats.memory_hits, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn runtimes_sharing_an_aot_cache_compile_a_component_once() {
    let dir = tempfile::tempdir().unwrap();
    let component = rust_fixture("chatty").await;
    // Two replicas on one data directory, loading the same new component
    // at the same moment.
    let first = private_aot_runtime(dir.path());
    let second = private_aot_runtime(dir.path());
    let (a, b) = tokio::join!(first.load(component.clone()), second.load(component));
    a.unwrap();
    b.unwrap();
    let (one, two) = (first.cache_stats(), second.cache_stats());
    assert_eq!(one.compiles + two.compiles, 1, "{one:?} {two:?}");
    assert_eq!(one.aot_hits + two.aot_hits, 1, "{one:?} {two:?}");
}

/// Cranelift's incremental compilation cache (on by default): a component
/// compiled mostly from the machine code of another one (the JavaScript
/// engine both carry) runs as one compiled cold does.
#[tokio::test(flavor = "multi_thread")]
async fn a_component_compiled_from_the_incremental_cache_runs_correctly() {
    use lambda_host::language::{Language, LanguageTitle};
    let dir = tempfile::tempdir().unwrap();
    let runtime = private_aot_runtime(dir.path());
    assert!(runtime.config().compile_cache_bytes > 0, "on by default");
    // Compiled cold: it fills the cache with the engine's functions.
    let first = crate::helpers::fixture(Language::Nodejs, "conformance").await;
    runtime.load(first).await.unwrap();
    // Compiled mostly from the cache.
    let name = LanguageTitle::parse("nodejs-calculator").unwrap();
    let calculator =
        lambda_host::catalog::find(&crate::helpers::repo_root().join("components"), &name)
            .unwrap()
            .unwrap();
    let second = crate::helpers::shared_toolchains()
        .await
        .build(Language::Nodejs, &calculator.source, &Default::default())
        .await
        .unwrap()
        .component;
    let function = runtime.load(second).await.unwrap();
    assert_eq!(runtime.cache_stats().compiles, 2, "both were compiled here");
    let execution = runtime
        .invoke(
            &function,
            &invocation(
                "nodejs-calculator",
                json!({"operation": "multiply", "a": 6, "b": 7}),
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(execution.result, json!({"result": 42}));
}
