//! Sessions that survive a Redis outage on the replica that holds them.
//!
//! Redis is the shared live store. Every session is also mirrored in
//! process; while Redis cannot be reached, reads fall back to the mirror
//! (and, above this, [`RecordedSessions`](super::recorded::RecordedSessions)
//! to the durable record, so a session another replica started still
//! executes here), and new sessions live in process only. Health reports
//! the outage through `health()`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::memory::MemorySessions;
use super::{Insert, Session, SessionStore, StoreResult};

pub struct ResilientSessions {
    shared: Arc<dyn SessionStore>,
    /// A copy of every session this replica wrote, read only while the
    /// shared store fails.
    mirror: MemorySessions,
    /// Sessions created while the shared store was down: they exist
    /// nowhere else.
    local_only: MemorySessions,
}

impl ResilientSessions {
    pub fn new(shared: Arc<dyn SessionStore>, capacity: u64) -> Self {
        Self {
            shared,
            mirror: MemorySessions::new(capacity),
            local_only: MemorySessions::new(capacity),
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for ResilientSessions {
    async fn insert_new(&self, session: &Session, quota_bytes: u64) -> StoreResult<Insert> {
        let inserted = match self.shared.insert_new(session, quota_bytes).await {
            Ok(inserted) => inserted,
            Err(e) => {
                tracing::warn!("session store unavailable, keeping the session in process: {e}");
                self.local_only.insert_new(session, quota_bytes).await?
            }
        };
        if inserted == Insert::Inserted {
            // A copy: the quota was the shared store's to apply.
            self.mirror.insert_new(session, u64::MAX).await?;
        }
        Ok(inserted)
    }

    async fn get(&self, request_id: &str) -> StoreResult<Option<Session>> {
        match self.shared.get(request_id).await {
            Ok(Some(session)) => Ok(Some(session)),
            Ok(None) => self.local_only.get(request_id).await,
            Err(e) => {
                tracing::warn!("session store unavailable, reading the local mirror: {e}");
                if let Some(session) = self.mirror.get(request_id).await? {
                    return Ok(Some(session));
                }
                self.local_only.get(request_id).await
            }
        }
    }

    /// The shared store's count is the truth; the mirror counts this
    /// replica's executions only, good enough for an outage.
    async fn record_execution(
        &self,
        session: &Session,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Session>> {
        let mirrored = self.mirror.record_execution(session, at).await?;
        let local = self.local_only.record_execution(session, at).await?;
        match self.shared.record_execution(session, at).await {
            Ok(Some(counted)) => Ok(Some(counted)),
            Ok(None) => Ok(local),
            Err(e) => {
                tracing::warn!("session store unavailable, execution counted in process only: {e}");
                Ok(local.or(mirrored))
            }
        }
    }

    async fn remove(&self, session: &Session) -> StoreResult<()> {
        self.mirror.remove(session).await?;
        self.local_only.remove(session).await?;
        if let Err(e) = self.shared.remove(session).await {
            tracing::warn!("session store unavailable, session removed in process only: {e}");
        }
        Ok(())
    }

    async fn active_count(&self) -> StoreResult<u64> {
        let local = self.local_only.active_count().await?;
        match self.shared.active_count().await {
            Ok(shared) => Ok(shared + local),
            Err(_) => Ok(self.mirror.active_count().await?.max(local)),
        }
    }

    async fn health(&self) -> StoreResult<&'static str> {
        self.shared.health().await
    }
}
