//! A kernel-enforced cap on a build's processes: a `pids` cgroup of its
//! own, where this process may create one.
//!
//! The supervisor's sampling names the tasks limit, but a fork bomb grows
//! faster than any sampling: measured on a 2-core machine under load, a
//! Python bomb reached the machine's 32k pids in under a second while the
//! supervisor waited for the CPU. The kernel refuses a fork past
//! `pids.max` before it happens. A host running as root (CI, a root
//! container) may create cgroups; an unprivileged host gets the same kind
//! of cap from `RLIMIT_NPROC` inside its user namespace instead (see
//! `confine`), and one with neither has only the sampling.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd as _, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a `pids` controller may be mounted: cgroup v1's own hierarchy, or
/// the unified v2 hierarchy when it offers `pids` to its children.
const HIERARCHIES: &[&str] = &["/sys/fs/cgroup/pids", "/sys/fs/cgroup"];
/// The prefix of the supervisors' cgroups, followed by the supervisor's pid.
const PREFIX: &str = "lambda-build-";
/// Older than the longest build: its supervisor is gone.
const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 3600);

/// One run's cgroup; removed when dropped (once its processes are gone).
pub struct TaskGroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened here: the child writes itself into it before
    /// `exec`, so nothing it runs starts outside the cap.
    procs: File,
}

impl TaskGroup {
    /// A cgroup capped at `max` tasks (processes and threads), or `None`
    /// where none can be created (no `pids` controller, not permitted).
    pub fn create(max: u32) -> Option<TaskGroup> {
        let hierarchy = HIERARCHIES.iter().map(Path::new).find(|h| offers_pids(h))?;
        remove_abandoned(hierarchy);
        // The pid, then a nonce: unique even among hosts in other PID
        // namespaces that share this hierarchy.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let dir = hierarchy.join(format!("{PREFIX}{}-{nonce}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let group = TaskGroup {
            procs: match OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
            {
                Ok(procs) => procs,
                Err(_) => {
                    let _ = std::fs::remove_dir(&dir);
                    return None;
                }
            },
            dir,
        };
        std::fs::write(group.dir.join("pids.max"), max.to_string()).ok()?;
        Some(group)
    }

    /// The open `cgroup.procs`: writing `0` to it moves the writer in.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// True once a fork or thread was refused for the cap.
    pub fn cap_reached(&self) -> bool {
        std::fs::read_to_string(self.dir.join("pids.events"))
            .ok()
            .and_then(|events| {
                events
                    .lines()
                    .find_map(|l| l.strip_prefix("max "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|refused| refused > 0)
    }
}

impl Drop for TaskGroup {
    fn drop(&mut self) {
        // The tree is reaped by now, but the kernel may still be detaching
        // its last tasks: a removal can fail with EBUSY for a moment.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether `hierarchy` is a cgroup hierarchy whose children get `pids`.
fn offers_pids(hierarchy: &Path) -> bool {
    if hierarchy.ends_with("pids") {
        return hierarchy.join("cgroup.procs").exists();
    }
    std::fs::read_to_string(hierarchy.join("cgroup.subtree_control"))
        .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "pids"))
}

/// Removes the cgroups of supervisors that were killed before they could:
/// those of a pid that is gone, or older than any build (one in use
/// refuses with EBUSY anyway).
fn remove_abandoned(hierarchy: &Path) {
    let Ok(entries) = std::fs::read_dir(hierarchy) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.split('-').next())
        else {
            continue;
        };
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > ABANDONED_AFTER);
        if !alive || old {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}
