//! Toolchains driven by a script of ours: `toolchains/js/build.mjs` under
//! node, `toolchains/python/build.py` under the project's virtual
//! environment. Both follow one protocol, so one driver serves both:
//!
//! - the host writes `source.<ext>` and `wit/world.wit` into the empty
//!   scratch directory and runs `<program> <script> <workdir>` there
//!   (`<workdir> --interpreter` for the language's interpreter), in the
//!   sandbox, with an environment of its making (`PATH`, and `HOME` and
//!   `TMPDIR` inside the scratch directory);
//! - exit 0: the component is `<workdir>/component.wasm`;
//! - exit 2: the user's mistake; the last line of stdout holds
//!   `{"message", "diagnostics": [{message, line, column}]}` (earlier lines
//!   may be the user's own top-level output);
//! - anything else: the toolchain itself failed.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::output::COMPONENT;
use super::{BuildError, BuildJob, BuildKind, CompileError, Diagnostic, Toolchain, finished};
use crate::digest::Digest;
use crate::files::lock_exclusive;
use crate::language::Language;
use crate::runtime::worlds::World;
use crate::sandbox::{self, Limits, Sandbox};

/// The world every build gets, compiled into the host.
pub const WORLD_WIT: &str = include_str!("../../../wit/world.wit");

/// The `PATH` of every build: the system's programs, nothing of the host's.
const BUILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A toolchain that runs one of our build scripts.
pub struct DriverToolchain {
    pub(super) language: Language,
    /// The interpreter (`node`, the venv's `python`), an absolute path.
    pub(super) program: PathBuf,
    /// Our build script.
    pub(super) script: PathBuf,
    /// The name the source is written under in the workdir.
    pub(super) source_name: &'static str,
    pub(super) fingerprint: String,
    pub(super) max_parallel_builds: usize,
    /// What builds may read besides the system: the toolchain's directory
    /// (script, glue, pinned packages) and the interpreter's installation.
    pub(super) read_only: Vec<PathBuf>,
    /// Hide every site-packages directory from componentize-py: it adds
    /// those of `$VIRTUAL_ENV` (else of any `python3` on `PATH`) to the
    /// paths the user's code sees, read-write. A virtual environment in the
    /// scratch directory with an empty site-packages gives it nothing.
    pub(super) empty_virtual_env: bool,
    /// The compiled-code cache of wizer (componentize-js), filled once by a
    /// trusted build and read-only to user builds.
    pub(super) code_cache: Option<CodeCache>,
    /// Tells an HTTP function's source (a `wasi:http/proxy` component)
    /// from a JSON function's, where the language has both.
    pub(super) is_http_source: Option<fn(&str) -> bool>,
}

/// A cache of compiled code that a trusted warm-up build fills and every
/// later build only reads. wizer compiles the same 10 MB engine for every
/// JavaScript build (5–6 s) unless its cache has it; a cache writable by
/// user builds would let one build plant native code that the next
/// build's wizer runs, so user builds get it read-only.
pub struct CodeCache {
    /// `<cache_dir>/<language>-<fingerprint>`.
    pub(super) dir: PathBuf,
    /// A source whose build fills the cache.
    pub(super) warm_up_source: &'static str,
    /// Whether the cache is usable; decided once per process.
    pub(super) ready: OnceCell<bool>,
}

