//! A thread that runs a task every period until it is dropped: the epoch
//! ticker, the warm-instance reaper and the log flusher.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;

/// Dropping it stops and joins the thread, waking it if it waits.
pub struct Periodic {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Periodic {
    /// Runs `task` every `period` on a thread called `name`, until the
    /// handle is dropped or `task` returns false.
    pub fn start(
        name: &str,
        period: Duration,
        mut task: impl FnMut() -> bool + Send + 'static,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Parked, not asleep: dropping the handle wakes it.
                        std::thread::park_timeout(period);
                        if stop.load(Ordering::Relaxed) || !task() {
                            break;
                        }
                    }
                }
            })
            .with_context(|| format!("cannot start the {name} thread"))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}
