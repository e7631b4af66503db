//! The production backend of sessions, the result cache and rate limits:
//! Redis, shared by every host replica.
//!
//! Keys are namespaced (`lambda:session:<id>` with `lambda:session-stats:<id>`, `lambda:result:<digest>`,
//! `lambda:rate:<key>:<window>`, under a configurable prefix) and every key carries a TTL, so Redis
//! never holds what nobody will read again. The exception is the key-value
//! data of HTTP functions (`lambda:kv:<namespace>`, `lambda:kv-bytes:<namespace>`),
//! which is theirs to keep and bounded by its quota instead. The connection manager
//! reconnects on its own: while Redis is down, calls fail fast (the caller
//! decides what that means: the result cache becomes a miss, the rate
//! limiter lets requests through) and succeed again once it returns.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client};
use serde_json::Value;

use super::{
    Insert, KeyValueStore, KvSet, RateLimiter, ResultCache, Session, SessionStore, StoreError,
    StoreResult,
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

    /// An owner's live sessions: a sorted set of ids scored by expiry,
    /// and a hash of their weights.
    fn owner_index(&self, owner: &str) -> String {
        self.key(&format!("owner-sessions:{owner}"))
    }

    fn owner_weights(&self, owner: &str) -> String {
        self.key(&format!("owner-weights:{owner}"))
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

/// Stores a session unless its id is taken or its owner's live sessions
/// would weigh more than the quota with it; indexes it globally and by
/// owner. Returns 1 (stored), 0 (id taken) or -(used bytes) - 1 (over the
/// quota). The owner's expired sessions are dropped from its index first.
///
/// KEYS: session, global index, owner index, owner weights.
/// ARGV: session JSON, expiry (ms), now (ms), id, weight, quota.
static INSERT_SESSION: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[3])
        for _, id in ipairs(expired) do redis.call('HDEL', KEYS[4], id) end
        redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[3])
        local used = 0
        for _, weight in ipairs(redis.call('HVALS', KEYS[4])) do used = used + tonumber(weight) end
        if used + tonumber(ARGV[5]) > tonumber(ARGV[6]) then return -used - 1 end
        if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PXAT', ARGV[2]) then return 0 end
        redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
        redis.call('ZADD', KEYS[3], ARGV[2], ARGV[4])
        redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
        -- The owner's index lives as long as its last session.
        local left = tonumber(ARGV[2]) - tonumber(ARGV[3])
        for _, key in ipairs({KEYS[3], KEYS[4]}) do
            if redis.call('PTTL', key) < left then redis.call('PEXPIREAT', key, ARGV[2]) end
        end
        return 1
        ",
    )
});

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    /// One script, so the quota check and the write are one step for
    /// every replica.
    async fn insert_new(&self, session: &Session, quota_bytes: u64) -> StoreResult<Insert> {
        let json =
            serde_json::to_string(session).map_err(|e| StoreError::new("encoding a session", e))?;
        let outcome: i64 = INSERT_SESSION
            .key(self.session_key(&session.request_id))
            .key(self.session_index())
            .key(self.owner_index(&session.owner))
            .key(self.owner_weights(&session.owner))
            .arg(json)
            .arg(session.expires_at.timestamp_millis())
            .arg(Utc::now().timestamp_millis())
            .arg(&session.request_id)
            .arg(session.weight())
            .arg(quota_bytes)
            .invoke_async(&mut self.connection())
            .await
            .map_err(redis_error("storing a session"))?;
        Ok(match outcome {
            1 => Insert::Inserted,
            0 => Insert::IdTaken,
            used => Insert::OverQuota {
                used_bytes: (-used - 1).max(0) as u64,
            },
        })
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

    async fn remove(&self, session: &Session) -> StoreResult<()> {
        let request_id = &session.request_id;
        let _: () = redis::pipe()
            .atomic()
            .del(self.session_key(request_id))
            .del(self.session_stats_key(request_id))
            .zrem(self.session_index(), request_id)
            .zrem(self.owner_index(&session.owner), request_id)
            .hdel(self.owner_weights(&session.owner), request_id)
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
    async fn increment(&self, key: &str, index: u64, window: Duration) -> StoreResult<u64> {
        let counter = self.key(&format!("rate:{key}:{index}"));
        // One round trip: count, and make sure the counter dies with its
        // window.
        let (count, _): (u64, bool) = redis::pipe()
            .atomic()
            .incr(&counter, 1)
            .pexpire(&counter, millis(window) as i64)
            .query_async(&mut self.connection())
            .await
            .map_err(redis_error("counting a request"))?;
        Ok(count)
    }
}

/// Sets a key-value entry unless its namespace would then weigh more than
/// the quota. The namespace is a hash of its entries and a counter of its
/// bytes (keys plus values), kept together by this script. Returns 1
/// (stored) or 0 (over the quota).
///
/// KEYS: the namespace's hash, its byte counter.
/// ARGV: key, value, quota.
static SET_ENTRY: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local old = 0
        if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
            old = string.len(ARGV[1]) + redis.call('HSTRLEN', KEYS[1], ARGV[1])
        end
        local new = string.len(ARGV[1]) + string.len(ARGV[2])
        local used = tonumber(redis.call('GET', KEYS[2]) or '0')
        if used - old + new > tonumber(ARGV[3]) then return 0 end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        redis.call('INCRBY', KEYS[2], new - old)
        return 1
        ",
    )
});

