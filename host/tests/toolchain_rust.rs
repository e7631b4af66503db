//! The Rust toolchain: what it refuses, how it reports compile errors, and
//! that identical source is built once.

use lambda_host::language::Language;
use lambda_host::toolchain::{BuildError, BuildOptions, Toolchains};

use crate::helpers::isolated_settings;

/// A handler that compiles, made unique so the build really runs.
fn unique_handler() -> String {
    format!(
        "// {}\nuse serde_json::Value;\npub fn handler(event: Value) -> Result<Value, String> {{ Ok(event) }}\n",
        uuid::Uuid::new_v4()
    )
}

async fn isolated_toolchains(dir: &std::path::Path) -> Toolchains {
    Toolchains::detect(&isolated_settings(dir).toolchain)
        .await
        .unwrap()
}

/// `n` builds of one source, started at once.
fn builds_at_once(
    toolchains: &std::sync::Arc<Toolchains>,
    source: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<lambda_host::toolchain::Artifact, BuildError>>> {
    (0..n)
        .map(|_| {
            let toolchains = toolchains.clone();
            let source = source.to_owned();
            tokio::spawn(async move {
                toolchains
                    .build(Language::Rust, &source, &BuildOptions::default())
                    .await
            })
        })
        .collect()
}

async fn compile_error(
    toolchains: &Toolchains,
    source: &str,
) -> lambda_host::toolchain::CompileError {
    match toolchains
        .build(Language::Rust, source, &BuildOptions::default())
        .await
    {
        Err(BuildError::Compile(e)) => e,
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_including_etc_passwd_is_refused_at_build_time_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let toolchains = isolated_toolchains(dir.path()).await;
    let source = "use serde_json::Value;\n\
                  pub fn handler(_e: Value) -> Result<Value, String> {\n\
                  \x20   Ok(Value::from(include_str!(\"/etc/passwd\")))\n}\n";
    let error = compile_error(&toolchains, source).await;
    assert!(
        error.message.contains("`include_str` is not allowed"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("reads a file of the build machine"),
        "{}",
        error.message
    );
    assert_eq!(
        (error.diagnostics[0].line, error.diagnostics[0].column),
        (Some(3), Some(20))
    );
    // Refused before cargo ran: nothing was built or even attempted.
    assert_eq!(toolchains.stats().built, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_way_out_of_the_source_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let toolchains = isolated_toolchains(dir.path()).await;
    for (source, expected) in [
        ("const K: &str = env!(\"HOME\");", "`env`"),
        (
            "const K: Option<&str> = option_env!(\"HOME\");",
            "`option_env`",
        ),
        (
            "const K: &[u8] = include_bytes!(\"/etc/shadow\");",
            "`include_bytes`",
        ),
        ("include!(\"/etc/passwd\");", "`include`"),
        ("#[path = \"/etc/passwd\"] mod secrets { }", "`path`"),
        ("mod secrets;", "`mod name;`"),
    ] {
        let error = compile_error(&toolchains, source).await;
        assert!(
            error.message.contains(expected),
            "{source}: {}",
            error.message
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compile_error_is_reported_with_its_line_and_column_in_the_users_source() {
    let dir = tempfile::tempdir().unwrap();
    let toolchains = isolated_toolchains(dir.path()).await;
    let source = format!(
        "// {}\nuse serde_json::Value;\n\npub fn handler(event: Value) -> Result<Value, String> {{\n    let n: u32 = \"not a number\";\n    Ok(event)\n}}\n",
        uuid::Uuid::new_v4()
    );
    let error = compile_error(&toolchains, &source).await;
    let mismatch = error
        .diagnostics
        .iter()
        .find(|d| d.message.contains("mismatched types"))
        .unwrap_or_else(|| panic!("no type error among {:?}", error.diagnostics));
    assert_eq!((mismatch.line, mismatch.column), (Some(5), Some(18)));
    assert!(
        error.message.contains("src/handler.rs:5:18"),
        "{}",
        error.message
    );
    assert!(
        !error.message.contains(dir.path().to_str().unwrap()),
        "leaks the build path"
    );
    assert_eq!(toolchains.stats().failed, 1);
}

/// The bug: a failed build was run again by each request that had waited
/// for it, and a request arriving while such a second build ran started
/// yet another. One build per digest, whatever it ends in.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_for_one_failing_source_share_one_build() {
    let dir = tempfile::tempdir().unwrap();
    let toolchains = std::sync::Arc::new(isolated_toolchains(dir.path()).await);
    let source = format!(
        "// {}\nuse serde_json::Value;\npub fn handler(event: Value) -> Result<Value, String> {{ Ok(1) }}\n",
        uuid::Uuid::new_v4()
    );
    for build in builds_at_once(&toolchains, &source, 4) {
        match build.await.unwrap() {
            Err(BuildError::Compile(e)) => assert!(e.message.contains("mismatched types"), "{e}"),
            other => panic!("expected the compile error, got {other:?}"),
        }
    }
    assert_eq!(toolchains.stats().failed, 1, "one build for four requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_source_is_built_once_even_when_requested_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let toolchains = std::sync::Arc::new(isolated_toolchains(dir.path()).await);
    let source = unique_handler();
    let mut digests = Vec::new();
    for build in builds_at_once(&toolchains, &source, 4) {
        digests.push(build.await.unwrap().unwrap().digest);
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(toolchains.stats().built, 1);
    assert_eq!(toolchains.stats().reused, 3);

    // Later, and from another process's point of view: the store answers.
    let again = isolated_toolchains(dir.path()).await;
    let artifact = again
        .build(Language::Rust, &source, &BuildOptions::default())
        .await
        .unwrap();
    assert!(!artifact.built);
    assert_eq!(again.stats().built, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_build_digest_covers_the_options() {
    let dir = tempfile::tempdir().unwrap();
    let toolchains = isolated_toolchains(dir.path()).await;
    let source = unique_handler();
    let release = toolchains
        .digest(Language::Rust, &source, &BuildOptions::default())
        .unwrap();
    let debug = toolchains
        .digest(
            Language::Rust,
            &source,
            &BuildOptions {
                optimization_level: lambda_host::toolchain::OptimizationLevel::Debug,
            },
        )
        .unwrap();
    assert_ne!(release, debug);
}
