//! Execution processes: fresh instances of large components (the
//! JavaScript and Python interpreters) run in single-threaded child
//! processes of the host, one per core, instead of on the host's threads.
//!
//! Why: a fresh instance of a 12–19 MB interpreter component writes a few
//! hundred pages of its memory image, each first write a copy-on-write
//! fault; in a process whose threads run on several cores, every such
//! fault also interrupts the other cores to flush their TLBs. The profile
//! in docs/benchmarks.md put the faults at half of the host's CPU and the
//! interrupts at a third. A single-threaded process runs on one core at a
//! time, so its faults interrupt nobody: the same executions cost about
//! half the CPU. Warm instances, HTTP functions and small components (Rust)
//! fault little and stay in the host process.
//!
//! A child is also a wall around the guest: it holds no secret (its
//! environment is empty, it opens no store, and native code reaches it
//! over its socket, never through the sealed AOT cache), and Landlock
//! denies it every file and every TCP port before it starts a thread.
//!
//! The protocol, over one Unix socket per child (its fd 0): frames of a
//! length-prefixed JSON header and a length-prefixed blob. The host sends
//! [`Start`], then [`ToChild`] frames (executions, and cancellations of
//! those whose caller went away); the child answers [`Ready`] once, then
//! an [`Answer`] per execution, in any order (it runs them concurrently on
//! its one thread, as the host's own threads would).

use std::collections::HashMap;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use super::{Entry, Error, Execution, GuestError, Invocation, LoadedFunction, Runtime};
use crate::config::{PagemapScan, RuntimeConfig};
use crate::digest::Digest;

/// The first argument that makes `lambda-host` an execution process.
pub const COMMAND: &str = "execution-process";
/// The child's only argument after [`COMMAND`]: its log lines as JSON.
const LOG_JSON_ARG: &str = "--log-format=json";

/// Components from this size on run their fresh instances in an execution
/// process: the interpreters (12–19 MB). A Rust component (a few hundred
/// KB) writes a handful of pages per execution; for it the trip over the
/// socket would cost more than the process saves.
const MIN_COMPONENT_BYTES: usize = 4 << 20;

/// How long past an execution's deadline the host waits for its answer
/// before it gives the child up (kills it): the child enforces the
/// deadline itself, so only a child that hangs or died is waited out.
const ANSWER_GRACE: Duration = Duration::from_secs(5);

/// The largest header either side accepts: params and results are JSON
/// bounded by the request body limit and the memory cap.
fn max_header_bytes(config: &RuntimeConfig) -> u64 {
    config.memory_limit_bytes.saturating_add(16 << 20)
}

/// The largest native code a child accepts.
const MAX_NATIVE_BYTES: u64 = 1 << 30;

/// What a child needs to build an engine like the host's: every setting
/// that shapes compiled code or an execution, nothing else.
#[derive(Serialize, Deserialize)]
struct Start {
    no_pooling: bool,
    max_instances: u32,
    memory_limit_bytes: u64,
    default_timeout: Option<Duration>,
    max_timeout: Duration,
    pool_memory_keep_resident: usize,
    pool_table_keep_resident: usize,
    pool_pagemap_scan: PagemapScan,
    pool_decommit_batch: u32,
    pool_warm_slots: u32,
    epoch_tick: Duration,
    output_limit_bytes: usize,
    loaded_components_max_bytes: u64,
}

impl Start {
    fn of(config: &RuntimeConfig) -> Self {
        Self {
            no_pooling: config.no_pooling,
            max_instances: config.max_instances,
            memory_limit_bytes: config.memory_limit_bytes,
            default_timeout: config.default_timeout,
            max_timeout: config.max_timeout,
            pool_memory_keep_resident: config.pool_memory_keep_resident,
            pool_table_keep_resident: config.pool_table_keep_resident,
            pool_pagemap_scan: config.pool_pagemap_scan,
            pool_decommit_batch: config.pool_decommit_batch,
            pool_warm_slots: config.pool_warm_slots,
            epoch_tick: config.epoch_tick,
            output_limit_bytes: config.output_limit_bytes,
            loaded_components_max_bytes: config.loaded_components_max_bytes,
        }
    }

