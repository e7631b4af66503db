//! The predefined functions: one folder per `Language-Title` under the
//! components directory, holding the source (`handler.rs`, `handler.js` or
//! `handler.py`) and a `manifest.json` that describes it.

use std::path::Path;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::language::LanguageTitle;

/// What a predefined function says about itself; the API serves it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub description: String,
    /// Whether an instance may serve its caller's next execution (a warm
    /// instance: globals persist between those executions).
    #[serde(default)]
    pub warm_instances: bool,
    /// JSON Schemas of `params` and `result`.
    #[serde(default)]
    pub schema: Schema,
    /// Calls with their expected outcome; `just test` runs every one.
    #[serde(default)]
    pub examples: Vec<Example>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    #[serde(default)]
    pub params: Value,
    #[serde(default)]
    pub result: Value,
}

/// One example call: the params and either the result or the error kind.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub params: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// `"runtime_error"` when the call is expected to fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A predefined function as found on disk.
#[derive(Clone, Debug)]
pub struct PredefinedFunction {
    pub language_title: LanguageTitle,
    pub source: String,
    pub manifest: Manifest,
}

/// Reads the one predefined function of this name, if there is one.
pub fn find(
    components_dir: &Path,
    language_title: &LanguageTitle,
) -> anyhow::Result<Option<PredefinedFunction>> {
    let dir = components_dir.join(language_title.to_string());
    if !dir.is_dir() {
        return Ok(None);
    }
    read(&dir, language_title.clone()).map(Some)
}

/// Reads every predefined function, sorted by name. A folder whose name is
/// not a valid `Language-Title`, or with a missing or broken file, is an
/// error: a shipped function must never silently disappear.
pub fn load_all(components_dir: &Path) -> anyhow::Result<Vec<PredefinedFunction>> {
    let entries = std::fs::read_dir(components_dir)
        .with_context(|| format!("cannot read {}", components_dir.display()))?;
    let mut functions = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let language_title = LanguageTitle::parse(&name)
            .with_context(|| format!("{}: not a function folder", entry.path().display()))?;
        if language_title.to_string() != name {
            bail!("{}: name it {language_title}", entry.path().display());
        }
        functions.push(read(&entry.path(), language_title)?);
    }
    functions.sort_by(|a, b| a.language_title.cmp(&b.language_title));
    Ok(functions)
}

fn read(dir: &Path, language_title: LanguageTitle) -> anyhow::Result<PredefinedFunction> {
    let source_path = dir.join(language_title.language().source_file_name());
    let source = std::fs::read_to_string(&source_path)
        .with_context(|| format!("cannot read {}", source_path.display()))?;
    let manifest_path = dir.join("manifest.json");
    let manifest = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let manifest = serde_json::from_str(&manifest)
        .with_context(|| format!("{} is not a valid manifest", manifest_path.display()))?;
    Ok(PredefinedFunction {
        language_title,
        source,
        manifest,
    })
}
