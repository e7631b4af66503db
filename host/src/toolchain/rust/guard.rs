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
//!
//! This is the fast first line, with messages that name the construct. It
//! cannot see what macros expand to, and nothing relies on it alone: the
//! build itself runs in the [sandbox](crate::sandbox), where rustc can
//! read the toolchain and the function's own crate and nothing else.

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
    (
        "wit_bindgen",
        "generates bindings from WIT files it reads at build time; the glue already \
         provides the function's world",
    ),
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
    let guard = Guard {
        defines_macros: mentions(&tokens, "macro_rules"),
    };
    guard.check_tokens(&tokens, Context::Code)
}

struct Guard {
    /// Whether the source defines a `macro_rules!` macro. Only such a macro
    /// can paste a `!` after an argument (`$x!`); the macros a function
    /// can otherwise call (`json!`, `vec!`, `format!`...) never do, so their
    /// arguments are judged as plain code unless the source has its own.
    defines_macros: bool,
}

/// Whether an identifier occurs anywhere, groups included.
fn mentions(tokens: &[TokenTree], wanted: &str) -> bool {
    tokens.iter().any(|token| match token {
        TokenTree::Ident(ident) => ident == wanted,
        TokenTree::Group(group) => {
            mentions(&group.stream().into_iter().collect::<Vec<_>>(), wanted)
        }
        _ => false,
    })
}

/// Where a token stands, which decides how much the guard can tell.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Plain code: what a token is can be read from its neighbours.
    Code,
    /// Inside a macro invocation or a `macro_rules!` body of a source that
    /// defines macros: tokens may be pasted anywhere (`$x!`, `#[$a]`), so
    /// a name is judged by what it could become.
    MacroTokens,
    /// Inside `#[...]` or `#![...]`.
    Attribute,
}

impl Guard {
    fn check_tokens(&self, tokens: &[TokenTree], context: Context) -> Result<(), CompileError> {
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
                    // `env` is a module (`std::env::vars()`, harmless: the
                    // guest's environment is empty), a common variable name,
                    // and a macro (`env!`, which reads the compiler's
                    // environment). Refused where it can be the macro: called
                    // (`env!`), aliased (`use std::env as e;` imports the
                    // macro too, for `e!`), or handed to a macro that could
                    // paste a `!` after it.
                    if name == "env" && !is_path_separator(next, after) {
                        let called = is_punct(next, '!');
                        let aliased = matches!(next, Some(TokenTree::Ident(a)) if a == "as");
                        if called || aliased || context != Context::Code {
                            return Err(refusal(
                                "`env!` reads the build machine's environment; `env` may only \
                             name the module (`std::env::vars()`, `use std::env;`), not be \
                             called, aliased or passed to a macro"
                                    .to_owned(),
                                Some(ident.span()),
                            ));
                        }
                    }
                    // `mod name;` loads another file; `mod name { ... }` is fine.
                    // `mod $name;` in a macro cannot be told apart: refused.
                    if name == "mod"
                        && (is_punct(next, '$')
                            || (matches!(next, Some(TokenTree::Ident(_))) && is_punct(after, ';')))
                    {
                        return Err(refusal(
                            "`mod name;` loads another file; a function is one file: write \
                         `mod name { ... }` inline"
                                .to_owned(),
                            Some(ident.span()),
                        ));
                    }
                    if name == "extern" && matches!(next, Some(TokenTree::Ident(c)) if c == "crate")
                    {
                        return Err(refusal(
                        "`extern crate` is not allowed: a function may use serde and serde_json"
                            .to_owned(),
                        Some(ident.span()),
                    ));
                    }
                    if context == Context::Attribute
                        && let Some((_, why)) =
                            FORBIDDEN_ATTRIBUTES.iter().find(|(n, _)| *n == name)
                    {
                        return Err(refusal(
                            format!(
                                "the attribute `{name}` is not allowed in a function: it {why}"
                            ),
                            Some(ident.span()),
                        ));
                    }
                }
                // `#[$a]`: an attribute made of a macro's argument, which could
                // be `path = "..."`, `doc = include_str!(...)` or anything else.
                TokenTree::Punct(punct)
                    if punct.as_char() == '$' && context == Context::Attribute =>
                {
                    return Err(refusal(
                        "an attribute built from a macro argument (`#[$x]`) is not allowed: what \
                     it becomes cannot be checked"
                            .to_owned(),
                        Some(punct.span()),
                    ));
                }
                TokenTree::Group(group) => {
                    let inner: Vec<TokenTree> = group.stream().into_iter().collect();
                    let before = &tokens[..i];
                    // Everything within an attribute is the attribute's.
                    let opens_attribute =
                        group.delimiter() == Delimiter::Bracket && is_attribute_start(before);
                    let inner_context = if opens_attribute || context == Context::Attribute {
                        Context::Attribute
                    } else if self.defines_macros && is_macro_body(before) {
                        Context::MacroTokens
                    } else {
                        context
                    };
                    self.check_tokens(&inner, inner_context)?;
                }
                TokenTree::Punct(_) | TokenTree::Literal(_) => {}
            }
        }
        Ok(())
    }
}

