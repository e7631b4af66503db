//! The functions of the platform: the registry, the builds behind it and
//! the runtime that loads them. The API's handlers call this; it knows
//! nothing of HTTP.

mod tiers;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Instant;

use chrono::Utc;
use serde_json::json;

use crate::catalog;
use crate::digest::Digest;
use crate::language::{Language, LanguageTitle};
use crate::runtime::policy::Declared;
use crate::runtime::{self, CallScope, FunctionOwner, LoadedFunction, Runtime};
use crate::store::{FunctionKind, FunctionRecord, Registry, StoreError, TierState};
use crate::telemetry::{BuildOutcome, Metrics};
use crate::toolchain::{Artifact, BuildError, BuildOptions, Toolchains};

pub use tiers::{Executable, Interpreter, Tiers};

/// Why a function could not be registered or loaded.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// A predefined function, or another user's, has this name.
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry names an artifact the artifact store does not hold.
    #[error("the component of {0} is missing from the artifact store")]
    MissingArtifact(String),
}

/// The last known records kept for registry outages, by the bytes of their
/// sources: 64 MiB holds thousands of functions of ordinary size.
const KNOWN_RECORDS_MAX_BYTES: u64 = 64 << 20;
/// What a record weighs besides its source: digests, schemas, timestamps.
const RECORD_OVERHEAD_BYTES: usize = 1024;

/// How long a request by name may run the version it found before: a new
/// version reaches `/fn/...` within this time.
const CURRENT_VERSION_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The version a call by name runs now, whose function it is and what it
/// may use.
#[derive(Clone, Debug)]
pub struct CurrentVersion {
    pub build_digest: Digest,
    pub component_digest: Digest,
    pub scope: CallScope,
}

/// Whose function a registry record is.
fn owner_of(record: &FunctionRecord) -> FunctionOwner {
    match (&record.kind, &record.owner) {
        (FunctionKind::Dynamic, Some(owner)) => FunctionOwner::User(owner.as_str().into()),
        (FunctionKind::Predefined, _) => FunctionOwner::Predefined,
        (FunctionKind::Dynamic, None) => FunctionOwner::Unknown,
    }
}

pub struct Functions {
    /// The last record read or written of each function: initialize keeps
    /// working from it while the registry's database is unreachable.
    /// Bounded by the size of the sources it holds (a record carries its
    /// script, up to the source limit), least recently used dropped first.
    known: moka::sync::Cache<String, FunctionRecord>,
    runtime: Arc<Runtime>,
    toolchains: Arc<Toolchains>,
    registry: Arc<dyn Registry>,
    metrics: Arc<Metrics>,
    components_dir: PathBuf,
    tiers: Tiers,
    /// The version each function called by name runs now (`/fn/...`),
    /// remembered for a second: a stream of requests to one function does
    /// not read its record, source and all, from the database each time.
    current: moka::sync::Cache<String, CurrentVersion>,
    /// Itself, for the work it spawns (tier-1 builds).
    this: Weak<Functions>,
}

impl Functions {
    pub fn new(
        runtime: Arc<Runtime>,
        toolchains: Arc<Toolchains>,
        registry: Arc<dyn Registry>,
        metrics: Arc<Metrics>,
        components_dir: PathBuf,
        tiers: Tiers,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            known: moka::sync::Cache::builder()
                .max_capacity(KNOWN_RECORDS_MAX_BYTES)
                .weigher(|name: &String, record: &FunctionRecord| {
                    let bytes = name.len()
                        + record.script_content.as_ref().map_or(0, String::len)
                        + RECORD_OVERHEAD_BYTES;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .build(),
            runtime,
            toolchains,
            registry,
            metrics,
            components_dir,
            tiers,
            current: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(CURRENT_VERSION_TTL)
                .build(),
            this: this.clone(),
        })
    }

    /// The interpreters and what is known of versions run on them.
    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn toolchains(&self) -> &Toolchains {
        &self.toolchains
    }

    pub fn registry(&self) -> &dyn Registry {
        self.registry.as_ref()
    }

