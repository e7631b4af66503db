//! Two tiers for JavaScript and Python. A new function runs at once on its
//! language's interpreter (tier 0: one prebuilt component that takes the
//! function's source through the `script` import at each call), while its
//! own component (tier 1) is built in the background; once built and
//! compiled, tier 1 runs every new execution of that version. Executions
//! under way finish where they started: each holds its own instance.
//!
//! Why tier 1 at all: the interpreter compiles the source and runs its
//! top-level code at every call, which a built component did once, at
//! build time (docs/tiers.md has the measurements).
//!
//! A version is its build digest (language, toolchain, options, source),
//! whichever tier runs it. Sessions keep the component they started with:
//! a session started on the interpreter moves to tier 1 by way of
//! [`Functions::executable`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::language::{Language, LanguageTitle};
use crate::runtime::{self, Invocation, LoadedFunction, Script, ScriptMode};
use crate::store::{FunctionRecord, TierState, TierUp};
use crate::telemetry::{Tier, TierUpOutcome};
use crate::toolchain::{BuildError, BuildOptions, CompileError, Diagnostic};

use super::{FunctionError, Functions};

/// How long a replica trusts what it read of a tier-0 version before it
/// reads the registry again: another replica's tier 1 is noticed this
/// quickly.
const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// What the scripts of tier-0 versions may hold in memory.
const SCRIPTS_MAX_BYTES: u64 = 64 << 20;

/// A language's interpreter, loaded.
pub struct Interpreter {
    pub language: Language,
    /// The digest of its component's bytes.
    pub component_digest: Digest,
    pub component_size: u64,
    pub function: Arc<LoadedFunction>,
}

/// What one execution runs: a component, and for an interpreter the
/// source it runs.
pub struct Executable {
    pub function: Arc<LoadedFunction>,
    pub script: Option<Script>,
    pub tier: Tier,
}

/// The tier state of the host: its interpreters, and what it knows of
/// versions that started on one.
pub struct Tiers {
    /// Whether new functions start on an interpreter at all.
    pub(super) enabled: bool,
    /// Whether tier 1 is built in the background.
    pub(super) tier_up: bool,
    /// Ready once prepared (in the background, at start).
    interpreters: RwLock<HashMap<Language, Arc<Interpreter>>>,
    /// Build digest → the component digest of its tier 1, once built.
    compiled: moka::sync::Cache<Digest, Digest>,
    /// Build digest → what the interpreter runs of a version: the source
    /// prepared by a check, or the source itself until one ran here.
    scripts: moka::sync::Cache<Digest, Script>,
    /// Versions whose registry record was read within [`RECHECK_AFTER`].
    checked: moka::sync::Cache<Digest, ()>,
    /// Versions whose tier 1 this process is building.
    in_flight: Mutex<HashSet<Digest>>,
    /// Versions whose source this process is preparing (a check).
    preparing: Mutex<HashSet<Digest>>,
    /// Set once every interpreter was prepared or failed to.
    preparation_over: std::sync::atomic::AtomicBool,
}

