//! The embedded in-process backends: sessions, result cache and rate
//! limits. Each is a moka cache: entries expire on their own TTL, and the
//! total is bounded, so a flood of sessions or params cannot exhaust memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use moka::Expiry;
use moka::future::Cache;
use serde_json::Value;

use super::{Insert, RateLimiter, ResultCache, Session, SessionStore, StoreResult};

/// Expires each entry at its own deadline.
struct ByDeadline;

impl<K, V> Expiry<K, (V, Instant)> for ByDeadline {
    fn expire_after_create(
        &self,
        _key: &K,
        value: &(V, Instant),
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.1.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &K,
        value: &(V, Instant),
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.1.saturating_duration_since(updated_at))
    }
}

/// A live session: what it was created with, and its counts, which
/// change in place at every execution (no new entry, no copy of the
/// context, no lock of the cache).
struct LiveSession {
    created: Session,
    counted: Mutex<Counted>,
}

#[derive(Clone, Copy)]
struct Counted {
    execution_count: u64,
    last_executed_at: Option<DateTime<Utc>>,
}

impl LiveSession {
    fn new(session: &Session) -> Arc<Self> {
        Arc::new(Self {
            created: session.clone(),
            counted: Mutex::new(Counted {
                execution_count: session.execution_count,
                last_executed_at: session.last_executed_at,
            }),
        })
    }

    fn counted(&self) -> std::sync::MutexGuard<'_, Counted> {
        // Two plain fields, consistent after every statement.
        self.counted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session as it stands now.
    fn session(&self) -> Session {
        let counted = *self.counted();
        Session {
            execution_count: counted.execution_count,
            last_executed_at: counted.last_executed_at,
            ..self.created.clone()
        }
    }
}

/// Sessions in process.
pub struct MemorySessions {
    sessions: Cache<String, (Arc<LiveSession>, Instant)>,
    /// What each owner's live sessions weigh, in bytes: added on insert,
    /// given back by the cache's listener whenever a session leaves
    /// (expired, removed, evicted).
    weights: Arc<Mutex<HashMap<String, u64>>>,
}

impl MemorySessions {
    /// Sessions weighing at most `max_bytes` in all; past it, the least
    /// recently used go (no owner can cause that alone: each has a quota).
    pub fn new(max_bytes: u64) -> Self {
        let weights: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let listener_weights = weights.clone();
        Self {
            sessions: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_: &String, (live, _): &(Arc<LiveSession>, Instant)| {
                    u32::try_from(live.created.weight()).unwrap_or(u32::MAX)
                })
                .expire_after(ByDeadline)
                .eviction_listener(move |_, (live, _): (Arc<LiveSession>, Instant), cause| {
                    // A replaced entry is the same session, counted again.
                    if cause != moka::notification::RemovalCause::Replaced {
                        let session = &live.created;
                        release(&listener_weights, &session.owner, session.weight());
                    }
                })
                .build(),
            weights,
        }
    }
}

fn release(weights: &Mutex<HashMap<String, u64>>, owner: &str, weight: u64) {
    let mut weights = weights.lock().expect("session weights poisoned");
    if let Some(used) = weights.get_mut(owner) {
        *used = used.saturating_sub(weight);
        if *used == 0 {
            weights.remove(owner);
        }
    }
}

