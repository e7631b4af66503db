//! The operator's capability policy: what each HTTP function may use
//! beyond computing (a TOML file, `--capability-policy`).
//!
//! Nothing is granted by default. A function's component declares what it
//! may use by what it imports (checked at `initialize`, [`super::worlds`]);
//! the policy decides, per function, what those imports reach:
//!
//! ```toml
//! [limits]                 # every outbound request
//! connect_timeout_ms = 5000
//! first_byte_timeout_ms = 10000
//! max_response_bytes = 10485760
//!
//! [key_value]
//! quota_bytes = 1048576    # per function and owner: keys plus values
//!
//! [[grant]]
//! functions = ["rust-weather"]
//! hosts = ["api.example.com", "10.0.0.5:8080"]
//! private_addresses = false
//! key_value = true
//! variables = { api_key = "..." }
//! ```
//!
//! The file is read once, at start; a malformed one stops the host rather
//! than granting something by mistake.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::outbound::{HostRule, parse_host};
use crate::config::Secret;

/// The policy file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    key_value: KeyValueLimits,
    #[serde(default, rename = "grant")]
    grants: Vec<Grant>,
}

/// The bounds of every outbound request.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub connect_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
    pub max_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 10_000,
            max_response_bytes: 10 << 20,
        }
    }
}

/// The bounds of each function's key-value store.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyValueLimits {
    /// Keys plus values, in bytes, per function and owner.
    pub quota_bytes: u64,
}

impl Default for KeyValueLimits {
    fn default() -> Self {
        Self {
            quota_bytes: 1 << 20,
        }
    }
}

/// Functions, and what they may use.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    /// Language titles (`rust-weather`, `wasm-weather`).
    functions: Vec<String>,
    /// `host` or `host:port` (no port: 80). IP literals name themselves.
    #[serde(default)]
    hosts: Vec<String>,
    /// Whether these hosts may resolve to loopback, private, link-local
    /// or other non-public addresses.
    #[serde(default)]
    private_addresses: bool,
    /// Whether the functions may open their key-value store.
    #[serde(default)]
    key_value: bool,
    /// Variables and their values. `Secret` keeps them out of any
    /// `Debug` rendering of the policy.
    #[serde(default)]
    variables: HashMap<String, Secret>,
}

/// What a function declares it needs (`context.capabilities` at
/// `initialize`): its grant is the policy's narrowed to this, so a
/// function gets no more than it asked for even where the operator
/// granted more, and `initialize` refuses what the policy does not grant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    /// `host` or `host:port`, as in a grant.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub key_value: bool,
    /// Variable names.
    #[serde(default)]
    pub variables: Vec<String>,
}

/// The most hosts or variables a declaration may name.
const MAX_DECLARED: usize = 64;

impl Declared {
    /// Whether the declaration is well formed: hosts that parse, variable
    /// names that could exist, and not too many of either.
    pub fn check(&self) -> Result<(), String> {
        if self.hosts.len() > MAX_DECLARED || self.variables.len() > MAX_DECLARED {
            return Err(format!(
                "capabilities may name at most {MAX_DECLARED} hosts and {MAX_DECLARED} variables"
            ));
        }
        for host in &self.hosts {
            parse_host(host, false).map_err(|e| format!("capabilities.hosts: {e:#}"))?;
        }
        for name in &self.variables {
            if !is_variable_name(name) {
                return Err(format!(
                    "capabilities.variables: `{name}` is not a variable name (lower-case \
                     letters, digits and `_`, starting with a letter)"
                ));
            }
        }
        Ok(())
    }
}

/// What one function may use, gathered from every grant that names it.
#[derive(Debug)]
pub struct FunctionGrant {
    pub(super) hosts: Vec<HostRule>,
    pub(super) limits: Limits,
    pub(super) key_value: bool,
    pub(super) key_value_limits: KeyValueLimits,
    variables: HashMap<String, Secret>,
}

impl FunctionGrant {
    /// The value of a variable the policy sets for this function.
    pub fn variable(&self, name: &str) -> Option<&Secret> {
        self.variables.get(name)
    }
}

/// The policy, read once at start: each function's grant, so a call only
/// looks its up.
#[derive(Debug, Default)]
pub struct Policy {
    by_function: HashMap<String, Arc<FunctionGrant>>,
}

