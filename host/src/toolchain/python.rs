//! The Python toolchain: componentize-py, pinned in
//! `toolchains/python/requirements.txt` and installed into
//! `toolchains/python/.venv` by `just setup`, driven by
//! `toolchains/python/build.py`. It accepts a module defining
//! `handler(event)`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};

use super::driver::{DriverToolchain, version_of};
use crate::language::Language;

pub async fn detect(toolchains_dir: &Path) -> anyhow::Result<DriverToolchain> {
    let dir = toolchains_dir.join("python");
    let python = dir.join(".venv/bin/python");
    ensure!(
        python.exists(),
        "the Python toolchain is not installed in {} (run `just setup`)",
        dir.display()
    );
    let componentize = version_of(&dir.join(".venv/bin/componentize-py"), &["--version"])
        .await
        .context("componentize-py is not installed (run `just setup`)")?;
    // The venv's interpreter is a link into a Python installation (pyenv's,
    // or the system's): builds read its standard library and run it.
    let base_prefix = PathBuf::from(
        version_of(&python, &["-c", "import sys; print(sys.base_prefix)"])
            .await
            .context("the Python toolchain's interpreter does not run")?,
    );
    let fingerprint = DriverToolchain::fingerprint_of(
        &[&componentize],
        &[
            dir.join("requirements.txt"),
            dir.join("build.py"),
            dir.join("glue.py"),
            dir.join("call.py"),
            dir.join("interpreter.py"),
            dir.join("stdlib.py"),
        ],
    )?;
    Ok(DriverToolchain {
        is_http_source: None,
        language: Language::Python,
        program: python,
        script: dir.join("build.py"),
        source_name: "source.py",
        fingerprint,
        read_only: vec![dir, base_prefix],
        // A build pre-initialises CPython and takes a core for ~5 s.
        max_parallel_builds: 1,
        empty_virtual_env: true,
        code_cache: None,
    })
}
