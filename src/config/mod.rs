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

mod night;
pub use night::{GpioLine, NightConfig, NightMode};

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
    pub sound: SoundConfig,
    pub motion: MotionConfig,
    pub night: NightConfig,
    pub rtsp: RtspConfig,
    pub record: RecordConfig,
    pub mqtt: MqttConfig,
    pub webhook: WebhookConfig,
    pub log: LogConfig,
    pub remote: RemoteConfig,
    pub ice: IceConfig,
    pub publish: PublishConfig,
}

impl Config {
    /// Parses TOML text; `origin` names the source in error messages.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: origin.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        // Checks across keys of one table (each key alone was checked while parsing).
        if let Some(message) = config.publish.problem() {
            return Err(ConfigError::Invalid { path: origin.to_owned(), message });
        }
        Ok(config)
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
    /// Seconds a connection may move no byte either way before it is closed (idle keep-alive,
    /// HTTP/2 and WebSocket connections alike; PeerJS clients send a heartbeat every 5 s).
    pub idle_timeout_s: Ranged<5, 3600>,
    /// Connections open at once from one client (an IPv4 address or an IPv6 /64), and in all.
    pub max_connections_per_client: Ranged<1, 1024>,
    pub max_connections: Ranged<1, 4096>,
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
            idle_timeout_s: Ranged(60),
            max_connections_per_client: Ranged(32),
            max_connections: Ranged(256),
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

/// `[remote]`: the device as a client of an external PeerServer (remote viewing, docs/remote.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// The PeerServer as a PeerJS client names it: `ws://host:port/path` or `wss://…` (the path
    /// is PeerServer's `path` option, `/` by default); the device connects its WebSocket to
    /// `<this>/peerjs?key=&id=&token=`. Empty: off.
    pub peerserver: PeerServerUrl,
    /// The PeerServer's key (`peer --key`; PeerJS's default `peerjs`).
    pub key: PeerJsKey,
    /// The device's ID on that PeerServer; empty: `[peerjs] device_id`.
    pub device_id: String,
    /// Seconds between HEARTBEATs (PeerJS: 5); a server silent for three of them is reconnected.
    pub heartbeat_s: Ranged<1, 60>,
    /// The longest wait between reconnects (the wait doubles from 1 s up to this, with jitter).
    pub max_backoff_s: Ranged<1, 3600>,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            peerserver: PeerServerUrl(String::new()),
            key: PeerJsKey("peerjs".into()),
            device_id: String::new(),
            heartbeat_s: Ranged(5),
            max_backoff_s: Ranged(30),
        }
    }
}

impl RemoteConfig {
    pub fn enabled(&self) -> bool {
        !self.peerserver.0.is_empty()
    }
}

/// A PeerServer base URL: `ws://` or `wss://`, a host, no query or fragment; empty is allowed (off).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct PeerServerUrl(pub String);

impl TryFrom<String> for PeerServerUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(PeerServerUrl(s));
        }
        let rest = s.strip_prefix("ws://").or_else(|| s.strip_prefix("wss://"));
        let ok = s.len() <= 1024
            && !s.contains(['?', '#', ' '])
            && rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.starts_with(':'));
        if ok {
            Ok(PeerServerUrl(s))
        } else {
            Err(format!("{s:?} is not a PeerServer URL: expected ws://host[:port][/path] or wss://host[:port][/path] (no query)"))
        }
    }
}

impl From<PeerServerUrl> for String {
    fn from(u: PeerServerUrl) -> String {
        u.0
    }
}

/// `[ice]`: STUN/TURN for the device's own peer connections and for the page (`GET /api/ice`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IceConfig {
    /// STUN/TURN servers with fixed credentials (added to `[webrtc] ice_servers`, the older key).
    pub servers: Vec<IceServer>,
    /// coturn's `static-auth-secret` (`use-auth-secret` mode): the device mints short-lived TURN
    /// credentials (the TURN REST API scheme) for itself and for logged-in viewers. Never logged.
    pub turn_secret: Secret,
    /// The TURN URLs those minted credentials are for (`turn:host:3478?transport=udp`, `turns:…`).
    pub turn_urls: Vec<IceUrl>,
    /// How long a minted credential is valid, in seconds.
    pub turn_ttl_s: Ranged<60, 604_800>,
}

