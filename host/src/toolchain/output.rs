//! Reading what a build left: the one file the host takes from a scratch
//! directory that a stranger's code could write.
//!
//! Top-level code of a JavaScript or Python module runs during the build
//! with the scratch directory writable, so `component.wasm` may be anything:
//! a symlink to `/dev/zero` or to another tenant's artifact, a FIFO that
//! never delivers, a directory, a file of gigabytes. It is opened through
//! a capability on the scratch directory (cap-std: nothing resolves
//! outside it), without following a link, without blocking on a FIFO, and
//! read only if it is a regular file within the size cap, on a blocking
//! thread, never on an async worker.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt as _};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt as _};

use super::{BuildError, CompileError};
use crate::sandbox::{Limit, Limits};

/// The name every toolchain gives its component in the scratch directory.
pub const COMPONENT: &str = "component.wasm";

/// The component a build left in `workdir`, at most the output limit long.
pub async fn read_component(workdir: &Path, limits: Limits) -> Result<Vec<u8>, BuildError> {
    let workdir: PathBuf = workdir.to_owned();
    tokio::task::spawn_blocking(move || read_regular_file(&workdir, COMPONENT, &limits))
        .await
        .map_err(|e| BuildError::Internal(e.into()))?
}

/// Reads `name` beneath `dir` if it is a regular file within the output
/// limit; anything else is the build's fault, not the host's.
pub fn read_regular_file(dir: &Path, name: &str, limits: &Limits) -> Result<Vec<u8>, BuildError> {
    let max_bytes = limits.output_bytes;
    let dir = Dir::open_ambient_dir(dir, cap_std::ambient_authority())
        .with_context(|| format!("opening the build directory {}", dir.display()))?;
    let refused = |why: String| -> BuildError {
        CompileError {
            message: format!("the build's output was refused: {why}"),
            diagnostics: Vec::new(),
        }
        .into()
    };
    let mut options = OpenOptions::new();
    options
        .read(true)
        .follow(FollowSymlinks::No)
        // A FIFO opens at once instead of waiting for a writer that will
        // never come; reads of a regular file are unaffected.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    let file = match dir.open_with(name, &options) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refused(format!("{name} is a symbolic link")));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BuildError::Internal(anyhow::anyhow!(
                "the toolchain reported success but left no {name}"
            )));
        }
        Err(e) => return Err(refused(format!("{name} cannot be opened: {e}"))),
    };
    let metadata = file.metadata().context("reading the output's metadata")?;
    if !metadata.is_file() {
        return Err(refused(format!("{name} is not a regular file")));
    }
    if metadata.len() > max_bytes {
        return Err(BuildError::limit(Limit::Output, limits));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // The size was checked, but a file can grow after it is checked: read
    // one byte past the cap at most.
    file.into_std()
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .context("reading the built component")?;
    if bytes.len() as u64 > max_bytes {
        return Err(refused(format!("{name} grew while it was read")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(output_bytes: u64) -> Limits {
        Limits {
            wall: std::time::Duration::from_secs(1),
            cpu: std::time::Duration::from_secs(1),
            memory_bytes: 1 << 20,
            tasks: 1,
            output_bytes,
        }
    }

    fn refused(dir: &Path, max: u64) -> String {
        match read_regular_file(dir, COMPONENT, &limits(max)) {
            Err(e) => e.to_string(),
            Ok(bytes) => panic!("accepted {} bytes", bytes.len()),
        }
    }

    #[test]
    fn a_regular_file_within_the_cap_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(COMPONENT), b"\0asm").unwrap();
        assert_eq!(
            read_regular_file(dir.path(), COMPONENT, &limits(4)).unwrap(),
            b"\0asm"
        );
    }

    #[test]
    fn links_to_a_device_or_outside_the_directory_are_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("artifact.wasm"), b"someone else's").unwrap();
        for target in [
            PathBuf::from("/dev/zero"),
            outside.path().join("artifact.wasm"),
            PathBuf::from("../artifact.wasm"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::os::unix::fs::symlink(&target, dir.path().join(COMPONENT)).unwrap();
            let error = refused(dir.path(), 1 << 20);
            assert!(error.contains("symbolic link"), "{target:?}: {error}");
        }
    }

    #[test]
    fn a_fifo_a_directory_and_an_oversized_file_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(COMPONENT);
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        assert!(refused(dir.path(), 1 << 20).contains("not a regular file"));

        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(refused(dir.path(), 1 << 20).contains("not a regular file"));

        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, vec![0u8; 2048]).unwrap();
        assert!(refused(dir.path(), 1024).contains("output limit"));
    }
}
