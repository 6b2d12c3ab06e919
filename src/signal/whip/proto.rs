//! The pure parts of the WHIP client: URLs (the endpoint, the `Location` of the resource), what
//! the endpoint's reply means, and the log-once policy. No sockets here; unit-tested below.

use std::fmt;

/// An `http://` or `https://` URL split for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// Host as a socket address wants it (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as given, for the `Host` header.
    pub authority: String,
    /// Path and query (at least `/`).
    pub path_and_query: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("not an http:// or https:// URL".into());
        };
        let rest = rest.split('#').next().unwrap_or("");
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') {
            return Err("no host, or user info in the URL".into());
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or("an IPv6 host without ']'")?;
                match after.strip_prefix(':') {
                    Some(p) => (h, p.parse().map_err(|_| "a port that is not a number")?),
                    None if after.is_empty() => (h, default_port),
                    None => return Err("junk after the IPv6 host".into()),
                }
            }
            None => match authority.split_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| "a port that is not a number")?),
                None => (authority, default_port),
            },
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let path_and_query = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(Endpoint { tls, host: host.to_string(), port, authority: authority.to_string(), path_and_query })
    }

    /// `scheme://host[:port]`: what logs and `/api/settings` show (the path may be a stream key).
    pub fn origin(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.authority)
    }
}

/// Resolves a reference (a `Location` header) against the URL the request went to, as RFC 3986
/// §5.2 says (RFC 9725 §4.2: the `Location` may be relative). Fragments are dropped. Only
/// `http`/`https` results are accepted: the resource is deleted with the bearer token later.
pub fn resolve(base: &str, reference: &str) -> Result<String, String> {
    let b = split(base);
    let r = split(reference.trim());
    let (scheme, authority, path, query) = if let Some(s) = r.scheme {
        (s.to_ascii_lowercase(), r.authority.map(str::to_string), remove_dot_segments(r.path), r.query)
    } else {
        let scheme = b.scheme.ok_or("the base URL has no scheme")?.to_ascii_lowercase();
        if let Some(a) = r.authority {
            (scheme, Some(a.to_string()), remove_dot_segments(r.path), r.query)
        } else if r.path.is_empty() {
            (scheme, b.authority.map(str::to_string), b.path.to_string(), r.query.or(b.query))
        } else if r.path.starts_with('/') {
            (scheme, b.authority.map(str::to_string), remove_dot_segments(r.path), r.query)
        } else {
            let merged = match (b.authority.is_some() && b.path.is_empty(), b.path.rfind('/')) {
                (true, _) => format!("/{}", r.path),
                (false, Some(i)) => format!("{}{}", &b.path[..=i], r.path),
                (false, None) => r.path.to_string(),
            };
            (scheme, b.authority.map(str::to_string), remove_dot_segments(&merged), r.query)
        }
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("the resource URL's scheme {scheme:?} is not http or https"));
    }
    let authority = authority.filter(|a| !a.is_empty()).ok_or("the resource URL has no host")?;
    let path = if path.is_empty() { "/".to_string() } else { path };
    Ok(match query {
        Some(q) => format!("{scheme}://{authority}{path}?{q}"),
        None => format!("{scheme}://{authority}{path}"),
    })
}

struct Parts<'a> {
    scheme: Option<&'a str>,
    authority: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
}

/// RFC 3986 appendix B, by hand.
fn split(s: &str) -> Parts<'_> {
    let s = s.split('#').next().unwrap_or("");
    let (scheme, rest) = match s.find(':') {
        Some(i)
            if i > 0
                && s[..i].starts_with(|c: char| c.is_ascii_alphabetic())
                && s[..i].chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            (Some(&s[..i]), &s[i + 1..])
        }
        _ => (None, s),
    };
    let (authority, rest) = match rest.strip_prefix("//") {
        Some(r) => {
            let end = r.find(['/', '?']).unwrap_or(r.len());
            (Some(&r[..end]), &r[end..])
        }
        None => (None, rest),
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    Parts { scheme, authority, path, query }
}

