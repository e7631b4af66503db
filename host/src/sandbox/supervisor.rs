//! `lambda-host sandbox-exec`: runs one [`Job`] confined and reports how it
//! ended.
//!
//! It reads the job as JSON on stdin, starts the program confined
//! ([`super::confine`]), and then, every [`TICK`], reads the program's
//! output, measures the tree ([`super::tree`]) and checks each limit. The
//! run ends when the program exits, a limit is reached, the host sends
//! SIGTERM (a cancelled build), or the host dies (the parent-death signal
//! is SIGTERM too); in every case the whole tree is killed and reaped
//! before the report is written as JSON on stdout.
//!
//! This runs before the async runtime exists and never starts a thread:
//! it must be single-threaded to create a user namespace and to do
//! anything but raw system calls in the child it forks.

use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::cgroup::TaskGroup;
use super::confine::{self, Confinement};
use super::tree;
use super::{
    Confinement as Layers, EXIT_UNAVAILABLE, Isolation, Job, KernelTaskCap, Limit, Report,
};

/// How often the tree is measured and the limits checked.
const TICK: Duration = Duration::from_millis(20);
/// How often the scratch directory's size is measured (a walk of it).
const DISK_TICK: Duration = Duration::from_millis(250);
/// The largest job accepted on stdin.
const MAX_JOB_BYTES: u64 = 1 << 20;