impl Default for IceConfig {
    fn default() -> Self {
        Self { servers: Vec::new(), turn_secret: Secret::default(), turn_urls: Vec::new(), turn_ttl_s: Ranged(86_400) }
    }
}

impl IceConfig {
    /// Minted TURN credentials are on: a secret and at least one URL.
    pub fn mints_turn(&self) -> bool {
        !self.turn_secret.0.is_empty() && !self.turn_urls.is_empty()
    }
}

/// `[publish]`: WHIP publishing (RFC 9725) of the device's one encode to a media server or SFU
/// (docs/many-viewers.md). The device POSTs an SDP offer to `whip_url` and keeps the
/// publication up (`signal::whip`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// The WHIP endpoint, `http://` or `https://`; empty: off.
    pub whip_url: WhipUrl,
    /// Sent as `Authorization: Bearer <token>`; empty: no header. Never logged.
    pub bearer_token: Secret,
    /// The longest wait between attempts (the wait doubles from 1 s up to this, with jitter).
    pub max_backoff_s: Ranged<1, 3600>,
    /// Publish the video (H.264) track.
    pub video: bool,
    /// Publish the audio (Opus) track.
    pub audio: bool,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self { whip_url: WhipUrl::default(), bearer_token: Secret::default(), max_backoff_s: Ranged(30), video: true, audio: true }
    }
}

impl PublishConfig {
    pub fn enabled(&self) -> bool {
        !self.whip_url.0.is_empty()
    }

    /// What is wrong across its keys, if anything.
    pub fn problem(&self) -> Option<String> {
        (self.enabled() && !self.video && !self.audio)
            .then(|| "[publish] video and audio are both false: nothing to publish (set one to true, or whip_url = \"\" to turn publishing off)".to_string())
    }
}

/// A WHIP endpoint URL: `http://` or `https://`, a host, no user info or fragment; empty is
/// allowed (off). Shown (`check-config`, logs) without its path and query, which some services
/// make the secret (a stream key in the path).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct WhipUrl(pub String);

impl WhipUrl {
    /// `scheme://host[:port]`: what may be logged and shown.
    pub fn origin(&self) -> &str {
        let s = &self.0;
        let after = s.find("://").map(|i| i + 3).unwrap_or(0);
        let end = s[after..].find(['/', '?']).map(|i| after + i).unwrap_or(s.len());
        &s[..end]
    }

    fn shown(&self) -> String {
        if self.0.is_empty() { String::new() } else { format!("{}/…", self.origin()) }
    }
}

impl fmt::Debug for WhipUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

impl Serialize for WhipUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.shown())
    }
}

impl TryFrom<String> for WhipUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(WhipUrl(s));
        }
        let rest = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://"));
        let authority = rest.map(|r| &r[..r.find(['/', '?']).unwrap_or(r.len())]).unwrap_or("");
        // Not the URL itself in the message: its path may be a stream key.
        let bad = |why: &str| Err(format!("not a WHIP endpoint URL: {why} (expected http(s)://host[:port]/path)"));
        if rest.is_none() {
            return bad("it must start with http:// or https://");
        }
        if authority.is_empty() || authority.starts_with(':') {
            return bad("no host");
        }
        if authority.contains('@') {
            return bad("user info (user:password@) is not supported: put the token in bearer_token");
        }
        if s.len() > 2048 || s.contains('#') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("longer than 2048 characters, a fragment (#) or white space");
        }
        // `[v6]:port`, `host:port` or no port.
        let port = match authority.strip_prefix('[') {
            Some(v6) => v6.split_once(']').map(|(_, p)| p.strip_prefix(':')).unwrap_or(Some("x")),
            None => authority.split_once(':').map(|(_, p)| p),
        };
        if port.is_some_and(|p| p.parse::<u16>().is_err()) {
            return bad("the port is not a number from 0 to 65535");
        }
        Ok(WhipUrl(s))
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
    /// A CSI camera module through libcamera (its V4L2 compatibility layer; see
    /// `src/capture/libcamera/README.md`): like `v4l2`, but a libcamera camera and the layer
    /// are required (`auto` uses one when present).
    Libcamera,
}

