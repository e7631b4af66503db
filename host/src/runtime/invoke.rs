//! One execution: a fresh store and instance, a deadline, a memory cap,
//! captured output; and the mapping of how it ended to [`Error`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{self, ErrorInfo, Level, WitInvocation};
use super::limits::{BoundedOutput, MemoryLimiter};
use super::warm::{WarmInstance, WarmKey, WarmPool};
use super::{Entry, Error, GuestError, LoadedFunction};
use crate::config::RuntimeConfig;

/// What the caller hands to one execution (serialized to an execution
/// process as it is).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Invocation {
    pub request_id: String,
    pub language_title: String,
    /// The caller's params; API.md requires a JSON object.
    pub params: Value,
    /// The session's context object.
    pub context: Value,
    /// Who the execution runs for (a token's `sub`): each caller holds at
    /// most its share of the instance slots.
    pub caller: String,
    /// The function's source, for an interpreter (tier 0) to run; `None`
    /// for a function's own component.
    pub script: Option<Script>,
    /// The function version (build digest) when the function opted in to
    /// warm instances: the instance may then serve this caller's later
    /// executions of the same version (see [`super::warm`]). `None`: a
    /// fresh instance, dropped after the call.
    pub warm_version: Option<crate::digest::Digest>,
}

/// A source handed to an interpreter component through the `script`
/// import.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Script {
    pub text: Arc<str>,
    pub mode: ScriptMode,
}

/// What an interpreter does with a [`Script`] (the `mode` of the WIT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ScriptMode {
    /// Compile it and run its top-level code; answer what `RunPrepared`
    /// takes (or `null`).
    Check,
    /// Compile it, run its top-level code and call its handler.
    Run,
    /// As `Run`, from what a `Check` of the source answered.
    RunPrepared,
}

/// A finished execution.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Execution {
    /// The function's result.
    pub result: Value,
    /// Lines the guest logged through the `host` interface.
    pub logs: Vec<LogLine>,
    /// What the guest wrote to stdout and stderr, bounded.
    pub stdout: String,
    pub stderr: String,
    /// Wall time from instantiation to the returned result.
    pub duration: Duration,
}

/// One line the guest logged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// The severity of a [`LogLine`], as the `host` interface's `log` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one store: everything the guest can reach.
pub struct GuestState {
    /// WASI with nothing granted: no preopened directories, no environment,
    /// no arguments, no sockets; stdout and stderr go to bounded buffers.
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    limiter: MemoryLimiter,
    logs: Vec<LogLine>,
    /// Bytes of log messages still allowed.
    log_budget: usize,
    /// What the `script` import answers.
    script: Option<Script>,
    /// Where the guest's stdout and stderr go: the same buffers for the
    /// store's life (the guest's glue may keep its stream handles between
    /// the executions of a warm instance), emptied by each execution.
    stdout: BoundedOutput,
    stderr: BoundedOutput,
    /// `wasi:http`, for HTTP functions (only their linker adds it).
    pub(super) http: wasmtime_wasi_http::WasiHttpCtx,
    /// Decides each outbound request of an HTTP function.
    pub(super) outbound: super::outbound::OutboundPolicy,
    /// What an HTTP function's key-value and variables calls reach.
    pub(super) capabilities: super::spin::CallCapabilities,
}

impl GuestState {
    pub(super) fn new(config: &RuntimeConfig) -> Self {
        let stdout = BoundedOutput::new(config.output_limit_bytes);
        let stderr = BoundedOutput::new(config.output_limit_bytes);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(config.memory_limit_bytes),
            logs: Vec::new(),
            log_budget: 0,
            script: None,
            stdout,
            stderr,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            outbound: super::outbound::OutboundPolicy::default(),
            capabilities: super::spin::CallCapabilities::default(),
        }
    }

    /// Makes a fresh state ready for one HTTP request: its memory cap.
    pub(super) fn start_request(&mut self) {
        self.limiter.start_execution();
    }

    /// Makes the state ready for one execution: its own log budget, its
    /// script, and a memory cap that starts from what the instance holds.
    fn start_execution(&mut self, config: &RuntimeConfig, invocation: &Invocation) {
        self.logs.clear();
        self.log_budget = config.output_limit_bytes;
        self.script = invocation.script.clone();
        self.limiter.start_execution();
        // Left over only if an earlier execution's output was never read.
        self.stdout.take_contents();
        self.stderr.take_contents();
    }
}

