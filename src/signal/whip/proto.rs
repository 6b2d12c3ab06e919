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
    /// ICE lost the server; restarting it on the same resource.
    Restarting,
    Retrying,
    Stopped,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Connecting => "connecting",
            State::Publishing => "publishing",
            State::Restarting => "restarting",
            State::Retrying => "retrying",
            State::Stopped => "stopped",
        })
    }
}

// ICE restart by PATCH (RFC 9725 §4.4.1, fragments as RFC 8840 says).

/// The `Content-Type` of ICE fragments (RFC 8840).
pub const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// The body of the `PATCH` that restarts ICE: the new offer's credentials, its BUNDLE group and
/// the first media section's `m=`/`mid` with the candidates (every section shares that
/// transport). `offer` is the whole local offer made with `ice_restart`.
pub fn restart_fragment(offer: &str) -> Result<String, String> {
    let lines: Vec<&str> = offer.lines().map(str::trim_end).collect();
    let value = |prefix: &str| lines.iter().find_map(|l| l.strip_prefix(prefix)).map(str::to_string);
    let ufrag = value("a=ice-ufrag:").ok_or("the restart offer has no a=ice-ufrag")?;
    let pwd = value("a=ice-pwd:").ok_or("the restart offer has no a=ice-pwd")?;
    let first_m = lines.iter().position(|l| l.starts_with("m=")).ok_or("the restart offer has no media section")?;
    let section_end = lines[first_m + 1..].iter().position(|l| l.starts_with("m=")).map_or(lines.len(), |i| first_m + 1 + i);
    let section = &lines[first_m..section_end];
    let mut out = vec![format!("a=ice-ufrag:{ufrag}"), format!("a=ice-pwd:{pwd}")];
    out.extend(lines.iter().filter(|l| l.starts_with("a=ice-options:") || l.starts_with("a=group:BUNDLE")).map(|l| l.to_string()));
    out.push(section[0].to_string());
    out.extend(section.iter().filter(|l| l.starts_with("a=mid:")).map(|l| l.to_string()));
    // webrtc-rs repeats the candidates in each section; take them once, in order.
    let mut candidates: Vec<&str> = Vec::new();
    for l in lines.iter().filter(|l| l.starts_with("a=candidate:")) {
        if !candidates.contains(l) {
            candidates.push(l);
        }
    }
    out.extend(candidates.iter().map(|l| l.to_string()));
    out.push("a=end-of-candidates".into());
    Ok(out.join("\r\n") + "\r\n")
}

/// The media server's side of a restarted ICE session: read from its `200` fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceAnswer {
    pub ufrag: String,
    pub pwd: String,
    /// Whole `a=candidate:…` lines.
    pub candidates: Vec<String>,
}

/// Why the endpoint did not restart ICE.
#[derive(Debug, thiserror::Error)]
pub enum RestartRefused {
    /// `405`/`501`: the server does not do ICE restarts; replace the publication instead.
    #[error("the WHIP endpoint {origin} does not support ICE restarts ({status})")]
    Unsupported { origin: String, status: u16 },
    /// `404`: the server no longer has the resource (it restarted or timed the session out).
    #[error("the WHIP endpoint {origin} no longer knows the resource (404)")]
    Gone { origin: String },
    #[error("{0}")]
    Other(WhipError),
}

/// What the reply to the restart `PATCH` means (RFC 9725 §4.4.1: `200` with a fragment).
pub fn restarted(reply: &Reply, origin: &str, secret: &str) -> Result<IceAnswer, RestartRefused> {
    let bad = |why: String| RestartRefused::Other(WhipError::BadAnswer { origin: origin.to_string(), why });
    match reply.status {
        200 => {
            let ct = reply.content_type.as_deref().unwrap_or("");
            if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(SDPFRAG) {
                return Err(bad(format!("ICE restart reply Content-Type {:?}, not {SDPFRAG}", excerpt(ct, secret))));
            }
            parse_fragment(&reply.body).map_err(|e| bad(format!("ICE restart reply: {e}")))
        }
        405 | 501 => Err(RestartRefused::Unsupported { origin: origin.to_string(), status: reply.status }),
        404 => Err(RestartRefused::Gone { origin: origin.to_string() }),
        401 | 403 => Err(RestartRefused::Other(WhipError::Unauthorized { origin: origin.to_string(), status: reply.status })),
        status => {
            let reason = if reply.content_type.as_deref().is_some_and(|c| c.starts_with("text/")) { excerpt(&reply.body, secret) } else { String::new() };
            Err(RestartRefused::Other(WhipError::Refused { origin: origin.to_string(), status, reason: with_name(status, reason) }))
        }
    }
}

