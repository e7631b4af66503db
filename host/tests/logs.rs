//! The host's own log, read the way a log collector reads it: the stderr of
//! `lambda-host serve --log-format json`, one JSON object per line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{lambda_host, shared_cli_data_dir};

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
        let mut child = lambda_host(&shared_cli_data_dir())
            .args(["serve", "--log-format", "json", "--listen", "127.0.0.1:0"])
            .env("LAMBDA_JWT_SECRET", JWT_SECRET)
            .env("LAMBDA_LOG", "info")
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
