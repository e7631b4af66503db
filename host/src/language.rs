//! Languages and `Language-Title`s: which toolchain a function needs.

use std::fmt;
use std::str::FromStr;

/// A language the host can build and run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Language {
    Nodejs,
    Python,
    Rust,
    /// A prebuilt component, uploaded as its bytes (base64 in
    /// `script_content`): validated, never built.
    Wasm,
}

impl Language {
    /// Every supported language, in the order error messages list them.
    pub const ALL: [Language; 4] = [
        Language::Nodejs,
        Language::Python,
        Language::Rust,
        Language::Wasm,
    ];

    /// The canonical name: the `Language-Title` prefix and the scope suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Nodejs => "nodejs",
            Language::Python => "python",
            Language::Rust => "rust",
            Language::Wasm => "wasm",
        }
    }

    /// The file name of a function's source in `components/<language-title>/`.
    pub fn source_file_name(self) -> &'static str {
        match self {
            Language::Nodejs => "handler.js",
            Language::Python => "handler.py",
            Language::Rust => "handler.rs",
            Language::Wasm => "component.wasm.b64",
        }
    }

    /// The supported languages as one human-readable list.
    pub fn supported_list() -> String {
        Self::ALL.map(Language::as_str).join(", ")
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a language name or a `Language-Title` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown language `{0}`; supported languages: {list}", list = Language::supported_list())]
    UnknownLanguage(String),
    #[error(
        "a Language-Title has the form <language>-<title>, e.g. `nodejs-calculator`; got `{0}`"
    )]
    Malformed(String),
    #[error("a title is 1 to 64 characters of a-z, 0-9, `_` and `-`; got `{0}`")]
    InvalidTitle(String),
}

impl FromStr for Language {
    type Err = ParseError;

    /// Parses a language name; `js` is an alias of `nodejs`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nodejs" | "js" => Ok(Language::Nodejs),
            "python" => Ok(Language::Python),
            "rust" => Ok(Language::Rust),
            "wasm" => Ok(Language::Wasm),
            other => Err(ParseError::UnknownLanguage(other.to_owned())),
        }
    }
}

/// A validated `<language>-<title>`, normalised to the canonical language
/// name (`js-calculator` becomes `nodejs-calculator`); serialized as that
/// text.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct LanguageTitle {
    language: Language,
    title: String,
}

impl LanguageTitle {
    /// Longest title accepted.
    pub const MAX_TITLE_LEN: usize = 64;

    /// Parses `<language>-<title>`: the language is everything before the
    /// first `-`, the title everything after it.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let (language, title) = raw
            .split_once('-')
            .ok_or_else(|| ParseError::Malformed(raw.to_owned()))?;
        if language.is_empty() {
            return Err(ParseError::Malformed(raw.to_owned()));
        }
        let language = language.parse::<Language>()?;
        Self::new(language, title)
    }

    /// A language title from its parts, validating the title.
    pub fn new(language: Language, title: &str) -> Result<Self, ParseError> {
        let valid = !title.is_empty()
            && title.len() <= Self::MAX_TITLE_LEN
            && title
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(ParseError::InvalidTitle(title.to_owned()));
        }
        Ok(Self {
            language,
            title: title.to_owned(),
        })
    }

    pub fn language(&self) -> Language {
        self.language
    }

    pub fn title(&self) -> &str {
        &self.title
    }
}

impl fmt::Display for LanguageTitle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.language, self.title)
    }
}

impl FromStr for LanguageTitle {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for LanguageTitle {
    type Error = ParseError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<LanguageTitle> for String {
    fn from(language_title: LanguageTitle) -> Self {
        language_title.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_language_and_the_js_alias() {
        let lt = LanguageTitle::parse("nodejs-calculator").unwrap();
        assert_eq!(
            (lt.language(), lt.title()),
            (Language::Nodejs, "calculator")
        );
        assert_eq!(
            LanguageTitle::parse("js-calculator").unwrap().to_string(),
            "nodejs-calculator"
        );
        assert_eq!(
            LanguageTitle::parse("python-text_processor")
                .unwrap()
                .language(),
            Language::Python
        );
        let lt = LanguageTitle::parse("rust-data-validator-2").unwrap();
        assert_eq!(
            (lt.language(), lt.title()),
            (Language::Rust, "data-validator-2")
        );
    }

    #[test]
    fn refuses_unknown_languages_naming_the_supported_ones() {
        let err = LanguageTitle::parse("cobol-payroll").unwrap_err();
        assert_eq!(err, ParseError::UnknownLanguage("cobol".into()));
        assert!(err.to_string().contains("nodejs, python, rust, wasm"));
    }

    #[test]
    fn refuses_malformed_titles() {
        for bad in [
            "",
            "nodejs",
            "-calc",
            "nodejs-",
            "nodejs-Calc",
            "rust-a b",
            "rust-é",
        ] {
            assert!(LanguageTitle::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("rust-{}", "a".repeat(65));
        assert!(LanguageTitle::parse(&long).is_err());
        let longest = format!("rust-{}", "a".repeat(64));
        assert!(LanguageTitle::parse(&longest).is_ok());
    }
}