    /// The child's runtime settings: the host's for the engine and the
    /// executions; no warm instances, no compiler, no AOT cache, no
    /// policy, no fair shares (the host keeps those), no processes of its
    /// own.
    fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            no_pooling: self.no_pooling,
            capability_policy: None,
            max_instances: self.max_instances,
            memory_limit_bytes: self.memory_limit_bytes,
            default_timeout: self.default_timeout,
            max_timeout: self.max_timeout,
            slot_wait: Duration::from_secs(1),
            caller_slot_share: 1.0,
            warm_instances: 0,
            warm_instance_uses: 1,
            warm_instance_idle: Duration::from_secs(1),
            pool_memory_keep_resident: self.pool_memory_keep_resident,
            pool_table_keep_resident: self.pool_table_keep_resident,
            pool_pagemap_scan: self.pool_pagemap_scan,
            pool_decommit_batch: self.pool_decommit_batch,
            pool_warm_slots: self.pool_warm_slots,
            epoch_tick: self.epoch_tick,
            output_limit_bytes: self.output_limit_bytes,
            loaded_components_max_bytes: self.loaded_components_max_bytes,
            compile_cache_bytes: 0,
            shared_compile_cache: None,
            aot_cache_dir: None,
            integrity_key: crate::integrity::IntegrityKey::default(),
            execution_processes: Some(0),
            execution_process_program: PathBuf::new(),
            execution_process_log_json: false,
        }
    }
}

/// What the host sends a child after [`Start`].
#[derive(Serialize, Deserialize)]
enum ToChild {
    Execute(Box<Request>),
    /// The host stopped waiting for this execution (its caller went away):
    /// the child drops it, instance and all, as the host would its own.
    Cancel {
        id: u64,
    },
}

/// One execution for a child. `native` (the blob of the frame) comes with
/// it when the child answered [`Reply::NotLoaded`] before.
#[derive(Clone, Serialize, Deserialize)]
struct Request {
    id: u64,
    digest: Digest,
    invocation: Invocation,
    timeout: Duration,
}

/// The child's first frame, once its engine is built and it is confined.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Ready {
    /// Landlock's status for the child: `FullyEnforced`,
    /// `PartiallyEnforced` or `NotEnforced`.
    pub landlock: String,
    /// Whether the child's own check found the file system closed: opening
    /// `/` and `/etc/passwd` failed.
    pub files_closed: bool,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    id: u64,
    reply: Reply,
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Done(Result<Execution, WireError>),
    /// The child has no such function (never sent, or evicted): the host
    /// sends the request again with the native code.
    NotLoaded,
}

/// [`Error`] as it crosses the socket.
#[derive(Serialize, Deserialize)]
enum WireError {
    Overloaded { waited: Duration },
    Timeout(Duration),
    OutOfMemory { limit_bytes: u64 },
    Guest(GuestError),
    Trap { message: String },
    InvalidResult(String),
    InvalidComponent(String),
    Internal(String),
}

impl From<Error> for WireError {
    fn from(error: Error) -> Self {
        match error {
            Error::Overloaded { waited } => WireError::Overloaded { waited },
            Error::Timeout(limit) => WireError::Timeout(limit),
            Error::OutOfMemory { limit_bytes } => WireError::OutOfMemory { limit_bytes },
            Error::Guest(guest) => WireError::Guest(guest),
            Error::Trap { message } => WireError::Trap { message },
            Error::InvalidResult(text) => WireError::InvalidResult(text),
            Error::InvalidComponent(e) => WireError::InvalidComponent(format!("{e:#}")),
            // The child takes no shares and serves one world: these only
            // reach it if the host has a bug.
            other @ (Error::CallerAtShare { .. } | Error::WrongWorld(_) | Error::Internal(_)) => {
                WireError::Internal(format!("{other}"))
            }
        }
    }
}

impl From<WireError> for Error {
    fn from(error: WireError) -> Self {
        match error {
            WireError::Overloaded { waited } => Error::Overloaded { waited },
            WireError::Timeout(limit) => Error::Timeout(limit),
            WireError::OutOfMemory { limit_bytes } => Error::OutOfMemory { limit_bytes },
            WireError::Guest(guest) => Error::Guest(guest),
            WireError::Trap { message } => Error::Trap { message },
            WireError::InvalidResult(text) => Error::InvalidResult(text),
            WireError::InvalidComponent(text) => Error::InvalidComponent(anyhow::anyhow!(text)),
            WireError::Internal(text) => {
                Error::Internal(anyhow::anyhow!("in an execution process: {text}"))
            }
        }
    }
}

