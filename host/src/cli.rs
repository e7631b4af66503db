//! The command line: `invoke`, `build`, `build-components`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use lambda_host::auth::JwtKeys;
use lambda_host::catalog;
use lambda_host::config::{Secret, Settings};
use lambda_host::language::{Language, LanguageTitle};
use lambda_host::runtime::{self, Invocation, Runtime};
use lambda_host::sandbox::Isolation;
use lambda_host::server::{Application, shutdown_signal};
use lambda_host::toolchain::{BuildError, BuildOptions, OptimizationLevel, Toolchains};

#[derive(Parser, Debug)]
#[command(
    name = "lambda-host",
    version,
    about = "Runs JavaScript, Python and Rust functions as WASI components"
)]
pub struct Args {
    /// A TOML file of settings (keys as the LAMBDA_* variables, lower case, without the prefix).
    #[arg(long, global = true, env = "LAMBDA_CONFIG")]
    config: Option<PathBuf>,
    /// Where the host keeps its state: AOT cache, build artifacts.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_DATA_DIR",
        default_value = ".lambda"
    )]
    data_dir: PathBuf,
    /// The predefined functions, one folder per Language-Title.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_COMPONENTS_DIR",
        default_value = "components"
    )]
    components_dir: PathBuf,
    /// Where the dependencies every Rust function links are built once, read-only to builds [default: <data-dir>/rust-target].
    #[arg(long, global = true, env = "LAMBDA_RUST_TARGET_DIR")]
    rust_target_dir: Option<PathBuf>,
    /// The build drivers and their pinned tools (js/node_modules, python/.venv).
    #[arg(
        long,
        global = true,
        env = "LAMBDA_TOOLCHAINS_DIR",
        default_value = "toolchains"
    )]
    toolchains_dir: PathBuf,
    /// Turn the pooling instance allocator off.
    #[arg(long, global = true, env = "LAMBDA_NO_POOLING")]
    no_pooling: bool,
    /// The memory cap of one execution, in MiB [default: 256].
    #[arg(long, global = true, env = "LAMBDA_MEMORY_LIMIT_MB")]
    memory_limit_mb: Option<u64>,
    /// The loaded functions kept in memory, by the summed size of their components, in MiB [default: 1024].
    #[arg(long, global = true, env = "LAMBDA_LOADED_COMPONENTS_MB")]
    loaded_components_mb: Option<u64>,
    /// The longest a build may take, counted from the request (the wait for a build slot included), in seconds [default: 300].
    #[arg(long, global = true, env = "LAMBDA_BUILD_TIMEOUT_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    build_timeout_secs: Option<u64>,
    /// The resident memory of a build's whole process tree, in MiB [default: 2048].
    #[arg(long, global = true, env = "LAMBDA_BUILD_MEMORY_MB")]
    build_memory_mb: Option<u64>,
    /// The CPU time of a build's whole process tree, in seconds [default: 600].
    #[arg(long, global = true, env = "LAMBDA_BUILD_CPU_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    build_cpu_secs: Option<u64>,
    /// The processes and threads a build may have at once [default: 128].
    #[arg(long, global = true, env = "LAMBDA_BUILD_MAX_TASKS")]
    build_max_tasks: Option<u32>,
    /// What a build may write (its scratch directory, and so its component), in MiB [default: 256].
    #[arg(long, global = true, env = "LAMBDA_BUILD_OUTPUT_MB")]
    build_output_mb: Option<u64>,
    /// `required`: every toolchain runs in the OS sandbox, and builds are refused where the kernel cannot confine them; `off`: unconfined, only for a machine whose every user is trusted.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_BUILD_SANDBOX",
        default_value = "required"
    )]
    build_sandbox: Isolation,
    /// How the log on stderr is written: `text` for people, `json` (one object per line) for collectors.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a function once and prints its JSON result.
    Invoke {
        /// A predefined function's Language-Title, or the path of a component (.wasm).
        target: String,
        /// The params object, as JSON.
        #[arg(long, default_value = "{}")]
        params: String,
        /// The context object, as JSON.
        #[arg(long, default_value = "{}")]
        context: String,
        /// The deadline, in milliseconds [default: 30000].
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Run it this many times, each in a fresh instance, and print timings to stderr.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
    },
    /// Builds a source file into a component with its language's toolchain.
    Build {
        /// nodejs (or js), python or rust.
        #[arg(long)]
        language: Language,
        /// The source file.
        source: PathBuf,
        /// Where to write the component [default: the source's name with .wasm].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Build without optimisation.
        #[arg(long)]
        debug: bool,
    },
    /// Serves the REST API (embedded stores: in-process sessions, SQLite in the data directory).
    Serve {
        /// The address to listen on.
        #[arg(long, env = "LAMBDA_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Allowed CORS origins, comma-separated; `*` allows any.
        #[arg(
            long,
            env = "LAMBDA_CORS_ORIGINS",
            default_value = "*",
            value_delimiter = ','
        )]
        cors_origins: Vec<String>,
        /// Execute requests per minute per token subject.
        #[arg(long, env = "LAMBDA_RATE_LIMIT_EXECUTE", default_value_t = 100)]
        rate_limit_execute: u32,
        /// Execute requests per minute per client IP without a valid token.
        #[arg(
            long,
            env = "LAMBDA_RATE_LIMIT_EXECUTE_ANONYMOUS",
            default_value_t = 10
        )]
        rate_limit_execute_anonymous: u32,
        /// Function listing requests per minute per token subject.
        #[arg(long, env = "LAMBDA_RATE_LIMIT_FUNCTIONS", default_value_t = 60)]
        rate_limit_functions: u32,
        /// Initialize requests per minute per token subject.
        #[arg(long, env = "LAMBDA_RATE_LIMIT_INITIALIZE", default_value_t = 60)]
        rate_limit_initialize: u32,
        /// Initialize requests with a source (builds) per minute per token subject.
        #[arg(long, env = "LAMBDA_RATE_LIMIT_BUILDS", default_value_t = 10)]
        rate_limit_builds: u32,
        /// The largest session context, in bytes of JSON (beyond: 413).
        #[arg(long, env = "LAMBDA_MAX_CONTEXT_BYTES", default_value_t = 64 << 10)]
        max_context_bytes: usize,
        /// What one token subject's live sessions may weigh, in MiB (beyond: 429).
        #[arg(long, env = "LAMBDA_SESSION_QUOTA_MB", default_value_t = 8)]
        session_quota_mb: u64,
        /// The largest request body, in bytes.
        #[arg(long, env = "LAMBDA_BODY_LIMIT_BYTES", default_value_t = 2 << 20)]
        body_limit_bytes: usize,
        /// How long a session lives, e.g. `1h`.
        #[arg(long, env = "LAMBDA_SESSION_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
        session_ttl: Duration,
        /// How long a result stays cached unless X-Cache-Control says, e.g. `1h`.
        #[arg(long, env = "LAMBDA_CACHE_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
        cache_ttl: Duration,
        /// The longest a result may stay cached, whatever X-Cache-Control asks, e.g. `1d`.
        #[arg(long, env = "LAMBDA_CACHE_MAX_TTL", default_value = "1d", value_parser = humantime::parse_duration)]
        cache_max_ttl: Duration,
        /// How long an execution waits for a free instance slot before 503 OVERLOADED, e.g. `5s`.
        #[arg(long, env = "LAMBDA_SLOT_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
        slot_wait: Duration,
        /// The fraction of the instance slots one token subject may hold at once (beyond: 429).
        #[arg(long, env = "LAMBDA_CALLER_SLOT_SHARE", default_value_t = 0.25)]
        caller_slot_share: f64,
        /// The longest deadline a session may ask for, in milliseconds.
        #[arg(long, env = "LAMBDA_MAX_TIMEOUT_MS", default_value_t = 300_000)]
        max_timeout_ms: u64,
        /// Log records that may wait for the database (while it is down), at most.
        #[arg(long, env = "LAMBDA_LOG_QUEUE_CAPACITY", default_value_t = 100_000)]
        log_queue_capacity: usize,
        /// How long request and error logs, ended sessions' records, and built components and native code no function uses are kept, e.g. `30d`.
        #[arg(long, env = "LAMBDA_LOG_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
        log_retention: Duration,
        /// Do not apply database migrations at start (run `lambda-host migrate` instead).
        #[arg(long, env = "LAMBDA_SKIP_MIGRATIONS")]
        skip_migrations: bool,
    },
    /// Applies the database migrations (PostgreSQL with LAMBDA_DATABASE_URL, else SQLite in the data directory).
    Migrate,
    /// Prints a token signed with the host's secret (LAMBDA_JWT_SECRET or <data-dir>/jwt-secret).
    Token {
        /// The subject (user id).
        #[arg(long)]
        sub: String,
        /// Space-separated scopes: execute:all, execute:<language>, read:functions.
        #[arg(long, default_value = "execute:all read:functions")]
        scope: String,
        /// How long the token is valid, e.g. `1h`, `30d`.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Prints every setting: flag, environment variable, config-file key and default (Markdown).
    Settings,
    /// Builds every predefined function and writes <out-dir>/<language-title>.wasm.
    BuildComponents {
        #[arg(long, default_value = "target/components")]
        out_dir: PathBuf,
    },
}

