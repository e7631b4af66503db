//! Shared set-up: settings pointing at shared build caches, fixture builds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lambda_host::config::Settings;
use lambda_host::language::Language;
use lambda_host::runtime::{Invocation, Runtime};
use lambda_host::toolchain::{BuildOptions, Toolchains};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The `lambda-host` binary, run from the repository root over a data
/// directory, sharing the Rust target directory of every test.
pub fn lambda_host(data_dir: &Path) -> std::process::Command {
    // A data directory as an operator keeps it (the host warns on stderr,
    // where these tests read errors, about one open to other users).
    if data_dir.is_dir() {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lambda-host"));
    command
        .current_dir(repo_root())
        .env("LAMBDA_DATA_DIR", data_dir)
        .env(
            "LAMBDA_RUST_TARGET_DIR",
            repo_root().join("target/guest-rust"),
        )
        // As `settings` for the servers in this process: a `serve` builds
        // and compiles no interpreter (tier 0), which a fresh data directory
        // would do for every server, and no test of a subprocess uses.
        .env("LAMBDA_NO_INTERPRETERS", "true");
    command
}

/// A data directory shared by the tests that run the binary on the
/// interpreter components. Its caches are links to the ones the servers of
/// this process share (`settings`), and it holds the same secret, so a
/// component built or compiled by either is reused by the other instead of
/// costing another half minute of a componentizer and Cranelift; `just
/// test`'s fuzzer uses them through it afterwards, for the same reason.
pub fn shared_cli_data_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let dir = repo_root().join("target/test-cli-data");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        for (cache, shared) in [
            ("artifacts", SHARED_ARTIFACTS),
            ("aot", SHARED_AOT),
            ("toolchain-cache", SHARED_TOOLCHAIN_CACHE),
        ] {
            let (link, target) = (dir.join(cache), repo_root().join(shared));
            std::fs::create_dir_all(&target).unwrap();
            if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
                // A directory of its own, from before the caches were shared.
                let _ = std::fs::remove_dir_all(&link);
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&target, &link).unwrap();
            }
        }
        let mut secret = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("jwt-secret"))
            .unwrap();
        std::io::Write::write_all(&mut secret, TEST_SECRET.as_bytes()).unwrap();
        dir
    })
    .clone()
}

/// The caches every test shares, under the repository's root.
const SHARED_ARTIFACTS: &str = "target/test-artifacts";
const SHARED_AOT: &str = "target/test-aot";
const SHARED_TOOLCHAIN_CACHE: &str = "target/test-toolchain-cache";

fn shared_compile_cache() -> Arc<lambda_host::runtime::CompiledFunctions> {
    static CACHE: std::sync::OnceLock<Arc<lambda_host::runtime::CompiledFunctions>> =
        std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| Arc::new(lambda_host::runtime::CompiledFunctions::new(512 << 20)))
        .clone()
}

/// Settings over a fresh data directory, sharing the expensive caches of
/// every test: the Rust target directory (dependencies built once), the
/// artifact store (fixtures built once per change of their source) and the
/// AOT cache (a 12-20 MB interpreter component compiled once, not per test).
pub fn settings(data_dir: &Path) -> Settings {
    let mut settings = Settings::new(data_dir, repo_root().join("components"));
    settings.toolchain.rust_target_dir = repo_root().join("target/guest-rust");
    settings.toolchain.cache_dir = repo_root().join(SHARED_TOOLCHAIN_CACHE);
    // The test binary is not the host: the sandbox's supervisor is.
    settings.toolchain.sandbox_supervisor = env!("CARGO_BIN_EXE_lambda-host").into();
    settings.runtime.execution_process_program = env!("CARGO_BIN_EXE_lambda-host").into();
    settings.toolchain.artifacts_dir = repo_root().join(SHARED_ARTIFACTS);
    settings.toolchain.toolchains_dir = repo_root().join("toolchains");
    settings.runtime.aot_cache_dir = Some(repo_root().join(SHARED_AOT));
    // One incremental compilation cache for every runtime of the test
    // binary, as one host has: a new JavaScript or Python component then
    // compiles in seconds, reusing its engine's code from earlier tests.
    settings.runtime.shared_compile_cache = Some(shared_compile_cache());
    // One secret for every test, so what one test sealed into the shared
    // caches (artifacts, AOT entries) the next one trusts.
    settings.server.jwt_secret = Some(lambda_host::config::Secret::new(TEST_SECRET));
    // The artifact store and AOT cache above are shared by every test's
    // own registry: none of them may sweep what it does not know of.
    settings.server.log_retention = std::time::Duration::from_secs(10 * 365 * 24 * 3600);
    // Tests build and start many functions as one user within a minute;
    // the limits on that have a test of their own.
    settings.server.rate_limits.builds_per_subject = 10_000;
    settings.server.rate_limits.initialize_per_subject = 10_000;
    // Interpreters (tier 0) load in the background at start, so whether a
    // new function starts on one would depend on timing: tests get their
    // function's own component unless they test the tiers.
    settings.toolchain.no_interpreters = true;
    settings.validate().unwrap();
    settings
}