/// One frame: a JSON header and a blob, each preceded by its length.
fn frame(header: &impl Serialize, blob: &[u8]) -> Vec<u8> {
    let header = serde_json::to_vec(header).expect("the protocol's types serialize");
    let mut frame = Vec::with_capacity(16 + header.len() + blob.len());
    frame.extend_from_slice(&(header.len() as u64).to_le_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&(blob.len() as u64).to_le_bytes());
    frame.extend_from_slice(blob);
    frame
}

/// Reads one frame; `None` at a clean end of the stream. A length past
/// its bound is an error, never an allocation.
async fn read_frame(
    reader: &mut OwnedReadHalf,
    max_header: u64,
    max_blob: u64,
) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let header_len = match reader.read_u64_le().await {
        Ok(len) => len,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    anyhow::ensure!(header_len <= max_header, "a header of {header_len} bytes");
    let mut header = vec![0; header_len as usize];
    reader.read_exact(&mut header).await?;
    let blob_len = reader.read_u64_le().await?;
    anyhow::ensure!(blob_len <= max_blob, "a blob of {blob_len} bytes");
    let mut blob = vec![0; blob_len as usize];
    reader.read_exact(&mut blob).await?;
    Ok(Some((header, blob)))
}

/// Writes the frames handed to it until every sender is gone or the
/// socket fails; then the stream closes, which tells the other side.
fn start_writer(mut writer: OwnedWriteHalf) -> mpsc::UnboundedSender<Vec<u8>> {
    let (frames, mut next) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(frame) = next.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    frames
}

// ---------------------------------------------------------------------
// The host's side.

/// The host's execution processes: started on first use, started again
/// when one dies.
pub struct ExecutionProcesses {
    program: PathBuf,
    log_json: bool,
    start: Vec<u8>,
    max_header: u64,
    children: Vec<Mutex<Option<Arc<Child>>>>,
    next_id: AtomicU64,
    /// Children started, for the metrics and the tests.
    started: AtomicU64,
    /// The newest child's report of its confinement.
    ready: Arc<Mutex<Option<Ready>>>,
    /// When a child last failed to start: no other is tried for
    /// [`RETRY_START_AFTER`] (the host runs the executions itself).
    failed_start: Mutex<Option<Instant>>,
    /// Native code serialized for the children, kept a little while: the
    /// first executions of a function on new children, often a burst,
    /// serialize it once.
    serialized: moka::future::Cache<Digest, Arc<Vec<u8>>>,
}

/// How long the host runs fresh instances itself after a child failed to
/// start, before it tries again.
const RETRY_START_AFTER: Duration = Duration::from_secs(10);

/// Counters of the execution processes.
#[derive(Clone, Debug, Default)]
pub struct ProcessStats {
    /// Children started since the host started (a restarted child counts
    /// again).
    pub started: u64,
    /// How the newest child found its confinement, once it reported.
    pub ready: Option<Ready>,
    /// The process ids of the children running now.
    pub pids: Vec<u32>,
}

/// One child and its socket.
struct Child {
    process: Mutex<tokio::process::Child>,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>,
    in_flight: AtomicUsize,
    alive: Arc<AtomicBool>,
}

impl Child {
    /// Gives the child up: every execution waiting on it fails at once.
    fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
        if let Ok(mut process) = self.process.lock() {
            let _ = process.start_kill();
        }
        self.waiting.lock().expect("not poisoned").clear();
    }
}

/// An execution sent to a child and not answered yet.
struct Pending<'a> {
    child: &'a Child,
    id: u64,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.child
                .waiting
                .lock()
                .expect("not poisoned")
                .remove(&self.id);
            let _ = self
                .child
                .frames
                .send(frame(&ToChild::Cancel { id: self.id }, &[]));
        }
    }
}