impl Policy {
    /// Reads and checks the policy file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the capability policy {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the capability policy {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: PolicyFile = toml::from_str(text)?;
        let mut by_function: HashMap<String, FunctionGrant> = HashMap::new();
        for grant in file.grants {
            let mut rules = Vec::new();
            for entry in &grant.hosts {
                rules.push(parse_host(entry, grant.private_addresses)?);
            }
            for name in grant.variables.keys() {
                if !is_variable_name(name) {
                    bail!(
                        "`{name}` is not a variable name (lower-case letters, digits and `_`, \
                         starting with a letter)"
                    );
                }
            }
            for function in grant.functions {
                crate::language::LanguageTitle::parse(&function)
                    .with_context(|| format!("`{function}` is not a language title"))?;
                let entry = by_function
                    .entry(function.clone())
                    .or_insert_with(|| FunctionGrant {
                        hosts: Vec::new(),
                        limits: file.limits,
                        key_value: false,
                        key_value_limits: file.key_value,
                        variables: HashMap::new(),
                    });
                entry.hosts.extend(rules.iter().cloned());
                entry.key_value |= grant.key_value;
                for (name, value) in &grant.variables {
                    if entry
                        .variables
                        .insert(name.clone(), value.clone())
                        .is_some_and(|earlier| earlier != *value)
                    {
                        bail!("the variable `{name}` of {function} is set twice, differently");
                    }
                }
            }
        }
        Ok(Self {
            by_function: by_function
                .into_iter()
                .map(|(function, grant)| (function, Arc::new(grant)))
                .collect(),
        })
    }

    /// What `function` may use: `None` when nothing.
    pub fn for_function(&self, function: &str) -> Option<Arc<FunctionGrant>> {
        self.by_function.get(function).cloned()
    }

    /// What `function` may use given its declaration: the policy's grant,
    /// narrowed to what it declared (all of it when it declared nothing).
    pub fn effective(
        &self,
        function: &str,
        declared: Option<&Declared>,
    ) -> Option<Arc<FunctionGrant>> {
        let grant = self.for_function(function)?;
        let Some(declared) = declared else {
            return Some(grant);
        };
        let hosts: Vec<HostRule> = declared
            .hosts
            .iter()
            .filter_map(|entry| parse_host(entry, false).ok())
            .filter_map(|wanted| {
                grant
                    .hosts
                    .iter()
                    .find(|rule| rule.host == wanted.host && rule.port == wanted.port)
                    .cloned()
            })
            .collect();
        let variables = declared
            .variables
            .iter()
            .filter_map(|name| Some((name.clone(), grant.variables.get(name)?.clone())))
            .collect();
        Some(Arc::new(FunctionGrant {
            hosts,
            limits: grant.limits,
            key_value: grant.key_value && declared.key_value,
            key_value_limits: grant.key_value_limits,
            variables,
        }))
    }

    /// What a declaration asks for that the policy does not grant
    /// `function`, named (no values): empty when all of it is granted.
    pub fn not_granted(&self, function: &str, declared: &Declared) -> Vec<String> {
        let grant = self.for_function(function);
        let mut missing = Vec::new();
        for entry in &declared.hosts {
            let granted = parse_host(entry, false).ok().is_some_and(|wanted| {
                grant.as_ref().is_some_and(|g| {
                    g.hosts
                        .iter()
                        .any(|rule| rule.host == wanted.host && rule.port == wanted.port)
                })
            });
            if !granted {
                missing.push(format!("host {entry}"));
            }
        }
        if declared.key_value && !grant.as_ref().is_some_and(|g| g.key_value) {
            missing.push("key-value".to_owned());
        }
        for name in &declared.variables {
            if grant.as_ref().and_then(|g| g.variable(name)).is_none() {
                missing.push(format!("variable {name}"));
            }
        }
        missing
    }
}