/// Settings whose AOT cache is the fresh data directory's own, for tests
/// that count compilations.
pub fn private_aot_settings(data_dir: &Path) -> Settings {
    let mut settings = settings(data_dir);
    settings.runtime.aot_cache_dir = Some(data_dir.join("aot"));
    settings
}

/// Settings whose artifact store is the fresh data directory's own, for
/// tests that must see the toolchain run.
pub fn isolated_settings(data_dir: &Path) -> Settings {
    let mut settings = settings(data_dir);
    settings.toolchain.artifacts_dir = data_dir.join("artifacts");
    settings
}

/// The toolchains over the shared caches, detected once per test binary.
pub async fn shared_toolchains() -> &'static Toolchains {
    static TOOLCHAINS: OnceCell<Toolchains> = OnceCell::const_new();
    TOOLCHAINS
        .get_or_init(|| async {
            // Leaked on purpose: the settings' temp dir must outlive every test.
            let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
            Toolchains::detect(&settings(dir.path()).toolchain)
                .await
                .unwrap()
        })
        .await
}

/// Builds `tests/fixtures/rust/<name>.rs` with the real Rust toolchain.
pub async fn rust_fixture(name: &str) -> Arc<[u8]> {
    fixture(Language::Rust, name).await
}

/// Builds `tests/fixtures/<js|python|rust>/<name>.<ext>` with the real
/// toolchain of its language.
pub async fn fixture(language: Language, name: &str) -> Arc<[u8]> {
    let source = fixture_source(language, name);
    shared_toolchains()
        .await
        .build(language, &source, &BuildOptions::default())
        .await
        .unwrap_or_else(|e| panic!("building fixture {language} {name}: {e}"))
        .component
}

/// The language's interpreter component (tier 0), built once.
pub async fn interpreter(language: Language) -> Arc<[u8]> {
    shared_toolchains()
        .await
        .build_interpreter(language)
        .await
        .unwrap_or_else(|e| panic!("building the {language} interpreter: {e}"))
        .component
}

/// The source of a fixture.
pub fn fixture_source(language: Language, name: &str) -> String {
    let (folder, extension) = match language {
        Language::Nodejs => ("js", "js"),
        Language::Python => ("python", "py"),
        Language::Rust => ("rust", "rs"),
        Language::Wasm => ("wasm", "b64"),
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/{folder}/{name}.{extension}"));
    std::fs::read_to_string(&path).unwrap()
}

/// A runtime over a fresh data directory and the shared AOT cache.
pub fn runtime(data_dir: &Path, configure: impl FnOnce(&mut Settings)) -> Runtime {
    let mut settings = settings(data_dir);
    configure(&mut settings);
    Runtime::new(&settings.runtime).unwrap()
}

/// An invocation with these params and an empty context.
pub fn invocation(language_title: &str, params: Value) -> Invocation {
    Invocation {
        request_id: uuid::Uuid::new_v4().to_string(),
        language_title: language_title.to_owned(),
        params,
        context: json!({}),
        caller: "test".to_owned(),
        script: None,
        warm_version: None,
    }
}

/// A TCP listener and a UDP socket on the same loopback port, for showing
/// that a guest reaches nothing: the kernel completes a TCP handshake and
/// queues a datagram whether or not anyone reads them, so `arrivals` (the
/// connections and datagrams that came, drained without blocking) counts
/// every attempt that got through.
pub struct LoopbackTrap {
    pub address: std::net::SocketAddr,
    tcp: std::net::TcpListener,
    udp: std::net::UdpSocket,
}

impl LoopbackTrap {
    pub fn new() -> Self {
        // The TCP port picked by the kernel may be taken for UDP: try again.
        for _ in 0..32 {
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let address = tcp.local_addr().unwrap();
            if let Ok(udp) = std::net::UdpSocket::bind(address) {
                tcp.set_nonblocking(true).unwrap();
                udp.set_nonblocking(true).unwrap();
                return Self { address, tcp, udp };
            }
        }
        panic!("no loopback port free for both TCP and UDP");
    }

    pub fn arrivals(&self) -> usize {
        let mut count = 0;
        while self.tcp.accept().is_ok() {
            count += 1;
        }
        let mut buffer = [0u8; 64];
        while self.udp.recv_from(&mut buffer).is_ok() {
            count += 1;
        }
        count
    }

    /// The trap counts what the host itself sends it: one connection and
    /// one datagram (a test's `arrivals() == 0` means something).
    pub fn assert_it_counts(&self) {
        let _connection = std::net::TcpStream::connect(self.address).unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"host", self.address).unwrap();
        assert_eq!(self.arrivals(), 2);
    }
}

