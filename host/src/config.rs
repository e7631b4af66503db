//! Typed settings. Every part of the host is built from these, and they are
//! validated before anything starts, so a bad value fails at start with a
//! message instead of at the first request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::integrity::IntegrityKey;
use crate::sandbox::{Isolation, Limits};

/// Settings of the whole host.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the host keeps its state: the AOT cache, build artifacts,
    /// build working directories.
    pub data_dir: PathBuf,
    /// The predefined functions: one folder per `Language-Title`.
    pub components_dir: PathBuf,
    pub runtime: RuntimeConfig,
    pub toolchain: ToolchainConfig,
    pub server: ServerConfig,
    pub stores: StoreConfig,
}

/// Which backends hold the host's state. Neither URL set: the embedded
/// defaults (in process + SQLite in the data directory).
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Sessions, result cache, rate limits: `redis://host:port`.
    pub redis_url: Option<Secret>,
    /// Registry, artifacts, session records, logs: `postgres://...`.
    pub database_url: Option<Secret>,
    /// Skip applying migrations at start (`lambda-host migrate` does it).
    pub skip_migrations: bool,
    /// The prefix of every Redis key, so several deployments (or test
    /// runs) can share one Redis.
    pub redis_prefix: String,
}

impl Settings {
    /// Defaults for a data directory and a components directory; the caller
    /// overrides single fields (from the CLI or the environment) afterwards.
    pub fn new(data_dir: impl Into<PathBuf>, components_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            runtime: RuntimeConfig::defaults_in(&data_dir),
            toolchain: ToolchainConfig::defaults_in(&data_dir),
            server: ServerConfig::default(),
            stores: StoreConfig::default(),
            components_dir: components_dir.into(),
            data_dir,
        }
    }

    /// Checks every value, creates the directories the host writes to and
    /// makes every path absolute (child processes such as cargo run in
    /// other directories, where a relative path would mean something else).
    pub fn validate(&mut self) -> anyhow::Result<()> {
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

/// Settings of the wasmtime runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Use the pooling instance allocator: instance slots, memories and
    /// stacks are reserved once and reused, which makes instantiation a
    /// matter of microseconds. Off, every instance maps fresh memory.
    pub pooling: bool,
    /// How many instances may run at once: the size of the pool and of the
    /// semaphore in front of instantiation.
    pub max_instances: u32,
    /// The most linear memory one execution may hold, summed over all the
    /// memories of its component.
    pub memory_limit_bytes: u64,
    /// How long an execution may run when the caller does not say.
    pub default_timeout: Duration,
    /// The longest deadline a caller may ask for.
    pub max_timeout: Duration,
    /// How long an execution waits for a free instance slot before the
    /// host answers that it is overloaded.
    pub slot_wait: Duration,
    /// The fraction of the slots one caller may hold at once (at least one).
    pub caller_slot_share: f64,
    /// The period of the engine's epoch ticker: the granularity of deadlines
    /// and how often a running guest yields to the async executor.
    pub epoch_tick: Duration,
    /// How many bytes of stdout, of stderr and of log lines an execution may
    /// leave; the rest is cut.
    pub output_limit_bytes: usize,
    /// The loaded functions kept in memory, by the summed size of their
    /// components; the least recently used beyond it are dropped (and
    /// loaded again from the AOT cache when asked for).
    pub loaded_components_max_bytes: u64,
    /// Where compiled components are serialized ahead of time, keyed by
    /// component digest and engine fingerprint. `None` turns the AOT cache off.
    pub aot_cache_dir: Option<PathBuf>,
    /// Seals the AOT cache's entries: native code is loaded only if this
    /// host (or a replica with the same secret) wrote it.
    pub integrity_key: IntegrityKey,
}

impl RuntimeConfig {
    fn defaults_in(data_dir: &Path) -> Self {
        Self {
            pooling: true,
            max_instances: 64,
            memory_limit_bytes: 256 << 20,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            slot_wait: Duration::from_secs(5),
            caller_slot_share: 0.25,
            epoch_tick: Duration::from_millis(10),
            output_limit_bytes: 64 << 10,
            loaded_components_max_bytes: 1 << 30,
            aot_cache_dir: Some(data_dir.join("aot")),
            integrity_key: IntegrityKey::default(),
        }
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
            !self.default_timeout.is_zero(),
            "default_timeout must be positive"
        );
        ensure!(
            self.default_timeout <= self.max_timeout,
            "default_timeout ({:?}) exceeds max_timeout ({:?})",
            self.default_timeout,
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
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            database_url: None,
            skip_migrations: false,
            redis_prefix: "lambda:".to_owned(),
        }
    }
}