impl wasmtime_wasi_http::WasiHttpView for GuestState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::lambda::function::types::Host for GuestState {}

impl bindings::lambda::function::host::Host for GuestState {
    fn log(&mut self, level: Level, message: String) {
        if self.log_budget == 0 {
            return;
        }
        let mut message = message;
        if message.len() > self.log_budget {
            let mut cut = self.log_budget;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [log truncated]");
        }
        self.log_budget = self.log_budget.saturating_sub(message.len());
        let level = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.logs.push(LogLine { level, message });
    }
}

impl bindings::lambda::function::script::Host for GuestState {
    fn read(&mut self) -> bindings::ScriptSource {
        // A component that is no interpreter gets nothing to run: only its
        // own function's source ever crosses, and only to an interpreter.
        match &self.script {
            Some(script) => bindings::ScriptSource {
                text: script.text.to_string(),
                mode: match script.mode {
                    ScriptMode::Check => bindings::ScriptMode::Check,
                    ScriptMode::Run => bindings::ScriptMode::Run,
                    ScriptMode::RunPrepared => bindings::ScriptMode::RunPrepared,
                },
            },
            None => bindings::ScriptSource {
                text: String::new(),
                mode: bindings::ScriptMode::Check,
            },
        }
    }
}

/// The linker every component is instantiated against: WASI 0.2 (the
/// interfaces language runtimes import, all backed by an empty context),
/// our `host` interface and, for interpreters, `script`. Nothing else can
/// be imported.
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("linking WASI")?;
    bindings::Function::add_to_linker::<_, HasSelf<GuestState>>(&mut linker, |state| state)
        .map_err(anyhow::Error::from)
        .context("linking the lambda:function host interface")?;
    Ok(linker)
}

pub async fn run(
    engine: &Engine,
    config: &RuntimeConfig,
    function: &LoadedFunction,
    invocation: &Invocation,
    timeout: Duration,
    warm: &WarmPool,
) -> Result<Execution, Error> {
    let key = invocation
        .warm_version
        .filter(|_| warm.enabled())
        .map(|version| WarmKey {
            caller: invocation.caller.clone(),
            version,
            component: function.digest(),
        });
    let reused = match &key {
        Some(key) => warm.take(key),
        None => {
            warm.count_fresh();
            None
        }
    };
    let (mut store, instance, uses) = match reused {
        Some(warm) => (warm.store, Some(warm.function), warm.uses),
        None => (fresh_store(engine, config), None, 0),
    };
    store.data_mut().start_execution(config, invocation);
    let started = start_deadline(&mut store, timeout);

    let params =
        serde_json::to_string(&invocation.params).map_err(|e| Error::Internal(e.into()))?;
    let context =
        serde_json::to_string(&invocation.context).map_err(|e| Error::Internal(e.into()))?;
    let wit_invocation = WitInvocation {
        request_id: invocation.request_id.clone(),
        language_title: invocation.language_title.clone(),
        params,
        context,
    };

    let call = async {
        let instance = match instance {
            Some(instance) => instance,
            None => match &function.entry {
                Entry::Function(pre) => pre.instantiate_async(&mut store).await?,
                // Refused before a slot is taken (Runtime::invoke).
                Entry::Http(_) => {
                    return Err(wasmtime::Error::msg("not a lambda:function component"));
                }
            },
        };
        let returned = instance.call_handle(&mut store, &wit_invocation).await?;
        Ok::<_, wasmtime::Error>((instance, returned))
    };
    // The epoch stops guest code; this stops a guest blocked in a host call
    // (a sleep, a poll), where no epoch check runs. Dropping the future
    // drops the instance with it.
    let outcome = tokio::time::timeout(timeout, call).await;
    let duration = started.elapsed();

    // From here on, every path that is not a clean answer drops the store:
    // only an instance whose execution ended as its glue intended is kept.
    let (instance, returned) = match outcome {
        Err(_elapsed) => return Err(Error::Timeout(timeout)),
        Ok(Err(trap)) => return Err(trap_error(&store, trap, config, timeout)),
        Ok(Ok(answered)) => answered,
    };
    let state = store.data_mut();
    let logs = std::mem::take(&mut state.logs);
    let stdout = state.stdout.take_contents();
    let stderr = state.stderr.take_contents();
    let hit_the_cap = state.limiter.hit_the_cap();
    let answer = match returned {
        Ok(json) => match serde_json::from_str(&json) {
            Ok(result) => Ok(Execution {
                result,
                logs,
                stdout,
                stderr,
                duration,
            }),
            // The glue answered something it should not have: its state
            // is not to be trusted with another execution.
            Err(e) => return Err(Error::InvalidResult(e.to_string())),
        },
        // A guest that caught its allocation failure and reported it is
        // still out of memory, whatever words it chose; the instance goes.
        Err(_) if hit_the_cap => {
            return Err(Error::OutOfMemory {
                limit_bytes: config.memory_limit_bytes,
            });
        }
        Err(ErrorInfo {
            message,
            stack_trace,
            line,
            column,
        }) => Err(Error::Guest(GuestError {
            message,
            stack_trace: stack_trace.map(|trace| without_build_paths(&trace)),
            line,
            column,
        })),
    };
    // An answer or an error the guest's glue reported itself: the
    // instance may serve this caller's next execution of this version.
    if let Some(key) = key {
        warm.put(key, WarmInstance::new(store, instance, uses + 1));
    }
    answer
}

