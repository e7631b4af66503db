//! Refuses Rust source that would reach outside itself at build time.
//!
//! Compiling Rust runs code: `include_str!` reads any file the compiler can,
//! `env!` any variable of its environment, `#[path]` and `mod foo;` pull in
//! other files. A function's source must be self-contained, so those are
//! refused before cargo ever sees the source.
//!
//! The check works on tokens, not on the syntax tree: a forbidden name is
//! refused wherever it appears — inside a `macro_rules!` body, as an alias
//! in a `use`, behind `r#` — because an attacker controls how it would be
//! reached. Comments and string literals are not tokens and never match.
//! A source the lexer cannot read is refused as well, since we cannot
//! vouch for it.

use std::str::FromStr;

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};

use crate::toolchain::{CompileError, Diagnostic};

/// Names refused anywhere: built-in macros that read files or the compiler's
/// environment. No handler needs them, and an alias (`use std::include_str
/// as f;`) still names them.
const FORBIDDEN_NAMES: &[(&str, &str)] = &[
    ("include_str", "reads a file of the build machine"),
    ("include_bytes", "reads a file of the build machine"),
    ("include", "reads a file of the build machine"),
    ("option_env", "reads the build machine's environment"),
];

/// Attributes that make the compiler open other files.
const FORBIDDEN_ATTRIBUTES: &[(&str, &str)] = &[
    ("path", "loads a module from another file"),
    ("debugger_visualizer", "embeds a file of the build machine"),
];

/// Checks a whole source file.
pub fn check(source: &str) -> Result<(), CompileError> {
    let tokens = TokenStream::from_str(source).map_err(|e| {
        refusal(
            format!("the source cannot be tokenized: {e}"),
            Some(e.span()),
        )
    })?;
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    check_tokens(&tokens, false)
}

fn check_tokens(tokens: &[TokenTree], in_attribute: bool) -> Result<(), CompileError> {
    for (i, token) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1);
        let after = tokens.get(i + 2);
        match token {
            TokenTree::Ident(ident) => {
                let name = ident.to_string();
                let name = name.strip_prefix("r#").unwrap_or(&name);
                if let Some((_, why)) = FORBIDDEN_NAMES.iter().find(|(n, _)| *n == name) {
                    return Err(refusal(
                        format!("`{name}` is not allowed in a function: it {why}"),
                        Some(ident.span()),
                    ));
                }
                // `env` is both a module (`std::env::var`, harmless: the
                // guest has no environment) and a macro (`env!`, which reads
                // the compiler's). Only the module path form is allowed,
                // since `use std::env;` would also import the macro.
                if name == "env" && !is_path_separator(next, after) {
                    return Err(refusal(
                        "`env` is only allowed as a path (`std::env::args()`): `env!` reads \
                         the build machine's environment, and `use std::env` imports it"
                            .to_owned(),
                        Some(ident.span()),
                    ));
                }
                // `mod name;` loads another file; `mod name { ... }` is fine.
                if name == "mod"
                    && matches!(next, Some(TokenTree::Ident(_)))
                    && matches!(after, Some(TokenTree::Punct(p)) if p.as_char() == ';')
                {
                    return Err(refusal(
                        "`mod name;` loads another file; a function is one file: write \
                         `mod name { ... }` inline"
                            .to_owned(),
                        Some(ident.span()),
                    ));
                }
                if name == "extern" && matches!(next, Some(TokenTree::Ident(c)) if c == "crate") {
                    return Err(refusal(
                        "`extern crate` is not allowed: a function may use serde and serde_json"
                            .to_owned(),
                        Some(ident.span()),
                    ));
                }
                if in_attribute
                    && let Some((_, why)) = FORBIDDEN_ATTRIBUTES.iter().find(|(n, _)| *n == name)
                {
                    return Err(refusal(
                        format!("the attribute `{name}` is not allowed in a function: it {why}"),
                        Some(ident.span()),
                    ));
                }
            }
            TokenTree::Group(group) => {
                let inner: Vec<TokenTree> = group.stream().into_iter().collect();
                // `#[...]` and `#![...]`: the bracket group after a `#`
                // (and an optional `!`).
                let is_attribute =
                    group.delimiter() == Delimiter::Bracket && is_attribute_start(&tokens[..i]);
                check_tokens(&inner, in_attribute || is_attribute)?;
            }
            TokenTree::Punct(_) | TokenTree::Literal(_) => {}
        }
    }
    Ok(())
}

