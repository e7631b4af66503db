//! `lambda-host`: parse the command line, build what the command needs,
//! run it. The work itself lives in the library.

mod cli;

use std::process::ExitCode;

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
    // An execution process (runtime/processes.rs): its own small world,
    // set up from what the host sends on its socket.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(
            lambda_host::runtime::processes::COMMAND,
        ))
    {
        return lambda_host::runtime::processes::main();
    }
    let args = match lambda_host::config::file::parse::<cli::Args>(std::env::args_os()) {
        Ok(args) => args,
        // Help, version and bad flags: clap prints them its own way.
        Err(e) => match e.downcast_ref::<clap::Error>() {
            Some(clap_error) => clap_error.exit(),
            None => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
    };
    // Held to the end: dropping it writes out the last buffered lines.
    let _log_output = init_logging(&args);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(cli::run(args));
    // Dropping a runtime waits for every blocking task, and a component
    // compiling for tier 1 takes up to half a minute on a slow machine: a
    // stopped host would linger that long and write its artifact while a
    // supervisor cleans up. The artifact is written atomically, so
    // abandoning it costs one compile at the next start, nothing more.
    runtime.shutdown_timeout(BLOCKING_TASKS_AT_EXIT);
    code
}

/// How long a stopping host waits for blocking work (compiles, file
/// writes) still under way once the requests and logs are done.
const BLOCKING_TASKS_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Logs go to stderr, filtered by `--log`/`LAMBDA_LOG` (a tracing filter such as
/// `info` or `lambda_host=debug,sqlx=warn`), as text for people or as one
/// JSON object per line for log collectors (`--log-format json`). Lines are
/// written in blocks, warnings and errors at once (`log_output`).
fn init_logging(args: &cli::Args) -> lambda_host::log_output::StderrGuard {
    let (stderr, guard) = lambda_host::log_output::buffered_stderr();
    lambda_host::log_output::init(
        stderr,
        tracing_subscriber::EnvFilter::new(args.log_filter()),
        args.log_format() == cli::LogFormat::Json,
        // Colours only on a terminal: logs piped to a file stay greppable.
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    guard
}