/// A store for an execution in a fresh instance, its memory capped.
pub(super) fn fresh_store(engine: &Engine, config: &RuntimeConfig) -> Store<GuestState> {
    let mut store = Store::new(engine, GuestState::new(config));
    store.limiter(|state| &mut state.limiter);
    store
}

/// Starts the execution's clock: every epoch tick the guest yields to the
/// executor (so a busy guest never holds a worker thread for long), and
/// it is interrupted once past `timeout`. Returns when it started.
pub(super) fn start_deadline(store: &mut Store<GuestState>, timeout: Duration) -> Instant {
    let started = Instant::now();
    let deadline = started + timeout;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    started
}

/// Why a call into the guest failed, named from the trap and the store.
pub(super) fn trap_error(
    store: &Store<GuestState>,
    trap: wasmtime::Error,
    config: &RuntimeConfig,
    timeout: Duration,
) -> Error {
    let state = store.data();
    classify_trap(trap, &state.limiter, config, timeout, &state.stderr)
}

/// A stack trace without the paths of the machine that built the
/// component: componentize-js names its own glue by the absolute path it
/// had in the build's scratch directory (`export_handle@/…/sources/
/// initializer.js:138:28`), which would tell every caller where the host
/// keeps its data.
fn without_build_paths(trace: &str) -> String {
    const MARKER: &str = "/sources/";
    trace
        .lines()
        .map(|line| match line.find("@/") {
            Some(at) => match line[at..].find(MARKER) {
                Some(end) => format!("{}{}", &line[..=at], &line[at + end + MARKER.len()..]),
                None => line.to_owned(),
            },
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Names the reason a call trapped.
fn classify_trap(
    trap: wasmtime::Error,
    limiter: &MemoryLimiter,
    config: &RuntimeConfig,
    timeout: Duration,
    stderr: &BoundedOutput,
) -> Error {
    if limiter.hit_the_cap() {
        return Error::OutOfMemory {
            limit_bytes: config.memory_limit_bytes,
        };
    }
    if trap.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Error::Timeout(timeout);
    }
    if trap
        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return Error::Internal(anyhow::Error::from(trap));
    }
    // A Rust panic prints its message to stderr, then aborts: the message
    // is the useful part, the trap (`unreachable`) is not.
    let panic = stderr.contents();
    let panic = panic.trim();
    let message = if panic.is_empty() {
        trap.to_string()
    } else {
        format!("{panic} ({trap})")
    };
    Error::Trap { message }
}

#[cfg(test)]
mod tests {
    use super::without_build_paths;

    #[test]
    fn stack_traces_lose_the_build_machines_paths() {
        let trace = "calculator@handler.js:19:11\nhandle@index.js:34:20\n\
                     export_handle@/var/lib/lambda/builds/build-70DXOY/tmp/21cc/sources/initializer.js:138:28";
        assert_eq!(
            without_build_paths(trace),
            "calculator@handler.js:19:11\nhandle@index.js:34:20\nexport_handle@initializer.js:138:28"
        );
    }
}