/// Deletes a key-value entry and takes its bytes off the counter.
///
/// KEYS: the namespace's hash, its byte counter. ARGV: key.
static DELETE_ENTRY: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
        local size = string.len(ARGV[1]) + redis.call('HSTRLEN', KEYS[1], ARGV[1])
        redis.call('HDEL', KEYS[1], ARGV[1])
        redis.call('DECRBY', KEYS[2], size)
        return 1
        ",
    )
});

impl RedisStore {
    /// A namespace's entries (a hash) and its size in bytes: durable, the
    /// one kind of key of ours without a TTL.
    fn key_value_keys(&self, namespace: &str) -> [String; 2] {
        [
            self.key(&format!("kv:{namespace}")),
            self.key(&format!("kv-bytes:{namespace}")),
        ]
    }
}

#[async_trait::async_trait]
impl KeyValueStore for RedisStore {
    async fn get(&self, namespace: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let [entries, _] = self.key_value_keys(namespace);
        self.connection()
            .hget(entries, key)
            .await
            .map_err(redis_error("reading a key-value entry"))
    }

    async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        quota_bytes: u64,
    ) -> StoreResult<KvSet> {
        let [entries, bytes] = self.key_value_keys(namespace);
        let stored: i64 = SET_ENTRY
            .key(entries)
            .key(bytes)
            .arg(key)
            .arg(value)
            .arg(quota_bytes)
            .invoke_async(&mut self.connection())
            .await
            .map_err(redis_error("writing a key-value entry"))?;
        Ok(if stored == 1 {
            KvSet::Stored
        } else {
            KvSet::OverQuota
        })
    }

    async fn delete(&self, namespace: &str, key: &str) -> StoreResult<()> {
        let [entries, bytes] = self.key_value_keys(namespace);
        let _: i64 = DELETE_ENTRY
            .key(entries)
            .key(bytes)
            .arg(key)
            .invoke_async(&mut self.connection())
            .await
            .map_err(redis_error("deleting a key-value entry"))?;
        Ok(())
    }

    async fn exists(&self, namespace: &str, key: &str) -> StoreResult<bool> {
        let [entries, _] = self.key_value_keys(namespace);
        self.connection()
            .hexists(entries, key)
            .await
            .map_err(redis_error("reading a key-value entry"))
    }

    async fn keys(&self, namespace: &str) -> StoreResult<Vec<String>> {
        let [entries, _] = self.key_value_keys(namespace);
        let mut keys: Vec<String> = self
            .connection()
            .hkeys(entries)
            .await
            .map_err(redis_error("listing key-value entries"))?;
        keys.sort();
        Ok(keys)
    }
}
