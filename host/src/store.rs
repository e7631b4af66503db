//! Where the host keeps state, behind traits with two kinds of backend:
//!
//! | concern | embedded (no setup) | production |
//! |---|---|---|
//! | sessions, result cache, rate limits | [`memory`]: in process, TTL-aware, bounded | Redis |
//! | registry, request/error logs, session records | [`sqlite`]: a file in the data directory | PostgreSQL |
//! | key-value data of HTTP functions | [`sqlite`] | Redis |
//!
//! Build artifacts (component bytes) live in the toolchain's
//! [`ArtifactStore`](crate::toolchain::ArtifactStore).

mod bounded;
mod log_writer;
pub mod memory;
pub mod postgres;
pub mod recorded;
pub mod redis;
pub mod resilient;
pub mod sqlite;

pub use log_writer::LogWriter;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::Digest;
use crate::language::LanguageTitle;

/// A store failed: the backend is unreachable or answered nonsense.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source:#}")]
pub struct StoreError {
    context: &'static str,
    source: anyhow::Error,
}

impl StoreError {
    pub fn new(context: &'static str, source: impl Into<anyhow::Error>) -> Self {
        Self {
            context,
            source: source.into(),
        }
    }

    /// True when the database refused the values themselves (too long, out
    /// of range, not valid text, a broken constraint): trying again cannot
    /// help, unlike a database that is down or busy.
    pub fn refused_for_data(&self) -> bool {
        let Some(error) = self.source.downcast_ref::<sqlx::Error>() else {
            return false;
        };
        match error {
            sqlx::Error::Encode(_) => true,
            sqlx::Error::Database(e) => {
                e.kind() != sqlx::error::ErrorKind::Other
                    // PostgreSQL's SQLSTATE classes: 22 data exception,
                    // 23 integrity constraint, 54 program limit (a row or
                    // value too big).
                    || e.code()
                        .is_some_and(|c| ["22", "23", "54"].iter().any(|k| c.starts_with(k)))
                    // SQLite: SQLITE_TOOBIG, SQLITE_MISMATCH, SQLITE_RANGE.
                    || e.code().is_some_and(|c| ["18", "20", "25"].contains(&c.as_ref()))
            }
            _ => false,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An identity read back from a database (a digest, a language title):
/// what the host wrote parses, so anything else is a damaged row.
pub(crate) fn parse_stored<T>(what: &'static str, text: &str) -> StoreResult<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text.trim().parse().map_err(|e| StoreError::new(what, e))
}

/// An initialized function waiting for executions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// The session id: the `request_id` of initialize and execute.
    pub request_id: String,
    pub language_title: LanguageTitle,
    /// The token subject that created it; only it may use the session.
    pub owner: String,
    /// The build digest of the function version the session runs, so a
    /// function re-registered later does not change a running session.
    pub build_digest: Digest,
    /// The digest of the component's bytes: the runtime's cache key and
    /// the version the result cache is keyed by.
    pub component_digest: Digest,
    pub context: Value,
    pub timeout_ms: u64,
    pub retain_session: bool,
    /// Whether its executions may run in a warm instance of its caller's
    /// (the function's opt-in when the session started).
    #[serde(default)]
    pub warm_instances: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub execution_count: u64,
    pub last_executed_at: Option<DateTime<Utc>>,
}

impl Session {
    /// What the session weighs in a store, in bytes: its context (at most
    /// `max_context_bytes`) and its fixed fields.
    pub fn weight(&self) -> u64 {
        const FIXED_FIELDS: u64 = 512;
        FIXED_FIELDS + self.context.to_string().len() as u64 + self.owner.len() as u64
    }
}

/// What came of [`SessionStore::insert_new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    Inserted,
    /// The id is another session's.
    IdTaken,
    /// The owner's live sessions weigh too much already to add this one.
    OverQuota {
        used_bytes: u64,
    },
}

/// Sessions, in memory or in Redis.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
    /// Inserts a session unless its id is taken or its owner's live
    /// sessions would weigh more than `quota_bytes` with it (one check and
    /// write, so concurrent inserts cannot overshoot together).
    async fn insert_new(&self, session: &Session, quota_bytes: u64) -> StoreResult<Insert>;
    /// The session, unless it is unknown or expired.
    async fn get(&self, request_id: &str) -> StoreResult<Option<Session>>;
    /// Counts one execution of a live session, atomically (concurrent
    /// executions of one session each count), and returns the session as
    /// stored now; `None` when it expired or was removed, which this does
    /// not undo.
    async fn record_execution(
        &self,
        session: &Session,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Session>>;
    async fn remove(&self, session: &Session) -> StoreResult<()>;
    /// How many sessions are live.
    async fn active_count(&self) -> StoreResult<u64>;
    /// "embedded" or "ok"; an error when the backend cannot be reached.
    async fn health(&self) -> StoreResult<&'static str>;
}

/// Results of executions, keyed by function version and params.
#[async_trait::async_trait]
pub trait ResultCache: Send + Sync {
    async fn get(&self, key: &str) -> StoreResult<Option<Value>>;
    async fn put(&self, key: &str, result: &Value, ttl: Duration) -> StoreResult<()>;
}

/// What a rate limiter decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    /// Over the limit; the window ends in this many seconds.
    Limited {
        retry_after_secs: u64,
    },
}

