//! `lambda-host`: parse the command line, build what the command needs,
//! run it. The work itself lives in the library.

mod cli;
mod reference;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The build sandbox's supervisor: single-threaded, before anything else
    // (no config file, no logging, no async runtime, no threads).
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(
            lambda_host::sandbox::SUPERVISOR_COMMAND,
        ))
    {
        return lambda_host::sandbox::supervisor::main();
    }
    if let Err(e) = load_config_file() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let args = cli::Args::parse();
    init_logging(&args);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli::run(args))
}

/// Logs go to stderr, filtered by `LAMBDA_LOG` (a tracing filter such as
/// `info` or `lambda_host=debug,sqlx=warn`), as text for people or as one
/// JSON object per line for log collectors (`--log-format json`).
fn init_logging(args: &cli::Args) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAMBDA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(args.default_log_filter()));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match args.log_format() {
        cli::LogFormat::Text => builder
            // Colours only on a terminal: logs piped to a file stay greppable.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Fields at the top level of each object (`"status":200`, not
        // `"fields":{"status":200}`), so collectors index them as they are.
        cli::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Applies `--config FILE` (or `LAMBDA_CONFIG`) before the command line is
/// parsed: its settings become `LAMBDA_*` variables wherever the
/// environment says nothing, so flags and the environment still win.
fn load_config_file() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let mut path = std::env::var_os("LAMBDA_CONFIG").map(std::path::PathBuf::from);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            path = args.next().map(Into::into);
        } else if let Some(value) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            path = Some(value.into());
        }
    }
    let Some(path) = path else {
        return Ok(());
    };
    for (key, value) in lambda_host::config::file_settings(&path)? {
        if std::env::var_os(&key).is_none() {
            // SAFETY: nothing else runs yet: no thread has been started
            // (the async runtime comes later), so no one reads the
            // environment concurrently.
            unsafe { std::env::set_var(key, value) };
        }
    }
    Ok(())
}
