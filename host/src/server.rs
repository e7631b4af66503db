//! The server process: [`Application::build`] wires the stores, the
//! runtime, the toolchains and the API from settings and binds the socket;
//! [`Application::run_until_stopped`] serves until the shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::auth::JwtKeys;
use crate::config::Settings;
use crate::functions::{Functions, Tiers};
use crate::runtime::Runtime;
use crate::sessions::{SessionParts, SessionSettings, Sessions};
use crate::store::memory::{MemoryRateLimiter, MemoryResultCache, MemorySessions};
use crate::store::postgres::PgStore;
use crate::store::recorded::RecordedSessions;
use crate::store::redis::RedisStore;
use crate::store::resilient::ResilientSessions;
use crate::store::sqlite::SqliteStore;
use crate::store::{
    KeyValueStore, LogStore, LogWriter, RateLimiter, Registry, ResultCache, SessionRecords,
    SessionStore,
};
use crate::telemetry::{CountedElsewhere, Metrics};
use crate::toolchain::{ArtifactStore, Toolchains};

/// The database file of the embedded registry and logs.
pub const SQLITE_FILE: &str = "lambda.db";

pub struct Application {
    listener: TcpListener,
    state: AppState,
    log_task: JoinHandle<()>,
    /// Deletes logs past their retention, every interval.
    sweep_task: JoinHandle<()>,
}

impl Application {
    /// Everything fallible happens here, before the socket accepts a
    /// connection: a bad setting fails the start, not the first request.
    pub async fn build(mut settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let metrics = Arc::new(Metrics::new());
        let keys = Arc::new(JwtKeys::load(
            settings.server.jwt_secret.as_ref().map(|s| s.expose()),
            &settings.data_dir,
        )?);
        let durable = durable_stores(&settings).await?;
        let key_value = key_value_store(&settings, &durable).await?;
        let runtime = Arc::new(Runtime::new(&settings.runtime)?.with_key_value(key_value));
        let mut toolchains = Toolchains::detect(&settings.toolchain).await?;
        if let Some(shared) = &durable.artifacts {
            toolchains = toolchains.with_shared_artifacts(shared.clone());
        }
        let toolchains = Arc::new(toolchains);
        metrics.read_at_scrape({
            let runtime = runtime.clone();
            let toolchains = toolchains.clone();
            move || {
                let stats = runtime.cache_stats();
                let warm = runtime.warm_stats();
                CountedElsewhere {
                    compiles: stats.compiles,
                    compile_seconds: stats.compile_micros as f64 / 1e6,
                    integrity_failures: [toolchains.artifacts().rejected(), stats.aot_rejected],
                    instances_started: [warm.fresh, warm.reused],
                }
            }
        });
        let functions = Functions::new(
            runtime,
            toolchains,
            durable.registry.clone(),
            metrics.clone(),
            settings.components_dir.clone(),
            Tiers::new(
                !settings.toolchain.no_interpreters,
                !settings.toolchain.no_tier_up,
            ),
        );
        let skipped = functions
            .register_predefined()
            .await
            .context("registering the predefined functions")?;
        if !skipped.is_empty() {
            tracing::warn!(
                ?skipped,
                "predefined functions without a toolchain are not served"
            );
        }
        // The interpreters (tier 0) load aside: until they are ready, a new
        // JavaScript or Python function waits for its build, as without them.
        tokio::spawn({
            let functions = functions.clone();
            async move { functions.prepare_interpreters().await }
        });
        let server = &settings.server;
        let sweep_task = tokio::spawn(sweep(
            durable.logs.clone(),
            functions.clone(),
            settings.server.log_retention,
            settings.server.log_sweep_interval,
        ));
        let (logs, log_task) = LogWriter::start(
            durable.logs.clone(),
            server.log_queue_capacity,
            metrics.log_records_dropped.clone(),
            metrics.log_records_quarantined.clone(),
        );
        let (sessions, cache, limiter) = shared_stores(&settings, durable.session_records.clone())?;
        let use_cases = Arc::new(Sessions::new(
            SessionParts {
                functions: functions.clone(),
                store: sessions.clone(),
                cache,
                limiter: limiter.clone(),
                logs: logs.clone(),
                metrics: metrics.clone(),
            },
            SessionSettings {
                ttl: server.session_ttl,
                max_context_bytes: server.max_context_bytes,
                quota_bytes: server.session_quota_bytes,
                default_timeout: settings.runtime.default_timeout(),
                max_timeout: settings.runtime.max_timeout,
                builds_per_minute: server.rate_limits.builds_per_subject,
                cache_ttl: server.cache_ttl,
                cache_max_ttl: server.cache_max_ttl,
            },
        ));
        let state = AppState {
            functions,
            sessions: use_cases,
            session_store: sessions,
            limiter,
            logs,
            keys,
            metrics,
            config: Arc::new(server.clone()),
        };
        let listener = TcpListener::bind(server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", server.listen))?;
        Ok(Self {
            listener,
            state,
            log_task,
            sweep_task,
        })
    }

    /// The bound address (the real port when the settings asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The shared state, for tests that inspect the stores.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then finishes the requests in
    /// flight and writes the queued logs.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            log_task,
            sweep_task,
        } = self;
        let flush_limit = state.config.shutdown_log_timeout;
        let logs = state.logs.clone();
        let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving");
        // The sweep runs for as long as the host serves, no longer.
        sweep_task.abort();
        served?;
        // Bounded: with the database down the writer would retry forever,
        // and a host that does not stop is killed, losing everything.
        if tokio::time::timeout(flush_limit, logs.flush())
            .await
            .is_err()
        {
            tracing::error!(
                queued = logs.queued(),
                "stopping without the log records still queued: the database did not take them within {flush_limit:?}"
            );
        }
        drop(logs);
        log_task.abort();
        Ok(())
    }
}