/// Which H.264 encoder makes the main picture (`[video] encoder`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VideoEncoderKind {
    /// The hardware encoder if the device has one (a V4L2 memory-to-memory device whose
    /// capture queue makes H.264 — bcm2835-codec on a Pi 3/4/Zero 2 W), else openh264.
    Auto,
    /// Software (openh264), always.
    Openh264,
    /// The hardware encoder, required: the service does not start without one.
    V4l2m2m,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VideoConfig {
    pub source: VideoSourceKind,
    /// H.264 encoder of the main picture (the low rung is always openh264).
    pub encoder: VideoEncoderKind,
    /// The M2M encoder node (e.g. `/dev/video11`); empty: the first one found.
    pub encoder_device: String,
    pub width: EvenDimension,
    pub height: EvenDimension,
    pub fps: Ranged<1, 60>,
    /// The most the main H.264 encode sends: its target when the viewers' links carry it.
    /// Congestion control lowers what each viewer gets to what its link carries.
    pub bitrate_kbps: Ranged<50, 50_000>,
    /// The least a viewer's video is sent at, however poor its link (below this it drops frames).
    pub min_bitrate_kbps: Ranged<30, 50_000>,
    /// The encode-once ladder: a second, half-size encode for viewers on weak links, made from
    /// the same frames only while someone reads it. `false`: one encode that follows the
    /// slowest viewer.
    pub ladder: bool,
    /// Share of the test pattern (%, a band at the bottom) covered with sensor-like noise, so
    /// that the encoder spends its whole bitrate as with a real camera (link tests, benchmarks).
    pub test_pattern_noise_percent: Ranged<0, 100>,
    /// Whether the test pattern's box and scrolling strip move (its clock and timestamp code
    /// always run). Changeable live with `POST /api/test-pattern` (a scene with and without
    /// motion for the motion detector).
    pub test_pattern_motion: bool,
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
    /// libcamera's V4L2 compatibility layer (`v4l2-compat.so`); empty: the usual places
    /// (`capture::libcamera::COMPAT_PATHS`).
    pub libcamera_v4l2_compat: String,
    /// A libcamera tuning file for the Raspberry Pi's IPA (`LIBCAMERA_RPI_TUNING_FILE`), e.g.
    /// `/usr/share/libcamera/ipa/rpi/vc4/imx708_noir.json` for a Camera Module 3 NoIR (grey-world
    /// white balance; the default tuning turns its picture pink). Empty: libcamera's choice.
    pub libcamera_tuning_file: String,
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            source: VideoSourceKind::Auto,
            encoder: VideoEncoderKind::Auto,
            encoder_device: String::new(),
            width: EvenDimension(1280),
            height: EvenDimension(720),
            fps: Ranged(30),
            bitrate_kbps: Ranged(2500),
            min_bitrate_kbps: Ranged(150),
            ladder: true,
            test_pattern_noise_percent: Ranged(0),
            test_pattern_motion: true,
            keyframe_interval_s: Ranged(2),
            device: None,
            constraints: VideoConstraints::default(),
            controls: BTreeMap::new(),
            libcamera_v4l2_compat: String::new(),
            libcamera_tuning_file: String::new(),
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

/// `[sound]`: analysis of the microphone before encoding (level meter, noise and cry alerts).
/// The thresholds are the defaults of what `POST /api/sound` changes live.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SoundConfig {
    /// Run the analysis at all.
    pub enabled: bool,
    /// Keep reading the microphone (and analysing) while nobody watches: a monitor that alerts
    /// must listen when no one looks. Nothing is encoded then. False: analysis only while
    /// someone watches (the microphone is not read otherwise).
    pub listen_without_viewers: bool,
    pub level_interval_ms: Ranged<100, 5000>,
    /// The noise alert: the voice-band peak of each level window over this (dBFS) …
    pub noise_threshold_db: Db,
    /// … for this long (pauses under 300 ms bridged) starts it …
    pub noise_duration_ms: Ranged<250, 60_000>,
    /// … and it ends (and may start again) after this long under it.
    pub noise_reset_s: Ranged<1, 3600>,
    /// The cry alert looks only at sound whose voice-band RMS is over this (dBFS).
    pub cry_threshold_db: Db,
    /// Cry bursts (0.3–4 s, at a baby's pitch with harmonics) within `cry_window_s` to start it.
    pub cry_min_bursts: Ranged<1, 10>,
    pub cry_window_s: Ranged<2, 60>,
    /// It ends this long after the last burst.
    pub cry_reset_s: Ranged<1, 3600>,
}

