//! The embedded durable backend: the registry, request/error logs, session
//! records and HTTP functions' key-value data in one SQLite file, migrated
//! at start.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::{
    FunctionFilter, FunctionKind, FunctionRecord, KeyValueStore, KvSet, LogBatch, LogRecord,
    LogStore, Registry, SWEEP_CHUNK, Session, SessionRecords, StoreError, StoreResult, TierState,
    TierUp, parse_stored, session_status,
};
use crate::digest::Digest;
use crate::language::LanguageTitle;

/// The migrations of `migrations/sqlite`, compiled into the host.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// A SQLite database: the registry and the log store.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database file.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        // Created private before SQLite opens it: its journal files take
        // the database's mode.
        crate::files::ensure_private_file(path)
            .map_err(|e| StoreError::new("creating the SQLite database", e))?;
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|e| StoreError::new("parsing the SQLite path", e))?
            .create_if_missing(true)
            // WAL: readers never wait for the log writer.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::new("opening the SQLite database", e))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::new("migrating the SQLite database", e))?;
        Ok(Self { pool })
    }

    /// The pool, for tests that read what was written.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::new(context, e)
}

fn timestamp(value: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::new("reading a timestamp", e))
}

fn json_column(value: &str) -> StoreResult<serde_json::Value> {
    serde_json::from_str(value).map_err(|e| StoreError::new("reading a JSON column", e))
}

fn function_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<FunctionRecord> {
    let kind: String = row.get("kind");
    Ok(FunctionRecord {
        language_title: parse_stored("a function's name", row.get("language_title"))?,
        kind: FunctionKind::parse(&kind)
            .ok_or_else(|| StoreError::new("reading a function", anyhow::anyhow!("kind {kind}")))?,
        owner: row.get("owner"),
        description: row.get("description"),
        script_content: row.get("script_content"),
        build_digest: parse_stored("a function's build digest", row.get("build_digest"))?,
        component_digest: parse_stored(
            "a function's component digest",
            row.get("component_digest"),
        )?,
        component_size: row.get::<i64, _>("component_size") as u64,
        tier: TierState::from_columns(row.get("tier"), row.get("tier_error"))?,
        warm_instances: row.get("warm_instances"),
        capabilities: row
            .get::<Option<String>, _>("capabilities")
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| StoreError::new("reading a function's capabilities", e))?,
        compile_options: json_column(row.get("compile_options"))?,
        schema: json_column(row.get("schema"))?,
        examples: json_column(row.get("examples"))?,
        created_at: timestamp(row.get("created_at"))?,
        updated_at: timestamp(row.get("updated_at"))?,
    })
}

fn push_filters(query: &mut QueryBuilder<'_, Sqlite>, filter: &FunctionFilter) {
    query.push(" WHERE 1 = 1");
    if let Some(language) = &filter.language {
        query.push(" AND language = ").push_bind(language.clone());
    }
    if let Some(owner) = &filter.owner {
        query.push(" AND owner = ").push_bind(owner.clone());
    }
    if let Some(kind) = filter.kind {
        query.push(" AND kind = ").push_bind(kind.as_str());
    }
}

