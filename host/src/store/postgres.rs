//! The production durable backend: the registry (`meta.functions`,
//! `meta.scripts`), built components (`meta.artifacts`), session records
//! (`meta.sessions`) and logs (`public.request_logs`, `public.error_logs`)
//! in PostgreSQL, in the seed's schemas. Every query is parameterised.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use super::{
    FunctionFilter, FunctionKind, FunctionRecord, LogBatch, LogRecord, LogStore, Registry,
    SWEEP_CHUNK, Session, SessionRecords, StoreError, StoreResult, TierState, TierUp, parse_stored,
    session_status,
};
use crate::digest::Digest;
use crate::language::LanguageTitle;
use crate::toolchain::{ArtifactStore, SealedArtifact};

/// The migrations of `migrations/postgres`, compiled into the host.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// A PostgreSQL pool: the registry, the artifact store and the log store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::new(context, e)
}

impl PgStore {
    /// A pool that connects lazily: the host starts while PostgreSQL is
    /// down and reports it; queries fail fast until it returns.
    pub fn connect_lazy(url: &str) -> StoreResult<Self> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::new("parsing the PostgreSQL URL", e))?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// Applies the migrations that have not run yet.
    pub async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::new("migrating the PostgreSQL database", e))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn function_from_row(row: &PgRow) -> StoreResult<FunctionRecord> {
    let kind: String = row.get("kind");
    let created_at: DateTime<Utc> = row.get("created_at");
    Ok(FunctionRecord {
        language_title: parse_stored("a function's name", row.get("language_title"))?,
        kind: FunctionKind::parse(&kind)
            .ok_or_else(|| StoreError::new("reading a function", anyhow::anyhow!("kind {kind}")))?,
        owner: row.get("created_by"),
        description: row
            .get::<Option<String>, _>("description")
            .unwrap_or_default(),
        script_content: row.get("content"),
        build_digest: parse_stored("a function's build digest", row.get("build_digest"))?,
        component_digest: parse_stored(
            "a function's component digest",
            row.get("component_digest"),
        )?,
        component_size: row.get::<i64, _>("component_size") as u64,
        tier: TierState::from_columns(row.get("tier"), row.get("tier_error"))?,
        warm_instances: row.get("warm_instances"),
        capabilities: row
            .get::<Option<serde_json::Value>, _>("capabilities")
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| StoreError::new("reading a function's capabilities", e))?,
        compile_options: row.get("compile_options"),
        schema: row
            .get::<Option<serde_json::Value>, _>("schema_definition")
            .unwrap_or_default(),
        examples: row
            .get::<Option<serde_json::Value>, _>("examples")
            .unwrap_or_default(),
        created_at,
        updated_at: row.get("updated_at"),
    })
}

const SELECT_FUNCTIONS: &str = "SELECT f.*, s.content FROM meta.functions f \
     LEFT JOIN meta.scripts s ON s.function_id = f.id";

fn push_filters(query: &mut QueryBuilder<'_, Postgres>, filter: &FunctionFilter) {
    query.push(" WHERE f.is_active");
    if let Some(language) = &filter.language {
        query.push(" AND f.language = ").push_bind(language.clone());
    }
    if let Some(owner) = &filter.owner {
        query.push(" AND f.created_by = ").push_bind(owner.clone());
    }
    if let Some(kind) = filter.kind {
        query.push(" AND f.kind = ").push_bind(kind.as_str());
    }
}

