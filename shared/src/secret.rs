//! Random secrets and the digests we store in their place.
//!
//! Session ids, tickets and API keys are 256-bit values from the thread-local
//! CSPRNG (ChaCha, seeded from the OS). Only their SHA-256 is ever stored, so a
//! leaked database or Redis dump does not hand out working credentials. SHA-256
//! (not argon2) is right here: the inputs are uniformly random 256-bit values, so
//! there is nothing to brute-force, and verification stays a microsecond.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use std::fmt;

/// Length of [`random_token`] output: 32 bytes in unpadded base64url.
pub const TOKEN_LEN: usize = 43;

/// A fresh 256-bit secret, encoded as 43 base64url characters (cookie- and URL-safe).
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `s` could be a [`random_token`]; lets callers reject garbage
/// without a Redis or database round trip. Only the canonical encoding of 32
/// bytes passes: 43 base64url characters are 258 bits, and a last character
/// whose two spare bits are set is not something [`random_token`] writes.
pub fn looks_like_token(s: &str) -> bool {
    // Room for the decoder's estimate (33 bytes for 43 characters).
    let mut bytes = [0u8; 33];
    s.len() == TOKEN_LEN
        && URL_SAFE_NO_PAD
            .decode_slice(s, &mut bytes)
            .is_ok_and(|n| n == 32)
}

/// The SHA-256 digest of a secret: what Postgres stores and what Redis keys are named after.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        let mut hex = String::with_capacity(64);
        self.push_hex(&mut hex);
        hex
    }

    /// Appends the lowercase hex form (what [`Self::to_hex`] returns) to `out`.
    pub fn push_hex(&self, out: &mut String) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for byte in self.0 {
            out.push(char::from(DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
        }
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", &self.to_hex()[..12])
    }
}

/// A secret string whose `Debug` output is redacted, so it cannot end up in a
/// log line through `?value` or an error's debug print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself; call sites that need it are few and deliberate.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_exposed(self) -> String {
        self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_hex_is_the_hex_form() {
        let hash = TokenHash::from_bytes(std::array::from_fn(|i| (i * 37) as u8));
        let mut out = String::from("x:");
        hash.push_hex(&mut out);
        assert_eq!(out, format!("x:{}", hex::encode(hash.as_bytes())));
        assert_eq!(hash.to_hex(), hex::encode(hash.as_bytes()));
        assert_eq!(TokenHash::of("a").to_hex().len(), 64);
    }

    #[test]
    fn tokens_are_unique_and_well_formed() {
        let a = random_token();
        let b = random_token();
        assert_ne!(a, b);
        assert!(looks_like_token(&a), "{a}");
        assert!(!looks_like_token("short"));
        assert!(!looks_like_token(&format!("{}!", &a[..42])));
    }

    #[test]
    fn only_the_canonical_encoding_looks_like_a_token() {
        // Found by the session_cookie fuzz target: the last of 43 characters
        // carries 4 bits of the 32 bytes; its 2 spare bits must be zero.
        let token = random_token();
        let canonical = format!("{}A", &token[..42]);
        let spare_bit_set = format!("{}B", &token[..42]);
        assert!(looks_like_token(&canonical));
        assert!(!looks_like_token(&spare_bit_set));
        assert!(!looks_like_token(&format!("{}=", &token[..42])));
        assert!(!looks_like_token(&format!("{}+", &token[..42])));
    }

    #[test]
    fn hash_is_sha256_and_debug_is_short() {
        let h = TokenHash::of("abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(format!("{h:?}"), "TokenHash(ba7816bf8f01)");
        assert_eq!(
            format!("{:?}", Secret::new("x".into())),
            "Secret([REDACTED])"
        );
    }
}
