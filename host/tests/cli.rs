//! The `lambda-host` binary, run as a user runs it.

use crate::helpers::{lambda_host, shared_cli_data_dir};

#[test]
fn invoke_prints_the_result_of_a_predefined_function() {
    let dir = tempfile::tempdir().unwrap();
    let output = lambda_host(dir.path())
        .args(["invoke", "rust-data_validator", "--params"])
        .arg(r#"{"data":{"age":25},"rules":["required","numeric"]}"#)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "{\"valid\":true,\"errors\":[]}\n"
    );
}

#[test]
fn invoke_reports_a_failure_as_a_structured_error_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let output = lambda_host(dir.path())
        .args(["invoke", "rust-data_validator", "--params", r#"{"data":1}"#])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(error["error"]["code"], "RUNTIME_ERROR");
    assert_eq!(error["error"]["message"], "params.data must be an object");
}

#[test]
fn build_writes_a_component_that_invoke_runs() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("double.rs");
    std::fs::write(
        &source,
        "use serde_json::{json, Value};\n\
         pub fn handler(event: Value) -> Result<Value, String> {\n\
         \x20   let n = event[\"params\"][\"n\"].as_i64().ok_or(\"n must be an integer\")?;\n\
         \x20   Ok(json!({ \"doubled\": n * 2 }))\n}\n",
    )
    .unwrap();
    let wasm = dir.path().join("double.wasm");
    let build = lambda_host(dir.path())
        .args(["build", "--language", "rust"])
        .arg(&source)
        .arg("-o")
        .arg(&wasm)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let invoke = lambda_host(dir.path())
        .arg("invoke")
        .arg(&wasm)
        .args(["--params", r#"{"n":21}"#])
        .output()
        .unwrap();
    assert!(
        invoke.status.success(),
        "{}",
        String::from_utf8_lossy(&invoke.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&invoke.stdout),
        "{\"doubled\":42}\n"
    );
}

#[test]
fn a_refused_source_fails_the_build_with_the_compile_error() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("steal.rs");
    std::fs::write(
        &source,
        "pub const P: &str = include_str!(\"/etc/passwd\");\n",
    )
    .unwrap();
    let build = lambda_host(dir.path())
        .args(["build", "--language", "rust"])
        .arg(&source)
        .output()
        .unwrap();
    assert!(!build.status.success());
    let stderr = String::from_utf8_lossy(&build.stderr);
    assert!(
        stderr.contains("COMPILE_ERROR") && stderr.contains("include_str"),
        "{stderr}"
    );
    assert!(!dir.path().join("steal.wasm").exists());
}

#[test]
fn invoke_runs_the_predefined_javascript_and_python_functions() {
    for (function, params, expected) in [
        (
            "nodejs-calculator",
            r#"{"operation":"add","a":5,"b":3}"#,
            "{\"result\":8}\n",
        ),
        (
            "python-text_processor",
            r#"{"action":"count_words","text":"Hello world"}"#,
            "{\"result\":2}\n",
        ),
    ] {
        let output = lambda_host(&shared_cli_data_dir())
            .args(["invoke", function, "--params", params])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{function}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            expected,
            "{function}"
        );
    }
}

#[test]
fn build_and_invoke_work_for_javascript_and_python_sources() {
    let dir = tempfile::tempdir().unwrap();
    for (language, file, source) in [
        (
            "nodejs",
            "greet.js",
            "export default (event) => ({ hello: event.params.name });\n",
        ),
        (
            "python",
            "greet.py",
            "def handler(event):\n    return {\"hello\": event[\"params\"][\"name\"]}\n",
        ),
    ] {
        let source_path = dir.path().join(file);
        std::fs::write(&source_path, source).unwrap();
        let wasm = dir.path().join(format!("{language}-greet.wasm"));
        let build = lambda_host(&shared_cli_data_dir())
            .args(["build", "--language", language])
            .arg(&source_path)
            .arg("-o")
            .arg(&wasm)
            .output()
            .unwrap();
        assert!(
            build.status.success(),
            "{}",
            String::from_utf8_lossy(&build.stderr)
        );
        let invoke = lambda_host(&shared_cli_data_dir())
            .arg("invoke")
            .arg(&wasm)
            .args(["--params", r#"{"name":"wörld"}"#])
            .output()
            .unwrap();
        assert!(
            invoke.status.success(),
            "{}",
            String::from_utf8_lossy(&invoke.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&invoke.stdout),
            "{\"hello\":\"wörld\"}\n"
        );
    }
}

#[test]
fn build_honours_the_build_limits_and_names_the_one_reached() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("forever.py");
    std::fs::write(
        &source,
        "while True:\n    pass\n\ndef handler(event):\n    return 1\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let output = lambda_host(dir.path())
        .args(["build", "--language", "python", "--build-timeout-secs", "8"])
        .arg(&source)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(error["error"]["code"], "COMPILE_ERROR");
    assert_eq!(error["error"]["details"]["limit"], "time");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("time limit of 8 s"), "{message}");
    assert!(message.contains("LAMBDA_BUILD_TIMEOUT_SECS"), "{message}");
}

/// The value of `LAMBDA_JWT_SECRET` in an example file of the repository.
fn shipped_placeholder(file: &str) -> String {
    let text = std::fs::read_to_string(crate::helpers::repo_root().join(file)).unwrap();
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("LAMBDA_JWT_SECRET"))
        .unwrap_or_else(|| panic!("no LAMBDA_JWT_SECRET in {file}"));
    line["LAMBDA_JWT_SECRET".len() + 1..]
        .trim()
        .trim_matches('"')
        .to_owned()
}

#[test]
fn the_host_refuses_placeholder_and_guessable_secrets_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |secret: &str, reason: &str| {
        let output = lambda_host(dir.path())
            .args(["token", "--sub", "x"])
            .env("LAMBDA_JWT_SECRET", secret)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{secret} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "{secret}: {stderr}");
        assert!(
            !stderr.contains(secret),
            "the error echoes the secret: {stderr}"
        );
    };
    for file in [".env.example", "deploy/kubernetes/secret.example.yaml"] {
        refused(&shipped_placeholder(file), "placeholder");
    }
    refused(&"x".repeat(64), "too regular");
    refused(&"ab".repeat(32), "too regular");
    refused("short-but-random-Qx7", "at least 32 bytes");
    // A generated one is accepted.
    let output = lambda_host(dir.path())
        .args(["token", "--sub", "x"])
        .env("LAMBDA_JWT_SECRET", "kR3v9Qm2Xb7LwP0sZt5YhN8cJd1FgA4uE6iO")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_data_directory_and_its_secret_and_database_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let output = lambda_host(&data)
        .arg("migrate")
        .env_remove("LAMBDA_JWT_SECRET")
        .env_remove("LAMBDA_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("jwt-secret")), 0o600);
    assert_eq!(mode(&data.join("lambda.db")), 0o600);
    // A secret file others may read is refused, not used.
    std::fs::set_permissions(
        data.join("jwt-secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let output = lambda_host(&data)
        .args(["token", "--sub", "x"])
        .env_remove("LAMBDA_JWT_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("open to other users"), "{stderr}");
}
