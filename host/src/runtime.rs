//! The wasmtime runtime: the hot path of every execution.
//!
//! Three lifetimes of state are kept apart, as wasmtime's own serving code
//! does:
//!
//! - per process, [`Runtime`]: one `Engine` (component model, epoch
//!   interruption, pooling allocator), one `Linker` with the WASI interfaces
//!   and our `host` interface, one epoch ticker thread, the pool's slots
//!   shared fairly between callers ([`slots`]);
//! - per component, [`LoadedFunction`]: compiled once (or loaded from the AOT
//!   cache) and pre-instantiated, keyed by the digest of its bytes;
//! - per execution: a fresh `Store` and instance with a deadline, a memory
//!   cap and bounded output, dropped when the call returns; or, for a
//!   function that opted in, a warm instance of the same caller and
//!   function version ([`warm`]), with its own deadline and output.
//!
//! Fresh instances of large components (the interpreters) run the same way
//! in single-threaded child processes ([`processes`]), each with its own
//! engine: a copy-on-write fault there interrupts no other core.

mod bindings;
mod cache;
mod engine;
mod http;
mod incremental;
mod invoke;
mod limits;
pub mod outbound;
pub mod policy;
pub mod processes;
mod slots;
pub mod spin;
pub use spin::{CallScope, FunctionOwner};
mod warm;
pub mod worlds;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

pub use cache::CacheStats;
pub use incremental::CompiledFunctions;
pub use invoke::{Execution, Invocation, LogLevel, LogLine, Script, ScriptMode};
pub use warm::WarmStats;

use crate::config::RuntimeConfig;
use crate::digest::Digest;

/// Why an execution did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every instance slot stayed busy for the whole bounded wait.
    #[error("the host is busy: no execution slot became free within {waited:?}")]
    Overloaded { waited: Duration },
    /// The caller already runs as many executions as its share of the slots.
    #[error("this caller already runs {share} executions at once, its share of the host")]
    CallerAtShare { share: u32 },
    /// The guest ran past its deadline and was interrupted.
    #[error("the function did not finish within {0:?}")]
    Timeout(Duration),
    /// The guest asked for more memory than its cap allows.
    #[error("the function exceeded its memory limit of {limit_bytes} bytes")]
    OutOfMemory { limit_bytes: u64 },
    /// The function reported an error: an exception, a raised error, an `Err`.
    #[error("{}", .0.message)]
    Guest(GuestError),
    /// The guest trapped: a panic, an `unreachable`, an out-of-bounds access.
    #[error("the function crashed: {message}")]
    Trap { message: String },
    /// The guest answered with something that is not JSON.
    #[error("the function returned invalid JSON: {0}")]
    InvalidResult(String),
    /// The function implements the other world: an HTTP function asked to
    /// execute, or a JSON function asked to serve a request.
    #[error("{0}")]
    WrongWorld(&'static str),
    /// The bytes are not a component of the `lambda:function` world.
    #[error("not a valid function component: {0:#}")]
    InvalidComponent(anyhow::Error),
    /// Anything else: a failure of the host, not of the guest.
    #[error("internal runtime error: {0:#}")]
    Internal(anyhow::Error),
}

impl Error {
    /// The same error, for each of the callers that waited for one load.
    pub(crate) fn copy_of(error: &Error) -> Self {
        match error {
            Error::Overloaded { waited } => Error::Overloaded { waited: *waited },
            Error::CallerAtShare { share } => Error::CallerAtShare { share: *share },
            Error::Timeout(limit) => Error::Timeout(*limit),
            Error::OutOfMemory { limit_bytes } => Error::OutOfMemory {
                limit_bytes: *limit_bytes,
            },
            Error::Guest(guest) => Error::Guest(guest.clone()),
            Error::Trap { message } => Error::Trap {
                message: message.clone(),
            },
            Error::InvalidResult(text) => Error::InvalidResult(text.clone()),
            Error::WrongWorld(why) => Error::WrongWorld(why),
            Error::InvalidComponent(e) => Error::InvalidComponent(anyhow::anyhow!("{e:#}")),
            Error::Internal(e) => Error::Internal(anyhow::anyhow!("{e:#}")),
        }
    }

