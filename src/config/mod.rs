//! The one configuration file (TOML).
//!
//! Every key has a default, so an empty file (or no file) is a valid configuration: the built-in
//! test pattern and tone on `127.0.0.1:8080`. Every key is documented in the README's
//! "Configuration" section; keep the two in step.
//!
//! Validation happens *during* deserialization (range-checked newtypes), so the error that a user
//! sees carries the TOML parser's line, column and key, e.g.
//! `TOML parse error at line 3, column 9 … video.width: 1279 must be even`.

use crate::capture::constraints::{AudioConstraints, ControlValue, StrConstraint, VideoConstraints};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded. The message names the file, and for content errors
/// the line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}:\n{message}")]
    Invalid { path: PathBuf, message: String },
}

/// "line N, column M, key `k`: message" — without quoting the line itself, which may hold a
/// secret (a password pasted where its hash belongs must not end up in the journal).
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    let Some(span) = e.span() else { return message.to_string() };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = text[line_start..start].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let section = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let key = line.split_once('=').map(|(k, _)| k.trim()).filter(|k| !k.is_empty() && !k.starts_with('['));
    match (key, section) {
        (Some(k), Some(sec)) => format!("line {line_no}, column {column}: {sec}.{k}: {message}"),
        (Some(k), None) => format!("line {line_no}, column {column}: {k}: {message}"),
        _ => format!("line {line_no}, column {column}: {message}"),
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub video: VideoConfig,
    pub audio: AudioConfig,
    pub speaker: SpeakerConfig,
    pub webrtc: WebRtcConfig,
    pub auth: AuthConfig,
    pub peerjs: PeerJsConfig,
    pub log: LogConfig,
}

impl Config {
    /// Parses TOML text; `origin` names the source in error messages.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: origin.to_owned(),
            message: describe_toml_error(text, &e),
        })
    }

    /// Loads a file. A missing file is an error: the user named it, so they expect it to be used.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config always serializes")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port of the web page, WHEP and the API.
    pub listen: SocketAddr,
    /// Largest accepted request body (SDP offers, JSON). Bigger bodies get 413.
    pub max_body_bytes: Ranged<1024, 1_048_576>,
    /// Serve HTTPS. Browsers allow the microphone (talk-back) only on a secure origin, and
    /// `http://localhost` is the only plain-http one: a camera on a LAN needs this.
    pub tls: bool,
    /// PEM certificate chain and private key. Empty: a self-signed certificate is made on first
    /// start and kept in `state_dir` (stable across restarts).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Optional plain-HTTP address (e.g. `0.0.0.0:80`) that only redirects to HTTPS.
    pub redirect_listen: Option<SocketAddr>,
    /// Seconds a client may take to send a request's headers (slow clients cannot hold
    /// connections open forever).
    pub header_timeout_s: Ranged<1, 300>,
    /// Where the device keeps its state (generated certificate). Empty: `$STATE_DIRECTORY`
    /// (set by systemd) or `./peercam-state`.
    pub state_dir: PathBuf,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: Ranged(64 * 1024),
            tls: false,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            redirect_listen: None,
            header_timeout_s: Ranged(10),
            state_dir: PathBuf::new(),
        }
    }
}

