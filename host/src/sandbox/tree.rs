//! The supervisor's view of its process tree: every descendant, what they
//! use together, and how to kill all of them.
//!
//! The supervisor is the tree's subreaper (`PR_SET_CHILD_SUBREAPER`): a
//! process whose parent dies is re-parented to it, not to init, so
//! "descendants of the supervisor" is the whole tree, whatever it forks,
//! detaches or daemonizes.

use std::collections::HashSet;
use std::path::Path;

/// What the tree uses right now.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Resident anonymous and shared memory, summed over processes: what
    /// the tree makes the machine keep. Pages of mapped files (programs,
    /// libraries) are left out: the kernel can drop them, and counting
    /// them in every process would count one library many times.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub tasks: u32,
    /// CPU time of live processes, their threads and the children they
    /// have reaped, in clock ticks.
    pub cpu_ticks: u64,
}

/// The supervisor's descendants, found through `/proc/<pid>/task/<tid>/children`
/// (or, on kernels without it, a scan of every `/proc/<pid>/stat`).
pub fn descendants(root: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    if Path::new(&format!("/proc/{root}/task/{root}/children")).exists() {
        let mut queue = vec![root];
        while let Some(pid) = queue.pop() {
            for child in children_of(pid) {
                if seen.insert(child) {
                    found.push(child);
                    queue.push(child);
                }
            }
        }
    } else {
        let parents = scan_parents();
        let mut queue = vec![root];
        while let Some(pid) = queue.pop() {
            for &(child, parent) in &parents {
                if parent == pid && seen.insert(child) {
                    found.push(child);
                    queue.push(child);
                }
            }
        }
    }
    found
}

fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            children.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    children
}

/// (pid, parent pid) of every process.
fn scan_parents() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?.parent)))
        .collect()
}

/// The fields of `/proc/<pid>/stat` the supervisor reads.
struct Stat {
    parent: i32,
    cpu_ticks: u64,
    threads: u32,
}

fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: the fields start after the last `)`.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<i64>().ok());
    Some(Stat {
        parent: field(4)? as i32,
        // utime, stime, cutime, cstime: the process's own time and that of
        // the children it waited for.
        cpu_ticks: (field(14)? + field(15)? + field(16)? + field(17)?).max(0) as u64,
        threads: field(20)?.max(0) as u32,
    })
}

/// `RssAnon` + `RssShmem` of `/proc/<pid>/status`, in bytes.
fn resident_memory(pid: i32) -> Option<u64> {
    parse_resident_memory(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_resident_memory(status: &str) -> Option<u64> {
    let mut kib = 0;
    let mut found = false;
    for line in status.lines() {
        if let Some(value) = line
            .strip_prefix("RssAnon:")
            .or_else(|| line.strip_prefix("RssShmem:"))
        {
            kib += value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()?;
            found = true;
        }
    }
    found.then_some(kib * 1024)
}

/// What these processes use together.
pub fn usage(pids: &[i32]) -> Usage {
    let mut usage = Usage::default();
    for &pid in pids {
        if let Some(stat) = stat(pid) {
            usage.tasks += stat.threads.max(1);
            usage.cpu_ticks += stat.cpu_ticks;
            usage.memory_bytes += resident_memory(pid).unwrap_or(0);
        }
    }
    usage
}

/// Kills every descendant of `root` and reaps them, until none is left;
/// returns the exit statuses reaped on the way, by pid.
///
/// First the whole process group of the build (`group`, the child's own,
/// which seccomp keeps every descendant in) in one kill: the kernel signals
/// every member while forks wait, so even a fork bomb ends at once. Then,
/// for anything outside the group, rounds of killing every descendant:
/// killed processes cannot fork, and the children of killed ones are
/// re-parented to the supervisor.
pub fn kill_all(root: i32, group: i32) -> Vec<(i32, i32)> {
    // SAFETY: kill(2) of a process group this supervisor created.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    let mut statuses = Vec::new();
    loop {
        let pids = descendants(root);
        for &pid in &pids {
            // SAFETY: kill(2) on a descendant of ours; a subreaper's
            // descendants cannot be re-parented away from it.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let reaped = reap_all();
        statuses.extend(reaped.statuses);
        if pids.is_empty() && !reaped.had_children {
            return statuses;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// What [`reap_all`] found.
pub struct Reaped {
    /// Exit statuses of the processes reaped, by pid.
    pub statuses: Vec<(i32, i32)>,
    /// False once the supervisor has no child left at all (`ECHILD`).
    pub had_children: bool,
}

/// Reaps every child that has ended, without blocking.
pub fn reap_all() -> Reaped {
    let mut statuses = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) with a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 => {
                return Reaped {
                    statuses,
                    had_children: true,
                };
            }
            -1 => {
                let had_children =
                    std::io::Error::last_os_error().raw_os_error() != Some(libc::ECHILD);
                return Reaped {
                    statuses,
                    had_children,
                };
            }
            pid => statuses.push((pid, status)),
        }
    }
}

/// The bytes a directory tree occupies, without following links.
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    let mut queue = vec![dir.to_owned()];
    while let Some(dir) = queue.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            // Allocated blocks, not the apparent size: a sparse file costs
            // what it holds, and a file's size cannot hide its blocks.
            total += metadata.blocks() * 512;
            if metadata.is_dir() {
                queue.push(entry.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_after_the_last_parenthesis_of_the_name() {
        // A process may call itself "a) 1 2 (b".
        let line =
            "42 (a) 1 2 (b) S 7 42 42 0 -1 4194560 100 0 0 0 150 50 10 5 20 0 3 0 1000 1000 100";
        let stat = parse_stat(line).unwrap();
        assert_eq!((stat.parent, stat.cpu_ticks, stat.threads), (7, 215, 3));
    }

    #[test]
    fn memory_is_anonymous_and_shared_memory_not_mapped_files() {
        let status = "Name:\tx\nVmRSS:\t  9000 kB\nRssAnon:\t  1000 kB\nRssFile:\t  7000 kB\nRssShmem:\t  24 kB\n";
        assert_eq!(parse_resident_memory(status), Some(1024 * 1024));
        assert!(resident_memory(std::process::id() as i32).unwrap() > 0);
    }

    #[test]
    fn descendants_include_grandchildren() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & exec sleep 5"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        // Only the children of this shell: other tests run beside us.
        let found = descendants(child.id() as i32);
        for &pid in &found {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.len(), 1, "{found:?}");
    }
}
