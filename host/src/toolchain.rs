//! Toolchains: a language's source in, a component of the `lambda:function`
//! world out.
//!
//! [`Toolchains`] is the one entry point the CLI and the API use. It names
//! every build by a digest of its inputs (language, toolchain fingerprint,
//! options, source) and stores the result under that name, so identical
//! source is never built twice; concurrent requests for the same digest
//! wait for one build. Builds run as child processes (rustc, node,
//! componentize-py), a bounded number per toolchain, each in the
//! [`sandbox`](crate::sandbox) with the build limits and an empty scratch
//! directory of its own, whose only output the host reads is
//! `component.wasm` ([`output`]).

mod artifacts;
mod driver;
mod js;
mod output;
mod python;
pub mod rust;
pub mod wasm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::config::ToolchainConfig;
use crate::digest::Digest;
use crate::language::Language;
use crate::sandbox::{self, Isolation, Limit, Limits, Report, Sandbox, SandboxError};

pub use artifacts::{ArtifactStore, Artifacts, DiskArtifacts, SealedArtifact};

/// How to build: the knobs a client may set in `compile_options`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildOptions {
    #[serde(default)]
    pub optimization_level: OptimizationLevel,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizationLevel {
    #[default]
    Release,
    Debug,
}

/// One place in the user's source a compiler complained about.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub message: String,
    /// 1-based line in the user's source, where the toolchain gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// 1-based column, where the toolchain gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

/// The source was refused or did not compile: the user's mistake.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CompileError {
    pub message: String,
    pub diagnostics: Vec<Diagnostic>,
}

/// Why a build produced no component.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The build reached one of its limits; its whole process tree was
    /// killed.
    #[error("the build exceeded its {description} (raise it with {})", .limit.setting())]
    LimitExceeded { limit: Limit, description: String },
    #[error("the {language} toolchain is not available: {reason}")]
    Unavailable { language: Language, reason: String },
    #[error("internal build error: {0:#}")]
    Internal(anyhow::Error),
}

impl BuildError {
    pub(crate) fn limit(limit: Limit, limits: &Limits) -> Self {
        BuildError::LimitExceeded {
            limit,
            description: limit.describe(limits),
        }
    }

    /// The same error, for each of the requests that waited for one build.
    fn copy_of(error: &BuildError) -> Self {
        match error {
            BuildError::Compile(e) => BuildError::Compile(e.clone()),
            BuildError::LimitExceeded { limit, description } => BuildError::LimitExceeded {
                limit: *limit,
                description: description.clone(),
            },
            BuildError::Unavailable { language, reason } => BuildError::Unavailable {
                language: *language,
                reason: reason.clone(),
            },
            BuildError::Internal(e) => BuildError::Internal(anyhow::anyhow!("{e:#}")),
        }
    }

    /// How the failed build is counted; `None` when no toolchain ran.
    pub fn outcome(&self) -> Option<crate::telemetry::BuildOutcome> {
        use crate::telemetry::BuildOutcome;
        match self {
            BuildError::Compile(_) => Some(BuildOutcome::CompileError),
            BuildError::LimitExceeded {
                limit: Limit::Time, ..
            } => Some(BuildOutcome::Timeout),
            BuildError::LimitExceeded { .. } => Some(BuildOutcome::LimitExceeded),
            BuildError::Unavailable { .. } => None,
            BuildError::Internal(_) => Some(BuildOutcome::Error),
        }
    }
}

impl From<anyhow::Error> for BuildError {
    fn from(error: anyhow::Error) -> Self {
        BuildError::Internal(error)
    }
}

/// The least time a trusted preparation run gets (compiling the
/// dependencies of Rust functions takes minutes on a slow machine).
pub const PREPARATION_MIN_TIME: std::time::Duration = std::time::Duration::from_secs(600);
/// The least memory a trusted preparation run gets: the default build limit.
pub const PREPARATION_MIN_MEMORY: u64 = 2048 << 20;

