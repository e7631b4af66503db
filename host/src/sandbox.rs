//! The build sandbox: the operating-system boundary around every toolchain
//! run.
//!
//! Building untrusted source is running untrusted code: rustc expands
//! macros and loads proc macros that read files, componentize-py and
//! componentize-js execute a module's top-level code to snapshot it. A
//! source guard sees only what is written, never what it expands to, so
//! the boundary has to be the kernel's.
//!
//! Each toolchain run is a [`Job`]: a program, its arguments and
//! environment, the paths it may read and the one it may write, and its
//! [`Limits`]. The host hands the job to a *supervisor*, a process of its
//! own binary (`lambda-host sandbox-exec`, see [`supervisor`]), which
//! starts the program as its child confined by ([`confine`]):
//!
//! - **Landlock**: the file system is reduced to the paths of the job
//!   (the toolchain read-only, the scratch directory read-write; not the
//!   data directory, home directories, `/proc`, `/sys`, `/tmp` or the rest
//!   of `/etc`); TCP is refused; signals and abstract UNIX sockets cannot
//!   reach outside the sandbox; processes outside it cannot be traced.
//! - **seccomp**: no sockets at all (UDP and named UNIX sockets included,
//!   which Landlock does not cover yet), no io_uring, ptrace, bpf, keyrings,
//!   mounts, namespaces, module loading or other kernel surface no build needs.
//! - **no privileges**: `no_new_privs`, every capability dropped (also when
//!   the host runs as root), its own session, a cleared environment.
//! - **namespaces** where the kernel lets an unprivileged process create
//!   them (user, PID, network, IPC, UTS): the build is PID 1 of its own PID
//!   namespace and has no network interface. Containers with the default
//!   seccomp profile refuse these; Landlock's scoping then keeps signals in.
//!
//! The supervisor stays outside the confinement. It is the tree's
//! subreaper, so no descendant can escape it by daemonizing; it measures
//! the tree (memory, CPU time, tasks, bytes written) every few milliseconds
//! and kills all of it at the first limit, at the deadline, when the host
//! cancels, or when the host dies. Output is captured up to a bound.
//!
//! Why a separate process and not `pre_exec` in the host: the host is
//! multithreaded, and after `fork` only async-signal-safe calls are
//! allowed, while building Landlock rules and seccomp filters allocates.
//! The supervisor is single-threaded, so the child it forks may do
//! anything before `exec`; and creating a user namespace requires a
//! single-threaded process.
//!
//! Where the kernel lacks what confinement needs (Landlock, or both
//! Landlock's signal scoping and PID namespaces), the run fails with
//! [`SandboxError::Unavailable`], never silently unconfined; an operator
//! may turn confinement off for a single-user machine
//! ([`Isolation::Off`]), which keeps the limits.

mod cgroup;
pub mod confine;
pub mod supervisor;
mod tree;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The subcommand of the host's binary that runs the supervisor.
pub const SUPERVISOR_COMMAND: &str = "sandbox-exec";

/// Whether builds are confined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Confined, or refused where the kernel cannot confine.
    #[default]
    Required,
    /// Not confined: only for a machine whose every user is trusted. The
    /// limits still hold.
    Off,
}

impl std::str::FromStr for Isolation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "required" | "on" => Ok(Self::Required),
            "off" => Ok(Self::Off),
            other => Err(format!("`{other}` is not `required` or `off`")),
        }
    }
}

/// What one build may consume. Each limit, once reached, kills the whole
/// process tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time of the run.
    pub wall: Duration,
    /// CPU time of the whole tree, summed over its processes and threads.
    pub cpu: Duration,
    /// Resident memory of the whole tree.
    pub memory_bytes: u64,
    /// Processes and threads alive at once.
    pub tasks: u32,
    /// Bytes the tree may write: the size of any one file it writes, and
    /// of everything in its scratch directory together.
    pub output_bytes: u64,
}

/// Which limit stopped a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Time,
    Cpu,
    Memory,
    Tasks,
    Output,
}

impl Limit {
    /// The limit's value, as a person reads it.
    pub fn describe(self, limits: &Limits) -> String {
        match self {
            Limit::Time => format!("time limit of {} s", limits.wall.as_secs()),
            Limit::Cpu => format!("CPU time limit of {} s", limits.cpu.as_secs()),
            Limit::Memory => format!("memory limit of {} MiB", limits.memory_bytes >> 20),
            Limit::Tasks => format!("limit of {} processes and threads", limits.tasks),
            Limit::Output => format!("output limit of {} MiB", limits.output_bytes >> 20),
        }
    }

