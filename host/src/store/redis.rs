//! The production backend of sessions, the result cache and rate limits:
//! Redis, shared by every host replica.
//!
//! Keys are namespaced (`lambda:session:<id>` with `lambda:session-stats:<id>`, `lambda:result:<digest>`,
//! `lambda:rate:<key>:<window>`, under a configurable prefix) and every key carries a TTL, so Redis
//! never holds what nobody will read again. The connection manager
//! reconnects on its own: while Redis is down, calls fail fast (the caller
//! decides what that means: the result cache becomes a miss, the rate
//! limiter lets requests through) and succeed again once it returns.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client};
use serde_json::Value;

use super::memory::current_window;
use super::{
    RateDecision, RateLimiter, ResultCache, Session, SessionStore, StoreError, StoreResult,
};

/// One connection manager, cheap to clone, shared by the three stores.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    /// Every key of ours starts with this (`lambda:` by default).
    prefix: String,
}

fn redis_error(context: &'static str) -> impl FnOnce(redis::RedisError) -> StoreError {
    move |e| StoreError::new(context, e)
}

impl RedisStore {
    /// Prepares a connection without opening it: the host starts (and
    /// reports itself degraded) even when Redis is down.
    pub fn connect(url: &str, prefix: &str) -> StoreResult<Self> {
        let client = Client::open(url).map_err(redis_error("parsing the Redis URL"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(redis_error("configuring the Redis connection"))?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn session_key(&self, request_id: &str) -> String {
        self.key(&format!("session:{request_id}"))
    }

    /// A session's execution count and last execution time (a hash).
    fn session_stats_key(&self, request_id: &str) -> String {
        self.key(&format!("session-stats:{request_id}"))
    }

    /// The sorted set of live session ids, scored by expiry (ms since the
    /// epoch), for counting active sessions without a scan.
    fn session_index(&self) -> String {
        self.key("sessions")
    }

    fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Waits until Redis answers a PING.
    pub async fn ping(&self) -> StoreResult<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection())
            .await
            .map_err(redis_error("pinging Redis"))?;
        Ok(())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    async fn insert_new(&self, session: &Session) -> StoreResult<bool> {
        let json =
            serde_json::to_string(session).map_err(|e| StoreError::new("encoding a session", e))?;
        let expires_ms = session.expires_at.timestamp_millis();
        let inserted: Option<String> = redis::cmd("SET")
            .arg(self.session_key(&session.request_id))
            .arg(json)
            .arg("NX")
            .arg("PXAT")
            .arg(expires_ms)
            .query_async(&mut self.connection())
            .await
            .map_err(redis_error("storing a session"))?;
        if inserted.is_none() {
            return Ok(false);
        }
        let _: () = self
            .connection()
            .zadd(self.session_index(), &session.request_id, expires_ms)
            .await
            .map_err(redis_error("indexing a session"))?;
        Ok(true)
    }

    async fn get(&self, request_id: &str) -> StoreResult<Option<Session>> {
        let (json, (count, last)): (Option<String>, (Option<u64>, Option<i64>)) = redis::pipe()
            .atomic()
            .get(self.session_key(request_id))
            .cmd("HMGET")
            .arg(self.session_stats_key(request_id))
            .arg("count")
            .arg("last")
            .query_async(&mut self.connection())
            .await
            .map_err(redis_error("reading a session"))?;
        let Some(json) = json else {
            return Ok(None);
        };
        let mut session: Session =
            serde_json::from_str(&json).map_err(|e| StoreError::new("decoding a session", e))?;
        if let Some(count) = count {
            session.execution_count = count;
        }
        if let Some(last) = last {
            session.last_executed_at = DateTime::from_timestamp_millis(last);
        }
        Ok(Some(session))
    }

    /// The session itself never changes after it is stored; its counters
    /// live in a hash beside it, where HINCRBY counts concurrent executions
    /// exactly (a read-modify-write of the session would lose some).
    async fn record_execution(
        &self,
        session: &Session,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Session>> {
        let stats = self.session_stats_key(&session.request_id);
        let (live, count): (bool, u64) = redis::pipe()
            .atomic()
            .exists(self.session_key(&session.request_id))
            .hincr(&stats, "count", 1)
            .hset(&stats, "last", at.timestamp_millis())
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&stats)
            .arg(session.expires_at.timestamp_millis())
            .ignore()
            .query_async(&mut self.connection())
            .await
            .map_err(redis_error("counting an execution"))?;
        if !live {
            // Expired or removed: the counters go too; it is not brought back.
            let _: () = self
                .connection()
                .del(&stats)
                .await
                .map_err(redis_error("counting an execution"))?;
            return Ok(None);
        }
        let mut counted = session.clone();
        counted.execution_count = count;
        counted.last_executed_at = Some(at);
        Ok(Some(counted))
    }

    async fn remove(&self, request_id: &str) -> StoreResult<()> {
        let _: () = redis::pipe()
            .atomic()
            .del(self.session_key(request_id))
            .del(self.session_stats_key(request_id))
            .zrem(self.session_index(), request_id)
            .query_async(&mut self.connection())
            .await
            .map_err(redis_error("removing a session"))?;
        Ok(())
    }

    async fn active_count(&self) -> StoreResult<u64> {
        let now = Utc::now().timestamp_millis();
        let (_, count): (u64, u64) = redis::pipe()
            .atomic()
            .zrembyscore(self.session_index(), "-inf", now)
            .zcard(self.session_index())
            .query_async(&mut self.connection())
            .await
            .map_err(redis_error("counting sessions"))?;
        Ok(count)
    }

    async fn health(&self) -> StoreResult<&'static str> {
        self.ping().await?;
        Ok("ok")
    }
}

#[async_trait::async_trait]
impl ResultCache for RedisStore {
    async fn get(&self, key: &str) -> StoreResult<Option<Value>> {
        let json: Option<String> = self
            .connection()
            .get(self.key(key))
            .await
            .map_err(redis_error("reading the result cache"))?;
        json.map(|json| {
            serde_json::from_str(&json).map_err(|e| StoreError::new("decoding a cached result", e))
        })
        .transpose()
    }

    async fn put(&self, key: &str, result: &Value, ttl: Duration) -> StoreResult<()> {
        let _: () = self
            .connection()
            .pset_ex(self.key(key), result.to_string(), millis(ttl))
            .await
            .map_err(redis_error("writing the result cache"))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl RateLimiter for RedisStore {
    async fn check(&self, key: &str, limit: u32, window: Duration) -> StoreResult<RateDecision> {
        let (index, retry_after_secs) = current_window(window);
        let counter = self.key(&format!("rate:{key}:{index}"));
        // One round trip: count, and make sure the counter dies with its
        // window (every replica counts in the same wall-clock windows).
        let (count, _): (u64, bool) = redis::pipe()
            .atomic()
            .incr(&counter, 1)
            .pexpire(&counter, millis(window) as i64)
            .query_async(&mut self.connection())
            .await
            .map_err(redis_error("counting a request"))?;
        Ok(if count <= u64::from(limit) {
            RateDecision::Allowed
        } else {
            RateDecision::Limited { retry_after_secs }
        })
    }
}
