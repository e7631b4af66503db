//! The Rust toolchain: rustc for `wasm32-wasip2`, with wit-bindgen glue.
//!
//! A user's source is one file, of one of two shapes:
//!
//! - a **JSON function** holding
//!   `pub fn handler(event: serde_json::Value) -> Result<serde_json::Value, String>`,
//!   compiled as `src/handler.rs` under the template's glue (`src/lib.rs`),
//!   which exports the `lambda:function` world;
//! - an **HTTP function**: a source with a `#[http_component]` function
//!   (Spin SDK 5.2, as Spin's own `http-rust` template writes it), compiled
//!   as the crate root itself; the macro exports `wasi:http/incoming-handler`.
//!
//! Either is checked by [`guard`] first, and the component it compiles to
//! is checked like an upload ([`worlds::check_upload`]): it must export
//! the world its shape promises and import only what that world grants, so
//! a source that reaches for an interface the host does not serve is a
//! 422 naming it, not a failure at its first call.
//!
//! Two kinds of run, both in the sandbox:
//!
//! - **Preparation** (once per toolchain fingerprint and profile, trusted):
//!   cargo builds the template with a stub handler into
//!   `rust_target_dir`, which compiles the dependencies every function
//!   shares (serde, serde_json, wit-bindgen and their proc macros), and
//!   the host records where cargo put them. The crates were fetched outside
//!   the sandbox first (`cargo fetch --locked`, the lockfile pins them).
//! - **A user's build**: one `rustc` over the user's crate, linking the
//!   prepared dependencies, which it can read but not write, with its
//!   output in its own scratch directory. No cargo, no shared target
//!   directory: one build cannot touch what another build uses, and two
//!   builds run side by side.

pub mod guard;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::driver::{Scrubber, path_arg, tail};
use super::output::COMPONENT;
use super::{
    BuildError, BuildJob, BuildKind, CompileError, Diagnostic, OptimizationLevel, Toolchain,
    finished,
};
use crate::config::ToolchainConfig;
use crate::digest::Digest;
use crate::files::lock_exclusive;
use crate::language::Language;
use crate::runtime::worlds::World;
use crate::sandbox::{self, Limits, Sandbox};

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
/// The glue around it: ours, so its errors may be shown too.
const GLUE_PATH: &str = "src/lib.rs";
const CRATE_NAME: &str = "lambda_function";
const TARGET: &str = "wasm32-wasip2";
/// The handler the preparation run compiles.
const STUB_HANDLER: &str = "use serde_json::Value;\n\
    pub fn handler(event: Value) -> Result<Value, String> { Ok(event) }\n";
/// Changes whenever the rustc command line below changes, so builds made
/// with other flags are not reused.
const COMMAND_VERSION: &str = "rustc-direct-2";
/// The proc-macro crate whose `#[http_component]` reads WIT files at
/// expansion time, from its own source directory.
const SPIN_MACRO_CRATE: &str = "spin_macro";

pub struct RustToolchain {
    /// `<sysroot>/bin/rustc`: the compiler itself, not rustup's proxy, so a
    /// build needs nothing of rustup's state.
    rustc: PathBuf,
    /// `<sysroot>/bin/cargo`, for preparation runs.
    cargo: PathBuf,
    /// The toolchain's installation: read-only to every build.
    sysroot: PathBuf,
    /// Where the prepared dependencies live; read-only to user builds.
    target_dir: PathBuf,
    /// Cargo's home: its registry holds the fetched crates.
    cargo_home: PathBuf,
    fingerprint: String,
    guard: bool,
    release: OnceCell<Dependencies>,
    debug: OnceCell<Dependencies>,
}

/// What a user's rustc needs of the prepared dependencies.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Dependencies {
    /// `--extern name=path` for each dependency of the template.
    externs: Vec<(String, PathBuf)>,
    /// `-L` arguments: the dependency directories and native libraries.
    search_paths: Vec<String>,
    /// Directories beyond the target directory a user's build must read:
    /// the WIT files Spin's `#[http_component]` expands from, and native
    /// libraries that dependencies' build scripts link from their source.
    #[serde(default)]
    readable: Vec<PathBuf>,
}

