//! Who may see the room. Checked in one middleware in front of every route but the login page.
//!
//! - No password configured: loopback clients only (the device's owner setting it up);
//!   everyone else gets a page that says how to set one.
//! - Password configured: a login (Argon2 verify) gives a session cookie (HttpOnly, SameSite=Strict,
//!   Secure on HTTPS). Scripts and WHEP clients use `Authorization: Bearer <token>`: tokens from the
//!   config (stored as SHA-256) or minted for a logged-in session (`POST /api/token`, gone at
//!   logout). Optionally loopback clients are exempt.
//! - Failed logins from one address back off exponentially (429 + Retry-After).
//!
//! Secrets are only ever compared as SHA-256 digests in constant time, and never logged.

use crate::config::AuthConfig;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

pub const COOKIE: &str = "peercam_session";
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Bearer tokens alive per login (the oldest is retired first).
const MAX_TOKENS_PER_LOGIN: usize = 32;
/// Remembered failing addresses; a flood of addresses cannot grow this without bound.
const MAX_TRACKED_CLIENTS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No password is set and the client is not on the device itself.
    NeedsPasswordSetup,
    /// A password is set; the client has no valid session or token.
    NeedsLogin,
}

#[derive(Debug, PartialEq, Eq)]
pub enum LoginResult {
    /// The new session's cookie value.
    Ok(String),
    Wrong,
    /// Too many failures; try again after this long.
    TooMany(Duration),
    NoPasswordSet,
}

/// Which login something belongs to (a hash of its cookie: not a secret, not reversible).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginId([u8; 32]);

struct LoginSession {
    expires: Instant,
    tokens: Vec<[u8; 32]>,
}

#[derive(Default)]
struct Failures {
    count: u32,
    blocked_until: Option<Instant>,
}