/// RFC 3986 §5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let absolute = path.starts_with('/');
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > usize::from(absolute) {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if absolute && !joined.starts_with('/') { format!("/{joined}") } else { joined }
}

/// What the endpoint answered, as read off the wire (body bounded by the reader).
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub body: String,
}

/// A reply to the POST that is not a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// `201 Created`: the resource (absolute URL) and the SDP answer.
    Created { resource: String, answer: String },
    /// `307`/`308`: POST the offer again to this absolute URL.
    Redirect(String),
}

/// Why a publication could not be made or kept. `origin` is `scheme://host[:port]` only.
#[derive(Debug, thiserror::Error)]
pub enum WhipError {
    #[error("cannot reach the WHIP endpoint {origin}: {why}")]
    Connect { origin: String, why: String },
    #[error("the WHIP endpoint {origin} did not answer within {seconds} s")]
    Timeout { origin: String, seconds: u64 },
    #[error("HTTP with the WHIP endpoint {origin} failed: {why}")]
    Http { origin: String, why: String },
    #[error("the WHIP endpoint {origin} refused the bearer token ({status}): check [publish] bearer_token")]
    Unauthorized { origin: String, status: u16 },
    #[error("the WHIP endpoint {origin} answered {status}{}", detail(.reason))]
    Refused { origin: String, status: u16, reason: String },
    #[error("the WHIP endpoint {origin} sent an unusable answer: {why}")]
    BadAnswer { origin: String, why: String },
    #[error("the WHIP endpoint {origin} redirected more than {max} times")]
    Redirects { origin: String, max: usize },
    #[error("{0}")]
    Rtc(#[from] crate::rtc::publish::PublishError),
}

fn detail(reason: &str) -> String {
    if reason.is_empty() { String::new() } else { format!(": {reason}") }
}

impl WhipError {
    /// The same kind of failure again is not logged again (see [`LogOnce`]).
    pub fn kind(&self) -> String {
        match self {
            WhipError::Connect { .. } => "connect".into(),
            WhipError::Timeout { .. } => "timeout".into(),
            WhipError::Http { .. } => "http".into(),
            WhipError::Unauthorized { status, .. } => format!("unauthorized {status}"),
            WhipError::Refused { status, .. } => format!("status {status}"),
            WhipError::BadAnswer { .. } => "bad answer".into(),
            WhipError::Redirects { .. } => "redirects".into(),
            WhipError::Rtc(e) => format!("rtc {:?}", std::mem::discriminant(e)),
        }
    }
}

/// At most this much of a server's text goes into a log line or `/api/settings`.
const REASON_CHARS: usize = 160;

/// A server's text made safe to log: one line, printable, bounded, and without `secret` (a
/// server that echoes the request back must not put the token in the journal).
pub fn excerpt(text: &str, secret: &str) -> String {
    let text = if secret.is_empty() { text.to_string() } else { text.replace(secret, "(token)") };
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let trimmed = one_line.split_whitespace().collect::<Vec<_>>().join(" ");
    match trimmed.char_indices().nth(REASON_CHARS) {
        Some((i, _)) => format!("{}…", &trimmed[..i]),
        None => trimmed,
    }
}

/// What the reply to the POST of an offer (sent to `url`) means (RFC 9725 §4.2).
pub fn posted(reply: &Reply, url: &str, origin: &str, secret: &str) -> Result<Posted, WhipError> {
    let bad = |why: String| WhipError::BadAnswer { origin: origin.to_string(), why };
    match reply.status {
        201 => {
            let ct = reply.content_type.as_deref().unwrap_or("");
            let mime = ct.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case("application/sdp") {
                return Err(bad(format!("Content-Type {:?}, not application/sdp", excerpt(ct, secret))));
            }
            let location = reply.location.as_deref().filter(|l| !l.trim().is_empty()).ok_or_else(|| bad("201 without a Location".into()))?;
            let resource = resolve(url, location).map_err(|e| bad(format!("Location: {e}")))?;
            let answer = reply.body.trim_start_matches('\u{feff}');
            if !answer.starts_with("v=0") {
                return Err(bad("the body is not an SDP answer (no v=0)".into()));
            }
            if !answer.contains("\nm=") {
                return Err(bad("the SDP answer has no media section".into()));
            }
            Ok(Posted::Created { resource, answer: answer.to_string() })
        }
        307 | 308 => {
            let location = reply.location.as_deref().ok_or_else(|| bad(format!("{} without a Location", reply.status)))?;
            resolve(url, location).map(Posted::Redirect).map_err(|e| bad(format!("redirect: {e}")))
        }
        401 | 403 => Err(WhipError::Unauthorized { origin: origin.to_string(), status: reply.status }),
        status => {
            let reason = if reply.content_type.as_deref().is_some_and(|c| c.starts_with("text/") || c.contains("json")) {
                excerpt(&reply.body, secret)
            } else {
                String::new()
            };
            Err(WhipError::Refused { origin: origin.to_string(), status, reason: with_name(status, reason) })
        }
    }
}

fn with_name(status: u16, reason: String) -> String {
    let name = match status {
        400 => "Bad Request",
        404 => "Not Found (check the path of [publish] whip_url)",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        409 => "Conflict",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    };
    match (name.is_empty(), reason.is_empty()) {
        (true, _) => reason,
        (false, true) => name.to_string(),
        (false, false) => format!("{name} — {reason}"),
    }
}

/// Logs a failure once: the same kind again (the endpoint still down, the token still wrong)
/// goes to debug, counted, until a success or another kind of failure.
#[derive(Debug, Default)]
pub struct LogOnce {
    last: Option<String>,
    repeats: u64,
}

impl LogOnce {
    /// `true`: say it (first of its kind); `false`: a repeat.
    pub fn first(&mut self, kind: &str) -> bool {
        if self.last.as_deref() == Some(kind) {
            self.repeats += 1;
            false
        } else {
            self.last = Some(kind.to_string());
            self.repeats = 0;
            true
        }
    }

