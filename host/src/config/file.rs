//! The command line, with a config file's settings layered in: defaults <
//! config file < environment < flags.
//!
//! clap knows where each value came from, so the file needs no machinery of
//! its own: the command line is parsed once to find the file and which
//! settings nothing else set, and once more with those settings appended as
//! flags. The file's keys are the settings' variable names (`LAMBDA_LISTEN`
//! → `listen`), read from the same definitions as the flags.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use clap::parser::ValueSource;

use super::SECRET_SETTINGS;
use super::reference::settings;

/// The argument that names the config file itself.
pub const CONFIG_ARG: &str = "config";

/// Parses `argv` as `C`'s command line, with the settings of the config
/// file it names (`--config`, or `LAMBDA_CONFIG`) where neither a flag nor
/// the environment sets them. A [`clap::Error`] (help, version, a bad
/// flag) comes back as is, so the caller can let clap print it.
pub fn parse<C: clap::Parser>(argv: impl IntoIterator<Item = OsString>) -> anyhow::Result<C> {
    let mut argv: Vec<OsString> = argv.into_iter().collect();
    let command = C::command();
    let matches = command.clone().try_get_matches_from(&argv)?;
    for id in SECRET_SETTINGS {
        ensure!(
            matches.value_source(id) != Some(ValueSource::CommandLine),
            "--{} is refused on the command line, where every user of the machine sees it \
             (`ps`): set LAMBDA_{} in the environment or `{id}` in the config file",
            id.replace('_', "-"),
            id.to_uppercase()
        );
    }
    let Some(path) = matches.get_one::<std::path::PathBuf>(CONFIG_ARG) else {
        return Ok(C::from_arg_matches(&matches)?);
    };
    for (key, value) in read(path, &command)? {
        let setting = settings(&command)
            .find(|setting| setting.file_key() == key)
            .expect("read() accepts only the keys of settings");
        let unset = matches!(
            matches.value_source(setting.arg.get_id().as_str()),
            None | Some(ValueSource::DefaultValue)
        );
        if !unset {
            continue;
        }
        let flag = setting
            .arg
            .get_long()
            .expect("every setting has a long flag");
        if matches!(setting.arg.get_action(), clap::ArgAction::SetTrue) {
            match value.as_str() {
                "true" => argv.push(format!("--{flag}").into()),
                "false" => {}
                other => bail!("`{key}` must be true or false, not `{other}`"),
            }
        } else {
            argv.push(format!("--{flag}={value}").into());
        }
    }
    let matches = command
        .try_get_matches_from(&argv)
        .with_context(|| format!("in the config file {}", path.display()))?;
    Ok(C::from_arg_matches(&matches)?)
}

/// The `key = value` pairs of a TOML config file, values as their flags
/// take them (lists joined with commas). Unknown keys and values that are
/// not scalars or lists of scalars are refused.
fn read(path: &Path, command: &clap::Command) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let keys: Vec<String> = settings(command).map(|s| s.file_key()).collect();
    let mut pairs = Vec::new();
    for (key, value) in table {
        ensure!(
            keys.contains(&key),
            "unknown setting `{key}` in {}; the settings are: {}",
            path.display(),
            keys.join(", ")
        );
        let scalar = |value: &toml::Value| -> anyhow::Result<String> {
            Ok(match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => bail!("`{key}` must be a string, number or boolean, not {other}"),
            })
        };
        let value = match &value {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(","),
            other => scalar(other)?,
        };
        pairs.push((key, value));
    }
    Ok(pairs)
}
