//! Hostile sources through the real toolchains: what a stranger would
//! submit to read the host's files, write into it, replace the build's
//! output, or never let the build end. Each build runs against a host
//! whose data directory holds a canary secret (its `jwt-secret`), and
//! each test checks that the canary never comes back, that nothing is
//! written outside the build, that the call returns within its limit with
//! an error naming it, and that no process of the build is left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lambda_host::config::Settings;
use lambda_host::language::Language;
use lambda_host::sandbox::Limit;
use lambda_host::toolchain::{Artifact, BuildError, BuildOptions, Toolchains};

use crate::helpers::{isolated_settings, repo_root};

/// A host over a fresh data directory whose secret is a canary.
struct Host {
    data: tempfile::TempDir,
    toolchains: Toolchains,
    canary: String,
}

impl Host {
    async fn new(configure: impl FnOnce(&mut Settings)) -> Self {
        let data = tempfile::tempdir().unwrap();
        let canary = format!("canary-{}", uuid::Uuid::new_v4().simple());
        std::fs::write(data.path().join("jwt-secret"), &canary).unwrap();
        std::fs::write(data.path().join("lambda.db"), &canary).unwrap();
        let mut settings = isolated_settings(data.path());
        configure(&mut settings);
        let toolchains = Toolchains::detect(&settings.toolchain).await.unwrap();
        Self {
            data,
            toolchains,
            canary,
        }
    }

    fn secret_path(&self) -> PathBuf {
        self.data.path().join("jwt-secret")
    }

    /// Builds `source`, timing it, and checks what must hold whatever the
    /// outcome: no canary in the answer, no process of the build left,
    /// the secret untouched.
    async fn build(
        &self,
        language: Language,
        source: &str,
    ) -> (Result<Artifact, BuildError>, Duration) {
        let started = Instant::now();
        let outcome = self
            .toolchains
            .build(language, source, &BuildOptions::default())
            .await;
        let elapsed = started.elapsed();
        let shown = match &outcome {
            Ok(artifact) => String::from_utf8_lossy(&artifact.component).into_owned(),
            Err(BuildError::Compile(e)) => format!("{} {:?}", e.message, e.diagnostics),
            Err(e) => e.to_string(),
        };
        assert!(!shown.contains(&self.canary), "the canary leaked: {shown}");
        assert_no_process_under(self.data.path()).await;
        assert_eq!(
            std::fs::read_to_string(self.secret_path()).unwrap(),
            self.canary
        );
        (outcome, elapsed)
    }
}

/// Processes whose command line or working directory lies under `dir`:
/// those of a build of this host.
fn processes_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        if cmdline.contains(&dir) || cwd.starts_with(&dir) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