    /// Removes the built components and native code that no registered
    /// function uses and that were written before `written_before`.
    /// Returns how many artifacts and native-code files went.
    pub async fn remove_unused_builds(
        &self,
        written_before: chrono::DateTime<Utc>,
    ) -> Result<(u64, u64), FunctionError> {
        let mut builds = HashSet::new();
        let mut components: HashSet<Digest> =
            self.tiers.interpreter_digests().into_iter().collect();
        for language in self.tiers.languages_ready() {
            if let Ok(digest) = self.toolchains.interpreter_digest(language) {
                builds.insert(digest);
            }
        }
        for (build, component) in self.registry.digests().await? {
            builds.insert(build);
            components.insert(component);
        }
        let artifacts = self
            .toolchains
            .artifacts()
            .remove_unused(&builds, written_before)
            .await;
        let native = self
            .runtime
            .remove_unused_native_code(components, written_before.into())
            .await
            .map_err(|e| FunctionError::Runtime(runtime::Error::Internal(e)))?;
        Ok((artifacts, native))
    }

    /// Builds (or reuses), registers and loads every predefined function. A
    /// function whose toolchain is missing is skipped with a warning, so
    /// the host still serves the others; the names of those skipped are
    /// returned.
    pub async fn register_predefined(&self) -> anyhow::Result<Vec<String>> {
        let mut skipped = Vec::new();
        for function in catalog::load_all(&self.components_dir)? {
            let name = function.language_title.to_string();
            let language = function.language_title.language();
            let options = BuildOptions::default();
            let artifact = match self
                .build_counted(language, &function.source, &options, false)
                .await
            {
                Ok(artifact) => artifact,
                Err(BuildError::Unavailable { reason, .. }) => {
                    tracing::warn!(function = %name, "not registered: {reason}");
                    skipped.push(name);
                    continue;
                }
                Err(e) => anyhow::bail!("the predefined function {name} does not build: {e}"),
            };
            let now = Utc::now();
            let existing = self.registry.get(&function.language_title).await?;
            let record = FunctionRecord {
                language_title: function.language_title.clone(),
                kind: FunctionKind::Predefined,
                owner: None,
                description: function.manifest.description.clone(),
                script_content: None,
                build_digest: artifact.digest,
                component_digest: Digest::of(&artifact.component),
                component_size: artifact.component.len() as u64,
                tier: TierState::Compiled,
                warm_instances: function.manifest.warm_instances,
                capabilities: None,
                compile_options: serde_json::to_value(options).unwrap_or(json!({})),
                schema: serde_json::to_value(&function.manifest.schema).unwrap_or(json!({})),
                examples: serde_json::to_value(&function.manifest.examples).unwrap_or(json!([])),
                created_at: existing.as_ref().map_or(now, |e| e.created_at),
                updated_at: now,
            };
            // A predefined function takes its name whoever held it.
            self.registry.upsert(&record).await?;
            self.remember(&record);
            // Compiled (or read from the AOT cache) now, before the host
            // answers: the first user of a predefined function should not
            // wait seconds for Cranelift.
            self.runtime
                .load_as(record.component_digest, artifact.component.clone())
                .await
                .map_err(|e| anyhow::anyhow!("loading the predefined function {name}: {e}"))?;
        }
        Ok(skipped)
    }

    /// A registered function, predefined or dynamic.
    /// While the registry cannot be reached, the last known record answers.
    pub async fn get(
        &self,
        language_title: &LanguageTitle,
    ) -> Result<Option<FunctionRecord>, FunctionError> {
        let name = language_title.to_string();
        match self.registry.get(language_title).await {
            Ok(Some(record)) => {
                self.remember(&record);
                self.note_version(&record);
                Ok(Some(record))
            }
            Ok(None) => Ok(None),
            Err(e) => match self.known.get(&name) {
                Some(record) => {
                    tracing::warn!(function = %name, "registry unavailable, serving the last known record: {e}");
                    Ok(Some(record))
                }
                None => Err(e.into()),
            },
        }
    }

