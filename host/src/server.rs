//! The server process: [`Application::build`] wires the stores, the
//! runtime, the toolchains and the API from settings and binds the socket;
//! [`Application::run_until_stopped`] serves until the shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::auth::JwtKeys;
use crate::config::Settings;
use crate::functions::Functions;
use crate::runtime::Runtime;
use crate::store::LogWriter;
use crate::store::memory::{MemoryRateLimiter, MemoryResultCache, MemorySessions};
use crate::store::sqlite::SqliteStore;
use crate::telemetry::Metrics;
use crate::toolchain::Toolchains;

/// The database file of the embedded registry and logs.
pub const SQLITE_FILE: &str = "lambda.db";

pub struct Application {
    listener: TcpListener,
    state: AppState,
    log_task: JoinHandle<()>,
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
        let database = SqliteStore::open(&settings.data_dir.join(SQLITE_FILE)).await?;
        let runtime = Arc::new(Runtime::new(&settings.runtime)?);
        let toolchains = Arc::new(Toolchains::detect(&settings.toolchain).await?);
        let functions = Arc::new(Functions::new(
            runtime,
            toolchains,
            Arc::new(database.clone()),
            metrics.clone(),
            settings.components_dir.clone(),
        ));
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
        let server = &settings.server;
        let (logs, log_task) = LogWriter::start(
            Arc::new(database),
            server.log_queue_capacity,
            metrics.log_records_dropped.clone(),
        );
        let state = AppState {
            functions,
            sessions: Arc::new(MemorySessions::new(server.max_sessions)),
            cache: Arc::new(MemoryResultCache::new(server.cache_max_bytes)),
            limiter: Arc::new(MemoryRateLimiter::new(100_000)),
            logs,
            keys,
            metrics,
            config: Arc::new(server.clone()),
            max_timeout: settings.runtime.max_timeout,
        };
        let listener = TcpListener::bind(server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", server.listen))?;
        Ok(Self {
            listener,
            state,
            log_task,
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
        } = self;
        let logs = state.logs.clone();
        let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving")?;
        logs.flush().await;
        drop(logs);
        log_task.abort();
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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
    tracing::info!("shutting down");
}
