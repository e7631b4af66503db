//! The build sandbox on its own, attacked the way a build's code would
//! attack it: reading the host's secrets, writing into the host, reaching
//! the network, signalling the host, forking, eating memory, CPU and disk,
//! flooding output, outliving the build. The attacker is a Python program
//! (the Python toolchain's interpreter, which every host has), confined as
//! a build is: the system, the toolchain read-only, a scratch directory.
//!
//! Each test runs twice: with the namespaces this machine allows, and
//! without any (as in a container whose seccomp profile refuses them),
//! where Landlock and seccomp hold alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lambda_host::sandbox::{
    Isolation, Job, KernelTaskCap, Limit, Limits, Report, Sandbox, system_paths,
};
use serde_json::Value;

use crate::helpers::repo_root;

/// A secret of the host that no build may see: written into the test's
/// data directory, it stands for the JWT secret and the databases.
struct Canary {
    dir: tempfile::TempDir,
    token: String,
}

impl Canary {
    fn plant() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token = format!("canary-{}", uuid::Uuid::new_v4().simple());
        std::fs::write(dir.path().join("jwt-secret"), &token).unwrap();
        Self { dir, token }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("jwt-secret")
    }
}

fn limits() -> Limits {
    Limits {
        wall: Duration::from_secs(60),
        cpu: Duration::from_secs(60),
        memory_bytes: 512 << 20,
        tasks: 64,
        output_bytes: 64 << 20,
    }
}

/// The Python toolchain's interpreter and what it needs to run.
fn python() -> (PathBuf, Vec<PathBuf>) {
    let venv = repo_root().join("toolchains/python/.venv/bin/python");
    let base_prefix = std::process::Command::new(&venv)
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .output()
        .unwrap();
    let base_prefix = PathBuf::from(String::from_utf8(base_prefix.stdout).unwrap().trim());
    (
        venv,
        vec![repo_root().join("toolchains/python"), base_prefix],
    )
}

/// Runs a Python program confined like a build, in `scratch`.
async fn attack(namespaces: bool, scratch: &Path, code: &str, limits: Limits) -> Report {
    let sandbox = Sandbox::new(
        env!("CARGO_BIN_EXE_lambda-host").into(),
        Isolation::Required,
        namespaces,
    );
    sandbox
        .run(&job(&sandbox, scratch, code, limits))
        .await
        .unwrap()
}

fn job(sandbox: &Sandbox, scratch: &Path, code: &str, limits: Limits) -> Job {
    let (program, toolchain) = python();
    let mut job = sandbox.job(program, scratch, limits);
    job.args = vec!["-c".to_owned(), code.to_owned()];
    job.read_only = system_paths();
    job.read_only.extend(toolchain);
    job.env = vec![
        ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
        ("HOME".to_owned(), scratch.display().to_string()),
    ];
    job
}

/// The last line of the program's stdout, as JSON.
fn findings(report: &Report) -> Value {
    let line = report.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| panic!("no findings: {report:?}"))
}

/// Processes of this machine whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