#[async_trait::async_trait]
impl Registry for PgStore {
    async fn upsert(&self, f: &FunctionRecord) -> StoreResult<bool> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting a registry update"))?;
        let id: Option<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO meta.functions (language, title, language_title, description,
                 schema_definition, examples, created_at, updated_at, created_by, kind,
                 build_digest, component_digest, component_size, compile_options,
                 tier, tier_error, warm_instances, capabilities)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                     $18)
             ON CONFLICT (language_title) DO UPDATE SET
                 description = EXCLUDED.description,
                 schema_definition = EXCLUDED.schema_definition,
                 examples = EXCLUDED.examples, updated_at = EXCLUDED.updated_at,
                 created_by = EXCLUDED.created_by, kind = EXCLUDED.kind,
                 build_digest = EXCLUDED.build_digest,
                 component_digest = EXCLUDED.component_digest,
                 component_size = EXCLUDED.component_size,
                 compile_options = EXCLUDED.compile_options, is_active = TRUE,
                 tier = EXCLUDED.tier, tier_error = EXCLUDED.tier_error,
                 warm_instances = EXCLUDED.warm_instances,
                 capabilities = EXCLUDED.capabilities
             WHERE EXCLUDED.kind = 'predefined'
                OR (meta.functions.kind = 'dynamic'
                    AND meta.functions.created_by IS NOT DISTINCT FROM EXCLUDED.created_by)
             RETURNING id",
        )
        .bind(f.language_title.language().as_str())
        .bind(f.language_title.title())
        .bind(f.language_title.to_string())
        .bind(&f.description)
        .bind(&f.schema)
        .bind(&f.examples)
        .bind(f.created_at)
        .bind(f.updated_at)
        .bind(&f.owner)
        .bind(f.kind.as_str())
        .bind(f.build_digest.to_string())
        .bind(f.component_digest.to_string())
        .bind(f.component_size as i64)
        .bind(&f.compile_options)
        .bind(f.tier.as_str())
        .bind(f.tier.error())
        .bind(f.warm_instances)
        .bind(
            f.capabilities
                .as_ref()
                .and_then(|c| serde_json::to_value(c).ok()),
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("registering a function"))?;
        let Some(id) = id else {
            // The name is another owner's: nothing to write.
            return Ok(false);
        };
        match &f.script_content {
            Some(content) => {
                sqlx::query(
                    "INSERT INTO meta.scripts (function_id, content, created_at, updated_at)
                     VALUES ($1, $2, $3, $3)
                     ON CONFLICT (function_id) DO UPDATE SET
                         content = EXCLUDED.content, updated_at = EXCLUDED.updated_at",
                )
                .bind(id)
                .bind(content)
                .bind(f.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(db("storing a script"))?;
            }
            None => {
                sqlx::query("DELETE FROM meta.scripts WHERE function_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("removing a script"))?;
            }
        }
        tx.commit()
            .await
            .map_err(db("committing a registry update"))?;
        Ok(true)
    }

    async fn get(&self, language_title: &LanguageTitle) -> StoreResult<Option<FunctionRecord>> {
        let row = sqlx::query(&format!(
            "{SELECT_FUNCTIONS} WHERE f.language_title = $1 AND f.is_active"
        ))
        .bind(language_title.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a function"))?;
        row.as_ref().map(function_from_row).transpose()
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
                "UPDATE meta.functions SET tier = 'compiled', tier_error = NULL,
                     component_digest = $3, component_size = $4
                 WHERE language_title = $1 AND build_digest = $2 AND tier <> 'compiled'",
            )
            .bind(language_title.to_string())
            .bind(build_digest.to_string())
            .bind(component_digest.to_string())
            .bind(*component_size as i64),
            TierUp::Failed(reason) => sqlx::query(
                "UPDATE meta.functions SET tier = 'failed', tier_error = $3
                 WHERE language_title = $1 AND build_digest = $2 AND tier = 'pending'",
            )
            .bind(language_title.to_string())
            .bind(build_digest.to_string())
            .bind(reason.as_str()),
        };
        let written = query
            .execute(&self.pool)
            .await
            .map_err(db("recording a function's tier"))?;
        Ok(written.rows_affected() == 1)
    }

    async fn digests(&self) -> StoreResult<Vec<(Digest, Digest)>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT build_digest, component_digest FROM meta.functions")
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

    async fn list(&self, filter: &FunctionFilter) -> StoreResult<(u64, Vec<FunctionRecord>)> {
        let mut count = QueryBuilder::new("SELECT COUNT(*) FROM meta.functions f");
        push_filters(&mut count, filter);
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(db("counting functions"))?;
        let mut page = QueryBuilder::new(SELECT_FUNCTIONS);
        push_filters(&mut page, filter);
        page.push(" ORDER BY f.language_title LIMIT ")
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
            .map_err(db("pinging PostgreSQL"))?;
        Ok("ok")
    }
}