/// What came of [`KeyValueStore::set`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvSet {
    Stored,
    /// The namespace would hold more than its quota with this value; the
    /// old value (if any) stays.
    OverQuota,
}

/// The key-value data of HTTP functions (Spin's key-value interface),
/// durable: in Redis or the embedded database. A namespace is one
/// function's and owner's store; the caller derives it and enforces key
/// lengths. A namespace's size is the bytes of its keys and values.
#[async_trait::async_trait]
pub trait KeyValueStore: Send + Sync {
    async fn get(&self, namespace: &str, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Stores `value` under `key` unless the namespace would then weigh
    /// more than `quota_bytes` (one check and write, so concurrent sets
    /// cannot overshoot together).
    async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        quota_bytes: u64,
    ) -> StoreResult<KvSet>;
    /// Removes `key`; a missing key is no error.
    async fn delete(&self, namespace: &str, key: &str) -> StoreResult<()>;
    async fn exists(&self, namespace: &str, key: &str) -> StoreResult<bool>;
    async fn keys(&self, namespace: &str) -> StoreResult<Vec<String>>;
}

/// Fixed-window request counters, shared by every replica in production.
/// Backends count; the decision is made once, in [`check`](Self::check).
#[async_trait::async_trait]
pub trait RateLimiter: Send + Sync {
    /// Adds one to `key`'s counter of window number `index` (which lasts
    /// `window`, and is forgotten after it) and returns the new count.
    async fn increment(&self, key: &str, index: u64, window: Duration) -> StoreResult<u64>;

    /// Counts one request for `key` and says whether it is within `limit`
    /// per `window`.
    async fn check(&self, key: &str, limit: u32, window: Duration) -> StoreResult<RateDecision> {
        let (index, retry_after_secs) = current_window(window);
        let count = self.increment(key, index, window).await?;
        Ok(if count <= u64::from(limit) {
            RateDecision::Allowed
        } else {
            RateDecision::Limited { retry_after_secs }
        })
    }
}

/// The index of the current window since the epoch, and the whole seconds
/// until it ends (at least 1). Windows are aligned to the wall clock, so
/// every replica counts in the same windows.
pub fn current_window(window: Duration) -> (u64, u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let width = window.as_millis().max(1);
    let index = now.as_millis() / width;
    let left_ms = width - now.as_millis() % width;
    (index as u64, (left_ms as u64).div_ceil(1000).max(1))
}

/// Predefined or registered through the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionKind {
    Predefined,
    Dynamic,
}

impl FunctionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionKind::Predefined => "predefined",
            FunctionKind::Dynamic => "dynamic",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "predefined" => Some(FunctionKind::Predefined),
            "dynamic" => Some(FunctionKind::Dynamic),
            _ => None,
        }
    }
}

/// Which tier runs a function. A JavaScript or Python function runs on its
/// language's interpreter (tier 0) from the moment it is registered, and
/// on its own component (tier 1) once that is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TierState {
    /// Its own component runs (tier 1).
    Compiled,
    /// The interpreter runs it while its own component is built.
    Pending,
    /// The interpreter runs it; its own component could not be built, for
    /// this reason.
    Failed(String),
    /// The interpreter runs it; this host does not build tier 1.
    Interpreted,
}