/// What a build makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildKind {
    /// A function's own component (tier 1), from its source.
    Function,
    /// The language's interpreter (tier 0), which runs a source given at
    /// run time; built from our code alone (`source` is empty).
    Interpreter,
}

/// One build, as the front hands it to a toolchain.
pub struct BuildJob<'a> {
    pub kind: BuildKind,
    pub source: &'a str,
    pub options: &'a BuildOptions,
    /// The scratch directory: empty, the build's only writable place, and
    /// removed afterwards. The build leaves its component here as
    /// [`output::COMPONENT`].
    pub workdir: &'a Path,
    pub sandbox: &'a Sandbox,
    /// The configured limits; see [`BuildJob::limits`] for a run's.
    pub configured_limits: Limits,
    /// When the build's time is up (the timeout counts from the request).
    pub deadline: Instant,
    /// Parent of scratch directories, for a toolchain's own preparation runs.
    pub work_root: &'a Path,
}

impl BuildJob<'_> {
    /// The limits of a run of this build starting now: its wall time is
    /// what is left until the deadline.
    pub fn limits(&self) -> Limits {
        Limits {
            wall: sandbox::remaining(self.deadline),
            ..self.configured_limits
        }
    }

    /// The limits of a toolchain's own preparation runs (dependencies, a
    /// code cache), which happen once, before the first build: the
    /// configured ones in full, not what is left of a build's time, and at
    /// least [`PREPARATION_MIN_TIME`] and [`PREPARATION_MIN_MEMORY`], so
    /// that a host configured for small, short builds still prepares (cargo
    /// compiles several dependencies at once) on a slow machine.
    pub fn preparation_limits(&self) -> Limits {
        Limits {
            wall: self.configured_limits.wall.max(PREPARATION_MIN_TIME),
            cpu: self.configured_limits.cpu.max(2 * PREPARATION_MIN_TIME),
            memory_bytes: self
                .configured_limits
                .memory_bytes
                .max(PREPARATION_MIN_MEMORY),
            ..self.configured_limits
        }
    }
}

/// A language's build driver.
#[async_trait::async_trait]
pub trait Toolchain: Send + Sync {
    fn language(&self) -> Language;

    /// Everything about the toolchain that changes its output (compiler
    /// version, glue code, pinned dependencies). Part of every build digest,
    /// so upgrading a toolchain never serves a stale artifact.
    fn fingerprint(&self) -> &str;

    /// How many builds of this toolchain may run at once.
    fn max_parallel_builds(&self) -> usize;

    /// Builds `job.source` into `<workdir>/component.wasm`, running every
    /// program through `job.sandbox`.
    async fn build(&self, job: BuildJob<'_>) -> Result<(), BuildError>;
}

/// Removes the scratch directories of builds that cannot be running any
/// more (older than `age`): what a host killed mid-build left behind.
/// Younger ones may belong to a replica sharing the data directory.
fn remove_abandoned_scratch(work_dir: &Path, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|elapsed| elapsed > age);
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if old && is_dir {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed an abandoned build directory")
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), "cannot remove an abandoned build directory: {e}")
                }
            }
        }
    }
}

/// Whether builds run confined, as the check at start found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SandboxState {
    /// Confined, with these layers.
    Confined(sandbox::Confinement),
    /// Turned off by the operator.
    Off,
    /// This machine cannot confine builds: none are run.
    Unavailable(String),
    /// Not checked (toolchains given by a test).
    Unchecked,
}

/// How a sandboxed toolchain run ended, as a build sees it: the report of
/// a run that ended on its own, or the limit that stopped it, named with
/// its configured value (`configured`, not what was left of it).
pub(crate) fn finished(report: Report, configured: &Limits) -> Result<Report, BuildError> {
    if let Some(limit) = report.limit {
        return Err(BuildError::limit(limit, configured));
    }
    if report.cancelled {
        return Err(BuildError::Internal(anyhow::anyhow!(
            "the build was cancelled"
        )));
    }
    Ok(report)
}

