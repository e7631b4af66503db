//! Stores of built components, named by the digest of their build inputs,
//! and the one front that reads them: [`Artifacts`].
//!
//! [`DiskArtifacts`] is the embedded default and every host's local cache;
//! in production a shared store (PostgreSQL) stands behind it, so a
//! component built by one replica is fetched by the others instead of
//! being built again. Every entry carries a seal ([`crate::integrity`]):
//! [`Artifacts`] checks it on each tier, and an entry that fails is skipped
//! as if it were missing, logged and counted.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use cap_std::fs::Dir;
use chrono::{DateTime, Utc};

use crate::digest::Digest;
use crate::files::{read_file, remove_old_files, write_atomically};
use crate::integrity::{self, IntegrityKey, Kind};

/// A component with the seal it was stored with.
#[derive(Clone, Debug)]
pub struct SealedArtifact {
    pub component: Arc<[u8]>,
    pub seal: Vec<u8>,
}

/// A backend of built components by build digest. It keeps what it is
/// given; checking the seals is the front's job.
#[async_trait::async_trait]
pub trait ArtifactStore: Send + Sync {
    /// A name for logs: `disk`, `postgres`.
    fn name(&self) -> &'static str;
    /// The entry stored under this digest, if any.
    async fn get(&self, digest: Digest) -> anyhow::Result<Option<SealedArtifact>>;
    /// Stores an entry; storing the same digest again replaces it.
    async fn put(&self, digest: Digest, artifact: &SealedArtifact) -> anyhow::Result<()>;
    /// Removes the entries written before `written_before` whose digest is
    /// not in `keep`; returns how many went.
    async fn remove_unused(
        &self,
        keep: &HashSet<Digest>,
        written_before: DateTime<Utc>,
    ) -> anyhow::Result<u64>;
}

/// The artifact stores of a host, nearest first, behind their seals.
pub struct Artifacts {
    tiers: Vec<Arc<dyn ArtifactStore>>,
    key: IntegrityKey,
    /// Entries whose seal did not match, since start.
    rejected: AtomicU64,
}

impl Artifacts {
    pub fn new(local: Arc<dyn ArtifactStore>, key: IntegrityKey) -> Self {
        Self {
            tiers: vec![local],
            key,
            rejected: AtomicU64::new(0),
        }
    }

    /// Adds a store behind the others (the one every replica shares).
    pub fn with_shared(mut self, shared: Arc<dyn ArtifactStore>) -> Self {
        self.tiers.push(shared);
        self
    }

    /// How many entries were refused for a seal that did not match.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The component built under this digest, from the nearest store that
    /// holds a sound copy; that copy is written back to the nearer ones.
    pub async fn get(&self, digest: Digest) -> Option<Arc<[u8]>> {
        let name = digest.to_string();
        for (i, tier) in self.tiers.iter().enumerate() {
            // A store that cannot answer, or answers with something that is
            // not a file of ours (a link, a directory), has no sound copy.
            let artifact = match tier.get(digest).await {
                Ok(Some(artifact)) => artifact,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(store = tier.name(), digest = %digest.short(), "cannot read an artifact: {e:#}");
                    continue;
                }
            };
            if !self
                .key
                .verify(Kind::Artifact, &name, &artifact.component, &artifact.seal)
            {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    store = tier.name(),
                    digest = %digest.short(),
                    "an artifact does not match its seal: ignored, as if it were missing"
                );
                continue;
            }
            for nearer in &self.tiers[..i] {
                if let Err(e) = nearer.put(digest, &artifact).await {
                    tracing::warn!(store = nearer.name(), digest = %digest.short(), "cannot cache an artifact: {e:#}");
                }
            }
            return Some(artifact.component);
        }
        None
    }

    /// Removes from every store the components no registered function uses
    /// that were written before `written_before` (a session runs the
    /// version it started with for at most its lifetime, far shorter).
    pub async fn remove_unused(
        &self,
        keep: &HashSet<Digest>,
        written_before: DateTime<Utc>,
    ) -> u64 {
        let mut removed = 0;
        for tier in &self.tiers {
            match tier.remove_unused(keep, written_before).await {
                Ok(n) => removed += n,
                Err(e) => {
                    tracing::warn!(store = tier.name(), "cannot sweep unused artifacts: {e:#}")
                }
            }
        }
        removed
    }

    /// Seals and stores a component in every store, the shared one first.
    pub async fn put(&self, digest: Digest, component: &[u8]) -> anyhow::Result<()> {
        let artifact = SealedArtifact {
            seal: self
                .key
                .seal(Kind::Artifact, &digest.to_string(), component)
                .to_vec(),
            component: component.into(),
        };
        for tier in self.tiers.iter().rev() {
            tier.put(digest, &artifact).await?;
        }
        Ok(())
    }
}