impl Default for SoundConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen_without_viewers: true,
            level_interval_ms: Ranged(250),
            noise_threshold_db: Db(-32),
            noise_duration_ms: Ranged(2000),
            noise_reset_s: Ranged(60),
            cry_threshold_db: Db(-45),
            cry_min_bursts: Ranged(3),
            cry_window_s: Ranged(10),
            cry_reset_s: Ranged(60),
        }
    }
}

/// A level in dBFS, −90 to 0.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "i64", into = "i64")]
pub struct Db(pub i32);

impl TryFrom<i64> for Db {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if (-90..=0).contains(&v) { Ok(Db(v as i32)) } else { Err(format!("{v} is out of range: expected -90 to 0 (dBFS)")) }
    }
}

impl From<Db> for i64 {
    fn from(d: Db) -> i64 {
        d.0 as i64
    }
}

/// A secret from the config (the MQTT password): never printed — `Debug` and `check-config`
/// show only whether it is set.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"(set)\"" })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "(set)" })
    }
}

/// `[motion]`: motion detection on a downscaled copy of the picture's brightness, with
/// `motion` start/end events. The parameters are the defaults of what `POST /api/motion`
/// changes live.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MotionConfig {
    /// Off by default: while on, the camera stays open (and is read `fps` times a second) even
    /// when nobody watches. No encoder runs for it.
    pub enabled: bool,
    /// 1–100: higher reacts to smaller changes of brightness.
    pub sensitivity: Ranged<1, 100>,
    /// Share of the picture (%) that must change between two analysed frames.
    pub min_area_percent: Percent,
    /// Seconds without motion before a `motion` end (and before the next start).
    pub cooldown_s: Ranged<1, 3600>,
    /// Analysed frames per second.
    pub fps: Ranged<1, 30>,
    /// Regions to ignore, `[x, y, width, height]` as fractions of the picture from its top
    /// left, e.g. `[[0.0, 0.0, 1.0, 0.1]]` (a timestamp overlay along the top).
    pub masks: Vec<MotionMask>,
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self { enabled: false, sensitivity: Ranged(50), min_area_percent: Percent(1.0), cooldown_s: Ranged(10), fps: Ranged(5), masks: Vec::new() }
    }
}

/// A share in %, 0.01 to 100.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(try_from = "f64", into = "f64")]
pub struct Percent(pub f32);

impl TryFrom<f64> for Percent {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if v.is_finite() && (0.01..=100.0).contains(&v) { Ok(Percent(v as f32)) } else { Err(format!("{v} is out of range: expected 0.01 to 100 (%)")) }
    }
}

impl From<Percent> for f64 {
    fn from(p: Percent) -> f64 {
        ((p.0 as f64) * 1000.0).round() / 1000.0
    }
}

/// `[x, y, width, height]`, fractions of the picture.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(try_from = "[f64; 4]", into = "[f64; 4]")]
pub struct MotionMask(pub [f32; 4]);

impl TryFrom<[f64; 4]> for MotionMask {
    type Error = String;
    fn try_from(v: [f64; 4]) -> Result<Self, String> {
        let m = [v[0] as f32, v[1] as f32, v[2] as f32, v[3] as f32];
        if !v.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)) {
            return Err(format!("{v:?}: every value must be between 0 and 1 ([x, y, width, height] as fractions of the picture)"));
        }
        if v[2] <= 0.0 || v[3] <= 0.0 || v[0] + v[2] > 1.000_001 || v[1] + v[3] > 1.000_001 {
            return Err(format!("{v:?}: width and height must be over 0 and the mask inside the picture (x + width ≤ 1, y + height ≤ 1)"));
        }
        Ok(MotionMask(m))
    }
}

