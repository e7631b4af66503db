//! Typed settings, defined once. Each field is a setting: its doc comment is
//! the help of its flag, its attributes name the flag, the `LAMBDA_*`
//! environment variable (whose lower-case name without the prefix is the
//! config-file key) and the default. The command line, the config file
//! ([`file`]), the library's defaults ([`Settings::defaults`]) and the
//! reference table ([`reference`]) are all read from these definitions.
//!
//! Everything is validated before anything starts, so a bad value fails at
//! start with a message instead of at the first request.

pub mod file;
pub mod reference;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use clap::{Args, FromArgMatches};

use crate::integrity::IntegrityKey;
use crate::sandbox::{Isolation, Limits};

/// Settings of the whole host.
#[derive(Args, Clone, Debug)]
pub struct Settings {
    /// Where the host keeps its state: AOT cache, build artifacts.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_DATA_DIR",
        default_value = ".lambda"
    )]
    pub data_dir: PathBuf,
    /// The predefined functions, one folder per Language-Title.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_COMPONENTS_DIR",
        default_value = "components"
    )]
    pub components_dir: PathBuf,
    #[command(flatten)]
    pub runtime: RuntimeConfig,
    #[command(flatten)]
    pub toolchain: ToolchainConfig,
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub stores: StoreConfig,
}

/// Which backends hold the host's state. Neither URL set: the embedded
/// defaults (in process + SQLite in the data directory).
#[derive(Args, Clone, Debug)]
pub struct StoreConfig {
    /// Redis for sessions, the result cache and rate limits (`redis://[:password@]host:port/`); unset: in process. From the environment or the config file only.
    #[arg(long, global = true, env = "LAMBDA_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,
    /// PostgreSQL for the registry, artifacts, session records and logs (`postgres://user:password@host/db`); unset: SQLite in `<data-dir>/lambda.db`. From the environment or the config file only.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<Secret>,
    /// Do not apply database migrations at start (run `lambda-host migrate` instead).
    #[arg(long, global = true, env = "LAMBDA_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,
    /// The prefix of every Redis key, so several deployments (or test
    /// runs) can share one Redis.
    #[arg(skip = "lambda:".to_owned())]
    pub redis_prefix: String,
}

/// The settings that hold credentials: they must not be given as flags,
/// which any user of the machine sees in `ps`.
pub const SECRET_SETTINGS: &[&str] = &["jwt_secret", "redis_url", "database_url"];

/// What `--rust-target-dir` says by default: resolved against the data
/// directory once it is known.
const IN_DATA_DIR: &str = "<data-dir>";

impl Settings {
    /// The defaults of every setting: what the command line gives when no
    /// flag, variable or file says anything (the environment is not read).
    /// The paths inside the data directory are filled in by
    /// [`resolve`](Self::resolve), once the data directory is known.
    pub fn defaults() -> Self {
        let command =
            Self::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(["defaults"])
            .expect("every setting has a default or is optional");
        Self::from_arg_matches(&matches).expect("the defaults parse as settings")
    }

    /// The defaults for a data directory and a components directory; the
    /// caller overrides single fields (tests, embedders) afterwards.
    pub fn new(data_dir: impl Into<PathBuf>, components_dir: impl Into<PathBuf>) -> Self {
        let mut settings = Self::defaults();
        settings.data_dir = data_dir.into();
        settings.components_dir = components_dir.into();
        settings.resolve();
        settings
    }

