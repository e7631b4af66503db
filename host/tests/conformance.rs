//! The conformance table (`fixtures/conformance.json`) against the same
//! function written in JavaScript, Python and Rust: same params in, same
//! JSON out, the same kind of error for the same bad input.

use lambda_host::language::Language;
use lambda_host::runtime::Error;
use serde::Deserialize;
use serde_json::Value;

use crate::helpers::{fixture, invocation, runtime};

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

async fn run_table(language: Language) {
    let table: Table = serde_json::from_str(include_str!("fixtures/conformance.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |_| {});
    let function = runtime
        .load(fixture(language, "conformance").await)
        .await
        .unwrap();
    let name = format!("{language}-conformance");
    let mut ran = 0;
    for row in table.rows {
        if let Some(languages) = &row.languages
            && !languages.iter().any(|l| l == language.as_str())
        {
            continue;
        }
        let outcome = runtime
            .invoke(&function, &invocation(&name, row.params.clone()), None)
            .await;
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
}

#[tokio::test(flavor = "multi_thread")]
async fn the_conformance_table_holds_in_javascript() {
    run_table(Language::Nodejs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_conformance_table_holds_in_python() {
    run_table(Language::Python).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_conformance_table_holds_in_rust() {
    run_table(Language::Rust).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_language_exports_the_same_world() {
    // The components' exports are checked by the runtime when it links them
    // against the one `lambda:function` world; a component that exported
    // anything else would fail to load here.
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |_| {});
    for language in Language::ALL {
        runtime
            .load(fixture(language, "conformance").await)
            .await
            .unwrap();
    }
}

/// The modules docs/python.md lists as unavailable in a function.
fn documented_unavailable_modules() -> Vec<String> {
    let docs = include_str!("../../docs/python.md");
    let table = docs
        .split("<!-- BEGIN UNAVAILABLE MODULES -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- END UNAVAILABLE MODULES -->").next())
        .expect("docs/python.md has the unavailable modules between markers");
    let mut names: Vec<String> = table
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .flat_map(|line| {
            let modules = line.split(" |").next().unwrap_or_default();
            modules
                .split(", ")
                .map(|m| m.trim_matches('`').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_function_imports_every_module_of_the_standard_library_but_the_documented_ones() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |_| {});
    let function = runtime
        .load(fixture(Language::Python, "stdlib_census").await)
        .await
        .unwrap();
    let census = runtime
        .invoke(
            &function,
            &invocation("python-stdlib_census", serde_json::json!({})),
            None,
        )
        .await
        .unwrap()
        .result;
    let failed = census["failed"].as_object().unwrap();
    let mut failed_names: Vec<String> = failed.keys().cloned().collect();
    failed_names.sort();
    assert_eq!(failed_names, documented_unavailable_modules(), "{census:#}");
    for (name, message) in failed {
        assert!(
            message
                .as_str()
                .unwrap()
                .contains("it is not available in a function: "),
            "{name}: {message}"
        );
    }
    let names = census["names"].as_u64().unwrap() as usize;
    assert!(names - failed.len() >= 250, "{census}");
}
