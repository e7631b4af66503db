//! What the supervisor's child does to itself between `fork` and `exec`:
//! drop every privilege, give up the file system and the network beyond the
//! job's paths, and close the system calls no build needs.
//!
//! Everything that allocates (opening the paths of the Landlock rules,
//! compiling the seccomp filters) happens in [`Confinement::prepare`], in
//! the supervisor before the fork; [`Prepared::apply`] in the child only
//! makes system calls.

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::path::Path;

use anyhow::{Context as _, bail};
use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible as _, PathBeneath, PathFd, Ruleset,
    RulesetAttr as _, RulesetCreated, RulesetCreatedAttr as _, RulesetStatus, Scope,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{Job, Limits};

/// The open files of each process of a build.
const OPEN_FILES: u64 = 4096;
/// The scheduling priority of a build's processes.
const BUILD_NICENESS: libc::c_int = 10;

/// The newest Landlock ABI this code asks for; the kernel enforces what it
/// knows of it (checked against [`REQUIRED_ABI`] and [`SIGNAL_SCOPE_ABI`]).
const WANTED_ABI: ABI = ABI::V6;
/// Landlock's first ABI: file system rules.
const REQUIRED_ABI: i32 = 1;
/// The ABI that keeps signals and abstract UNIX sockets inside the sandbox
/// (Linux 6.12). Without it, a PID namespace must do that.
pub const SIGNAL_SCOPE_ABI: i32 = 6;

/// The kernel's Landlock ABI version: 0 when Landlock is missing or off.
pub fn landlock_abi() -> i32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    // only returns the version; it takes no pointer it would write through.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    i32::try_from(version).unwrap_or(0).max(0)
}

/// Everything the child applies, built before the fork.
pub struct Prepared {
    /// `None` when isolation is off.
    ruleset: Option<RulesetCreated>,
    filters: Vec<BpfProgram>,
    limits: Limits,
    /// The highest capability number, to empty the bounding set.
    last_capability: u32,
    /// The pid the child's parent must have: the supervisor. `None` in a
    /// new PID namespace, where the parent is outside and reads as 0.
    supervisor: Option<i32>,
    /// The `cgroup.procs` of the run's own cgroup, to join before `exec`.
    cgroup_procs: Option<RawFd>,
    /// `RLIMIT_NPROC`, where the processes of the run's user namespace
    /// are all the run's.
    process_cap: Option<u64>,
}

/// Builds the confinement of a job.
pub struct Confinement;

impl Confinement {
    /// Opens the job's paths and compiles the filters. `isolate` false
    /// prepares only the privilege drop and the limits.
    pub fn prepare(job: &Job, isolate: bool) -> anyhow::Result<Prepared> {
        let last_capability = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(40);
        let (ruleset, filters) = if isolate {
            (Some(ruleset(job)?), filters()?)
        } else {
            (None, Vec::new())
        };
        Ok(Prepared {
            ruleset,
            filters,
            limits: job.limits,
            last_capability,
            // SAFETY: getpid(2) cannot fail.
            supervisor: Some(unsafe { libc::getpid() }),
            cgroup_procs: None,
            process_cap: None,
        })
    }
}

fn ruleset(job: &Job) -> anyhow::Result<RulesetCreated> {
    let read = AccessFs::from_read(WANTED_ABI);
    let all = AccessFs::from_all(WANTED_ABI);
    let mut rules: Vec<PathBeneath<PathFd>> = Vec::new();
    let mut add = |path: &Path, access| -> anyhow::Result<()> {
        let fd = PathFd::new(path)
            .with_context(|| format!("cannot open {} for a sandbox rule", path.display()))?;
        rules.push(PathBeneath::new(fd, access));
        Ok(())
    };
    for path in &job.read_only {
        // Files and directories alike; a file gets the rights a file can have.
        let access = if path.is_dir() {
            read
        } else {
            read & AccessFs::from_file(WANTED_ABI)
        };
        add(path, access)?;
    }
    // The one device a program writes to.
    add(
        Path::new("/dev/null"),
        (AccessFs::ReadFile | AccessFs::WriteFile) & AccessFs::from_file(WANTED_ABI),
    )?;
    for path in std::iter::once(&job.scratch).chain(&job.read_write) {
        add(path, all)?;
    }
    let created = Ruleset::default()
        // Landlock must exist at all: without it there is no file system
        // boundary, and the run is refused rather than run open.
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))?
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?
        .handle_access(AccessNet::from_all(WANTED_ABI))?
        .scope(Scope::from_all(WANTED_ABI))?
        .create()?
        .add_rules(rules.into_iter().map(Ok::<_, landlock::RulesetError>))?;
    Ok(created)
}