    /// Fills in the paths that live in the data directory unless set, and
    /// reads an empty store URL as unset (`LAMBDA_REDIS_URL=` in an `.env`
    /// file means the embedded default).
    pub fn resolve(&mut self) {
        for url in [&mut self.stores.redis_url, &mut self.stores.database_url] {
            if url.as_ref().is_some_and(|u| u.expose().trim().is_empty()) {
                *url = None;
            }
        }
        let data_dir = &self.data_dir;
        let toolchain = &mut self.toolchain;
        if let Ok(rest) = toolchain.rust_target_dir.strip_prefix(IN_DATA_DIR) {
            toolchain.rust_target_dir = data_dir.join(rest);
        }
        for (path, name) in [
            (&mut toolchain.artifacts_dir, "artifacts"),
            (&mut toolchain.work_dir, "builds"),
            (&mut toolchain.cache_dir, "toolchain-cache"),
        ] {
            if path.as_os_str().is_empty() {
                *path = data_dir.join(name);
            }
        }
        self.runtime
            .aot_cache_dir
            .get_or_insert_with(|| data_dir.join("aot"));
    }

    /// Checks every value, creates the directories the host writes to and
    /// makes every path absolute (child processes such as cargo run in
    /// other directories, where a relative path would mean something else).
    pub fn validate(&mut self) -> anyhow::Result<()> {
        self.resolve();
        self.runtime.validate()?;
        self.toolchain.validate()?;
        self.server.validate()?;
        // The data directory holds the secret, the databases and what the
        // host runs: its own user's only.
        crate::files::create_private_dir(&self.data_dir)?;
        for dir in [
            &self.toolchain.artifacts_dir,
            &self.toolchain.work_dir,
            &self.toolchain.cache_dir,
        ] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        if let Some(dir) = &self.runtime.aot_cache_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        for path in [
            &mut self.data_dir,
            &mut self.components_dir,
            &mut self.toolchain.artifacts_dir,
            &mut self.toolchain.work_dir,
            &mut self.toolchain.rust_target_dir,
            &mut self.toolchain.cache_dir,
            &mut self.toolchain.toolchains_dir,
            &mut self.toolchain.sandbox_supervisor,
            &mut self.runtime.execution_process_program,
        ]
        .into_iter()
        .chain(self.runtime.aot_cache_dir.as_mut())
        {
            *path = std::path::absolute(&*path)
                .with_context(|| format!("cannot resolve {}", path.display()))?;
        }
        // What the host stores is sealed with a key of its secret, which
        // replicas share: an artifact or native code is used only if a
        // host holding the secret wrote it.
        let secret = crate::auth::host_secret(
            self.server.jwt_secret.as_ref().map(Secret::expose),
            &self.data_dir,
        )?;
        let key = IntegrityKey::derive(&secret);
        self.runtime.integrity_key = key.clone();
        self.toolchain.integrity_key = key;
        Ok(())
    }
}