/// How a build reaches the code cache.
enum CacheAccess<'a> {
    /// User builds: a warm cache, read-only.
    ReadOnly(&'a Path),
    /// The warm-up build.
    Writable(&'a Path),
    /// No shared cache: a private one in the scratch directory.
    Private,
}

/// The marker a completed warm-up leaves in the cache directory.
const CACHE_READY: &str = "ready";

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

    /// The cache a user build may read, after warming it up if this is the
    /// first build (of any process on this cache directory).
    async fn cache_for_users<'a>(&'a self, job: &BuildJob<'_>) -> CacheAccess<'a> {
        let Some(cache) = &self.code_cache else {
            return CacheAccess::Private;
        };
        let ready = *cache
            .ready
            .get_or_init(|| async {
                match self.warm_up(cache, job).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(
                            language = %self.language,
                            "the code cache could not be prepared, builds compile without it: {e}"
                        );
                        false
                    }
                }
            })
            .await;
        if ready {
            CacheAccess::ReadOnly(&cache.dir)
        } else {
            CacheAccess::Private
        }
    }

    /// Fills the cache with a build of our own source, once: processes
    /// sharing the directory take a file lock, and the marker says it is
    /// done.
    async fn warm_up(&self, cache: &CodeCache, job: &BuildJob<'_>) -> Result<(), BuildError> {
        let marker = cache.dir.join(CACHE_READY);
        if marker.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&cache.dir).context("creating the code cache")?;
        let _lock = lock_exclusive(cache.dir.with_extension("lock")).await?;
        if marker.exists() {
            return Ok(());
        }
        let scratch = tempfile::Builder::new()
            .prefix("warm-up-")
            .tempdir_in(job.work_root)
            .context("creating a scratch directory")?;
        let limits = job.preparation_limits();
        self.run(
            BuildKind::Function,
            cache.warm_up_source,
            scratch.path(),
            job.sandbox,
            (limits, limits),
            CacheAccess::Writable(&cache.dir),
        )
        .await?;
        std::fs::write(&marker, b"").context("marking the code cache ready")?;
        tracing::info!(language = %self.language, "code cache prepared");
        Ok(())
    }

    /// One confined run of the build script over `source`, with the
    /// limits of the run and the configured ones (for messages).
    async fn run(
        &self,
        kind: BuildKind,
        source: &str,
        workdir: &Path,
        sandbox: &Sandbox,
        (limits, configured): (Limits, Limits),
        cache: CacheAccess<'_>,
    ) -> Result<(), BuildError> {
        let home = workdir.join("home");
        let tmp = workdir.join("tmp");
        for dir in [workdir.join("wit"), home.clone(), tmp.clone()] {
            std::fs::create_dir_all(dir).context("preparing the build directory")?;
        }
        std::fs::write(workdir.join("wit/world.wit"), WORLD_WIT).context("writing the WIT")?;
        std::fs::write(workdir.join(self.source_name), source).context("writing the source")?;

        let mut job = sandbox.job(self.program.clone(), workdir, limits);
        job.args = vec![path_arg(&self.script)?, path_arg(workdir)?];
        if kind == BuildKind::Interpreter {
            job.args.push("--interpreter".to_owned());
        }
        job.read_only = sandbox::system_paths();
        job.read_only.extend(self.read_only.iter().cloned());
        job.env = vec![
            ("PATH".to_owned(), BUILD_PATH.to_owned()),
            ("HOME".to_owned(), path_arg(&home)?),
            ("TMPDIR".to_owned(), path_arg(&tmp)?),
        ];
        if self.empty_virtual_env {
            let venv = workdir.join("venv");
            std::fs::create_dir_all(venv.join("lib/site-packages"))
                .context("preparing the build directory")?;
            job.env.push(("VIRTUAL_ENV".to_owned(), path_arg(&venv)?));
        }
        let cache_home = match cache {
            CacheAccess::ReadOnly(dir) => {
                job.read_only.push(dir.to_owned());
                dir.to_owned()
            }
            CacheAccess::Writable(dir) => {
                job.read_write.push(dir.to_owned());
                dir.to_owned()
            }
            CacheAccess::Private => home.join(".cache"),
        };
        job.env
            .push(("XDG_CACHE_HOME".to_owned(), path_arg(&cache_home)?));

        let report = finished(sandbox.run(&job).await?, &configured)?;
        let scrub = Scrubber::new(workdir, &self.read_only, &cache_home);
        match report.exit_code {
            Some(0) => Ok(()),
            Some(2) => Err(user_error(&report.stdout, &scrub)?.into()),
            _ => {
                // The toolchain's own failure: the whole story goes to the
                // log, the caller gets no path of this machine.
                tracing::warn!(
                    language = %self.language,
                    exit_code = ?report.exit_code,
                    signal = ?report.signal,
                    stderr = %report.stderr,
                    "a build failed in the toolchain"
                );
                Err(anyhow!(
                    "{} exited with {:?} (signal {:?}): {}",
                    self.script.display(),
                    report.exit_code,
                    report.signal,
                    tail(&report.stderr, 20)
                )
                .into())
            }
        }
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

    async fn build(&self, job: BuildJob<'_>) -> Result<(), BuildError> {
        let cache = self.cache_for_users(&job).await;
        let limits = (job.limits(), job.configured_limits);
        self.run(
            job.kind,
            job.source,
            job.workdir,
            job.sandbox,
            limits,
            cache,
        )
        .await?;
        // An HTTP function's component is the toolchain's translation of
        // the user's imports: checked like an upload.
        if job.kind == BuildKind::Function && self.is_http_source.is_some_and(|f| f(job.source)) {
            let what = format!("the {} source", self.language);
            return super::check_built(&job.workdir.join(COMPONENT), World::Http, &what).await;
        }
        Ok(())
    }
}

