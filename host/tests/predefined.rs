//! The predefined functions in `components/`: each builds with its
//! toolchain, and every example in its manifest holds.

use lambda_host::catalog;
use lambda_host::runtime::Error;
use lambda_host::toolchain::BuildOptions;

use crate::helpers::{invocation, repo_root, runtime, shared_toolchains};

#[tokio::test(flavor = "multi_thread")]
async fn every_predefined_function_builds_and_answers_its_examples() {
    let functions = catalog::load_all(&repo_root().join("components")).unwrap();
    assert!(!functions.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), |_| {});
    let toolchains = shared_toolchains().await;
    for function in functions {
        let name = function.language_title.to_string();
        assert!(
            !function.manifest.examples.is_empty(),
            "{name} has no examples"
        );
        let artifact = toolchains
            .build(
                function.language_title.language(),
                &function.source,
                &BuildOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{name} does not build: {e}"));
        let loaded = runtime.load(artifact.component).await.unwrap();
        for example in &function.manifest.examples {
            let outcome = runtime
                .invoke(&loaded, &invocation(&name, example.params.clone()), None)
                .await;
            match (&example.result, example.error.as_deref(), outcome) {
                (Some(expected), None, Ok(execution)) => {
                    assert_eq!(&execution.result, expected, "{name} {}", example.params)
                }
                (None, Some("runtime_error"), Err(Error::Guest(_) | Error::Trap { .. })) => {}
                (_, _, outcome) => panic!("{name} {}: unexpected {outcome:?}", example.params),
            }
        }
    }
}