/// Deletes what is past `retention`, at start and every `interval`: the
/// durable logs and ended sessions' records, and the built components and
/// native code no registered function uses. A failed sweep is retried at
/// the next one.
async fn sweep(
    logs: Arc<dyn LogStore>,
    functions: Arc<Functions>,
    retention: Duration,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let before = chrono::Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::TimeDelta::MAX);
        match logs.sweep(before).await {
            Ok(0) => {}
            Ok(rows) => {
                tracing::info!(rows, %before, "swept logs and session records past their retention")
            }
            Err(e) => tracing::warn!("cannot sweep old logs, trying again later: {e}"),
        }
        match functions.remove_unused_builds(before).await {
            Ok((0, 0)) => {}
            Ok((artifacts, native)) => tracing::info!(
                artifacts,
                native,
                %before,
                "removed built components and native code no function uses"
            ),
            Err(e) => tracing::warn!("cannot sweep unused builds, trying again later: {e}"),
        }
    }
}

/// The durable stores: PostgreSQL when a database URL is set, else the
/// SQLite file of the data directory.
struct Durable {
    registry: Arc<dyn Registry>,
    logs: Arc<dyn LogStore>,
    /// The store replicas share built components through, if any.
    artifacts: Option<Arc<dyn ArtifactStore>>,
    /// What decides whether a session exists when the live store does
    /// not know it.
    session_records: Arc<dyn SessionRecords>,
    /// The embedded database, when it holds the registry.
    embedded: Option<Arc<SqliteStore>>,
}

async fn durable_stores(settings: &Settings) -> anyhow::Result<Durable> {
    match &settings.stores.database_url {
        Some(url) => {
            let postgres = Arc::new(PgStore::connect_lazy(url.expose())?);
            if !settings.stores.skip_migrations {
                postgres
                    .migrate()
                    .await
                    .context("PostgreSQL must be reachable at start to apply migrations")?;
            }
            Ok(Durable {
                registry: postgres.clone(),
                logs: postgres.clone(),
                artifacts: Some(postgres.clone()),
                session_records: postgres,
                embedded: None,
            })
        }
        None => {
            let sqlite = Arc::new(SqliteStore::open(&settings.data_dir.join(SQLITE_FILE)).await?);
            Ok(Durable {
                registry: sqlite.clone(),
                logs: sqlite.clone(),
                artifacts: None,
                session_records: sqlite.clone(),
                embedded: Some(sqlite),
            })
        }
    }
}

/// The key-value data of HTTP functions: Redis when a URL is set, else
/// the embedded SQLite database (the registry's, or one of its own in the
/// data directory when the registry is PostgreSQL).
async fn key_value_store(
    settings: &Settings,
    durable: &Durable,
) -> anyhow::Result<Arc<dyn KeyValueStore>> {
    Ok(match (&settings.stores.redis_url, &durable.embedded) {
        (Some(url), _) => Arc::new(RedisStore::connect(
            url.expose(),
            &settings.stores.redis_prefix,
        )?),
        (None, Some(sqlite)) => sqlite.clone(),
        (None, None) => Arc::new(SqliteStore::open(&settings.data_dir.join(SQLITE_FILE)).await?),
    })
}

type SharedStores = (
    Arc<dyn SessionStore>,
    Arc<dyn ResultCache>,
    Arc<dyn RateLimiter>,
);

/// Sessions, result cache and rate limits: Redis when a URL is set (shared
/// by every replica), else in process.
fn shared_stores(
    settings: &Settings,
    session_records: Arc<dyn SessionRecords>,
) -> anyhow::Result<SharedStores> {
    let (live, cache, limiter): SharedStores = match &settings.stores.redis_url {
        Some(url) => {
            let redis = Arc::new(RedisStore::connect(
                url.expose(),
                &settings.stores.redis_prefix,
            )?);
            // Sessions fall back to process memory while Redis is down;
            // the cache and the rate limiter degrade on their own.
            let sessions =
                ResilientSessions::new(redis.clone(), settings.server.sessions_max_bytes);
            (Arc::new(sessions), redis.clone(), redis)
        }
        None => {
            let server = &settings.server;
            (
                Arc::new(MemorySessions::new(server.sessions_max_bytes)),
                Arc::new(MemoryResultCache::new(server.cache_max_bytes)),
                Arc::new(MemoryRateLimiter::new(100_000)),
            )
        }
    };
    let sessions = Arc::new(RecordedSessions::new(live, session_records));
    Ok((sessions, cache, limiter))
}

/// Applies the migrations of the configured database (`lambda-host migrate`).
pub async fn migrate(settings: &Settings) -> anyhow::Result<&'static str> {
    match &settings.stores.database_url {
        Some(url) => {
            PgStore::connect_lazy(url.expose())?.migrate().await?;
            Ok("PostgreSQL")
        }
        None => {
            SqliteStore::open(&settings.data_dir.join(SQLITE_FILE)).await?;
            Ok("SQLite")
        }
    }
}

/// Resolves on the first Ctrl-C or SIGTERM, and then exits the process at
/// once on a second one: the operator's way out of a graceful stop that
/// waits too long.
pub async fn shutdown_signal() {
    stop_signal().await;
    tracing::info!("shutting down (a second signal exits at once)");
    tokio::spawn(async {
        stop_signal().await;
        tracing::warn!("second signal: exiting without finishing requests or writing logs");
        std::process::exit(130);
    });
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