/// Confines the calling thread, and every thread it starts after, to the
/// files in `readable` (read only) and nothing else: no other file or
/// directory can be opened, no TCP port bound or connected to, no signal
/// sent and no abstract socket reached outside the process. The execution
/// processes ([`crate::runtime`]) call it before they start any thread:
/// Landlock binds the threads that exist, not the ones before.
///
/// Best effort: a kernel without Landlock enforces nothing, which the
/// status returned says (the caller reports it; the wasm sandbox stays).
pub fn confine_to_files(readable: &[&Path]) -> anyhow::Result<RulesetStatus> {
    let mut rules: Vec<PathBeneath<PathFd>> = Vec::new();
    for path in readable {
        // A file the kernel lacks (no /proc/swaps) is simply not granted.
        if let Ok(fd) = PathFd::new(path) {
            rules.push(PathBeneath::new(
                fd,
                AccessFs::from_read(WANTED_ABI) & AccessFs::from_file(WANTED_ABI),
            ));
        }
    }
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(WANTED_ABI))?
        .handle_access(AccessNet::from_all(WANTED_ABI))?
        .scope(Scope::from_all(WANTED_ABI))?
        .create()?
        .add_rules(rules.into_iter().map(Ok::<_, landlock::RulesetError>))?
        .no_new_privs(true)
        .restrict_self()
        .context("Landlock refused the execution process's rules")?;
    Ok(status.ruleset)
}

/// The seccomp filters: x32 system calls closed (they would pass a filter
/// written for x86-64 numbers), no socket of any family (`socketpair` for
/// pipes stays), and no system call of a kernel surface a build never uses.
fn filters() -> anyhow::Result<Vec<BpfProgram>> {
    let arch: TargetArch = std::env::consts::ARCH.try_into().map_err(|e| {
        anyhow::anyhow!("seccomp does not support {}: {e:?}", std::env::consts::ARCH)
    })?;
    let mut programs = Vec::new();
    #[cfg(target_arch = "x86_64")]
    programs.push(x32_filter());

    // EACCES, as a refused connection would say, for every socket().
    let sockets = SeccompFilter::new(
        [(libc::SYS_socket, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )?;
    programs.push(sockets.try_into()?);

    let mut denied: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED_SYSCALLS.iter().map(|&nr| (nr, Vec::new())).collect();
    // clone() with any namespace flag: one rule per flag (rules are ORed).
    let namespace_flags = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ];
    let mut clone_rules = Vec::new();
    for flag in namespace_flags {
        let flag = flag as u64;
        clone_rules.push(SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )?])?);
    }
    denied.insert(libc::SYS_clone, clone_rules);
    let privileged = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    programs.push(privileged.try_into()?);

    // ENOSYS, as on a kernel without them: clone3 passes its flags in
    // memory, out of a filter's sight, and libc falls back to clone(),
    // which the filter above sees; memory in a memfd is held by no process
    // (invisible to the memory limit), and wasmtime falls back to plain
    // memory without it.
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, vec![]), (libc::SYS_memfd_create, vec![])]
            .into_iter()
            .collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    programs.push(clone3.try_into()?);
    Ok(programs)
}

