//! JWT authentication: HS256 tokens, their claims and scopes.
//!
//! The secret comes from `LAMBDA_JWT_SECRET`, or else from
//! `<data-dir>/jwt-secret`, generated on first start (readable by the owner
//! only). It never reaches a log or an error body: [`JwtKeys`] has no
//! `Debug` that shows it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::language::Language;

/// The host's secret: the configured one, or the data directory's,
/// generated on first use. Tokens are signed with it, and the integrity
/// key of stored artifacts is derived from it.
pub fn host_secret(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = configured {
        check_secret(secret.as_bytes()).context("LAMBDA_JWT_SECRET is refused")?;
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(secret) => {
            refuse_if_shared(&path)?;
            let secret = secret.trim().as_bytes().to_vec();
            check_secret(&secret).with_context(|| format!("{} is refused", path.display()))?;
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            let secret = hex::encode(bytes);
            write_private(&path, &secret)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(secret.into_bytes())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Shortest secret accepted: HS256 wants at least its 256-bit output size.
const MIN_SECRET_BYTES: usize = 32;
/// Words of the placeholders shipped in examples (`.env.example`, the
/// Kubernetes secret example) and of their kind: a secret holding one was
/// copied, not generated.
const PLACEHOLDER_MARKERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "placeholder",
    "not-a-real",
    "replace-me",
    "your-secret",
];
/// The least entropy, in bits, a secret must show, estimated from the
/// frequency of its characters. 32 random hex digits (the shortest secret
/// we accept) show 116 bits at the median, but the estimate has a long low
/// tail: summed exactly over the multinomial, one in 9,500 shows under 96
/// bits (the bound this was until a generated secret failed it in CI), one
/// in 24 billion under 75. A string of one repeated phrase shows far less
/// (`abcd` eight times: 64).
const MIN_SECRET_BITS: f64 = 75.0;
/// The longest run of one character a generated secret plausibly holds.
const MAX_SECRET_RUN: usize = 8;

/// Refuses a secret that is short, a shipped placeholder, or too regular
/// to have been generated: whoever guesses it mints tokens for everyone.
pub fn check_secret(secret: &[u8]) -> anyhow::Result<()> {
    ensure!(
        secret.len() >= MIN_SECRET_BYTES,
        "the JWT secret must be at least {MIN_SECRET_BYTES} bytes (generate one with \
         `openssl rand -base64 48`)"
    );
    let lower = String::from_utf8_lossy(secret).to_ascii_lowercase();
    if let Some(marker) = PLACEHOLDER_MARKERS.iter().find(|m| lower.contains(*m)) {
        anyhow::bail!(
            "the JWT secret is a placeholder (it contains `{marker}`): generate one with \
             `openssl rand -base64 48`"
        );
    }
    let longest_run = secret
        .chunk_by(|a, b| a == b)
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    let mut counts = [0usize; 256];
    for &byte in secret {
        counts[byte as usize] += 1;
    }
    let n = secret.len() as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2() * n
        })
        .sum();
    // Character counts cannot see a repeated pattern ("0123456789" over
    // and over): in a generated secret nearly every three characters in a
    // row are a new combination, in a pattern few are.
    let trigrams: std::collections::HashSet<&[u8]> = secret.windows(3).collect();
    let varied = trigrams.len() * 2 >= secret.len() - 2;
    ensure!(
        longest_run <= MAX_SECRET_RUN && bits >= MIN_SECRET_BITS && varied,
        "the JWT secret is too regular to have been generated (about {bits:.0} bits; at least \
         {MIN_SECRET_BITS} wanted): generate one with `openssl rand -base64 48`"
    );
    Ok(())
}

/// Refuses a secret file that other users may read or change.
#[cfg(unix)]
fn refuse_if_shared(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .permissions()
        .mode();
    ensure!(
        mode & 0o077 == 0,
        "{} is open to other users (mode {:o}): make it private with `chmod 600` (and \
         replace the secret if it may have been read)",
        path.display(),
        mode & 0o777
    );
    Ok(())
}