/// At most this many candidates are taken from a server's fragment.
const MAX_CANDIDATES: usize = 64;

/// Credentials (session or media level; the first wins) and candidates of a fragment.
pub fn parse_fragment(body: &str) -> Result<IceAnswer, String> {
    let mut ufrag = None;
    let mut pwd = None;
    let mut candidates = Vec::new();
    for line in body.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            ufrag.get_or_insert_with(|| v.to_string());
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            pwd.get_or_insert_with(|| v.to_string());
        } else if line.starts_with("a=candidate:") && candidates.len() < MAX_CANDIDATES {
            candidates.push(line.to_string());
        }
    }
    let valid = |s: &str| !s.is_empty() && s.len() <= 256 && s.chars().all(|c| c.is_ascii_graphic());
    match (ufrag, pwd) {
        (Some(u), Some(p)) if valid(&u) && valid(&p) => Ok(IceAnswer { ufrag: u, pwd: p, candidates }),
        (None, _) | (_, None) => Err("no a=ice-ufrag / a=ice-pwd".into()),
        _ => Err("an a=ice-ufrag / a=ice-pwd that is not a token".into()),
    }
}

/// The server's earlier SDP answer with its new ICE credentials and candidates: what the peer
/// connection takes as the answer to the restart offer (everything else is unchanged). The
/// candidates go to the first media section, the BUNDLE transport.
pub fn restarted_answer(old_answer: &str, ice: &IceAnswer) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut sections = 0;
    let mut placed = false;
    let place = |out: &mut Vec<String>| {
        out.extend(ice.candidates.iter().cloned());
        out.push("a=end-of-candidates".into());
    };
    for line in old_answer.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            if sections == 1 && !placed {
                place(&mut out);
                placed = true;
            }
            sections += 1;
        }
        if line.starts_with("a=candidate:") || line.starts_with("a=end-of-candidates") {
            continue;
        }
        if line.starts_with("a=ice-ufrag:") {
            out.push(format!("a=ice-ufrag:{}", ice.ufrag));
        } else if line.starts_with("a=ice-pwd:") {
            out.push(format!("a=ice-pwd:{}", ice.pwd));
        } else {
            out.push(line.to_string());
        }
    }
    if !placed {
        place(&mut out);
    }
    out.join("\r\n") + "\r\n"
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

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 AA\r\na=group:BUNDLE 0 1\r\na=ice-options:trickle\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=setup:actpass\r\na=mid:0\r\na=ice-ufrag:NEWu\r\na=ice-pwd:NEWpassword0123456789\r\n\
a=rtpmap:102 H264/90000\r\na=candidate:1 1 udp 2130706431 10.77.0.1 18789 typ host\r\na=candidate:2 1 udp 1694498815 203.0.113.9 18789 typ srflx raddr 0.0.0.0 rport 18789\r\na=end-of-candidates\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=ice-ufrag:NEWu\r\na=ice-pwd:NEWpassword0123456789\r\n\
a=candidate:1 1 udp 2130706431 10.77.0.1 18789 typ host\r\na=candidate:2 1 udp 1694498815 203.0.113.9 18789 typ srflx raddr 0.0.0.0 rport 18789\r\na=end-of-candidates\r\n";

    #[test]
    fn restart_fragment_carries_credentials_bundle_and_candidates_once() {
        let f = restart_fragment(OFFER).unwrap();
        let lines: Vec<&str> = f.lines().collect();
        assert_eq!(
            lines,
            [
                "a=ice-ufrag:NEWu",
                "a=ice-pwd:NEWpassword0123456789",
                "a=group:BUNDLE 0 1",
                "a=ice-options:trickle",
                "m=video 9 UDP/TLS/RTP/SAVPF 102",
                "a=mid:0",
                "a=candidate:1 1 udp 2130706431 10.77.0.1 18789 typ host",
                "a=candidate:2 1 udp 1694498815 203.0.113.9 18789 typ srflx raddr 0.0.0.0 rport 18789",
                "a=end-of-candidates",
            ]
        );
        assert!(f.ends_with("\r\n") && !f.contains("fingerprint"), "ICE only, CRLF lines");
        assert!(restart_fragment("v=0\r\nm=video 9 X 1\r\n").unwrap_err().contains("ice-ufrag"));
        assert!(restart_fragment("v=0\r\na=ice-ufrag:a\r\na=ice-pwd:b\r\n").unwrap_err().contains("media"));
    }

    fn frag_reply(status: u16, ct: &str, body: &str) -> Reply {
        Reply { status, content_type: Some(ct.into()), location: None, body: body.into() }
    }

    #[test]
    fn restart_replies_mean_what_rfc_9725_says() {
        let body = "a=ice-ufrag:srv1\r\na=ice-pwd:serverpassword0123\r\na=group:BUNDLE 0 1\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\n\
a=candidate:7 1 udp 2015363327 10.77.0.2 40000 typ host\r\na=end-of-candidates\r\n";
        let ice = restarted(&frag_reply(200, "application/trickle-ice-sdpfrag", body), "http://sfu", "").unwrap();
        assert_eq!(ice.ufrag, "srv1");
        assert_eq!(ice.pwd, "serverpassword0123");
        assert_eq!(ice.candidates, ["a=candidate:7 1 udp 2015363327 10.77.0.2 40000 typ host"]);
        assert!(matches!(restarted(&frag_reply(405, "text/plain", ""), "o", ""), Err(RestartRefused::Unsupported { status: 405, .. })));
        assert!(matches!(restarted(&frag_reply(501, "text/plain", ""), "o", ""), Err(RestartRefused::Unsupported { status: 501, .. })));
        assert!(matches!(restarted(&frag_reply(404, "text/plain", ""), "o", ""), Err(RestartRefused::Gone { .. })));
        assert!(matches!(restarted(&frag_reply(401, "text/plain", ""), "o", ""), Err(RestartRefused::Other(WhipError::Unauthorized { .. }))));
        let e = restarted(&frag_reply(200, "application/sdp", body), "http://sfu", "").unwrap_err().to_string();
        assert!(e.contains("not application/trickle-ice-sdpfrag"), "{e}");
        let e = restarted(&frag_reply(200, SDPFRAG, "a=mid:0\r\n"), "http://sfu", "").unwrap_err().to_string();
        assert!(e.contains("no a=ice-ufrag"), "{e}");
        let e = restarted(&frag_reply(200, SDPFRAG, "a=ice-ufrag:a b\r\na=ice-pwd:x\r\n"), "http://sfu", "").unwrap_err().to_string();
        assert!(e.contains("not a token"), "{e}");
        let e = restarted(&frag_reply(412, "text/plain", "tok-1 mismatch"), "http://sfu", "tok-1").unwrap_err().to_string();
        assert!(e.contains("412") && e.contains("(token) mismatch") && !e.contains("tok-1"), "{e}");
        let many: String = (0..100).map(|i| format!("a=candidate:{i} 1 udp 1 10.0.0.1 {i} typ host\r\n")).collect();
        let ice = parse_fragment(&format!("a=ice-ufrag:u\r\na=ice-pwd:p\r\n{many}")).unwrap();
        assert_eq!(ice.candidates.len(), MAX_CANDIDATES, "a server's list is bounded");
    }

    #[test]
    fn restarted_answer_swaps_credentials_and_candidates_only() {
        let old = "v=0\r\ns=-\r\na=group:BUNDLE 0 1\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\na=ice-ufrag:old1\r\na=ice-pwd:oldpwd\r\n\
a=fingerprint:sha-256 BB\r\na=candidate:1 1 udp 1 10.77.0.2 30000 typ host\r\na=end-of-candidates\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n\
a=ice-ufrag:old1\r\na=ice-pwd:oldpwd\r\na=candidate:1 1 udp 1 10.77.0.2 30000 typ host\r\n";
        let ice = IceAnswer { ufrag: "new1".into(), pwd: "newpwd".into(), candidates: vec!["a=candidate:9 1 udp 5 10.77.0.2 40000 typ host".into()] };
        let a = restarted_answer(old, &ice);
        assert!(!a.contains("old1") && !a.contains("oldpwd") && !a.contains("30000"), "{a}");
        assert_eq!(a.matches("a=ice-ufrag:new1").count(), 2);
        assert_eq!(a.matches("a=ice-pwd:newpwd").count(), 2);
        assert_eq!(a.matches("a=candidate:").count(), 1, "the new candidates once, in the BUNDLE section");
        let video = &a[a.find("m=video").unwrap()..a.find("m=audio").unwrap()];
        assert!(video.contains("a=candidate:9 1 udp 5 10.77.0.2 40000 typ host\r\na=end-of-candidates"), "{a}");
        assert!(a.contains("a=fingerprint:sha-256 BB") && a.contains("a=mid:1"), "the rest is unchanged");
        // One media section only: the candidates go at its end.
        let one = restarted_answer("v=0\r\nm=video 9 X 102\r\na=ice-ufrag:o\r\na=ice-pwd:p\r\n", &ice);
        assert!(one.ends_with("typ host\r\na=end-of-candidates\r\n"), "{one}");
    }
}