/// Settings of the REST API.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where `serve` listens.
    pub listen: std::net::SocketAddr,
    /// The HS256 secret; `None` uses (and on first start creates)
    /// `<data-dir>/jwt-secret`.
    pub jwt_secret: Option<Secret>,
    /// Origins allowed by CORS; `*` allows any.
    pub cors_origins: Vec<String>,
    /// The largest request body accepted; larger ones get 413.
    pub body_limit_bytes: usize,
    /// How long an initialized session lives.
    pub session_ttl: Duration,
    /// The largest session context, in bytes of JSON.
    pub max_context_bytes: usize,
    /// How long a result stays cached unless `X-Cache-Control: max-age` says.
    pub cache_ttl: Duration,
    /// The longest a result stays cached, whatever `max-age` asks.
    pub cache_max_ttl: Duration,
    /// The live sessions kept in process weigh at most this, in bytes.
    pub sessions_max_bytes: u64,
    /// One token subject's live sessions weigh at most this, in bytes.
    pub session_quota_bytes: u64,
    /// At most this many bytes of results are cached in process.
    pub cache_max_bytes: u64,
    pub rate_limits: RateLimits,
    /// Log records waiting for the database, at most.
    pub log_queue_capacity: usize,
    /// Request and error logs, the records of ended sessions, and built
    /// components and native code no registered function uses are kept
    /// this long, then swept.
    pub log_retention: Duration,
    /// How often the sweep runs.
    pub log_sweep_interval: Duration,
}

/// Requests per minute.
#[derive(Clone, Debug)]
pub struct RateLimits {
    /// `/api/v1/execute` per token subject.
    pub execute_per_subject: u32,
    /// `/api/v1/execute` per client IP, without a valid token.
    pub execute_per_anonymous_ip: u32,
    /// `/api/v1/functions` per token subject.
    pub functions_per_subject: u32,
    /// `/api/v1/initialize` per token subject.
    pub initialize_per_subject: u32,
    /// `/api/v1/initialize` with a source (a build) per token subject.
    pub builds_per_subject: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            jwt_secret: None,
            cors_origins: vec!["*".to_owned()],
            body_limit_bytes: 2 << 20,
            session_ttl: Duration::from_secs(3600),
            max_context_bytes: 64 << 10,
            cache_ttl: Duration::from_secs(3600),
            cache_max_ttl: Duration::from_secs(86_400),
            sessions_max_bytes: 256 << 20,
            session_quota_bytes: 8 << 20,
            cache_max_bytes: 64 << 20,
            rate_limits: RateLimits {
                execute_per_subject: 100,
                execute_per_anonymous_ip: 10,
                functions_per_subject: 60,
                initialize_per_subject: 60,
                builds_per_subject: 10,
            },
            // At ~300 bytes a record, 30 MB: a 30-second database outage
            // at 1500 executions per second (two records each).
            log_queue_capacity: 100_000,
            log_retention: Duration::from_secs(30 * 24 * 3600),
            log_sweep_interval: Duration::from_secs(3600),
        }
    }
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
#[derive(Clone, Debug)]
pub struct ToolchainConfig {
    /// Built components, content addressed: `<build digest>.wasm`.
    pub artifacts_dir: PathBuf,
    /// Parent of the empty directories each build runs in.
    pub work_dir: PathBuf,
    /// The cargo target directory where the dependencies every Rust
    /// function uses (serde, serde_json, wit-bindgen) are built once, by a
    /// trusted run of the template; user builds read it, never write it.
    pub rust_target_dir: PathBuf,
    /// What trusted preparation runs leave for every build of a toolchain
    /// (the JavaScript toolchain's compiled-code cache); read-only to
    /// builds of user source.
    pub cache_dir: PathBuf,
    /// Our build drivers and their pinned tools: `js/` (node_modules),
    /// `python/` (.venv).
    pub toolchains_dir: PathBuf,
    /// The longest a build may take, counted from the request, the wait
    /// for a build slot included.
    pub build_timeout: Duration,
    /// The resident memory of a build's whole process tree.
    pub build_memory_bytes: u64,
    /// The CPU time of a build's whole process tree.
    pub build_cpu: Duration,
    /// The processes and threads a build may have at once.
    pub build_max_tasks: u32,
    /// What a build may write: its scratch directory in all, and so the
    /// largest component.
    pub build_output_bytes: u64,
    /// Whether toolchains run confined (see [`crate::sandbox`]).
    pub isolation: Isolation,
    /// The binary that runs the sandbox's supervisor (`sandbox-exec`): the
    /// host's own, unless a library user (a test binary) says otherwise.
    pub sandbox_supervisor: PathBuf,
    /// The Rust source guard, the fast first line in front of the sandbox.
    /// Only tests turn it off, to show that the sandbox holds alone.
    pub rust_source_guard: bool,
    /// The largest source accepted, in bytes.
    pub max_source_bytes: usize,
    /// Seals built components in the artifact stores.
    pub integrity_key: IntegrityKey,
}

