//! Integrity of what the host stores and later trusts: built components
//! (the artifact store: disk, PostgreSQL, another replica's copy) and
//! compiled native code (the AOT cache).
//!
//! Each entry is sealed with a keyed MAC (HMAC-SHA-256) over a context, its
//! name and its bytes, and the seal is checked before the entry is used:
//! a component is run by every caller of its function, and a `.cwasm` is
//! native code that wasmtime maps and executes as it is. A file the host
//! did not write, a digest renamed to another, a truncated or flipped byte:
//! each fails the check and the entry is treated as missing (rebuilt or
//! recompiled), logged and counted.
//!
//! The key is derived from the host's secret (`LAMBDA_JWT_SECRET`, or the
//! data directory's `jwt-secret`), which replicas already share, so an
//! artifact one replica sealed verifies on every other. Without a secret
//! at hand (a library user that never validated its settings), a random
//! key per process: nothing it reads is trusted unless it sealed it itself.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What ends a sealed file: the seal, then this marker.
const TRAILER_MAGIC: &[u8; 16] = b"lambda-sealed-v1";
/// The bytes of a seal (HMAC-SHA-256).
pub const SEAL_BYTES: usize = 32;

/// The key every seal is made with. `Debug` does not show it.
#[derive(Clone)]
pub struct IntegrityKey([u8; 32]);

impl std::fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntegrityKey(..)")
    }
}

impl Default for IntegrityKey {
    /// A key of this process alone.
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        Self(key)
    }
}

/// What a seal protects: a built component, or compiled native code.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Artifact,
    NativeCode,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Artifact => "artifact",
            Kind::NativeCode => "native-code",
        }
    }
}

impl IntegrityKey {
    /// The key of a host secret. A separate key, not the secret itself:
    /// the JWT signatures and these seals never share a key.
    pub fn derive(secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(b"lambda-host integrity key v1");
        Self(mac.finalize().into_bytes().into())
    }

    fn mac(&self, kind: Kind, name: &str, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        // Length-prefixed, so no field can run into the next.
        for field in [kind.label().as_bytes(), name.as_bytes()] {
            mac.update(&(field.len() as u64).to_le_bytes());
            mac.update(field);
        }
        mac.update(payload);
        mac
    }

    /// The seal of `payload` stored under `name`.
    pub fn seal(&self, kind: Kind, name: &str, payload: &[u8]) -> [u8; SEAL_BYTES] {
        self.mac(kind, name, payload).finalize().into_bytes().into()
    }

    /// Whether `seal` is the seal of `payload` under `name` (in constant time).
    pub fn verify(&self, kind: Kind, name: &str, payload: &[u8], seal: &[u8]) -> bool {
        self.mac(kind, name, payload).verify_slice(seal).is_ok()
    }

    /// `payload` followed by its seal and the trailer marker: one file,
    /// written atomically, holds both.
    pub fn seal_into_file(&self, kind: Kind, name: &str, payload: &[u8]) -> Vec<u8> {
        with_trailer(payload, &self.seal(kind, name, payload))
    }

    /// The payload of a sealed file, if its seal is right; `None` for a
    /// file without a trailer or whose seal does not match.
    pub fn open_file<'a>(&self, kind: Kind, name: &str, bytes: &'a [u8]) -> Option<&'a [u8]> {
        let (payload, seal) = split_trailer(bytes)?;
        self.verify(kind, name, payload, seal).then_some(payload)
    }
}

/// A file's bytes: the payload, its seal, the trailer marker.
pub fn with_trailer(payload: &[u8], seal: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(payload.len() + seal.len() + TRAILER_MAGIC.len());
    bytes.extend_from_slice(payload);
    bytes.extend_from_slice(seal);
    bytes.extend_from_slice(TRAILER_MAGIC);
    bytes
}

/// The payload and the seal of a file written by [`with_trailer`]; `None`
/// when it has no trailer.
pub fn split_trailer(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = bytes.strip_suffix(TRAILER_MAGIC.as_slice())?;
    let split = body.len().checked_sub(SEAL_BYTES)?;
    Some(body.split_at(split))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_file_opens_only_with_its_key_kind_and_name() {
        let key = IntegrityKey::derive(b"a secret of the host");
        let file = key.seal_into_file(Kind::Artifact, "digest-a", b"component bytes");
        assert_eq!(
            key.open_file(Kind::Artifact, "digest-a", &file),
            Some(b"component bytes".as_slice())
        );
        // Renamed to another digest, read as another kind, or sealed by
        // another host: refused.
        assert_eq!(key.open_file(Kind::Artifact, "digest-b", &file), None);
        assert_eq!(key.open_file(Kind::NativeCode, "digest-a", &file), None);
        let other = IntegrityKey::derive(b"another host's secret");
        assert_eq!(other.open_file(Kind::Artifact, "digest-a", &file), None);
    }

    #[test]
    fn a_flipped_byte_a_truncation_or_a_bare_file_is_refused() {
        let key = IntegrityKey::derive(b"a secret of the host");
        let file = key.seal_into_file(Kind::NativeCode, "x", b"native code");
        for i in 0..file.len() {
            let mut tampered = file.clone();
            tampered[i] ^= 1;
            assert_eq!(
                key.open_file(Kind::NativeCode, "x", &tampered),
                None,
                "byte {i}"
            );
        }
        assert_eq!(
            key.open_file(Kind::NativeCode, "x", &file[..file.len() - 1]),
            None
        );
        assert_eq!(key.open_file(Kind::NativeCode, "x", b"native code"), None);
        assert_eq!(key.open_file(Kind::NativeCode, "x", b""), None);
    }

    #[test]
    fn derived_keys_are_stable_and_random_keys_are_not() {
        let a = IntegrityKey::derive(b"s");
        let b = IntegrityKey::derive(b"s");
        assert_eq!(
            a.seal(Kind::Artifact, "n", b"p"),
            b.seal(Kind::Artifact, "n", b"p")
        );
        let c = IntegrityKey::default();
        assert_ne!(
            a.seal(Kind::Artifact, "n", b"p"),
            c.seal(Kind::Artifact, "n", b"p")
        );
        assert_eq!(format!("{a:?}"), "IntegrityKey(..)");
    }
}