/// The deadline of an execution whose session does not set one, unless
/// the maximum is lower.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the wasmtime runtime.
#[derive(Args, Clone, Debug)]
pub struct RuntimeConfig {
    // Pooling: instance slots, memories and stacks are reserved once and
    // reused, which makes instantiation a matter of microseconds. Off,
    // every instance maps fresh memory.
    /// Turn the pooling instance allocator off.
    #[arg(long, global = true, env = "LAMBDA_NO_POOLING")]
    pub no_pooling: bool,
    /// The operator's capability policy: which HTTP functions may call which hosts, open a key-value store, read which variables (TOML; docs/http-functions.md). Unset: nothing is granted.
    #[arg(long, global = true, env = "LAMBDA_CAPABILITY_POLICY")]
    pub capability_policy: Option<std::path::PathBuf>,
    /// How many executions may run at once: the size of the instance pool.
    #[arg(long, global = true, env = "LAMBDA_MAX_INSTANCES", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_instances: u32,
    /// The memory cap of one execution (all the memories of its component together), in MiB.
    #[arg(long = "memory-limit-mb", global = true, env = "LAMBDA_MEMORY_LIMIT_MB", default_value = "256", value_parser = mebibytes)]
    pub memory_limit_bytes: u64,
    /// The deadline of an execution whose session sets none, in milliseconds [default: 30000, or max-timeout-ms if lower].
    #[arg(long = "default-timeout-ms", global = true, env = "LAMBDA_DEFAULT_TIMEOUT_MS", value_parser = milliseconds)]
    pub default_timeout: Option<Duration>,
    /// The longest deadline a session may ask for, in milliseconds.
    #[arg(long = "max-timeout-ms", global = true, env = "LAMBDA_MAX_TIMEOUT_MS", default_value = "300000", value_parser = milliseconds)]
    pub max_timeout: Duration,
    /// How long an execution waits for a free instance slot before 503 OVERLOADED, e.g. `5s`.
    #[arg(long, global = true, env = "LAMBDA_SLOT_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub slot_wait: Duration,
    /// The fraction of the instance slots one token subject may hold at once (beyond: 429).
    #[arg(
        long,
        global = true,
        env = "LAMBDA_CALLER_SLOT_SHARE",
        default_value_t = 0.25
    )]
    pub caller_slot_share: f64,
    // Warm instances (see runtime/warm.rs): a function that opted in may
    // serve a caller's next execution of the same version from the
    // instance of the last one.
    /// How many warm instances may wait for their next execution (0: none are kept); the least recently used goes first.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_WARM_INSTANCES",
        default_value_t = 32
    )]
    pub warm_instances: u32,
    /// How many executions one warm instance serves before it is retired.
    #[arg(long, global = true, env = "LAMBDA_WARM_INSTANCE_USES", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub warm_instance_uses: u32,
    /// How long a warm instance waits unused before it is retired, e.g. `60s`.
    #[arg(long, global = true, env = "LAMBDA_WARM_INSTANCE_IDLE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub warm_instance_idle: Duration,
    // The pooling allocator's reuse of its slots (wasmtime's knobs; the
    // numbers behind the defaults are in docs/benchmarks.md).
    /// Bytes of each linear memory reset by `memset` and kept resident when its slot is freed, in KiB (beyond: `madvise`).
    #[arg(long = "pool-memory-keep-resident-kib", global = true, env = "LAMBDA_POOL_MEMORY_KEEP_RESIDENT_KIB", default_value = "1024", value_parser = kibibytes)]
    pub pool_memory_keep_resident: usize,
    /// The same for each table, in KiB.
    #[arg(long = "pool-table-keep-resident-kib", global = true, env = "LAMBDA_POOL_TABLE_KEEP_RESIDENT_KIB", default_value = "64", value_parser = kibibytes)]
    pub pool_table_keep_resident: usize,
    /// Reset only the pages a memory touched, found with Linux's PAGEMAP_SCAN (6.7+): `auto` uses it when the kernel has it and no swap is on (swapped-out pages would not be reset), `on` requires it, `off`.
    #[arg(long, global = true, env = "LAMBDA_POOL_PAGEMAP_SCAN", value_enum, default_value_t = PagemapScan::Auto)]
    pub pool_pagemap_scan: PagemapScan,
    /// Freed slots whose memory is given back to the kernel in one batch (1: each at once).
    #[arg(long, global = true, env = "LAMBDA_POOL_DECOMMIT_BATCH", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub pool_decommit_batch: u32,
    /// Freed slots kept warm (their images mapped) for the same component to take again.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_POOL_WARM_SLOTS",
        default_value_t = 100
    )]
    pub pool_warm_slots: u32,
    // Execution processes (see runtime/processes.rs): fresh instances of
    // the interpreters fault hundreds of pages each, which costs twice as
    // much in a process whose threads run on several cores.
    /// How many single-threaded child processes run the fresh instances of large components (JavaScript and Python) [default: one per core; 0: all in the host process].
    #[arg(long, global = true, env = "LAMBDA_EXECUTION_PROCESSES")]
    pub execution_processes: Option<u32>,
    /// The binary the execution processes run: the host's own, unless a
    /// library user (a test binary) says otherwise.
    #[arg(skip = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("lambda-host")))]
    pub execution_process_program: PathBuf,
    /// Whether the execution processes write their log lines as JSON
    /// objects, as the host does with `--log-format json` (they share its
    /// stderr, so its collector reads both).
    #[arg(skip)]
    pub execution_process_log_json: bool,
    /// The period of the engine's epoch ticker: the granularity of
    /// deadlines and how often a running guest yields to the executor.
    #[arg(skip = Duration::from_millis(10))]
    pub epoch_tick: Duration,
    /// How many bytes of stdout, of stderr and of log lines an execution
    /// may leave; the rest is cut.
    #[arg(skip = 64usize << 10)]
    pub output_limit_bytes: usize,
    // The least recently used functions beyond it are dropped (and loaded
    // again from the AOT cache when asked for).
    /// The loaded functions kept in memory, by the summed size of their components, in MiB: in the host and in each execution process (which keeps the large components it ran).
    #[arg(long = "loaded-components-mb", global = true, env = "LAMBDA_LOADED_COMPONENTS_MB", default_value = "1024", value_parser = mebibytes)]
    pub loaded_components_max_bytes: u64,
    /// Cranelift's incremental compilation cache, in MiB (0: off): functions compiled for one component are reused for the next that contains them, such as the interpreter every JavaScript or Python component carries.
    #[arg(long = "compile-cache-mb", global = true, env = "LAMBDA_COMPILE_CACHE_MB", default_value = "128", value_parser = mebibytes)]
    pub compile_cache_bytes: u64,
    /// A compilation cache shared with the other runtimes of the process
    /// (a test binary starts many); by default a runtime makes its own.
    #[arg(skip)]
    pub shared_compile_cache: Option<std::sync::Arc<crate::runtime::CompiledFunctions>>,
    /// Where compiled components are serialized ahead of time, keyed by
    /// component digest and engine fingerprint (`<data-dir>/aot`).
    #[arg(skip)]
    pub aot_cache_dir: Option<PathBuf>,
    /// Seals the AOT cache's entries: native code is loaded only if this
    /// host (or a replica with the same secret) wrote it.
    #[arg(skip)]
    pub integrity_key: IntegrityKey,
}

