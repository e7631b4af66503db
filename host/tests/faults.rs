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