/// A path as an argument: the sandbox's job is JSON text, and a path that
/// is not UTF-8 is refused rather than mangled.
pub(super) fn path_arg(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} is not valid UTF-8", path.display()))
}

/// The last `lines` lines of a text.
pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Removes the paths of this machine from what a build says: the scratch
/// directory becomes relative, the toolchain's paths a placeholder.
pub(super) struct Scrubber {
    replacements: Vec<(String, &'static str)>,
}

impl Scrubber {
    pub(super) fn new(workdir: &Path, toolchain: &[PathBuf], cache: &Path) -> Self {
        let mut replacements = vec![(format!("{}/", workdir.display()), "")];
        replacements.push((workdir.display().to_string(), "."));
        for path in toolchain {
            replacements.push((path.display().to_string(), "<toolchain>"));
        }
        replacements.push((cache.display().to_string(), "<cache>"));
        // Longest first, so a path is replaced before any prefix of it.
        replacements.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        Self { replacements }
    }

    pub(super) fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (path, replacement) in &self.replacements {
            if !path.is_empty() && path != "/" {
                text = text.replace(path.as_str(), replacement);
            }
        }
        text
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

fn user_error(stdout: &str, scrub: &Scrubber) -> anyhow::Result<CompileError> {
    // The protocol's line comes last; the user's own top-level output may
    // come before it.
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let parsed: UserError = serde_json::from_str(line)
        .context("the build script reported a failure it did not describe")?;
    if parsed.message.is_empty() {
        bail!("the build script reported an empty failure");
    }
    Ok(CompileError {
        message: scrub.scrub(&parsed.message),
        diagnostics: parsed
            .diagnostics
            .into_iter()
            .map(|d| Diagnostic {
                message: scrub.scrub(&d.message),
                line: d.line,
                column: d.column,
            })
            .collect(),
    })
}

/// Runs `program args...` with a cleared environment and returns stdout.
/// Only for our own version queries at start, never for a build.
pub(super) async fn version_of(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !output.status.success() {
        bail!("{} {} failed", program.display(), args.join(" "));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The absolute path of `program` on the host's `PATH`.
pub(super) fn find_program(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .and_then(|found| std::fs::canonicalize(found).ok())
        .ok_or_else(|| anyhow!("{program} is not installed (not on PATH)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_the_machine_are_scrubbed_longest_first() {
        let scrub = Scrubber::new(
            Path::new("/data/builds/build-x1"),
            &[PathBuf::from("/opt/toolchains/js"), PathBuf::from("/opt")],
            Path::new("/data/cache/js"),
        );
        assert_eq!(
            scrub.scrub("at /data/builds/build-x1/handler.js:2 from /opt/toolchains/js/x.mjs, /data/cache/js"),
            "at handler.js:2 from <toolchain>/x.mjs, <cache>"
        );
    }

    #[test]
    fn the_protocol_line_is_the_last_one_of_stdout() {
        let scrub = Scrubber::new(Path::new("/w"), &[], Path::new("/c"));
        let error = user_error(
            "user output {\"message\": \"forged\"}\n{\"message\": \"SyntaxError: x\", \"diagnostics\": [{\"message\": \"x\", \"line\": 2, \"column\": 3}]}\n",
            &scrub,
        )
        .unwrap();
        assert_eq!(error.message, "SyntaxError: x");
        assert_eq!(error.diagnostics[0].line, Some(2));
    }
}
