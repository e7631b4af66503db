//! Faults of the production stores, with real servers stopped and started
//! under the host: nothing is lost, and the host recovers by itself.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    TestApp, spawn_app_with, status_and_body, test_database_url, use_production_stores,
};

const ALL: &str = "execute:all read:functions";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// A Redis of the test's own, persisting to disk like a production one, so
/// a restart keeps its data.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        redis.resume();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn resume(&mut self) {
        let server =
            std::env::var("LAMBDA_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(server)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        wait_for_port(self.port);
    }

    /// Redis restarted with nothing: as after a restart without
    /// persistence, or with every key evicted under `maxmemory`.
    fn wipe(&mut self) {
        self.kill();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }
        self.resume();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL cluster of the test's own.
struct OwnPostgres {
    port: u16,
    data: PathBuf,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

impl OwnPostgres {
    fn start() -> Self {
        let bin = PathBuf::from(
            std::env::var("LAMBDA_TEST_PG_BIN")
                .expect("LAMBDA_TEST_PG_BIN: run the tests with `just test`"),
        );
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("pg");
        std::fs::create_dir(&data).unwrap();
        if running_as_root() {
            // PostgreSQL refuses to run as root.
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            Command::new("chmod")
                .arg("755")
                .arg(dir.path())
                .status()
                .unwrap();
        }
        let postgres = Self {
            port: free_port(),
            data,
            bin,
            _dir: dir,
        };
        let initdb = postgres
            .command("initdb")
            .arg("-D")
            .arg(&postgres.data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "{}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        postgres.resume();
        postgres
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data.display()
        );
        let log = self.data.join("server.log");
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &options, "-w"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn resume(&self) {
        self.pg_ctl(&["start"]);
    }

    fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

async fn health(app: &TestApp) -> serde_json::Value {
    status_and_body(app.client.get(app.url("/health")).send().await.unwrap())
        .await
        .1
}

#[tokio::test(flavor = "multi_thread")]
async fn executions_continue_while_redis_is_down_and_the_cache_returns_with_it() {
    let mut redis = OwnRedis::start();
    let database = test_database_url().await;
    let url = redis.url();
    let app = spawn_app_with(|s| {
        use_production_stores(s, &database, "fault:");
        s.stores.redis_url = Some(lambda_host::config::Secret::new(url));
    })
    .await;
    let token = app.token("rita", ALL);
    let id = app.session(&token, "rust-data_validator", json!({})).await;
    let params = json!({"data": {"a": 1}, "rules": ["numeric"]});
    app.execute(&token, &id, params.clone()).await;
    let (_, cached) = status_and_body(app.execute(&token, &id, params.clone()).await).await;
    assert_eq!(cached["cached"], true);

    redis.kill();
    let (status, body) = status_and_body(
        app.execute(&token, &id, json!({"data": {}, "rules": ["required"]}))
            .await,
    )
    .await;
    assert_eq!(
        (status, body["cached"].clone()),
        (200, json!(false)),
        "{body}"
    );
    let during = health(&app).await;
    assert_eq!(
        (
            during["status"].as_str(),
            during["components"]["redis"].as_str()
        ),
        (Some("degraded"), Some("unavailable"))
    );
    // A session started during the outage works on this replica.
    let local = app.session(&token, "nodejs-calculator", json!({})).await;
    let (status, body) = status_and_body(
        app.execute(&token, &local, json!({"operation": "add", "a": 1, "b": 2}))
            .await,
    )
    .await;
    assert_eq!((status, &body["result"]), (200, &json!({"result": 3})));

    redis.resume();
    let mut recovered = false;
    for _ in 0..50 {
        if health(&app).await["status"] == "ok" {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "the host did not see Redis return");
    let fresh = json!({"data": {"b": 2}, "rules": ["numeric"]});
    let (_, first) = status_and_body(app.execute(&token, &id, fresh.clone()).await).await;
    let (_, second) = status_and_body(app.execute(&token, &id, fresh).await).await;
    assert_eq!(
        (first["cached"].clone(), second["cached"].clone()),
        (json!(false), json!(true))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_made_while_postgresql_is_down_are_logged_once_it_returns() {
    let postgres = OwnPostgres::start();
    let url = postgres.url();
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let app = spawn_app_with(|s| use_production_stores(s, &url, &prefix)).await;
    let token = app.token("paul", ALL);
    let id = app.session(&token, "rust-data_validator", json!({})).await;
    let mut requests = 1;

    postgres.stop();
    for n in 0..20 {
        let (status, _) = status_and_body(
            app.execute(&token, &id, json!({"data": {"n": n}, "rules": ["numeric"]}))
                .await,
        )
        .await;
        assert_eq!(status, 200);
        requests += 1;
    }
    // Predefined functions still initialize, from the last known registry.
    let other = app
        .session(&token, "python-text_processor", json!({}))
        .await;
    let (status, _) = status_and_body(
        app.execute(
            &token,
            &other,
            json!({"action": "count_chars", "text": "abc"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    requests += 2;
    let during = health(&app).await;
    requests += 1;
    assert_eq!(
        (
            during["status"].as_str(),
            during["components"]["postgres"].as_str()
        ),
        (Some("degraded"), Some("unavailable"))
    );

    postgres.resume();
    let data_dir = app.stop().await; // flushes the queued logs
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let logged: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM public.request_logs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(logged, requests, "one row per request");
    drop(data_dir);
}

/// Settings of a host on the test PostgreSQL and this test's own Redis.
async fn on_own_redis(
    redis_url: String,
    prefix: &'static str,
) -> impl Fn(&mut lambda_host::config::Settings) {
    let database = test_database_url().await;
    move |s| {
        use_production_stores(s, &database, prefix);
        s.stores.redis_url = Some(lambda_host::config::Secret::new(redis_url.clone()));
    }
}

/// Executes and returns (status, `result` or `error.code`).
async fn outcome(app: &TestApp, token: &str, id: &str) -> (u16, serde_json::Value) {
    let params = json!({"data": {"a": 1}, "rules": ["numeric"]});
    let (status, body) = status_and_body(app.execute(token, id, params).await).await;
    match status {
        200 => (status, body["result"].clone()),
        _ => (status, body["error"]["code"].clone()),
    }
}

/// The bug: when Redis came back empty, every live session answered 404
/// (on every replica, and after a restart) although PostgreSQL still held
/// its record. A session is lost only when it has ended or expired.
#[tokio::test(flavor = "multi_thread")]
async fn live_sessions_outlive_redis_coming_back_empty_and_ended_ones_stay_ended() {
    let mut redis = OwnRedis::start();
    let configure = on_own_redis(redis.url(), "wipe:").await;
    let app = spawn_app_with(&configure).await;
    let token = app.token("wanda", ALL);
    let live = app.session(&token, "rust-data_validator", json!({})).await;
    let once = app
        .session(
            &token,
            "rust-data_validator",
            json!({"context": {"retain_session": false}}),
        )
        .await;
    assert_eq!(outcome(&app, &token, &live).await.0, 200);
    assert_eq!(outcome(&app, &token, &once).await.0, 200);
    assert_eq!(outcome(&app, &token, &once).await.0, 404, "not retained");

    redis.wipe();
    // Another user cannot take the id the live store forgot.
    let mallory = app.token("mallory", ALL);
    let response = app
        .client
        .post(app.url("/api/v1/initialize"))
        .bearer_auth(&mallory)
        .header("Language-Title", "nodejs-calculator")
        .header("X-Request-ID", &live)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 200);
    assert_ne!(body["request_id"], live.as_str());
    let (status, body) = outcome(&app, &token, &live).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"valid": true, "errors": []}))
    );
    assert_eq!(
        outcome(&app, &token, &once).await.0,
        404,
        "ended stays ended"
    );
    // Another replica (or this host restarted) after a second wipe.
    redis.wipe();
    let replica = spawn_app_with(&configure).await;
    assert_eq!(outcome(&replica, &token, &live).await.0, 200);
    assert_eq!(outcome(&replica, &token, &once).await.0, 404);
    // Still not another user's.
    assert_eq!(outcome(&replica, &mallory, &live).await.0, 404);
    replica.stop().await;
    app.stop().await;
}

/// The bug (suspected, shown here): a `retain_session: false` session
/// that had run once could run again during a Redis outage, resurrected
/// from its durable record, which said it was still active.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_ended_does_not_come_back_during_a_redis_outage() {
    let mut redis = OwnRedis::start();
    let configure = on_own_redis(redis.url(), "outage:").await;
    let app = spawn_app_with(&configure).await;
    let token = app.token("olga", ALL);
    let once = app
        .session(
            &token,
            "rust-data_validator",
            json!({"context": {"retain_session": false}}),
        )
        .await;
    assert_eq!(outcome(&app, &token, &once).await.0, 200);
    // Whatever the host writes about the session reaches the database.
    let replica = spawn_app_with(&configure).await;
    app.stop().await;

    redis.kill();
    assert_eq!(outcome(&replica, &token, &once).await.0, 404);
    replica.stop().await;
}

/// The bug: stopping awaited the log flush with no limit while the writer
/// retried forever, so a host asked to stop with PostgreSQL down hung
/// until it was killed.
#[tokio::test(flavor = "multi_thread")]
async fn stopping_with_the_database_down_takes_a_bounded_time() {
    let postgres = OwnPostgres::start();
    let url = postgres.url();
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let app = spawn_app_with(|s| {
        use_production_stores(s, &url, &prefix);
        s.server.shutdown_log_timeout = Duration::from_secs(1);
    })
    .await;
    postgres.stop();
    // Logged, and now waiting for a database that is not there.
    app.client.get(app.url("/health")).send().await.unwrap();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("the host stops although its logs cannot be written");
    assert!(started.elapsed() >= Duration::from_secs(1), "it tried");
}

/// A second SIGTERM ends a graceful stop that waits too long.
#[test]
fn a_second_signal_exits_at_once() {
    let postgres = OwnPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let no_functions = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut host = crate::helpers::lambda_host(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--components-dir")
        .arg(no_functions.path())
        .env("LAMBDA_DATABASE_URL", postgres.url())
        .env("LAMBDA_JWT_SECRET", crate::helpers::TEST_SECRET)
        // The stop would wait this long for the logs.
        .env("LAMBDA_SHUTDOWN_LOG_TIMEOUT", "10m")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    postgres.stop();
    // A request whose log record cannot be written.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");

    let pid = host.id().to_string();
    let terminate = || Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    terminate();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        host.try_wait().unwrap().is_none(),
        "still stopping: waiting for the logs"
    );
    terminate();
    let started = std::time::Instant::now();
    while host.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a second signal did not end the host"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(host.wait().unwrap().code(), Some(130));
}
