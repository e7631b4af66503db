//! Execution processes: fresh instances of the interpreters run in
//! confined single-threaded children; deadlines, memory caps and crashes
//! there behave as in the host, and a child that dies takes no later
//! execution with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lambda_host::language::Language;
use lambda_host::runtime::{Error, Invocation, LoadedFunction, Runtime, Script, ScriptMode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, interpreter, invocation, runtime, spawn_app_with, status_and_body};

/// A JavaScript function for the interpreter that does what its params say.
const SCRIPT: &str = r#"
export function handler(event) {
  const p = event.params;
  if (p.op === 'loop') { for (;;) {} }
  if (p.op === 'hog') { const kept = []; for (;;) kept.push(new Array(1 << 20).fill(7)); }
  if (p.op === 'throw') throw new Error('asked to fail');
  return { sum: p.a + p.b, process: typeof process };
}
"#;

/// Long enough for any execution here on a slow machine, short enough to
/// fail a test that hangs.
const TEST_GUARD: Duration = Duration::from_secs(120);

fn run_script(params: Value) -> Invocation {
    Invocation {
        script: Some(Script {
            text: Arc::from(SCRIPT),
            mode: ScriptMode::Run,
        }),
        ..invocation("nodejs-processes", params)
    }
}

async fn execute(
    runtime: &Runtime,
    function: &LoadedFunction,
    params: Value,
    timeout: Duration,
) -> Result<Value, Error> {
    tokio::time::timeout(
        TEST_GUARD,
        runtime.invoke(function, &run_script(params), Some(timeout)),
    )
    .await
    .expect("the execution never ended")
    .map(|execution| execution.result)
}