#[async_trait::async_trait]
impl LogStore for PgStore {
    /// One transaction; the request and error rows in one statement per
    /// table whatever their number (a statement per record would cap the
    /// writer far below the host's execution rate).
    async fn write_batch(&self, records: &[LogRecord]) -> StoreResult<()> {
        let batch = LogBatch::of(records);
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting a log batch"))?;
        if !batch.requests.is_empty() {
            let rows = &batch.requests;
            sqlx::query(INSERT_REQUEST_LOGS)
                .bind(column(rows, |r| r.id))
                .bind(column(rows, |r| r.request_id.as_deref()))
                .bind(column(rows, |r| {
                    r.language_title.as_deref().unwrap_or_default()
                }))
                .bind(column(rows, |r| r.created_at))
                .bind(column(rows, |r| r.client_ip.as_deref()))
                .bind(column(rows, |r| r.user_id.as_deref()))
                .bind(column(rows, |r| i32::from(r.status)))
                .bind(column(rows, |r| r.duration_ms.round() as i32))
                .bind(column(rows, |r| r.cached.unwrap_or(false)))
                .bind(column(rows, |r| r.endpoint.as_str()))
                .bind(column(rows, |r| r.method.as_str()))
                .execute(&mut *tx)
                .await
                .map_err(db("writing request logs"))?;
        }
        if !batch.errors.is_empty() {
            let rows = &batch.errors;
            sqlx::query(INSERT_ERROR_LOGS)
                .bind(column(rows, |e| e.request_log_id))
                .bind(column(rows, |e| e.created_at))
                .bind(column(rows, |e| e.code.as_str()))
                .bind(column(rows, |e| e.message.as_str()))
                .bind(column(rows, |e| {
                    e.details.get("stack_trace").and_then(|s| s.as_str())
                }))
                .bind(column(rows, |e| {
                    serde_json::json!({
                        "request_id": e.request_id,
                        "endpoint": e.endpoint,
                        "details": e.details,
                    })
                }))
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

    async fn sweep(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let mut deleted = 0;
        // A request's errors go with it, in the same statement (they refer
        // to its row; the reference is checked at the statement's end).
        loop {
            let (errors, requests): (i64, i64) = sqlx::query_as(
                "WITH old AS (SELECT id FROM public.request_logs WHERE timestamp < $1 LIMIT $2),
                      errors AS (DELETE FROM public.error_logs
                                 WHERE request_log_id IN (SELECT id FROM old) RETURNING 1),
                      requests AS (DELETE FROM public.request_logs
                                   WHERE id IN (SELECT id FROM old) RETURNING 1)
                 SELECT (SELECT COUNT(*) FROM errors), (SELECT COUNT(*) FROM requests)",
            )
            .bind(before)
            .bind(SWEEP_CHUNK)
            .fetch_one(&self.pool)
            .await
            .map_err(db("sweeping old request logs"))?;
            deleted += (errors + requests) as u64;
            if requests < SWEEP_CHUNK {
                break;
            }
        }
        let statements = [
            "DELETE FROM public.error_logs WHERE id IN
                 (SELECT id FROM public.error_logs WHERE timestamp < $1 LIMIT $2)",
            "DELETE FROM meta.sessions WHERE request_id IN
                 (SELECT request_id FROM meta.sessions WHERE expires_at < $1 LIMIT $2)",
        ];
        for statement in statements {
            loop {
                let rows = sqlx::query(statement)
                    .bind(before)
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

#[async_trait::async_trait]
impl ArtifactStore for PgStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn get(&self, digest: Digest) -> anyhow::Result<Option<SealedArtifact>> {
        let row: Option<(Vec<u8>, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT bytes, seal FROM meta.artifacts WHERE digest = $1")
                .bind(digest.to_string())
                .fetch_optional(&self.pool)
                .await?;
        // A row from before seals has none: it fails the check like a
        // forged one, and the rebuilt artifact replaces it.
        Ok(row.map(|(bytes, seal)| SealedArtifact {
            component: bytes.into(),
            seal: seal.unwrap_or_default(),
        }))
    }

    async fn remove_unused(
        &self,
        keep: &HashSet<Digest>,
        written_before: DateTime<Utc>,
    ) -> anyhow::Result<u64> {
        let keep: Vec<String> = keep.iter().map(Digest::to_string).collect();
        let removed = sqlx::query(
            "DELETE FROM meta.artifacts WHERE created_at < $1 AND NOT (digest = ANY($2))",
        )
        .bind(written_before)
        .bind(&keep)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(removed)
    }

    async fn put(&self, digest: Digest, artifact: &SealedArtifact) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO meta.artifacts (digest, bytes, size, seal) VALUES ($1, $2, $3, $4)
             ON CONFLICT (digest) DO UPDATE
             SET bytes = EXCLUDED.bytes, size = EXCLUDED.size, seal = EXCLUDED.seal",
        )
        .bind(digest.to_string())
        .bind(&*artifact.component)
        .bind(artifact.component.len() as i64)
        .bind(&artifact.seal)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Log rows go in as one array per column, unnested: one statement per
/// table for a whole batch, whose text (and so its prepared plan) is the
/// same for any number of rows. Measured on two cores, 200,000 request rows
/// in batches of 5,000: 60,000 rows/s, against 35,000 for the multi-row
/// `VALUES` of 1,000 rows it replaced (which let the log queue overflow at
/// 16,000 requests a second in `just bench`).
const INSERT_REQUEST_LOGS: &str = "INSERT INTO public.request_logs (id, request_id,
         language_title, timestamp, client_ip, user_id, status_code, duration_ms, cached,
         endpoint, method)
     SELECT * FROM UNNEST($1::uuid[], $2::varchar[], $3::varchar[], $4::timestamptz[],
         $5::varchar[], $6::varchar[], $7::int4[], $8::int4[], $9::bool[], $10::varchar[],
         $11::varchar[])
     ON CONFLICT (id) DO NOTHING";

/// Error rows, as [`INSERT_REQUEST_LOGS`]: one array per column.
const INSERT_ERROR_LOGS: &str = "INSERT INTO public.error_logs (request_log_id, timestamp,
         error_code, error_message, stack_trace, context)
     SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::varchar[], $4::text[],
         $5::text[], $6::jsonb[])";

/// One column of a batch's rows, as the array a statement binds.
fn column<'a, R, T>(rows: &[&'a R], value: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(|&row| value(row)).collect()
}

/// What a session's row becomes when a later copy of it is written (by
/// the log writer): the count only grows, and the status stays (an ended
/// session stays ended).
const LATER_COPY: &str = " ON CONFLICT (request_id) DO UPDATE SET
     execution_count = GREATEST(meta.sessions.execution_count, excluded.execution_count),
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
     WHERE meta.sessions.status = 'ended' OR meta.sessions.expires_at <= NOW()";

/// `INSERT INTO sessions ... VALUES` of these records; the caller adds
/// what a conflicting row becomes.
fn session_rows<'a>(rows: &'a [&'a Session]) -> QueryBuilder<'a, Postgres> {
    let mut query = QueryBuilder::<Postgres>::new(
        "INSERT INTO meta.sessions (request_id, language_title, user_id, created_at,
             expires_at, last_executed_at, execution_count, status, context,
             build_digest, component_digest, timeout_ms, retain_session, warm_instances) ",
    );
    query.push_values(rows, |mut row, s| {
        row.push_bind(&s.request_id)
            .push_bind(s.language_title.to_string())
            .push_bind(&s.owner)
            .push_bind(s.created_at)
            .push_bind(s.expires_at)
            .push_bind(s.last_executed_at)
            .push_bind(i32::try_from(s.execution_count).unwrap_or(i32::MAX))
            .push_bind(session_status::ACTIVE)
            .push_bind(&s.context)
            .push_bind(s.build_digest.to_string())
            .push_bind(s.component_digest.to_string())
            .push_bind(i64::try_from(s.timeout_ms).unwrap_or(i64::MAX))
            .push_bind(s.retain_session)
            .push_bind(s.warm_instances);
    });
    query
}

#[async_trait::async_trait]
impl SessionRecords for PgStore {
    async fn create(&self, session: &Session) -> StoreResult<bool> {
        let written = session_rows(&[session])
            .push(REPLACE_UNLESS_LIVE)
            .build()
            .execute(&self.pool)
            .await
            .map_err(db("writing a session record"))?;
        Ok(written.rows_affected() == 1)
    }