    /// The version a call by name runs now, read from the registry at
    /// most once per second per function.
    pub async fn current_version(
        &self,
        language_title: &LanguageTitle,
    ) -> Result<Option<CurrentVersion>, FunctionError> {
        let name = language_title.to_string();
        if let Some(version) = self.current.get(&name) {
            return Ok(Some(version));
        }
        let Some(record) = self.get(language_title).await? else {
            return Ok(None);
        };
        let version = CurrentVersion {
            build_digest: record.build_digest,
            component_digest: record.component_digest,
            scope: CallScope {
                owner: owner_of(&record),
                grant: self
                    .runtime
                    .policy()
                    .effective(&name, record.capabilities.as_ref()),
            },
        };
        self.current.insert(name, version.clone());
        Ok(Some(version))
    }

    /// Whose function version `build_digest` is and what it may use: the
    /// current record's while it is the current version. A session may run
    /// a version since replaced: its owner is then unknown (no key-value
    /// store) and it gets the policy's grant narrowed to nothing declared
    /// anew, that is, the current declaration's.
    pub async fn scope_of_version(
        &self,
        language_title: &LanguageTitle,
        build_digest: Digest,
    ) -> CallScope {
        match self.current_version(language_title).await {
            Ok(Some(current)) if current.build_digest == build_digest => current.scope,
            Ok(Some(current)) => CallScope {
                owner: FunctionOwner::Unknown,
                grant: current.scope.grant,
            },
            _ => CallScope {
                owner: FunctionOwner::Unknown,
                grant: None,
            },
        }
    }

    fn remember(&self, record: &FunctionRecord) {
        self.known
            .insert(record.language_title.to_string(), record.clone());
    }

    /// Registers `source` as `owner`'s dynamic function: on its language's
    /// interpreter at once where there is one (its own component then
    /// builds in the background), else once built. `warm_instances` is the
    /// function's opt-in to warm instances; `capabilities` what it declared
    /// it needs (checked against the policy by the caller).
    pub async fn register_dynamic(
        &self,
        language_title: &LanguageTitle,
        owner: &str,
        source: &str,
        options: &BuildOptions,
        warm_instances: bool,
        capabilities: Option<Declared>,
    ) -> Result<FunctionRecord, FunctionError> {
        let name = language_title.to_string();
        let existing = self.registry.get(language_title).await?;
        match &existing {
            Some(f) if f.kind == FunctionKind::Predefined => {
                return Err(FunctionError::Forbidden(format!(
                    "{name} is a predefined function and cannot be replaced"
                )));
            }
            Some(f) if f.owner.as_deref() != Some(owner) => {
                return Err(FunctionError::Forbidden(format!(
                    "{name} belongs to another user"
                )));
            }
            _ => {}
        }
        let language = language_title.language();
        let build_digest = self.toolchains.digest(language, source, options)?;
        // A new source runs on its language's interpreter at once, where
        // there is one; one built before runs on its stored component
        // (read once, here), as does a source the check leaves to the build.
        // An HTTP function is not a `lambda:function`: no interpreter runs it.
        let interpreter = self
            .tiers
            .interpreter(language)
            .filter(|_| !crate::toolchain::is_http_source(language, source));
        let stored = match &interpreter {
            Some(_) => self.toolchains.artifacts().get(build_digest).await,
            None => None,
        };
        let on_interpreter = match (&interpreter, &stored) {
            (Some(interpreter), None) => {
                self.start_on_interpreter(interpreter, language_title, owner, source, build_digest)
                    .await?
            }
            _ => None,
        };
        let (component_digest, component_size, tier) = match (on_interpreter, stored) {
            (Some(started), _) => started,
            (None, Some(component)) => (
                Digest::of(&component),
                component.len() as u64,
                TierState::Compiled,
            ),
            (None, None) => {
                let artifact = self.build_counted(language, source, options, false).await?;
                (
                    Digest::of(&artifact.component),
                    artifact.component.len() as u64,
                    TierState::Compiled,
                )
            }
        };
        let now = Utc::now();
        let record = FunctionRecord {
            language_title: language_title.clone(),
            kind: FunctionKind::Dynamic,
            owner: Some(owner.to_owned()),
            description: String::new(),
            script_content: Some(source.to_owned()),
            build_digest,
            component_digest,
            component_size,
            tier,
            warm_instances,
            capabilities,
            compile_options: serde_json::to_value(options).unwrap_or(json!({})),
            schema: json!({}),
            examples: json!([]),
            created_at: existing.as_ref().map_or(now, |e| e.created_at),
            updated_at: now,
        };
        // The check above is advice for a clear message before a build;
        // this conditional write is the rule (another user may have taken
        // the name while this one built).
        if !self.registry.upsert(&record).await? {
            return Err(FunctionError::Forbidden(format!(
                "{name} belongs to another user"
            )));
        }
        self.remember(&record);
        if record.tier == TierState::Pending {
            self.spawn_tier_up(&record, source.into());
        }
        Ok(record)
    }

