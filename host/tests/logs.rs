//! The host's own log, read the way a log collector reads it: the stderr of
//! `lambda-host serve --log-format json`, one JSON object per line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use lambda_host::language::Language;

use crate::helpers::{fixture_source, lambda_host, shared_cli_data_dir};

const JWT_SECRET: &str = "log-test-secret-that-must-never-be-logged-0123";
const FORGED_TOKEN: &str = "forged.token-SECRET-4242.never-log-me";

/// A `serve` process whose stderr lines arrive on a channel.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    base: String,
}

impl Server {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with these settings added to its environment.
    fn start_with(env: &[(&str, &str)]) -> Self {
        let mut child = lambda_host(&shared_cli_data_dir())
            .args(["serve", "--log-format", "json", "--listen", "127.0.0.1:0"])
            .env("LAMBDA_JWT_SECRET", JWT_SECRET)
            .env("LAMBDA_LOG", "info")
            .envs(env.iter().copied())
            .env_remove("LAMBDA_REDIS_URL")
            .env_remove("LAMBDA_DATABASE_URL")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            child,
            lines,
            seen: Vec::new(),
            base: String::new(),
        };
        // Start-up builds and compiles the predefined functions when the
        // shared data directory is cold.
        let listening = server.wait_for(Duration::from_secs(240), |line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("listening on "))
        });
        server.base = listening["message"].as_str().unwrap()["listening on ".len()..].to_owned();
        server
    }

    /// Reads lines until one matches; every line must be a JSON object.
    fn wait_for(&mut self, timeout: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "no matching log line ({e}); seen:\n{}",
                    self.seen.join("\n")
                )
            });
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
            assert!(value.is_object(), "{line}");
            self.seen.push(line);
            if matches(&value) {
                return value;
            }
        }
    }

    /// Stops the server as an operator does (SIGTERM: it writes what its
    /// log queue holds) and reads the rest of its stderr.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let stopped = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(stopped.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve exited with {status}");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
    }

    fn access_line(&mut self, request_id: &str, endpoint: &str) -> Value {
        self.wait_for(Duration::from_secs(30), |line| {
            line["target"] == "lambda_host::access"
                && line["request_id"] == request_id
                && line["endpoint"] == endpoint
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token() -> String {
    let output = lambda_host(&shared_cli_data_dir())
        .args(["token", "--sub", "log-tester"])
        .env("LAMBDA_JWT_SECRET", JWT_SECRET)
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn every_request_gets_a_json_access_line_and_no_token_or_secret_is_logged() {
    let mut server = Server::start();
    let token = token();
    let client = reqwest::Client::new();

    let initialized = client
        .post(format!("{}/api/v1/initialize", server.base))
        .bearer_auth(&token)
        .header("Language-Title", "rust-data_validator")
        .header("X-Request-ID", "log-ok-1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(initialized.status(), 200);
    let executed = client
        .post(format!("{}/api/v1/execute/log-ok-1", server.base))
        .bearer_auth(&token)
        .json(&json!({"params": {"data": {"age": 3}, "rules": ["required"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(executed.status(), 200);
    let refused = client
        .post(format!("{}/api/v1/initialize", server.base))
        .bearer_auth(FORGED_TOKEN)
        .header("Language-Title", "rust-data_validator")
        .header("X-Request-ID", "log-bad-1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let line = server.access_line("log-ok-1", "/api/v1/execute/{request_id}");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["language_title"], "rust-data_validator");
    assert_eq!(line["status"], 200);
    assert_eq!(line["method"], "POST");
    assert_eq!(line["user_id"], "log-tester");
    assert_eq!(line["cached"], false);
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
    assert!(line["timestamp"].is_string(), "{line}");

    let line = server.access_line("log-bad-1", "/api/v1/initialize");
    assert_eq!(line["status"], 401);
    assert_eq!(line["error_code"], "UNAUTHORIZED");
    assert!(line.get("user_id").is_none(), "{line}");

    // Everything the host wrote, start-up included: no credential in it.
    let everything = server.seen.join("\n");
    for secret in [FORGED_TOKEN, "SECRET-4242", token.as_str(), JWT_SECRET] {
        assert!(
            !everything.contains(secret),
            "the log holds a credential: {everything}"
        );
    }
}

/// A variable's value reaches the function granted it and nothing else:
/// not another function, not an error, not the registry's answers, not
/// the host's log (at debug) nor the request and error logs it keeps.
#[tokio::test]
async fn a_variable_value_reaches_its_function_and_no_log() {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let secret = format!("sk-live-{run}");
    let (title, other) = (
        format!("rust-vars_{}", &run[..8]),
        format!("rust-novars_{}", &run[..8]),
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[grant]]\nfunctions = [\"{title}\"]\nvariables = {{ api_key = \"{secret}\" }}\n\n\
             [[grant]]\nfunctions = [\"{other}\"]\nkey_value = true\n"
        ),
    )
    .unwrap();
    let mut server = Server::start_with(&[
        ("LAMBDA_CAPABILITY_POLICY", policy.to_str().unwrap()),
        (
            "LAMBDA_LOG",
            "debug,sqlx=info,cranelift_codegen=info,wasmtime=info",
        ),
    ]);
    let token = token();
    let client = reqwest::Client::new();
    let source = fixture_source(Language::Rust, "http_store");
    for name in [&title, &other] {
        let initialized = client
            .post(format!("{}/api/v1/initialize", server.base))
            .bearer_auth(&token)
            .header("Language-Title", name.as_str())
            .json(&json!({ "script_content": source }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            initialized.status(),
            200,
            "{}",
            initialized.text().await.unwrap()
        );
    }
    let get = |path: String| {
        let client = &client;
        let token = &token;
        let base = &server.base;
        async move {
            let response = client
                .get(format!("{base}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // The function granted it reads it, and answers it: its own response.
    assert_eq!(
        get(format!("/fn/{title}/var/api_key")).await,
        (200, secret.clone())
    );
    let mut answers = Vec::new();
    for path in [
        format!("/fn/{other}/var/api_key"),
        format!("/fn/{title}/var/missing"),
        format!("/fn/{title}/var/API_KEY"),
        format!("/fn/{title}/kv/x"),
        format!("/api/v1/functions/{title}"),
        "/api/v1/functions?per_page=100".to_owned(),
        "/metrics".to_owned(),
    ] {
        let (status, text) = get(path.clone()).await;
        assert!(
            !text.contains(&secret),
            "{path} answered the secret: {text}"
        );
        answers.push((path, status, text));
    }
    assert_eq!(answers[0].1, 404, "{answers:?}");
    assert!(answers[0].2.contains("Undefined"), "{answers:?}");
    assert!(answers[2].2.contains("InvalidName"), "{answers:?}");
    assert_eq!(answers[3].1, 403, "no key-value grant: {answers:?}");
    assert_eq!(answers[4].1, 200, "{answers:?}");

    server.stop();
    let everything = server.seen.join("\n");
    assert!(everything.contains(&title), "the log saw the calls");
    assert!(
        !everything.contains(&secret),
        "the host's log holds the variable: {everything}"
    );
    // The request and error logs, and everything else the database holds.
    for file in ["lambda.db", "lambda.db-wal"] {
        let path = shared_cli_data_dir().join(file);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the variable",
            path.display()
        );
    }
}