impl RustToolchain {
    /// Finds rustc and cargo and checks the `wasm32-wasip2` target. These
    /// runs are ours (version queries), outside the sandbox.
    pub async fn detect(config: &ToolchainConfig) -> anyhow::Result<Self> {
        let env = host_environment();
        let version = run_with(&env, "rustc", &["-vV"]).await?;
        let sysroot = PathBuf::from(
            run_with(&env, "rustc", &["--print", "sysroot"])
                .await?
                .trim(),
        );
        let target_lib = sysroot.join("lib/rustlib").join(TARGET);
        if !target_lib.exists() {
            bail!("the {TARGET} target is not installed (rustup target add {TARGET})");
        }
        let rustc = sysroot.join("bin/rustc");
        let cargo = sysroot.join("bin/cargo");
        ensure!(
            rustc.exists() && cargo.exists(),
            "rustc or cargo is missing from {}",
            sysroot.display()
        );
        let template = Digest::of_fields(
            TEMPLATE
                .iter()
                .flat_map(|(p, c)| [p.as_bytes(), c.as_bytes()]),
        );
        Ok(Self {
            rustc,
            cargo,
            sysroot,
            target_dir: config.rust_target_dir.clone(),
            cargo_home: cargo_home(),
            fingerprint: format!("{}\ntemplate {template}\n{COMMAND_VERSION}", version.trim()),
            guard: config.rust_source_guard,
            release: OnceCell::new(),
            debug: OnceCell::new(),
        })
    }

    /// The prepared dependencies of a profile: from this process's memory,
    /// from the manifest an earlier run wrote, or built now.
    async fn dependencies(
        &self,
        profile: Profile,
        job: &BuildJob<'_>,
    ) -> Result<&Dependencies, BuildError> {
        let cell = match profile {
            Profile::Release => &self.release,
            Profile::Debug => &self.debug,
        };
        cell.get_or_try_init(|| self.prepare(profile, job)).await
    }

    fn manifest_path(&self, profile: Profile) -> PathBuf {
        let key = Digest::of(self.fingerprint.as_bytes()).short();
        self.target_dir
            .join("lambda-dependencies")
            .join(format!("{}-{key}.json", profile.dir()))
    }