    async fn end(&self, request_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE meta.sessions SET status = $2 WHERE request_id = $1")
            .bind(request_id)
            .bind(session_status::ENDED)
            .execute(&self.pool)
            .await
            .map_err(db("ending a session record"))?;
        Ok(())
    }

    async fn read(&self, request_id: &str) -> StoreResult<Option<Session>> {
        let row = sqlx::query(
            "SELECT * FROM meta.sessions
             WHERE request_id = $1 AND expires_at > NOW() AND status = $2
               AND build_digest IS NOT NULL",
        )
        .bind(request_id)
        .bind(session_status::ACTIVE)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a session record"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        // Rows of the seed's schema without a component are not sessions
        // this host can run.
        let Some(component_digest) = row.get::<Option<String>, _>("component_digest") else {
            return Ok(None);
        };
        Ok(Some(Session {
            request_id: row.get("request_id"),
            language_title: parse_stored("a session's function", row.get("language_title"))?,
            owner: row.get::<Option<String>, _>("user_id").unwrap_or_default(),
            build_digest: parse_stored("a session's build digest", row.get("build_digest"))?,
            component_digest: parse_stored("a session's component digest", &component_digest)?,
            context: row
                .get::<Option<serde_json::Value>, _>("context")
                .unwrap_or_default(),
            // Every record this host writes has a deadline; one without is
            // not a session it can run.
            timeout_ms: match row.get::<Option<i64>, _>("timeout_ms") {
                Some(ms) => u64::try_from(ms).unwrap_or(0),
                None => return Ok(None),
            },
            retain_session: row.get::<Option<bool>, _>("retain_session").unwrap_or(true),
            warm_instances: row.get("warm_instances"),
            created_at: row.get("created_at"),
            expires_at: row.get("expires_at"),
            execution_count: u64::try_from(row.get::<i32, _>("execution_count")).unwrap_or(0),
            last_executed_at: row.get("last_executed_at"),
        }))
    }
}
