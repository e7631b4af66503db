//! The Rust toolchain: cargo, for `wasm32-wasip2`, with wit-bindgen glue.
//!
//! A user's source is one file holding
//! `pub fn handler(event: serde_json::Value) -> Result<serde_json::Value, String>`.
//! It is checked by [`guard`] (building Rust is running code: macros read
//! files and environment variables at compile time), then dropped as
//! `src/handler.rs` into a copy of `toolchains/rust/template` in an empty
//! directory, and built there with a cleared environment. The template's
//! lockfile pins every dependency; all builds share one cargo target
//! directory, so serde and wit-bindgen are compiled once, not per function.

pub mod guard;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::{BuildError, BuildOptions, CompileError, Diagnostic, OptimizationLevel, Toolchain};
use crate::config::ToolchainConfig;
use crate::digest::Digest;
use crate::language::Language;

/// The template crate, compiled into the host so the host needs nothing
/// from the repository at run time to build a Rust function.
const TEMPLATE: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../toolchains/rust/template/Cargo.toml"),
    ),
    (
        "Cargo.lock",
        include_str!("../../../toolchains/rust/template/Cargo.lock"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../toolchains/rust/template/src/lib.rs"),
    ),
    ("wit/world.wit", include_str!("../../../wit/world.wit")),
];
/// Where the user's source goes in the template.
const HANDLER_PATH: &str = "src/handler.rs";
/// The template's package name. Each build renames it to a name of its own
/// (see [`write_crate`]): builds share one target directory, and cargo
/// writes the finished `.wasm` under the package's name, so two builds of
/// the same name (from two processes) would overwrite each other's output.
const CRATE_NAME: &str = "lambda_function";
const TARGET: &str = "wasm32-wasip2";

pub struct RustToolchain {
    target_dir: PathBuf,
    /// The only variables a build sees: what cargo and rustup need to find
    /// the toolchain, nothing of the host's own environment.
    env: Vec<(String, String)>,
    fingerprint: String,
}

impl RustToolchain {
    /// Finds cargo and rustc and checks the `wasm32-wasip2` target.
    pub async fn detect(config: &ToolchainConfig) -> anyhow::Result<Self> {
        let env = build_environment(&config.rust_target_dir);
        let version = run_with(&env, "rustc", &["-vV"]).await?;
        let sysroot = run_with(&env, "rustc", &["--print", "sysroot"]).await?;
        let target_lib = Path::new(sysroot.trim()).join("lib/rustlib").join(TARGET);
        if !target_lib.exists() {
            bail!("the {TARGET} target is not installed (rustup target add {TARGET})");
        }
        let template = Digest::of_fields(
            TEMPLATE
                .iter()
                .flat_map(|(p, c)| [p.as_bytes(), c.as_bytes()]),
        );
        Ok(Self {
            target_dir: config.rust_target_dir.clone(),
            env,
            fingerprint: format!("{}\ntemplate {template}", version.trim()),
        })
    }
}

#[async_trait::async_trait]
impl Toolchain for RustToolchain {
    fn language(&self) -> Language {
        Language::Rust
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Cargo locks its target directory for the length of a build, so
    /// builds sharing one run one at a time anyway; one permit keeps the
    /// queue in our hands (timeouts, cancellation) instead of cargo's.
    fn max_parallel_builds(&self) -> usize {
        1
    }

    async fn build(
        &self,
        source: &str,
        options: &BuildOptions,
        workdir: &Path,
    ) -> Result<Vec<u8>, BuildError> {
        guard::check(source)?;
        let crate_name = format!("{CRATE_NAME}_{}", uuid::Uuid::new_v4().simple());
        write_crate(workdir, &crate_name, source).context("writing the build directory")?;

        let profile = match options.optimization_level {
            OptimizationLevel::Release => "release",
            OptimizationLevel::Debug => "debug",
        };
        let mut cargo = tokio::process::Command::new("cargo");
        cargo
            .args([
                "build",
                "--locked",
                "--message-format=json",
                "--target",
                TARGET,
            ])
            .current_dir(workdir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A timed-out build is dropped: the compiler goes with it.
            .kill_on_drop(true);
        if profile == "release" {
            cargo.arg("--release");
        }
        let output = cargo.output().await;
        let profile_dir = self.target_dir.join(TARGET).join(profile);
        let component = match output {
            Ok(output) if output.status.success() => {
                let wasm = profile_dir.join(format!("{crate_name}.wasm"));
                tokio::fs::read(&wasm)
                    .await
                    .with_context(|| format!("reading the built component {}", wasm.display()))
                    .map_err(BuildError::from)
            }
            Ok(output) => Err(compile_error(&output.stdout, &output.stderr, workdir).into()),
            Err(e) => Err(anyhow::Error::from(e).context("running cargo").into()),
        };
        remove_outputs(&profile_dir, &crate_name);
        component
    }
}

/// The environment of every cargo and rustc run: the host's `PATH` (to find
/// them and the linker), where rustup and cargo keep their state, and the
/// shared target directory. Everything else is cleared.
fn build_environment(target_dir: &Path) -> Vec<(String, String)> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
    let mut env = vec![
        ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
        (
            "CARGO_HOME".to_owned(),
            std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home}/.cargo")),
        ),
        (
            "RUSTUP_HOME".to_owned(),
            std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{home}/.rustup")),
        ),
        (
            "CARGO_TARGET_DIR".to_owned(),
            target_dir.display().to_string(),
        ),
        ("CARGO_TERM_COLOR".to_owned(), "never".to_owned()),
    ];
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        env.push(("RUSTUP_TOOLCHAIN".to_owned(), toolchain));
    }
    env
}