impl RuntimeConfig {
    /// Whether the pooling instance allocator is used.
    pub fn pooling(&self) -> bool {
        !self.no_pooling
    }

    /// The deadline of an execution whose session sets none.
    pub fn default_timeout(&self) -> Duration {
        self.default_timeout
            .unwrap_or(DEFAULT_TIMEOUT.min(self.max_timeout))
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.max_instances >= 1, "max_instances must be at least 1");
        ensure!(
            self.caller_slot_share > 0.0 && self.caller_slot_share <= 1.0,
            "caller_slot_share must be more than 0 and at most 1 (got {})",
            self.caller_slot_share
        );
        ensure!(
            self.memory_limit_bytes >= 1 << 20,
            "memory_limit_bytes must be at least 1 MiB (got {})",
            self.memory_limit_bytes
        );
        ensure!(
            self.memory_limit_bytes <= 4 << 30,
            "memory_limit_bytes must be at most 4 GiB, the size of a 32-bit memory (got {})",
            self.memory_limit_bytes
        );
        ensure!(
            self.loaded_components_max_bytes >= 1 << 20,
            "loaded_components_max_bytes must be at least 1 MiB (got {})",
            self.loaded_components_max_bytes
        );
        ensure!(
            !self.warm_instance_idle.is_zero(),
            "warm_instance_idle must be positive"
        );
        ensure!(!self.max_timeout.is_zero(), "max_timeout must be positive");
        ensure!(
            !self.default_timeout().is_zero(),
            "default_timeout must be positive"
        );
        ensure!(
            self.default_timeout() <= self.max_timeout,
            "default_timeout ({:?}) exceeds max_timeout ({:?})",
            self.default_timeout(),
            self.max_timeout
        );
        ensure!(
            self.epoch_tick >= Duration::from_millis(1)
                && self.epoch_tick <= Duration::from_secs(1),
            "epoch_tick must be between 1 ms and 1 s (got {:?})",
            self.epoch_tick
        );
        Ok(())
    }
}