pub struct Auth {
    password_hash: Option<String>,
    config_tokens: Vec<[u8; 32]>,
    loopback_exempt: bool,
    session_ttl: Duration,
    free_attempts: u32,
    /// Keyed by SHA-256 of the cookie value.
    sessions: Mutex<HashMap<[u8; 32], LoginSession>>,
    /// SHA-256 of a minted token → SHA-256 of the session it belongs to.
    minted: Mutex<HashMap<[u8; 32], [u8; 32]>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `peercam hash-password`: an Argon2id PHC string with a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// `peercam new-token`: a random token and its SHA-256 for `auth.token_sha256`.
pub fn new_token() -> (String, String) {
    let token = random_secret();
    let hash = sha256(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    (token, hash)
}

impl Auth {
    pub fn new(cfg: &AuthConfig) -> Self {
        Self {
            password_hash: (!cfg.password_hash.0.is_empty()).then(|| cfg.password_hash.0.clone()),
            config_tokens: cfg.token_sha256.iter().map(|t| t.0).collect(),
            loopback_exempt: cfg.loopback_exempt,
            session_ttl: Duration::from_secs(cfg.session_hours.get() as u64 * 3600),
            free_attempts: cfg.login_attempts_before_backoff.get(),
            sessions: Mutex::new(HashMap::new()),
            minted: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn session_ttl(&self) -> Duration {
        self.session_ttl
    }

    pub fn password_set(&self) -> bool {
        self.password_hash.is_some()
    }

    /// The access decision for one request.
    pub fn decide(&self, peer: IpAddr, cookie: Option<&str>, bearer: Option<&str>) -> Decision {
        let loopback = peer.is_loopback() || matches!(peer, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
        if !self.password_set() {
            return if loopback { Decision::Allow } else { Decision::NeedsPasswordSetup };
        }
        if loopback && self.loopback_exempt {
            return Decision::Allow;
        }
        if cookie.is_some_and(|c| self.session_valid(c)) || bearer.is_some_and(|t| self.token_valid(t)) {
            return Decision::Allow;
        }
        Decision::NeedsLogin
    }

    pub fn session_valid(&self, cookie: &str) -> bool {
        let key = sha256(cookie.as_bytes());
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.contains_key(&key)
    }

    pub fn token_valid(&self, token: &str) -> bool {
        let digest = sha256(token.as_bytes());
        // Constant time over every configured token: no early exit on a match.
        let mut found = subtle::Choice::from(0u8);
        for t in &self.config_tokens {
            found |= t.ct_eq(&digest);
        }
        if bool::from(found) {
            return true;
        }
        self.minted.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&digest)
    }

    /// Checks a password (slow by design: call from a blocking thread). The attempt is counted
    /// *before* the slow verification, so parallel guesses cannot slip past the backoff.
    pub fn login(&self, peer: IpAddr, password: &str) -> LoginResult {
        let Some(hash) = &self.password_hash else { return LoginResult::NoPasswordSet };
        let now = Instant::now();
        {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(until) = failures.get(&peer).and_then(|f| f.blocked_until) {
                if until > now {
                    return LoginResult::TooMany(until - now);
                }
            }
            if failures.len() >= MAX_TRACKED_CLIENTS && !failures.contains_key(&peer) {
                failures.retain(|_, f| f.blocked_until.is_some_and(|u| u > now));
            }
            let f = failures.entry(peer).or_default();
            f.count += 1;
            if f.count >= self.free_attempts {
                let exp = (f.count - self.free_attempts).min(16);
                let wait = Duration::from_secs(1u64 << exp).min(MAX_BACKOFF);
                f.blocked_until = Some(now + wait);
            }
        }
        let ok = PasswordHash::new(hash)
            .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false);
        if !ok {
            return LoginResult::Wrong;
        }
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&peer);
        let cookie = random_secret();
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(
            sha256(cookie.as_bytes()),
            LoginSession { expires: now + self.session_ttl, tokens: Vec::new() },
        );
        LoginResult::Ok(cookie)
    }

    /// Ends a login and every token minted for it. Returns the login's id (see
    /// [`Auth::login_of_token`]) so what was opened with its tokens can be closed too.
    pub fn logout(&self, cookie: &str) -> Option<LoginId> {
        let key = sha256(cookie.as_bytes());
        let removed = self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        let session = removed?;
        let mut minted = self.minted.lock().unwrap_or_else(|e| e.into_inner());
        for t in session.tokens {
            minted.remove(&t);
        }
        Some(LoginId(key))
    }

    /// The login a minted bearer token belongs to (`None` for config tokens and strangers).
    pub fn login_of_token(&self, token: &str) -> Option<LoginId> {
        let digest = sha256(token.as_bytes());
        self.minted.lock().unwrap_or_else(|e| e.into_inner()).get(&digest).copied().map(LoginId)
    }

    /// A bearer token for a logged-in session (the page uses it for WHEP).
    pub fn mint_token(&self, cookie: &str) -> Option<String> {
        let key = sha256(cookie.as_bytes());
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let session = sessions.get_mut(&key)?;
        let token = random_secret();
        let digest = sha256(token.as_bytes());
        let mut minted = self.minted.lock().unwrap_or_else(|e| e.into_inner());
        // Every page load mints one; a login kept for weeks must not collect them forever.
        if session.tokens.len() >= MAX_TOKENS_PER_LOGIN {
            let oldest = session.tokens.remove(0);
            minted.remove(&oldest);
        }
        session.tokens.push(digest);
        minted.insert(digest, key);
        Some(token)
    }
}

/// The value of one cookie from a `Cookie:` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').map(str::trim).find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The `Set-Cookie` value for a new login.
pub fn session_cookie(value: &str, secure: bool, max_age: Duration) -> String {
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

pub fn clear_cookie(secure: bool) -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}", if secure { "; Secure" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PasswordHash as Phc, TokenHash};

    fn lan() -> IpAddr {
        "192.168.1.20".parse().unwrap()
    }
    fn lo() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    fn with_password(pw: &str) -> Auth {
        let mut cfg = AuthConfig::default();
        cfg.password_hash = Phc(hash_password(pw).unwrap());
        Auth::new(&cfg)
    }

    #[test]
    fn without_password_only_loopback_gets_in() {
        let a = Auth::new(&AuthConfig::default());
        assert_eq!(a.decide(lo(), None, None), Decision::Allow);
        assert_eq!(a.decide("::1".parse().unwrap(), None, None), Decision::Allow);
        assert_eq!(a.decide(lan(), None, None), Decision::NeedsPasswordSetup);
        assert_eq!(a.login(lan(), "x"), LoginResult::NoPasswordSet);
    }

    #[test]
    fn login_session_token_logout() {
        let a = with_password("correct horse");
        assert_eq!(a.decide(lo(), None, None), Decision::NeedsLogin, "loopback not exempt by default");
        assert_eq!(a.login(lan(), "wrong"), LoginResult::Wrong);
        let LoginResult::Ok(cookie) = a.login(lan(), "correct horse") else { panic!() };
        assert_eq!(a.decide(lan(), Some(&cookie), None), Decision::Allow);
        assert_eq!(a.decide(lan(), Some("forged"), None), Decision::NeedsLogin);
        let token = a.mint_token(&cookie).unwrap();
        assert_eq!(a.decide(lan(), None, Some(&token)), Decision::Allow);
        a.logout(&cookie);
        assert_eq!(a.decide(lan(), Some(&cookie), None), Decision::NeedsLogin);
        assert_eq!(a.decide(lan(), None, Some(&token)), Decision::NeedsLogin, "token dies with its session");
        assert!(a.mint_token(&cookie).is_none());
    }

    #[test]
    fn a_login_keeps_a_bounded_number_of_tokens() {
        let a = with_password("pw");
        let LoginResult::Ok(cookie) = a.login(lan(), "pw") else { panic!() };
        let first = a.mint_token(&cookie).unwrap();
        let mut last = String::new();
        for _ in 0..MAX_TOKENS_PER_LOGIN {
            last = a.mint_token(&cookie).unwrap();
        }
        assert!(!a.token_valid(&first), "the oldest token is retired");
        assert!(a.token_valid(&last));
        assert_eq!(a.minted.lock().unwrap().len(), MAX_TOKENS_PER_LOGIN);
    }

    #[test]
    fn configured_tokens_are_checked_by_hash() {
        let (token, hash) = new_token();
        let mut cfg = AuthConfig::default();
        cfg.password_hash = Phc(hash_password("pw").unwrap());
        cfg.token_sha256 = vec![TokenHash::try_from(hash).unwrap()];
        let a = Auth::new(&cfg);
        assert_eq!(a.decide(lan(), None, Some(&token)), Decision::Allow);
        assert_eq!(a.decide(lan(), None, Some("nope")), Decision::NeedsLogin);
    }

    #[test]
    fn repeated_failures_back_off_per_client() {
        let a = with_password("pw");
        assert_eq!(a.login(lan(), "bad"), LoginResult::Wrong);
        assert_eq!(a.login(lan(), "bad"), LoginResult::Wrong);
        // The third failure starts the backoff at once (counted before verifying).
        assert_eq!(a.login(lan(), "bad"), LoginResult::Wrong);
        assert!(matches!(a.login(lan(), "pw"), LoginResult::TooMany(_)), "even the right password waits");
        let other: IpAddr = "192.168.1.21".parse().unwrap();
        assert!(matches!(a.login(other, "pw"), LoginResult::Ok(_)), "other clients are not affected");
    }

    #[test]
    fn loopback_exemption_is_opt_in() {
        let mut cfg = AuthConfig::default();
        cfg.password_hash = Phc(hash_password("pw").unwrap());
        cfg.loopback_exempt = true;
        let a = Auth::new(&cfg);
        assert_eq!(a.decide(lo(), None, None), Decision::Allow);
        assert_eq!(a.decide(lan(), None, None), Decision::NeedsLogin);
    }

    #[test]
    fn cookie_parsing_and_flags() {
        assert_eq!(cookie_value("a=1; peercam_session=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie_value("a=1", COOKIE), None);
        let c = session_cookie("v", true, Duration::from_secs(60));
        for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(c.contains(flag), "{c}");
        }
    }
}
