//! The component cache: each component compiled once per process, and once
//! per machine thanks to the on-disk AOT cache.
//!
//! In memory, components are keyed by the digest of their bytes and hold
//! their `InstancePre`. On disk, the compiled native code is serialized as
//! `<digest>-<engine fingerprint>.cwasm.sealed`: the fingerprint covers the
//! wasmtime version and every engine setting that affects code, so a host
//! with other settings never loads code that was not compiled for it; the
//! seal ([`crate::integrity`]) makes sure the host wrote it, since
//! deserializing is mapping native code and running it as it is.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use cap_std::fs::Dir;
use wasmtime::Engine;
use wasmtime::component::Component;

use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::bindings::FunctionPre;
use super::worlds::{self, World};
use super::{Entry, Error, Linkers, LoadedFunction};
use crate::digest::Digest;
use crate::files::{read_file, write_atomically};
use crate::integrity::{IntegrityKey, Kind};

/// Counters of the cache, for metrics and for tests that must tell a
/// compilation from an AOT hit without timing anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Components compiled to native code (Cranelift ran).
    pub compiles: u64,
    /// Components deserialized from the AOT cache instead.
    pub aot_hits: u64,
    /// Loads answered from memory.
    pub memory_hits: u64,
    /// Time spent compiling, summed over every compilation, in microseconds.
    pub compile_micros: u64,
    /// AOT entries refused because their seal did not match.
    pub aot_rejected: u64,
}

pub struct ComponentCache {
    /// The AOT cache directory, opened once: names resolve beneath it and
    /// no link is followed.
    aot_dir: Option<Arc<Dir>>,
    /// Where that directory is, for the lock files and logs.
    aot_path: Option<PathBuf>,
    key: IntegrityKey,
    /// Hex of a hash of the engine's compatibility fingerprint.
    engine_fingerprint: String,
    /// The loaded functions, least recently used evicted first once their
    /// components weigh more than the configured bound: a host that has
    /// served many functions keeps the ones in use, not every one it ever
    /// saw. An evicted function is loaded again from the AOT cache, in
    /// milliseconds; executions holding it keep it alive until they end.
    /// Concurrent loads of one component await one load (moka's
    /// `try_get_with`), so it is compiled once.
    loaded: moka::future::Cache<Digest, Arc<LoadedFunction>>,
    compiles: AtomicU64,
    aot_hits: AtomicU64,
    memory_hits: AtomicU64,
    compile_micros: AtomicU64,
    aot_rejected: Arc<AtomicU64>,
}

