//! Who may see the room. Checked in one middleware in front of every route but the login page.
//!
//! - No password configured: loopback clients only (the device's owner setting it up);
//!   everyone else gets a page that says how to set one.
//! - Password configured: a login (Argon2 verify) gives a session cookie (HttpOnly, SameSite=Strict,
//!   Secure on HTTPS). Scripts and WHEP clients use `Authorization: Bearer <token>`: tokens from the
//!   config (stored as SHA-256) or minted for a logged-in session (`POST /api/token`, gone at
//!   logout). Optionally loopback clients are exempt.
//! - Loopback trust (no password, or `loopback_exempt`) needs a `Host:` that names this machine
//!   (an IP literal or `localhost`): a web page whose own name an attacker re-pointed at 127.0.0.1
//!   (DNS rebinding) sends its own name and gets nothing.
//! - Failed logins from one client back off exponentially (429 + Retry-After); an IPv6 client is
//!   its /64 (a host can rotate through 2^64 addresses). All clients together get a budget of
//!   `GLOBAL_FAILURES` failures per `GLOBAL_WINDOW`, so many addresses cannot guess in parallel.
//!
//! Secrets are only ever compared as SHA-256 digests in constant time, and never logged.

use crate::config::AuthConfig;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};
use crate::signal::Owner;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The session cookie over plain HTTP (localhost only in practice).
pub const COOKIE: &str = "peercam_session";
/// The session cookie over HTTPS: the `__Host-` prefix makes the browser refuse it unless it is
/// Secure, for `Path=/` and without `Domain`, so no sibling host or plain-HTTP page can plant one.
pub const COOKIE_TLS: &str = "__Host-peercam_session";
/// Failed logins over all clients allowed per window; beyond it everyone waits.
pub const GLOBAL_FAILURES: usize = 30;
pub const GLOBAL_WINDOW: Duration = Duration::from_secs(60);
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

impl LoginId {
    /// The same login as the lower layers' opaque owner tag.
    pub fn owner(self) -> Owner {
        Owner(self.0)
    }

