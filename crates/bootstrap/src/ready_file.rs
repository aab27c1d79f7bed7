//! Publishing bound addresses to a file.
//!
//! A service configured with port 0 lets the OS choose; tests and `scripts/run-local`
//! learn the real addresses from this file. It is written atomically (temp file, then
//! rename) after every listener is bound, so its presence means "accepting connections".

use std::path::Path;

/// Writes `{"http":"127.0.0.1:41234",…}` to `path`.
pub fn write(path: &Path, addrs: &serde_json::Value) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(addrs)?)?;
    std::fs::rename(tmp, path)
}