/// Counts an execution in flight on a child for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ExecutionProcesses {
    /// `None` when the settings ask for none.
    pub fn new(config: &RuntimeConfig) -> Option<Self> {
        let count = match config.execution_processes {
            Some(0) => return None,
            Some(count) => count as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Some(Self {
            program: config.execution_process_program.clone(),
            log_json: config.execution_process_log_json,
            start: frame(&Start::of(config), &[]),
            max_header: max_header_bytes(config),
            children: (0..count).map(|_| Mutex::new(None)).collect(),
            next_id: AtomicU64::new(1),
            started: AtomicU64::new(0),
            ready: Arc::new(Mutex::new(None)),
            failed_start: Mutex::new(None),
            serialized: moka::future::Cache::builder()
                // Weighed in KiB; at most 256 MiB of native code.
                .max_capacity(256 << 10)
                .weigher(|_, code: &Arc<Vec<u8>>| {
                    u32::try_from(code.len().div_ceil(1024)).unwrap_or(u32::MAX)
                })
                .time_to_idle(Duration::from_secs(30))
                .build(),
        })
    }

    /// Whether an execution in a fresh instance of this function runs in
    /// a child: a large component of the `lambda:function` world.
    pub fn take(function: &LoadedFunction) -> bool {
        function.component_bytes >= MIN_COMPONENT_BYTES
            && matches!(function.entry, Entry::Function(_))
    }

    pub fn stats(&self) -> ProcessStats {
        ProcessStats {
            started: self.started.load(Ordering::Relaxed),
            ready: self.ready.lock().expect("not poisoned").clone(),
            pids: self
                .children
                .iter()
                .filter_map(|slot| {
                    let slot = slot.lock().expect("not poisoned");
                    let child = slot.as_ref()?;
                    if !child.alive.load(Ordering::SeqCst) {
                        return None;
                    }
                    child.process.lock().expect("not poisoned").id()
                })
                .collect(),
        }
    }

    /// Runs one execution in the least busy child. `None`: no child could
    /// be started, and the caller runs it itself.
    pub async fn run(
        &self,
        function: &LoadedFunction,
        invocation: &Invocation,
        timeout: Duration,
    ) -> Option<Result<Execution, Error>> {
        let child = self.least_busy()?;
        child.in_flight.fetch_add(1, Ordering::SeqCst);
        let _in_flight = InFlight(&child.in_flight);
        let mut native: Option<Arc<Vec<u8>>> = None;
        loop {
            let request = Request {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                digest: function.digest,
                invocation: Invocation {
                    // A child keeps no instance.
                    warm_version: None,
                    ..invocation.clone()
                },
                timeout,
            };
            let sent = native.as_deref().map_or(&[][..], Vec::as_slice);
            match self.call(&child, &request, sent, timeout).await {
                Ok(Reply::Done(done)) => return Some(done.map_err(Error::from)),
                Ok(Reply::NotLoaded) if native.is_none() => {
                    let serialized = self
                        .serialized
                        .try_get_with(function.digest, native_code(function))
                        .await;
                    match serialized {
                        Ok(code) => native = Some(code),
                        Err(e) => return Some(Err(Error::copy_of(&e))),
                    }
                }
                Ok(Reply::NotLoaded) => {
                    return Some(Err(Error::Internal(anyhow::anyhow!(
                        "an execution process did not keep the native code it was sent"
                    ))));
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Sends one request and waits for its answer, at most the deadline
    /// and a grace.
    async fn call(
        &self,
        child: &Child,
        request: &Request,
        native: &[u8],
        timeout: Duration,
    ) -> Result<Reply, Error> {
        let (answer, answered) = oneshot::channel();
        child
            .waiting
            .lock()
            .expect("not poisoned")
            .insert(request.id, answer);
        if child
            .frames
            .send(frame(&ToChild::Execute(Box::new(request.clone())), native))
            .is_err()
        {
            child.kill();
            return Err(gone());
        }
        // Dropped unanswered (the caller went away, so this future was
        // dropped): the child is told to drop the execution too, or it
        // would run to its deadline outside the caller's share of slots.
        let mut pending = Pending {
            child,
            id: request.id,
            answered: false,
        };
        let outcome = tokio::time::timeout(timeout + ANSWER_GRACE, answered).await;
        pending.answered = true;
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(gone()),
            Err(_) => {
                tracing::error!(
                    ?timeout,
                    "an execution process did not answer past the deadline: killed"
                );
                child.kill();
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// The child with the fewest executions in flight, started if it is
    /// not running.
    fn least_busy(&self) -> Option<Arc<Child>> {
        let mut best: Option<Arc<Child>> = None;
        for slot in &self.children {
            let mut slot = slot.lock().expect("not poisoned");
            let running = slot
                .as_ref()
                .is_some_and(|child| child.alive.load(Ordering::SeqCst));
            if !running {
                let mut failed_start = self.failed_start.lock().expect("not poisoned");
                if failed_start.is_some_and(|at| at.elapsed() < RETRY_START_AFTER) {
                    continue;
                }
                match self.spawn() {
                    Ok(child) => *slot = Some(Arc::new(child)),
                    Err(e) => {
                        tracing::error!(
                            "cannot start an execution process, running executions in the host for {RETRY_START_AFTER:?}: {e:#}"
                        );
                        *failed_start = Some(Instant::now());
                        continue;
                    }
                }
            }
            let Some(child) = slot.as_ref() else { continue };
            let busy = child.in_flight.load(Ordering::SeqCst);
            if best
                .as_ref()
                .is_none_or(|best| busy < best.in_flight.load(Ordering::SeqCst))
            {
                best = Some(child.clone());
            }
        }
        best
    }

    fn spawn(&self) -> anyhow::Result<Child> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg(COMMAND)
            .args(self.log_json.then_some(LOG_JSON_ARG))
            // Nothing of the host's environment: no secret, no store URL.
            .env_clear()
            .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // Every descriptor of the host beyond the three standard
                // ones closes at exec, whether or not it was opened
                // CLOEXEC (marked, not closed now: the standard library
                // reports a failed exec through one of them).
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                Ok(())
            });
        }
        let process = command
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.started.fetch_add(1, Ordering::Relaxed);
        ours.set_nonblocking(true)?;
        let (mut reader, writer) = tokio::net::UnixStream::from_std(ours)?.into_split();
        let frames = start_writer(writer);
        let _ = frames.send(self.start.clone());
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (max_header, ready) = (self.max_header, self.ready.clone());
        let (waiting_for_reader, alive_for_reader) = (waiting.clone(), alive.clone());
        tokio::spawn(async move {
            let end = read_answers(&mut reader, max_header, &waiting_for_reader, &ready).await;
            if alive_for_reader.swap(false, Ordering::SeqCst) {
                match end {
                    Ok(()) => tracing::error!("an execution process exited"),
                    Err(e) => tracing::error!("an execution process failed: {e:#}"),
                }
            }
            // Every execution still waiting fails now.
            waiting_for_reader.lock().expect("not poisoned").clear();
        });
        Ok(Child {
            process: Mutex::new(process),
            frames,
            waiting,
            in_flight: AtomicUsize::new(0),
            alive,
        })
    }
}

/// Hands each answer to its waiting execution, until the child's stream
/// ends or says something the protocol does not.
async fn read_answers(
    reader: &mut OwnedReadHalf,
    max_header: u64,
    waiting: &Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    ready: &Mutex<Option<Ready>>,
) -> anyhow::Result<()> {
    let Some((header, _)) = read_frame(reader, max_header, 0).await? else {
        anyhow::bail!("the process ended before it was ready");
    };
    let report: Ready = serde_json::from_slice(&header).context("its first frame")?;
    if !report.files_closed {
        tracing::warn!(
            landlock = %report.landlock,
            "an execution process is not confined (Landlock missing or off): the wasm sandbox is its only wall"
        );
    }
    *ready.lock().expect("not poisoned") = Some(report);
    while let Some((header, _)) = read_frame(reader, max_header, 0).await? {
        let answer: Answer = serde_json::from_slice(&header).context("an answer")?;
        let waiter = waiting.lock().expect("not poisoned").remove(&answer.id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(answer.reply);
        }
    }
    Ok(())
}

fn gone() -> Error {
    Error::Internal(anyhow::anyhow!(
        "the execution process running this execution exited"
    ))
}

/// The function's compiled code, serialized for a child (tens of
/// milliseconds for an interpreter; once per child and function).
async fn native_code(function: &LoadedFunction) -> Result<Arc<Vec<u8>>, Error> {
    let Entry::Function(pre) = &function.entry else {
        return Err(Error::WrongWorld(
            "only lambda:function components run in execution processes",
        ));
    };
    let component = pre.instance_pre().component().clone();
    tokio::task::spawn_blocking(move || component.serialize())
        .await
        .map_err(|e| Error::Internal(e.into()))?
        .map(Arc::new)
        .map_err(|e| Error::Internal(anyhow::Error::from(e).context("serializing native code")))
}

// ---------------------------------------------------------------------
// The child's side.

/// The entry point of `lambda-host execution-process`: serves the host on
/// fd 0 until it closes. Single-threaded but for the engine's epoch
/// ticker.
pub fn main() -> ExitCode {
    // Warnings and errors on the host's stderr, in the host's format.
    crate::log_output::init(
        std::io::stderr,
        tracing_subscriber::EnvFilter::new("warn"),
        std::env::args_os().any(|arg| arg == LOG_JSON_ARG),
        false,
    );
    let executor = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(executor) => executor,
        Err(e) => {
            eprintln!("execution process: cannot start its executor: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: fd 0 is the socket the host gave this process, owned by
    // nothing else here.
    let socket = unsafe { std::os::unix::net::UnixStream::from_raw_fd(0) };
    match executor.block_on(serve(socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("execution process: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(socket: std::os::unix::net::UnixStream) -> anyhow::Result<()> {
    socket.set_nonblocking(true)?;
    let (mut reader, writer) = tokio::net::UnixStream::from_std(socket)?.into_split();
    let (header, _) = read_frame(&mut reader, 1 << 20, 0)
        .await?
        .context("the host closed the socket before it said how to start")?;
    let start: Start = serde_json::from_slice(&header).context("the start frame")?;
    let config = start.runtime_config();
    // Before any thread exists (the engine's ticker is the first):
    // Landlock binds only the threads that exist from then on. The engine
    // reads these two files as it is built (swap, and the pages a memory
    // touched), nothing else.
    let landlock = crate::sandbox::confine::confine_to_files(&[
        Path::new("/proc/swaps"),
        Path::new("/proc/self/pagemap"),
    ])?;
    let files_closed =
        std::fs::File::open("/").is_err() && std::fs::File::open("/etc/passwd").is_err();
    let runtime = Arc::new(Runtime::new(&config)?);
    let frames = start_writer(writer);
    let ready = Ready {
        landlock: format!("{landlock:?}"),
        files_closed,
    };
    let _ = frames.send(frame(&ready, &[]));
    let max_header = max_header_bytes(&config);
    // The executions running, to drop one the host cancels.
    let running: Arc<Mutex<HashMap<u64, tokio::task::AbortHandle>>> = Arc::default();
    while let Some((header, native)) = read_frame(&mut reader, max_header, MAX_NATIVE_BYTES).await?
    {
        let request = match serde_json::from_slice(&header).context("a frame")? {
            ToChild::Execute(request) => *request,
            ToChild::Cancel { id } => {
                if let Some(execution) = running.lock().expect("not poisoned").remove(&id) {
                    execution.abort();
                }
                continue;
            }
        };
        // Loaded before the next frame is read, so executions of this
        // function that follow find it; sent again by a request of a burst
        // that found it missing too, it is loaded once.
        if !native.is_empty()
            && runtime.loaded(request.digest).await.is_none()
            && let Err(e) = runtime.load_native(request.digest, &native).await
        {
            let answer = Answer {
                id: request.id,
                reply: Reply::Done(Err(e.into())),
            };
            let _ = frames.send(frame(&answer, &[]));
            continue;
        }
        let id = request.id;
        let (runtime, frames, finished) = (runtime.clone(), frames.clone(), running.clone());
        // Registered before the task can run (this is the process's only
        // executor thread), so a cancel that follows finds it.
        let mut running_now = running.lock().expect("not poisoned");
        let execution = tokio::spawn(async move {
            let reply = match runtime.loaded(request.digest).await {
                None => Reply::NotLoaded,
                Some(function) => Reply::Done(
                    runtime
                        .invoke(&function, &request.invocation, Some(request.timeout))
                        .await
                        .map_err(WireError::from),
                ),
            };
            finished.lock().expect("not poisoned").remove(&id);
            let _ = frames.send(frame(&Answer { id, reply }, &[]));
        });
        running_now.insert(id, execution.abort_handle());
    }
    Ok(())
}
