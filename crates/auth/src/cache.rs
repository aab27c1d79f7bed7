//! The registry's cache file: the last snapshot, so a door restarted during a PostgreSQL
//! outage still admits the devices it knew.
//!
//! JSON `{"version":1,"devices":[{"id":…,"kind":…,"hash":"<base64>"}]}`, mode 0600 (it
//! holds token hashes: not tokens, but nothing anyone else needs). Written to a temporary
//! file in the same directory and renamed over the old one, so a crash mid-write leaves
//! the previous cache, never half a file.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::Kind;

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    devices: Vec<Row>,
}

#[derive(Serialize, Deserialize)]
struct Row {
    id: String,
    kind: Kind,
    hash: String,
}

/// Writes `devices` (id, kind, token hash) to `path` atomically.
pub(crate) fn write(path: &Path, devices: &[(String, Kind, [u8; 32])]) -> std::io::Result<()> {
    let file = File {
        version: VERSION,
        devices: devices
            .iter()
            .map(|(id, kind, hash)| Row {
                id: id.clone(),
                kind: *kind,
                hash: STANDARD.encode(hash),
            })
            .collect(),
    };
    let json = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("cache_file has no file name"))?;
    let mut tmp_name = name.to_owned();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a cache written by [`write`]. Rows that do not parse are an error: a damaged
/// cache is ignored whole rather than trusted in part.
pub(crate) fn read(path: &Path) -> Result<Vec<(String, Kind, [u8; 32])>, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let file: File = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if file.version != VERSION {
        return Err(format!("unknown cache version {}", file.version));
    }
    file.devices
        .into_iter()
        .map(|r| {
            let hash: [u8; 32] = STANDARD
                .decode(&r.hash)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| format!("bad hash for device {:?}", r.id))?;
            Ok((r.id, r.kind, hash))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn round_trips_atomically_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("lentera-auth-cache-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registry.json");
        let rows = vec![
            ("gh-1".to_owned(), Kind::Greenhouse, [7u8; 32]),
            ("lamp-1".to_owned(), Kind::Lamp, [9u8; 32]),
        ];
        write(&path, &rows).unwrap();
        assert_eq!(read(&path).unwrap(), rows);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        write(&path, &rows[..1]).unwrap();
        assert_eq!(read(&path).unwrap(), rows[..1]);
        // Only the cache itself is left (no temporary files).
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::write(
            &path,
            b"{\"version\":1,\"devices\":[{\"id\":\"x\",\"kind\":\"lamp\",\"hash\":\"AA==\"}]}",
        )
        .unwrap();
        assert!(read(&path).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