    async fn prepare(
        &self,
        profile: Profile,
        job: &BuildJob<'_>,
    ) -> Result<Dependencies, BuildError> {
        let manifest = self.manifest_path(profile);
        if let Some(dependencies) = read_manifest(&manifest) {
            return Ok(dependencies);
        }
        let dir = manifest
            .parent()
            .expect("the manifest has a directory")
            .to_owned();
        std::fs::create_dir_all(&dir).context("creating the dependency directory")?;
        // Processes sharing the target directory prepare it once.
        let _lock = lock_exclusive(manifest.with_extension("lock")).await?;
        if let Some(dependencies) = read_manifest(&manifest) {
            return Ok(dependencies);
        }

        let started = std::time::Instant::now();
        let scratch = tempfile::Builder::new()
            .prefix("rust-prepare-")
            .tempdir_in(job.work_root)
            .context("creating a scratch directory")?;
        write_crate(scratch.path(), STUB_HANDLER).context("writing the template")?;
        self.fetch(scratch.path()).await?;
        let dependencies = self
            .build_dependencies(
                profile,
                scratch.path(),
                job.sandbox,
                job.preparation_limits(),
            )
            .await?;
        let text = serde_json::to_vec_pretty(&dependencies).map_err(anyhow::Error::from)?;
        let mut file = tempfile::NamedTempFile::new_in(&dir).context("writing the manifest")?;
        std::io::Write::write_all(&mut file, &text).context("writing the manifest")?;
        file.persist(&manifest).context("writing the manifest")?;
        tracing::info!(
            profile = profile.dir(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "prepared the dependencies of Rust functions"
        );
        Ok(dependencies)
    }

    /// Downloads the template's crates into cargo's registry: the one step
    /// that needs the network, of pinned crates only, and runs nothing.
    async fn fetch(&self, crate_dir: &Path) -> Result<(), BuildError> {
        let output = tokio::process::Command::new(&self.cargo)
            .args(["fetch", "--locked"])
            .current_dir(crate_dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CARGO_HOME", &self.cargo_home)
            .env("RUSTC", &self.rustc)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("running cargo fetch")?;
        if !output.status.success() {
            return Err(anyhow!(
                "cargo fetch failed: {}",
                tail(&String::from_utf8_lossy(&output.stderr), 20)
            )
            .into());
        }
        Ok(())
    }

    /// Builds the template with cargo, confined like any build but for
    /// what it may write: the target directory and cargo's registry (where
    /// it unpacks the crates). Its build scripts and proc macros are pinned
    /// crates, yet they run confined too.
    async fn build_dependencies(
        &self,
        profile: Profile,
        crate_dir: &Path,
        sandbox: &Sandbox,
        limits: Limits,
    ) -> Result<Dependencies, BuildError> {
        std::fs::create_dir_all(&self.target_dir).context("creating the target directory")?;
        let registry = self.cargo_home.join("registry");
        std::fs::create_dir_all(&registry).context("creating cargo's registry")?;
        // Cargo's lock files must exist to be granted.
        let locks = [".package-cache", ".package-cache-mutate"].map(|n| self.cargo_home.join(n));
        for lock in &locks {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(lock)
                .with_context(|| format!("creating {}", lock.display()))?;
        }
        let mut job = sandbox.job(self.cargo.clone(), crate_dir, limits);
        job.args = [
            "build",
            "--locked",
            "--offline",
            "--message-format=json",
            "--target",
            TARGET,
        ]
        .map(str::to_owned)
        .to_vec();
        if profile == Profile::Release {
            job.args.push("--release".to_owned());
        }
        job.env = vec![
            (
                "PATH".to_owned(),
                format!("{}:/usr/bin:/bin", path_arg(&self.sysroot.join("bin"))?),
            ),
            ("CARGO_HOME".to_owned(), path_arg(&self.cargo_home)?),
            ("CARGO_TARGET_DIR".to_owned(), path_arg(&self.target_dir)?),
            ("RUSTC".to_owned(), path_arg(&self.rustc)?),
            ("CARGO_TERM_COLOR".to_owned(), "never".to_owned()),
            ("HOME".to_owned(), path_arg(crate_dir)?),
            ("TMPDIR".to_owned(), path_arg(crate_dir)?),
        ];
        job.read_only = sandbox::system_paths();
        job.read_only.push(self.sysroot.clone());
        let config = self.cargo_home.join("config.toml");
        if config.exists() {
            job.read_only.push(config);
        }
        job.read_write = vec![self.target_dir.clone(), registry];
        job.read_write.extend(locks);
        // Cargo reports every artifact on stdout: keep all of it.
        job.capture_bytes = 8 << 20;
        let report = finished(sandbox.run(&job).await?, &limits)?;
        if report.exit_code != Some(0) {
            return Err(anyhow!(
                "building the dependencies of Rust functions failed: {}",
                tail(&report.stderr, 30)
            )
            .into());
        }
        dependencies_from(&report.stdout)
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

    /// Each build is one rustc writing only its scratch directory, so
    /// builds need not queue behind each other; two keep a small machine
    /// responsive.
    fn max_parallel_builds(&self) -> usize {
        2
    }

    async fn build(&self, job: BuildJob<'_>) -> Result<(), BuildError> {
        // A Rust function is compiled ahead of time or not at all.
        if job.kind == BuildKind::Interpreter {
            return Err(BuildError::Unavailable {
                language: Language::Rust,
                reason: "Rust has no interpreter: every function is built".to_owned(),
            });
        }
        if self.guard {
            guard::check(job.source)?;
        }
        let profile = match job.options.optimization_level {
            OptimizationLevel::Release => Profile::Release,
            OptimizationLevel::Debug => Profile::Debug,
        };
        let shape = Shape::of(job.source);
        let dependencies = self.dependencies(profile, &job).await?;
        let workdir = job.workdir;
        write_crate(workdir, job.source).context("writing the build directory")?;
        let tmp = workdir.join("tmp");
        std::fs::create_dir_all(&tmp).context("preparing the build directory")?;

        let limits = job.limits();
        let mut run = job.sandbox.job(self.rustc.clone(), workdir, limits);
        run.args = rustc_args(profile, shape, dependencies);
        run.env = vec![
            ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
            ("TMPDIR".to_owned(), path_arg(&tmp)?),
            // wit-bindgen resolves the glue's `path: "wit"` against it.
            ("CARGO_MANIFEST_DIR".to_owned(), path_arg(workdir)?),
            ("CARGO_PKG_NAME".to_owned(), CRATE_NAME.to_owned()),
            ("CARGO_CRATE_NAME".to_owned(), CRATE_NAME.to_owned()),
        ];
        run.read_only = sandbox::system_paths();
        run.read_only
            .extend([self.sysroot.clone(), self.target_dir.clone()]);
        run.read_only.extend(dependencies.readable.iter().cloned());
        // Every diagnostic, for the ones in the user's file.
        run.capture_bytes = 1 << 20;
        let report = finished(job.sandbox.run(&run).await?, &job.configured_limits)?;
        if report.exit_code == Some(0) {
            return super::check_built(&workdir.join(COMPONENT), shape.world(), "the Rust source")
                .await;
        }
        let scrub = Scrubber::new(
            workdir,
            &[
                self.sysroot.clone(),
                self.target_dir.clone(),
                self.cargo_home.clone(),
            ],
            &self.target_dir,
        );
        Err(compile_error(&report.stderr, &scrub).into())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Profile {
    Release,
    Debug,
}

impl Profile {
    /// Cargo's directory name for the profile.
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// What a source is, and so which file is the crate's root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// A `handler` function under the template's `lambda:function` glue.
    Json,
    /// A `#[http_component]` (Spin SDK): the source is the crate root.
    Http,
}

impl Shape {
    /// An HTTP function is a source with an attribute naming
    /// `http_component` (`#[http_component]`, `#[spin_sdk::http_component]`).
    /// A source that does not tokenize is left to the guard and rustc.
    fn of(source: &str) -> Self {
        use proc_macro2::{Delimiter, TokenTree};
        fn has_attribute(tokens: proc_macro2::TokenStream) -> bool {
            let tokens: Vec<TokenTree> = tokens.into_iter().collect();
            tokens.iter().enumerate().any(|(i, token)| match token {
                TokenTree::Group(group) if group.delimiter() == Delimiter::Bracket => {
                    let after_pound = i > 0
                        && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == '#');
                    let names_it = group.stream().into_iter().last().is_some_and(
                        |last| matches!(last, TokenTree::Ident(ident) if ident == "http_component"),
                    );
                    (after_pound && names_it) || has_attribute(group.stream())
                }
                TokenTree::Group(group) => has_attribute(group.stream()),
                _ => false,
            })
        }
        match source.parse::<proc_macro2::TokenStream>() {
            Ok(tokens) if has_attribute(tokens.clone()) => Shape::Http,
            _ => Shape::Json,
        }
    }

    fn crate_root(self) -> &'static str {
        match self {
            Shape::Json => GLUE_PATH,
            Shape::Http => HANDLER_PATH,
        }
    }

    fn world(self) -> World {
        match self {
            Shape::Json => World::Function,
            Shape::Http => World::Http,
        }
    }
}

/// The rustc command line cargo would run for the template's crate (its
/// `[profile.release]`, or the default dev profile), writing
/// `component.wasm` into the working directory.
fn rustc_args(profile: Profile, shape: Shape, dependencies: &Dependencies) -> Vec<String> {
    let mut args: Vec<String> = [
        "--crate-name",
        CRATE_NAME,
        "--edition=2024",
        shape.crate_root(),
        "--crate-type",
        "cdylib",
        "--emit=link",
        "--error-format=json",
        "--target",
        TARGET,
        "-C",
        "embed-bitcode=no",
        "-C",
        "metadata=lambda",
        "-o",
        COMPONENT,
    ]
    .map(str::to_owned)
    .to_vec();
    let flags: &[&str] = match profile {
        Profile::Release => &[
            "-C",
            "opt-level=s",
            "-C",
            "codegen-units=16",
            "-C",
            "strip=debuginfo",
        ],
        Profile::Debug => &["-C", "debuginfo=2"],
    };
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    for path in &dependencies.search_paths {
        args.push("-L".to_owned());
        args.push(path.clone());
    }
    for (name, path) in &dependencies.externs {
        args.push("--extern".to_owned());
        args.push(format!("{name}={}", path.display()));
    }
    args
}

/// Reads cargo's `--message-format=json` output of the preparation run:
/// the library each dependency of the template compiled to (for the wasm
/// target), and the directories rustc must search.
fn dependencies_from(stdout: &str) -> Result<Dependencies, BuildError> {
    #[derive(Deserialize)]
    struct Message {
        reason: String,
        #[serde(default)]
        target: Option<Target>,
        #[serde(default)]
        filenames: Vec<PathBuf>,
        #[serde(default)]
        linked_paths: Vec<String>,
        #[serde(default)]
        manifest_path: Option<PathBuf>,
    }
    #[derive(Deserialize)]
    struct Target {
        name: String,
        kind: Vec<String>,
    }
    let wanted = direct_dependencies()?;
    let mut externs = Vec::new();
    let mut search_paths = Vec::new();
    let mut dependency_dirs = Vec::new();
    let mut readable = Vec::new();
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<Message>(line) else {
            continue;
        };
        match message.reason.as_str() {
            "compiler-artifact" => {
                let Some(target) = message.target else {
                    continue;
                };
                if target.name == SPIN_MACRO_CRATE
                    && let Some(wit) = message
                        .manifest_path
                        .as_deref()
                        .and_then(Path::parent)
                        .map(|dir| dir.join("wit"))
                    && !readable.contains(&wit)
                {
                    readable.push(wit);
                }
                let is_library = target.kind.iter().any(|k| k == "lib" || k == "proc-macro");
                for file in &message.filenames {
                    if let Some(dir) = file.parent()
                        && is_library
                        && !dependency_dirs.contains(&dir.to_owned())
                    {
                        dependency_dirs.push(dir.to_owned());
                    }
                }
                // The same crate may also be built for the host (for a proc
                // macro); the function links the one built for its target.
                let for_target = |f: &&PathBuf| {
                    f.extension().is_some_and(|e| e == "rlib")
                        && f.components().any(|c| c.as_os_str() == TARGET)
                };
                if wanted.contains(&target.name)
                    && let Some(rlib) = message.filenames.iter().find(for_target)
                    && !externs.iter().any(|(n, _)| *n == target.name)
                {
                    externs.push((target.name, rlib.clone()));
                }
            }
            "build-script-executed" => {
                // A build script may link a library from its crate's
                // source (wit-bindgen-rt's cabi_realloc): the user's build
                // must read that directory, which lies in cargo's registry.
                for linked in &message.linked_paths {
                    let dir =
                        PathBuf::from(linked.split_once('=').map_or(linked.as_str(), |(_, p)| p));
                    if !readable.contains(&dir) {
                        readable.push(dir);
                    }
                }
                search_paths.extend(message.linked_paths)
            }
            _ => {}
        }
    }
    for name in &wanted {
        if !externs.iter().any(|(n, _)| n == name) {
            return Err(anyhow!("cargo did not report the dependency {name}").into());
        }
    }
    let mut all = dependency_dirs
        .iter()
        .map(|dir| format!("dependency={}", dir.display()))
        .collect::<Vec<_>>();
    all.extend(search_paths);
    Ok(Dependencies {
        externs,
        search_paths: all,
        readable,
    })
}

/// The crate names the template depends on, from its manifest.
fn direct_dependencies() -> Result<Vec<String>, BuildError> {
    let manifest: toml::Table =
        toml::from_str(TEMPLATE[0].1).context("the template's Cargo.toml")?;
    let dependencies = manifest
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .ok_or_else(|| anyhow!("the template has no [dependencies]"))?;
    Ok(dependencies.keys().map(|k| k.replace('-', "_")).collect())
}

fn read_manifest(path: &Path) -> Option<Dependencies> {
    let text = std::fs::read(path).ok()?;
    let dependencies: Dependencies = serde_json::from_slice(&text).ok()?;
    dependencies
        .externs
        .iter()
        .all(|(_, path)| path.exists())
        .then_some(dependencies)
}

/// The environment of our own rustc queries: what rustup needs to find the
/// toolchain.
fn host_environment() -> Vec<(String, String)> {
    let mut env = vec![("PATH".to_owned(), std::env::var("PATH").unwrap_or_default())];
    for name in ["CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "HOME"] {
        if let Ok(value) = std::env::var(name) {
            env.push((name.to_owned(), value));
        }
    }
    env
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cargo")
        })
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
        .stdin(std::process::Stdio::null())
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

/// Writes the template with the user's source.
fn write_crate(dir: &Path, source: &str) -> std::io::Result<()> {
    for (path, contents) in TEMPLATE.iter().copied().chain([(HANDLER_PATH, source)]) {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, contents)?;
    }
    Ok(())
}

