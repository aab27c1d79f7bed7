//! Password hashes in the format `mosquitto_passwd` writes (Mosquitto 2.x default):
//! `$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>`.
//!
//! Used for the broker's auth file users and for operator passwords (`operators` table).
//! Slow on purpose: run [`verify`] on a blocking thread (`tokio::task::spawn_blocking`).
//!
//! Why this format: a salted, iterated hash that existing tooling already produces
//! (`mosquitto_passwd -b file user pass`, or `lentera-broker hash-password`), and both
//! crates it needs (ring for PBKDF2 and constant-time comparison, base64) are already
//! compiled into the broker — argon2 or bcrypt would add crates for little gain here.
//! The iteration count is part of each hash: verification costs CPU at every CONNECT
//! (on tokio's blocking pool, see `file.rs`), so it is a trade between brute-force cost and
//! reconnect storms of many devices (Mosquitto writes 101; we write 10 000, ≈ 10–15 ms
//! on one core of a small VM).

use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::{pbkdf2, rand::SecureRandom};

/// Iterations [`hash`] uses.
pub const DEFAULT_ITERATIONS: u32 = 10_000;
const SALT_LEN: usize = 12;
const HASH_LEN: usize = 64;

/// A parsed `$7$` hash.
#[derive(Clone)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordHash($7$, {} iterations)", self.iterations)
    }
}

impl PasswordHash {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('$').collect();
        let ["", "7", iterations, salt, hash] = parts[..] else {
            return Err(if s.starts_with("$6$") {
                "a `$6$` (single salted SHA-512) hash: regenerate it with \
                 `mosquitto_passwd -H sha512-pbkdf2` or `lentera-broker hash-password`"
                    .into()
            } else {
                "not a `$7$<iterations>$<salt>$<hash>` PBKDF2-SHA512 hash".into()
            });
        };
        let iterations = iterations
            .parse::<NonZeroU32>()
            .map_err(|_| format!("bad iteration count {iterations:?}"))?;
        let salt = STANDARD.decode(salt).map_err(|e| format!("salt: {e}"))?;
        let hash = STANDARD.decode(hash).map_err(|e| format!("hash: {e}"))?;
        if salt.is_empty() || hash.len() != HASH_LEN {
            return Err(format!("expected a salt and a {HASH_LEN}-byte hash"));
        }
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }

    /// Constant-time comparison (ring's `pbkdf2::verify`).
    pub fn verify(&self, password: &[u8]) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA512,
            self.iterations,
            &self.salt,
            password,
            &self.hash,
        )
        .is_ok()
    }
}

/// A new `$7$` hash of `password` with a random salt and [`DEFAULT_ITERATIONS`].
pub fn hash(password: &str) -> String {
    hash_with(password.as_bytes(), DEFAULT_ITERATIONS)
}

/// True when `password` matches the `$7$` hash `stored`; false for a malformed hash too.
/// Constant-time in the password (ring's `pbkdf2::verify`).
pub fn verify(password: &[u8], stored: &str) -> bool {
    PasswordHash::parse(stored).is_ok_and(|h| h.verify(password))
}

/// A new `$7$` hash of `password` with a random salt and `iterations` (the broker's
/// `hash-password` and its tests choose their own count).
pub fn hash_with(password: &[u8], iterations: u32) -> String {
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    let mut salt = [0u8; SALT_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .expect("the operating system's random number generator works");
    let mut out = [0u8; HASH_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA512,
        iterations,
        &salt,
        password,
        &mut out,
    );
    format!(
        "$7${iterations}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(out)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_a_hash_written_by_mosquitto_passwd() {
        // `mosquitto_passwd -b -c pw alice secret` (Mosquitto 2.0.11).
        let h = PasswordHash::parse(
            "$7$101$BjeL9PwRH4oYVNJN$0HztaFEOBZWNwoUojLyhigaiCdYgxmNawPp8wPr6okLjMITIMs2NAiPVxDCHLQPLqIhxqIq/Szqf6dghzGtsZQ==",
        )
        .unwrap();
        assert!(h.verify(b"secret"));
        assert!(!h.verify(b"Secret"));
        assert!(!h.verify(b""));
    }

    #[test]
    fn our_hashes_round_trip_and_are_salted() {
        let a = hash_with(b"pw", 1000);
        let b = hash_with(b"pw", 1000);
        assert_ne!(a, b, "a fresh salt each time");
        assert!(a.starts_with("$7$1000$"));
        let h = PasswordHash::parse(&a).unwrap();
        assert!(h.verify(b"pw"));
        assert!(!h.verify(b"pw2"));
    }

    #[test]
    fn hash_and_verify_with_the_default_iterations() {
        let h = hash("correct horse");
        assert!(h.starts_with(&format!("$7${DEFAULT_ITERATIONS}$")));
        assert!(verify(b"correct horse", &h));
        assert!(!verify(b"correct horsE", &h));
        assert!(!verify(b"correct horse", "not a hash"));
        assert!(!format!("{:?}", PasswordHash::parse(&h).unwrap()).contains('='));
    }

    #[test]
    fn malformed_and_weak_hashes_are_refused() {
        for bad in [
            "secret",
            "$7$0$AAAA$AAAA",
            "$7$101$!!$AAAA",
            "$7$101$AAAA$AAAA",
            "$6$c2FsdA==$aGFzaA==",
        ] {
            assert!(PasswordHash::parse(bad).is_err(), "{bad}");
        }
    }
}
