//! HTTPS certificates: the user's own, or a self-signed one made on first start and kept in the
//! state directory so the browser's one-time exception stays valid across restarts.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub generated: bool,
}

/// Returns the certificate and key to serve, generating them in `state_dir` if none are given.
pub fn cert_files(cert: &Path, key: &Path, state_dir: &Path) -> Result<CertFiles, String> {
    let given = !cert.as_os_str().is_empty() || !key.as_os_str().is_empty();
    if given {
        for (what, p) in [("http.tls_cert", cert), ("http.tls_key", key)] {
            if p.as_os_str().is_empty() {
                return Err(format!("{what} is empty: give both tls_cert and tls_key, or neither for a self-signed certificate"));
            }
        }
        for (what, p) in [("http.tls_cert", cert), ("http.tls_key", key)] {
            if !p.is_file() {
                return Err(format!("{what}: cannot read {}", p.display()));
            }
        }
        return Ok(CertFiles { cert: cert.to_owned(), key: key.to_owned(), generated: false });
    }
    let cert = state_dir.join("tls-cert.pem");
    let key = state_dir.join("tls-key.pem");
    if cert.is_file() && key.is_file() {
        return Ok(CertFiles { cert, key, generated: false });
    }
    fs::create_dir_all(state_dir)
        .map_err(|e| format!("cannot create the state directory {}: {e}", state_dir.display()))?;
    let names = subject_names();
    let (cert_pem, key_pem) = self_signed(&names)?;
    write_private(&key, key_pem.as_bytes())?;
    fs::write(&cert, cert_pem).map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    log::info!("made a self-signed certificate for {} in {}", names.join(", "), cert.display());
    Ok(CertFiles { cert, key, generated: true })
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

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = std::env::temp_dir().join(format!("peercam-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = cert_files(Path::new(""), Path::new(""), &dir).unwrap();
        assert!(first.generated);
        let pem = fs::read_to_string(&first.cert).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&first.key).unwrap().permissions().mode() & 0o777, 0o600);
        let again = cert_files(Path::new(""), Path::new(""), &dir).unwrap();
        assert!(!again.generated);
        assert_eq!(fs::read_to_string(&again.cert).unwrap(), pem, "stable across restarts");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn half_given_or_missing_files_are_clear_errors() {
        let e = cert_files(Path::new("/etc/none.pem"), Path::new(""), Path::new("/tmp")).err().unwrap();
        assert!(e.contains("tls_key"), "{e}");
        let e = cert_files(Path::new("/nonexistent/c.pem"), Path::new("/nonexistent/k.pem"), Path::new("/tmp")).err().unwrap();
        assert!(e.contains("/nonexistent/c.pem"), "{e}");
    }

    #[test]
    fn names_include_localhost() {
        assert!(subject_names().iter().any(|n| n == "localhost"));
    }
}