#[async_trait::async_trait]
impl Registry for SqliteStore {
    async fn upsert(&self, f: &FunctionRecord) -> StoreResult<bool> {
        let written = sqlx::query(
            "INSERT INTO functions (language_title, language, title, kind, owner, description,
                 script_content, build_digest, component_digest, component_size, compile_options,
                 schema, examples, created_at, updated_at, tier, tier_error, warm_instances,
                 capabilities)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (language_title) DO UPDATE SET
                 kind = excluded.kind, owner = excluded.owner,
                 description = excluded.description, script_content = excluded.script_content,
                 build_digest = excluded.build_digest, component_digest = excluded.component_digest,
                 component_size = excluded.component_size,
                 compile_options = excluded.compile_options, schema = excluded.schema,
                 examples = excluded.examples, updated_at = excluded.updated_at,
                 tier = excluded.tier, tier_error = excluded.tier_error,
                 warm_instances = excluded.warm_instances,
                 capabilities = excluded.capabilities
             WHERE excluded.kind = 'predefined'
                OR (functions.kind = 'dynamic' AND functions.owner IS excluded.owner)",
        )
        .bind(f.language_title.to_string())
        .bind(f.language_title.language().as_str())
        .bind(f.language_title.title())
        .bind(f.kind.as_str())
        .bind(&f.owner)
        .bind(&f.description)
        .bind(&f.script_content)
        .bind(f.build_digest.to_string())
        .bind(f.component_digest.to_string())
        .bind(f.component_size as i64)
        .bind(f.compile_options.to_string())
        .bind(f.schema.to_string())
        .bind(f.examples.to_string())
        .bind(f.created_at.to_rfc3339())
        .bind(f.updated_at.to_rfc3339())
        .bind(f.tier.as_str())
        .bind(f.tier.error())
        .bind(f.warm_instances)
        .bind(
            f.capabilities
                .as_ref()
                .map(|c| serde_json::to_string(c).unwrap_or_default()),
        )
        .execute(&self.pool)
        .await
        .map_err(db("registering a function"))?;
        Ok(written.rows_affected() == 1)
    }

    async fn finish_tier_up(
        &self,
        language_title: &LanguageTitle,
        build_digest: Digest,
        outcome: &TierUp,
    ) -> StoreResult<bool> {
        let query = match outcome {
            TierUp::Compiled {
                component_digest,
                component_size,
            } => sqlx::query(
                "UPDATE functions SET tier = 'compiled', tier_error = NULL,
                     component_digest = ?, component_size = ?
                 WHERE language_title = ? AND build_digest = ? AND tier <> 'compiled'",
            )
            .bind(component_digest.to_string())
            .bind(*component_size as i64),
            TierUp::Failed(reason) => sqlx::query(
                "UPDATE functions SET tier = 'failed', tier_error = ?
                 WHERE language_title = ? AND build_digest = ? AND tier = 'pending'",
            )
            .bind(reason.as_str()),
        };
        let written = query
            .bind(language_title.to_string())
            .bind(build_digest.to_string())
            .execute(&self.pool)
            .await
            .map_err(db("recording a function's tier"))?;
        Ok(written.rows_affected() == 1)
    }

    async fn digests(&self) -> StoreResult<Vec<(Digest, Digest)>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT build_digest, component_digest FROM functions")
                .fetch_all(&self.pool)
                .await
                .map_err(db("reading the registered digests"))?;
        rows.iter()
            .map(|(build, component)| {
                Ok((
                    parse_stored("a registered build digest", build)?,
                    parse_stored("a registered component digest", component)?,
                ))
            })
            .collect()
    }

    async fn get(&self, language_title: &LanguageTitle) -> StoreResult<Option<FunctionRecord>> {
        let row = sqlx::query("SELECT * FROM functions WHERE language_title = ?")
            .bind(language_title.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a function"))?;
        row.as_ref().map(function_from_row).transpose()
    }

    async fn list(&self, filter: &FunctionFilter) -> StoreResult<(u64, Vec<FunctionRecord>)> {
        let mut count = QueryBuilder::new("SELECT COUNT(*) FROM functions");
        push_filters(&mut count, filter);
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(db("counting functions"))?;

        let mut page = QueryBuilder::new("SELECT * FROM functions");
        push_filters(&mut page, filter);
        page.push(" ORDER BY language_title LIMIT ")
            .push_bind(i64::from(filter.per_page))
            .push(" OFFSET ")
            .push_bind(i64::from(filter.page.saturating_sub(1)) * i64::from(filter.per_page));
        let rows = page
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing functions"))?;
        let functions = rows
            .iter()
            .map(function_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((total as u64, functions))
    }

    async fn health(&self) -> StoreResult<&'static str> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db("pinging SQLite"))?;
        Ok("embedded")
    }
}