#[cfg(not(unix))]
fn refuse_if_shared(_: &Path) -> anyhow::Result<()> {
    Ok(())
}
const SECRET_FILE: &str = "jwt-secret";

/// The signing and verification keys.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Tokens verified recently, by their exact text: a client sends the
    /// same token with every request, and checking its signature again is
    /// a measurable part of an execute. Only tokens that verified are
    /// kept, each until its expiry (checked at every hit) and at most
    /// [`VERIFIED_TTL`]; bounded by [`VERIFIED_CAPACITY`] entries.
    verified: moka::sync::Cache<Box<str>, Arc<Verified>>,
}

/// A token that verified: who it names and until when.
struct Verified {
    principal: Principal,
    expires_at: i64,
}

const VERIFIED_CAPACITY: u64 = 10_000;
const VERIFIED_TTL: Duration = Duration::from_secs(300);

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtKeys(..)")
    }
}

impl JwtKeys {
    pub fn from_secret(secret: &[u8]) -> anyhow::Result<Self> {
        ensure!(
            secret.len() >= MIN_SECRET_BYTES,
            "the JWT secret must be at least {MIN_SECRET_BYTES} bytes"
        );
        Ok(Self {
            encoding: EncodingKey::from_secret(secret).context("invalid JWT secret")?,
            decoding: DecodingKey::from_secret(secret).context("invalid JWT secret")?,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(VERIFIED_TTL)
                .build(),
        })
    }

    /// The configured secret, or the data directory's, generated on first
    /// use.
    pub fn load(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        Self::from_secret(&host_secret(configured, data_dir)?)
    }

    /// Signs a token for `sub` with these scopes, valid for `ttl`.
    pub fn mint(&self, sub: &str, scopes: &[String], ttl: Duration) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            exp: now + ttl.as_secs() as i64,
            iat: Some(now),
            scope: ScopeClaim::Text(scopes.join(" ")),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .context("signing the token")
    }

    /// Verifies a token: signature, algorithm and expiry.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(verified) = self.verified.get(token) {
            if verified.expires_at > chrono::Utc::now().timestamp() {
                return Ok(verified.principal.clone());
            }
            self.verified.invalidate(token);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            },
        )?;
        let scopes = match data.claims.scope {
            ScopeClaim::Text(text) => text.split_whitespace().map(str::to_owned).collect(),
            ScopeClaim::List(list) => list,
        };
        let principal = Principal {
            subject: data.claims.sub,
            scopes,
        };
        self.verified.insert(
            token.into(),
            Arc::new(Verified {
                principal: principal.clone(),
                expires_at: data.claims.exp,
            }),
        );
        Ok(principal)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(default)]
    scope: ScopeClaim,
}

/// `scope` is a space-separated string or an array of strings.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl Default for ScopeClaim {
    fn default() -> Self {
        ScopeClaim::Text(String::new())
    }
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token")]
    Invalid,
    #[error("expired token")]
    Expired,
}

/// Who is calling, and what they may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub scopes: Vec<String>,
}

impl Principal {
    fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// `execute:all` or `execute:<language>`.
    pub fn may_execute(&self, language: Language) -> bool {
        self.has("execute:all") || self.has(&format!("execute:{}", language.as_str()))
    }

    /// Any execute scope: enough to read one's own sessions.
    pub fn may_execute_something(&self) -> bool {
        Language::ALL.iter().any(|&l| self.may_execute(l))
    }

    pub fn may_read_functions(&self) -> bool {
        self.has("read:functions")
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn generated_secrets_pass_and_placeholders_and_regular_strings_do_not() {
        for _ in 0..200 {
            let mut bytes = [0u8; 16];
            rand::rng().fill_bytes(&mut bytes);
            // The shortest a generated secret is: 32 hex digits.
            check_secret(hex::encode(bytes).as_bytes()).unwrap();
        }
        check_secret(b"a-test-secret-that-is-long-enough-for-hs256").unwrap();
        // Drawn from /dev/urandom (`openssl rand -hex 16`), in the low tail
        // of the estimate (92 bits): refused while the bound was 96.
        check_secret(b"d7c35d77d97df2f7856d3ddc757d77d4").unwrap();
        for refused in [
            "change-me-to-64-hex-characters-0000000000000000000000000000",
            "CHANGE-ME-placeholder-not-a-real-secret-0000000000",
            "0123456789012345678901234567890123456789",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abcdabcdabcdabcdabcdabcdabcdabcd",
            "too-short",
        ] {
            assert!(check_secret(refused.as_bytes()).is_err(), "{refused}");
        }
    }
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::from_secret(&[7u8; 32]).unwrap()
    }