/// Whether the two tokens after a name are `::`.
fn is_path_separator(next: Option<&TokenTree>, after: Option<&TokenTree>) -> bool {
    matches!(next, Some(TokenTree::Punct(p)) if p.as_char() == ':')
        && matches!(after, Some(TokenTree::Punct(p)) if p.as_char() == ':')
}

/// Whether the tokens before a bracket group end in `#` or `# !`.
fn is_attribute_start(before: &[TokenTree]) -> bool {
    match before {
        [.., TokenTree::Punct(hash), TokenTree::Punct(bang)]
            if hash.as_char() == '#' && bang.as_char() == '!' =>
        {
            true
        }
        [.., TokenTree::Punct(hash)] => hash.as_char() == '#',
        _ => false,
    }
}

fn refusal(message: String, span: Option<Span>) -> CompileError {
    let start = span.map(|s| s.start());
    let line = start.map(|s| s.line as u32);
    let column = start.map(|s| s.column as u32 + 1);
    let location = match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        _ => String::new(),
    };
    CompileError {
        message: format!("the source was refused{location}: {message}"),
        diagnostics: vec![Diagnostic {
            message,
            line,
            column,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(source: &str) -> CompileError {
        check(source).expect_err(&format!("accepted:\n{source}"))
    }

    #[test]
    fn an_ordinary_handler_is_accepted() {
        check(
            r#"
            use serde_json::{json, Value};
            /// Docs may mention include_str!("x") and env!("HOME") freely.
            pub fn handler(event: Value) -> Result<Value, String> {
                // include_bytes!("/etc/shadow") in a comment is not code
                let args: Vec<String> = std::env::args().collect();
                let path = "include!(\"x\")";
                mod inner { pub fn f() {} }
                #[derive(Debug)] struct S;
                Ok(json!({ "n": args.len(), "p": path }))
            }
            "#,
        )
        .unwrap();
    }

    #[test]
    fn file_and_environment_macros_are_refused_with_their_position() {
        let err = refused("pub fn handler() {\n    let p = include_str!(\"/etc/passwd\");\n}");
        assert!(err.message.contains("include_str"), "{}", err.message);
        assert_eq!(err.diagnostics[0].line, Some(2));
        assert_eq!(err.diagnostics[0].column, Some(13));
        for source in [
            "const B: &[u8] = include_bytes!(\"/etc/passwd\");",
            "include!(\"/etc/passwd\");",
            "const H: &str = env!(\"HOME\");",
            "const H: Option<&str> = option_env!(\"HOME\");",
            "const H: &str = r#env!(\"HOME\");",
        ] {
            refused(source);
        }
    }

    #[test]
    fn aliases_and_macro_indirections_are_refused() {
        for source in [
            "use std::include_str as read; const P: &str = read!(\"/etc/passwd\");",
            "use std::env as e; const H: &str = e!(\"HOME\");",
            "use std::env; const H: &str = env!(\"HOME\");",
            "macro_rules! m { ($x:ident) => { $x!(\"/etc/passwd\") } } const P: &str = m!(include_str);",
            "#[doc = include_str!(\"/etc/passwd\")] pub fn f() {}",
        ] {
            refused(source);
        }
    }

    #[test]
    fn other_files_cannot_be_pulled_in() {
        for source in [
            "#[path = \"/etc/passwd\"] mod m;",
            "mod secrets;",
            "#[cfg_attr(all(), path = \"/etc/passwd\")] mod m { }",
            "#![debugger_visualizer(gdb_script_file = \"/etc/passwd\")]",
            "extern crate std as other;",
        ] {
            refused(source);
        }
    }

    #[test]
    fn a_source_that_does_not_tokenize_is_refused() {
        let err = refused("pub fn handler( {");
        assert!(
            err.message.contains("cannot be tokenized"),
            "{}",
            err.message
        );
    }
}