impl ComponentCache {
    pub fn new(
        engine: &Engine,
        aot_path: Option<PathBuf>,
        max_loaded_bytes: u64,
        key: IntegrityKey,
    ) -> anyhow::Result<Self> {
        let aot_dir = match &aot_path {
            Some(path) => {
                std::fs::create_dir_all(path).with_context(|| {
                    format!("cannot create the AOT cache at {}", path.display())
                })?;
                Some(Arc::new(
                    Dir::open_ambient_dir(path, cap_std::ambient_authority()).with_context(
                        || format!("cannot open the AOT cache at {}", path.display()),
                    )?,
                ))
            }
            None => None,
        };
        // `DefaultHasher::new()` uses fixed keys: the same engine gives the
        // same fingerprint in every process of this build of the host.
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            aot_dir,
            aot_path,
            key,
            engine_fingerprint: format!("{:016x}", hasher.finish()),
            // Weighed in KiB, so one entry's weight fits the weigher's u32.
            loaded: moka::future::Cache::builder()
                .max_capacity(max_loaded_bytes / 1024)
                .weigher(|_, function: &Arc<LoadedFunction>| {
                    u32::try_from(function.component_bytes.div_ceil(1024)).unwrap_or(u32::MAX)
                })
                .build(),
            compiles: AtomicU64::new(0),
            aot_hits: AtomicU64::new(0),
            memory_hits: AtomicU64::new(0),
            compile_micros: AtomicU64::new(0),
            aot_rejected: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            compiles: self.compiles.load(Ordering::Relaxed),
            aot_hits: self.aot_hits.load(Ordering::Relaxed),
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
            compile_micros: self.compile_micros.load(Ordering::Relaxed),
            aot_rejected: self.aot_rejected.load(Ordering::Relaxed),
        }
    }

    pub async fn load(
        &self,
        engine: &Engine,
        linkers: &Linkers,
        digest: Digest,
        bytes: Arc<[u8]>,
    ) -> Result<Arc<LoadedFunction>, Error> {
        if let Some(loaded) = self.loaded.get(&digest).await {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(loaded);
        }
        let component_bytes = bytes.len();
        // A failed load is not kept: the next one tries again.
        self.loaded
            .try_get_with(digest, async {
                let component = self.compile_or_deserialize(engine, digest, bytes).await?;
                prepare(engine, linkers, digest, component, component_bytes)
            })
            .await
            .map_err(|shared: Arc<Error>| Error::copy_of(&shared))
    }

    /// Loads native code the host process compiled and serialized
    /// ([`LoadedFunction::native_code`]): an execution process's only way
    /// to get a function, as it neither compiles nor reads the AOT cache.
    pub async fn load_native(
        &self,
        engine: &Engine,
        linkers: &Linkers,
        digest: Digest,
        native: &[u8],
    ) -> Result<(), Error> {
        // SAFETY: the bytes come from the parent host over the execution
        // process's private socket, serialized by `Component::serialize`
        // in the same binary with the same engine settings; wasmtime
        // checks the header and version besides.
        let component = unsafe { Component::deserialize(engine, native) }
            .map_err(|e| Error::Internal(anyhow::Error::from(e).context("native code")))?;
        let function = prepare(engine, linkers, digest, component, native.len())?;
        self.loaded.insert(digest, function).await;
        Ok(())
    }

    pub async fn loaded(&self, digest: Digest) -> Option<Arc<LoadedFunction>> {
        self.loaded.get(&digest).await
    }

    /// How many functions are loaded and the summed size of their
    /// components, in bytes (as the cache weighs them, in whole KiB).
    pub async fn loaded_components(&self) -> (u64, u64) {
        // Pending inserts and evictions are applied lazily: settle them so
        // the numbers are current.
        self.loaded.run_pending_tasks().await;
        (
            self.loaded.entry_count(),
            self.loaded.weighted_size() * 1024,
        )
    }

    /// Removes the AOT entries (and their lock files) written before
    /// `written_before`, except this engine's entries of the components in
    /// `keep`: native code of components no function uses, and of engines
    /// that are gone (an upgrade changes the fingerprint). Entries of
    /// another engine are kept as long as any other: a replica of the
    /// previous version may share the directory during an upgrade.
    /// Blocking: a walk of the directory.
    pub fn remove_unused(
        &self,
        keep: &HashSet<Digest>,
        written_before: std::time::SystemTime,
    ) -> anyhow::Result<u64> {
        let Some(dir) = &self.aot_dir else {
            return Ok(0);
        };
        let kept: HashSet<String> = keep
            .iter()
            .flat_map(|digest| {
                let stem = format!("{digest}-{}", self.engine_fingerprint);
                [format!("{stem}.cwasm.sealed"), format!("{stem}.lock")]
            })
            .collect();
        Ok(crate::files::remove_old_files(dir, &kept, written_before)?)
    }

    /// The AOT entry of a component: its directory and name.
    fn aot_entry(&self, digest: Digest) -> Option<AotEntry> {
        Some(AotEntry {
            dir: self.aot_dir.clone()?,
            lock: self
                .aot_path
                .as_ref()?
                .join(format!("{digest}-{}.lock", self.engine_fingerprint)),
            name: format!("{digest}-{}.cwasm.sealed", self.engine_fingerprint),
            key: self.key.clone(),
            rejected: self.aot_rejected.clone(),
        })
    }

    /// Compilation takes seconds for an interpreter component: it runs on
    /// the blocking pool, never on an async worker.
    async fn compile_or_deserialize(
        &self,
        engine: &Engine,
        digest: Digest,
        bytes: Arc<[u8]>,
    ) -> Result<Component, Error> {
        let engine = engine.clone();
        let entry = self.aot_entry(digest);
        let started = std::time::Instant::now();
        let (component, compiled) = tokio::task::spawn_blocking(move || {
            if let Some(entry) = &entry
                && let Some(component) = entry.deserialize(&engine)
            {
                return Ok::<_, Error>((component, false));
            }
            // Replicas sharing this AOT cache (one volume, one data
            // directory) may be compiling this very component: the first
            // compiles, the others wait and read its result.
            let _compiling = entry.as_ref().and_then(|e| lock_for_compiling(&e.lock));
            if let Some(entry) = &entry
                && let Some(component) = entry.deserialize(&engine)
            {
                return Ok((component, false));
            }
            let component =
                Component::new(&engine, &bytes).map_err(|e| Error::InvalidComponent(e.into()))?;
            if let Some(entry) = &entry
                && let Err(e) = entry.store(&component)
            {
                tracing::warn!(entry = %entry.name, "cannot write the AOT cache: {e:#}");
            }
            Ok((component, true))
        })
        .await
        .map_err(|e| Error::Internal(e.into()))??;
        if compiled {
            self.compiles.fetch_add(1, Ordering::Relaxed);
            self.compile_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        } else {
            self.aot_hits.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(
            digest = %digest.short(),
            compiled,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "component loaded"
        );
        Ok(component)
    }
}