impl TierState {
    /// The column's text; [`TierState::Failed`]'s reason is kept apart.
    pub fn as_str(&self) -> &'static str {
        match self {
            TierState::Compiled => "compiled",
            TierState::Pending => "pending",
            TierState::Failed(_) => "failed",
            TierState::Interpreted => "interpreted",
        }
    }

    /// From the stored columns.
    pub fn from_columns(tier: &str, error: Option<String>) -> StoreResult<Self> {
        Ok(match tier {
            "compiled" => TierState::Compiled,
            "pending" => TierState::Pending,
            "failed" => TierState::Failed(error.unwrap_or_default()),
            "interpreted" => TierState::Interpreted,
            other => {
                return Err(StoreError::new(
                    "reading a function's tier",
                    anyhow::anyhow!("unknown tier {other:?}"),
                ));
            }
        })
    }

    /// The reason of a failed tier 1, for the error column.
    pub fn error(&self) -> Option<&str> {
        match self {
            TierState::Failed(reason) => Some(reason),
            _ => None,
        }
    }

    /// Whether the function runs on its own component.
    pub fn is_compiled(&self) -> bool {
        *self == TierState::Compiled
    }
}

/// How the tier-1 build of a function version ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TierUp {
    /// Built and loaded: this component runs the function from now on.
    Compiled {
        component_digest: Digest,
        component_size: u64,
    },
    /// Not built, for this reason: the interpreter keeps running it.
    Failed(String),
}

/// A function of the registry.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionRecord {
    pub language_title: LanguageTitle,
    pub kind: FunctionKind,
    /// The subject that registered it (dynamic functions).
    pub owner: Option<String>,
    pub description: String,
    /// The source, for dynamic functions.
    pub script_content: Option<String>,
    /// The digest of the build's inputs (language, toolchain, options,
    /// source): the function version, whichever tier runs it.
    pub build_digest: Digest,
    /// The component that runs now: the function's own, or, before its
    /// tier 1, the language's interpreter.
    pub component_digest: Digest,
    pub component_size: u64,
    pub tier: TierState,
    /// Whether an instance may serve its caller's next execution of the
    /// same version (a warm instance).
    pub warm_instances: bool,
    /// What an HTTP function declared it needs; `None`: nothing declared
    /// (the policy's whole grant applies).
    pub capabilities: Option<crate::runtime::policy::Declared>,
    pub compile_options: Value,
    /// `{"params": <JSON Schema>, "result": <JSON Schema>}` where known.
    pub schema: Value,
    pub examples: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The filters and page of `GET /api/v1/functions`.
#[derive(Clone, Debug, Default)]
pub struct FunctionFilter {
    pub language: Option<String>,
    pub owner: Option<String>,
    pub kind: Option<FunctionKind>,
    /// 1-based.
    pub page: u32,
    pub per_page: u32,
}

/// The function registry: SQLite or PostgreSQL.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// Inserts or replaces a function, keeping its `created_at`, in one
    /// conditional statement: a dynamic function replaces only a dynamic
    /// function of the same owner (a predefined one replaces anything).
    /// False when the name is another's and nothing was written: of two
    /// users registering one new name at once, exactly one wins.
    async fn upsert(&self, function: &FunctionRecord) -> StoreResult<bool>;
    async fn get(&self, language_title: &LanguageTitle) -> StoreResult<Option<FunctionRecord>>;
    /// The total matching the filter and one page of them, by name.
    async fn list(&self, filter: &FunctionFilter) -> StoreResult<(u64, Vec<FunctionRecord>)>;
    /// The build and component digests of every registered function: what
    /// the stores of built components and native code must keep.
    async fn digests(&self) -> StoreResult<Vec<(Digest, Digest)>>;
    /// Records how the tier-1 build of version `build_digest` ended, in
    /// one conditional statement: false, and nothing written, when the
    /// function is another version by now or its tier 1 is recorded
    /// already.
    async fn finish_tier_up(
        &self,
        language_title: &LanguageTitle,
        build_digest: Digest,
        outcome: &TierUp,
    ) -> StoreResult<bool>;
    async fn health(&self) -> StoreResult<&'static str>;
}