impl From<MotionMask> for [f64; 4] {
    fn from(m: MotionMask) -> [f64; 4] {
        m.0.map(|v| ((v as f64) * 10_000.0).round() / 10_000.0)
    }
}

/// `[rtsp]`: an RTSP server (RFC 2326) for NVRs and players: `rtsp://<device>:<port>/live`,
/// H.264 + Opus from the same single encode, RTP over TCP (interleaved) or UDP.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RtspConfig {
    /// Off by default. Clients log in with Basic auth, a bearer token (`peercam new-token`) as
    /// the password; with no password set, only loopback clients are served.
    pub enabled: bool,
    /// Address to listen on; the port 8554 is MediaMTX's (and what NVRs try first after 554).
    pub listen: SocketAddr,
    /// RTSP connections at once (each playing client holds one).
    pub max_connections: Ranged<1, 64>,
    /// Seconds a session lives without a request (`GET_PARAMETER` keeps it alive) when its
    /// media goes over UDP; TCP sessions end with their connection.
    pub session_timeout_s: Ranged<10, 600>,
}

impl Default for RtspConfig {
    fn default() -> Self {
        Self { enabled: false, listen: "0.0.0.0:8554".parse().expect("valid address"), max_connections: Ranged(8), session_timeout_s: Ranged(60) }
    }
}

/// `[record]`: clips around events and continuous recording, as fragmented MP4 (H.264 + Opus),
/// with retention by size and age (`pipeline::record`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    /// `off` (default), `events` (clips around `triggers`) or `continuous` (segments of
    /// `max_clip_s`). With `pre_roll_s` > 0 or `continuous`, the camera and the encoder run all
    /// the time, also while nobody watches.
    pub mode: RecordMode,
    /// Seconds kept before an event (from an in-memory buffer of encoded video; 0: the clip
    /// starts at the event, and the encoder runs only while recording).
    pub pre_roll_s: Ranged<0, 30>,
    /// Seconds recorded after the last trigger ended.
    pub post_roll_s: Ranged<0, 300>,
    /// Longest clip (a longer event goes on in a new clip); the segment length in `continuous`.
    pub max_clip_s: Ranged<10, 3600>,
    /// Which events start a clip: `motion`, `noise`, `cry`.
    pub triggers: Vec<RecordTrigger>,
    /// Where the clips go. Empty: `<state_dir>/recordings`.
    pub dir: PathBuf,
    /// The recordings together stay under this (the oldest are deleted first).
    pub max_bytes: ByteCount,
    /// Recordings older than this are deleted (0: kept until space is needed).
    pub max_age_days: Ranged<0, 3650>,
    /// Length of one fragment (what a power cut can lose at most), milliseconds.
    pub fragment_ms: Ranged<250, 10_000>,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            mode: RecordMode::Off,
            pre_roll_s: Ranged(5),
            post_roll_s: Ranged(10),
            max_clip_s: Ranged(300),
            triggers: vec![RecordTrigger::Motion, RecordTrigger::Noise, RecordTrigger::Cry],
            dir: PathBuf::new(),
            max_bytes: ByteCount(1 << 30),
            max_age_days: Ranged(30),
            fragment_ms: Ranged(1000),
        }
    }
}

impl RecordConfig {
    /// The clips' folder: `dir`, or `<state_dir>/recordings`.
    pub fn dir(&self, http: &HttpConfig) -> PathBuf {
        if self.dir.as_os_str().is_empty() { http.state_dir().join("recordings") } else { self.dir.clone() }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecordMode {
    Off,
    Events,
    Continuous,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RecordTrigger {
    Motion,
    Noise,
    Cry,
}

impl RecordTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordTrigger::Motion => "motion",
            RecordTrigger::Noise => "noise",
            RecordTrigger::Cry => "cry",
        }
    }
}

/// A number of bytes, at least 1 MiB (a few seconds of video).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "i64", into = "i64")]
pub struct ByteCount(pub u64);