/// Spin's rule for variable names.
pub fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_grants_only_what_it_names() {
        let policy = Policy::parse(
            r#"
            [limits]
            max_response_bytes = 1024

            [[grant]]
            functions = ["wasm-weather"]
            hosts = ["API.Example.com.", "10.0.0.5:8080"]

            [[grant]]
            functions = ["wasm-weather", "rust-other"]
            hosts = ["localhost:9000"]
            private_addresses = true
            "#,
        )
        .unwrap();
        let weather = policy.for_function("wasm-weather").unwrap();
        assert_eq!(
            weather.hosts,
            [
                HostRule {
                    host: "api.example.com".into(),
                    port: 80,
                    private_addresses: false
                },
                HostRule {
                    host: "10.0.0.5".into(),
                    port: 8080,
                    private_addresses: false
                },
                HostRule {
                    host: "localhost".into(),
                    port: 9000,
                    private_addresses: true
                },
            ]
        );
        assert_eq!(weather.limits.max_response_bytes, 1024);
        assert_eq!(policy.for_function("rust-other").unwrap().hosts.len(), 1);
        assert!(policy.for_function("wasm-other").is_none());
    }

    #[test]
    fn key_value_and_variables_are_granted_per_function_and_never_shown() {
        let policy = Policy::parse(
            r#"
            [key_value]
            quota_bytes = 4096

            [[grant]]
            functions = ["rust-a", "rust-b"]
            key_value = true
            variables = { api_key = "s3cr3t-value", region = "eu" }

            [[grant]]
            functions = ["rust-a"]
            variables = { api_key = "s3cr3t-value" }
            "#,
        )
        .unwrap();
        let a = policy.for_function("rust-a").unwrap();
        assert!(a.key_value && a.hosts.is_empty());
        assert_eq!(a.key_value_limits.quota_bytes, 4096);
        assert_eq!(a.variable("api_key").unwrap().expose(), "s3cr3t-value");
        assert!(a.variable("missing").is_none());
        assert!(!format!("{policy:?}").contains("s3cr3t"));
        assert!(policy.for_function("rust-c").is_none());
    }

    #[test]
    fn a_declaration_narrows_the_grant_and_names_what_is_not_granted() {
        let policy = Policy::parse(
            r#"
            [[grant]]
            functions = ["rust-a"]
            hosts = ["api.example.com", "other.example:8080"]
            key_value = true
            variables = { api_key = "k", region = "eu" }
            "#,
        )
        .unwrap();
        let declared = Declared {
            hosts: vec!["API.example.com".into()],
            key_value: false,
            variables: vec!["region".into()],
        };
        assert!(declared.check().is_ok());
        assert!(policy.not_granted("rust-a", &declared).is_empty());
        let narrowed = policy.effective("rust-a", Some(&declared)).unwrap();
        assert_eq!(narrowed.hosts.len(), 1);
        assert_eq!(narrowed.hosts[0].host, "api.example.com");
        assert!(!narrowed.key_value);
        assert!(narrowed.variable("api_key").is_none());
        assert_eq!(narrowed.variable("region").unwrap().expose(), "eu");
        // No declaration: the whole grant.
        assert_eq!(policy.effective("rust-a", None).unwrap().hosts.len(), 2);

        let greedy = Declared {
            hosts: vec!["evil.example".into(), "other.example:8080".into()],
            key_value: true,
            variables: vec!["secret".into()],
        };
        assert_eq!(
            policy.not_granted("rust-a", &greedy),
            ["host evil.example", "variable secret"]
        );
        assert_eq!(
            policy.not_granted("rust-b", &greedy),
            [
                "host evil.example",
                "host other.example:8080",
                "key-value",
                "variable secret"
            ]
        );
        for bad in [
            Declared {
                hosts: vec!["http://x/".into()],
                ..Default::default()
            },
            Declared {
                variables: vec!["API".into()],
                ..Default::default()
            },
            Declared {
                hosts: vec!["x.example".into(); 65],
                ..Default::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_malformed_policy_is_refused() {
        for bad in [
            "[[grant]]\nfunctions = [\"rust-a\"]\nvariables = { API_KEY = \"x\" }",
            "[[grant]]\nfunctions = [\"rust-a\"]\nvariables = { 1st = \"x\" }",
            "[[grant]]\nfunctions = [\"rust-a\"]\nvariables = { a = \"x\" }\n\
             [[grant]]\nfunctions = [\"rust-a\"]\nvariables = { a = \"y\" }",
            "[key_value]\nquota_bytes = -1",
            "[[grant]]\nfunctions = [\"wasm-a\"]\nhosts = [\"http://x.example/\"]",
            "[[grant]]\nfunctions = [\"wasm-a\"]\nhosts = [\"user@x.example\"]",
            "[[grant]]\nfunctions = [\"not a title\"]\nhosts = [\"x.example\"]",
            "[[grant]]\nfunctions = [\"wasm-a\"]\nhosts = [\"x.example\"]\nallow_everything = true",
            "[limits]\nmax_response_bytes = -1",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }
}
