//! The one configuration file (TOML).
//!
//! Every key has a default, so an empty file (or no file) is a valid configuration: the built-in
//! test pattern and tone on `127.0.0.1:8080`. Every key is documented in the README's
//! "Configuration" section; keep the two in step.
//!
//! Validation happens *during* deserialization (range-checked newtypes), so the error that a user
//! sees carries the TOML parser's line, column and key, e.g.
//! `TOML parse error at line 3, column 9 … video.width: 1279 must be even`.

use serde::{Deserialize, Serialize};
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

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub video: VideoConfig,
    pub audio: AudioConfig,
    pub webrtc: WebRtcConfig,
    pub log: LogConfig,
}

impl Config {
    /// Parses TOML text; `origin` names the source in error messages.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: origin.to_owned(),
            message: e.to_string(),
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
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: Ranged(64 * 1024),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VideoSourceKind {
    /// The first usable camera, else the test pattern.
    Auto,
    /// The built-in moving test pattern carrying the timestamp code.
    Testsrc,
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
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    pub source: AudioSourceKind,
    /// Opus bitrate.
    pub bitrate_kbps: Ranged<6, 510>,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            source: AudioSourceKind::Auto,
            bitrate_kbps: Ranged(32),
        }
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
