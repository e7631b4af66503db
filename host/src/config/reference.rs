//! The settings reference: every flag, environment variable and config-file
//! key with its default and help, read from the settings' own definitions
//! (a README copy of it is checked by a test, so it cannot drift).

use super::file::CONFIG_ARG;

/// One setting: an argument of the command that has a `LAMBDA_*` variable.
pub struct Setting<'a> {
    pub arg: &'a clap::Arg,
    pub variable: String,
}

impl Setting<'_> {
    /// The key of the same setting in a config file.
    pub fn file_key(&self) -> String {
        self.variable
            .trim_start_matches("LAMBDA_")
            .to_ascii_lowercase()
    }

    /// The default, as the table shows it: clap's own, or the
    /// `[default: ...]` the help states where the value is computed.
    fn default(&self) -> String {
        if let Some((_, stated)) = self.help_and_stated_default() {
            return format!("`{stated}`");
        }
        let defaults: Vec<String> = self
            .arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        match defaults.as_slice() {
            [] if matches!(self.arg.get_action(), clap::ArgAction::SetTrue) => "off".to_owned(),
            [] => "unset".to_owned(),
            values => format!("`{}`", values.join(",")),
        }
    }

    fn help(&self) -> String {
        match self.help_and_stated_default() {
            Some((help, _)) => help,
            None => self.full_help(),
        }
    }

    fn full_help(&self) -> String {
        self.arg
            .get_help()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    fn help_and_stated_default(&self) -> Option<(String, String)> {
        let help = self.full_help();
        let start = help.find(" [default: ")?;
        let stated = help[start + " [default: ".len()..].trim_end_matches(']');
        Some((help[..start].to_owned(), stated.to_owned()))
    }
}

/// The settings among a command's arguments (the config file's own name
/// is not a key inside it).
pub fn settings(command: &clap::Command) -> impl Iterator<Item = Setting<'_>> {
    command.get_arguments().filter_map(|arg| {
        if arg.get_id() == CONFIG_ARG {
            return None;
        }
        let variable = arg.get_env()?.to_str()?.to_owned();
        Some(Setting { arg, variable })
    })
}

/// Every setting of a command, in a Markdown table.
pub fn markdown(command: &clap::Command) -> String {
    let mut out = String::from(
        "| flag | environment variable | config-file key | default | what it sets |\n\
         |---|---|---|---|---|\n",
    );
    for setting in settings(command) {
        // A secret has a flag only for the config file's sake: on the
        // command line it is refused.
        let secret = super::SECRET_SETTINGS.contains(&setting.arg.get_id().as_str());
        let flag = match setting.arg.get_long() {
            Some(long) if !secret => format!("`--{long}`"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "| {flag} | `{}` | `{}` | {} | {} |\n",
            setting.variable,
            setting.file_key(),
            setting.default(),
            setting.help().replace('|', "\\|"),
        ));
    }
    out
}