/// A compiled component made ready for executions: its exports say which
/// world it implements, and so which linker (which grant) it is
/// instantiated against.
fn prepare(
    engine: &Engine,
    linkers: &Linkers,
    digest: Digest,
    component: Component,
    component_bytes: usize,
) -> Result<Arc<LoadedFunction>, Error> {
    let world = worlds::of_exports(
        component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name),
    );
    let invalid = |e: wasmtime::Error| Error::InvalidComponent(e.into());
    let entry = match world {
        World::Function => Entry::Function(
            FunctionPre::new(
                linkers
                    .function
                    .instantiate_pre(&component)
                    .map_err(invalid)?,
            )
            .map_err(invalid)?,
        ),
        World::Http => Entry::Http(
            ProxyPre::new(linkers.http.instantiate_pre(&component).map_err(invalid)?)
                .map_err(invalid)?,
        ),
    };
    Ok(Arc::new(LoadedFunction {
        digest,
        entry,
        component_bytes,
    }))
}

/// An exclusive lock on an entry's lock file, held while compiling; the
/// kernel drops it when the file closes, also when a process dies. `None`
/// (compile without it) when the lock cannot be taken: a duplicate
/// compilation is only wasted time.
fn lock_for_compiling(path: &Path) -> Option<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .and_then(|file| file.lock().map(|()| file));
    match file {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot lock the AOT cache entry: {e}");
            None
        }
    }
}

/// One component's entry in the AOT cache.
struct AotEntry {
    dir: Arc<Dir>,
    /// `<digest>-<fingerprint>.cwasm.sealed`, beneath `dir`.
    name: String,
    /// The lock file of the entry, for compiling it once.
    lock: PathBuf,
    key: IntegrityKey,
    rejected: Arc<AtomicU64>,
}

impl AotEntry {
    /// The compiled component, if the entry exists and its seal is right;
    /// an entry that fails is removed (and compiled again by the caller).
    fn deserialize(&self, engine: &Engine) -> Option<Component> {
        let bytes = match read_file(&self.dir, &self.name) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(entry = %self.name, "cannot read an AOT entry: {e:#}");
                return None;
            }
        };
        let Some(native) = self.key.open_file(Kind::NativeCode, &self.name, &bytes) else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                entry = %self.name,
                "an AOT entry does not match its seal: not loaded, compiled again"
            );
            let _ = self.dir.remove_file(&self.name);
            return None;
        };
        // SAFETY: the bytes carry this host's seal (a MAC keyed by its
        // secret over the entry's name and contents), so they are what
        // `store` below serialized from a component this engine
        // configuration compiled (the fingerprint is in the name).
        // Wasmtime additionally checks the header and version.
        match unsafe { Component::deserialize(engine, native) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(entry = %self.name, "discarding an unusable AOT artifact: {e:#}");
                let _ = self.dir.remove_file(&self.name);
                None
            }
        }
    }

    /// Writes atomically: a reader sees the whole sealed entry or none.
    fn store(&self, component: &Component) -> anyhow::Result<()> {
        let native = component.serialize()?;
        let sealed = self
            .key
            .seal_into_file(Kind::NativeCode, &self.name, &native);
        write_atomically(&self.dir, &self.name, &sealed)
    }
}