    /// How the failed execution is counted in the metrics.
    pub fn outcome(&self) -> crate::telemetry::ExecutionOutcome {
        use crate::telemetry::ExecutionOutcome;
        match self {
            Error::Timeout(_) => ExecutionOutcome::Timeout,
            Error::OutOfMemory { .. } => ExecutionOutcome::OutOfMemory,
            Error::Overloaded { .. } => ExecutionOutcome::Overloaded,
            Error::CallerAtShare { .. } => ExecutionOutcome::RateLimited,
            Error::Internal(_) | Error::InvalidComponent(_) | Error::WrongWorld(_) => {
                ExecutionOutcome::Error
            }
            Error::Guest(_) | Error::Trap { .. } | Error::InvalidResult(_) => {
                ExecutionOutcome::RuntimeError
            }
        }
    }
}

/// A failure reported by the function itself, as the WIT `error-info`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_trace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

/// A component compiled and pre-instantiated, ready for executions.
pub struct LoadedFunction {
    /// The digest of the component's bytes.
    digest: Digest,
    /// Linked once against its world's linker; instantiating it only
    /// allocates and initialises, it never resolves imports again.
    entry: Entry,
    /// The size of the component, its weight in the cache of loaded
    /// functions (its native code grows with it).
    component_bytes: usize,
}

/// How a loaded component is called: its world's pre-instantiation.
enum Entry {
    /// `lambda:function`: `handle(invocation)` (execute).
    Function(bindings::FunctionPre<invoke::GuestState>),
    /// `wasi:http/proxy`: `incoming-handler.handle` (`/fn/...`).
    Http(wasmtime_wasi_http::p2::bindings::ProxyPre<invoke::GuestState>),
}

/// One linker per world: what each grants is exactly its WIT world.
struct Linkers {
    function: wasmtime::component::Linker<invoke::GuestState>,
    http: wasmtime::component::Linker<invoke::GuestState>,
}

impl LoadedFunction {
    /// The digest of the component's bytes.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The world the component implements.
    pub fn world(&self) -> worlds::World {
        match self.entry {
            Entry::Function(_) => worlds::World::Function,
            Entry::Http(_) => worlds::World::Http,
        }
    }
}

/// The process-wide runtime. Cheap to share behind an `Arc`.
pub struct Runtime {
    engine: wasmtime::Engine,
    linkers: Linkers,
    cache: cache::ComponentCache,
    /// Back-pressure: one slot per instance of the pool, taken before
    /// instantiation, so a burst waits (a bounded time) for a free slot
    /// instead of failing in the allocator; shared fairly between callers.
    slots: slots::Slots,
    /// Instances waiting for their caller's next execution.
    warm: Arc<warm::WarmPool>,
    /// Where fresh instances of large components run ([`processes`]);
    /// `None`: in this process, as everything else.
    processes: Option<processes::ExecutionProcesses>,
    config: RuntimeConfig,
    /// What HTTP functions may use (the operator's policy file).
    policy: policy::Policy,
    /// Where granted functions keep key-value data; `None` in processes
    /// that serve no HTTP functions (the CLI's `invoke`).
    key_value: Option<Arc<dyn crate::store::KeyValueStore>>,
    /// Retires warm instances left idle; stopped on drop.
    _reaper: crate::periodic::Periodic,
    /// Dropped last: stops and joins the ticker thread.
    _ticker: crate::periodic::Periodic,
}

impl Runtime {
    /// The operator's capability policy.
    pub fn policy(&self) -> &policy::Policy {
        &self.policy
    }

    /// Gives HTTP functions granted key-value their store (the server's
    /// Redis, or its embedded database).
    pub fn with_key_value(mut self, store: Arc<dyn crate::store::KeyValueStore>) -> Self {
        self.key_value = Some(store);
        self
    }

    /// Builds the engine, the linker and the caches. Fails on settings the
    /// engine refuses, before anything runs.
    pub fn new(config: &RuntimeConfig) -> anyhow::Result<Self> {
        let engine = engine::build(config)?;
        let linkers = Linkers {
            function: invoke::linker(&engine)?,
            http: http::linker(&engine)?,
        };
        let cache = cache::ComponentCache::new(
            &engine,
            config.aot_cache_dir.clone(),
            config.loaded_components_max_bytes,
            config.integrity_key.clone(),
        )?;
        let ticker = engine::start_epoch_ticker(&engine, config.epoch_tick)?;
        let warm = Arc::new(warm::WarmPool::new(
            config.warm_instances as usize,
            config.warm_instance_uses,
            config.warm_instance_idle,
        ));
        let reaper = warm::start_reaper(&warm)?;
        let policy = match &config.capability_policy {
            Some(path) => policy::Policy::load(path)?,
            None => policy::Policy::default(),
        };
        Ok(Self {
            warm,
            processes: processes::ExecutionProcesses::new(config),
            _reaper: reaper,
            slots: slots::Slots::new(
                config.max_instances,
                config.caller_slot_share,
                config.slot_wait,
            ),
            engine,
            linkers,
            cache,
            config: config.clone(),
            policy,
            key_value: None,
            _ticker: ticker,
        })
    }