/// A server on a free port over a fresh data directory, as `serve` runs it.
pub struct TestApp {
    pub address: String,
    pub state: lambda_host::api::AppState,
    pub client: reqwest::Client,
    pub keys: lambda_host::auth::JwtKeys,
    /// Kept so the directory lives as long as the server.
    pub data_dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The secret every test server signs with.
pub const TEST_SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The predefined functions built and compiled into the shared caches by one
/// server, once per test binary, before the first test's own server starts:
/// servers that start together on cold caches would each build and compile
/// the same three functions (a minute or two each on a clean checkout).
async fn predefined_functions_in_the_shared_caches() {
    static BUILT: OnceCell<()> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let data_dir = tempfile::tempdir().unwrap();
            let application = lambda_host::server::Application::build(settings(data_dir.path()))
                .await
                .unwrap();
            drop(application);
        })
        .await;
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    predefined_functions_in_the_shared_caches().await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = settings(data_dir.path());
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.server.jwt_secret = Some(lambda_host::config::Secret::new(TEST_SECRET));
    configure(&mut settings);
    let application = lambda_host::server::Application::build(settings)
        .await
        .unwrap();
    let address = format!("http://{}", application.local_addr());
    let state = application.state().clone();
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        state,
        client: reqwest::Client::new(),
        keys: lambda_host::auth::JwtKeys::from_secret(TEST_SECRET.as_bytes()).unwrap(),
        data_dir,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

impl TestApp {
    /// A token for `sub` with these space-separated scopes.
    pub fn token(&self, sub: &str, scopes: &str) -> String {
        let scopes: Vec<String> = scopes.split_whitespace().map(str::to_owned).collect();
        self.keys
            .mint(sub, &scopes, std::time::Duration::from_secs(600))
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// GET /metrics, as text.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// POST /api/v1/initialize.
    pub async fn initialize(
        &self,
        token: &str,
        language_title: &str,
        body: Value,
    ) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/initialize"))
            .bearer_auth(token)
            .header("Language-Title", language_title)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Initializes and returns the session id, failing the test otherwise.
    pub async fn session(&self, token: &str, language_title: &str, body: Value) -> String {
        let response = self.initialize(token, language_title, body).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body["request_id"].as_str().unwrap().to_owned()
    }

    /// POST /api/v1/execute/{id} with these params.
    pub async fn execute(&self, token: &str, id: &str, params: Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/v1/execute/{id}")))
            .bearer_auth(token)
            .json(&json!({ "params": params }))
            .send()
            .await
            .unwrap()
    }

    /// Stops the server and waits for its logs to be written; returns the
    /// data directory for tests that read what the server left in it.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        self.data_dir
    }
}

/// Reads a response as (status, JSON body).
pub async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, body)
}

/// The test Redis started by `just test` (scripts/test-services.sh).
pub fn test_redis_url() -> String {
    std::env::var("LAMBDA_TEST_REDIS_URL").expect(
        "LAMBDA_TEST_REDIS_URL is not set: run the tests with `just test`, which starts Redis and \
         PostgreSQL (scripts/test-services.sh)",
    )
}

/// A fresh database in the test PostgreSQL started by `just test`.
pub async fn test_database_url() -> String {
    use sqlx::Connection as _;
    let server = std::env::var("LAMBDA_TEST_DATABASE_URL").expect(
        "LAMBDA_TEST_DATABASE_URL is not set: run the tests with `just test`, which starts Redis \
         and PostgreSQL (scripts/test-services.sh)",
    );
    let name = format!("lambda_test_{}", uuid::Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut connection)
        .await
        .unwrap();
    let (base, _) = server.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// Points settings at the test Redis, under a key prefix of its own, and at
/// a PostgreSQL database.
pub fn use_production_stores(settings: &mut Settings, database_url: &str, redis_prefix: &str) {
    settings.stores.redis_url = Some(lambda_host::config::Secret::new(test_redis_url()));
    settings.stores.database_url = Some(lambda_host::config::Secret::new(database_url));
    settings.stores.redis_prefix = redis_prefix.to_owned();
}

/// A server on Redis and a fresh PostgreSQL database.
pub async fn spawn_production_app() -> TestApp {
    let database = test_database_url().await;
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    spawn_app_with(|s| use_production_stores(s, &database, &prefix)).await
}