/// One diagnostic of `rustc --error-format=json` (the parts we read).
#[derive(Deserialize)]
struct RustcDiagnostic {
    message: String,
    level: String,
    #[serde(default)]
    code: Option<RustcCode>,
    #[serde(default)]
    spans: Vec<RustcSpan>,
    #[serde(default)]
    children: Vec<RustcDiagnostic>,
}

#[derive(Deserialize)]
struct RustcCode {
    code: String,
}

#[derive(Deserialize)]
struct RustcSpan {
    file_name: String,
    line_start: u32,
    column_start: u32,
    column_end: u32,
    is_primary: bool,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    text: Vec<RustcSpanText>,
}

#[derive(Deserialize)]
struct RustcSpanText {
    text: String,
}

/// Whether a span lies in the function's own files, which the user may see
/// quoted: their source and our glue. Anything else (a dependency's source,
/// a file a smuggled attribute named, a path of the sysroot) is not shown.
fn is_own_file(file_name: &str) -> bool {
    file_name == HANDLER_PATH || file_name == GLUE_PATH
}

/// Turns rustc's errors into diagnostics about the user's file. An error
/// is shown only when its primary span lies in the function's own files;
/// its notes only when they do too. rustc's own renderings are not passed
/// on: they quote every file a span touches.
fn compile_error(stderr: &str, scrub: &Scrubber) -> CompileError {
    let mut diagnostics = Vec::new();
    let mut rendered = Vec::new();
    let mut hidden = 0;
    for line in stderr.lines() {
        let Ok(diagnostic) = serde_json::from_str::<RustcDiagnostic>(line) else {
            continue;
        };
        if !diagnostic.level.starts_with("error")
            || diagnostic.message.starts_with("aborting due to")
        {
            continue;
        }
        let Some(primary) = diagnostic
            .spans
            .iter()
            .find(|s| s.is_primary && is_own_file(&s.file_name))
        else {
            // For the operator: a template or toolchain fault shows here.
            tracing::debug!(
                message = %scrub.scrub(&diagnostic.message),
                "a Rust build error outside the function's source"
            );
            hidden += 1;
            continue;
        };
        // rustc could not read a file the source named: say so without
        // the path or the reason, which would tell whether it exists.
        let message = if diagnostic.message.starts_with("couldn't read") {
            "the source names a file outside itself, which a build cannot read".to_owned()
        } else {
            scrub.scrub(&diagnostic.message)
        };
        let in_handler = primary.file_name == HANDLER_PATH;
        rendered.push(render(&diagnostic, &message, scrub));
        diagnostics.push(Diagnostic {
            message,
            line: in_handler.then_some(primary.line_start),
            column: in_handler.then_some(primary.column_start),
        });
    }
    let mut message = rendered.join("\n\n");
    if hidden > 0 {
        if !message.is_empty() {
            message.push_str("\n\n");
        }
        message.push_str(&format!(
            "({hidden} error(s) located outside the function's source are not shown)"
        ));
    }
    if message.is_empty() {
        // Not a diagnostic at all (a crash, a linker failure): the tail of
        // what rustc said, scrubbed of this machine's paths.
        message = scrub.scrub(&tail(stderr, 20));
    }
    CompileError {
        message: format!("the Rust source does not compile:\n{message}"),
        diagnostics,
    }
}