impl From<SandboxError> for BuildError {
    fn from(error: SandboxError) -> Self {
        BuildError::Internal(error.into())
    }
}

/// A built component.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// The digest of the build's inputs: the artifact's name in the store.
    pub digest: Digest,
    /// The component's bytes.
    pub component: Arc<[u8]>,
    /// True when this call ran the toolchain; false when the artifact
    /// came from the store.
    pub built: bool,
}

/// Counters of builds, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Toolchain runs that produced a component.
    pub built: u64,
    /// Toolchain runs that failed (compile errors, timeouts, crashes).
    pub failed: u64,
    /// Builds answered from the artifact store.
    pub reused: u64,
}

struct Registered {
    toolchain: Arc<dyn Toolchain>,
    /// Bounds concurrent builds of this toolchain.
    permits: Semaphore,
}

/// What the coalescing of builds keeps of recent builds, in KiB.
const BUILDING_MAX_KIB: u64 = 256 << 10;

/// What a build is made of; its digest names the artifact.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    kind: BuildKind,
    language: Language,
    digest: Digest,
    source: &'a str,
    options: &'a BuildOptions,
}

/// When a build's time starts.
#[derive(Clone, Copy)]
enum Timing {
    /// At the request: waiting for a build slot counts.
    FromRequest,
    /// When a build slot is free.
    FromSlot,
}

/// Every toolchain of the host, the artifact store and the build queues.
pub struct Toolchains {
    toolchains: HashMap<Language, Registered>,
    /// Languages whose toolchain could not start, with the reason.
    unavailable: HashMap<Language, String>,
    artifacts: Artifacts,
    work_dir: PathBuf,
    sandbox: Sandbox,
    /// What the sandbox check at start found.
    sandbox_state: SandboxState,
    limits: Limits,
    max_source_bytes: usize,
    /// Builds by digest: every request for a digest being built awaits the
    /// one build (moka's `try_get_with` coalesces them, and hands a failure
    /// to those waiting for it rather than building again). A built
    /// component stays a minute, for requests racing the artifact store.
    building: moka::future::Cache<Digest, Arc<[u8]>>,
    built: AtomicU64,
    failed: AtomicU64,
    reused: AtomicU64,
}

impl Toolchains {
    /// Detects every toolchain. A missing one is not fatal: its language
    /// answers builds with [`BuildError::Unavailable`] and the reason.
    pub async fn detect(config: &ToolchainConfig) -> anyhow::Result<Self> {
        let (nodejs, python, rust) = tokio::join!(
            js::detect(config),
            python::detect(&config.toolchains_dir),
            rust::RustToolchain::detect(config),
        );
        let found: [(Language, anyhow::Result<Arc<dyn Toolchain>>); 3] = [
            (Language::Nodejs, nodejs.map(|t| Arc::new(t) as _)),
            (Language::Python, python.map(|t| Arc::new(t) as _)),
            (Language::Rust, rust.map(|t| Arc::new(t) as _)),
        ];
        let mut toolchains = Vec::new();
        let mut unavailable = HashMap::new();
        for (language, result) in found {
            match result {
                Ok(toolchain) => toolchains.push(toolchain),
                Err(e) => {
                    tracing::warn!(%language, "toolchain unavailable: {e:#}");
                    unavailable.insert(language, format!("{e:#}"));
                }
            }
        }
        let mut this = Self::with_toolchains(config, toolchains)?;
        this.unavailable = unavailable;
        remove_abandoned_scratch(&config.work_dir, 2 * config.build_timeout);
        // A host that cannot confine builds builds nothing: every language
        // says why, instead of running a stranger's build in the open.
        this.sandbox_state = this.check_sandbox().await;
        if let SandboxState::Unavailable(reason) = &this.sandbox_state {
            tracing::error!("{reason}");
            // A prebuilt component's check runs no program: it stays.
            for language in Language::ALL.into_iter().filter(|&l| l != Language::Wasm) {
                if this.toolchains.remove(&language).is_some() {
                    this.unavailable.insert(language, reason.clone());
                }
            }
        }
        Ok(this)
    }

