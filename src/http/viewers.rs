//! Viewer tokens: what a remote viewer (a PeerJS call or data connection through an external
//! PeerServer, docs/remote.md) puts in its `metadata.token` to prove who it is.
//!
//! Made, listed and revoked through the API (`/api/viewer-tokens`, behind the login), kept in
//! `<state_dir>/viewer-tokens.json` as SHA-256 digests only (the token itself is shown once, at
//! creation), compared in constant time, never logged. A revoked token stops working at once:
//! new calls are refused, and the calls it opened end (each is tagged with the token's digest).
//! They are not API tokens: they open nothing but a viewer's call.

use super::auth::sha256;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use subtle::ConstantTimeEq;

/// Tokens kept at most; creating one more is refused (revoke some first).
pub const MAX_TOKENS: usize = 256;
/// Longest name (a label for the owner: "grandma's phone").
pub const MAX_NAME: usize = 64;
/// Longest token accepted for checking (ours are 64 hex digits).
pub const MAX_TOKEN_LEN: usize = 256;
const FILE: &str = "viewer-tokens.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub id: String,
    pub name: String,
    pub created_unix: u64,
    /// SHA-256 of the token, hex.
    sha256: String,
}

impl Entry {
    /// What the API lists (no digest).
    pub fn public_json(&self) -> serde_json::Value {
        serde_json::json!({ "id": self.id, "name": self.name, "created_unix": self.created_unix })
    }
}

pub struct ViewerTokens {
    path: Option<PathBuf>,
    entries: Mutex<Vec<(Entry, [u8; 32])>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let v: Option<Vec<u8>> = (0..64).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect();
    v?.try_into().ok()
}

impl ViewerTokens {
    /// Loads `<state_dir>/viewer-tokens.json` (none yet: no tokens). A damaged file is reported
    /// and leaves no token valid (the safe side) until the next change rewrites it.
    pub fn load(state_dir: &Path) -> Self {
        let path = state_dir.join(FILE);
        let entries = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                log::error!("viewer tokens: cannot read {}: {e}; no viewer token is valid", path.display());
                Vec::new()
            }
            Ok(bytes) => match serde_json::from_slice::<Vec<Entry>>(&bytes) {
                Ok(list) => list
                    .into_iter()
                    .take(MAX_TOKENS)
                    .filter_map(|e| unhex32(&e.sha256).map(|d| (e, d)))
                    .collect(),
                Err(e) => {
                    log::error!("viewer tokens: {} is damaged ({e}); no viewer token is valid", path.display());
                    Vec::new()
                }
            },
        };
        Self { path: Some(path), entries: Mutex::new(entries) }
    }

    /// A store that is never written (tests).
    pub fn in_memory() -> Self {
        Self { path: None, entries: Mutex::new(Vec::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Entry, [u8; 32])>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, entries: &[(Entry, [u8; 32])]) -> Result<(), String> {
        let Some(path) = &self.path else { return Ok(()) };
        let list: Vec<&Entry> = entries.iter().map(|(e, _)| e).collect();
        let text = serde_json::to_vec_pretty(&list).map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
            f.write_all(&text).and_then(|_| f.sync_all()).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
    }

    /// A new token named `name`: `(entry, token)`; the token is not kept, only its digest.
    pub fn create(&self, name: &str, now_unix: u64) -> Result<(Entry, String), String> {
        let name = name.trim();
        if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(format!("name: at most {MAX_NAME} characters, no control characters"));
        }
        let mut entries = self.lock();
        if entries.len() >= MAX_TOKENS {
            return Err(format!("{MAX_TOKENS} viewer tokens exist: revoke some first"));
        }
        let bytes: [u8; 32] = rand::random();
        let token = hex(&bytes);
        let digest = sha256(token.as_bytes());
        let id = loop {
            let b: [u8; 4] = rand::random();
            let id = format!("vt_{}", hex(&b));
            if !entries.iter().any(|(e, _)| e.id == id) {
                break id;
            }
        };
        let entry = Entry { id, name: if name.is_empty() { "viewer".into() } else { name.into() }, created_unix: now_unix, sha256: hex(&digest) };
        entries.push((entry.clone(), digest));
        if let Err(e) = self.save(&entries) {
            entries.pop();
            return Err(e);
        }
        Ok((entry, token))
    }

    pub fn list(&self) -> Vec<Entry> {
        self.lock().iter().map(|(e, _)| e.clone()).collect()
    }

    /// Revokes token `id`: its digest (the owner tag of the calls it opened), `None` if unknown.
    pub fn revoke(&self, id: &str) -> Result<Option<[u8; 32]>, String> {
        let mut entries = self.lock();
        let Some(i) = entries.iter().position(|(e, _)| e.id == id) else { return Ok(None) };
        let removed = entries.remove(i);
        if let Err(e) = self.save(&entries) {
            // Not written: it would come back at the next start. Say so; keep it revoked now.
            log::error!("viewer tokens: revoked {id} but could not save: {e}");
            return Err(e);
        }
        Ok(Some(removed.1))
    }

    /// The digest of a valid token (the tag its calls carry); `None`: unknown or revoked.
    /// Every entry is compared, in constant time.
    pub fn check(&self, token: &str) -> Option<[u8; 32]> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let digest = sha256(token.as_bytes());
        let mut found = None;
        for (_, d) in self.lock().iter() {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(*d);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_check_revoke_and_persist() {
        let dir = std::env::temp_dir().join(format!("peercam-vt-{}", rand::random::<u32>()));
        let store = ViewerTokens::load(&dir);
        let (a, token_a) = store.create("grandma", 100).unwrap();
        let (_, token_b) = store.create("", 101).unwrap();
        assert!(store.check(&token_a).is_some());
        assert!(store.check("nope").is_none());
        assert!(store.check("").is_none());
        assert!(store.check(&"x".repeat(10_000)).is_none());
        let text = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert!(!text.contains(&token_a) && !text.contains(&token_b), "tokens are stored hashed only");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.join(FILE)).unwrap().permissions().mode() & 0o777, 0o600);
        // a restart keeps them
        let again = ViewerTokens::load(&dir);
        assert!(again.check(&token_a).is_some() && again.check(&token_b).is_some());
        assert_eq!(again.list().len(), 2);
        assert_eq!(again.list()[1].name, "viewer");
        // revoked: gone now and after a restart
        assert_eq!(again.revoke(&a.id).unwrap(), Some(sha256(token_a.as_bytes())));
        assert!(again.check(&token_a).is_none());
        assert_eq!(again.revoke(&a.id).unwrap(), None);
        assert!(ViewerTokens::load(&dir).check(&token_a).is_none());
        assert!(ViewerTokens::load(&dir).check(&token_b).is_some());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bounded_and_names_checked() {
        let store = ViewerTokens::in_memory();
        assert!(store.create(&"n".repeat(MAX_NAME + 1), 0).is_err());
        assert!(store.create("bad\nname", 0).is_err());
        for _ in 0..MAX_TOKENS {
            store.create("x", 0).unwrap();
        }
        assert!(store.create("one more", 0).is_err());
    }

    #[test]
    fn a_damaged_file_leaves_no_token_valid() {
        let dir = std::env::temp_dir().join(format!("peercam-vt-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE), b"{not json").unwrap();
        let store = ViewerTokens::load(&dir);
        assert!(store.list().is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }
}