/// Waits up to `within` for every process with `marker` to be gone.
async fn assert_all_gone(marker: &str, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "processes of the build remain: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Python that tries each of `attempts` (expressions) and prints, as JSON,
/// which succeeded and with what.
fn probe(setup: &str, attempts: &[(&str, String)]) -> String {
    let mut code = format!("import json, os, socket, signal\n{setup}\nfound = {{}}\n");
    for (name, expression) in attempts {
        code.push_str(&format!(
            "try:\n    found[{name:?}] = 'allowed: ' + repr({expression})[:200]\nexcept BaseException as e:\n    found[{name:?}] = 'refused: ' + type(e).__name__\n"
        ));
    }
    code.push_str("print(json.dumps(found))\n");
    code
}

fn assert_all_refused(findings: &Value, report: &Report, canary: &Canary) {
    for (name, outcome) in findings.as_object().unwrap() {
        assert!(
            outcome.as_str().unwrap().starts_with("refused"),
            "{name}: {outcome}"
        );
    }
    assert!(!report.stdout.contains(&canary.token), "the canary leaked");
    assert!(!report.stderr.contains(&canary.token), "the canary leaked");
}

async fn reads_nothing_of_the_host(namespaces: bool) {
    let canary = Canary::plant();
    let scratch = tempfile::tempdir().unwrap();
    let host_pid = std::process::id();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
    let read = |path: &str| format!("open({path:?}).read()");
    let list = |path: &str| format!("os.listdir({path:?})");
    let attempts = [
        ("the host's secret", read(canary.file().to_str().unwrap())),
        (
            "the data directory",
            list(canary.dir.path().to_str().unwrap()),
        ),
        ("the home directory", list(&home)),
        ("/home", list("/home")),
        ("/etc/shadow", read("/etc/shadow")),
        ("/etc/passwd", read("/etc/passwd")),
        ("/etc", list("/etc")),
        ("/tmp", list("/tmp")),
        ("/proc", list("/proc")),
        (
            "the host's environment",
            read(&format!("/proc/{host_pid}/environ")),
        ),
        (
            "the host's command line",
            read(&format!("/proc/{host_pid}/cmdline")),
        ),
        ("/sys", list("/sys")),
        ("the repository", list(repo_root().to_str().unwrap())),
        (
            "another toolchain",
            list(repo_root().join("toolchains/js").to_str().unwrap()),
        ),
    ]
    .map(|(name, e)| (name, e));
    let code = probe("", &attempts);
    let report = attack(namespaces, scratch.path(), &code, limits()).await;
    assert_eq!(report.exit_code, Some(0), "{report:?}");
    let found = findings(&report);
    assert_all_refused(&found, &report, &canary);

    // The environment is what the job set, nothing of the host's (CPython
    // adds LC_CTYPE itself when the locale is C).
    let code =
        "import os, json; print(json.dumps(sorted(k for k in os.environ if k != 'LC_CTYPE')))";
    let report = attack(namespaces, scratch.path(), code, limits()).await;
    assert_eq!(findings(&report), serde_json::json!(["HOME", "PATH"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_reads_nothing_of_the_host() {
    reads_nothing_of_the_host(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_reads_nothing_of_the_host_without_namespaces() {
    reads_nothing_of_the_host(false).await;
}

async fn writes_nothing_outside_its_scratch_directory(namespaces: bool) {
    let canary = Canary::plant();
    let scratch = tempfile::tempdir().unwrap();
    let mark = format!("pwned-{}", uuid::Uuid::new_v4().simple());
    let site_packages = repo_root().join("toolchains/python/.venv/lib");
    let targets = [
        canary.dir.path().join(&mark),
        canary.file(),
        site_packages.join(format!("{mark}.pth")),
        repo_root().join("toolchains/python").join(&mark),
        PathBuf::from("/tmp").join(&mark),
        PathBuf::from("/dev/shm").join(&mark),
    ];
    let names: Vec<String> = targets
        .iter()
        .map(|t| format!("write {}", t.display()))
        .collect();
    let mut attempts: Vec<(&str, String)> = targets
        .iter()
        .zip(&names)
        .map(|(t, name)| {
            (
                name.as_str(),
                format!("open({:?}, 'w').write('x')", t.to_str().unwrap()),
            )
        })
        .collect();
    attempts.push((
        "a link to the secret",
        format!(
            "os.symlink({:?}, 'link') or open('link').read()",
            canary.file().to_str().unwrap()
        ),
    ));
    // The one device a build may write: as a device only.
    attempts.push(("remove /dev/null", "os.unlink('/dev/null')".to_owned()));
    attempts.push((
        "replace /dev/null",
        "open('fake', 'w').close() or os.rename('fake', '/dev/null')".to_owned(),
    ));
    attempts.push((
        "a hard link to the secret",
        format!("os.link({:?}, 'hard')", canary.file().to_str().unwrap()),
    ));
    let code = probe("", &attempts);
    let report = attack(namespaces, scratch.path(), &code, limits()).await;
    assert_eq!(report.exit_code, Some(0), "{report:?}");
    assert_all_refused(&findings(&report), &report, &canary);
    for target in targets.iter().filter(|t| **t != canary.file()) {
        assert!(!target.exists(), "{} was written", target.display());
    }
    assert_eq!(
        std::fs::read_to_string(canary.file()).unwrap(),
        canary.token
    );

    // Its own directory is writable.
    let report = attack(
        namespaces,
        scratch.path(),
        "open('mine', 'w').write('ok')",
        limits(),
    )
    .await;
    assert_eq!(report.exit_code, Some(0), "{report:?}");
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("mine")).unwrap(),
        "ok"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_writes_nothing_outside_its_scratch_directory() {
    writes_nothing_outside_its_scratch_directory(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_writes_nothing_outside_its_scratch_directory_without_namespaces() {
    writes_nothing_outside_its_scratch_directory(false).await;
}

async fn has_no_network(namespaces: bool) {
    let canary = Canary::plant();
    let scratch = tempfile::tempdir().unwrap();
    // Real listeners of the host: nothing may reach them.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let unix_path = canary.dir.path().join("host.sock");
    let unix = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();
    unix.set_nonblocking(true).unwrap();
    let (tcp_port, udp_port) = (
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let attempts = [
        (
            "tcp",
            format!("socket.create_connection(('127.0.0.1', {tcp_port}), timeout=2)"),
        ),
        (
            "udp",
            format!(
                "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {udp_port}))"
            ),
        ),
        (
            "ipv6",
            "socket.socket(socket.AF_INET6, socket.SOCK_STREAM)".to_owned(),
        ),
        (
            "unix",
            format!(
                "socket.socket(socket.AF_UNIX).connect({:?})",
                unix_path.to_str().unwrap()
            ),
        ),
        (
            "netlink",
            "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)".to_owned(),
        ),
        ("dns", "socket.getaddrinfo('example.com', 80)".to_owned()),
    ];
    let report = attack(namespaces, scratch.path(), &probe("", &attempts), limits()).await;
    assert_eq!(report.exit_code, Some(0), "{report:?}");
    assert_all_refused(&findings(&report), &report, &canary);
    assert!(tcp.accept().is_err(), "a TCP connection reached the host");
    assert!(
        udp.recv(&mut [0u8; 8]).is_err(),
        "a datagram reached the host"
    );
    assert!(unix.accept().is_err(), "a UNIX connection reached the host");

    // Pipes between its own processes still work (toolchains spawn helpers).
    let report = attack(
        namespaces,
        scratch.path(),
        "import socket, subprocess; a, b = socket.socketpair(); a.send(b'ok'); print(b.recv(2).decode(), subprocess.run(['/bin/echo', 'child'], capture_output=True).stdout.decode().strip())",
        limits(),
    )
    .await;
    assert_eq!(report.stdout.trim(), "ok child", "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_has_no_network() {
    has_no_network(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_has_no_network_without_namespaces() {
    has_no_network(false).await;
}

async fn cannot_reach_other_processes(namespaces: bool) {
    let canary = Canary::plant();
    let scratch = tempfile::tempdir().unwrap();
    let host_pid = std::process::id();
    let setup = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n\
        def check(r):\n    if r != 0: raise OSError(ctypes.get_errno(), 'refused')\n    return r\n\
        def signallable():\n    found = []\n    for pid in range(2, 1 << 16):\n        try:\n            os.kill(pid, 0)\n            if pid != os.getpid(): found.append(pid)\n        except OSError: pass\n    if not found: raise PermissionError('none')\n    return found";
    let attempts = [
        ("signal the host", format!("os.kill({host_pid}, 0)")),
        // kill(-1) would say 0 even when every process refused: ask each.
        ("signal any other process", "signallable()".to_owned()),
        (
            "trace the host",
            format!("check(libc.ptrace(16, {host_pid}, 0, 0))"),
        ),
        (
            "new namespaces",
            "check(libc.unshare(0x10000000 | 0x40000000))".to_owned(),
        ),
        ("io_uring", "check(libc.syscall(425, 8, 0))".to_owned()),
        // Leaving the build's process group would escape its one-kill end.
        ("a new session", "os.setsid()".to_owned()),
        ("another process group", "os.setpgid(0, 0)".to_owned()),
        (
            "mount",
            "check(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))".to_owned(),
        ),
        (
            "x32 system calls",
            "check(libc.syscall(0x40000000 + 39))".to_owned(),
        ),
        // Both need a capability, which a build has none of, root or not.
        (
            "give a file away",
            "open('mine', 'w').close() or os.chown('mine', 1, 1)".to_owned(),
        ),
        (
            "set the host name",
            "check(libc.sethostname(b'x', 1))".to_owned(),
        ),
    ];
    let report = attack(
        namespaces,
        scratch.path(),
        &probe(setup, &attempts),
        limits(),
    )
    .await;
    assert_eq!(report.exit_code, Some(0), "{report:?}");
    assert_all_refused(&findings(&report), &report, &canary);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_cannot_reach_other_processes_or_the_kernel() {
    cannot_reach_other_processes(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_cannot_reach_other_processes_or_the_kernel_without_namespaces() {
    cannot_reach_other_processes(false).await;
}

/// Python that leaves a detached grandchild behind (its parent gone, a new
/// session if it may have one) and then runs forever; `marker` names all
/// of them.
fn outliving_code(marker: &str) -> String {
    format!(
        "import os, time\n\
         if os.fork() == 0:\n    try:\n        os.setsid()\n    except OSError:\n        pass\n\
         \x20   if os.fork() == 0:\n        os.execv('/bin/sleep', ['/bin/sleep', '300.{marker}'])\n    os._exit(0)\n\
         os.execv('/bin/sleep', ['/bin/sleep', '301.{marker}'])\n"
    )
}

fn marker() -> String {
    // sleep reads its argument as a number: the marker is digits.
    format!("{}", rand_digits())
}

fn rand_digits() -> u64 {
    uuid::Uuid::new_v4().as_u128() as u64 % 1_000_000_000_000
}

async fn the_deadline_ends_the_whole_tree(namespaces: bool) {
    let scratch = tempfile::tempdir().unwrap();
    let marker = marker();
    let limits = Limits {
        wall: Duration::from_secs(2),
        ..limits()
    };
    let started = Instant::now();
    let report = attack(namespaces, scratch.path(), &outliving_code(&marker), limits).await;
    assert_eq!(report.limit, Some(Limit::Time), "{report:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_all_gone(&marker, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_ends_the_whole_tree_detached_grandchildren_too() {
    the_deadline_ends_the_whole_tree(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_ends_the_whole_tree_without_namespaces() {
    the_deadline_ends_the_whole_tree(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_build_ends_its_whole_tree() {
    for namespaces in [true, false] {
        let scratch = tempfile::tempdir().unwrap();
        let marker = marker();
        let code = outliving_code(&marker);
        let run = attack(namespaces, scratch.path(), &code, limits());
        // The caller gives up (a request timed out, a client went away).
        let outcome = tokio::time::timeout(Duration::from_secs(2), run).await;
        assert!(outcome.is_err(), "the run ended on its own");
        assert_all_gone(&marker, Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dying_host_takes_the_whole_tree_with_it() {
    let scratch = tempfile::tempdir().unwrap();
    let marker = marker();
    let sandbox = Sandbox::new(
        env!("CARGO_BIN_EXE_lambda-host").into(),
        Isolation::Required,
        true,
    );
    let job = job(&sandbox, scratch.path(), &outliving_code(&marker), limits());
    let job_file = scratch.path().join("job.json");
    std::fs::write(&job_file, serde_json::to_vec(&job).unwrap()).unwrap();
    // A stand-in host: a shell that starts the supervisor, then dies.
    let mut host = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "{} sandbox-exec < {} > /dev/null & sleep 60",
            env!("CARGO_BIN_EXE_lambda-host"),
            job_file.display()
        ))
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while processes_with(&marker).len() < 2 {
        assert!(Instant::now() < until, "the build did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    host.kill().unwrap();
    host.wait().unwrap();
    assert_all_gone(&marker, Duration::from_secs(5)).await;
}

async fn limits_end_runaway_builds(namespaces: bool) {
    let scratch = tempfile::tempdir().unwrap();
    let tight = Limits {
        memory_bytes: 256 << 20,
        cpu: Duration::from_secs(3),
        tasks: 32,
        output_bytes: 8 << 20,
        ..limits()
    };
    let cases = [
        ("memory", "x = bytearray(b'x') * (2 << 30)", Limit::Memory),
        (
            "cpu in two processes",
            "import os\nos.fork()\nwhile True: pass",
            Limit::Cpu,
        ),
        (
            "a fork bomb",
            "import os, time\nwhile True:\n    try: os.fork()\n    except OSError: time.sleep(0.01)",
            // Each fork also counts the memory it shares with its parent:
            // the memory limit may stop the bomb first.
            Limit::Tasks,
        ),
        (
            "threads",
            "import threading, time\nfor _ in range(1000): threading.Thread(target=time.sleep, args=(60,)).start()",
            Limit::Tasks,
        ),
        (
            "one big file",
            "open('big', 'wb').write(b'x' * (64 << 20))",
            Limit::Output,
        ),
        (
            "many small files",
            "for i in range(200): open(f'f{i}', 'wb').write(b'x' * (1 << 20))",
            Limit::Output,
        ),
    ];
    for (name, code, limit) in cases {
        let scratch = tempfile::tempdir_in(scratch.path()).unwrap();
        let started = Instant::now();
        let report = attack(namespaces, scratch.path(), code, tight).await;
        let expected = if name == "a fork bomb" {
            report.limit == Some(Limit::Tasks) || report.limit == Some(Limit::Memory)
        } else {
            report.limit == Some(limit)
        };
        assert!(expected, "{name}: {report:?}");
        // The kernel refused every fork past twice the limit (a host run
        // as root, as CI is, gives each build a pids cgroup).
        if report.confinement.kernel_task_cap.is_some() {
            assert!(
                report.peak_tasks <= 2 * tight.tasks + 2,
                "{name}: {report:?}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{name} took {:?}",
            started.elapsed()
        );
        // Stopped soon after it crossed the line, not gigabytes later.
        if limit == Limit::Memory {
            assert!(
                report.peak_memory_bytes < tight.memory_bytes + (256 << 20),
                "{name}: {report:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_cpu_tasks_and_output_limits_end_runaway_builds() {
    limits_end_runaway_builds(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_cpu_tasks_and_output_limits_end_runaway_builds_without_namespaces() {
    limits_end_runaway_builds(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn output_beyond_the_capture_is_dropped_not_kept() {
    let scratch = tempfile::tempdir().unwrap();
    let code = "import sys\nfor _ in range(200): sys.stdout.write('x' * (1 << 20))\nsys.stdout.write('\\nthe end\\n')";
    let report = attack(true, scratch.path(), code, limits()).await;
    assert_eq!(report.exit_code, Some(0), "{}", report.stderr);
    assert!(report.stdout_truncated);
    assert!(report.stdout.len() <= 64 << 10, "{}", report.stdout.len());
    assert!(report.stdout.ends_with("the end\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_reports_its_confinement() {
    let scratch = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(
        env!("CARGO_BIN_EXE_lambda-host").into(),
        Isolation::Required,
        true,
    );
    let confinement = sandbox.check(scratch.path()).await.unwrap();
    // This machine (and CI) has Landlock with signal scoping, and lets
    // unprivileged processes create namespaces.
    assert!(confinement.landlock_abi >= 6, "{confinement:?}");
    assert!(confinement.seccomp);
    assert_eq!(confinement.namespaces, ["user", "pid", "net", "ipc", "uts"]);
    // Root (as CI runs) may create a pids cgroup; anyone else gets
    // RLIMIT_NPROC in the build's user namespace.
    // SAFETY: geteuid cannot fail.
    let expected = if unsafe { libc::geteuid() } == 0 {
        KernelTaskCap::Cgroup
    } else {
        KernelTaskCap::Rlimit
    };
    assert_eq!(
        confinement.kernel_task_cap,
        Some(expected),
        "{confinement:?}"
    );
}

/// Runs a job through the supervisor as an unprivileged user, as the
/// container image runs the host: `nobody` when the tests run as root (CI),
/// else the tests' own user.
fn run_unprivileged(job: &Job) -> Report {
    use std::io::Write as _;
    use std::os::unix::process::CommandExt as _;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lambda-host"));
    command
        .arg("sandbox-exec")
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        command.uid(65534).gid(65534);
    }
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(job).unwrap())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_host_confines_its_builds_just_as_well() {
    use std::os::unix::fs::PermissionsExt as _;
    // Everything the build attempts is allowed by the file permissions:
    // only the sandbox stands in its way.
    let canary = Canary::plant();
    std::fs::set_permissions(canary.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(canary.file(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let marker = marker();
    let sandbox = Sandbox::new(
        env!("CARGO_BIN_EXE_lambda-host").into(),
        Isolation::Required,
        true,
    );
    let script = format!(
        "id -u\n\
         cat {secret} && echo LEAK: read the secret\n\
         echo x >> {secret} && echo LEAK: wrote the secret\n\
         echo x > {dir}/planted && echo LEAK: wrote beside the secret\n\
         ls /proc > /dev/null 2>&1 && echo LEAK: listed /proc\n\
         ls /tmp > /dev/null 2>&1 && echo LEAK: listed /tmp\n\
         echo mine > mine || echo FAILED: its own directory\n\
         (/bin/sleep 300.{marker} &)\n\
         exec /bin/sleep 301.{marker}\n",
        secret = canary.file().display(),
        dir = canary.dir.path().display(),
    );
    let mut job = sandbox.job(
        PathBuf::from("/bin/sh"),
        scratch.path(),
        Limits {
            wall: Duration::from_secs(3),
            ..limits()
        },
    );
    job.args = vec!["-c".to_owned(), script];
    job.read_only = system_paths();
    job.env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
    let report = tokio::task::spawn_blocking(move || run_unprivileged(&job))
        .await
        .unwrap();
    assert_ne!(report.stdout.lines().next(), Some("0"), "ran as root");
    assert!(
        !report.stdout.contains("LEAK") && !report.stdout.contains("FAILED"),
        "{report:?}"
    );
    assert!(!report.stdout.contains(&canary.token), "{report:?}");
    assert_eq!(
        std::fs::read_to_string(canary.file()).unwrap(),
        canary.token
    );
    assert!(!canary.dir.path().join("planted").exists());
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("mine")).unwrap(),
        "mine\n"
    );
    assert_eq!(report.limit, Some(Limit::Time), "{report:?}");
    assert!(report.confinement.landlock_abi >= 1 && report.confinement.seccomp);
    assert_all_gone(&marker, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_hosts_builds_cannot_fork_past_the_kernel_cap() {
    use std::os::unix::fs::PermissionsExt as _;
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sandbox = Sandbox::new(
        env!("CARGO_BIN_EXE_lambda-host").into(),
        Isolation::Required,
        true,
    );
    let tasks = 32;
    let mut job = sandbox.job(
        PathBuf::from("/bin/sh"),
        scratch.path(),
        Limits {
            wall: Duration::from_secs(20),
            tasks,
            ..limits()
        },
    );
    // The classic shell bomb: every function call pipes two more.
    job.args = vec![
        "-c".to_owned(),
        "b() { b | b & }; b; exec /bin/sleep 30".to_owned(),
    ];
    job.read_only = system_paths();
    job.env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
    let report = tokio::task::spawn_blocking(move || run_unprivileged(&job))
        .await
        .unwrap();
    // In its own user namespace, RLIMIT_NPROC counts the build's processes
    // only, and the kernel enforces it for a user that is not root.
    assert_eq!(
        report.confinement.kernel_task_cap,
        Some(KernelTaskCap::Rlimit),
        "{report:?}"
    );
    assert_eq!(report.limit, Some(Limit::Tasks), "{report:?}");
    assert!(report.peak_tasks <= 2 * tasks + 2, "{report:?}");
}