#[async_trait::async_trait]
impl LogStore for SqliteStore {
    /// One transaction; one multi-row statement per table and thousand
    /// rows.
    async fn write_batch(&self, records: &[LogRecord]) -> StoreResult<()> {
        let batch = LogBatch::of(records);
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting a log batch"))?;
        for rows in batch.requests.chunks(LogBatch::ROWS_PER_STATEMENT) {
            QueryBuilder::<Sqlite>::new(
                "INSERT INTO request_logs (log_id, request_id, method, endpoint, status,
                     duration_ms, user_id, language_title, cached, client_ip, created_at) ",
            )
            .push_values(rows, |mut row, r| {
                row.push_bind(r.id.to_string())
                    .push_bind(&r.request_id)
                    .push_bind(&r.method)
                    .push_bind(&r.endpoint)
                    .push_bind(i64::from(r.status))
                    .push_bind(r.duration_ms)
                    .push_bind(&r.user_id)
                    .push_bind(&r.language_title)
                    .push_bind(r.cached)
                    .push_bind(&r.client_ip)
                    .push_bind(r.created_at.to_rfc3339());
            })
            .build()
            .execute(&mut *tx)
            .await
            .map_err(db("writing request logs"))?;
        }
        for rows in batch.errors.chunks(LogBatch::ROWS_PER_STATEMENT) {
            QueryBuilder::<Sqlite>::new(
                "INSERT INTO error_logs (request_log_id, request_id, endpoint, code, message,
                     details, created_at) ",
            )
            .push_values(rows, |mut row, e| {
                row.push_bind(e.request_log_id.to_string())
                    .push_bind(&e.request_id)
                    .push_bind(&e.endpoint)
                    .push_bind(&e.code)
                    .push_bind(&e.message)
                    .push_bind(e.details.to_string())
                    .push_bind(e.created_at.to_rfc3339());
            })
            .build()
            .execute(&mut *tx)
            .await
            .map_err(db("writing error logs"))?;
        }
        for rows in batch.sessions.chunks(LogBatch::ROWS_PER_STATEMENT) {
            session_rows(rows)
                .push(LATER_COPY)
                .build()
                .execute(&mut *tx)
                .await
                .map_err(db("writing session records"))?;
        }
        tx.commit().await.map_err(db("committing a log batch"))?;
        Ok(())
    }

    /// Times are stored as RFC 3339 text in UTC, which sorts as time does.
    async fn sweep(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let statements = [
            "DELETE FROM error_logs WHERE request_log_id IN
                 (SELECT log_id FROM request_logs WHERE created_at < ?1 LIMIT ?2)",
            "DELETE FROM request_logs WHERE rowid IN
                 (SELECT rowid FROM request_logs WHERE created_at < ?1 LIMIT ?2)",
            "DELETE FROM error_logs WHERE rowid IN
                 (SELECT rowid FROM error_logs WHERE created_at < ?1 LIMIT ?2)",
            "DELETE FROM sessions WHERE rowid IN
                 (SELECT rowid FROM sessions WHERE expires_at < ?1 LIMIT ?2)",
        ];
        let before = before.to_rfc3339();
        let mut deleted = 0;
        for statement in statements {
            loop {
                let rows = sqlx::query(statement)
                    .bind(&before)
                    .bind(SWEEP_CHUNK)
                    .execute(&self.pool)
                    .await
                    .map_err(db("sweeping old logs"))?
                    .rows_affected();
                deleted += rows;
                if rows < SWEEP_CHUNK as u64 {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}

/// What a session's row becomes when a later copy of it is written (by
/// the log writer): the count only grows, and the status stays (an ended
/// session stays ended).
const LATER_COPY: &str = " ON CONFLICT (request_id) DO UPDATE SET
     execution_count = MAX(sessions.execution_count, excluded.execution_count),
     last_executed_at = excluded.last_executed_at,
     expires_at = excluded.expires_at";

/// A new session replaces the row of its id only if that session ended or
/// expired: an id that is live stays its owner's.
const REPLACE_UNLESS_LIVE: &str = " ON CONFLICT (request_id) DO UPDATE SET
     language_title = excluded.language_title, user_id = excluded.user_id,
     created_at = excluded.created_at, expires_at = excluded.expires_at,
     last_executed_at = excluded.last_executed_at,
     execution_count = excluded.execution_count, status = excluded.status,
     context = excluded.context, build_digest = excluded.build_digest,
     component_digest = excluded.component_digest, timeout_ms = excluded.timeout_ms,
     retain_session = excluded.retain_session, warm_instances = excluded.warm_instances
     WHERE sessions.status = 'ended' OR sessions.expires_at <= ";

/// `INSERT INTO sessions ... VALUES` of these records; the caller adds
/// what a conflicting row becomes.
fn session_rows<'a>(rows: &'a [&'a Session]) -> QueryBuilder<'a, Sqlite> {
    let mut query = QueryBuilder::<Sqlite>::new(
        "INSERT INTO sessions (request_id, language_title, user_id, build_digest,
             component_digest, context, timeout_ms, retain_session, created_at,
             expires_at, execution_count, last_executed_at, status, warm_instances) ",
    );
    query.push_values(rows, |mut row, s| {
        row.push_bind(&s.request_id)
            .push_bind(s.language_title.to_string())
            .push_bind(&s.owner)
            .push_bind(s.build_digest.to_string())
            .push_bind(s.component_digest.to_string())
            .push_bind(s.context.to_string())
            .push_bind(i64::try_from(s.timeout_ms).unwrap_or(i64::MAX))
            .push_bind(s.retain_session)
            .push_bind(s.created_at.to_rfc3339())
            .push_bind(s.expires_at.to_rfc3339())
            .push_bind(i64::try_from(s.execution_count).unwrap_or(i64::MAX))
            .push_bind(s.last_executed_at.map(|t| t.to_rfc3339()))
            .push_bind(session_status::ACTIVE)
            .push_bind(s.warm_instances);
    });
    query
}

#[async_trait::async_trait]
impl SessionRecords for SqliteStore {
    async fn create(&self, session: &Session) -> StoreResult<bool> {
        let written = session_rows(&[session])
            .push(REPLACE_UNLESS_LIVE)
            .push_bind(Utc::now().to_rfc3339())
            .build()
            .execute(&self.pool)
            .await
            .map_err(db("writing a session record"))?;
        Ok(written.rows_affected() == 1)
    }

    async fn end(&self, request_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE sessions SET status = ?2 WHERE request_id = ?1")
            .bind(request_id)
            .bind(session_status::ENDED)
            .execute(&self.pool)
            .await
            .map_err(db("ending a session record"))?;
        Ok(())
    }

    async fn read(&self, request_id: &str) -> StoreResult<Option<Session>> {
        let row = sqlx::query(
            "SELECT * FROM sessions WHERE request_id = ?1 AND expires_at > ?2 AND status = ?3",
        )
        .bind(request_id)
        .bind(Utc::now().to_rfc3339())
        .bind(session_status::ACTIVE)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a session record"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let last_executed_at = row
            .get::<Option<&str>, _>("last_executed_at")
            .map(timestamp)
            .transpose()?;
        Ok(Some(Session {
            request_id: row.get("request_id"),
            language_title: parse_stored("a session's function", row.get("language_title"))?,
            owner: row.get("user_id"),
            build_digest: parse_stored("a session's build digest", row.get("build_digest"))?,
            component_digest: parse_stored(
                "a session's component digest",
                row.get("component_digest"),
            )?,
            context: json_column(row.get("context"))?,
            timeout_ms: u64::try_from(row.get::<i64, _>("timeout_ms")).unwrap_or(0),
            retain_session: row.get("retain_session"),
            warm_instances: row.get("warm_instances"),
            created_at: timestamp(row.get("created_at"))?,
            expires_at: timestamp(row.get("expires_at"))?,
            execution_count: u64::try_from(row.get::<i64, _>("execution_count")).unwrap_or(0),
            last_executed_at,
        }))
    }
}

#[async_trait::async_trait]
impl KeyValueStore for SqliteStore {
    async fn get(&self, namespace: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        sqlx::query_scalar("SELECT value FROM key_value WHERE namespace = ? AND key = ?")
            .bind(namespace)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::new("reading a key-value entry", e))
    }

    async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        quota_bytes: u64,
    ) -> StoreResult<KvSet> {
        let size = (key.len() + value.len()) as i64;
        // One statement: SQLite runs it under its write lock, so the sum
        // it checks is the sum it adds to.
        let written = sqlx::query(
            "INSERT INTO key_value (namespace, key, value, size)
             SELECT ?1, ?2, ?3, ?4
             WHERE (SELECT COALESCE(SUM(size), 0) FROM key_value
                    WHERE namespace = ?1 AND key <> ?2) + ?4 <= ?5
             ON CONFLICT (namespace, key) DO UPDATE
             SET value = excluded.value, size = excluded.size",
        )
        .bind(namespace)
        .bind(key)
        .bind(value)
        .bind(size)
        .bind(i64::try_from(quota_bytes).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::new("writing a key-value entry", e))?;
        Ok(match written.rows_affected() {
            0 => KvSet::OverQuota,
            _ => KvSet::Stored,
        })
    }

    async fn delete(&self, namespace: &str, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM key_value WHERE namespace = ? AND key = ?")
            .bind(namespace)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::new("deleting a key-value entry", e))?;
        Ok(())
    }

    async fn exists(&self, namespace: &str, key: &str) -> StoreResult<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM key_value WHERE namespace = ? AND key = ?)",
        )
        .bind(namespace)
        .bind(key)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| StoreError::new("reading a key-value entry", e))
    }

    async fn keys(&self, namespace: &str) -> StoreResult<Vec<String>> {
        sqlx::query_scalar("SELECT key FROM key_value WHERE namespace = ? ORDER BY key")
            .bind(namespace)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::new("listing key-value entries", e))
    }
}
