//! Password hashes of the auth file's users: `lentera_auth::password`, re-exported
//! (the `$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>` format
//! `mosquitto_passwd` writes; the same hashes the platform's operators get).
//! `lentera-broker hash-password` prints one.

pub use lentera_auth::password::*;