/// Now plus `ttl`, or a year from now for a `ttl` past what an `Instant`
/// can hold.
fn deadline_after(ttl: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

fn deadline_of(session: &Session) -> Instant {
    let left = (session.expires_at - Utc::now())
        .to_std()
        .unwrap_or_default();
    deadline_after(left)
}

#[async_trait::async_trait]
impl SessionStore for MemorySessions {
    async fn insert_new(&self, session: &Session, quota_bytes: u64) -> StoreResult<Insert> {
        let weight = session.weight();
        let reserve = || {
            let mut weights = self.weights.lock().expect("session weights poisoned");
            let used = weights.entry(session.owner.clone()).or_insert(0);
            if used.saturating_add(weight) > quota_bytes {
                return Err(*used);
            }
            *used += weight;
            Ok(())
        };
        if reserve().is_err() {
            // Expired sessions are given back when the cache does its
            // housekeeping: do it now, then look again.
            self.sessions.run_pending_tasks().await;
            if let Err(used_bytes) = reserve() {
                return Ok(Insert::OverQuota { used_bytes });
            }
        }
        let entry = self
            .sessions
            .entry(session.request_id.clone())
            .or_insert_with(async { (LiveSession::new(session), deadline_of(session)) })
            .await;
        if entry.is_fresh() {
            Ok(Insert::Inserted)
        } else {
            release(&self.weights, &session.owner, weight);
            Ok(Insert::IdTaken)
        }
    }

    async fn get(&self, request_id: &str) -> StoreResult<Option<Session>> {
        Ok(self
            .sessions
            .get(request_id)
            .await
            .map(|(live, _)| live.session()))
    }

    /// The count changes in place, under the session's own lock:
    /// concurrent executions each count. An expired or removed session
    /// stays gone (one removed while this counts is counted once more in
    /// the copy returned, which changes no stored state).
    async fn record_execution(
        &self,
        session: &Session,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Session>> {
        let Some((live, _)) = self.sessions.get(&session.request_id).await else {
            return Ok(None);
        };
        {
            let mut counted = live.counted();
            counted.execution_count += 1;
            // Executions may finish out of order: the latest time stays.
            counted.last_executed_at = counted.last_executed_at.max(Some(at));
        }
        Ok(Some(live.session()))
    }

    async fn remove(&self, session: &Session) -> StoreResult<()> {
        self.sessions.invalidate(&session.request_id).await;
        Ok(())
    }

    async fn active_count(&self) -> StoreResult<u64> {
        self.sessions.run_pending_tasks().await;
        Ok(self.sessions.entry_count())
    }

    async fn health(&self) -> StoreResult<&'static str> {
        Ok("embedded")
    }
}

/// Results in process, bounded by their total size in bytes.
pub struct MemoryResultCache {
    results: Cache<String, (Arc<Value>, Instant)>,
}

impl MemoryResultCache {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            results: Cache::builder()
                .max_capacity(max_bytes)
                // Weigh by the serialized size, so a few huge results
                // cannot crowd the memory the bound is meant to protect.
                .weigher(|key: &String, (value, _): &(Arc<Value>, Instant)| {
                    let size = key.len() + value.to_string().len();
                    u32::try_from(size).unwrap_or(u32::MAX)
                })
                .expire_after(ByDeadline)
                .build(),
        }
    }
}

#[async_trait::async_trait]
impl ResultCache for MemoryResultCache {
    async fn get(&self, key: &str) -> StoreResult<Option<Value>> {
        Ok(self.results.get(key).await.map(|(v, _)| Value::clone(&v)))
    }

    async fn put(&self, key: &str, result: &Value, ttl: Duration) -> StoreResult<()> {
        self.results
            .insert(
                key.to_owned(),
                (Arc::new(result.clone()), deadline_after(ttl)),
            )
            .await;
        Ok(())
    }
}

/// Fixed-window counters in process.
pub struct MemoryRateLimiter {
    windows: Cache<String, (Arc<AtomicU32>, Instant)>,
}

impl MemoryRateLimiter {
    pub fn new(capacity: u64) -> Self {
        Self {
            windows: Cache::builder()
                .max_capacity(capacity)
                .expire_after(ByDeadline)
                .build(),
        }
    }
}

#[async_trait::async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn increment(&self, key: &str, index: u64, window: Duration) -> StoreResult<u64> {
        let window_end = Instant::now() + window;
        let counter = self
            .windows
            .get_with(format!("{key}:{index}"), async {
                (Arc::new(AtomicU32::new(0)), window_end)
            })
            .await
            .0;
        Ok(u64::from(counter.fetch_add(1, Ordering::Relaxed)) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RateDecision;

    #[tokio::test]
    async fn the_limit_plus_one_request_is_refused_with_a_retry_after() {
        let limiter = MemoryRateLimiter::new(100);
        let window = Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(
                limiter.check("k", 3, window).await.unwrap(),
                RateDecision::Allowed
            );
        }
        match limiter.check("k", 3, window).await.unwrap() {
            RateDecision::Limited { retry_after_secs } => {
                assert!((1..=60).contains(&retry_after_secs))
            }
            other => panic!("{other:?}"),
        }
        // Another key has its own window.
        assert_eq!(
            limiter.check("other", 3, window).await.unwrap(),
            RateDecision::Allowed
        );
    }

    #[tokio::test]
    async fn cached_results_expire_after_their_ttl() {
        let cache = MemoryResultCache::new(1 << 20);
        cache
            .put("k", &serde_json::json!(1), Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(cache.get("k").await.unwrap(), Some(serde_json::json!(1)));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(cache.get("k").await.unwrap(), None);
    }
}