    /// The loaded component of a function version: from memory, from the
    /// artifact store (and the AOT cache) on first use, or, when the store
    /// has no sound copy (missing, or refused for its seal), built again
    /// from the function's registered source.
    pub async fn load(
        &self,
        language_title: &LanguageTitle,
        build_digest: Digest,
        component_digest: Digest,
    ) -> Result<Arc<LoadedFunction>, FunctionError> {
        if let Some(loaded) = self.runtime.loaded(component_digest).await {
            return Ok(loaded);
        }
        let missing = || FunctionError::MissingArtifact(build_digest.to_string());
        let bytes = match self.toolchains.artifacts().get(build_digest).await {
            Some(bytes) => bytes,
            None => self
                .rebuild(language_title, build_digest)
                .await?
                .ok_or_else(missing)?,
        };
        // The store's copy is sealed by a host: its component digest is
        // the one registered, not worth hashing 20 MB again.
        Ok(self.runtime.load_as(component_digest, bytes).await?)
    }

    /// Builds a function version again from what the registry holds: the
    /// source of a dynamic function, the catalog's for a predefined one.
    /// `None` when the registry's function is not this version any more.
    async fn rebuild(
        &self,
        name: &LanguageTitle,
        build_digest: Digest,
    ) -> Result<Option<Arc<[u8]>>, FunctionError> {
        let Some(record) = self.get(name).await? else {
            return Ok(None);
        };
        if record.build_digest != build_digest {
            return Ok(None);
        }
        let source = match (&record.script_content, record.kind) {
            (Some(source), _) => source.clone(),
            (None, FunctionKind::Predefined) => match catalog::find(&self.components_dir, name) {
                Ok(Some(function)) => function.source,
                _ => return Ok(None),
            },
            (None, FunctionKind::Dynamic) => return Ok(None),
        };
        let options: BuildOptions =
            serde_json::from_value(record.compile_options.clone()).unwrap_or_default();
        tracing::warn!(
            function = %name,
            digest = %build_digest.short(),
            "no sound copy of the component is stored: building it again from its source"
        );
        let artifact = self
            .build_counted(name.language(), &source, &options, false)
            .await?;
        Ok((artifact.digest == build_digest).then_some(artifact.component))
    }

    /// Builds with metrics: a build that ran a toolchain is counted with
    /// its outcome and duration; a reused artifact is not a build. A
    /// `queued` build's time starts when a build slot is free (builds in
    /// the background).
    async fn build_counted(
        &self,
        language: Language,
        source: &str,
        options: &BuildOptions,
        queued: bool,
    ) -> Result<Artifact, BuildError> {
        let started = Instant::now();
        let result = if queued {
            self.toolchains
                .build_queued(language, source, options)
                .await
        } else {
            self.toolchains.build(language, source, options).await
        };
        let outcome = match &result {
            Ok(artifact) if artifact.built => Some(BuildOutcome::Ok),
            Ok(_) => None,
            Err(e) => e.outcome(),
        };
        if let Some(outcome) = outcome {
            self.metrics.count_build(language, outcome);
            self.metrics
                .build_duration
                .with_label_values(&[language.as_str()])
                .observe(started.elapsed().as_secs_f64());
        }
        result
    }
}
