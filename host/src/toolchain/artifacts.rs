//! Stores of built components, named by the digest of their build inputs.
//!
//! [`DiskArtifacts`] is the embedded default and every host's local cache;
//! in production [`TieredArtifacts`] puts it in front of a shared store
//! (PostgreSQL), so a component built by one replica is fetched by the
//! others instead of being built again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use crate::digest::Digest;

/// Built components by build digest.
#[async_trait::async_trait]
pub trait ArtifactStore: Send + Sync {
    /// The component built from these inputs, if it was built before.
    async fn get(&self, digest: Digest) -> anyhow::Result<Option<Arc<[u8]>>>;
    /// Stores a component; storing the same digest twice is harmless.
    async fn put(&self, digest: Digest, component: &[u8]) -> anyhow::Result<()>;
}

/// `<digest>.wasm` files in a directory.
#[derive(Clone, Debug)]
pub struct DiskArtifacts {
    dir: PathBuf,
}

impl DiskArtifacts {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the artifact store at {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, digest: Digest) -> PathBuf {
        self.dir.join(format!("{digest}.wasm"))
    }
}

#[async_trait::async_trait]
impl ArtifactStore for DiskArtifacts {
    async fn get(&self, digest: Digest) -> anyhow::Result<Option<Arc<[u8]>>> {
        match tokio::fs::read(self.path(digest)).await {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading the artifact store"),
        }
    }

    /// Atomic: readers see all of the file or none of it.
    async fn put(&self, digest: Digest, component: &[u8]) -> anyhow::Result<()> {
        let path = self.path(digest);
        let dir = self.dir.clone();
        let component = component.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut file = tempfile::NamedTempFile::new_in(&dir)?;
            std::io::Write::write_all(&mut file, &component)?;
            file.persist(&path)?;
            anyhow::Ok(())
        })
        .await?
        .context("writing the artifact store")
    }
}

/// A local disk cache in front of a shared store.
pub struct TieredArtifacts {
    local: DiskArtifacts,
    shared: Arc<dyn ArtifactStore>,
}

impl TieredArtifacts {
    pub fn new(local: DiskArtifacts, shared: Arc<dyn ArtifactStore>) -> Self {
        Self { local, shared }
    }
}

#[async_trait::async_trait]
impl ArtifactStore for TieredArtifacts {
    async fn get(&self, digest: Digest) -> anyhow::Result<Option<Arc<[u8]>>> {
        if let Some(component) = self.local.get(digest).await? {
            return Ok(Some(component));
        }
        let Some(component) = self.shared.get(digest).await? else {
            return Ok(None);
        };
        // The next read of this replica is local.
        if let Err(e) = self.local.put(digest, &component).await {
            tracing::warn!(digest = %digest.short(), "cannot cache an artifact locally: {e:#}");
        }
        Ok(Some(component))
    }

    async fn put(&self, digest: Digest, component: &[u8]) -> anyhow::Result<()> {
        self.shared.put(digest, component).await?;
        self.local.put(digest, component).await
    }
}