/// The shape of the host's own log lines.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Args {
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    /// The log level when LAMBDA_LOG does not say: the server reports what
    /// it does; one-shot commands keep stderr for results and errors.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Serve { .. } => "info",
            _ => "warn",
        }
    }
}

pub async fn run(args: Args) -> ExitCode {
    match dispatch(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(args: Args) -> anyhow::Result<ExitCode> {
    // The only command that needs no settings (and creates no directories).
    if let Command::Settings = args.command {
        print!("{}", crate::reference::markdown());
        return Ok(ExitCode::SUCCESS);
    }
    let mut settings = settings(&args)?;
    match args.command {
        Command::Serve {
            listen,
            cors_origins,
            rate_limit_execute,
            rate_limit_execute_anonymous,
            rate_limit_functions,
            rate_limit_initialize,
            rate_limit_builds,
            max_context_bytes,
            session_quota_mb,
            body_limit_bytes,
            session_ttl,
            cache_ttl,
            cache_max_ttl,
            slot_wait,
            caller_slot_share,
            max_timeout_ms,
            skip_migrations,
            log_queue_capacity,
            log_retention,
        } => {
            settings.stores.skip_migrations = skip_migrations;
            settings.server.log_queue_capacity = log_queue_capacity;
            settings.server.log_retention = log_retention;
            let server = &mut settings.server;
            server.listen = listen;
            server.cors_origins = cors_origins;
            server.rate_limits.execute_per_subject = rate_limit_execute;
            server.rate_limits.execute_per_anonymous_ip = rate_limit_execute_anonymous;
            server.rate_limits.functions_per_subject = rate_limit_functions;
            server.rate_limits.initialize_per_subject = rate_limit_initialize;
            server.rate_limits.builds_per_subject = rate_limit_builds;
            server.max_context_bytes = max_context_bytes;
            server.session_quota_bytes = session_quota_mb << 20;
            server.body_limit_bytes = body_limit_bytes;
            server.session_ttl = session_ttl;
            server.cache_ttl = cache_ttl;
            server.cache_max_ttl = cache_max_ttl;
            settings.runtime.slot_wait = slot_wait;
            settings.runtime.caller_slot_share = caller_slot_share;
            settings.runtime.max_timeout = Duration::from_millis(max_timeout_ms);
            let application = Application::build(settings).await?;
            tracing::info!("listening on http://{}", application.local_addr());
            application.run_until_stopped(shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let database = lambda_host::server::migrate(&settings).await?;
            eprintln!("{database} migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { sub, scope, ttl } => {
            let secret = std::env::var("LAMBDA_JWT_SECRET").ok();
            let keys = JwtKeys::load(secret.as_deref(), &settings.data_dir)?;
            let scopes: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
            println!("{}", keys.mint(&sub, &scopes, ttl)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Invoke {
            target,
            params,
            context,
            timeout_ms,
            repeat,
        } => {
            let params: Value =
                serde_json::from_str(&params).context("--params is not valid JSON")?;
            if !params.is_object() {
                bail!("--params must be a JSON object");
            }
            let context: Value =
                serde_json::from_str(&context).context("--context is not valid JSON")?;
            invoke(
                &settings,
                &target,
                params,
                context,
                timeout_ms.map(Duration::from_millis),
                repeat,
            )
            .await
        }
        Command::Build {
            language,
            source,
            output,
            debug,
        } => {
            let output = output.unwrap_or_else(|| source.with_extension("wasm"));
            let options = BuildOptions {
                optimization_level: if debug {
                    OptimizationLevel::Debug
                } else {
                    OptimizationLevel::Release
                },
            };
            let code = std::fs::read_to_string(&source)
                .with_context(|| format!("cannot read {}", source.display()))?;
            let toolchains = Toolchains::detect(&settings.toolchain).await?;
            let started = Instant::now();
            let Some(artifact) = build_or_report(&toolchains, language, &code, &options).await?
            else {
                return Ok(ExitCode::FAILURE);
            };
            write(&output, &artifact.component)?;
            eprintln!(
                "{} {} ({} bytes, {}) in {:.2} s",
                if artifact.built { "built" } else { "reused" },
                output.display(),
                artifact.component.len(),
                artifact.digest.short(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Settings => unreachable!("answered before the settings are read"),
        Command::BuildComponents { out_dir } => {
            let functions = catalog::load_all(&settings.components_dir)?;
            let toolchains = Toolchains::detect(&settings.toolchain).await?;
            let mut failed = false;
            for function in functions {
                let options = BuildOptions::default();
                let language = function.language_title.language();
                match build_or_report(&toolchains, language, &function.source, &options).await? {
                    Some(artifact) => {
                        let path = out_dir.join(format!("{}.wasm", function.language_title));
                        write(&path, &artifact.component)?;
                        eprintln!("{} ({} bytes)", path.display(), artifact.component.len());
                    }
                    None => failed = true,
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    let mut settings = Settings::new(&args.data_dir, &args.components_dir);
    if let Some(dir) = &args.rust_target_dir {
        settings.toolchain.rust_target_dir = dir.clone();
    }
    settings.toolchain.toolchains_dir = args.toolchains_dir.clone();
    // Secrets (URLs carry passwords) come from the environment only, never
    // from flags that show in `ps`. The JWT secret is read by every
    // command: what a build stores is sealed with a key derived from it.
    settings.server.jwt_secret = std::env::var("LAMBDA_JWT_SECRET").ok().map(Secret::new);
    settings.stores.redis_url = std::env::var("LAMBDA_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .map(Secret::new);
    settings.stores.database_url = std::env::var("LAMBDA_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .map(Secret::new);
    settings.runtime.pooling = !args.no_pooling;
    if let Some(mb) = args.memory_limit_mb {
        settings.runtime.memory_limit_bytes = mb.saturating_mul(1 << 20);
    }
    if let Some(mb) = args.loaded_components_mb {
        settings.runtime.loaded_components_max_bytes = mb.saturating_mul(1 << 20);
    }
    let toolchain = &mut settings.toolchain;
    if let Some(secs) = args.build_timeout_secs {
        toolchain.build_timeout = Duration::from_secs(secs);
    }
    if let Some(mb) = args.build_memory_mb {
        toolchain.build_memory_bytes = mb.saturating_mul(1 << 20);
    }
    if let Some(secs) = args.build_cpu_secs {
        toolchain.build_cpu = Duration::from_secs(secs);
    }
    if let Some(tasks) = args.build_max_tasks {
        toolchain.build_max_tasks = tasks;
    }
    if let Some(mb) = args.build_output_mb {
        toolchain.build_output_bytes = mb.saturating_mul(1 << 20);
    }
    toolchain.isolation = args.build_sandbox;
    settings.validate()?;
    Ok(settings)
}

async fn invoke(
    settings: &Settings,
    target: &str,
    params: Value,
    context: Value,
    timeout: Option<Duration>,
    repeat: u32,
) -> anyhow::Result<ExitCode> {
    let (language_title, component) = if target.ends_with(".wasm") {
        let bytes = std::fs::read(target).with_context(|| format!("cannot read {target}"))?;
        let stem = Path::new(target)
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy();
        (stem.into_owned(), Arc::<[u8]>::from(bytes))
    } else {
        let language_title = LanguageTitle::parse(target)?;
        let Some(function) = catalog::find(&settings.components_dir, &language_title)? else {
            bail!(
                "no predefined function {language_title} in {}",
                settings.components_dir.display()
            );
        };
        let toolchains = Toolchains::detect(&settings.toolchain).await?;
        let language = language_title.language();
        let Some(artifact) = build_or_report(
            &toolchains,
            language,
            &function.source,
            &BuildOptions::default(),
        )
        .await?
        else {
            return Ok(ExitCode::FAILURE);
        };
        (language_title.to_string(), artifact.component)
    };

    let runtime = Runtime::new(&settings.runtime)?;
    let load_started = Instant::now();
    let function = match runtime.load(component).await {
        Ok(function) => function,
        Err(e) => {
            eprintln!("{}", runtime_error_body(&e));
            return Ok(ExitCode::FAILURE);
        }
    };
    let load_time = load_started.elapsed();
    let invocation = Invocation {
        request_id: uuid::Uuid::new_v4().to_string(),
        language_title,
        params,
        context,
        caller: "cli".to_owned(),
    };
    let mut timings = Vec::with_capacity(repeat as usize);
    let mut outcome = None;
    for _ in 0..repeat {
        let started = Instant::now();
        let result = runtime.invoke(&function, &invocation, timeout).await;
        timings.push(started.elapsed());
        let failed = result.is_err();
        outcome = Some(result);
        if failed {
            break;
        }
    }
    let outcome = outcome.expect("repeat is at least 1");
    if repeat > 1 {
        report_timings(load_time, &runtime, &mut timings);
    }
    match outcome {
        Ok(execution) => {
            for line in &execution.logs {
                eprintln!("[{}] {}", line.level, line.message);
            }
            for (stream, text) in [("stdout", &execution.stdout), ("stderr", &execution.stderr)] {
                if !text.is_empty() {
                    eprintln!("[guest {stream}] {}", text.trim_end());
                }
            }
            println!("{}", execution.result);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}", runtime_error_body(&e));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Prints how long loading and each execution (instantiate + call) took.
fn report_timings(load_time: Duration, runtime: &Runtime, timings: &mut [Duration]) {
    let first = timings[0];
    timings.sort_unstable();
    let percentile = |p: f64| timings[((timings.len() - 1) as f64 * p).round() as usize];
    let stats = runtime.cache_stats();
    eprintln!(
        "load {:.1} ms ({}), {} executions: first {:.0} us, median {:.0} us, p99 {:.0} us, max {:.0} us",
        load_time.as_secs_f64() * 1e3,
        if stats.compiles > 0 {
            "compiled"
        } else {
            "from the AOT cache"
        },
        timings.len(),
        first.as_secs_f64() * 1e6,
        percentile(0.5).as_secs_f64() * 1e6,
        percentile(0.99).as_secs_f64() * 1e6,
        timings[timings.len() - 1].as_secs_f64() * 1e6,
    );
}

/// Builds, printing a compile error as the API's error body on failure.
async fn build_or_report(
    toolchains: &Toolchains,
    language: Language,
    source: &str,
    options: &BuildOptions,
) -> anyhow::Result<Option<lambda_host::toolchain::Artifact>> {
    match toolchains.build(language, source, options).await {
        Ok(artifact) => Ok(Some(artifact)),
        Err(BuildError::Compile(e)) => {
            let body = json!({ "error": {
                "code": "COMPILE_ERROR",
                "message": e.message,
                "details": { "diagnostics": e.diagnostics },
            }});
            eprintln!("{body:#}");
            Ok(None)
        }
        Err(e @ BuildError::LimitExceeded { limit, .. }) => {
            let body = json!({ "error": {
                "code": "COMPILE_ERROR",
                "message": e.to_string(),
                "details": { "reason": "build_limit", "limit": limit },
            }});
            eprintln!("{body:#}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The structured error, in the shape of the API's error bodies.
fn runtime_error_body(error: &runtime::Error) -> Value {
    let (code, details) = match error {
        runtime::Error::Timeout(_) => ("TIMEOUT", json!({})),
        runtime::Error::Overloaded { .. } => ("OVERLOADED", json!({})),
        runtime::Error::CallerAtShare { .. } => ("RATE_LIMITED", json!({})),
        runtime::Error::Guest(guest) => ("RUNTIME_ERROR", json!(guest)),
        runtime::Error::OutOfMemory { limit_bytes } => (
            "RUNTIME_ERROR",
            json!({ "reason": "out_of_memory", "limit_bytes": limit_bytes }),
        ),
        runtime::Error::Trap { .. } | runtime::Error::InvalidResult(_) => {
            ("RUNTIME_ERROR", json!({}))
        }
        runtime::Error::InvalidComponent(_) => ("INVALID_REQUEST", json!({})),
        runtime::Error::Internal(_) => ("INTERNAL_ERROR", json!({})),
    };
    json!({ "error": { "code": code, "message": error.to_string(), "details": details } })
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