/// A runtime with one execution process, started by a first execution of
/// the JavaScript interpreter; and that child's process id.
async fn one_running_child(dir: &std::path::Path) -> (Runtime, Arc<LoadedFunction>, u32) {
    let runtime = runtime(dir, |s| s.runtime.execution_processes = Some(1));
    let function = runtime
        .load(interpreter(Language::Nodejs).await)
        .await
        .unwrap();
    execute(
        &runtime,
        &function,
        json!({"a": 1, "b": 1}),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let pid = runtime.process_stats().unwrap().pids[0];
    (runtime, function, pid)
}

#[tokio::test(flavor = "multi_thread")]
async fn fresh_interpreter_executions_run_in_confined_children_of_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |s| s.runtime.execution_processes = Some(2));
    let function = runtime
        .load(interpreter(Language::Nodejs).await)
        .await
        .unwrap();
    assert_eq!(runtime.process_stats().unwrap().started, 0, "started early");

    // Many at once: every one answered, its own answer, by two children.
    let runs = (0..12).map(|n| {
        let (runtime, function) = (&runtime, &function);
        async move {
            let result = execute(
                runtime,
                function,
                json!({"a": n, "b": 1}),
                Duration::from_secs(30),
            )
            .await;
            (n, result)
        }
    });
    for (n, result) in futures::future::join_all(runs).await {
        assert_eq!(
            result.unwrap(),
            json!({"sum": n + 1, "process": "undefined"})
        );
    }
    let stats = runtime.process_stats().unwrap();
    assert_eq!(stats.started, 2, "{stats:?}");
    assert_eq!(stats.pids.len(), 2, "{stats:?}");
    // The children are not the host.
    assert!(!stats.pids.contains(&std::process::id()));

    // Each child closed the file system on itself (Landlock, ABI 7 here)
    // before it started a thread, and checked that it had.
    let ready = stats.ready.expect("the children reported");
    assert!(ready.files_closed, "{ready:?}");
    assert_eq!(ready.landlock, "FullyEnforced", "{ready:?}");
    // ...and holds no secret: its environment is empty.
    for pid in &stats.pids {
        let environment = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            environment.is_empty(),
            "{}",
            String::from_utf8_lossy(&environment)
        );
    }

    // A guest's own error crosses as it is.
    let failed = execute(
        &runtime,
        &function,
        json!({"op": "throw"}),
        Duration::from_secs(30),
    )
    .await;
    assert!(
        matches!(&failed, Err(Error::Guest(guest)) if guest.message.contains("asked to fail")),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deadlines_and_memory_caps_hold_in_a_child_and_it_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |s| {
        s.runtime.execution_processes = Some(1);
        s.runtime.memory_limit_bytes = 64 << 20;
    });
    let function = runtime
        .load(interpreter(Language::Nodejs).await)
        .await
        .unwrap();

    let started = Instant::now();
    let endless = execute(
        &runtime,
        &function,
        json!({"op": "loop"}),
        Duration::from_millis(500),
    )
    .await;
    assert!(
        matches!(endless, Err(Error::Timeout(t)) if t == Duration::from_millis(500)),
        "{endless:?}"
    );
    // Stopped by the child's own deadline, not by the host giving it up.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let hog = execute(
        &runtime,
        &function,
        json!({"op": "hog"}),
        Duration::from_secs(30),
    )
    .await;
    assert!(
        matches!(hog, Err(Error::OutOfMemory { limit_bytes }) if limit_bytes == 64 << 20),
        "{hog:?}"
    );

    // The same child answers the next execution: neither a timeout nor an
    // out-of-memory costs it its life.
    let fine = execute(
        &runtime,
        &function,
        json!({"a": 2, "b": 3}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(fine.unwrap()["sum"], 5);
    assert_eq!(runtime.process_stats().unwrap().started, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_that_dies_fails_only_its_executions_and_is_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, function, pid) = one_running_child(dir.path()).await;

    // An execution that would run for a minute, and the child killed
    // under it (as the kernel's OOM killer or an escaped guest's crash
    // would end it).
    let started = Instant::now();
    let endless = execute(
        &runtime,
        &function,
        json!({"op": "loop"}),
        Duration::from_secs(60),
    );
    let kill = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // SAFETY: a signal to the child this test's runtime started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    };
    let (endless, ()) = tokio::join!(endless, kill);
    assert!(
        matches!(&endless, Err(Error::Internal(e)) if e.to_string().contains("exited")),
        "{endless:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited for the deadline"
    );

    // The next execution starts a new child and is answered.
    let fine = execute(
        &runtime,
        &function,
        json!({"a": 4, "b": 4}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(fine.unwrap()["sum"], 8);
    let stats = runtime.process_stats().unwrap();
    assert_eq!(stats.started, 2, "{stats:?}");
    assert_ne!(stats.pids, vec![pid]);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_children_or_when_none_can_start_the_host_runs_the_execution_itself() {
    let dir = tempfile::tempdir().unwrap();
    let none = runtime(dir.path(), |s| s.runtime.execution_processes = Some(0));
    assert!(none.process_stats().is_none());
    let function = none
        .load(interpreter(Language::Nodejs).await)
        .await
        .unwrap();
    let answer = execute(
        &none,
        &function,
        json!({"a": 1, "b": 2}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(answer.unwrap()["sum"], 3);

    let broken = runtime(dir.path(), |s| {
        s.runtime.execution_processes = Some(1);
        s.runtime.execution_process_program = dir.path().join("no-such-binary");
    });
    let function = broken
        .load(interpreter(Language::Nodejs).await)
        .await
        .unwrap();
    let answer = execute(
        &broken,
        &function,
        json!({"a": 2, "b": 2}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(answer.unwrap()["sum"], 4);
    assert_eq!(broken.process_stats().unwrap().started, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn through_the_api_a_fresh_python_execution_runs_in_a_child_that_health_and_metrics_show() {
    // No warm instances: every execution of the predefined function is a
    // fresh instance, which for an interpreter component means a child.
    let app = spawn_app_with(|s| {
        s.runtime.warm_instances = 0;
        s.runtime.execution_processes = Some(1);
    })
    .await;
    let health = |app: &TestApp| {
        let request = app.client.get(app.url("/health")).send();
        async move { status_and_body(request.await.unwrap()).await.1 }
    };
    assert_eq!(
        health(&app).await["components"]["execution_processes"],
        json!({"status": "idle", "running": 0, "started": 0})
    );

    let token = app.token("alice", "execute:all read:functions");
    let session = app
        .session(&token, "python-text_processor", json!({}))
        .await;
    for text in ["one two three", "four five"] {
        let (status, body) = status_and_body(
            app.execute(
                &token,
                &session,
                json!({"action": "count_words", "text": text}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["result"]["result"].as_u64(),
            Some(text.split_whitespace().count() as u64),
            "{body}"
        );
    }
    assert_eq!(
        health(&app).await["components"]["execution_processes"],
        json!({"status": "confined", "running": 1, "started": 1})
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("lambda_execution_processes_running 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lambda_execution_processes_started 1"),
        "{metrics}"
    );
    app.stop().await;
}

/// User and system CPU time of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15 of proc(5).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_execution_its_caller_gave_up_on_stops_in_the_child_too() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, function, pid) = one_running_child(dir.path()).await;

    // A caller that goes away 300 ms into an endless loop with a minute's
    // deadline (a client that disconnects): its slot is free at once, so
    // the child must not go on running the loop outside every share.
    let endless = run_script(json!({"op": "loop"}));
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        runtime.invoke(&function, &endless, Some(Duration::from_secs(60))),
    )
    .await;
    assert!(abandoned.is_err(), "the loop answered: {abandoned:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(pid) - before;
    // A running loop takes a whole core: about 200 ticks in 2 s.
    assert!(
        spent < 50,
        "the child spent {spent} ticks in 2 s after the cancel"
    );

    // And it serves on.
    let fine = execute(
        &runtime,
        &function,
        json!({"a": 5, "b": 5}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(fine.unwrap()["sum"], 10);
    assert_eq!(runtime.process_stats().unwrap().pids, vec![pid]);
}

/// A child writes its log lines in the host's format: with
/// `--log-format json` the host passes it on, and the child's lines are
/// JSON objects a collector reading the host's stderr can parse.
#[tokio::test(flavor = "multi_thread")]
async fn a_child_logs_in_the_format_the_host_logs_in() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A wrapper that records the arguments the host starts a child with.
    let wrapper = dir.path().join("child");
    let recorded = dir.path().join("arguments");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" > '{}'\nexec '{}' \"$@\"\n",
            recorded.display(),
            env!("CARGO_BIN_EXE_lambda-host")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    for json_logs in [false, true] {
        let runtime = runtime(dir.path(), |s| {
            s.runtime.execution_processes = Some(1);
            s.runtime.execution_process_program = wrapper.clone();
            s.runtime.execution_process_log_json = json_logs;
        });
        let function = runtime
            .load(interpreter(Language::Nodejs).await)
            .await
            .unwrap();
        let answer = execute(&runtime, &function, json!({"a": 1, "b": 1}), TEST_GUARD).await;
        assert_eq!(answer.unwrap()["sum"], 2);
        assert_eq!(runtime.process_stats().unwrap().started, 1);
        let arguments = std::fs::read_to_string(&recorded).unwrap();
        assert_eq!(
            arguments.split_whitespace().collect::<Vec<_>>(),
            [lambda_host::runtime::processes::COMMAND]
                .into_iter()
                .chain(json_logs.then_some("--log-format=json"))
                .collect::<Vec<_>>()
        );
    }

    // What a child logs, here the error of a host that closed the socket
    // before saying how to start.
    for json_logs in [false, true] {
        let (socket, host_end) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(host_end);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_lambda-host"))
            .arg(lambda_host::runtime::processes::COMMAND)
            .args(json_logs.then_some("--log-format=json"))
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                socket,
            )))
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8(output.stderr).unwrap();
        let line = stderr.lines().next().expect("an error line");
        assert!(line.contains("closed the socket"), "{stderr}");
        let parsed = serde_json::from_str::<Value>(line);
        if json_logs {
            let record = parsed.unwrap();
            assert_eq!(record["level"], "ERROR", "{record}");
            assert!(
                record["message"]
                    .as_str()
                    .unwrap()
                    .contains("closed the socket")
            );
        } else {
            assert!(parsed.is_err() && line.contains("ERROR"), "{line}");
        }
    }
}