    /// 8 hex digits of the id: names a login in logs (e.g. a TURN username) without revealing it.
    pub fn short(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl From<Owner> for LoginId {
    fn from(o: Owner) -> Self {
        LoginId(o.0)
    }
}

/// The key failed logins are counted under: the address, or for IPv6 its /64 (IPv4-mapped
/// IPv6 addresses count as the IPv4 address).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Whether a `Host:` header value names this machine in a way no DNS answer can fake: an IP
/// literal (v4, or v6 in brackets), `localhost` / `*.localhost` (RFC 6761: never sent to DNS
/// by browsers), or one of `own_names` (the device's hostname and `<hostname>.local`: a
/// rebinding page carries the attacker's name, not the device's), with an optional port.
pub fn host_is_local(host: &str, own_names: &[String]) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok()) => {
                return v6.parse::<Ipv6Addr>().is_ok();
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || own_names.iter().any(|n| n.eq_ignore_ascii_case(&name))
}

/// The names [`host_is_local`] accepts besides IP literals and localhost: this machine's
/// hostname and `<hostname>.local`.
pub fn own_names() -> Vec<String> {
    match crate::http::tls::hostname() {
        Some(h) if !h.is_empty() => vec![h.to_ascii_lowercase(), format!("{}.local", h.to_ascii_lowercase())],
        _ => Vec::new(),
    }
}

/// `rtc` tags a session with the login that opened it without knowing what a login is.
impl From<LoginId> for crate::rtc::session::OwnerTag {
    fn from(l: LoginId) -> Self {
        crate::rtc::session::OwnerTag::new(l.0)
    }
}

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
    /// When the recent failures (all clients) happened, oldest first; at most `GLOBAL_FAILURES`.
    global_failures: Mutex<VecDeque<Instant>>,
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
            global_failures: Mutex::new(VecDeque::new()),
        }
    }

    pub fn session_ttl(&self) -> Duration {
        self.session_ttl
    }

    pub fn password_set(&self) -> bool {
        self.password_hash.is_some()
    }

    /// The access decision for one request. `host_local`: the request's `Host` names this
    /// machine ([`host_is_local`]); without it a loopback client gets no loopback trust.
    pub fn decide(&self, peer: IpAddr, host_local: bool, cookie: Option<&str>, bearer: Option<&str>) -> Decision {
        let loopback_peer = peer.is_loopback() || matches!(peer, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
        let loopback = loopback_peer && host_local;
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
        self.login_of_cookie(cookie).is_some()
    }

    /// The login of a valid session cookie. Expired logins are forgotten here, with their
    /// minted tokens.
    pub fn login_of_cookie(&self, cookie: &str) -> Option<LoginId> {
        let key = sha256(cookie.as_bytes());
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let expired: Vec<[u8; 32]> = sessions.iter().filter(|(_, s)| s.expires <= now).map(|(k, _)| *k).collect();
        if !expired.is_empty() {
            let mut minted = self.minted.lock().unwrap_or_else(|e| e.into_inner());
            for k in expired {
                if let Some(s) = sessions.remove(&k) {
                    for t in s.tokens {
                        minted.remove(&t);
                    }
                }
            }
        }
        sessions.contains_key(&key).then_some(LoginId(key))
    }

    /// The login a request's credentials belong to: its session cookie, else a minted token.
    pub fn login_of(&self, cookie: Option<&str>, bearer: Option<&str>) -> Option<LoginId> {
        cookie.and_then(|c| self.login_of_cookie(c)).or_else(|| bearer.and_then(|t| self.login_of_token(t)))
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
        self.login_of_token(token).is_some()
    }

    /// Checks a password (slow by design: call from a blocking thread). The attempt is counted
    /// *before* the slow verification, so parallel guesses cannot slip past the backoff.
    pub fn login(&self, peer: IpAddr, password: &str) -> LoginResult {
        let Some(hash) = &self.password_hash else { return LoginResult::NoPasswordSet };
        let now = Instant::now();
        {
            let peer = client_key(peer);
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(until) = failures.get(&peer).and_then(|f| f.blocked_until) {
                if until > now {
                    return LoginResult::TooMany(until - now);
                }
            }
            let mut global = self.global_failures.lock().unwrap_or_else(|e| e.into_inner());
            while global.front().is_some_and(|t| now.duration_since(*t) >= GLOBAL_WINDOW) {
                global.pop_front();
            }
            if global.len() >= GLOBAL_FAILURES {
                let oldest = *global.front().expect("non-empty");
                return LoginResult::TooMany((oldest + GLOBAL_WINDOW).saturating_duration_since(now));
            }
            // Counted as a failure until the password turns out right.
            global.push_back(now);
            drop(global);
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
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&client_key(peer));
        {
            let mut global = self.global_failures.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = global.iter().rposition(|t| *t == now) {
                global.remove(i);
            }
        }
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

    /// The login a minted bearer token belongs to (`None` for config tokens and strangers, and
    /// once that login has expired: a minted token never outlives its login).
    pub fn login_of_token(&self, token: &str) -> Option<LoginId> {
        let digest = sha256(token.as_bytes());
        let key = self.minted.lock().unwrap_or_else(|e| e.into_inner()).get(&digest).copied()?;
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let alive = sessions.get(&key).is_some_and(|s| s.expires > Instant::now());
        drop(sessions);
        if !alive {
            self.minted.lock().unwrap_or_else(|e| e.into_inner()).remove(&digest);
            return None;
        }
        Some(LoginId(key))
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

/// The session cookie's name: `__Host-` prefixed over HTTPS.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { COOKIE_TLS } else { COOKIE }
}

/// The `Set-Cookie` value for a new login.
pub fn session_cookie(value: &str, secure: bool, max_age: Duration) -> String {
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        cookie_name(secure),
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

pub fn clear_cookie(secure: bool) -> String {
    format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}", cookie_name(secure), if secure { "; Secure" } else { "" })
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
        assert_eq!(a.decide(lo(), true, None, None), Decision::Allow);
        assert_eq!(a.decide("::1".parse().unwrap(), true, None, None), Decision::Allow);
        assert_eq!(a.decide(lan(), true, None, None), Decision::NeedsPasswordSetup);
        assert_eq!(a.login(lan(), "x"), LoginResult::NoPasswordSet);
    }

    #[test]
    fn login_session_token_logout() {
        let a = with_password("correct horse");
        assert_eq!(a.decide(lo(), true, None, None), Decision::NeedsLogin, "loopback not exempt by default");
        assert_eq!(a.login(lan(), "wrong"), LoginResult::Wrong);
        let LoginResult::Ok(cookie) = a.login(lan(), "correct horse") else { panic!() };
        assert_eq!(a.decide(lan(), true, Some(&cookie), None), Decision::Allow);
        assert_eq!(a.decide(lan(), true, Some("forged"), None), Decision::NeedsLogin);
        let token = a.mint_token(&cookie).unwrap();
        assert_eq!(a.decide(lan(), true, None, Some(&token)), Decision::Allow);
        a.logout(&cookie);
        assert_eq!(a.decide(lan(), true, Some(&cookie), None), Decision::NeedsLogin);
        assert_eq!(a.decide(lan(), true, None, Some(&token)), Decision::NeedsLogin, "token dies with its session");
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
        assert_eq!(a.decide(lan(), true, None, Some(&token)), Decision::Allow);
        assert_eq!(a.decide(lan(), true, None, Some("nope")), Decision::NeedsLogin);
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
        assert_eq!(a.decide(lo(), true, None, None), Decision::Allow);
        assert_eq!(a.decide(lan(), true, None, None), Decision::NeedsLogin);
    }

    #[test]
    fn minted_tokens_die_with_their_login() {
        let a = with_password("pw");
        let LoginResult::Ok(cookie) = a.login(lan(), "pw") else { panic!() };
        let token = a.mint_token(&cookie).unwrap();
        assert!(a.token_valid(&token));
        // The login expires (as after session_hours): the token goes with it, even if the
        // cookie is never presented again.
        a.sessions.lock().unwrap().values_mut().for_each(|s| s.expires = Instant::now());
        assert!(!a.token_valid(&token), "a minted token outlived its login");
        assert_eq!(a.login_of_token(&token), None);
        assert_eq!(a.decide(lan(), true, None, Some(&token)), Decision::NeedsLogin);
    }

    #[test]
    fn ipv6_clients_back_off_per_64() {
        let a = with_password("pw");
        for i in 1..=3u16 {
            let ip: IpAddr = format!("2001:db8:1:2::{i}").parse().unwrap();
            assert_eq!(a.login(ip, "bad"), LoginResult::Wrong);
        }
        let next: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(matches!(a.login(next, "pw"), LoginResult::TooMany(_)), "same /64, same backoff");
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(matches!(a.login(other, "pw"), LoginResult::Ok(_)));
        assert_eq!(client_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn many_addresses_share_one_failure_budget() {
        let a = with_password("pw");
        let mut refused = 0;
        for i in 0..GLOBAL_FAILURES + 10 {
            let ip: IpAddr = format!("10.0.{}.{}", i / 200, i % 200 + 1).parse().unwrap();
            if matches!(a.login(ip, "bad"), LoginResult::TooMany(_)) {
                refused += 1;
            }
        }
        assert_eq!(refused, 10, "failures beyond the global budget wait");
    }

    #[test]
    fn loopback_trust_needs_a_local_host() {
        let a = Auth::new(&AuthConfig::default());
        assert_eq!(a.decide(lo(), false, None, None), Decision::NeedsPasswordSetup, "DNS rebinding");
        let own = vec!["peercam".to_string(), "peercam.local".to_string()];
        for h in ["127.0.0.1:8080", "localhost", "LOCALHOST:80", "cam.localhost", "[::1]:8080", "192.168.1.5", "localhost.", "peercam.local:8080", "PeerCam"] {
            assert!(host_is_local(h, &own), "{h}");
        }
        for h in ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "[::1", "localhost:x", "", "localhost.evil", "peercam.evil"] {
            assert!(!host_is_local(h, &own), "{h}");
        }
    }

    #[test]
    fn cookie_parsing_and_flags() {
        assert_eq!(cookie_value("a=1; peercam_session=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie_value("a=1", COOKIE), None);
        let c = session_cookie("v", true, Duration::from_secs(60));
        assert!(c.starts_with("__Host-peercam_session=v;"), "{c}");
        assert!(session_cookie("v", false, Duration::from_secs(60)).starts_with("peercam_session=v;"));
        for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(c.contains(flag), "{c}");
        }
    }
}
