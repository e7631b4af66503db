//! The command line: `invoke`, `build`, `build-components`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::Value;

use lambda_host::api::error::ApiError;
use lambda_host::auth::JwtKeys;
use lambda_host::catalog;
use lambda_host::config::{Secret, Settings, reference};
use lambda_host::language::{Language, LanguageTitle};
use lambda_host::runtime::{Invocation, Runtime, Script, ScriptMode};
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
    /// The log filter (tracing syntax: `debug`, `lambda_host=debug,sqlx=warn`) [default: info for serve, warn otherwise].
    #[arg(long, global = true, env = "LAMBDA_LOG")]
    log: Option<String>,
    /// How the log on stderr is written: `text` for people, `json` (one object per line) for collectors.
    #[arg(
        long,
        global = true,
        env = "LAMBDA_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a function once and prints its JSON result.
    Invoke {
        /// A predefined function's Language-Title, or the path of a component (.wasm); with --script, a language (nodejs, python) or the path of its interpreter component.
        target: String,
        /// Runs this source on its language's interpreter (tier 0) instead of building it.
        #[arg(long)]
        script: Option<PathBuf>,
        /// The params object, as JSON.
        #[arg(long, default_value = "{}")]
        params: String,
        /// The context object, as JSON.
        #[arg(long, default_value = "{}")]
        context: String,
        /// The deadline, in milliseconds [default: --default-timeout-ms].
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Run it this many times, each in a fresh instance, and print timings to stderr.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
        /// With --repeat: one warm instance serves every execution after the first (as the host serves a function that opted in to warm instances).
        #[arg(long)]
        warm: bool,
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
    Serve,
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
    Settings {
        /// Print the values in effect instead (defaults < config file < environment < flags; secrets redacted).
        #[arg(long)]
        effective: bool,
    },
    /// Compiles components to native code into the AOT cache of the data directory (a host starting on it then loads them in milliseconds), printing the time each took.
    Compile {
        /// Component files (.wasm).
        #[arg(required = true)]
        components: Vec<PathBuf>,
        /// Leave the AOT cache alone, so every file is compiled: for measuring the compiler.
        #[arg(long)]
        measure: bool,
    },
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

    /// The log filter: `--log`/`LAMBDA_LOG`, else the server reports what
    /// it does and one-shot commands keep stderr for results and errors.
    pub fn log_filter(&self) -> &str {
        match (&self.log, &self.command) {
            (Some(filter), _) => filter,
            (None, Command::Serve) => "info",
            (None, _) => "warn",
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
    if let Command::Settings { effective } = args.command {
        if effective {
            let mut settings = args.settings;
            settings.resolve();
            println!("{settings:#?}");
        } else {
            print!("{}", reference::markdown(&Args::command()));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut settings = args.settings;
    settings.runtime.execution_process_log_json = args.log_format == LogFormat::Json;
    settings.validate()?;
    match args.command {
        Command::Serve => {
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
            let secret = settings.server.jwt_secret.as_ref().map(Secret::expose);
            let keys = JwtKeys::load(secret, &settings.data_dir)?;
            let scopes: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
            println!("{}", keys.mint(&sub, &scopes, ttl)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Invoke {
            target,
            script,
            params,
            context,
            timeout_ms,
            repeat,
            warm,
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
                script.as_deref(),
                params,
                context,
                timeout_ms.map(Duration::from_millis),
                repeat,
                warm,
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
        Command::Compile {
            components,
            measure,
        } => compile(&settings, &components, measure).await,
        Command::Settings { .. } => unreachable!("answered before the settings are read"),
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

#[allow(clippy::too_many_arguments)]
async fn invoke(
    settings: &Settings,
    target: &str,
    script: Option<&Path>,
    params: Value,
    context: Value,
    timeout: Option<Duration>,
    repeat: u32,
    warm: bool,
) -> anyhow::Result<ExitCode> {
    let script = match script {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    let (language_title, component) = if let (Some(_), false) = (&script, target.ends_with(".wasm"))
    {
        // The language's interpreter runs the script, named after its file.
        let language: Language = target.parse()?;
        let toolchains = Toolchains::detect(&settings.toolchain).await?;
        let artifact = toolchains.build_interpreter(language).await?;
        (format!("{language}-script"), artifact.component)
    } else if target.ends_with(".wasm") {
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

    // One process for a one-shot command (and for `--repeat`'s timings, the
    // in-process figures of the bench), unless the flag asks for children.
    let mut config = settings.runtime.clone();
    config.execution_processes.get_or_insert(0);
    let runtime = Runtime::new(&config)?;
    let load_started = Instant::now();
    let function = match runtime.load(component).await {
        Ok(function) => function,
        Err(e) => {
            report(e.into());
            return Ok(ExitCode::FAILURE);
        }
    };
    let load_time = load_started.elapsed();
    let mut invocation = Invocation {
        request_id: uuid::Uuid::new_v4().to_string(),
        language_title,
        params,
        context,
        caller: "cli".to_owned(),
        script: script.map(|text| Script {
            text: text.into(),
            mode: ScriptMode::Check,
        }),
        warm_version: None,
    };
    // As the host runs a tier-0 function: a check prepares the source
    // once (and reports its mistakes), every call runs what it answered.
    if let Some(source) = invocation.script.clone() {
        let checked = match runtime.invoke(&function, &invocation, timeout).await {
            Ok(checked) => checked,
            Err(e) => {
                report(e.into());
                return Ok(ExitCode::FAILURE);
            }
        };
        invocation.script = Some(match checked.result {
            Value::String(prepared) => Script {
                text: prepared.into(),
                mode: ScriptMode::RunPrepared,
            },
            _ => Script {
                mode: ScriptMode::Run,
                ..source
            },
        });
    }
    // The warm instance's version: the digest of the component it runs.
    invocation.warm_version = warm.then(|| function.digest());
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
            report(e.into());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Compiles each component, printing `<seconds> <compiled|aot> <path>`.
async fn compile(
    settings: &Settings,
    components: &[PathBuf],
    measure: bool,
) -> anyhow::Result<ExitCode> {
    let mut config = settings.runtime.clone();
    if measure {
        config.aot_cache_dir = None;
    }
    let runtime = Runtime::new(&config)?;
    let mut failed = false;
    for path in components {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let compiles = runtime.cache_stats().compiles;
        let started = Instant::now();
        match runtime.load(Arc::from(bytes)).await {
            Ok(_) => println!(
                "{:.3} {} {}",
                started.elapsed().as_secs_f64(),
                if runtime.cache_stats().compiles > compiles {
                    "compiled"
                } else {
                    "aot"
                },
                path.display()
            ),
            Err(e) => {
                eprintln!("{}:", path.display());
                report(e.into());
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
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

/// Builds, printing a refused build as the API's error body.
async fn build_or_report(
    toolchains: &Toolchains,
    language: Language,
    source: &str,
    options: &BuildOptions,
) -> anyhow::Result<Option<lambda_host::toolchain::Artifact>> {
    match toolchains.build(language, source, options).await {
        Ok(artifact) => Ok(Some(artifact)),
        Err(e @ (BuildError::Compile(_) | BuildError::LimitExceeded { .. })) => {
            report(ApiError::from(e));
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Prints an error as the API would answer it (one mapping from the
/// host's errors to codes, the API's), and its cause for the operator.
fn report(error: ApiError) {
    match serde_json::to_string_pretty(&error.body()) {
        Ok(body) => eprintln!("{body}"),
        Err(e) => eprintln!("error: {e}"),
    }
    if let Some(cause) = error.cause() {
        eprintln!("cause: {cause}");
    }
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEGIN: &str = "<!-- BEGIN SETTINGS (generated by `lambda-host settings`) -->\n";
    const END: &str = "<!-- END SETTINGS -->";

    #[test]
    fn the_readme_holds_the_current_settings_reference() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let start = readme.find(BEGIN).expect("README has the settings markers") + BEGIN.len();
        let end = readme[start..]
            .find(END)
            .expect("README has the end marker")
            + start;
        assert_eq!(
            &readme[start..end],
            reference::markdown(&Args::command()),
            "README.md's settings table is stale: run `just settings-reference`"
        );
    }

    #[test]
    fn the_reference_shows_flags_variables_keys_and_defaults() {
        let table = reference::markdown(&Args::command());
        for row in [
            "| `--listen` | `LAMBDA_LISTEN` | `listen` | `127.0.0.1:8080` |",
            "| `--no-pooling` | `LAMBDA_NO_POOLING` | `no_pooling` | off |",
            "| `--memory-limit-mb` | `LAMBDA_MEMORY_LIMIT_MB` | `memory_limit_mb` | `256` |",
            "| `--rust-target-dir` | `LAMBDA_RUST_TARGET_DIR` | `rust_target_dir` | `<data-dir>/rust-target` |",
            "| `--default-timeout-ms` | `LAMBDA_DEFAULT_TIMEOUT_MS` | `default_timeout_ms` | `30000, or max-timeout-ms if lower` |",
            // Secrets have no flag to show: on the command line they are refused.
            "|  | `LAMBDA_JWT_SECRET` | `jwt_secret` | unset |",
            "|  | `LAMBDA_DATABASE_URL` | `database_url` | unset |",
        ] {
            assert!(table.contains(row), "no {row} in\n{table}");
        }
        assert!(!table.contains("LAMBDA_CONFIG"), "{table}");
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }
}