async fn assert_no_process_under(dir: &Path) {
    // The supervisor reaps before it reports; allow the kernel a moment to
    // drop the entries of processes just reaped.
    for _ in 0..20 {
        if processes_under(dir).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("processes of a build remain: {:?}", processes_under(dir));
}

fn limit_of(outcome: &Result<Artifact, BuildError>) -> Option<Limit> {
    match outcome {
        Err(BuildError::LimitExceeded { limit, .. }) => Some(*limit),
        _ => None,
    }
}

fn compile_message(outcome: &Result<Artifact, BuildError>) -> String {
    match outcome {
        Err(BuildError::Compile(e)) => e.message.clone(),
        other => panic!(
            "expected a compile error, got {:?}",
            other.as_ref().map(|a| a.digest)
        ),
    }
}

fn unique(source: &str) -> String {
    format!("// {}\n{source}", uuid::Uuid::new_v4())
}

fn unique_python(source: &str) -> String {
    format!("# {}\n{source}", uuid::Uuid::new_v4())
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_sources_cannot_read_the_hosts_files_even_past_the_guard() {
    let host = Host::new(|s| s.toolchain.rust_source_guard = false).await;
    let secret = host.secret_path();
    let secret = secret.to_str().unwrap();
    let data = host.data.path().to_str().unwrap();
    let handler =
        "pub fn handler(e: serde_json::Value) -> Result<serde_json::Value, String> { Ok(e) }";
    let sources = [
        format!("const S: &str = include_str!({secret:?});\n{handler}"),
        format!(
            "macro_rules! m {{ ($a:meta, $n:ident) => {{ #[$a] mod $n; }} }}\nm!(path = {secret:?}, leak);\n{handler}"
        ),
        format!("#[path = {secret:?}]\nmod leak;\n{handler}"),
        format!("const S: &[u8] = include_bytes!(\"/etc/shadow\");\n{handler}"),
        format!("wit_bindgen::generate!({{ path: {data:?}, world: \"x\" }});\n{handler}"),
        format!("const H: &str = env!(\"HOME\");\n{handler}"),
    ];
    for source in sources {
        let (outcome, _) = host.build(Language::Rust, &unique(&source)).await;
        let message = compile_message(&outcome);
        assert!(
            message.contains("does not compile"),
            "{source}\n=> {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guard_refuses_a_smuggled_attribute_before_any_compiler_runs() {
    let host = Host::new(|_| {}).await;
    let source = format!(
        "macro_rules! m {{ ($a:meta, $n:ident) => {{ #[$a] mod $n; }} }}\nm!(path = {:?}, leak);\npub fn handler(e: serde_json::Value) -> Result<serde_json::Value, String> {{ Ok(e) }}",
        host.secret_path()
    );
    let (outcome, _) = host.build(Language::Rust, &unique(&source)).await;
    let message = compile_message(&outcome);
    assert!(message.contains("built from a macro argument"), "{message}");
    assert_eq!(host.toolchains.stats().built, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn never_ending_builds_end_at_the_time_limit_with_their_whole_tree() {
    let timeout = Duration::from_secs(25);
    let sources = [
        (
            Language::Nodejs,
            unique("while (true) {}\nexport default function () { return 1; }"),
        ),
        (
            Language::Python,
            unique_python("while True:\n    pass\n\ndef handler(event):\n    return 1\n"),
        ),
        (
            Language::Rust,
            unique(
                "#[allow(long_running_const_eval)]\nconst N: u64 = { let mut i = 0u64; loop { i = i.wrapping_add(1); } };\n\
                 pub fn handler(e: serde_json::Value) -> Result<serde_json::Value, String> { Ok(serde_json::json!(N)) }",
            ),
        ),
    ];
    // The three at once (a minute and a quarter in a row), each on a host
    // of its own: a host checks that no process is left under its data
    // directory when its build returns, which another's build would break.
    let builds = sources.into_iter().map(|(language, source)| async move {
        let host = Host::new(|s| s.toolchain.build_timeout = timeout).await;
        let (outcome, elapsed) = host.build(language, &source).await;
        (language, outcome, elapsed)
    });
    for (language, outcome, elapsed) in futures::future::join_all(builds).await {
        assert_eq!(
            limit_of(&outcome),
            Some(Limit::Time),
            "{language}: {:?}",
            outcome.err()
        );
        assert!(
            elapsed < timeout + Duration::from_secs(5),
            "{language} took {elapsed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wait_for_a_build_slot_counts_against_the_timeout() {
    let timeout = Duration::from_secs(20);
    let host = std::sync::Arc::new(Host::new(|s| s.toolchain.build_timeout = timeout).await);
    let build = |source: String| {
        let host = host.clone();
        async move {
            let started = Instant::now();
            let outcome = host
                .toolchains
                .build(Language::Python, &source, &BuildOptions::default())
                .await;
            (outcome, started.elapsed())
        }
    };
    // One build holds the only Python slot until its time is up...
    let blocker = tokio::spawn(build(unique_python(
        "while True:\n    pass\n\ndef handler(e):\n    return 1\n",
    )));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // ...so the next one waits, and its own clock runs meanwhile.
    let (outcome, elapsed) = build(unique_python("def handler(e):\n    return 2\n")).await;
    assert!(
        elapsed < timeout + Duration::from_secs(3),
        "waited {elapsed:?}"
    );
    assert_eq!(limit_of(&outcome), Some(Limit::Time));
    let (blocked, _) = blocker.await.unwrap();
    assert_eq!(limit_of(&blocked), Some(Limit::Time));
    assert_no_process_under(host.data.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_growth_at_build_time_ends_at_the_memory_limit() {
    let cases = [
        (
            Language::Nodejs,
            1536u64,
            unique(
                "const keep = [];\nwhile (true) keep.push(new Array(1 << 20).fill(1.5));\nexport default function () { return keep.length; }",
            ),
        ),
        (
            Language::Python,
            1024,
            unique_python(
                "keep = []\nwhile True:\n    keep.append(b'x' * (1 << 20))\n\ndef handler(event):\n    return len(keep)\n",
            ),
        ),
        (
            Language::Rust,
            1024,
            unique(
                "const BIG: [u8; 1 << 30] = [7; 1 << 30];\n\
                 pub fn handler(e: serde_json::Value) -> Result<serde_json::Value, String> { Ok(serde_json::json!(BIG[e[\"params\"][\"i\"].as_u64().unwrap_or(0) as usize])) }",
            ),
        ),
    ];
    for (language, megabytes, source) in cases {
        let host = Host::new(|s| s.toolchain.build_memory_bytes = megabytes << 20).await;
        let (outcome, elapsed) = host.build(language, &source).await;
        assert_eq!(
            limit_of(&outcome),
            Some(Limit::Memory),
            "{language}: {:?}",
            outcome.err()
        );
        let message = outcome.unwrap_err().to_string();
        assert!(
            message.contains(&format!("memory limit of {megabytes} MiB")),
            "{message}"
        );
        assert!(message.contains("LAMBDA_BUILD_MEMORY_MB"), "{message}");
        assert!(
            elapsed < Duration::from_secs(120),
            "{language} took {elapsed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_filling_the_disk_ends_at_the_output_limit() {
    let host = Host::new(|s| s.toolchain.build_output_bytes = 64 << 20).await;
    let source = unique_python(
        "for i in range(64):\n    open(f'/0/fill-{i}', 'wb').write(b'x' * (4 << 20))\n\ndef handler(event):\n    return 1\n",
    );
    let (outcome, _) = host.build(Language::Python, &source).await;
    assert_eq!(
        limit_of(&outcome),
        Some(Limit::Output),
        "{:?}",
        outcome.err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_output_at_build_time_is_dropped_not_kept() {
    let host = Host::new(|_| {}).await;
    // 256 MiB of console output from top-level code, then an error.
    let source = unique(
        "const line = 'x'.repeat(1 << 16);\nfor (let i = 0; i < 4096; i++) console.log(line);\nthrow new Error('the end of the flood');\nexport default function () { return 1; }",
    );
    let (outcome, elapsed) = host.build(Language::Nodejs, &source).await;
    let message = compile_message(&outcome);
    assert!(
        message.contains("the end of the flood"),
        "{}",
        &message[..message.len().min(500)]
    );
    assert!(
        message.len() < 256 << 10,
        "{} bytes of message",
        message.len()
    );
    assert!(elapsed < Duration::from_secs(120), "took {elapsed:?}");
}

/// Every site-packages directory of the machine's Pythons, and what they
/// hold now.
fn host_site_packages() -> Vec<(PathBuf, Vec<String>)> {
    let mut dirs = Vec::new();
    let mut roots = vec![repo_root().join("toolchains/python/.venv/lib")];
    for python in ["python3", "/usr/bin/python3"] {
        if let Ok(out) = std::process::Command::new(python)
            .args([
                "-c",
                "import site; print('\\n'.join(site.getsitepackages()))",
            ])
            .output()
        {
            roots.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(PathBuf::from),
            );
        }
    }
    for root in roots {
        for entry in walk(&root, 4) {
            if entry
                .file_name()
                .is_some_and(|n| n == "site-packages" || n == "dist-packages")
            {
                let mut names: Vec<String> = std::fs::read_dir(&entry)
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                dirs.push((entry, names));
            }
        }
    }
    dirs
}

fn walk(root: &Path, depth: usize) -> Vec<PathBuf> {
    let mut found = vec![root.to_owned()];
    if depth == 0 {
        return found;
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.extend(walk(&entry.path(), depth - 1));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn python_top_level_code_sees_only_its_build_and_writes_only_there() {
    let host = Host::new(|_| {}).await;
    let before = host_site_packages();
    assert!(!before.is_empty(), "no site-packages found to watch");
    let mark = format!("pwned{}", uuid::Uuid::new_v4().simple());
    // Everything the module can see: each preopened directory, every file
    // in it (reported: the roots, a count, and anything that is not the
    // standard library's or the build's own); and a file dropped into each
    // directory, a .pth into any site-packages.
    let source = unique_python(&format!(
        "import os, json\n\
         seen, count, roots, written = [], 0, [], []\n\
         for root in ['/python', '/bundled', '/world'] + [f'/{{i}}' for i in range(8)]:\n\
         \x20   if os.path.isdir(root): roots.append(root)\n\
         \x20   for path, dirs, files in os.walk(root):\n\
         \x20       count += len(files)\n\
         \x20       seen.extend(os.path.join(path, f) for f in files if f.endswith('handler.py') or '-packages' in path or any(n in path + '/' + f for n in ('/pip/', '/setuptools/', '/componentize_py/', '/_distutils_hack/', '/wheel/')))\n\
         \x20       for name in ['{mark}', '{mark}.pth'] if path.endswith('-packages') else ['{mark}']:\n\
         \x20           try:\n\
         \x20               open(os.path.join(path, name), 'w').write('import os')\n\
         \x20               written.append(path)\n\
         \x20           except OSError:\n\
         \x20               pass\n\
         raise Exception(json.dumps({{'roots': roots, 'count': count, 'seen': seen, 'written': written}}))\n\
         def handler(event):\n    return 1\n"
    ));
    let (outcome, _) = host.build(Language::Python, &source).await;
    let message = compile_message(&outcome);
    let start = message.find("{\"roots\"").expect("the findings");
    let findings: serde_json::Value = serde_json::from_str(
        message[start..]
            .lines()
            .next()
            .unwrap()
            .trim_end_matches(|c| c != '}'),
    )
    .unwrap();
    let seen: Vec<&str> = findings["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(seen.iter().any(|f| f.ends_with("/handler.py")), "{seen:?}");
    assert!(findings["count"].as_u64().unwrap() > 100, "{findings}");
    // The standard library and componentize-py's own modules, nothing of
    // any package installed on the machine.
    for file in &seen {
        for foreign in [
            "/pip/",
            "/setuptools/",
            "/componentize_py/",
            "/_distutils_hack/",
            "/wheel/",
        ] {
            assert!(!file.contains(foreign), "the build sees {file}");
        }
    }
    // Nothing appeared in a site-packages of this machine.
    assert_eq!(host_site_packages(), before);
    let leftovers: Vec<PathBuf> = walk(host.data.path(), 6)
        .into_iter()
        .chain(walk(&repo_root().join("toolchains"), 6))
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .filter(|p| p.to_string_lossy().contains(&mark))
        .collect();
    assert!(
        leftovers.is_empty(),
        "written outside the build: {leftovers:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_cannot_replace_the_builds_output_with_a_link() {
    let host = Host::new(|_| {}).await;
    // Another function's artifact, as a link from the build would reach it.
    let (victim, _) = host
        .build(
            Language::Python,
            &unique_python("def handler(event):\n    return 'victim'\n"),
        )
        .await;
    let victim = victim.unwrap();
    let artifact = host
        .data
        .path()
        .join("artifacts")
        .join(format!("{}.sealed", victim.digest));
    let before = std::fs::read(&artifact).unwrap();
    for target in [
        "/dev/zero".to_owned(),
        format!("../../../artifacts/{}.sealed", victim.digest),
        "../../../jwt-secret".to_owned(),
    ] {
        let source = unique_python(&format!(
            "import os\n\
             for name in ['/0/component.wasm', '/0/../component.wasm']:\n\
             \x20   try:\n\
             \x20       os.symlink({target:?}, name)\n\
             \x20   except OSError:\n\
             \x20       pass\n\
             def handler(event):\n    return 'attacker'\n"
        ));
        let (outcome, elapsed) = host.build(Language::Python, &source).await;
        // The build goes on (the link is in the module's own directory, not
        // where the component is written) and yields a real component.
        let artifact_bytes = outcome.unwrap().component;
        assert!(artifact_bytes.starts_with(b"\0asm"), "{target}");
        assert!(elapsed < Duration::from_secs(120));
    }
    assert_eq!(
        std::fs::read(&artifact).unwrap(),
        before,
        "the victim's artifact changed"
    );
}