    /// Forgets the last failure; returns how often it repeated unlogged.
    pub fn reset(&mut self) -> u64 {
        self.last = None;
        std::mem::take(&mut self.repeats)
    }
}

/// What the publisher is doing, for `/api/settings` (`publish.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Publishing,
    Retrying,
    Stopped,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Connecting => "connecting",
            State::Publishing => "publishing",
            State::Retrying => "retrying",
            State::Stopped => "stopped",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("https://sfu.example:8443/whip/live?k=1").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port, e.path_and_query.as_str()), (true, "sfu.example", 8443, "/whip/live?k=1"));
        assert_eq!(e.origin(), "https://sfu.example:8443");
        let e = Endpoint::parse("http://[::1]/w").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.authority.as_str()), ("::1", 80, "[::1]"));
        assert_eq!(Endpoint::parse("http://h?x").unwrap().path_and_query, "/?x");
        assert_eq!(Endpoint::parse("http://h").unwrap().path_and_query, "/");
        for bad in ["ftp://h/", "http:///x", "http://u:p@h/", "http://h:port/", "http://[::1/"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn location_resolves_as_rfc3986_says() {
        let base = "http://a/b/c/d;p?q";
        // RFC 3986 §5.4.1 (normal examples), those that are http URLs
        for (r, want) in [
            ("g", "http://a/b/c/g"),
            ("./g", "http://a/b/c/g"),
            ("g/", "http://a/b/c/g/"),
            ("/g", "http://a/g"),
            ("//g", "http://g/"),
            ("?y", "http://a/b/c/d;p?y"),
            ("g?y", "http://a/b/c/g?y"),
            ("#s", "http://a/b/c/d;p?q"),
            (";x", "http://a/b/c/;x"),
            ("", "http://a/b/c/d;p?q"),
            (".", "http://a/b/c/"),
            ("./", "http://a/b/c/"),
            ("..", "http://a/b/"),
            ("../g", "http://a/b/g"),
            ("../..", "http://a/"),
            ("../../g", "http://a/g"),
            // §5.4.2 (abnormal)
            ("../../../g", "http://a/g"),
            ("/./g", "http://a/g"),
            ("/../g", "http://a/g"),
            ("g.", "http://a/b/c/g."),
            ("g/../h", "http://a/b/c/h"),
        ] {
            assert_eq!(resolve(base, r).as_deref(), Ok(want), "{r:?}");
        }
        // what WHIP endpoints send
        let post = "http://10.77.0.2:7080/whip/endpoint/cam";
        assert_eq!(resolve(post, "/whip/resource/abc").unwrap(), "http://10.77.0.2:7080/whip/resource/abc");
        assert_eq!(resolve(post, "resource/abc").unwrap(), "http://10.77.0.2:7080/whip/endpoint/resource/abc");
        assert_eq!(resolve(post, "https://other.example/r/1").unwrap(), "https://other.example/r/1");
        assert_eq!(resolve("http://h", "x").unwrap(), "http://h/x");
        assert!(resolve(post, "javascript:alert(1)").is_err());
        assert!(resolve(post, "mailto:x@y").is_err());
    }

    fn reply(status: u16, ct: Option<&str>, location: Option<&str>, body: &str) -> Reply {
        Reply { status, content_type: ct.map(String::from), location: location.map(String::from), body: body.into() }
    }

    const ANSWER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n";
    const URL: &str = "http://sfu:7080/whip";

    #[test]
    fn a_201_with_location_and_sdp_is_a_publication() {
        let r = reply(201, Some("application/sdp; charset=utf-8"), Some("/whip/res/1"), ANSWER);
        assert_eq!(
            posted(&r, URL, "http://sfu:7080", "").unwrap(),
            Posted::Created { resource: "http://sfu:7080/whip/res/1".into(), answer: ANSWER.into() }
        );
    }

    #[test]
    fn replies_map_to_clear_errors() {
        let o = "http://sfu:7080";
        let e = |r: Reply| posted(&r, URL, o, "tok-123").unwrap_err();
        let msg = e(reply(401, Some("text/plain"), None, "bad token tok-123")).to_string();
        assert!(msg.contains("refused the bearer token (401)") && msg.contains("[publish] bearer_token") && !msg.contains("tok-123"), "{msg}");
        assert!(matches!(e(reply(403, None, None, "")), WhipError::Unauthorized { status: 403, .. }));
        let msg = e(reply(503, Some("text/plain"), None, "no Janus\nsession tok-123")).to_string();
        assert_eq!(msg, "the WHIP endpoint http://sfu:7080 answered 503: Service Unavailable — no Janus session (token)");
        let msg = e(reply(404, Some("application/octet-stream"), None, "\u{0}\u{1}")).to_string();
        assert!(msg.ends_with("404: Not Found (check the path of [publish] whip_url)"), "{msg}");
        assert!(e(reply(201, Some("text/html"), Some("/r"), ANSWER)).to_string().contains("not application/sdp"));
        assert!(e(reply(201, Some("application/sdp"), None, ANSWER)).to_string().contains("without a Location"));
        assert!(e(reply(201, Some("application/sdp"), Some("/r"), "<html>")).to_string().contains("no v=0"));
        assert!(e(reply(201, Some("application/sdp"), Some("/r"), "v=0\r\ns=-\r\n")).to_string().contains("no media section"));
        assert!(e(reply(201, Some("application/sdp"), Some("ftp://x/r"), ANSWER)).to_string().contains("Location"));
        assert_eq!(posted(&reply(307, None, Some("/other"), ""), URL, o, "").unwrap(), Posted::Redirect("http://sfu:7080/other".into()));
        let long = "x".repeat(10_000);
        let msg = e(reply(500, Some("text/plain"), None, &long)).to_string();
        assert!(msg.len() < 400, "a long body is cut: {} bytes", msg.len());
    }

    #[test]
    fn the_same_failure_is_logged_once() {
        let mut l = LogOnce::default();
        assert!(l.first("connect"));
        assert!(!l.first("connect"));
        assert!(!l.first("connect"));
        assert!(l.first("status 503"), "another kind is said");
        assert!(!l.first("status 503"));
        assert_eq!(l.reset(), 1);
        assert!(l.first("status 503"), "after a success it is said again");
    }
}