fn is_punct(token: Option<&TokenTree>, c: char) -> bool {
    matches!(token, Some(TokenTree::Punct(p)) if p.as_char() == c)
}

/// Whether a group is a macro's input: it follows `name!` (an invocation)
/// or `macro_rules! name` (a definition).
fn is_macro_body(before: &[TokenTree]) -> bool {
    match before {
        [.., TokenTree::Punct(bang)] => bang.as_char() == '!',
        [.., TokenTree::Punct(bang), TokenTree::Ident(_)] => bang.as_char() == '!',
        _ => false,
    }
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
    fn attributes_and_modules_made_of_macro_arguments_are_refused() {
        for source in [
            // The smuggled #[path]: the attribute arrives as a `meta` fragment.
            "macro_rules! m { ($a:meta, $n:ident) => { #[$a] mod $n; } } m!(path = \"/etc/passwd\", leak);",
            "macro_rules! m { ($a:meta) => { #[$a] fn f() {} } }",
            "macro_rules! m { ($n:ident) => { mod $n; } }",
            "macro_rules! m { ($a:tt) => { #[doc = $a] fn f() {} } }",
        ] {
            refused(source);
        }
    }

    #[test]
    fn env_is_refused_where_it_can_become_the_macro() {
        for source in [
            "macro_rules! m { ($x:ident) => { $x!(\"HOME\") } } const H: &str = m!(env);",
            "macro_rules! m { ($b:tt) => { env $b (\"HOME\") } } const H: &str = m!(!);",
            "macro_rules! m { ($e:ident, $x:ident) => { $e!(\"HOME\") } } const H: &str = m!(env, x);",
            "use std::{env as e}; const H: &str = e!(\"HOME\");",
            "const H: &str = std::env!(\"HOME\");",
        ] {
            refused(source);
        }
    }

    #[test]
    fn the_env_module_and_variables_named_env_are_accepted() {
        check(
            r#"
            use std::env;
            use std::env::{self as environment};
            pub fn handler(event: serde_json::Value) -> Result<serde_json::Value, String> {
                let env = event["env"].clone();
                let count = env::vars().count() + std::env::vars().count() + environment::args().count();
                struct Config { env: u32 }
                let c = Config { env: 1 };
                Ok(serde_json::json!({ "env": env, "n": count, "c": c.env }))
            }
            "#,
        )
        .unwrap();
    }

    #[test]
    fn bindings_generated_from_files_are_refused() {
        let error = refused("wit_bindgen::generate!({ path: \"/etc\", world: \"x\" });");
        assert!(error.message.contains("wit_bindgen"), "{}", error.message);
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
