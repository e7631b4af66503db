//! The content-addressed store of built components: `<digest>.wasm` files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use crate::digest::Digest;

/// Built components on disk, named by the digest of their build inputs.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    dir: PathBuf,
}

impl ArtifactStore {
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

    /// The component built from these inputs, if it was built before.
    pub async fn get(&self, digest: Digest) -> anyhow::Result<Option<Arc<[u8]>>> {
        match tokio::fs::read(self.path(digest)).await {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading the artifact store"),
        }
    }

    /// Stores a component atomically: readers see all of it or nothing.
    pub async fn put(&self, digest: Digest, component: &[u8]) -> anyhow::Result<()> {
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