    #[test]
    fn a_minted_token_verifies_with_its_subject_and_scopes() {
        let token = keys()
            .mint(
                "alice",
                &["execute:python".into(), "read:functions".into()],
                Duration::from_secs(60),
            )
            .unwrap();
        let principal = keys().verify(&token).unwrap();
        assert_eq!(principal.subject, "alice");
        assert!(principal.may_execute(Language::Python));
        assert!(!principal.may_execute(Language::Rust));
        assert!(principal.may_read_functions());
    }

    #[test]
    fn execute_all_grants_every_language() {
        let token = keys()
            .mint("bob", &["execute:all".into()], Duration::from_secs(60))
            .unwrap();
        let principal = keys().verify(&token).unwrap();
        assert!(Language::ALL.iter().all(|&l| principal.may_execute(l)));
        assert!(!principal.may_read_functions());
    }

    #[test]
    fn scopes_may_be_an_array() {
        let claims = serde_json::json!({ "sub": "c", "exp": chrono::Utc::now().timestamp() + 60,
                                         "scope": ["execute:rust"] });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&[7u8; 32]).unwrap(),
        )
        .unwrap();
        assert!(keys().verify(&token).unwrap().may_execute(Language::Rust));
    }

    #[test]
    fn expired_forged_and_garbage_tokens_are_refused() {
        let expired = serde_json::json!({ "sub": "c", "exp": chrono::Utc::now().timestamp() - 10 });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &expired,
            &EncodingKey::from_secret(&[7u8; 32]).unwrap(),
        )
        .unwrap();
        assert_eq!(keys().verify(&token), Err(AuthError::Expired));
        let other = JwtKeys::from_secret(&[8u8; 32]).unwrap();
        let forged = other
            .mint("eve", &["execute:all".into()], Duration::from_secs(60))
            .unwrap();
        assert_eq!(keys().verify(&forged), Err(AuthError::Invalid));
        assert_eq!(keys().verify("not.a.token"), Err(AuthError::Invalid));
    }

    #[test]
    fn a_verified_token_is_remembered_only_as_itself_and_only_until_it_expires() {
        let keys = keys();
        let token = keys
            .mint("alice", &["execute:all".into()], Duration::from_secs(1))
            .unwrap();
        assert_eq!(keys.verify(&token).unwrap().subject, "alice");
        assert_eq!(keys.verify(&token).unwrap().subject, "alice");
        assert_eq!(
            keys.verified.get(token.as_str()).unwrap().principal.subject,
            "alice"
        );
        // The same token with one character of its signature changed is
        // not the remembered one: it is verified, and refused. (Not the
        // last character, whose low bits are base64 padding.)
        let at = token.len() - 10;
        let changed = if &token[at..=at] == "A" { "B" } else { "A" };
        let tampered = format!("{}{changed}{}", &token[..at], &token[at + 1..]);
        assert_eq!(keys.verify(&tampered), Err(AuthError::Invalid));
        assert!(keys.verified.get(tampered.as_str()).is_none());
        // Past its expiry the remembered token is refused like any other.
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(keys.verify(&token), Err(AuthError::Expired));
        assert!(keys.verified.get(token.as_str()).is_none());
    }

    #[test]
    fn a_generated_secret_is_kept_in_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = JwtKeys::load(None, dir.path()).unwrap();
        let token = first.mint("a", &[], Duration::from_secs(60)).unwrap();
        let second = JwtKeys::load(None, dir.path()).unwrap();
        assert_eq!(second.verify(&token).unwrap().subject, "a");
        assert!(JwtKeys::load(Some("too short"), dir.path()).is_err());
    }
}