impl TryFrom<i64> for ByteCount {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if v < 1 << 20 { Err(format!("{v} is too small: expected at least 1048576 (1 MiB), in bytes")) } else { Ok(ByteCount(v as u64)) }
    }
}

impl From<ByteCount> for i64 {
    fn from(b: ByteCount) -> i64 {
        b.0 as i64
    }
}

/// `[mqtt]`: events to an MQTT broker, with Home Assistant discovery.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker host name or address; empty: MQTT is off.
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: Secret,
    /// Empty: `peercam-<node_id>`.
    pub client_id: String,
    /// State topics are `<topic_prefix>/<node_id>/…`.
    pub topic_prefix: String,
    /// Home Assistant's discovery prefix; empty: no discovery messages.
    pub discovery_prefix: String,
    /// This camera's id on the broker and in Home Assistant (unique per camera).
    pub node_id: String,
    /// `sound_level` is published at most this often (the alerts at once).
    pub level_interval_s: Ranged<1, 3600>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 1883,
            username: String::new(),
            password: Secret::default(),
            client_id: String::new(),
            topic_prefix: "peercam".into(),
            discovery_prefix: "homeassistant".into(),
            node_id: "peercam".into(),
            level_interval_s: Ranged(5),
        }
    }
}

/// `[webhook]`: `POST` each alert as JSON to a URL (ntfy, Gotify, a home server).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// `http://host[:port]/path`; empty: off.
    pub url: WebhookUrl,
    /// Which events are posted.
    pub events: Vec<String>,
    pub timeout_s: Ranged<1, 60>,
    /// Further tries after a failure (1 s, 2 s, 4 s … apart).
    pub retries: Ranged<0, 10>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self { url: WebhookUrl::default(), events: vec!["noise".into(), "cry".into()], timeout_s: Ranged(5), retries: Ranged(3) }
    }
}

/// `http://host[:port][/path]`, or empty. HTTPS is not supported yet: said at parse time.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(pub String);

impl TryFrom<String> for WebhookUrl {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        if v.is_empty() {
            return Ok(WebhookUrl(v));
        }
        if v.starts_with("https://") {
            return Err("https:// webhooks are not supported yet: use http:// (a server on your network)".into());
        }
        let rest = v.strip_prefix("http://").ok_or("expected http://host[:port]/path")?;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() || authority.contains('@') || authority.chars().any(char::is_whitespace) {
            return Err("expected http://host[:port]/path (no user info)".into());
        }
        Ok(WebhookUrl(v))
    }
}

