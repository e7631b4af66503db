//! The component cache: each component compiled once per process, and once
//! per machine thanks to the on-disk AOT cache.
//!
//! In memory, components are keyed by the digest of their bytes and hold
//! their `InstancePre`. On disk, the compiled native code is serialized as
//! `<digest>-<engine fingerprint>.cwasm`: the fingerprint covers the
//! wasmtime version and every engine setting that affects code, so a host
//! with other settings never loads code that was not compiled for it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::sync::OnceCell;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use super::bindings::FunctionPre;
use super::invoke::GuestState;
use super::{Error, LoadedFunction};
use crate::digest::Digest;

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
}

type Slot = Arc<OnceCell<Arc<LoadedFunction>>>;

pub struct ComponentCache {
    aot_dir: Option<PathBuf>,
    /// Hex of a hash of the engine's compatibility fingerprint.
    engine_fingerprint: String,
    /// The loaded functions, least recently used evicted first once their
    /// components weigh more than the configured bound: a host that has
    /// served many functions keeps the ones in use, not every one it ever
    /// saw. An evicted function is loaded again from the AOT cache, in
    /// milliseconds; executions holding it keep it alive until they end.
    loaded: moka::sync::Cache<Digest, Arc<LoadedFunction>>,
    /// Loads in flight, one slot per digest: concurrent loads of the same
    /// component await the same cell, so it is compiled once. A std mutex,
    /// because it is only held to look up, insert or remove a slot, never
    /// across an await.
    loading: Mutex<HashMap<Digest, Slot>>,
    compiles: AtomicU64,
    aot_hits: AtomicU64,
    memory_hits: AtomicU64,
    compile_micros: AtomicU64,
}

impl ComponentCache {
    pub fn new(
        engine: &Engine,
        aot_dir: Option<PathBuf>,
        max_loaded_bytes: u64,
    ) -> anyhow::Result<Self> {
        if let Some(dir) = &aot_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the AOT cache at {}", dir.display()))?;
        }
        // `DefaultHasher::new()` uses fixed keys: the same engine gives the
        // same fingerprint in every process of this build of the host.
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            aot_dir,
            engine_fingerprint: format!("{:016x}", hasher.finish()),
            // Weighed in KiB, so one entry's weight fits the weigher's u32.
            loaded: moka::sync::Cache::builder()
                .max_capacity(max_loaded_bytes / 1024)
                .weigher(|_, function: &Arc<LoadedFunction>| {
                    u32::try_from(function.component_bytes.div_ceil(1024)).unwrap_or(u32::MAX)
                })
                .build(),
            loading: Mutex::new(HashMap::new()),
            compiles: AtomicU64::new(0),
            aot_hits: AtomicU64::new(0),
            memory_hits: AtomicU64::new(0),
            compile_micros: AtomicU64::new(0),
        })
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            compiles: self.compiles.load(Ordering::Relaxed),
            aot_hits: self.aot_hits.load(Ordering::Relaxed),
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
            compile_micros: self.compile_micros.load(Ordering::Relaxed),
        }
    }

    pub async fn load(
        &self,
        engine: &Engine,
        linker: &Linker<GuestState>,
        bytes: Arc<[u8]>,
    ) -> Result<Arc<LoadedFunction>, Error> {
        let digest = Digest::of(&bytes);
        if let Some(loaded) = self.loaded.get(&digest) {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(loaded);
        }
        let slot = {
            let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
            loading.entry(digest).or_default().clone()
        };
        let component_bytes = bytes.len();
        let result = slot
            .get_or_try_init(|| async {
                let component = self.compile_or_deserialize(engine, digest, bytes).await?;
                let pre = linker
                    .instantiate_pre(&component)
                    .map_err(|e| Error::InvalidComponent(e.into()))?;
                let pre = FunctionPre::new(pre).map_err(|e| Error::InvalidComponent(e.into()))?;
                let function = Arc::new(LoadedFunction {
                    digest,
                    pre,
                    component_bytes,
                });
                // Into the cache before the slot goes: a load arriving in
                // between finds one or the other.
                self.loaded.insert(digest, function.clone());
                Ok(function)
            })
            .await
            .cloned();
        // Done, or failed (the next load tries again): the slot's job is over.
        let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if loading.get(&digest).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            loading.remove(&digest);
        }
        result
    }

    pub fn loaded(&self, digest: Digest) -> Option<Arc<LoadedFunction>> {
        self.loaded.get(&digest)
    }

    /// How many functions are loaded and the summed size of their
    /// components, in bytes (as the cache weighs them, in whole KiB).
    pub fn loaded_components(&self) -> (u64, u64) {
        // Pending inserts and evictions are applied lazily: settle them so
        // the numbers are current.
        self.loaded.run_pending_tasks();
        (
            self.loaded.entry_count(),
            self.loaded.weighted_size() * 1024,
        )
    }

    fn aot_path(&self, digest: Digest) -> Option<PathBuf> {
        let dir = self.aot_dir.as_ref()?;
        Some(dir.join(format!("{digest}-{}.cwasm", self.engine_fingerprint)))
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
        let aot_path = self.aot_path(digest);
        let started = std::time::Instant::now();
        let (component, compiled) = tokio::task::spawn_blocking(move || {
            if let Some(path) = &aot_path
                && let Some(component) = deserialize(&engine, path)
            {
                return Ok((component, false));
            }
            // Replicas sharing this AOT cache (one volume, one data
            // directory) may be compiling this very component: the first
            // compiles, the others wait and read its result.
            let _compiling = aot_path.as_deref().and_then(lock_for_compiling);
            if let Some(path) = &aot_path
                && let Some(component) = deserialize(&engine, path)
            {
                return Ok((component, false));
            }
            let component =
                Component::new(&engine, &bytes).map_err(|e| Error::InvalidComponent(e.into()))?;
            if let Some(path) = &aot_path
                && let Err(e) = store(&component, path)
            {
                tracing::warn!(path = %path.display(), "cannot write the AOT cache: {e:#}");
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

/// An exclusive lock on `<cwasm>.lock`, held while compiling; the kernel
/// drops it when the file closes, also when a process dies. `None` (compile
/// without it) when the lock cannot be taken: a duplicate compilation is
/// only wasted time.
fn lock_for_compiling(cwasm: &Path) -> Option<std::fs::File> {
    let path = cwasm.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .and_then(|file| file.lock().map(|()| file));
    match file {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot lock the AOT cache entry: {e}");
            None
        }
    }
}

fn deserialize(engine: &Engine, path: &Path) -> Option<Component> {
    if !path.exists() {
        return None;
    }
    // SAFETY: the file was written by `store` below from a component this
    // same engine configuration compiled (the fingerprint is in its name),
    // and it lives in the host's own data directory, which only the host
    // writes. Wasmtime additionally checks the header and version.
    match unsafe { Component::deserialize_file(engine, path) } {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::warn!(path = %path.display(), "discarding an unusable AOT artifact: {e:#}");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// Writes atomically: a reader sees the whole artifact or none.
fn store(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component.serialize()?;
    let dir = path.parent().context("AOT path has no parent")?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut file, &bytes)?;
    file.persist(path)?;
    Ok(())
}