/// A secret string: shown as `[redacted]` by `Debug`, so it cannot reach a
/// log through a settings dump.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "String")]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Settings of the REST API.
#[derive(Args, Clone, Debug)]
pub struct ServerConfig {
    /// The address `serve` listens on.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: std::net::SocketAddr,
    /// The HS256 token secret, at least 32 bytes and generated (placeholders and patterns are refused: `openssl rand -base64 48`); the same on every replica. Unset: generated into `<data-dir>/jwt-secret`. From the environment or the config file only.
    #[arg(long, global = true, env = "LAMBDA_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// Allowed CORS origins, comma-separated; `*` allows any.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_CORS_ORIGINS",
        default_value = "*",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// The largest request body, in bytes (beyond: 413).
    #[arg(long, global = true, env = "LAMBDA_BODY_LIMIT_BYTES", default_value_t = 2 << 20)]
    pub body_limit_bytes: usize,
    /// How long a session lives, e.g. `1h`.
    #[arg(long, global = true, env = "LAMBDA_SESSION_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,
    /// The largest session context, in bytes of JSON (beyond: 413).
    #[arg(long, global = true, env = "LAMBDA_MAX_CONTEXT_BYTES", default_value_t = 64 << 10)]
    pub max_context_bytes: usize,
    /// How long a result stays cached unless X-Cache-Control says, e.g. `1h`.
    #[arg(long, global = true, env = "LAMBDA_CACHE_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub cache_ttl: Duration,
    /// The longest a result may stay cached, whatever X-Cache-Control asks, e.g. `1d`.
    #[arg(long, global = true, env = "LAMBDA_CACHE_MAX_TTL", default_value = "1d", value_parser = humantime::parse_duration)]
    pub cache_max_ttl: Duration,
    /// The live sessions kept in process weigh at most this, in bytes.
    #[arg(skip = 256u64 << 20)]
    pub sessions_max_bytes: u64,
    /// What one token subject's live sessions may weigh, in MiB (beyond: 429).
    #[arg(long = "session-quota-mb", global = true, env = "LAMBDA_SESSION_QUOTA_MB", default_value = "8", value_parser = mebibytes)]
    pub session_quota_bytes: u64,
    /// At most this many bytes of results are cached in process.
    #[arg(skip = 64u64 << 20)]
    pub cache_max_bytes: u64,
    #[command(flatten)]
    pub rate_limits: RateLimits,
    // At ~300 bytes a record, 30 MB: a 30-second database outage at 1500
    // executions per second (two records each).
    /// Log records that may wait for the database (while it is down), at most.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_LOG_QUEUE_CAPACITY",
        default_value_t = 100_000
    )]
    pub log_queue_capacity: usize,
    /// How long request and error logs, ended sessions' records, and built components and native code no function uses are kept, e.g. `30d`.
    #[arg(long, global = true, env = "LAMBDA_LOG_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub log_retention: Duration,
    /// How long stopping waits for queued log records to reach the database; what is still queued then is lost (and its count logged), e.g. `10s`.
    #[arg(long, global = true, env = "LAMBDA_SHUTDOWN_LOG_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_log_timeout: Duration,
    /// How often the sweep of what outlived the retention runs.
    #[arg(skip = Duration::from_secs(3600))]
    pub log_sweep_interval: Duration,
}