/// `<digest>.sealed` files in a directory: the component, then its seal.
///
/// The directory is opened once, as a capability: every name resolves
/// beneath it and no link is followed, whatever a name or the directory's
/// contents say.
#[derive(Clone)]
pub struct DiskArtifacts {
    dir: Arc<Dir>,
}

impl DiskArtifacts {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create the artifact store at {}", path.display()))?;
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority())
            .with_context(|| format!("cannot open the artifact store at {}", path.display()))?;
        Ok(Self { dir: Arc::new(dir) })
    }

    fn file_name(digest: Digest) -> String {
        format!("{digest}.sealed")
    }
}

#[async_trait::async_trait]
impl ArtifactStore for DiskArtifacts {
    fn name(&self) -> &'static str {
        "disk"
    }

    async fn get(&self, digest: Digest) -> anyhow::Result<Option<SealedArtifact>> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let Some(bytes) = read_file(&dir, &Self::file_name(digest))? else {
                return Ok(None);
            };
            // A file without a trailer is treated as one whose seal fails.
            let (component, seal) = integrity::split_trailer(&bytes).unwrap_or((&[], &[]));
            Ok(Some(SealedArtifact {
                component: component.into(),
                seal: seal.to_vec(),
            }))
        })
        .await?
    }

    /// Entries by their file's modification time; temporary files a crash
    /// left behind go too once they are as old.
    async fn remove_unused(
        &self,
        keep: &HashSet<Digest>,
        written_before: DateTime<Utc>,
    ) -> anyhow::Result<u64> {
        let dir = self.dir.clone();
        let keep: HashSet<String> = keep.iter().map(|d| Self::file_name(*d)).collect();
        let cutoff = std::time::SystemTime::from(written_before);
        let removed =
            tokio::task::spawn_blocking(move || remove_old_files(&dir, &keep, cutoff)).await??;
        Ok(removed)
    }

    /// Atomic: readers see all of the file or none of it.
    async fn put(&self, digest: Digest, artifact: &SealedArtifact) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let bytes = integrity::with_trailer(&artifact.component, &artifact.seal);
        tokio::task::spawn_blocking(move || {
            write_atomically(&dir, &Self::file_name(digest), &bytes)
        })
        .await?
        .context("writing the artifact store")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tampered_local_copy_is_skipped_and_the_shared_copy_restores_it() {
        let key = IntegrityKey::derive(b"secret");
        let local_dir = tempfile::tempdir().unwrap();
        let shared_dir = tempfile::tempdir().unwrap();
        let local = Arc::new(DiskArtifacts::open(local_dir.path()).unwrap());
        let shared = Arc::new(DiskArtifacts::open(shared_dir.path()).unwrap());
        let artifacts = Artifacts::new(local.clone(), key.clone()).with_shared(shared);
        let digest = Digest::of(b"inputs");
        artifacts.put(digest, b"the component").await.unwrap();

        // Someone replaces the local copy with another component.
        let path = local_dir.path().join(DiskArtifacts::file_name(digest));
        let forged = integrity::with_trailer(b"a substitute", &[0u8; 32]);
        std::fs::write(&path, forged).unwrap();
        let got = artifacts.get(digest).await.unwrap();
        assert_eq!(&*got, b"the component");
        assert_eq!(artifacts.rejected(), 1);
        // The sound copy was written back.
        assert_eq!(&*artifacts.get(digest).await.unwrap(), b"the component");
        assert_eq!(artifacts.rejected(), 1);
    }

    #[tokio::test]
    async fn an_entry_sealed_under_another_digest_or_key_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskArtifacts::open(dir.path()).unwrap());
        let artifacts = Artifacts::new(store.clone(), IntegrityKey::derive(b"secret"));
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        artifacts.put(a, b"component a").await.unwrap();
        // Renamed to b: the seal names a.
        std::fs::rename(
            dir.path().join(DiskArtifacts::file_name(a)),
            dir.path().join(DiskArtifacts::file_name(b)),
        )
        .unwrap();
        assert!(artifacts.get(b).await.is_none());
        // Another host's key.
        let other = Artifacts::new(store, IntegrityKey::derive(b"other"));
        other.put(a, b"component a").await.unwrap();
        assert!(artifacts.get(a).await.is_none());
        assert_eq!(artifacts.rejected(), 2);
    }

    #[tokio::test]
    async fn a_link_in_the_store_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = DiskArtifacts::open(dir.path()).unwrap();
        let digest = Digest::of(b"x");
        std::fs::write(outside.path().join("x"), b"outside").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("x"),
            dir.path().join(DiskArtifacts::file_name(digest)),
        )
        .unwrap();
        assert!(store.get(digest).await.is_err());
    }
}
