//! The JavaScript toolchain: componentize-js (StarlingMonkey), pinned in
//! `toolchains/js/package.json` and its lockfile, driven by
//! `toolchains/js/build.mjs`. It accepts an ES module exporting `default` or
//! `handler`, or CommonJS assigning `module.exports`; async handlers are
//! awaited.

use anyhow::{Context as _, ensure};
use tokio::sync::OnceCell;

use super::driver::{CodeCache, DriverToolchain, find_program, version_of};
use crate::config::ToolchainConfig;
use crate::digest::Digest;
use crate::language::Language;

/// What the trusted warm-up build compiles: any source fills wizer's cache
/// with the engine every build shares.
const WARM_UP_SOURCE: &str = "export default function (event) { return event.params; }\n";

pub async fn detect(config: &ToolchainConfig) -> anyhow::Result<DriverToolchain> {
    let dir = config.toolchains_dir.join("js");
    let package = dir.join("node_modules/@bytecodealliance/componentize-js/package.json");
    ensure!(
        package.exists(),
        "componentize-js is not installed in {} (run `just setup`)",
        dir.display()
    );
    let node = find_program("node").context("node is not installed")?;
    let node_version = version_of(&node, &["--version"])
        .await
        .context("node does not run")?;
    let fingerprint = DriverToolchain::fingerprint_of(
        &[&format!("node {node_version}")],
        &[
            dir.join("package-lock.json"),
            dir.join("build.mjs"),
            dir.join("glue.js"),
            dir.join("call.js"),
            dir.join("source.js"),
            dir.join("interpreter.js"),
        ],
    )?;
    let cache = config.cache_dir.join(format!(
        "nodejs-{}",
        Digest::of(fingerprint.as_bytes()).short()
    ));
    Ok(DriverToolchain {
        language: Language::Nodejs,
        script: dir.join("build.mjs"),
        read_only: vec![dir, node.clone()],
        program: node,
        source_name: "source.js",
        fingerprint,
        // A build pre-initialises SpiderMonkey and takes a core for ~5 s.
        max_parallel_builds: 1,
        empty_virtual_env: false,
        code_cache: Some(CodeCache {
            dir: cache,
            warm_up_source: WARM_UP_SOURCE,
            ready: OnceCell::new(),
        }),
    })
}