/// Set by SIGTERM: the host cancelled the build, or died.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The entry point of `lambda-host sandbox-exec`.
pub fn main() -> ExitCode {
    match run() {
        Ok(report) => {
            let mut stdout = std::io::stdout().lock();
            if serde_json::to_writer(&mut stdout, &report).is_err() || stdout.flush().is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Unavailable(reason)) => {
            eprintln!("{reason:#}");
            ExitCode::from(EXIT_UNAVAILABLE as u8)
        }
        Err(Failure::Internal(error)) => {
            eprintln!("sandbox supervisor: {error:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// This machine cannot confine the job.
    Unavailable(anyhow::Error),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Internal(error)
    }
}

fn run() -> Result<Report, Failure> {
    // SAFETY: installing an async-signal-safe handler (one atomic store)
    // and prctl calls with integer arguments, before any thread exists.
    let parent = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_stop as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
        // Orphans of the tree come to us, not to init.
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
        libc::getppid()
    };
    if parent == 1 {
        return Err(anyhow::anyhow!("the host is gone").into());
    }

    let mut request = Vec::new();
    std::io::stdin()
        .take(MAX_JOB_BYTES)
        .read_to_end(&mut request)
        .context("reading the job")?;
    let job: Job = serde_json::from_slice(&request).context("the job is not valid")?;
    let isolate = job.isolation == Isolation::Required;

    let mut layers = Layers::default();
    if isolate && job.namespaces {
        layers.namespaces = enter_namespaces();
    }
    if isolate {
        layers.landlock_abi =
            confine::check_kernel(&layers.namespaces).map_err(Failure::Unavailable)?;
        layers.seccomp = true;
    }
    // Past the kernel check, a failure is the host's (a path of the job
    // that does not exist, a program that does not start), not the
    // machine's inability to confine.
    let mut prepared = Confinement::prepare(&job, isolate).context("preparing the confinement")?;
    // In a new PID namespace the child's parent is outside it, and
    // getppid() there says 0: the check is only possible without one.
    if layers.namespaces.iter().any(|n| n == "pid") {
        prepared.skip_parent_check();
    }
    // A kernel cap on the tree's processes, above the tasks limit: the
    // sampling below names the limit, the kernel stops a fork bomb that
    // grows between two samples (see cgroup.rs).
    let kernel_cap = job.limits.tasks.saturating_mul(2).saturating_add(2);
    let task_group = TaskGroup::create(kernel_cap);
    // SAFETY: getuid(2) cannot fail.
    let uid = unsafe { libc::getuid() };
    if let Some(group) = &task_group {
        prepared.join_cgroup(group.procs_fd());
        layers.kernel_task_cap = Some(KernelTaskCap::Cgroup);
    } else if layers.namespaces.iter().any(|n| n == "user") && uid != 0 {
        // The kernel exempts root's processes from RLIMIT_NPROC: the cap
        // holds for an unprivileged host only (root has cgroups).
        prepared.cap_processes(u64::from(kernel_cap));
        layers.kernel_task_cap = Some(KernelTaskCap::Rlimit);
    }

    let started = Instant::now();
    let mut command = Command::new(&job.program);
    command
        .args(&job.args)
        .current_dir(&job.cwd)
        .env_clear()
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child of this single-threaded
    // process, where any code may run before exec.
    unsafe {
        command.pre_exec(move || prepared.apply());
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {} confined", job.program.display()))?;
    let child_pid = child.id() as i32;
    let mut stdout = Capture::new(child.stdout.take().expect("piped"), job.capture_bytes);
    let mut stderr = Capture::new(child.stderr.take().expect("piped"), job.capture_bytes);

    let supervisor = std::process::id() as i32;
    // SAFETY: sysconf with a valid name.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK).max(1) as u64 };
    let limits = job.limits;
    let deadline = started + limits.wall;
    let mut report = Report {
        confinement: layers,
        ..Report::default()
    };
    let mut next_disk_check = started;
    let mut status = None;
    while status.is_none() {
        poll_readable(&[&stdout, &stderr], TICK);
        stdout.read_available();
        stderr.read_available();
        for (pid, raw) in tree::reap_all().statuses {
            if pid == child_pid {
                status = Some(raw);
            }
        }
        if status.is_some() {
            break;
        }
        if STOP.load(Ordering::SeqCst) {
            report.cancelled = true;
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            report.limit = Some(Limit::Time);
            break;
        }
        let pids = tree::descendants(supervisor);
        // Counting is cheap, measuring each process is not: a tree that
        // is already too big ends before it is measured.
        if pids.len() > limits.tasks as usize {
            report.peak_tasks = report.peak_tasks.max(pids.len() as u32);
            report.limit = Some(Limit::Tasks);
            break;
        }
        let usage = tree::usage(&pids);
        let cpu_ms = (usage.cpu_ticks * 1000 / ticks_per_second) + reaped_children_cpu_ms();
        report.peak_memory_bytes = report.peak_memory_bytes.max(usage.memory_bytes);
        report.peak_tasks = report.peak_tasks.max(usage.tasks);
        report.cpu_ms = report.cpu_ms.max(cpu_ms);
        if usage.memory_bytes > limits.memory_bytes {
            report.limit = Some(Limit::Memory);
        } else if usage.tasks > limits.tasks {
            report.limit = Some(Limit::Tasks);
        } else if cpu_ms > limits.cpu.as_millis() as u64 {
            report.limit = Some(Limit::Cpu);
        } else if now >= next_disk_check {
            next_disk_check = now + DISK_TICK;
            if tree::disk_usage(&job.scratch) > limits.output_bytes {
                report.limit = Some(Limit::Output);
            }
        }
        if report.limit.is_some() {
            break;
        }
    }
    // Whatever ended the run, nothing of the tree outlives it.
    // The child leads its own session and process group (it called setsid
    // before exec), so its pid is the group's id.
    for (pid, raw) in tree::kill_all(supervisor, child_pid) {
        if pid == child_pid && status.is_none() {
            status = Some(raw);
        }
    }
    // A fork or thread the kernel refused may have ended the program
    // before a sample saw the tree over its limit.
    if report.limit.is_none() && task_group.as_ref().is_some_and(TaskGroup::cap_reached) {
        report.limit = Some(Limit::Tasks);
    }
    // The tree is reaped: its cgroup can go.
    drop(task_group);
    // Every writer is dead: the pipes hold what is left, then end.
    stdout.read_to_end();
    stderr.read_to_end();
    // What the tree wrote in its last moments counts too.
    if report.limit.is_none() && tree::disk_usage(&job.scratch) > limits.output_bytes {
        report.limit = Some(Limit::Output);
    }

    // Reaped by now: by the loop, or by kill_all.
    let status = status.unwrap_or(libc::SIGKILL);
    if libc::WIFEXITED(status) {
        report.exit_code = Some(libc::WEXITSTATUS(status));
    } else if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        report.signal = Some(signal);
        // The kernel's own limits end a process with a signal: the CPU
        // rlimit with SIGXCPU (or SIGKILL past its hard limit), the file
        // size rlimit with SIGXFSZ.
        if report.limit.is_none() {
            report.limit = match signal {
                libc::SIGXCPU => Some(Limit::Cpu),
                libc::SIGXFSZ => Some(Limit::Output),
                _ => None,
            };
        }
    }
    report.cpu_ms = report.cpu_ms.max(reaped_children_cpu_ms());
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    (report.stdout, report.stdout_truncated) = stdout.finish();
    (report.stderr, report.stderr_truncated) = stderr.finish();
    Ok(report)
}

/// Creates user, PID, network, IPC and UTS namespaces for the child to
/// start in, mapping our own user and group to themselves. Returns the
/// names of those created: none where the kernel or a container's seccomp
/// profile refuses.
fn enter_namespaces() -> Vec<String> {
    // SAFETY: getuid/getgid/unshare take no pointers.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    if unsafe { libc::unshare(flags) } != 0 {
        return Vec::new();
    }
    let maps = [
        ("/proc/self/setgroups", "deny".to_owned()),
        ("/proc/self/uid_map", format!("{uid} {uid} 1")),
        ("/proc/self/gid_map", format!("{gid} {gid} 1")),
    ];
    for (path, contents) in maps {
        if let Err(e) = std::fs::write(path, contents) {
            // Unmapped, we would act as the overflow user: stop instead.
            eprintln!("sandbox supervisor: writing {path}: {e}");
            std::process::exit(1);
        }
    }
    ["user", "pid", "net", "ipc", "uts"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// CPU time of the children this process has reaped (and of what they
/// reaped), in milliseconds.
fn reaped_children_cpu_ms() -> u64 {
    // SAFETY: getrusage with a pointer to a live local.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// Waits until one of the pipes has data or `timeout` passes.
fn poll_readable(captures: &[&Capture], timeout: Duration) {
    let mut fds: Vec<libc::pollfd> = captures
        .iter()
        .filter(|c| !c.closed)
        .map(|c| libc::pollfd {
            fd: c.pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if fds.is_empty() {
        std::thread::sleep(timeout);
        return;
    }
    // SAFETY: a pointer to `fds.len()` live pollfd structures.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        );
    }
}

/// One of the child's output pipes, of which only the last bytes are kept.
struct Capture {
    pipe: std::fs::File,
    kept: Vec<u8>,
    limit: usize,
    truncated: bool,
    closed: bool,
}

impl Capture {
    fn new(pipe: impl Into<std::os::fd::OwnedFd>, limit: usize) -> Self {
        let pipe = std::fs::File::from(pipe.into());
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(pipe.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(pipe.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Self {
            pipe,
            kept: Vec::new(),
            limit,
            truncated: false,
            closed: false,
        }
    }

    /// Reads what the pipe holds now.
    fn read_available(&mut self) {
        let mut buffer = [0u8; 64 << 10];
        while !self.closed {
            match self.pipe.read(&mut buffer) {
                Ok(0) => self.closed = true,
                Ok(n) => self.keep(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // WouldBlock: nothing more for now. Other errors: treat the
                // pipe as finished.
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        self.closed = true;
                    }
                    return;
                }
            }
        }
    }

    /// Reads until the pipe ends, for at most a second: every writer has
    /// been killed, so it ends at once unless a descriptor leaked.
    fn read_to_end(&mut self) {
        let until = Instant::now() + Duration::from_secs(1);
        while !self.closed && Instant::now() < until {
            self.read_available();
            if !self.closed {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        self.kept.extend_from_slice(bytes);
        if self.kept.len() > 2 * self.limit {
            let excess = self.kept.len() - self.limit;
            self.kept.drain(..excess);
            self.truncated = true;
        }
    }

    fn finish(mut self) -> (String, bool) {
        if self.kept.len() > self.limit {
            let excess = self.kept.len() - self.limit;
            self.kept.drain(..excess);
            self.truncated = true;
        }
        (
            String::from_utf8_lossy(&self.kept).into_owned(),
            self.truncated,
        )
    }
}
