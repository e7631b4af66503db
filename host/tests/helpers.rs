//! Shared set-up: settings pointing at shared build caches, fixture builds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lambda_host::config::Settings;
use lambda_host::language::Language;
use lambda_host::runtime::{Invocation, Runtime};
use lambda_host::toolchain::{BuildOptions, Toolchains};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Settings over a fresh data directory, sharing the expensive caches of
/// every test: the Rust target directory (dependencies built once), the
/// artifact store (fixtures built once per change of their source) and the
/// AOT cache (a 12-20 MB interpreter component compiled once, not per test).
pub fn settings(data_dir: &Path) -> Settings {
    let mut settings = Settings::new(data_dir, repo_root().join("components"));
    settings.toolchain.rust_target_dir = repo_root().join("target/guest-rust");
    settings.toolchain.artifacts_dir = repo_root().join("target/test-artifacts");
    settings.toolchain.toolchains_dir = repo_root().join("toolchains");
    settings.runtime.aot_cache_dir = Some(repo_root().join("target/test-aot"));
    settings.validate().unwrap();
    settings
}

/// Settings whose AOT cache is the fresh data directory's own, for tests
/// that count compilations.
pub fn private_aot_settings(data_dir: &Path) -> Settings {
    let mut settings = settings(data_dir);
    settings.runtime.aot_cache_dir = Some(data_dir.join("aot"));
    settings
}

/// Settings whose artifact store is the fresh data directory's own, for
/// tests that must see the toolchain run.
pub fn isolated_settings(data_dir: &Path) -> Settings {
    let mut settings = settings(data_dir);
    settings.toolchain.artifacts_dir = data_dir.join("artifacts");
    settings
}

/// The toolchains over the shared caches, detected once per test binary.
pub async fn shared_toolchains() -> &'static Toolchains {
    static TOOLCHAINS: OnceCell<Toolchains> = OnceCell::const_new();
    TOOLCHAINS
        .get_or_init(|| async {
            // Leaked on purpose: the settings' temp dir must outlive every test.
            let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
            Toolchains::detect(&settings(dir.path()).toolchain)
                .await
                .unwrap()
        })
        .await
}

/// Builds `tests/fixtures/rust/<name>.rs` with the real Rust toolchain.
pub async fn rust_fixture(name: &str) -> Arc<[u8]> {
    fixture(Language::Rust, name).await
}

/// Builds `tests/fixtures/<js|python|rust>/<name>.<ext>` with the real
/// toolchain of its language.
pub async fn fixture(language: Language, name: &str) -> Arc<[u8]> {
    let (folder, extension) = match language {
        Language::Nodejs => ("js", "js"),
        Language::Python => ("python", "py"),
        Language::Rust => ("rust", "rs"),
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/{folder}/{name}.{extension}"));
    let source = std::fs::read_to_string(&path).unwrap();
    shared_toolchains()
        .await
        .build(language, &source, &BuildOptions::default())
        .await
        .unwrap_or_else(|e| panic!("building fixture {}: {e}", path.display()))
        .component
}

/// A runtime over a fresh data directory and the shared AOT cache.
pub fn runtime(data_dir: &Path, configure: impl FnOnce(&mut Settings)) -> Runtime {
    let mut settings = settings(data_dir);
    configure(&mut settings);
    Runtime::new(&settings.runtime).unwrap()
}

/// An invocation with these params and an empty context.
pub fn invocation(language_title: &str, params: Value) -> Invocation {
    Invocation {
        request_id: uuid::Uuid::new_v4().to_string(),
        language_title: language_title.to_owned(),
        params,
        context: json!({}),
    }
}
