//! The JavaScript toolchain: componentize-js (StarlingMonkey), pinned in
//! `toolchains/js/package.json` and its lockfile, driven by
//! `toolchains/js/build.mjs`. It accepts an ES module exporting `default` or
//! `handler`, or CommonJS assigning `module.exports`; async handlers are
//! awaited.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};

use super::driver::{DriverToolchain, version_of};
use crate::language::Language;

pub async fn detect(toolchains_dir: &Path) -> anyhow::Result<DriverToolchain> {
    let dir = toolchains_dir.join("js");
    let package = dir.join("node_modules/@bytecodealliance/componentize-js/package.json");
    ensure!(
        package.exists(),
        "componentize-js is not installed in {} (run `just setup`)",
        dir.display()
    );
    let node = PathBuf::from("node");
    let node_version = version_of(&node, &["--version"])
        .await
        .context("node is not installed")?;
    let fingerprint = DriverToolchain::fingerprint_of(
        &[&format!("node {node_version}")],
        &[
            dir.join("package-lock.json"),
            dir.join("build.mjs"),
            dir.join("glue.js"),
        ],
    )?;
    Ok(DriverToolchain {
        language: Language::Nodejs,
        program: node,
        script: dir.join("build.mjs"),
        source_name: "source.js",
        fingerprint,
        // A build pre-initialises SpiderMonkey and takes a core for ~10 s.
        max_parallel_builds: 1,
    })
}