/// Requests per minute.
#[derive(Args, Clone, Debug)]
pub struct RateLimits {
    /// Execute requests per minute per token subject.
    #[arg(
        long = "rate-limit-execute",
        global = true,
        env = "LAMBDA_RATE_LIMIT_EXECUTE",
        default_value_t = 100
    )]
    pub execute_per_subject: u32,
    /// Execute requests per minute per client IP without a valid token.
    #[arg(
        long = "rate-limit-execute-anonymous",
        global = true,
        env = "LAMBDA_RATE_LIMIT_EXECUTE_ANONYMOUS",
        default_value_t = 10
    )]
    pub execute_per_anonymous_ip: u32,
    /// Function listing requests per minute per token subject.
    #[arg(
        long = "rate-limit-functions",
        global = true,
        env = "LAMBDA_RATE_LIMIT_FUNCTIONS",
        default_value_t = 60
    )]
    pub functions_per_subject: u32,
    /// Initialize requests per minute per token subject.
    #[arg(
        long = "rate-limit-initialize",
        global = true,
        env = "LAMBDA_RATE_LIMIT_INITIALIZE",
        default_value_t = 60
    )]
    pub initialize_per_subject: u32,
    /// Initialize requests with a source (builds) per minute per token subject.
    #[arg(
        long = "rate-limit-builds",
        global = true,
        env = "LAMBDA_RATE_LIMIT_BUILDS",
        default_value_t = 10
    )]
    pub builds_per_subject: u32,
}

impl ServerConfig {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.body_limit_bytes >= 1024,
            "body_limit_bytes must be at least 1024"
        );
        ensure!(!self.session_ttl.is_zero(), "session_ttl must be positive");
        ensure!(!self.cache_ttl.is_zero(), "cache_ttl must be positive");
        ensure!(
            self.cache_ttl <= self.cache_max_ttl,
            "cache_ttl ({:?}) exceeds cache_max_ttl ({:?})",
            self.cache_ttl,
            self.cache_max_ttl
        );
        ensure!(
            self.sessions_max_bytes > 0 && self.session_quota_bytes > 0,
            "sessions_max_bytes and session_quota_bytes must be positive"
        );
        ensure!(
            self.log_queue_capacity > 0,
            "log_queue_capacity must be positive"
        );
        ensure!(
            !self.log_retention.is_zero() && !self.log_sweep_interval.is_zero(),
            "log_retention and log_sweep_interval must be positive"
        );
        let limits = &self.rate_limits;
        ensure!(
            limits.execute_per_subject > 0
                && limits.execute_per_anonymous_ip > 0
                && limits.functions_per_subject > 0
                && limits.initialize_per_subject > 0
                && limits.builds_per_subject > 0,
            "rate limits must be positive"
        );
        if let Some(secret) = &self.jwt_secret {
            crate::auth::check_secret(secret.expose().as_bytes())
                .context("LAMBDA_JWT_SECRET is refused")?;
        }
        for origin in &self.cors_origins {
            ensure!(
                origin == "*" || origin.starts_with("http://") || origin.starts_with("https://"),
                "a CORS origin is `*` or an http(s) origin, got `{origin}`"
            );
        }
        Ok(())
    }
}

