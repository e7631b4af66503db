//! The JavaScript and Python toolchains: the source forms they accept, and
//! how they report a source that does not compile or a handler that throws.

use lambda_host::language::Language;
use lambda_host::runtime::Error;
use lambda_host::toolchain::{BuildError, BuildOptions, CompileError, Toolchains};
use serde_json::json;

use crate::helpers::{invocation, runtime, settings, shared_toolchains};

async fn compile_error(language: Language, source: &str) -> CompileError {
    match shared_toolchains()
        .await
        .build(language, source, &BuildOptions::default())
        .await
    {
        Err(BuildError::Compile(e)) => e,
        other => panic!("expected a compile error, got {other:?}"),
    }
}

/// Builds `source` and runs it once with `params`.
async fn run(
    language: Language,
    source: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, Error> {
    let artifact = shared_toolchains()
        .await
        .build(language, source, &BuildOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{source}: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |_| {});
    let function = runtime.load(artifact.component).await.unwrap();
    let name = format!("{language}-test");
    runtime
        .invoke(&function, &invocation(&name, params), None)
        .await
        .map(|e| e.result)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_syntax_error_is_a_compile_error_on_its_line() {
    let error = compile_error(
        Language::Nodejs,
        "export default function (event) {\n  const x = ;\n  return x;\n}\n",
    )
    .await;
    assert!(error.message.contains("SyntaxError"), "{}", error.message);
    assert_eq!(
        (error.diagnostics[0].line, error.diagnostics[0].column),
        (Some(2), Some(13))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_syntax_error_is_a_compile_error_on_its_line() {
    let error = compile_error(
        Language::Python,
        "def handler(event):\n    x = (1,\n    return x\n\n\ndef other(:\n    pass\n",
    )
    .await;
    assert!(error.message.contains("SyntaxError"), "{}", error.message);
    assert!(
        error.diagnostics[0].line.is_some(),
        "{:?}",
        error.diagnostics
    );
    let error = compile_error(Language::Python, "def handler(event):\n    return 1 +\n").await;
    assert_eq!(
        error.diagnostics[0].line,
        Some(2),
        "{:?}",
        error.diagnostics
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn javascript_accepts_default_named_and_commonjs_handlers() {
    let forms = [
        "export default function (event) { return { form: 'default', n: event.params.n }; }",
        "export function handler(event) { return { form: 'named', n: event.params.n }; }",
        "module.exports = async (event) => ({ form: 'commonjs', n: event.params.n });",
        "exports.handler = function (event) { return { form: 'exports.handler', n: event.params.n }; };",
    ];
    for (source, form) in forms
        .iter()
        .zip(["default", "named", "commonjs", "exports.handler"])
    {
        let result = run(Language::Nodejs, source, json!({ "n": 1 }))
            .await
            .unwrap();
        assert_eq!(result, json!({ "form": form, "n": 1 }), "{source}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thrown_javascript_error_carries_its_message_stack_and_line() {
    let source = "export default async function (event) {\n  await null;\n  throw new RangeError('out of range: ' + event.params.n);\n}\n";
    match run(Language::Nodejs, source, json!({ "n": 7 })).await {
        Err(Error::Guest(error)) => {
            assert_eq!(error.message, "RangeError: out of range: 7");
            assert_eq!((error.line, error.column), (Some(3), Some(9)));
            let trace = error.stack_trace.unwrap();
            assert!(trace.contains("handler.js:3"), "{trace}");
            // No path of the machine that built it.
            assert!(
                !trace.contains("/builds/") && !trace.contains("@/"),
                "{trace}"
            );
        }
        other => panic!("expected a guest error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_raised_python_exception_carries_its_traceback_and_line() {
    let source = "def helper(n):\n    return 10 // n\n\n\ndef handler(event):\n    return helper(event['params']['n'])\n";
    match run(Language::Python, source, json!({ "n": 0 })).await {
        Err(Error::Guest(error)) => {
            // The wording after the type changes between CPython versions.
            assert!(
                error.message.starts_with("ZeroDivisionError: "),
                "{}",
                error.message
            );
            assert_eq!(error.line, Some(2));
            assert!(error.stack_trace.unwrap().contains("handler.py\", line 2"));
        }
        other => panic!("expected a guest error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commonjs_require_fails_with_an_explanation() {
    let source = "const fs = require('fs');\nmodule.exports = () => fs.readFileSync('/etc/passwd', 'utf8');\n";
    let error = compile_error(Language::Nodejs, source).await;
    assert!(
        error.message.contains("require(\"fs\") is not available"),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_toolchain_is_reported_as_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.toolchain.toolchains_dir = dir.path().join("no-toolchains-here");
    let toolchains = Toolchains::detect(&settings.toolchain).await.unwrap();
    assert!(toolchains.status(Language::Nodejs).is_err());
    match toolchains
        .build(
            Language::Python,
            "def handler(e): pass",
            &BuildOptions::default(),
        )
        .await
    {
        Err(BuildError::Unavailable {
            language: Language::Python,
            reason,
        }) => {
            assert!(reason.contains("just setup"), "{reason}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}