/// System calls refused with EPERM: tracing and reading other processes,
/// kernel interfaces with a history of escapes (io_uring bypasses seccomp
/// for the operations it queues; bpf, userfaultfd, perf, keyrings), and
/// everything that changes mounts, namespaces, the system or its modules.
const DENIED_SYSCALLS: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_pidfd_getfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_bpf,
    libc::SYS_userfaultfd,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_fanotify_init,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_adjtimex,
    libc::SYS_clock_adjtime,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_personality,
    libc::SYS_vhangup,
    // The child starts a session of its own before the filter applies;
    // nothing of the tree may leave its process group, so one kill of the
    // group ends all of it at once (see tree::kill_all).
    libc::SYS_setsid,
    libc::SYS_setpgid,
    // System V IPC: segments and queues outlive their processes (and,
    // without an IPC namespace, are the host's).
    libc::SYS_shmget,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_msgget,
    libc::SYS_msgsnd,
    libc::SYS_msgrcv,
    libc::SYS_msgctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_semctl,
];

/// Refuses every x32 system call (numbers with bit 30 set) with ENOSYS.
#[cfg(target_arch = "x86_64")]
fn x32_filter() -> BpfProgram {
    use seccompiler::sock_filter;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    vec![
        // A = seccomp_data.nr (offset 0).
        sock_filter {
            code: 0x20, // BPF_LD | BPF_W | BPF_ABS
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A >= X32_SYSCALL_BIT: skip 0, else skip 1.
        sock_filter {
            code: 0x35, // BPF_JMP | BPF_JGE | BPF_K
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        sock_filter {
            code: 0x06, // BPF_RET | BPF_K
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ]
}

impl Prepared {
    /// For a child that starts in a new PID namespace.
    pub fn skip_parent_check(&mut self) {
        self.supervisor = None;
    }

    /// Moves the child into a cgroup (its open `cgroup.procs`) before it
    /// runs anything.
    pub fn join_cgroup(&mut self, procs: RawFd) {
        self.cgroup_procs = Some(procs);
    }

    /// Caps the processes of the child's user (in its own user namespace:
    /// the run's processes only) at `max`.
    pub fn cap_processes(&mut self, max: u64) {
        self.process_cap = Some(max);
    }

    /// Applied in the child, after `fork` and before `exec`. Any failure
    /// aborts the spawn: a program never runs less confined than asked.
    pub fn apply(&mut self) -> std::io::Result<()> {
        // SAFETY: setsid/prctl/getppid/setrlimit take no pointers or only
        // pointers to live locals; this runs in the single-threaded child.
        unsafe {
            if let Some(procs) = self.cgroup_procs {
                // "0" is the writer: the child, and so all it will start.
                if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Its own session: no controlling terminal to inject input into.
            check(libc::setsid())?;
            // Dies with the supervisor, which never leaves a tree behind.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            // Below the supervisor and the host: under load, the process
            // that measures and kills the tree, and the API, get the CPU
            // first. An unprivileged process cannot raise it back.
            check(libc::setpriority(libc::PRIO_PROCESS, 0, BUILD_NICENESS))?;
            if self.supervisor.is_some_and(|pid| libc::getppid() != pid) {
                return Err(std::io::Error::other("the supervisor is gone"));
            }
            let cpu_secs = self.limits.cpu.as_secs().max(1);
            set_limit(libc::RLIMIT_CPU, cpu_secs, cpu_secs + 5)?;
            // One byte past the cap: a file stopped by the rlimit is then
            // over the cap, and the supervisor's measure of the scratch
            // directory names the limit even when the program survives
            // (CPython ignores SIGXFSZ and sees EFBIG instead).
            let file_size = self.limits.output_bytes.saturating_add(1);
            set_limit(libc::RLIMIT_FSIZE, file_size, file_size)?;
            set_limit(libc::RLIMIT_CORE, 0, 0)?;
            // Open files: enough for any toolchain, few enough that files
            // held open (each capped by the file size limit) stay bounded.
            set_limit(libc::RLIMIT_NOFILE, OPEN_FILES, OPEN_FILES)?;
            if let Some(max) = self.process_cap {
                set_limit(libc::RLIMIT_NPROC, max, max)?;
            }
        }
        drop_capabilities(self.last_capability)?;
        if let Some(ruleset) = self.ruleset.take() {
            let status = ruleset
                .restrict_self()
                .map_err(|e| std::io::Error::other(format!("Landlock: {e}")))?;
            if status.ruleset == RulesetStatus::NotEnforced {
                return Err(std::io::Error::other("Landlock is not enforced"));
            }
        } else {
            // SAFETY: prctl with integer arguments.
            unsafe { check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))? };
        }
        for filter in &self.filters {
            seccompiler::apply_filter(filter)
                .map_err(|e| std::io::Error::other(format!("seccomp: {e}")))?;
        }
        Ok(())
    }
}

fn check(result: libc::c_int) -> std::io::Result<()> {
    if result == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

unsafe fn set_limit(
    resource: libc::__rlimit_resource_t,
    soft: u64,
    hard: u64,
) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: a pointer to a live local.
    check(unsafe { libc::setrlimit(resource, &limit) })
}

/// Empties every capability set, also for root: no `exec` gives any back
/// (the bounding set is empty, and `no_new_privs` follows).
fn drop_capabilities(last_capability: u32) -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments; capset with pointers to live
    // locals of the layout the kernel expects for version 3.
    unsafe {
        // Only possible with CAP_SETPCAP (root, or the creator of our user
        // namespace); without it the bounding set grants nothing usable,
        // since the permitted set is already empty.
        for capability in 0..=last_capability {
            libc::prctl(libc::PR_CAPBSET_DROP, capability as libc::c_ulong, 0, 0, 0);
        }
        // No ambient capabilities survive exec.
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut now = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capget, &mut header, now.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if now
            .iter()
            .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
        {
            return Err(std::io::Error::other(
                "capabilities remain after dropping them",
            ));
        }
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Checks, before anything runs, that this kernel can confine a build, and
/// names what is missing otherwise.
pub fn check_kernel(namespaces: &[String]) -> anyhow::Result<i32> {
    let abi = landlock_abi();
    can_confine(abi, namespaces)?;
    Ok(abi)
}

/// Whether a kernel with this Landlock ABI, where these namespaces could
/// be created, confines a build: Landlock for the file system, and either
/// Landlock's signal scoping or a PID namespace to keep signals in.
fn can_confine(abi: i32, namespaces: &[String]) -> anyhow::Result<()> {
    if abi < REQUIRED_ABI {
        bail!(
            "the kernel has no Landlock (it needs Linux 5.13 or later with Landlock enabled: \
             `lsm=landlock,...` on the kernel command line), so a build could read any file \
             the host can; set LAMBDA_BUILD_SANDBOX=off only if every user of this host is trusted"
        );
    }
    if abi < SIGNAL_SCOPE_ABI && !namespaces.iter().any(|n| n == "pid") {
        bail!(
            "the kernel's Landlock (ABI {abi}) cannot keep a build's signals in (ABI \
             {SIGNAL_SCOPE_ABI}, Linux 6.12, can), and no PID namespace could be created \
             (unprivileged user namespaces are off, or a container's seccomp profile refuses \
             them); set LAMBDA_BUILD_SANDBOX=off only if every user of this host is trusted"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn a_kernel_without_landlock_cannot_confine_whatever_else_it_has() {
        let error = can_confine(0, &names(&["user", "pid", "net"])).unwrap_err();
        assert!(error.to_string().contains("no Landlock"), "{error}");
        assert!(
            error.to_string().contains("LAMBDA_BUILD_SANDBOX=off"),
            "{error}"
        );
    }

    #[test]
    fn signals_are_kept_in_by_landlock_scoping_or_a_pid_namespace() {
        let error = can_confine(4, &[]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("cannot keep a build's signals in"),
            "{error}"
        );
        can_confine(4, &names(&["user", "pid"])).unwrap();
        can_confine(SIGNAL_SCOPE_ABI, &[]).unwrap();
    }

    #[test]
    fn this_kernel_has_landlock() {
        // The machines this project runs on and CI: Linux 6.18, ABI 7.
        assert!(landlock_abi() >= REQUIRED_ABI);
    }
}
