//! Secret tokens: device tokens, operator API tokens and dashboard session cookies.
//!
//! A token is `lt_` + base64url (no padding) of 24 random bytes (192 bits) from the
//! operating system. Only [`hash`] of it is stored: HMAC-SHA-256 under a fixed context
//! key. For a secret that random a fast keyed hash is as safe as a slow one (nobody can
//! enumerate 2^192 candidates), it keeps a reconnect storm of thousands of boards cheap,
//! and, unsalted, it lets a door find a device from its token alone by an index lookup.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The prefix of every token: recognisable in a config file and by secret scanners.
pub const PREFIX: &str = "lt_";
/// Random bytes in a token.
pub const RANDOM_BYTES: usize = 24;
/// The HMAC key: a version tag, so another scheme could coexist later.
const CONTEXT_KEY: &[u8] = b"lentera/token/v1";

/// A fresh token (`lt_` + 32 base64url characters).
pub fn generate() -> String {
    let mut bytes = [0u8; RANDOM_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random number generator works");
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// HMAC-SHA-256 of `token` under the context key: what the database stores.
pub fn hash(token: &str) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, CONTEXT_KEY);
    let tag = hmac::sign(&key, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// True when `s` has the shape of a token. Cheap pre-filter only: a well-formed
/// string is still unknown until its hash is found.
pub fn looks_like_token(s: &str) -> bool {
    s.len() == PREFIX.len() + 32
        && s.starts_with(PREFIX)
        && s[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_well_formed() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with("lt_"), "{a}");
        assert_eq!(a.len(), 3 + 32);
        assert!(looks_like_token(&a));
        assert!(!looks_like_token("lt_short"));
        assert!(!looks_like_token(&a.replace("lt_", "xx_")));
    }

    #[test]
    fn hash_is_a_stable_keyed_hmac() {
        let t = generate();
        assert_eq!(hash(&t), hash(&t));
        assert_ne!(hash(&t), hash(&generate()));
        // Keyed: not the plain SHA-256 of the token.
        let plain = ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
        assert_ne!(&hash(&t)[..], plain.as_ref());
        // A fixed vector, so a change of key or scheme cannot go unnoticed.
        let known = hash("lt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        let expected = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"lentera/token/v1"),
            b"lt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        );
        assert_eq!(&known[..], expected.as_ref());
    }
}