/// One served request.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestLog {
    /// The row's id, which the request's error row refers to.
    pub id: uuid::Uuid,
    pub request_id: Option<String>,
    pub method: String,
    /// The route template, e.g. `/api/v1/execute/{request_id}`.
    pub endpoint: String,
    pub status: u16,
    pub duration_ms: f64,
    pub user_id: Option<String>,
    pub language_title: Option<String>,
    pub cached: Option<bool>,
    pub client_ip: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One error answered to a client.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorLog {
    /// The request this error answered.
    pub request_log_id: uuid::Uuid,
    pub request_id: Option<String>,
    pub endpoint: String,
    pub code: String,
    pub message: String,
    pub details: Value,
    pub created_at: DateTime<Utc>,
}

/// A record the log writer persists, in batches, off the request path.
#[derive(Clone, Debug, PartialEq)]
pub enum LogRecord {
    Request(RequestLog),
    Error(ErrorLog),
    /// The durable copy of a session, written when it is created and after
    /// each execution.
    Session(Session),
}

/// Rows deleted per statement by [`LogStore::sweep`].
pub const SWEEP_CHUNK: i64 = 10_000;

/// A batch of log records by table, for one multi-row insert per table.
/// Requests come before errors (an error row refers to its request row);
/// of the copies of one session only the latest is kept (each execution
/// queues one, and one statement may not update a row twice).
pub struct LogBatch<'a> {
    pub requests: Vec<&'a RequestLog>,
    pub errors: Vec<&'a ErrorLog>,
    pub sessions: Vec<&'a Session>,
}

impl<'a> LogBatch<'a> {
    /// Rows per statement: well within either database's bound on
    /// parameters (12 columns at most here).
    pub const ROWS_PER_STATEMENT: usize = 1000;

    pub fn of(records: &'a [LogRecord]) -> Self {
        let mut batch = LogBatch {
            requests: Vec::new(),
            errors: Vec::new(),
            sessions: Vec::new(),
        };
        let mut latest: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for record in records {
            match record {
                LogRecord::Request(r) => batch.requests.push(r),
                LogRecord::Error(e) => batch.errors.push(e),
                LogRecord::Session(s) => match latest.get(s.request_id.as_str()) {
                    Some(&i) => {
                        if s.execution_count >= batch.sessions[i].execution_count {
                            batch.sessions[i] = s;
                        }
                    }
                    None => {
                        latest.insert(&s.request_id, batch.sessions.len());
                        batch.sessions.push(s);
                    }
                },
            }
        }
        batch
    }
}

/// The durable records of sessions, in the database: what decides whether
/// a session exists when the live store (in process or Redis) does not
/// know it — Redis restarted empty, a key evicted, an outage, a restarted
/// host. A session is gone only once its record has ended or expired.
#[async_trait::async_trait]
pub trait SessionRecords: Send + Sync {
    /// Writes a new session's record. False, writing nothing, when the id
    /// is an active, unexpired session's (an ended or expired record is
    /// replaced). Later copies (execution counts) reach the records through
    /// the log writer, which never revives an ended session.
    async fn create(&self, session: &Session) -> StoreResult<bool>;
    /// The session, if its record is active and has not expired.
    async fn read(&self, request_id: &str) -> StoreResult<Option<Session>>;
    /// Ends the session for good (`retain_session: false` after its run):
    /// [`read`](Self::read) never returns it again.
    async fn end(&self, request_id: &str) -> StoreResult<()>;
}

/// What a session record's `status` column says.
pub mod session_status {
    pub const ACTIVE: &str = "active";
    pub const ENDED: &str = "ended";
}

/// Durable logs: SQLite or PostgreSQL.
#[async_trait::async_trait]
pub trait LogStore: Send + Sync {
    /// Writes a batch in one transaction: all of it or none.
    async fn write_batch(&self, records: &[LogRecord]) -> StoreResult<()>;
    /// Deletes the request logs (with their error logs) written before
    /// `before` and the session records that expired before it, in chunks
    /// of [`SWEEP_CHUNK`] rows, so no statement holds the tables for long.
    /// Returns how many rows went.
    async fn sweep(&self, before: DateTime<Utc>) -> StoreResult<u64>;
}
