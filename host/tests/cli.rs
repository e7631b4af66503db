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

/// Runs `lambda-host settings --effective` with a config file, extra
/// environment and flags, and returns what it prints.
fn effective_settings(
    data: &std::path::Path,
    file: &str,
    env: &[(&str, &str)],
    flags: &[&str],
) -> String {
    let config = data.join("lambda.toml");
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(&config, file).unwrap();
    let mut command = lambda_host(data);
    command.arg("--config").arg(&config).args(flags);
    command.args(["settings", "--effective"]);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn settings_are_layered_defaults_then_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = "listen = \"127.0.0.1:9001\"\nslot_wait = \"7s\"\nmemory_limit_mb = 64\n\
                rate_limit_execute = 500\ncors_origins = [\"https://a.example\", \"https://b.example\"]\n\
                no_pooling = true\n";
    let printed = effective_settings(
        dir.path(),
        file,
        &[
            ("LAMBDA_LISTEN", "127.0.0.1:9002"),
            ("LAMBDA_SLOT_WAIT", "8s"),
        ],
        &["--slot-wait", "9s"],
    );
    // The file beats the defaults.
    assert!(
        printed.contains("memory_limit_bytes: 67108864,"),
        "{printed}"
    );
    assert!(printed.contains("execute_per_subject: 500,"), "{printed}");
    assert!(printed.contains("\"https://b.example\""), "{printed}");
    assert!(printed.contains("no_pooling: true,"), "{printed}");
    // The environment beats the file; a flag beats both.
    assert!(printed.contains("listen: 127.0.0.1:9002,"), "{printed}");
    assert!(printed.contains("slot_wait: 9s,"), "{printed}");
    // What nobody set keeps its default.
    assert!(printed.contains("builds_per_subject: 10,"), "{printed}");
    // An empty store URL is no store URL: the embedded default.
    let printed = effective_settings(
        dir.path(),
        "",
        &[("LAMBDA_REDIS_URL", ""), ("LAMBDA_DATABASE_URL", " ")],
        &[],
    );
    assert!(printed.contains("redis_url: None,"), "{printed}");
    assert!(printed.contains("database_url: None,"), "{printed}");
}

#[test]
fn a_config_file_with_an_unknown_key_or_a_bad_value_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let run = |file: &str| {
        std::fs::write(dir.path().join("bad.toml"), file).unwrap();
        lambda_host(dir.path())
            .arg("--config")
            .arg(dir.path().join("bad.toml"))
            .args(["settings", "--effective"])
            .output()
            .unwrap()
    };
    let output = run("redis = \"redis://x\"\n");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown setting `redis`"), "{stderr}");
    assert!(stderr.contains("redis_url"), "lists the settings: {stderr}");
    let output = run("memory_limit_mb = \"lots\"\n");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("memory-limit-mb"), "{stderr}");
    assert!(stderr.contains("lots"), "{stderr}");
}

#[test]
fn secrets_are_refused_as_flags_and_redacted_when_printed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "kR3v9Qm2Xb7LwP0sZt5YhN8cJd1FgA4uE6iO";
    let output = lambda_host(dir.path())
        .args(["token", "--sub", "x", "--jwt-secret", secret])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused on the command line"), "{stderr}");
    assert!(!stderr.contains(secret), "{stderr}");
    // From the config file it is taken, and never printed.
    let printed = effective_settings(
        dir.path(),
        &format!("jwt_secret = \"{secret}\"\ndatabase_url = \"postgres://u:pw@db/x\"\n"),
        &[],
        &[],
    );
    assert!(printed.contains("jwt_secret: Some(\n"), "{printed}");
    assert!(!printed.contains(secret), "{printed}");
    assert!(!printed.contains("pw@db"), "{printed}");
}

/// The bug: the default deadline (30 s) was a constant, so a maximum under
/// it stopped the host from starting.
#[test]
fn the_host_starts_with_a_maximum_deadline_under_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let output = lambda_host(dir.path())
        .args(["--max-timeout-ms", "10000", "settings", "--effective"])
        .output()
        .unwrap();
    assert!(output.status.success());
    // `migrate` validates every setting, as `serve` does, without serving.
    let output = lambda_host(dir.path())
        .args(["--max-timeout-ms", "10000", "migrate"])
        .env_remove("LAMBDA_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = lambda_host(dir.path())
        .args([
            "--max-timeout-ms",
            "10000",
            "--default-timeout-ms",
            "20000",
            "migrate",
        ])
        .env_remove("LAMBDA_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("exceeds max_timeout"), "{stderr}");
}

/// `compile` reads files the operator names: one that is not a component
/// is reported in the API's error shape, the others are still compiled.
#[test]
fn compile_refuses_what_is_not_a_component_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x0d\0\x01\0 not really").unwrap();
    let text = dir.path().join("text.wasm");
    std::fs::write(&text, "fn main() {}").unwrap();
    let output = lambda_host(dir.path())
        .arg("compile")
        .arg(&garbage)
        .arg(&text)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr.matches("\"code\": \"INTERNAL_ERROR\"").count(),
        2,
        "{stderr}"
    );
    assert!(
        stderr.contains("cause: not a valid function component"),
        "{stderr}"
    );
    let output = lambda_host(dir.path())
        .args(["compile", "/no/such/file.wasm"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read /no/such/file.wasm"));
}