async fn run_with(
    env: &[(String, String)],
    program: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Writes the template, renamed to `crate_name`, with the user's source.
fn write_crate(dir: &Path, crate_name: &str, source: &str) -> std::io::Result<()> {
    let package_name = format!("name = \"{CRATE_NAME}\"");
    let renamed = format!("name = \"{crate_name}\"");
    for (path, contents) in TEMPLATE.iter().copied().chain([(HANDLER_PATH, source)]) {
        let contents = match path {
            // The manifest and the lockfile's root entry must agree, or
            // `--locked` refuses the build.
            "Cargo.toml" | "Cargo.lock" => contents.replace(&package_name, &renamed),
            _ => contents.to_owned(),
        };
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, contents)?;
    }
    Ok(())
}

/// Removes what one build left in the shared target directory, so the
/// directory holds the shared dependencies and not one copy per function.
fn remove_outputs(profile_dir: &Path, crate_name: &str) {
    let prefixes = [format!("{crate_name}-"), format!("{crate_name}.")];
    for file in [format!("{crate_name}.wasm"), format!("{crate_name}.d")] {
        let _ = std::fs::remove_file(profile_dir.join(file));
    }
    for dir in ["deps", ".fingerprint"] {
        let Ok(entries) = std::fs::read_dir(profile_dir.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
    }
}

/// One line of cargo's `--message-format=json` output (the parts we read).
#[derive(Deserialize)]
struct CargoMessage {
    reason: String,
    message: Option<RustcDiagnostic>,
}

#[derive(Deserialize)]
struct RustcDiagnostic {
    message: String,
    level: String,
    #[serde(default)]
    spans: Vec<RustcSpan>,
    rendered: Option<String>,
}

#[derive(Deserialize)]
struct RustcSpan {
    file_name: String,
    line_start: u32,
    column_start: u32,
    is_primary: bool,
}

/// Turns rustc's errors into diagnostics that point into the user's file.
fn compile_error(stdout: &[u8], stderr: &[u8], workdir: &Path) -> CompileError {
    let mut diagnostics = Vec::new();
    let mut rendered = Vec::new();
    for line in String::from_utf8_lossy(stdout).lines() {
        let Ok(CargoMessage {
            reason,
            message: Some(diagnostic),
        }) = serde_json::from_str::<CargoMessage>(line)
        else {
            continue;
        };
        if reason != "compiler-message" || !diagnostic.level.starts_with("error") {
            continue;
        }
        // Errors in the glue still come from the user's code (a wrong
        // handler signature shows up at the call site); point into the
        // user's file where rustc does.
        let span = diagnostic
            .spans
            .iter()
            .find(|s| s.is_primary && s.file_name == HANDLER_PATH);
        if let Some(text) = &diagnostic.rendered {
            rendered.push(text.trim_end().to_owned());
        }
        diagnostics.push(Diagnostic {
            message: diagnostic.message,
            line: span.map(|s| s.line_start),
            column: span.map(|s| s.column_start),
        });
    }
    let mut message = if rendered.is_empty() {
        // Not a rustc error (a resolver or linker failure): cargo's stderr
        // is all there is.
        let stderr = String::from_utf8_lossy(stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    } else {
        rendered.join("\n\n")
    };
    // The build directory's path says nothing to the user.
    message = message.replace(&format!("{}/", workdir.display()), "");
    CompileError {
        message: format!("the Rust source does not compile:\n{message}"),
        diagnostics,
    }
}
