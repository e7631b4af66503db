//! The JavaScript toolchain: componentize-js (StarlingMonkey), pinned in
//! `toolchains/js/package.json` and its lockfile, driven by
//! `toolchains/js/build.mjs`. It accepts an ES module exporting `default` or
//! `handler`, or CommonJS assigning `module.exports`; async handlers are
//! awaited. A source that registers a `fetch` listener
//! (`addEventListener('fetch', ...)`) is an HTTP function instead: a
//! `wasi:http/proxy` component (componentize-js's fetch-event), built
//! without the interpreter tier.

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
        is_http_source: Some(registers_fetch_listener),
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

/// Whether a source registers a `fetch` listener: `addEventListener`, an
/// opening parenthesis and the string `fetch` in any of JavaScript's three
/// quotes, with any white space between. `build.mjs` applies the same test
/// (`FETCH_LISTENER`), so the host and the build agree on what a source is.
pub fn registers_fetch_listener(source: &str) -> bool {
    let mut rest = source;
    while let Some(at) = rest.find("addEventListener") {
        let before = &rest[..at];
        rest = &rest[at + "addEventListener".len()..];
        // A whole word: `myaddEventListener` is not it.
        if before
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
        {
            continue;
        }
        let Some(after_paren) = rest.trim_start().strip_prefix('(') else {
            continue;
        };
        let argument = after_paren.trim_start();
        for quote in ['\'', '"', '`'] {
            if argument
                .strip_prefix(quote)
                .and_then(|a| a.strip_prefix("fetch"))
                .is_some_and(|a| a.starts_with(quote))
            {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::registers_fetch_listener;

    #[test]
    fn a_fetch_listener_makes_an_http_function() {
        for http in [
            "addEventListener('fetch', (e) => e.respondWith(new Response('hi')));",
            "addEventListener( \"fetch\" , handle)",
            "self.addEventListener(`fetch`, handle)",
            "globalThis.addEventListener(\n  'fetch',\n  handle\n)",
        ] {
            assert!(registers_fetch_listener(http), "{http}");
        }
        for json in [
            "export default function (event) { return event.params; }",
            "addEventListener('message', handle)",
            "myaddEventListener('fetch', handle)",
            "addEventListener('fetcher', handle)",
            "addEventListener('fetch\", handle)",
            "const s = 'addEventListener'; fetch('x')",
        ] {
            assert!(!registers_fetch_listener(json), "{json}");
        }
    }
}