/// Renders one diagnostic as rustc would, quoting only the lines of the
/// function's own files.
fn render(diagnostic: &RustcDiagnostic, message: &str, scrub: &Scrubber) -> String {
    let code = diagnostic
        .code
        .as_ref()
        .map(|c| format!("[{}]", c.code))
        .unwrap_or_default();
    let mut out = format!("{}{code}: {message}", diagnostic.level);
    for span in diagnostic
        .spans
        .iter()
        .filter(|s| is_own_file(&s.file_name))
    {
        out.push_str(&format!(
            "\n  --> {}:{}:{}",
            span.file_name, span.line_start, span.column_start
        ));
        if let Some(text) = span.text.first() {
            let width = span.line_start.to_string().len();
            let start = span.column_start.saturating_sub(1) as usize;
            let carets = span.column_end.saturating_sub(span.column_start).max(1) as usize;
            out.push_str(&format!(
                "\n{:width$} |\n{} | {}\n{:width$} | {}{} {}",
                "",
                span.line_start,
                text.text,
                "",
                " ".repeat(start),
                if span.is_primary { "^" } else { "-" }.repeat(carets),
                scrub.scrub(span.label.as_deref().unwrap_or_default()),
            ));
        }
    }
    for child in &diagnostic.children {
        if child.spans.iter().all(|s| is_own_file(&s.file_name)) {
            out.push_str(&format!(
                "\n  = {}: {}",
                child.level,
                scrub.scrub(&child.message)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Shape;

    #[test]
    fn a_source_is_an_http_function_when_an_attribute_names_http_component() {
        let spin = "use spin_sdk::http::{IntoResponse, Request, Response};\n\
                    use spin_sdk::http_component;\n\
                    #[http_component]\n\
                    fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {\n\
                        Ok(Response::new(200, \"hi\"))\n\
                    }\n";
        assert_eq!(Shape::of(spin), Shape::Http);
        assert_eq!(
            Shape::of("#[spin_sdk::http_component]\nasync fn h(r: Request) {}"),
            Shape::Http
        );
        // Inside a module, too: the macro works there as well.
        assert_eq!(
            Shape::of("mod inner { #[http_component] fn h() {} }"),
            Shape::Http
        );
    }

    #[test]
    fn a_mention_that_is_no_attribute_leaves_a_json_function() {
        let json = "use serde_json::Value;\n\
                    // #[http_component] in a comment\n\
                    pub fn handler(event: Value) -> Result<Value, String> {\n\
                        let http_component = \"#[http_component]\";\n\
                        Ok(Value::String(http_component.into()))\n\
                    }\n";
        assert_eq!(Shape::of(json), Shape::Json);
        assert_eq!(
            Shape::of("#[derive(Debug)] struct S; fn http_component() {}"),
            Shape::Json
        );
        assert_eq!(Shape::of("fn broken( {"), Shape::Json);
    }
}