    /// Runs a confined test program once.
    async fn check_sandbox(&self) -> SandboxState {
        if self.sandbox.isolation() == Isolation::Off {
            tracing::warn!(
                "LAMBDA_BUILD_SANDBOX=off: builds run unconfined and can read and write \
                 whatever this host can. Only for a machine whose every user is trusted."
            );
            return SandboxState::Off;
        }
        let scratch = match tempfile::Builder::new()
            .prefix("sandbox-check-")
            .tempdir_in(&self.work_dir)
        {
            Ok(scratch) => scratch,
            Err(e) => {
                return SandboxState::Unavailable(format!(
                    "cannot create a scratch directory: {e}"
                ));
            }
        };
        match self.sandbox.check(scratch.path()).await {
            Ok(confinement) => {
                tracing::info!(
                    landlock_abi = confinement.landlock_abi,
                    seccomp = confinement.seccomp,
                    namespaces = %confinement.namespaces.join(","),
                    kernel_task_cap = ?confinement.kernel_task_cap,
                    "builds are sandboxed"
                );
                SandboxState::Confined(confinement)
            }
            Err(e) => SandboxState::Unavailable(e.to_string()),
        }
    }

    /// Whether builds run confined, as the check at start found.
    pub fn sandbox_state(&self) -> &SandboxState {
        &self.sandbox_state
    }