/// Settings of the toolchains that build components from source.
#[derive(Args, Clone, Debug)]
pub struct ToolchainConfig {
    /// Built components, content addressed: `<build digest>.wasm`
    /// (`<data-dir>/artifacts`).
    #[arg(skip)]
    pub artifacts_dir: PathBuf,
    /// Parent of the empty directories each build runs in
    /// (`<data-dir>/builds`).
    #[arg(skip)]
    pub work_dir: PathBuf,
    // Built once by a trusted run of the template (serde, serde_json,
    // wit-bindgen); user builds read it, never write it.
    /// The cargo target directory of the dependencies every Rust function links.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_RUST_TARGET_DIR",
        default_value = "<data-dir>/rust-target"
    )]
    pub rust_target_dir: PathBuf,
    /// What trusted preparation runs leave for every build of a toolchain
    /// (the JavaScript toolchain's compiled-code cache); read-only to
    /// builds of user source (`<data-dir>/toolchain-cache`).
    #[arg(skip)]
    pub cache_dir: PathBuf,
    /// The build drivers and their pinned tools (js/node_modules, python/.venv).
    #[arg(
        long,
        global = true,
        env = "LAMBDA_TOOLCHAINS_DIR",
        default_value = "toolchains"
    )]
    pub toolchains_dir: PathBuf,
    /// The longest a build may take, counted from the request (the wait for a build slot included), in seconds.
    #[arg(long = "build-timeout-secs", global = true, env = "LAMBDA_BUILD_TIMEOUT_SECS", default_value = "300", value_parser = seconds)]
    pub build_timeout: Duration,
    /// The resident memory of a build's whole process tree, in MiB.
    #[arg(long = "build-memory-mb", global = true, env = "LAMBDA_BUILD_MEMORY_MB", default_value = "2048", value_parser = mebibytes)]
    pub build_memory_bytes: u64,
    // Two cores busy for the whole default timeout.
    /// The CPU time of a build's whole process tree, in seconds.
    #[arg(long = "build-cpu-secs", global = true, env = "LAMBDA_BUILD_CPU_SECS", default_value = "600", value_parser = seconds)]
    pub build_cpu: Duration,
    /// The processes and threads a build may have at once.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_BUILD_MAX_TASKS",
        default_value_t = 128
    )]
    pub build_max_tasks: u32,
    /// What a build may write (its scratch directory, and so its component), in MiB.
    #[arg(long = "build-output-mb", global = true, env = "LAMBDA_BUILD_OUTPUT_MB", default_value = "256", value_parser = mebibytes)]
    pub build_output_bytes: u64,
    /// `required`: every toolchain runs in the OS sandbox, and builds are refused where the kernel cannot confine them; `off`: unconfined, only for a machine whose every user is trusted.
    #[arg(
        long = "build-sandbox",
        global = true,
        env = "LAMBDA_BUILD_SANDBOX",
        default_value = "required"
    )]
    pub isolation: Isolation,
    /// The binary that runs the sandbox's supervisor (`sandbox-exec`): the
    /// host's own, unless a library user (a test binary) says otherwise.
    #[arg(skip = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("lambda-host")))]
    pub sandbox_supervisor: PathBuf,
    /// The Rust source guard, the fast first line in front of the sandbox.
    /// Only tests turn it off, to show that the sandbox holds alone.
    #[arg(skip = true)]
    pub rust_source_guard: bool,
    /// Run new JavaScript and Python functions only once their own component is built, never on the language's interpreter (tier 0).
    #[arg(long, global = true, env = "LAMBDA_NO_INTERPRETERS")]
    pub no_interpreters: bool,
    /// Keep functions on the interpreter (tier 0): do not build their own component (tier 1) in the background.
    #[arg(long, global = true, env = "LAMBDA_NO_TIER_UP")]
    pub no_tier_up: bool,
    /// The largest source accepted, in bytes.
    #[arg(skip = 1usize << 20)]
    pub max_source_bytes: usize,
    /// Seals built components in the artifact stores.
    #[arg(skip)]
    pub integrity_key: IntegrityKey,
}

impl ToolchainConfig {
    /// The limits of a build, its wall time the whole timeout.
    pub fn build_limits(&self) -> Limits {
        Limits {
            wall: self.build_timeout,
            cpu: self.build_cpu,
            memory_bytes: self.build_memory_bytes,
            tasks: self.build_max_tasks,
            output_bytes: self.build_output_bytes,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            !self.build_timeout.is_zero(),
            "build_timeout must be positive"
        );
        ensure!(!self.build_cpu.is_zero(), "build_cpu must be positive");
        ensure!(
            self.build_memory_bytes >= 64 << 20,
            "build_memory_bytes must be at least 64 MiB (got {})",
            self.build_memory_bytes
        );
        ensure!(
            self.build_max_tasks >= 8,
            "build_max_tasks must be at least 8 (got {})",
            self.build_max_tasks
        );
        ensure!(
            self.build_output_bytes >= 1 << 20,
            "build_output_bytes must be at least 1 MiB (got {})",
            self.build_output_bytes
        );
        ensure!(
            self.max_source_bytes > 0,
            "max_source_bytes must be positive"
        );
        Ok(())
    }
}