impl Tiers {
    pub fn new(enabled: bool, tier_up: bool) -> Self {
        Self {
            enabled,
            tier_up,
            interpreters: RwLock::new(HashMap::new()),
            compiled: moka::sync::Cache::new(100_000),
            scripts: moka::sync::Cache::builder()
                .max_capacity(SCRIPTS_MAX_BYTES)
                .weigher(|_, script: &Script| u32::try_from(script.text.len()).unwrap_or(u32::MAX))
                .build(),
            checked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(RECHECK_AFTER)
                .build(),
            in_flight: Mutex::new(HashSet::new()),
            preparing: Mutex::new(HashSet::new()),
            preparation_over: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether new functions start on an interpreter at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether preparing the interpreters is over (each one loaded or
    /// failed).
    pub fn prepared(&self) -> bool {
        self.preparation_over
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The language's interpreter, once prepared.
    pub fn interpreter(&self, language: Language) -> Option<Arc<Interpreter>> {
        if !self.enabled {
            return None;
        }
        self.interpreters
            .read()
            .expect("the interpreters' lock is never poisoned")
            .get(&language)
            .cloned()
    }

    /// The interpreter whose component this is.
    fn interpreter_of(&self, component_digest: Digest) -> Option<Arc<Interpreter>> {
        self.interpreters
            .read()
            .expect("the interpreters' lock is never poisoned")
            .values()
            .find(|i| i.component_digest == component_digest)
            .cloned()
    }

    /// The component digests of the interpreters (what the sweep keeps).
    pub fn interpreter_digests(&self) -> Vec<Digest> {
        self.interpreters
            .read()
            .expect("the interpreters' lock is never poisoned")
            .values()
            .map(|i| i.component_digest)
            .collect()
    }

    /// The languages whose interpreter is loaded.
    pub fn languages_ready(&self) -> Vec<Language> {
        let mut ready: Vec<Language> = self
            .interpreters
            .read()
            .expect("the interpreters' lock is never poisoned")
            .keys()
            .copied()
            .collect();
        ready.sort_by_key(|l| l.as_str());
        ready
    }
}

impl Functions {
    /// Builds (or reuses) and loads the interpreter of every language that
    /// has one. A language whose interpreter fails keeps working on tier 1
    /// alone; the failure is logged.
    pub async fn prepare_interpreters(&self) {
        if !self.tiers.enabled {
            return;
        }
        for language in [Language::Nodejs, Language::Python] {
            let started = Instant::now();
            let prepared = async {
                let artifact = self.toolchains.build_interpreter(language).await?;
                let component_digest = Digest::of(&artifact.component);
                let function = self
                    .runtime
                    .load_as(component_digest, artifact.component.clone())
                    .await?;
                Ok::<_, FunctionError>(Interpreter {
                    language,
                    component_digest,
                    component_size: artifact.component.len() as u64,
                    function,
                })
            }
            .await;
            match prepared {
                Ok(interpreter) => {
                    tracing::info!(
                        %language,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "interpreter ready: new functions run at once (tier 0)"
                    );
                    self.tiers
                        .interpreters
                        .write()
                        .expect("the interpreters' lock is never poisoned")
                        .insert(language, Arc::new(interpreter));
                }
                Err(FunctionError::Build(BuildError::Unavailable { reason, .. })) => {
                    tracing::info!(%language, "no interpreter: {reason}");
                }
                Err(e) => {
                    tracing::warn!(%language, "no interpreter, new functions wait for their build: {e}");
                }
            }
        }
        self.tiers
            .preparation_over
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The component, size and tier of a new version that runs on
    /// `interpreter` at once, after its source compiled and its top-level
    /// code ran there (the checks a build makes). `None` when the check
    /// ran out of time or memory: the build, with its larger limits,
    /// decides.
    pub(super) async fn start_on_interpreter(
        &self,
        interpreter: &Interpreter,
        language_title: &LanguageTitle,
        owner: &str,
        source: &str,
        build_digest: Digest,
    ) -> Result<Option<(Digest, u64, TierState)>, FunctionError> {
        self.toolchains
            .check_source_size(source)
            .map_err(BuildError::from)?;
        match self
            .check(interpreter, language_title, owner, source.into())
            .await
        {
            Ok(script) => {
                self.tiers.scripts.insert(build_digest, script);
            }
            Err(e @ (runtime::Error::Timeout(_) | runtime::Error::OutOfMemory { .. })) => {
                tracing::info!(function = %language_title, "the top-level code needs more than an execution may have ({e}): building it first");
                return Ok(None);
            }
            Err(e) => return Err(check_failure(e)),
        }
        let tier = if self.tiers.tier_up {
            TierState::Pending
        } else {
            TierState::Interpreted
        };
        Ok(Some((
            interpreter.component_digest,
            interpreter.component_size,
            tier,
        )))
    }

    /// Runs a source's check on the interpreter; what the interpreter runs
    /// of it from then on: the prepared source it answered, or the source.
    async fn check(
        &self,
        interpreter: &Interpreter,
        language_title: &LanguageTitle,
        owner: &str,
        source: Arc<str>,
    ) -> Result<Script, runtime::Error> {
        let check = Invocation {
            request_id: uuid::Uuid::new_v4().to_string(),
            language_title: language_title.to_string(),
            params: serde_json::json!({}),
            context: serde_json::json!({}),
            caller: owner.to_owned(),
            script: Some(Script {
                text: source.clone(),
                mode: ScriptMode::Check,
            }),
            // A check's instance ran top-level code nobody executes again.
            warm_version: None,
        };
        let checked = self
            .runtime
            .invoke(&interpreter.function, &check, None)
            .await?;
        Ok(match checked.result {
            serde_json::Value::String(prepared) => Script {
                text: prepared.into(),
                mode: ScriptMode::RunPrepared,
            },
            _ => Script {
                text: source,
                mode: ScriptMode::Run,
            },
        })
    }

    /// Prepares a version's source in the background (a check on the
    /// interpreter), for a version this host knows only the source of.
    fn prepare_aside(
        &self,
        interpreter: Arc<Interpreter>,
        language_title: &LanguageTitle,
        build_digest: Digest,
        source: Arc<str>,
    ) {
        let name = language_title.clone();
        self.spawn_once(|t| &t.preparing, build_digest, async move |this| {
            match this.check(&interpreter, &name, "lambda-host", source).await {
                Ok(script) => this.tiers.scripts.insert(build_digest, script),
                Err(e) => {
                    tracing::warn!(function = %name, "preparing the source failed, it runs unprepared: {e}")
                }
            }
        });
    }

    /// Runs `work` in the background unless work for `digest` in the set
    /// `set` picks is under way already in this process; the set holds the
    /// digest until the work ends.
    fn spawn_once<F>(
        &self,
        set: fn(&Tiers) -> &Mutex<HashSet<Digest>>,
        digest: Digest,
        work: impl FnOnce(Arc<Functions>) -> F + Send + 'static,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let claim = move |this: &Functions, claimed: bool| {
            let mut set = set(&this.tiers)
                .lock()
                .expect("a work set is never poisoned");
            if claimed {
                set.insert(digest)
            } else {
                set.remove(&digest)
            }
        };
        if !claim(&this, true) {
            return;
        }
        tokio::spawn(async move {
            work(this.clone()).await;
            claim(&this, false);
        });
    }

    /// What runs the next execution of a version: its own component when
    /// it has one (tier 1), else its language's interpreter with its
    /// source (tier 0).
    pub async fn executable(
        &self,
        language_title: &LanguageTitle,
        build_digest: Digest,
        component_digest: Digest,
    ) -> Result<Executable, FunctionError> {
        let Some(interpreter) = self.tiers.interpreter_of(component_digest) else {
            let function = self
                .load(language_title, build_digest, component_digest)
                .await?;
            return Ok(Executable {
                function,
                script: None,
                tier: Tier::Compiled,
            });
        };
        // A version that started on the interpreter.
        if !self.tiers.checked.contains_key(&build_digest) {
            self.refresh_version(language_title, build_digest).await;
        }
        if let Some(compiled) = self.tiers.compiled.get(&build_digest) {
            if let Some(function) = self.runtime.loaded(compiled).await {
                return Ok(Executable {
                    function,
                    script: None,
                    tier: Tier::Compiled,
                });
            }
            // Built (here earlier, or by another replica) but not loaded:
            // loading may compile for seconds, so it happens aside while
            // the interpreter answers.
            self.load_aside(language_title, build_digest, compiled);
        }
        match self.tiers.scripts.get(&build_digest) {
            Some(script) => {
                if script.mode == ScriptMode::Run {
                    self.prepare_aside(
                        interpreter.clone(),
                        language_title,
                        build_digest,
                        script.text.clone(),
                    );
                }
                Ok(Executable {
                    function: interpreter.function.clone(),
                    script: Some(script),
                    tier: Tier::Interpreted,
                })
            }
            // Neither the source (the function is another version by now,
            // on a host that never ran this one) nor a loaded tier 1: the
            // version's own component, if it was ever built.
            None => match self.tiers.compiled.get(&build_digest) {
                Some(compiled) => Ok(Executable {
                    function: self.load(language_title, build_digest, compiled).await?,
                    script: None,
                    tier: Tier::Compiled,
                }),
                None => Err(FunctionError::MissingArtifact(build_digest.to_string())),
            },
        }
    }

    /// Reads the registry's record of a tier-0 version: its tier 1 if
    /// built (by any replica), its source otherwise. A registry that
    /// cannot be read leaves what is known as it is.
    async fn refresh_version(&self, language_title: &LanguageTitle, build_digest: Digest) {
        let record = match self.registry.get(language_title).await {
            Ok(Some(record)) if record.build_digest == build_digest => record,
            Ok(_) => {
                self.tiers.checked.insert(build_digest, ());
                return;
            }
            Err(e) => {
                tracing::warn!(function = %language_title, "registry unavailable, the tier of a version is not refreshed: {e}");
                return;
            }
        };
        self.remember(&record);
        self.note_version(&record);
        self.tiers.checked.insert(build_digest, ());
        // Pending for longer than any build may take: whoever built it
        // stopped before recording the outcome (a restart mid-build), so
        // this host builds it. A younger one is another replica's to
        // finish: a version is built once.
        let abandoned = (chrono::Utc::now() - record.updated_at)
            .to_std()
            .is_ok_and(|age| age > 2 * self.toolchains.build_timeout());
        if record.tier == TierState::Pending
            && self.tiers.tier_up
            && abandoned
            && let Some(source) = &record.script_content
        {
            tracing::info!(function = %language_title, "tier 1 was left pending: building it");
            self.spawn_tier_up(&record, source.as_str().into());
        }
    }

    /// Notes what a registry record says of its version.
    pub(super) fn note_version(&self, record: &FunctionRecord) {
        if record.tier.is_compiled() {
            if self.tiers.interpreter_of(record.component_digest).is_none() {
                self.tiers
                    .compiled
                    .insert(record.build_digest, record.component_digest);
            }
        } else if let Some(source) = &record.script_content
            && !self.tiers.scripts.contains_key(&record.build_digest)
        {
            // The source as it is, until a check here prepares it.
            self.tiers.scripts.insert(
                record.build_digest,
                Script {
                    text: source.as_str().into(),
                    mode: ScriptMode::Run,
                },
            );
        }
    }

    /// Loads a version's tier 1 in the background.
    fn load_aside(&self, language_title: &LanguageTitle, build_digest: Digest, compiled: Digest) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let name = language_title.clone();
        tokio::spawn(async move {
            if let Err(e) = this.load(&name, build_digest, compiled).await {
                tracing::warn!(function = %name, "loading tier 1 failed, the interpreter keeps running it: {e}");
            }
        });
    }

    /// Builds and compiles a tier-0 version's own component in the
    /// background, then records it: new executions run it from then on.
    /// At most one build per version runs in this process.
    pub(super) fn spawn_tier_up(&self, record: &FunctionRecord, source: Arc<str>) {
        let build_digest = record.build_digest;
        let name = record.language_title.clone();
        let options: BuildOptions =
            serde_json::from_value(record.compile_options.clone()).unwrap_or_default();
        let registered = Instant::now();
        self.spawn_once(
            |t| &t.in_flight,
            build_digest,
            async move |this| {
                let outcome = this.tier_up(&name, &source, &options).await;
                this.record_tier_up(&name, build_digest, &outcome, registered.elapsed())
                    .await;
            },
        );
    }

    async fn tier_up(&self, name: &LanguageTitle, source: &str, options: &BuildOptions) -> TierUp {
        let language = name.language();
        let artifact = match self.build_counted(language, source, options, true).await {
            Ok(artifact) => artifact,
            Err(e) => return TierUp::Failed(tier_up_failure(&e)),
        };
        let component_digest = Digest::of(&artifact.component);
        match self
            .runtime
            .load_as(component_digest, artifact.component.clone())
            .await
        {
            Ok(_) => TierUp::Compiled {
                component_digest,
                component_size: artifact.component.len() as u64,
            },
            Err(e) => {
                tracing::warn!(function = %name, "tier 1 does not load: {e}");
                TierUp::Failed(format!("its component does not load: {e}"))
            }
        }
    }

    async fn record_tier_up(
        &self,
        name: &LanguageTitle,
        build_digest: Digest,
        outcome: &TierUp,
        elapsed: Duration,
    ) {
        let language = name.language();
        if let TierUp::Compiled {
            component_digest, ..
        } = outcome
        {
            // Local executions switch now, whatever the registry says.
            self.tiers.compiled.insert(build_digest, *component_digest);
            self.metrics
                .tier_up_duration
                .with_label_values(&[language.as_str()])
                .observe(elapsed.as_secs_f64());
        }
        let label = match outcome {
            TierUp::Compiled { .. } => TierUpOutcome::Ok,
            TierUp::Failed(reason) => {
                tracing::warn!(function = %name, "tier 1 failed, the interpreter keeps running it: {reason}");
                TierUpOutcome::Failed
            }
        };
        self.metrics
            .tier_ups
            .with_label_values(&[language.as_str(), label.as_str()])
            .inc();
        match self
            .registry
            .finish_tier_up(name, build_digest, outcome)
            .await
        {
            Ok(true) => {
                tracing::info!(function = %name, digest = %build_digest.short(), elapsed_ms = elapsed.as_millis() as u64, outcome = label.as_str(), "tier 1 recorded");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(function = %name, "cannot record the function's tier: {e}");
            }
        }
    }
}

/// A check on the interpreter that failed, as a build reports it: the
/// user's mistake (422) with where it is, unless the host was too busy.
/// (Time and memory are the build's to judge: see `start_on_interpreter`.)
fn check_failure(error: runtime::Error) -> FunctionError {
    let compile = |message: String, line, column| {
        FunctionError::Build(BuildError::Compile(CompileError {
            diagnostics: vec![Diagnostic {
                message: message.clone(),
                line,
                column,
            }],
            message,
        }))
    };
    match error {
        runtime::Error::Guest(guest) => compile(guest.message, guest.line, guest.column),
        runtime::Error::Trap { message } => {
            compile(format!("the top-level code crashed: {message}"), None, None)
        }
        other => FunctionError::Runtime(other),
    }
}

/// Why a tier 1 failed, in words fit for the function's info: a user's
/// mistake or a limit says itself; the toolchain's own failure is in the
/// host's log, not in a response.
fn tier_up_failure(error: &BuildError) -> String {
    match error {
        BuildError::Compile(e) => format!("the build refused the source: {}", e.message),
        BuildError::LimitExceeded { .. } | BuildError::Unavailable { .. } => error.to_string(),
        BuildError::Internal(e) => {
            tracing::warn!("tier 1 build failed: {e:#}");
            "the toolchain failed (the host's log says why)".to_owned()
        }
    }
}