impl HttpConfig {
    pub fn state_dir(&self) -> PathBuf {
        if !self.state_dir.as_os_str().is_empty() {
            return self.state_dir.clone();
        }
        match std::env::var_os("STATE_DIRECTORY") {
            // systemd may pass several, colon-separated; the first is ours.
            Some(dirs) => PathBuf::from(dirs.to_string_lossy().split(':').next().unwrap_or("").to_string()),
            None => PathBuf::from("peercam-state"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Argon2 PHC string from `peercam hash-password`. Empty: no password yet, and the device
    /// then answers loopback clients only (and tells everyone else how to set one).
    pub password_hash: PasswordHash,
    /// SHA-256 (hex) of bearer tokens for scripts and WHEP clients, from `peercam new-token`.
    pub token_sha256: Vec<TokenHash>,
    /// Let clients on the device itself (127.0.0.1, ::1) in without logging in. Off in the
    /// device image; convenient on a development machine that has a password set.
    pub loopback_exempt: bool,
    /// Hours a login (cookie) stays valid.
    pub session_hours: Ranged<1, 8760>,
    /// Failed logins from one address before backoff (doubling, up to 5 minutes) starts.
    pub login_attempts_before_backoff: Ranged<1, 100>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            password_hash: PasswordHash::default(),
            token_sha256: Vec::new(),
            loopback_exempt: false,
            session_hours: Ranged(24 * 30),
            login_attempts_before_backoff: Ranged(3),
        }
    }
}

/// PeerServer-compatible signaling at `/peerjs` (PeerJS clients: `path: '/peerjs'`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PeerJsConfig {
    pub enabled: bool,
    /// The PeerJS `key` option browsers pass (PeerJS's default is `peerjs`). Not a secret: on a
    /// device with a password a browser also needs a login or a bearer token (which it may pass
    /// as the key, since browsers cannot put headers on a WebSocket).
    pub key: PeerJsKey,
    /// The device's own peer ID; reserved (a browser claiming it gets ID-TAKEN).
    pub device_id: PeerJsId,
    /// Seconds a message for an ID that is not connected is kept; then its sender gets EXPIRE.
    pub expire_timeout_s: Ranged<1, 300>,
    /// Seconds without a message (PeerJS sends a heartbeat every 5 s) before a peer is dropped.
    pub alive_timeout_s: Ranged<10, 3600>,
    /// Most browser peers connected at once; one more gets ERROR.
    pub max_peers: Ranged<1, 4096>,
    /// Largest WebSocket message; a bigger one gets ERROR and the socket is closed.
    pub max_message_bytes: Ranged<1024, 1_048_576>,
}

impl Default for PeerJsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            key: PeerJsKey("peerjs".into()),
            device_id: PeerJsId("peercam".into()),
            expire_timeout_s: Ranged(5),
            alive_timeout_s: Ranged(60),
            max_peers: Ranged(64),
            max_message_bytes: Ranged(65536),
        }
    }
}

/// A PeerJS peer ID as the PeerJS client accepts it: letters and digits, single spaces,
/// `_` or `-` between them (`^[A-Za-z0-9]+(?:[ _-][A-Za-z0-9]+)*$`), at most 64 characters.
pub fn is_valid_peer_id(id: &str) -> bool {
    let b = id.as_bytes();
    let sep = |c: u8| matches!(c, b' ' | b'_' | b'-');
    !b.is_empty()
        && b.len() <= 64
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || sep(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !b.windows(2).any(|w| sep(w[0]) && sep(w[1]))
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct PeerJsId(pub String);

impl TryFrom<String> for PeerJsId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if is_valid_peer_id(&s) {
            Ok(PeerJsId(s))
        } else {
            Err(format!("{s:?} is not a PeerJS ID: letters and digits, with single spaces, _ or - between them, at most 64"))
        }
    }
}

impl From<PeerJsId> for String {
    fn from(p: PeerJsId) -> String {
        p.0
    }
}

/// The PeerJS key: it travels in URLs (`/peerjs/<key>/id`, `?key=`), so URL-safe characters only.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct PeerJsKey(pub String);

impl TryFrom<String> for PeerJsKey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._~".contains(&c));
        if ok {
            Ok(PeerJsKey(s))
        } else {
            Err(format!("{s:?} is not a usable PeerJS key: 1 to 128 of A-Z a-z 0-9 - . _ ~"))
        }
    }
}

