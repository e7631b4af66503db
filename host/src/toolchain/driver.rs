//! Toolchains driven by a script of ours: `toolchains/js/build.mjs` under
//! node, `toolchains/python/build.py` under the project's virtual
//! environment. Both follow one protocol, so one driver serves both:
//!
//! - the host writes `source.<ext>` and `wit/world.wit` into an empty
//!   working directory and runs `<program> <script> <workdir>` there, with a
//!   cleared environment (`PATH` only, and `TMPDIR` inside the workdir);
//! - exit 0: the component is `<workdir>/component.wasm`;
//! - exit 2: the user's mistake; stdout holds
//!   `{"message", "diagnostics": [{message, line, column}]}`;
//! - anything else: the toolchain itself failed.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, anyhow, bail};
use serde::Deserialize;

use super::{BuildError, BuildOptions, CompileError, Diagnostic, Toolchain};
use crate::digest::Digest;
use crate::language::Language;

/// The world every build gets, compiled into the host.
pub const WORLD_WIT: &str = include_str!("../../../wit/world.wit");

/// A toolchain that runs one of our build scripts.
pub struct DriverToolchain {
    pub(super) language: Language,
    /// The interpreter: `node`, or the venv's `python`.
    pub(super) program: PathBuf,
    /// Our build script.
    pub(super) script: PathBuf,
    /// The name the source is written under in the workdir.
    pub(super) source_name: &'static str,
    pub(super) fingerprint: String,
    pub(super) max_parallel_builds: usize,
}

impl DriverToolchain {
    /// A fingerprint from version strings and the contents of files that
    /// shape the output (lockfiles, glue, the build script).
    pub(super) fn fingerprint_of(versions: &[&str], files: &[PathBuf]) -> anyhow::Result<String> {
        let mut contents = Vec::new();
        for file in files {
            contents.push(
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?,
            );
        }
        let digest = Digest::of_fields(
            contents
                .iter()
                .map(Vec::as_slice)
                .chain([WORLD_WIT.as_bytes()]),
        );
        Ok(format!("{}\nfiles {digest}", versions.join("\n")))
    }
}

#[async_trait::async_trait]
impl Toolchain for DriverToolchain {
    fn language(&self) -> Language {
        self.language
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn max_parallel_builds(&self) -> usize {
        self.max_parallel_builds
    }

    async fn build(
        &self,
        source: &str,
        _options: &BuildOptions,
        workdir: &Path,
    ) -> Result<Vec<u8>, BuildError> {
        std::fs::create_dir_all(workdir.join("wit")).context("preparing the build directory")?;
        std::fs::write(workdir.join("wit/world.wit"), WORLD_WIT).context("writing the WIT")?;
        std::fs::write(workdir.join(self.source_name), source).context("writing the source")?;
        let tmp = workdir.join("tmp");
        std::fs::create_dir_all(&tmp).context("preparing the build directory")?;

        let output = tokio::process::Command::new(&self.program)
            .arg(&self.script)
            .arg(workdir)
            .current_dir(workdir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running {}", self.program.display()))?;

        match output.status.code() {
            Some(0) => {
                let path = workdir.join("component.wasm");
                Ok(std::fs::read(&path)
                    .with_context(|| format!("reading the built component {}", path.display()))?)
            }
            Some(2) => Err(user_error(&output.stdout, workdir)?.into()),
            _ => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(anyhow!(
                    "{} exited with {}: {}",
                    self.script.display(),
                    output.status,
                    tail.join("\n")
                )
                .into())
            }
        }
    }
}

#[derive(Deserialize)]
struct UserError {
    message: String,
    #[serde(default)]
    diagnostics: Vec<DriverDiagnostic>,
}

#[derive(Deserialize)]
struct DriverDiagnostic {
    message: String,
    line: Option<u32>,
    column: Option<u32>,
}

fn user_error(stdout: &[u8], workdir: &Path) -> anyhow::Result<CompileError> {
    let parsed: UserError = serde_json::from_slice(stdout)
        .context("the build script reported a failure it did not describe")?;
    // The build directory's path says nothing to the user.
    let hide = |text: String| text.replace(&format!("{}/", workdir.display()), "");
    if parsed.message.is_empty() {
        bail!("the build script reported an empty failure");
    }
    Ok(CompileError {
        message: hide(parsed.message),
        diagnostics: parsed
            .diagnostics
            .into_iter()
            .map(|d| Diagnostic {
                message: hide(d.message),
                line: d.line,
                column: d.column,
            })
            .collect(),
    })
}

/// Runs `program args...` with a cleared environment and returns stdout.
pub(super) async fn version_of(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !output.status.success() {
        bail!("{} {} failed", program.display(), args.join(" "));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