    /// Compiles (or loads from the AOT cache) and pre-instantiates a
    /// component. Loading the same bytes twice returns the same function;
    /// concurrent loads of the same bytes wait for one compilation.
    pub async fn load(&self, component: Arc<[u8]>) -> Result<Arc<LoadedFunction>, Error> {
        self.load_as(Digest::of(&component), component).await
    }

    /// [`load`](Self::load) of a component whose digest the caller knows
    /// (the registry's, for a sealed copy): it is not hashed again.
    pub async fn load_as(
        &self,
        digest: Digest,
        component: Arc<[u8]>,
    ) -> Result<Arc<LoadedFunction>, Error> {
        self.cache
            .load(&self.engine, &self.linkers, digest, component)
            .await
    }

    /// Loads native code serialized by the host process: how an execution
    /// process gets its functions.
    async fn load_native(&self, digest: Digest, native: &[u8]) -> Result<(), Error> {
        self.cache
            .load_native(&self.engine, &self.linkers, digest, native)
            .await
    }

    /// The function of this component digest, if it is loaded already.
    pub async fn loaded(&self, digest: Digest) -> Option<Arc<LoadedFunction>> {
        self.cache.loaded(digest).await
    }

    /// How many components are loaded, and their summed size in bytes.
    pub async fn loaded_components(&self) -> (u64, u64) {
        self.cache.loaded_components().await
    }

    /// How many executions hold an instance right now.
    pub fn instances_in_use(&self) -> usize {
        self.slots.in_use()
    }

    /// Runs one execution in a slot of the caller's share: in a fresh
    /// instance, or in a warm one of the same caller and version when the
    /// invocation allows it. `timeout` is capped by the configured maximum;
    /// `None` takes the default.
    pub async fn invoke(
        &self,
        function: &LoadedFunction,
        invocation: &Invocation,
        timeout: Option<Duration>,
    ) -> Result<Execution, Error> {
        let timeout = timeout
            .unwrap_or_else(|| self.config.default_timeout())
            .min(self.config.max_timeout);
        if function.world() == worlds::World::Http {
            return Err(Error::WrongWorld(
                "this is an HTTP function (wasi:http/proxy): execute it through Sessions, or call it at /fn/<language-title>/<path>",
            ));
        }
        let _slot = self.slots.acquire(&invocation.caller).await?;
        let fresh = invocation.warm_version.is_none() || !self.warm.enabled();
        if fresh
            && let Some(processes) = &self.processes
            && processes::ExecutionProcesses::take(function)
            && let Some(done) = processes.run(function, invocation, timeout).await
        {
            self.warm.count_fresh();
            return done;
        }
        invoke::run(
            &self.engine,
            &self.config,
            function,
            invocation,
            timeout,
            &self.warm,
        )
        .await
    }

    /// Counters of the execution processes; `None` when there are none.
    pub fn process_stats(&self) -> Option<processes::ProcessStats> {
        self.processes.as_ref().map(|processes| processes.stats())
    }

    /// Counters of fresh and warm instances.
    pub fn warm_stats(&self) -> WarmStats {
        self.warm.stats()
    }

    /// Removes native code no function needs (see
    /// [`cache::ComponentCache::remove_unused`]); returns how many files went.
    pub async fn remove_unused_native_code(
        self: &Arc<Self>,
        keep: HashSet<Digest>,
        written_before: std::time::SystemTime,
    ) -> anyhow::Result<u64> {
        let runtime = self.clone();
        tokio::task::spawn_blocking(move || runtime.cache.remove_unused(&keep, written_before))
            .await?
    }

    /// Counters of the component cache: compilations, AOT hits, loads.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The settings the runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }
}
