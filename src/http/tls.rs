//! HTTPS certificates: the user's own, or a self-signed one made on first start and kept in the
//! state directory so the browser's one-time exception stays valid across restarts.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The certificate and key to serve (PEM), and where they came from.
pub struct Certs {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub origin: Origin,
}

pub enum Origin {
    /// `[http] tls_cert` / `tls_key`.
    Given(PathBuf),
    /// The self-signed one kept in the state directory from an earlier start.
    Kept(PathBuf),
    /// Made now and saved in the state directory.
    Made(PathBuf),
    /// Made now but it could not be saved: served for this run only. The text says why and
    /// what to do (for the log and `/api/settings`).
    Unsaved(String),
}

/// What the service writes in the state directory: only these two files.
pub const CERT_FILE: &str = "tls-cert.pem";
pub const KEY_FILE: &str = "tls-key.pem";

/// The certificate and key to serve: the user's (`cert`, `key`), or the self-signed pair kept
/// in `state_dir`, made there on first start. A state directory that cannot be written (full,
/// read-only, wrong owner) is not fatal: the pair is made for this run only and
/// [`Origin::Unsaved`] says so — HTTPS keeps working, browsers just ask again after a restart.
/// Only a user-given certificate that cannot be read is an error.
pub fn load_or_make(cert: &Path, key: &Path, state_dir: &Path) -> Result<Certs, String> {
    let given = !cert.as_os_str().is_empty() || !key.as_os_str().is_empty();
    if given {
        for (what, p) in [("http.tls_cert", cert), ("http.tls_key", key)] {
            if p.as_os_str().is_empty() {
                return Err(format!("{what} is empty: give both tls_cert and tls_key, or neither for a self-signed certificate"));
            }
        }
        let read = |what: &str, p: &Path| fs::read(p).map_err(|e| format!("{what}: cannot read {}: {e}", p.display()));
        return Ok(Certs { cert: read("http.tls_cert", cert)?, key: read("http.tls_key", key)?, origin: Origin::Given(cert.to_owned()) });
    }
    let (cert_path, key_path) = (state_dir.join(CERT_FILE), state_dir.join(KEY_FILE));
    if cert_path.exists() || key_path.exists() {
        match (fs::read(&cert_path), fs::read(&key_path)) {
            (Ok(c), Ok(k)) if looks_like_pair(&c, &k) => return Ok(Certs { cert: c, key: k, origin: Origin::Kept(cert_path) }),
            (c, k) => {
                // A write cut short (a full partition, power lost) must not stop HTTPS for good.
                let why = match (c, k) {
                    (Err(e), _) => format!("{}: {e}", cert_path.display()),
                    (_, Err(e)) => format!("{}: {e}", key_path.display()),
                    _ => "not a PEM certificate and key (a write cut short?)".to_string(),
                };
                log::warn!("the kept HTTPS certificate in {} is unusable ({why}); making a new one", state_dir.display());
            }
        }
    }
    Ok(make(state_dir))
}

/// A fresh self-signed pair, saved in `state_dir` if it can be (see [`Origin`]).
pub fn make(state_dir: &Path) -> Certs {
    let names = subject_names();
    let (cert, key) = match self_signed(&names) {
        Ok((c, k)) => (c.into_bytes(), k.into_bytes()),
        Err(e) => {
            // Cannot happen with rcgen's own key generation; if it does, say so and go on with
            // a minimal name list.
            log::error!("{e}; retrying with the name \"localhost\" alone");
            match self_signed(&["localhost".to_string()]) {
                Ok((c, k)) => (c.into_bytes(), k.into_bytes()),
                Err(e) => return Certs { cert: Vec::new(), key: Vec::new(), origin: Origin::Unsaved(e) },
            }
        }
    };
    let origin = match save(state_dir, &cert, &key) {
        Ok(path) => {
            log::info!("made a self-signed certificate for {} in {}", names.join(", "), path.display());
            Origin::Made(path)
        }
        Err(e) => Origin::Unsaved(e.to_string()),
    };
    Certs { cert, key, origin }
}

fn looks_like_pair(cert: &[u8], key: &[u8]) -> bool {
    let has = |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    has(cert, "-----BEGIN CERTIFICATE-----") && has(cert, "-----END CERTIFICATE-----")
        && has(key, "PRIVATE KEY-----") && has(key, "-----END ")
}

/// Why the certificate could not be kept, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("cannot keep the self-signed HTTPS certificate in {path}: {source}. {hint} HTTPS keeps working with a certificate made for this run only, so browsers will ask to trust the device again after each restart")]
pub struct SaveError {
    path: String,
    source: std::io::Error,
    hint: String,
}