    /// The setting that raises it.
    pub fn setting(self) -> &'static str {
        match self {
            Limit::Time => "LAMBDA_BUILD_TIMEOUT_SECS",
            Limit::Cpu => "LAMBDA_BUILD_CPU_SECS",
            Limit::Memory => "LAMBDA_BUILD_MEMORY_MB",
            Limit::Tasks => "LAMBDA_BUILD_MAX_TASKS",
            Limit::Output => "LAMBDA_BUILD_OUTPUT_MB",
        }
    }
}

/// One confined run: the supervisor reads it as JSON on its stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The working directory: the scratch directory.
    pub cwd: PathBuf,
    /// The whole environment of the program; nothing is inherited.
    pub env: Vec<(String, String)>,
    /// Readable and executable, beneath each path.
    pub read_only: Vec<PathBuf>,
    /// Readable and writable, beneath each path: the scratch directory.
    /// Its total size counts against [`Limits::output_bytes`].
    pub scratch: PathBuf,
    /// Further writable paths, not counted: what a trusted preparation run
    /// fills for later builds. Never set for a user's build.
    pub read_write: Vec<PathBuf>,
    pub limits: Limits,
    pub isolation: Isolation,
    /// Try user, PID, network, IPC and UTS namespaces (used where the
    /// kernel allows them).
    pub namespaces: bool,
    /// How much of stdout and of stderr is kept: the last bytes of each.
    pub capture_bytes: usize,
}

/// How a run ended, as the supervisor reports it on its stdout.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// The program's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended the program, when one did.
    pub signal: Option<i32>,
    /// The limit that stopped the run, if one did.
    pub limit: Option<Limit>,
    /// True when the host cancelled the run.
    pub cancelled: bool,
    /// The last [`Job::capture_bytes`] of stdout and stderr.
    pub stdout: String,
    pub stderr: String,
    /// Whether earlier output was dropped.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// What the tree used at most: resident memory, tasks at once.
    pub peak_memory_bytes: u64,
    pub peak_tasks: u32,
    /// CPU time of the whole tree.
    pub cpu_ms: u64,
    pub elapsed_ms: u64,
    /// The confinement that held: what the host reports and tests check.
    pub confinement: Confinement,
}

impl Report {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && self.limit.is_none() && !self.cancelled
    }
}

/// The layers of confinement a run had.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// The Landlock ABI enforced (0: none).
    pub landlock_abi: i32,
    pub seccomp: bool,
    /// Namespaces the run got: `user`, `pid`, `net`, `ipc`, `uts`.
    pub namespaces: Vec<String>,
    /// What caps the tree's processes in the kernel, beyond the sampling.
    #[serde(default)]
    pub kernel_task_cap: Option<KernelTaskCap>,
}

/// How the kernel refuses a build more processes than its cap (twice the
/// tasks limit: the sampling names the limit, the kernel bounds a fork
/// bomb the sampling cannot catch in time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelTaskCap {
    /// A `pids` cgroup of its own (a host that may create cgroups).
    Cgroup,
    /// `RLIMIT_NPROC`, counted per user namespace (an unprivileged host).
    Rlimit,
}

/// Why a job could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// This machine cannot confine a build; the reason says what is missing.
    #[error("builds cannot be sandboxed on this machine: {0}")]
    Unavailable(String),
    #[error("the build sandbox failed: {0:#}")]
    Internal(anyhow::Error),
}

/// Exit code of the supervisor when confinement is impossible here; its
/// stderr then says why.
pub const EXIT_UNAVAILABLE: i32 = 3;

/// The host's handle on the supervisor binary.
#[derive(Clone, Debug)]
pub struct Sandbox {
    /// The binary that runs `sandbox-exec`: the host's own.
    supervisor: PathBuf,
    isolation: Isolation,
    namespaces: bool,
}

/// How long the host waits past a job's deadline before it stops the
/// supervisor itself (which should have reported long before).
const SUPERVISOR_GRACE: Duration = Duration::from_secs(10);
/// What the host reads of a supervisor's report beyond the captured output
/// (which JSON may escape to six bytes a byte).
const REPORT_OVERHEAD_BYTES: u64 = 64 << 10;

