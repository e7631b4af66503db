//! Warm instances: an instance that finished an execution cleanly may
//! serve the next execution of the same function version for the same
//! caller, as AWS Lambda reuses a warm execution environment.
//!
//! The rules, all enforced here or by the one caller of [`WarmPool::put`]:
//!
//! - an instance is only ever taken by the key it was put under: the
//!   caller (a token's `sub`), the function version (its build digest) and
//!   the component that runs it (tier 0 or tier 1). Two users never share
//!   one; a new version never runs in an old instance;
//! - it goes back only after an execution that answered a result or an
//!   error the guest's glue reported itself; a trap, a timeout, an
//!   out-of-memory, an answer that is not JSON or a dropped request drops
//!   it (the store is never handed back from those paths);
//! - it is retired after `max_uses` executions, after `idle_timeout`
//!   unused, and the least recently used one goes first when `max_idle`
//!   are waiting.
//!
//! Globals of the guest persist between the executions of one warm
//! instance; its memory counts towards every later execution's cap, and
//! each execution gets its own deadline, output buffers and log budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::bindings;
use super::invoke::GuestState;
use crate::digest::Digest;
use crate::periodic::Periodic;

/// Whose and which instance this is: it serves only the same key again.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WarmKey {
    pub caller: String,
    /// The function version (its build digest).
    pub version: Digest,
    /// The component that runs it (an interpreter for tier 0).
    pub component: Digest,
}

/// An instance with its store, between two executions.
pub struct WarmInstance {
    pub store: Store<GuestState>,
    pub function: bindings::Function,
    /// Executions it has served.
    pub uses: u32,
    /// When it was put back.
    idle_since: Instant,
}

impl WarmInstance {
    pub fn new(store: Store<GuestState>, function: bindings::Function, uses: u32) -> Self {
        Self {
            store,
            function,
            uses,
            idle_since: Instant::now(),
        }
    }
}

/// Counters of the pool, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WarmStats {
    /// Executions that instantiated a fresh instance.
    pub fresh: u64,
    /// Executions served by a warm instance.
    pub reused: u64,
    /// Instances waiting for their next execution now.
    pub idle: u64,
}

pub struct WarmPool {
    idle: Mutex<Idle>,
    max_idle: usize,
    max_uses: u32,
    idle_timeout: Duration,
    fresh: AtomicU64,
    reused: AtomicU64,
}

#[derive(Default)]
struct Idle {
    /// Most recently returned last: the next execution takes the instance
    /// whose memory is most likely still in the caches.
    by_key: HashMap<WarmKey, Vec<WarmInstance>>,
    count: usize,
}

impl WarmPool {
    pub fn new(max_idle: usize, max_uses: u32, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Idle::default()),
            max_idle,
            max_uses,
            idle_timeout,
            fresh: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// Whether instances are kept at all.
    pub fn enabled(&self) -> bool {
        self.max_idle > 0 && self.max_uses > 1
    }

    /// The instance of this key that was used last, if one is waiting and
    /// has not been idle too long.
    pub fn take(&self, key: &WarmKey) -> Option<WarmInstance> {
        let mut expired = Vec::new();
        let taken = {
            let mut idle = self.lock();
            let Idle { by_key, count } = &mut *idle;
            let mut taken = None;
            if let Some(instances) = by_key.get_mut(key) {
                while let Some(instance) = instances.pop() {
                    *count -= 1;
                    if instance.idle_since.elapsed() < self.idle_timeout {
                        taken = Some(instance);
                        break;
                    }
                    expired.push(instance);
                }
                if instances.is_empty() {
                    by_key.remove(key);
                }
            }
            taken
        };
        // Dropping a store returns its memory to the pool: outside the lock.
        drop(expired);
        match &taken {
            Some(_) => self.reused.fetch_add(1, Ordering::Relaxed),
            None => self.fresh.fetch_add(1, Ordering::Relaxed),
        };
        taken
    }

    /// Counts an execution that did not ask for a warm instance.
    pub fn count_fresh(&self) {
        self.fresh.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps an instance that just finished an execution cleanly, unless it
    /// has served its uses; the least recently used one is retired when
    /// the pool is full.
    pub fn put(&self, key: WarmKey, mut instance: WarmInstance) {
        if !self.enabled() || instance.uses >= self.max_uses {
            return;
        }
        instance.idle_since = Instant::now();
        let evicted = {
            let mut idle = self.lock();
            let evicted = if idle.count >= self.max_idle {
                idle.remove_least_recently_used()
            } else {
                None
            };
            idle.by_key.entry(key).or_default().push(instance);
            idle.count += 1;
            evicted
        };
        drop(evicted);
    }

    /// Retires every instance idle for longer than the idle timeout.
    pub fn retire_idle(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut idle = self.lock();
            let Idle { by_key, count } = &mut *idle;
            by_key.retain(|_, instances| {
                // Oldest first: the expired ones are a prefix.
                let fresh_from = instances
                    .iter()
                    .position(|i| now.duration_since(i.idle_since) < self.idle_timeout)
                    .unwrap_or(instances.len());
                expired.extend(instances.drain(..fresh_from));
                !instances.is_empty()
            });
            *count -= expired.len();
        }
        drop(expired);
    }

    pub fn stats(&self) -> WarmStats {
        WarmStats {
            fresh: self.fresh.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
            idle: self.lock().count as u64,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // The map is consistent after every statement that changes it: a
        // panic elsewhere leaves nothing half done.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Idle {
    fn remove_least_recently_used(&mut self) -> Option<WarmInstance> {
        let key = self
            .by_key
            .iter()
            .filter_map(|(key, instances)| instances.first().map(|i| (key, i.idle_since)))
            .min_by_key(|(_, since)| *since)
            .map(|(key, _)| key.clone())?;
        let instances = self.by_key.get_mut(&key)?;
        let oldest = instances.remove(0);
        if instances.is_empty() {
            self.by_key.remove(&key);
        }
        self.count -= 1;
        Some(oldest)
    }
}

/// The thread that retires idle instances, so an instance nobody calls
/// again gives its memory back; it stops when dropped.
pub fn start_reaper(pool: &Arc<WarmPool>) -> anyhow::Result<Periodic> {
    let period = (pool.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let pool: Weak<WarmPool> = Arc::downgrade(pool);
    Periodic::start("warm-instance-reaper", period, move || {
        match pool.upgrade() {
            Some(pool) => {
                pool.retire_idle();
                true
            }
            None => false,
        }
    })
}
