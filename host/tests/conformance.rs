//! The conformance table (`fixtures/conformance.json`) against the same
//! function written in JavaScript, Python and Rust: same params in, same
//! JSON out, the same kind of error for the same bad input.

use lambda_host::digest::Digest;
use lambda_host::language::Language;
use lambda_host::runtime::{Error, LoadedFunction, Runtime, Script, ScriptMode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::helpers::{fixture, fixture_source, interpreter, invocation, runtime};

#[derive(Deserialize)]
struct Table {
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    name: String,
    params: Value,
    expect: Option<Value>,
    error: Option<String>,
    message: Option<String>,
    languages: Option<Vec<String>>,
}

/// Which tier runs the conformance function.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tier {
    /// The language's interpreter, given the source at each call.
    Interpreter,
    /// The function's own component.
    Built,
}

async fn run_table(language: Language, tier: Tier) {
    let table: Table = serde_json::from_str(include_str!("fixtures/conformance.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |_| {});
    let (component, script) = match tier {
        Tier::Built => (fixture(language, "conformance").await, None),
        Tier::Interpreter => (
            interpreter(language).await,
            Some(Script {
                text: fixture_source(language, "conformance").into(),
                mode: ScriptMode::Run,
            }),
        ),
    };
    let function = runtime.load(component).await.unwrap();
    let name = format!("{language}-conformance");
    // As the host runs a tier-0 function: a check prepares the source
    // once, and every call runs what it answered.
    let script = match script {
        Some(source) => {
            let mut check = invocation(&name, json!({}));
            check.script = Some(Script {
                mode: ScriptMode::Check,
                ..source
            });
            let prepared = runtime.invoke(&function, &check, None).await.unwrap();
            let Value::String(text) = prepared.result else {
                panic!(
                    "{language}: the check prepared nothing: {}",
                    prepared.result
                );
            };
            Some(Script {
                text: text.into(),
                mode: ScriptMode::RunPrepared,
            })
        }
        None => None,
    };
    // Each row in a fresh instance, then the whole table again in one warm
    // instance: its glue must answer every row the same after the rows
    // before it, errors included.
    let version = Digest::of(name.as_bytes());
    for warm in [false, true] {
        let before = runtime.warm_stats();
        let ran = run_rows(
            &table,
            &runtime,
            &function,
            &name,
            &script,
            warm.then_some(version),
            &format!("{language} ({tier:?}, warm {warm})"),
        )
        .await;
        let after = runtime.warm_stats();
        let reused = after.reused - before.reused;
        if warm {
            assert_eq!(
                reused,
                ran - 1,
                "{language} ({tier:?}): one instance serves every row"
            );
        } else {
            assert_eq!(reused, 0);
        }
    }
}

async fn run_rows(
    table: &Table,
    runtime: &Runtime,
    function: &LoadedFunction,
    name: &str,
    script: &Option<Script>,
    warm_version: Option<Digest>,
    language: &str,
) -> u64 {
    let mut ran = 0;
    for row in &table.rows {
        if let Some(languages) = &row.languages
            && !languages.iter().any(|l| name.starts_with(&format!("{l}-")))
        {
            continue;
        }
        let mut call = invocation(name, row.params.clone());
        call.script = script.clone();
        call.warm_version = warm_version;
        let outcome = runtime.invoke(function, &call, None).await;
        match (&row.expect, row.error.as_deref(), outcome) {
            (Some(expected), None, Ok(execution)) => {
                assert_eq!(&execution.result, expected, "{language}: {}", row.name)
            }
            (None, Some("runtime_error"), Err(Error::Guest(error))) => {
                let wanted = row.message.as_deref().unwrap_or_default();
                assert!(
                    error.message.contains(wanted),
                    "{language}: {}: {:?} does not mention {wanted:?}",
                    row.name,
                    error.message
                );
            }
            (_, _, outcome) => panic!("{language}: {}: unexpected {outcome:?}", row.name),
        }
        ran += 1;
    }
    assert!(ran >= 11, "{language} ran only {ran} rows");
    ran
}

#[tokio::test(flavor = "multi_thread")]
async fn the_conformance_table_holds_in_javascript() {
    run_table(Language::Nodejs, Tier::Built).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_conformance_table_holds_in_python() {
    run_table(Language::Python, Tier::Built).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_conformance_table_holds_in_rust() {
    run_table(Language::Rust, Tier::Built).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_conformance_table_holds_on_the_javascript_interpreter() {
    run_table(Language::Nodejs, Tier::Interpreter).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_conformance_table_holds_on_the_python_interpreter() {
    run_table(Language::Python, Tier::Interpreter).await;
}