impl ToolchainConfig {
    fn defaults_in(data_dir: &Path) -> Self {
        Self {
            artifacts_dir: data_dir.join("artifacts"),
            work_dir: data_dir.join("builds"),
            rust_target_dir: data_dir.join("rust-target"),
            cache_dir: data_dir.join("toolchain-cache"),
            toolchains_dir: PathBuf::from("toolchains"),
            build_timeout: Duration::from_secs(300),
            build_memory_bytes: 2048 << 20,
            // Two cores busy for the whole default timeout.
            build_cpu: Duration::from_secs(600),
            build_max_tasks: 128,
            build_output_bytes: 256 << 20,
            isolation: Isolation::Required,
            sandbox_supervisor: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from("lambda-host")),
            rust_source_guard: true,
            max_source_bytes: 1 << 20,
            integrity_key: IntegrityKey::default(),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        Settings::new(dir.path(), "components").validate().unwrap();
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

    #[test]
    fn a_default_timeout_above_the_maximum_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::new(dir.path(), "components");
        settings.runtime.default_timeout = Duration::from_secs(600);
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("exceeds max_timeout"), "{err}");
    }
}

/// The keys a config file may set: each is the `LAMBDA_<KEY>` environment
/// variable (and the flag) of the same name.
pub const FILE_KEYS: &[&str] = &[
    "data_dir",
    "components_dir",
    "toolchains_dir",
    "rust_target_dir",
    "memory_limit_mb",
    "loaded_components_mb",
    "no_pooling",
    "build_timeout_secs",
    "build_memory_mb",
    "build_cpu_secs",
    "build_max_tasks",
    "build_output_mb",
    "build_sandbox",
    "listen",
    "cors_origins",
    "rate_limit_execute",
    "rate_limit_execute_anonymous",
    "rate_limit_functions",
    "rate_limit_initialize",
    "rate_limit_builds",
    "max_context_bytes",
    "session_quota_mb",
    "body_limit_bytes",
    "session_ttl",
    "cache_ttl",
    "cache_max_ttl",
    "slot_wait",
    "caller_slot_share",
    "max_timeout_ms",
    "skip_migrations",
    "log_queue_capacity",
    "log_retention",
    "redis_url",
    "database_url",
    "jwt_secret",
    "log",
    "log_format",
];

/// Reads a TOML config file (`key = value`, keys from [`FILE_KEYS`]) into
/// `LAMBDA_*` variables, the ones the environment does not set already:
/// flags beat the environment, the environment beats the file, the file
/// beats the defaults. Unknown keys and values that are not scalars (or
/// lists, joined with commas) are refused.
pub fn file_settings(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut settings = Vec::new();
    for (key, value) in table {
        ensure!(
            FILE_KEYS.contains(&key.as_str()),
            "unknown setting `{key}` in {}; the settings are: {}",
            path.display(),
            FILE_KEYS.join(", ")
        );
        let scalar = |value: &toml::Value| -> anyhow::Result<String> {
            Ok(match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => anyhow::bail!("`{key}` must be a string, number or boolean, not {other}"),
            })
        };
        let value = match &value {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(","),
            other => scalar(other)?,
        };
        settings.push((format!("LAMBDA_{}", key.to_uppercase()), value));
    }
    Ok(settings)
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[test]
    fn a_config_file_names_lambda_variables_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lambda.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\nrate_limit_execute = 500\ncors_origins = [\"https://a.example\", \"https://b.example\"]\nno_pooling = true\n",
        )
        .unwrap();
        let mut settings = file_settings(&path).unwrap();
        settings.sort();
        assert_eq!(
            settings,
            [
                (
                    "LAMBDA_CORS_ORIGINS".into(),
                    "https://a.example,https://b.example".into()
                ),
                ("LAMBDA_LISTEN".into(), "0.0.0.0:9000".into()),
                ("LAMBDA_NO_POOLING".into(), "true".into()),
                ("LAMBDA_RATE_LIMIT_EXECUTE".into(), "500".into()),
            ]
        );
        std::fs::write(&path, "redis = \"redis://x\"\n").unwrap();
        let error = file_settings(&path).unwrap_err().to_string();
        assert!(error.contains("unknown setting `redis`"), "{error}");
    }
}