    /// A set of given toolchains (tests use this to plug in their own).
    pub fn with_toolchains(
        config: &ToolchainConfig,
        toolchains: Vec<Arc<dyn Toolchain>>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.work_dir)?;
        // Uploads of prebuilt components need no installed toolchain.
        let mut toolchains = toolchains;
        if !toolchains.iter().any(|t| t.language() == Language::Wasm) {
            toolchains.push(Arc::new(wasm::WasmUploads));
        }
        Ok(Self {
            toolchains: toolchains
                .into_iter()
                .map(|toolchain| {
                    let permits = Semaphore::new(toolchain.max_parallel_builds().max(1));
                    (toolchain.language(), Registered { toolchain, permits })
                })
                .collect(),
            unavailable: HashMap::new(),
            artifacts: Artifacts::new(
                Arc::new(DiskArtifacts::open(&config.artifacts_dir)?),
                config.integrity_key.clone(),
            ),
            work_dir: config.work_dir.clone(),
            sandbox: Sandbox::new(config.sandbox_supervisor.clone(), config.isolation, true),
            sandbox_state: SandboxState::Unchecked,
            limits: config.build_limits(),
            max_source_bytes: config.max_source_bytes,
            building: moka::future::Cache::builder()
                .max_capacity(BUILDING_MAX_KIB)
                .weigher(|_, component: &Arc<[u8]>| {
                    u32::try_from(component.len().div_ceil(1024)).unwrap_or(u32::MAX)
                })
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
            built: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        })
    }

    /// Whether a language can be built here, and why not.
    pub fn status(&self, language: Language) -> Result<(), String> {
        if self.toolchains.contains_key(&language) {
            Ok(())
        } else {
            Err(self
                .unavailable
                .get(&language)
                .cloned()
                .unwrap_or_else(|| "not configured".to_owned()))
        }
    }

    /// The stores of built components.
    pub fn artifacts(&self) -> &Artifacts {
        &self.artifacts
    }

    /// Puts a store shared by every replica behind the local one.
    pub fn with_shared_artifacts(mut self, shared: Arc<dyn ArtifactStore>) -> Self {
        self.artifacts = self.artifacts.with_shared(shared);
        self
    }

    pub fn stats(&self) -> BuildStats {
        BuildStats {
            built: self.built.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
        }
    }

    /// The digest a build of these inputs has, whether or not it exists.
    pub fn digest(
        &self,
        language: Language,
        source: &str,
        options: &BuildOptions,
    ) -> Result<Digest, BuildError> {
        let registered = self.registered(language)?;
        let options = serde_json::to_vec(options).map_err(anyhow::Error::from)?;
        Ok(Digest::of_fields([
            language.as_str().as_bytes(),
            registered.toolchain.fingerprint().as_bytes(),
            &options,
            source.as_bytes(),
        ]))
    }

    /// The longest a build may take.
    pub fn build_timeout(&self) -> std::time::Duration {
        self.limits.wall
    }

    /// Refuses a source over the size limit, as a build would.
    pub fn check_source_size(&self, source: &str) -> Result<(), CompileError> {
        if source.len() > self.max_source_bytes {
            return Err(CompileError {
                message: format!(
                    "the source is {} bytes; the limit is {} bytes",
                    source.len(),
                    self.max_source_bytes
                ),
                diagnostics: Vec::new(),
            });
        }
        Ok(())
    }

    /// The digest of the language's interpreter (tier 0): its toolchain's
    /// fingerprint names it.
    pub fn interpreter_digest(&self, language: Language) -> Result<Digest, BuildError> {
        let registered = self.registered(language)?;
        Ok(Digest::of_fields([
            b"interpreter".as_slice(),
            language.as_str().as_bytes(),
            registered.toolchain.fingerprint().as_bytes(),
        ]))
    }

    /// Builds the language's interpreter (tier 0), or returns the stored
    /// one. A trusted build of our own code: its time counts from when a
    /// build slot is free.
    pub async fn build_interpreter(&self, language: Language) -> Result<Artifact, BuildError> {
        let digest = self.interpreter_digest(language)?;
        let job = Inputs {
            kind: BuildKind::Interpreter,
            language,
            digest,
            source: "",
            options: &BuildOptions::default(),
        };
        self.build_inputs(job, Timing::FromSlot).await
    }

    /// Builds `source`, or returns the stored artifact of an identical
    /// earlier build. The build's time counts from now: a build that waits
    /// for a slot spends its own time waiting.
    pub async fn build(
        &self,
        language: Language,
        source: &str,
        options: &BuildOptions,
    ) -> Result<Artifact, BuildError> {
        self.build_timed(language, source, options, Timing::FromRequest)
            .await
    }

    /// [`build`](Self::build) whose time counts from when a build slot is
    /// free: for builds in the background, which may queue behind many.
    pub async fn build_queued(
        &self,
        language: Language,
        source: &str,
        options: &BuildOptions,
    ) -> Result<Artifact, BuildError> {
        self.build_timed(language, source, options, Timing::FromSlot)
            .await
    }

    async fn build_timed(
        &self,
        language: Language,
        source: &str,
        options: &BuildOptions,
        timing: Timing,
    ) -> Result<Artifact, BuildError> {
        self.check_source_size(source)?;
        let digest = self.digest(language, source, options)?;
        let job = Inputs {
            kind: BuildKind::Function,
            language,
            digest,
            source,
            options,
        };
        self.build_inputs(job, timing).await
    }

    async fn build_inputs(&self, job: Inputs<'_>, timing: Timing) -> Result<Artifact, BuildError> {
        let digest = job.digest;
        let deadline = match timing {
            Timing::FromRequest => Some(Instant::now() + self.limits.wall),
            Timing::FromSlot => None,
        };
        if let Some(component) = self.artifacts.get(digest).await {
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(Artifact {
                digest,
                component,
                built: false,
            });
        }

        let ran_here = AtomicBool::new(false);
        let result = self
            .building
            .try_get_with(digest, async {
                ran_here.store(true, Ordering::Relaxed);
                self.run_build(&job, deadline).await
            })
            .await;
        let built_here = ran_here.into_inner();
        match result {
            Ok(component) => {
                if !built_here {
                    self.reused.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Artifact {
                    digest,
                    component,
                    built: built_here,
                })
            }
            Err(shared) => Err(BuildError::copy_of(&shared)),
        }
    }

    /// Runs the toolchain; `deadline` is `None` when the time starts once
    /// a build slot is free.
    async fn run_build(
        &self,
        job: &Inputs<'_>,
        deadline: Option<Instant>,
    ) -> Result<Arc<[u8]>, BuildError> {
        let Inputs {
            kind,
            language,
            digest,
            source,
            options,
        } = *job;
        let registered = self.registered(language)?;
        let result = async {
            let _permit = match deadline {
                Some(deadline) => {
                    tokio::time::timeout_at(deadline.into(), registered.permits.acquire())
                        .await
                        .map_err(|_| BuildError::limit(Limit::Time, &self.limits))?
                }
                None => registered.permits.acquire().await,
            }
            .map_err(anyhow::Error::from)?;
            let deadline = deadline.unwrap_or_else(|| Instant::now() + self.limits.wall);
            // The queue may have held us while another process built it.
            if let Some(component) = self.artifacts.get(digest).await {
                return Ok((component, false));
            }
            let workdir = tempfile::Builder::new()
                .prefix("build-")
                .tempdir_in(&self.work_dir)
                .map_err(anyhow::Error::from)?;
            let started = Instant::now();
            registered
                .toolchain
                .build(BuildJob {
                    kind,
                    source,
                    options,
                    workdir: workdir.path(),
                    sandbox: &self.sandbox,
                    configured_limits: self.limits,
                    deadline,
                    work_root: &self.work_dir,
                })
                .await?;
            let component = output::read_component(workdir.path(), self.limits).await?;
            self.artifacts.put(digest, &component).await?;
            tracing::info!(
                %language,
                ?kind,
                digest = %digest.short(),
                bytes = component.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "built a component"
            );
            Ok((Arc::<[u8]>::from(component), true))
        }
        .await;
        match result {
            Ok((component, ran)) => {
                if ran {
                    self.built.fetch_add(1, Ordering::Relaxed);
                }
                Ok(component)
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn registered(&self, language: Language) -> Result<&Registered, BuildError> {
        self.toolchains
            .get(&language)
            .ok_or_else(|| BuildError::Unavailable {
                language,
                reason: self
                    .unavailable
                    .get(&language)
                    .cloned()
                    .unwrap_or_else(|| "not configured".to_owned()),
            })
    }
}

/// Checks a component a toolchain built like an uploaded one
/// ([`worlds::check_upload`]): it exports `expected`, and imports only
/// what that world grants. A source may reach for an interface the host
/// does not serve (the Spin SDK's SQLite, `fetch` from a JSON function):
/// that is a 422 naming it at `initialize`, not a failure at first call.
/// `what` names the source in the message (`the Rust source`).
pub(crate) async fn check_built(
    path: &std::path::Path,
    expected: crate::runtime::worlds::World,
    what: &str,
) -> Result<(), BuildError> {
    use anyhow::Context as _;
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    let world = tokio::task::spawn_blocking(move || crate::runtime::worlds::check_upload(&bytes))
        .await
        .map_err(|e| BuildError::Internal(e.into()))?
        .map_err(|e| CompileError {
            message: format!("{what} builds, but {e}"),
            diagnostics: Vec::new(),
        })?;
    if world != expected {
        return Err(CompileError {
            message: format!(
                "{what} builds a {} component where a {} one was expected",
                world.as_str(),
                expected.as_str()
            ),
            diagnostics: Vec::new(),
        }
        .into());
    }
    Ok(())
}

/// Whether `source` is an HTTP function's in a language whose builds have
/// an interpreter tier (JavaScript's `fetch` listener): such a source is
/// built before it runs, never interpreted.
pub fn is_http_source(language: Language, source: &str) -> bool {
    language == Language::Nodejs && js::registers_fetch_listener(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scratch_directories_older_than_any_build_are_removed() {
        let work = tempfile::tempdir().unwrap();
        let old = work.path().join("build-old");
        let young = work.path().join("build-young");
        std::fs::create_dir_all(old.join("src")).unwrap();
        std::fs::create_dir(&young).unwrap();
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::open(&old)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        remove_abandoned_scratch(work.path(), std::time::Duration::from_secs(600));
        assert!(!old.exists());
        assert!(young.exists());
    }
}