/// A size given in MiB, as bytes.
fn mebibytes(text: &str) -> Result<u64, String> {
    let mib: u64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of MiB"))?;
    mib.checked_mul(1 << 20)
        .ok_or_else(|| format!("{mib} MiB is too large"))
}

/// A size given in KiB, as bytes.
fn kibibytes(text: &str) -> Result<usize, String> {
    let kib: usize = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of KiB"))?;
    kib.checked_mul(1 << 10)
        .ok_or_else(|| format!("{kib} KiB is too large"))
}

/// Whether the pool resets memories with Linux's PAGEMAP_SCAN.
#[derive(
    clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
pub enum PagemapScan {
    /// When the kernel has it and no swap is on.
    Auto,
    On,
    Off,
}

/// A duration given in milliseconds.
fn milliseconds(text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("`{text}` is not a whole number of milliseconds"))
}

/// A positive duration given in seconds.
fn seconds(text: &str) -> Result<Duration, String> {
    match text.parse() {
        Ok(0) => Err("must be at least 1 second".to_owned()),
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => Err(format!("`{text}` is not a whole number of seconds")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn defaults_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        Settings::new(dir.path(), "components").validate().unwrap();
    }

    #[test]
    fn the_defaults_come_from_the_definitions_and_paths_from_the_data_directory() {
        let settings = Settings::new("/srv/lambda", "components");
        assert_eq!(settings.runtime.memory_limit_bytes, 256 << 20);
        assert_eq!(settings.runtime.max_timeout, Duration::from_secs(300));
        assert_eq!(settings.runtime.default_timeout(), Duration::from_secs(30));
        assert_eq!(settings.server.session_quota_bytes, 8 << 20);
        assert_eq!(settings.server.rate_limits.builds_per_subject, 10);
        assert_eq!(settings.toolchain.build_timeout, Duration::from_secs(300));
        assert!(settings.runtime.pooling());
        assert_eq!(
            settings.toolchain.rust_target_dir,
            Path::new("/srv/lambda/rust-target")
        );
        assert_eq!(
            settings.runtime.aot_cache_dir.as_deref(),
            Some(Path::new("/srv/lambda/aot"))
        );
        assert_eq!(
            settings.toolchain.artifacts_dir,
            Path::new("/srv/lambda/artifacts")
        );
    }

    #[test]
    fn relative_paths_become_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::new(dir.path(), "components");
        settings.toolchain.rust_target_dir = "relative-target".into();
        settings.validate().unwrap();
        assert!(settings.toolchain.rust_target_dir.is_absolute());
        assert!(settings.components_dir.is_absolute());
    }

    /// The bug: the 30 s default deadline was a constant no setting
    /// reached, so a maximum under it stopped the host from starting.
    #[test]
    fn a_maximum_deadline_under_the_default_lowers_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::new(dir.path(), "components");
        settings.runtime.max_timeout = Duration::from_secs(10);
        settings.validate().unwrap();
        assert_eq!(settings.runtime.default_timeout(), Duration::from_secs(10));
    }

    #[test]
    fn an_explicit_default_deadline_above_the_maximum_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::new(dir.path(), "components");
        settings.runtime.default_timeout = Some(Duration::from_secs(600));
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("exceeds max_timeout"), "{err}");
    }

    #[test]
    fn sizes_and_durations_in_their_units() {
        assert_eq!(mebibytes("3"), Ok(3 << 20));
        assert!(mebibytes("-1").is_err());
        assert!(mebibytes(&u64::MAX.to_string()).is_err());
        assert_eq!(milliseconds("1500"), Ok(Duration::from_millis(1500)));
        assert!(seconds("0").is_err());
        assert_eq!(seconds("2"), Ok(Duration::from_secs(2)));
    }
}