impl From<WebhookUrl> for String {
    fn from(u: WebhookUrl) -> String {
        u.0
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
    fn encoder_choice_parses_and_defaults_to_auto() {
        let c = parse("").unwrap();
        assert_eq!((c.video.encoder, c.video.encoder_device.as_str()), (VideoEncoderKind::Auto, ""));
        let c = parse("[video]\nencoder = \"v4l2m2m\"\nencoder_device = \"/dev/video11\"\n").unwrap();
        assert_eq!((c.video.encoder, c.video.encoder_device.as_str()), (VideoEncoderKind::V4l2m2m, "/dev/video11"));
        assert_eq!(parse("[video]\nencoder = \"openh264\"\n").unwrap().video.encoder, VideoEncoderKind::Openh264);
        let e = parse("[video]\nencoder = \"vaapi\"\n").unwrap_err();
        assert!(e.contains("vaapi") && e.contains("v4l2m2m"), "{e}");
        assert!(c.to_toml().contains("encoder = \"v4l2m2m\""), "check-config prints it");
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

    #[test]
    fn sound_mqtt_webhook_keys_are_checked_and_the_mqtt_password_never_shown() {
        let parse = |t: &str| Config::from_toml(t, Path::new("test.toml")).map_err(|e| e.to_string());
        let c = parse("[sound]\nnoise_threshold_db = -40\n[mqtt]\nhost = \"127.0.0.1\"\npassword = \"s3cret-pw\"\n[webhook]\nurl = \"http://127.0.0.1:9/hook\"\n").unwrap();
        assert_eq!(c.sound.noise_threshold_db, Db(-40));
        assert_eq!(c.mqtt.password.0, "s3cret-pw");
        assert!(!format!("{c:?}").contains("s3cret"), "Debug shows no secret");
        assert!(!c.to_toml().contains("s3cret"), "check-config shows no secret");
        let e = parse("[sound]\nnoise_threshold_db = 3\n").unwrap_err();
        assert!(e.contains("sound.noise_threshold_db") && e.contains("-90 to 0"), "{e}");
        let e = parse("[webhook]\nurl = \"https://ntfy.sh/x\"\n").unwrap_err();
        assert!(e.contains("webhook.url") && e.contains("not supported"), "{e}");
        assert!(parse("[webhook]\nurl = \"ftp://x\"\n").is_err());
    }

    #[test]
    fn record_keys_are_checked() {
        let parse = |t: &str| Config::from_toml(t, Path::new("test.toml")).map_err(|e| e.to_string());
        let c = parse("[record]\nmode = \"events\"\npre_roll_s = 3\ntriggers = [\"motion\"]\nmax_bytes = 2000000\n").unwrap();
        assert_eq!((c.record.mode, c.record.pre_roll_s.get(), c.record.max_bytes.0), (RecordMode::Events, 3, 2_000_000));
        assert_eq!(c.record.triggers, vec![RecordTrigger::Motion]);
        assert_eq!(c.record.dir(&c.http), c.http.state_dir().join("recordings"));
        let e = parse("[record]\nmode = \"always\"\n").unwrap_err();
        assert!(e.contains("record.mode") && e.contains("continuous"), "{e}");
        let e = parse("[record]\nmax_bytes = 1000\n").unwrap_err();
        assert!(e.contains("record.max_bytes") && e.contains("1 MiB"), "{e}");
        let e = parse("[record]\ntriggers = [\"doorbell\"]\n").unwrap_err();
        assert!(e.contains("record.triggers"), "{e}");
        assert!(parse("[record]\nfragment_ms = 100\n").unwrap_err().contains("250 to 10000"));
    }

    #[test]
    fn publish_section_parses_validates_and_hides_secrets() {
        let parse = |t: &str| Config::from_toml(t, Path::new("test.toml")).map_err(|e| e.to_string());
        let c = parse("").unwrap();
        assert!(!c.publish.enabled());
        assert_eq!((c.publish.max_backoff_s.get(), c.publish.video, c.publish.audio), (30, true, true));
        let c = parse(
            "[publish]\nwhip_url = \"https://sfu.example:8443/live/KEY123/whip?x=1\"\nbearer_token = \"tok-SECRET\"\nmax_backoff_s = 4\naudio = false\n",
        )
        .unwrap();
        assert!(c.publish.enabled());
        assert_eq!(c.publish.whip_url.origin(), "https://sfu.example:8443");
        assert_eq!(c.publish.bearer_token.0, "tok-SECRET");
        let shown = c.to_toml() + &format!("{:?}", c.publish);
        assert!(!shown.contains("tok-SECRET") && !shown.contains("KEY123"), "neither the token nor the URL's path is shown: {shown}");
        assert!(shown.contains("https://sfu.example:8443/…"));
        for (url, why) in [
            ("ftp://x/whip", "http:// or https://"),
            ("http:///whip", "no host"),
            ("http://user:pw@host/whip", "user info"),
            ("http://host:99999/whip", "port"),
            ("http://host/wh ip", "white space"),
        ] {
            let e = parse(&format!("[publish]\nwhip_url = {url:?}\n")).unwrap_err();
            assert!(e.contains("publish.whip_url") && e.contains(why), "{url}: {e}");
            assert!(!e.contains("pw@"), "the URL is not echoed: {e}");
        }
        assert!(parse("[publish]\nwhip_url = \"http://[::1]:8080/whip\"\n").is_ok());
        assert!(parse("[publish]\nmax_backoff_s = 0\n").unwrap_err().contains("publish.max_backoff_s"));
        let e = parse("[publish]\nwhip_url = \"http://h/w\"\nvideo = false\naudio = false\n").unwrap_err();
        assert!(e.contains("nothing to publish"), "{e}");
        assert!(parse("[publish]\nvideo = false\naudio = false\n").is_ok(), "off: nothing to check");
    }
}
