//! Device keys for UDP frame authentication: the keys file
//! (`<device id> <hex key>` per line), read at start and on SIGHUP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Device keys: device id → HMAC key.
pub(crate) type Keys = HashMap<u32, Box<[u8]>>;

/// Why a keys file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file could not be read.
    #[error("cannot read keys file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not `<device id> <hex key>`.
    #[error("keys file {path}, line {line}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Reads a keys file: one `<device id> <hex key>` per line; blank lines and
/// lines starting with `#` are ignored.
pub(crate) fn load_keys(path: &Path) -> Result<Keys, KeysError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| KeysError::Io { path: path.into(), source })?;
    let mut keys = Keys::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |reason| KeysError::Syntax { path: path.into(), line: i + 1, reason };
        let mut parts = line.split_whitespace();
        let id: u32 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|id| *id != 0)
            .ok_or_else(|| syntax("expected a device id 1..=4294967295"))?;
        let key = parts
            .next()
            .and_then(|s| hex::decode(s).ok())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| syntax("expected the key as hex"))?;
        if parts.next().is_some() {
            return Err(syntax("unexpected text after the key"));
        }
        keys.insert(id, key.into_boxed_slice());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_syntax() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::write(&p, "# comment\n42 00ff\n\n7 abcd # trailing\n").unwrap();
        let e = load_keys(&p).unwrap_err().to_string();
        assert!(e.contains("line 4"), "{e}");
        std::fs::write(&p, "# comment\n42 00ff\n 7   abcd\n").unwrap();
        let k = load_keys(&p).unwrap();
        assert_eq!(k.get(&42).map(|k| k.to_vec()), Some(vec![0x00, 0xff]));
        assert_eq!(k.len(), 2);
        std::fs::write(&p, "0 00\n").unwrap();
        assert!(load_keys(&p).is_err());
    }
}
