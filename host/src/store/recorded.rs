//! Live sessions backed by their durable records.
//!
//! The live store (in process, or Redis) answers every read it can; its
//! entries can vanish while the session is still valid: Redis restarted
//! without persistence, a key evicted under `maxmemory`, the embedded host
//! restarted. On a miss the record in the database decides: an active,
//! unexpired record is put back into the live store and served, so a
//! session is lost only when it has ended or expired. Creating and ending a
//! session write the record before the caller is answered; execution
//! counts reach it through the log writer, in batches.
//!
//! [`SessionRecords`]: super::SessionRecords

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Insert, Session, SessionRecords, SessionStore, StoreResult};

pub struct RecordedSessions {
    live: Arc<dyn SessionStore>,
    records: Arc<dyn SessionRecords>,
}

impl RecordedSessions {
    pub fn new(live: Arc<dyn SessionStore>, records: Arc<dyn SessionRecords>) -> Self {
        Self { live, records }
    }
}

#[async_trait::async_trait]
impl SessionStore for RecordedSessions {
    async fn insert_new(&self, session: &Session, quota_bytes: u64) -> StoreResult<Insert> {
        let inserted = self.live.insert_new(session, quota_bytes).await?;
        if inserted != Insert::Inserted {
            return Ok(inserted);
        }
        match self.records.create(session).await {
            Ok(true) => Ok(Insert::Inserted),
            // The live store had lost a session that is still active: the
            // id is taken, whoever asks for it now.
            Ok(false) => {
                self.live.remove(session).await?;
                Ok(Insert::IdTaken)
            }
            // The session still runs (the database being down does not
            // stop initialize); its record is written with its first
            // execution count, through the log writer, once the database
            // is back.
            Err(e) => {
                tracing::warn!(request_id = %session.request_id, "session record not written: {e}");
                Ok(Insert::Inserted)
            }
        }
    }

    async fn get(&self, request_id: &str) -> StoreResult<Option<Session>> {
        if let Some(session) = self.live.get(request_id).await? {
            return Ok(Some(session));
        }
        let record = match self.records.read(request_id).await {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(request_id, "cannot read the session record: {e}");
                return Ok(None);
            }
        };
        let Some(session) = record else {
            return Ok(None);
        };
        // Back into the live store, outside any quota: it was counted when
        // it was created. Another reader may have restored it first.
        self.live.insert_new(&session, u64::MAX).await?;
        tracing::info!(request_id, "session restored from its record");
        Ok(Some(session))
    }

    async fn record_execution(
        &self,
        session: &Session,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Session>> {
        self.live.record_execution(session, at).await
    }

    /// The record ends first: were it left active, a later miss would bring
    /// the removed session back.
    async fn remove(&self, session: &Session) -> StoreResult<()> {
        let ended = self.records.end(&session.request_id).await;
        self.live.remove(session).await?;
        ended
    }

    async fn active_count(&self) -> StoreResult<u64> {
        self.live.active_count().await
    }

    async fn health(&self) -> StoreResult<&'static str> {
        self.live.health().await
    }
}
