//! Files the host reads back from its own directories (the artifact store,
//! the AOT cache): always beneath a directory opened once as a capability
//! (cap-std), so no name resolves outside it, and never through a link;
//! and the lock files that let processes sharing a directory fill it once.

use std::io::{Read as _, Write as _};

use anyhow::Context as _;
use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt as _};
use cap_std::fs::{Dir, OpenOptions};

/// The bytes of `name` beneath `dir` if it is a regular file; never
/// through a link.
pub fn read_file(dir: &Dir, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let mut options = OpenOptions::new();
    options.read(true).follow(FollowSymlinks::No);
    let file = match dir.open_with(name, &options) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {name}")),
    };
    let metadata = file.metadata()?;
    anyhow::ensure!(metadata.is_file(), "{name} is not a regular file");
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.into_std().read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Creates `dir` and its missing parents for this user only (0700): the
/// data directory holds the secret, the databases and what the host runs.
/// An existing directory is left as the operator made it, with a warning
/// when other users may enter it.
pub fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    match std::fs::metadata(dir) {
        Ok(metadata) => {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "{} is open to other users (mode {mode:o}): `chmod 700` it",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create directory {}", dir.display())),
    }
}

/// Creates `path` empty for this user only (0600) if it does not exist,
/// and makes an existing one private: a file the host creates, the
/// database, is its user's alone.
pub fn ensure_private_file(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))
}

/// Removes the regular files beneath `dir` last modified before `before`
/// whose names are not in `keep`; returns how many went. Never follows a
/// link (an entry that is one is not a regular file of the directory).
pub fn remove_old_files(
    dir: &Dir,
    keep: &std::collections::HashSet<String>,
    before: std::time::SystemTime,
) -> std::io::Result<u64> {
    let mut removed = 0;
    for entry in dir.entries()? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.into_std() < before);
        if old && !keep.contains(&name) && entry.file_type()?.is_file() {
            dir.remove_file(&name)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Writes `name` beneath `dir` through a temporary file and a rename; the
/// file is its user's only (0600).
pub fn write_atomically(dir: &Dir, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let temporary = format!(".{name}.{}", uuid::Uuid::new_v4().simple());
    let mut file = dir.create(&temporary)?;
    let written = file
        .set_permissions(cap_std::fs::Permissions::from_std(
            std::fs::Permissions::from_mode(0o600),
        ))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.sync_data());
    drop(file);
    if let Err(e) = written.and_then(|()| dir.rename(&temporary, dir, name)) {
        let _ = dir.remove_file(&temporary);
        return Err(e.into());
    }
    Ok(())
}

/// An exclusive lock on `path` (created if missing), taken on a blocking
/// thread: processes sharing a directory take it to prepare something once.
/// The kernel drops it when the returned file closes, also when a process
/// dies.
pub async fn lock_exclusive(path: std::path::PathBuf) -> anyhow::Result<std::fs::File> {
    let display = path.display().to_string();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::create(&path)?;
        file.lock()?;
        std::io::Result::Ok(file)
    })
    .await?
    .with_context(|| format!("locking {display}"))
}