impl From<PeerJsKey> for String {
    fn from(k: PeerJsKey) -> String {
        k.0
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VideoSourceKind {
    /// The first usable camera, else the test pattern.
    Auto,
    /// The built-in moving test pattern carrying the timestamp code.
    Testsrc,
    /// A V4L2 camera chosen by `device` and `constraints`. If it is missing or fails, viewers
    /// see a "CAMERA OFFLINE" slate and it is reopened as soon as it is back.
    V4l2,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VideoConfig {
    pub source: VideoSourceKind,
    pub width: EvenDimension,
    pub height: EvenDimension,
    pub fps: Ranged<1, 60>,
    /// Target H.264 bitrate.
    pub bitrate_kbps: Ranged<50, 50_000>,
    /// Seconds between periodic IDR frames (new viewers and PLI also get one on demand).
    pub keyframe_interval_s: Ranged<1, 60>,
    /// The camera: a `/dev/v4l/by-id` (or by-path) name, a node such as `/dev/video0`, or the
    /// card name (`peercam devices` lists them). A plain string is preferred (W3C `ideal`),
    /// `{ exact = "…" }` is required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<StrConstraint>,
    /// getUserMedia-style constraints (`width`, `height`, `frame_rate`, `aspect_ratio`,
    /// `format`), each a number (= ideal) or `{ exact | min | max | ideal }`. Unset `width`,
    /// `height` and `frame_rate` take `width`, `height` and `fps` above as their ideal.
    pub constraints: VideoConstraints,
    /// V4L2 controls by name as `peercam devices` lists them: integer, boolean or menu item
    /// name, e.g. `brightness = 140`, `power_line_frequency = "50 Hz"`.
    pub controls: BTreeMap<String, ControlValue>,
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            source: VideoSourceKind::Auto,
            width: EvenDimension(1280),
            height: EvenDimension(720),
            fps: Ranged(30),
            bitrate_kbps: Ranged(2500),
            keyframe_interval_s: Ranged(2),
            device: None,
            constraints: VideoConstraints::default(),
            controls: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AudioSourceKind {
    /// The first usable microphone, else the test tone.
    Auto,
    /// A 440 Hz beep, 200 ms every second.
    Tone,
    /// No audio track content (silence is still sent so players stay in sync).
    None,
    /// An ALSA capture PCM chosen by `device` and `constraints`, resampled to 48 kHz mono.
    /// While it is missing or failing the track carries silence; it is reopened when back.
    Alsa,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    pub source: AudioSourceKind,
    /// Opus bitrate.
    pub bitrate_kbps: Ranged<6, 510>,
    /// The microphone: an ALSA PCM name (`hw:1,0`, `plughw:CARD=Device,DEV=0`, `default`) or
    /// a card name. A plain string is preferred (ideal), `{ exact = "…" }` is required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<StrConstraint>,
    /// `sample_rate` and `channel_count`, each a number (= ideal) or `{ exact | min | max |
    /// ideal }`. Default: 48000 Hz mono preferred.
    pub constraints: AudioConstraints,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            source: AudioSourceKind::Auto,
            bitrate_kbps: Ranged(32),
            device: None,
            constraints: AudioConstraints::default(),
        }
    }
}

/// `[speaker]`: where talk-back plays.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpeakerConfig {
    /// ALSA playback PCM, opened only while someone talks. Empty: talk-back is off.
    pub device: String,
    /// Gain on the talker's voice, in percent (100 = as received).
    pub volume_percent: Ranged<0, 400>,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self { device: "default".into(), volume_percent: Ranged(100) }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtcConfig {
    /// The one UDP port every peer connection shares (ICE/DTLS/SRTP are multiplexed on it).
    pub udp_port: u16,
    /// Address the UDP port binds to; `0.0.0.0` means every interface.
    pub udp_bind: IpAddr,
    /// Public addresses to advertise instead of the interface addresses (1:1 NAT, port forwards).
    pub nat_1to1_ips: Vec<IpAddr>,
    /// Network interfaces whose addresses are offered as candidates; empty means all.
    pub interfaces: Vec<String>,
    /// Also offer loopback (127.0.0.1) candidates. Needed for clients on the device itself in a
    /// loopback-only network namespace (tests); off by default because remote peers cannot use it.
    pub include_loopback: bool,
    /// STUN/TURN servers handed to the device's ICE agent.
    pub ice_servers: Vec<IceServer>,
    /// Seconds without ICE connectivity before a session is considered gone and freed.
    pub peer_timeout_s: Ranged<3, 30>,
    /// Most simultaneous viewers; one more gets 503 with a message.
    pub max_viewers: Ranged<1, 256>,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        Self {
            udp_port: 8189,
            udp_bind: IpAddr::from([0, 0, 0, 0]),
            nat_1to1_ips: Vec::new(),
            interfaces: Vec::new(),
            include_loopback: false,
            ice_servers: Vec::new(),
            peer_timeout_s: Ranged(10),
            max_viewers: Ranged(16),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp` or `turns:…`.
    pub urls: Vec<IceUrl>,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub credential: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    pub level: LogLevel,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// An integer that must lie in `MIN..=MAX`; checked while parsing so the error has a line number.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "i64", into = "i64")]
pub struct Ranged<const MIN: u32, const MAX: u32>(pub u32);

impl<const MIN: u32, const MAX: u32> Ranged<MIN, MAX> {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl<const MIN: u32, const MAX: u32> TryFrom<i64> for Ranged<MIN, MAX> {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if v < MIN as i64 || v > MAX as i64 {
            Err(format!("{v} is out of range: expected {MIN} to {MAX}"))
        } else {
            Ok(Ranged(v as u32))
        }
    }
}

impl<const MIN: u32, const MAX: u32> From<Ranged<MIN, MAX>> for i64 {
    fn from(r: Ranged<MIN, MAX>) -> i64 {
        r.0 as i64
    }
}

/// A frame width or height: even (4:2:0 chroma), 64 to 3840 (openh264's limit).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "i64", into = "i64")]
pub struct EvenDimension(pub u32);

impl EvenDimension {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for EvenDimension {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if !(64..=3840).contains(&v) {
            Err(format!("{v} is out of range: expected 64 to 3840 pixels"))
        } else if v % 2 != 0 {
            Err(format!("{v} must be even (4:2:0 video needs even sizes)"))
        } else {
            Ok(EvenDimension(v as u32))
        }
    }
}

impl From<EvenDimension> for i64 {
    fn from(d: EvenDimension) -> i64 {
        d.0 as i64
    }
}

/// An Argon2 PHC string (`$argon2id$v=19$m=…`), or empty for "no password yet".
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct PasswordHash(pub String);

impl TryFrom<String> for PasswordHash {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(PasswordHash(s));
        }
        match argon2::PasswordHash::new(&s) {
            Ok(_) if s.starts_with("$argon2") => Ok(PasswordHash(s)),
            _ => Err("not an Argon2 hash: put the output of `peercam hash-password` here, not the password itself".into()),
        }
    }
}

impl From<PasswordHash> for String {
    fn from(p: PasswordHash) -> String {
        p.0
    }
}

/// SHA-256 of a bearer token, 64 hex digits.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct TokenHash(pub [u8; 32]);

impl TryFrom<String> for TokenHash {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bytes: Option<Vec<u8>> = (0..s.len())
            .step_by(2)
            .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect();
        match bytes {
            Some(b) if b.len() == 32 && s.len() == 64 => Ok(TokenHash(b.try_into().expect("32 bytes"))),
            _ => Err("not a SHA-256 hex digest (64 hex digits): use the hash line printed by `peercam new-token`".into()),
        }
    }
}

impl From<TokenHash> for String {
    fn from(t: TokenHash) -> String {
        t.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A STUN/TURN URL, checked for its scheme.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct IceUrl(pub String);

impl TryFrom<String> for IceUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = ["stun:", "stuns:", "turn:", "turns:"]
            .iter()
            .any(|p| s.starts_with(p) && s.len() > p.len());
        if ok {
            Ok(IceUrl(s))
        } else {
            Err(format!(
                "{s:?} is not an ICE server URL: expected stun:host[:port], turn:host[:port] or turns:host[:port]"
            ))
        }
    }
}

impl From<IceUrl> for String {
    fn from(u: IceUrl) -> String {
        u.0
    }
}

impl fmt::Display for IceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml(text, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.video.width.get(), 1280);
        assert_eq!(c.video.fps.get(), 30);
        assert_eq!(c.webrtc.udp_port, 8189);
        assert!(!c.webrtc.include_loopback);
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
[http]
listen = "0.0.0.0:8443"
[video]
source = "testsrc"
width = 640
height = 480
fps = 25
bitrate_kbps = 1200
keyframe_interval_s = 4
[audio]
source = "tone"
bitrate_kbps = 48
[webrtc]
udp_port = 9000
nat_1to1_ips = ["203.0.113.7"]
interfaces = ["eth0", "wlan0"]
include_loopback = true
ice_servers = [ { urls = ["stun:stun.example.org:3478"] },
                { urls = ["turn:turn.example.org"], username = "u", credential = "p" } ]
[log]
level = "debug"
"#,
        )
        .unwrap();
        assert_eq!(c.video.width.get(), 640);
        assert_eq!(c.video.source, VideoSourceKind::Testsrc);
        assert_eq!(c.webrtc.ice_servers.len(), 2);
        assert_eq!(c.webrtc.ice_servers[1].username, "u");
        assert_eq!(c.log.level, LogLevel::Debug);
    }

    #[test]
    fn unknown_key_is_named_with_line() {
        let e = parse("[video]\nwidth = 640\nwdith = 480\n").unwrap_err();
        assert!(e.contains("wdith"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_section_is_named() {
        let e = parse("[vidoe]\nwidth = 640\n").unwrap_err();
        assert!(e.contains("vidoe"), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let cases = [
            ("[video]\n\nwidth = 641\n", "must be even", "line 3"),
            ("[video]\nfps = 0\n", "out of range", "line 2"),
            ("[video]\nbitrate_kbps = \"fast\"\n", "bitrate_kbps", "line 2"),
            ("[http]\nlisten = \"nowhere\"\n", "listen", "line 2"),
            ("[video]\nsource = \"webcam\"\n", "webcam", "line 2"),
            ("[webrtc]\nudp_port = 70000\n", "udp_port", "line 2"),
            ("[peerjs]\ndevice_id = \"my cam!\"\n", "not a PeerJS ID", "line 2"),
            ("[peerjs]\nkey = \"a/b\"\n", "not a usable PeerJS key", "line 2"),
            ("[peerjs]\nalive_timeout_s = 5\n", "out of range", "line 2"),
            ("[auth]\npassword_hash = \"hunter2\"\n", "not an Argon2 hash", "line 2"),
            ("[auth]\ntoken_sha256 = [\"abc\"]\n", "SHA-256", "line 2"),
            (
                "[webrtc]\nice_servers = [{ urls = [\"http://x\"] }]\n",
                "not an ICE server URL",
                "line 2",
            ),
        ];
        for (text, what, line) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(what), "expected {what:?} in: {e}");
            assert!(e.contains(line), "expected {line:?} in: {e}");
        }
    }

    #[test]
    fn camera_and_microphone_keys_parse() {
        let c = parse(
            r#"
[video]
source = "v4l2"
device = { exact = "usb-046d_HD_Pro_Webcam_C920-video-index0" }
[video.constraints]
width = { min = 640, ideal = 1280 }
frame_rate = { max = 30 }
format = "MJPG"
[video.controls]
brightness = 140
power_line_frequency = "50 Hz"
exposure_dynamic_framerate = false
[audio]
source = "alsa"
device = "hw:1,0"
[audio.constraints]
sample_rate = { exact = 44100 }
channel_count = 2
"#,
        )
        .unwrap();
        assert_eq!(c.video.source, VideoSourceKind::V4l2);
        assert_eq!(c.video.device, Some(StrConstraint::exact("usb-046d_HD_Pro_Webcam_C920-video-index0")));
        assert_eq!(c.video.constraints.width.unwrap().min, Some(640.0));
        assert_eq!(c.video.controls["power_line_frequency"], ControlValue::Menu("50 Hz".into()));
        assert_eq!(c.video.controls["brightness"], ControlValue::Int(140));
        assert_eq!(c.audio.source, AudioSourceKind::Alsa);
        assert_eq!(c.audio.constraints.sample_rate.unwrap().exact, Some(44100.0));
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
        let e = parse("[video.constraints]
width = { min = 900, max = 600 }
").unwrap_err();
        assert!(e.contains("greater than max") && e.contains("line 2"), "{e}");
        let e = parse("[audio.constraints]
sample_rte = 48000
").unwrap_err();
        assert!(e.contains("sample_rte") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn errors_name_section_and_key_but_never_quote_the_value() {
        let e = parse("[auth]\n\npassword_hash = \"hunter2secret\"\n").unwrap_err();
        assert!(e.contains("auth.password_hash"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(!e.contains("hunter2secret"), "the rejected value must not be echoed: {e}");
        let e = parse("[video]\nwidth = 641\n").unwrap_err();
        assert!(e.contains("video.width") && e.contains("must be even"), "{e}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = Config::load(Path::new("/nonexistent/peercam.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/peercam.toml"), "{msg}");
        assert!(msg.contains("cannot read"), "{msg}");
    }

    #[test]
    fn round_trips_through_toml() {
        let c = Config::default();
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(c, again);
    }
}

/// The README's configuration section is the one place every key is documented: it must parse,
/// and (uncommented) hold exactly the defaults.
#[cfg(test)]
mod readme {
    use super::*;

    fn readme_block() -> String {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## Configuration").expect("README has a Configuration section")..];
        let start = section.find("```toml").expect("a toml block") + "```toml".len();
        let end = section[start..].find("```").expect("closed block") + start;
        section[start..end].to_string()
    }

    #[test]
    fn readme_configuration_is_valid_and_is_the_defaults() {
        let parsed = Config::from_toml(&readme_block(), Path::new("README.md")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed, Config::default(), "README's values differ from the code's defaults");
    }

    #[test]
    fn readme_mentions_every_key() {
        let block = readme_block();
        let defaults: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
        for (section, table) in &defaults {
            assert!(block.contains(&format!("[{section}]")), "README lacks [{section}]");
            if let Some(t) = table.as_table() {
                for key in t.keys() {
                    assert!(block.contains(&format!("{key} =")) || block.contains(&format!("[{section}.{key}]")),
                        "README's configuration does not document {section}.{key}");
                }
            }
        }
    }
}