impl Sandbox {
    pub fn new(supervisor: PathBuf, isolation: Isolation, namespaces: bool) -> Self {
        Self {
            supervisor,
            isolation,
            namespaces,
        }
    }

    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The binary that runs the supervisor (readable inside the sandbox for
    /// [`Sandbox::check`]).
    pub fn supervisor(&self) -> &Path {
        &self.supervisor
    }

    /// A job with this sandbox's isolation settings.
    pub fn job(&self, program: PathBuf, scratch: &Path, limits: Limits) -> Job {
        Job {
            program,
            args: Vec::new(),
            cwd: scratch.to_owned(),
            env: Vec::new(),
            read_only: Vec::new(),
            scratch: scratch.to_owned(),
            read_write: Vec::new(),
            limits,
            isolation: self.isolation,
            namespaces: self.namespaces,
            capture_bytes: 64 << 10,
        }
    }

    /// Runs the supervisor's own binary (`--version`) confined, so a host
    /// that cannot confine builds knows it at start, with the reason.
    pub async fn check(&self, scratch: &Path) -> Result<Confinement, SandboxError> {
        let limits = Limits {
            wall: Duration::from_secs(30),
            cpu: Duration::from_secs(30),
            memory_bytes: 512 << 20,
            tasks: 64,
            output_bytes: 1 << 20,
        };
        let mut job = self.job(self.supervisor.clone(), scratch, limits);
        job.args = vec!["--version".to_owned()];
        job.read_only = system_paths();
        job.read_only.push(self.supervisor.clone());
        let report = self.run(&job).await?;
        if !report.succeeded() {
            return Err(SandboxError::Unavailable(format!(
                "a confined test run failed (exit {:?}, signal {:?}): {}",
                report.exit_code,
                report.signal,
                report.stderr.trim()
            )));
        }
        Ok(report.confinement)
    }

    /// Runs a job to its end and reports how it ended. Dropping the future
    /// cancels the run: the supervisor is told to kill the tree.
    pub async fn run(&self, job: &Job) -> Result<Report, SandboxError> {
        let request = serde_json::to_vec(job).map_err(|e| SandboxError::Internal(e.into()))?;
        let mut child = tokio::process::Command::new(&self.supervisor)
            .arg(SUPERVISOR_COMMAND)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the supervisor {}", self.supervisor.display()))
            .map_err(SandboxError::Internal)?;
        // From here on, dropping this future must end the tree: the guard
        // asks the supervisor to (SIGTERM), which kills every process of it.
        let guard = CancelOnDrop(child.id());
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let io = async {
            stdin.write_all(&request).await?;
            drop(stdin);
            let mut report = Vec::new();
            let mut errors = Vec::new();
            let max_report = 2 * 6 * job.capture_bytes as u64 + REPORT_OVERHEAD_BYTES;
            let mut stdout = stdout.take(max_report);
            let mut stderr = stderr.take(64 << 10);
            let (a, b) = tokio::join!(
                stdout.read_to_end(&mut report),
                stderr.read_to_end(&mut errors),
            );
            a?;
            b?;
            let status = child.wait().await?;
            std::io::Result::Ok((status, report, errors))
        };
        let deadline = job.limits.wall + SUPERVISOR_GRACE;
        let (status, report, errors) = match tokio::time::timeout(deadline, io).await {
            Ok(result) => result
                .context("talking to the supervisor")
                .map_err(SandboxError::Internal)?,
            Err(_) => {
                // The guard's SIGTERM on drop makes the supervisor kill the tree.
                return Err(SandboxError::Internal(anyhow::anyhow!(
                    "the supervisor did not report within {deadline:?}"
                )));
            }
        };
        guard.disarm();
        let errors = String::from_utf8_lossy(&errors);
        if status.code() == Some(EXIT_UNAVAILABLE) {
            return Err(SandboxError::Unavailable(errors.trim().to_owned()));
        }
        if !status.success() {
            return Err(SandboxError::Internal(anyhow::anyhow!(
                "the supervisor failed ({status}): {}",
                errors.trim()
            )));
        }
        serde_json::from_slice(&report)
            .context("reading the supervisor's report")
            .map_err(SandboxError::Internal)
    }
}

/// Sends SIGTERM to the supervisor unless disarmed: a cancelled build (a
/// timed-out request, a dropped future) still ends its whole tree. Not
/// SIGKILL: a killed supervisor could not kill the tree.
struct CancelOnDrop(Option<u32>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: kill(2) with a pid of our own child that has not been
            // waited for (wait() only completes on success, which disarms).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

/// What every confined program needs to start: the system's programs and
/// shared libraries, the dynamic loader's cache, and the few files of
/// `/etc` and `/dev` that libc and language runtimes read. Nothing else of
/// `/etc` (no `shadow`, no configuration with credentials), no `/proc`,
/// no `/sys`.
pub fn system_paths() -> Vec<PathBuf> {
    [
        "/usr",
        "/lib",
        "/lib64",
        "/bin",
        "/sbin",
        "/etc/ld.so.cache",
        "/etc/ld.so.conf",
        "/etc/ld.so.conf.d",
        "/etc/localtime",
        "/etc/nsswitch.conf",
        "/etc/ssl/openssl.cnf",
        "/dev/null",
        "/dev/zero",
        "/dev/urandom",
        "/dev/random",
    ]
    .into_iter()
    .map(PathBuf::from)
    .filter(|path| path.exists())
    .collect()
}

/// How long until `deadline`, for a job's wall limit.
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