impl SaveError {
    fn new(path: &Path, dir: &Path, source: std::io::Error) -> Self {
        let d = dir.display();
        let hint = match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => format!("The state partition is full: free space in {d} (or set [http] state_dir to a directory with room), then restart peercam."),
            Some(libc::EROFS) => format!("{d} is on a read-only file system: remount it read-write (or set [http] state_dir to a writable directory), then restart peercam."),
            Some(libc::EACCES) | Some(libc::EPERM) => format!("The service user may not write there: give it {d} (systemd's StateDirectory= does), then restart peercam."),
            _ => format!("Check {d} (or set [http] state_dir), then restart peercam."),
        };
        SaveError { path: path.display().to_string(), source, hint }
    }
}

/// Writes the pair through temporary files renamed into place, key first: a full or read-only
/// partition leaves either the old pair or none, never half a file that would be loaded next time.
fn save(dir: &Path, cert: &[u8], key: &[u8]) -> Result<PathBuf, SaveError> {
    fs::create_dir_all(dir).map_err(|e| SaveError::new(dir, dir, e))?;
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let (cert_tmp, key_tmp) = (dir.join(format!(".{CERT_FILE}.new")), dir.join(format!(".{KEY_FILE}.new")));
    let result = (|| {
        write_private(&key_tmp, key).map_err(|e| SaveError::new(&key_tmp, dir, e))?;
        write_private(&cert_tmp, cert).map_err(|e| SaveError::new(&cert_tmp, dir, e))?;
        fs::rename(&key_tmp, &key_path).map_err(|e| SaveError::new(&key_path, dir, e))?;
        fs::rename(&cert_tmp, &cert_path).map_err(|e| SaveError::new(&cert_path, dir, e))?;
        Ok(cert_path.clone())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&key_tmp);
        let _ = fs::remove_file(&cert_tmp);
    }
    result
}

/// Hostname, `<hostname>.local`, localhost and every interface address.
pub fn subject_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Some(host) = hostname() {
        names.push(format!("{host}.local"));
        names.push(host);
    }
    names.push("localhost".into());
    if let Ok(ifaces) = if_addrs::get_if_addrs() {
        for i in ifaces {
            let ip = i.ip().to_string();
            if !names.contains(&ip) {
                names.push(ip);
            }
        }
    }
    names
}

pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// A self-signed certificate (ECDSA P-256) for `names`; returns (cert PEM, key PEM).
pub fn self_signed(names: &[String]) -> Result<(String, String), String> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| format!("cannot make a certificate for {names:?}: {e}"))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_else(|| "peercam".into()));
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "peercam (self-signed)");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params.self_signed(&key).map_err(|e| format!("cannot sign the certificate: {e}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    // On the disk before the rename makes it the kept one.
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("peercam-tls-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn generated_once_then_reused() {
        let dir = tmpdir("reuse");
        let first = load_or_make(Path::new(""), Path::new(""), &dir).unwrap();
        assert!(matches!(first.origin, Origin::Made(_)));
        let pem = fs::read(dir.join(CERT_FILE)).unwrap();
        assert_eq!(pem, first.cert);
        assert!(String::from_utf8_lossy(&pem).contains("BEGIN CERTIFICATE"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
        let again = load_or_make(Path::new(""), Path::new(""), &dir).unwrap();
        assert!(matches!(again.origin, Origin::Kept(_)));
        assert_eq!(again.cert, pem, "stable across restarts");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_truncated_kept_certificate_is_replaced() {
        let dir = tmpdir("trunc");
        load_or_make(Path::new(""), Path::new(""), &dir).unwrap();
        fs::write(dir.join(CERT_FILE), b"").unwrap();
        let c = load_or_make(Path::new(""), Path::new(""), &dir).unwrap();
        assert!(matches!(c.origin, Origin::Made(_)));
        assert!(looks_like_pair(&fs::read(dir.join(CERT_FILE)).unwrap(), &fs::read(dir.join(KEY_FILE)).unwrap()));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_state_dir_still_gives_a_certificate_and_says_what_to_do() {
        // A file where the directory should be: creating the directory fails.
        let dir = tmpdir("blocked");
        fs::write(&dir, b"x").unwrap();
        let c = load_or_make(Path::new(""), Path::new(""), &dir.join("sub")).unwrap();
        match &c.origin {
            Origin::Unsaved(why) => assert!(why.contains(&dir.display().to_string()) && why.contains("restart"), "{why}"),
            _ => panic!("expected Unsaved"),
        }
        assert!(looks_like_pair(&c.cert, &c.key));
        let _ = fs::remove_file(&dir);
    }

    #[test]
    fn half_given_or_missing_files_are_clear_errors() {
        let e = load_or_make(Path::new("/etc/none.pem"), Path::new(""), Path::new("/tmp")).err().unwrap();
        assert!(e.contains("tls_key"), "{e}");
        let e = load_or_make(Path::new("/nonexistent/c.pem"), Path::new("/nonexistent/k.pem"), Path::new("/tmp")).err().unwrap();
        assert!(e.contains("/nonexistent/c.pem"), "{e}");
    }

    #[test]
    fn names_include_localhost() {
        assert!(subject_names().iter().any(|n| n == "localhost"));
    }
}
