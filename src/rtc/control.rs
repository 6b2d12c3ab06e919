//! The control protocol (see `CONTROL.md`): parsing requests and writing replies and events.
//! Pure: no channels, no pipeline; `room` carries the messages out.
//!
//! Every failure is a typed [`ControlError`] that becomes an error reply; nothing a viewer sends
//! can end its channel or panic the device.

use crate::capture::constraints::NumConstraint;
use serde::Deserialize;
use serde_json::{json, Map, Value};

pub const VERSION: u64 = 1;
/// Larger messages are refused unread: a control message is a few hundred bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
const MAX_ID_CHARS: usize = 64;
pub const MAX_CHAT_CHARS: usize = 500;
pub const MAX_NAME_CHARS: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Video,
    Audio,
}

impl TrackKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Video => "video",
            TrackKind::Audio => "audio",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TalkAction {
    Request,
    Release,
}

/// `apply_constraints.video`: getUserMedia-style size and rate, plus the encoder's bitrate.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoApply {
    pub width: Option<NumConstraint>,
    pub height: Option<NumConstraint>,
    pub frame_rate: Option<NumConstraint>,
    pub aspect_ratio: Option<NumConstraint>,
    pub bitrate_kbps: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioApply {
    pub bitrate_kbps: Option<u32>,
}

/// `apply_constraints` (and the body of `POST /api/constraints`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apply {
    pub video: Option<VideoApply>,
    pub audio: Option<AudioApply>,
}

impl Apply {
    /// Range checks serde cannot express.
    pub fn validate(&self) -> Result<(), ControlError> {
        if let Some(b) = self.video.as_ref().and_then(|v| v.bitrate_kbps) {
            if !(100..=20_000).contains(&b) {
                return Err(ControlError::field("video.bitrate_kbps", "must be 100..20000"));
            }
        }
        if let Some(b) = self.audio.as_ref().and_then(|a| a.bitrate_kbps) {
            if !(6..=510).contains(&b) {
                return Err(ControlError::field("audio.bitrate_kbps", "must be 6..510"));
            }
        }
        Ok(())
    }
}

/// `set_track_enabled` (and the body of `POST /api/tracks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackEnabled {
    pub kind: TrackKind,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    GetSettings,
    ApplyConstraints(Apply),
    SetTrackEnabled(TrackEnabled),
    Talk(TalkAction),
    Chat { text: String, name: Option<String> },
    SetName(String),
    Lullaby(LullabyAction),
    /// The sound analysis: thresholds, last level, alerts on (`GET /api/sound`).
    GetSound,
    /// Change sound thresholds for everyone (`POST /api/sound`).
    SetSound(crate::pipeline::sound::SoundChange),
    /// This viewer only: stop (`true`) or resume (`false`) its video; audio goes on (the
    /// night's listen-only mode).
    ListenOnly(bool),
    /// Night vision: `mode` changes it for everyone; without `mode`, the status only.
    Night(Option<crate::pipeline::night::Mode>),
}

/// `lullaby`: a noise or sound file on the device's speaker.
#[derive(Debug, Clone, PartialEq)]
pub enum LullabyAction {
    Start { sound: String, volume_percent: u32, timer: Option<std::time::Duration> },
    Stop,
    /// What plays and what can be played.
    Status,
}

/// The volume a lullaby starts at when the request names none.
pub const LULLABY_DEFAULT_VOLUME: u32 = 50;
/// Sleep timers from 3 seconds (tests, a quick check) to 12 hours.
const LULLABY_MIN_TIMER_MIN: f64 = 0.05;
const LULLABY_MAX_TIMER_MIN: f64 = 720.0;

impl LullabyAction {
    /// The request body (control message without the envelope, or `POST /api/lullaby`).
    pub fn from_json(body: Value) -> Result<Self, ControlError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            action: String,
            sound: Option<String>,
            volume_percent: Option<u32>,
            timer_min: Option<f64>,
        }
        let b: Body = from_body(body)?;
        match b.action.as_str() {
            "start" => {
                let sound = b.sound.filter(|s| !s.trim().is_empty()).ok_or_else(|| ControlError::field("sound", "missing (white, pink, brown, or a file name from \"sounds\")"))?;
                if sound.chars().count() > 200 {
                    return Err(ControlError::field("sound", "is longer than 200 characters"));
                }
                let volume_percent = b.volume_percent.unwrap_or(LULLABY_DEFAULT_VOLUME);
                if volume_percent > 100 {
                    return Err(ControlError::field("volume_percent", "must be 0-100"));
                }
                let timer = match b.timer_min {
                    None => None,
                    Some(m) if m.is_finite() && (LULLABY_MIN_TIMER_MIN..=LULLABY_MAX_TIMER_MIN).contains(&m) => {
                        Some(std::time::Duration::from_secs_f64(m * 60.0))
                    }
                    Some(_) => return Err(ControlError::field("timer_min", "must be 0.05-720 minutes")),
                };
                Ok(LullabyAction::Start { sound, volume_percent, timer })
            }
            "stop" => Ok(LullabyAction::Stop),
            "status" => Ok(LullabyAction::Status),
            _ => Err(ControlError::field("action", "must be start, stop or status")),
        }
    }
}

/// Why a request failed: the `error` object of a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlError {
    pub code: &'static str,
    pub message: String,
    /// Extra members (`field`, `constraint`, `talker`).
    pub extra: Vec<(&'static str, Value)>,
}

impl ControlError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), extra: Vec::new() }
    }

    pub fn field(field: &str, message: &str) -> Self {
        Self::new("bad_message", format!("{field}: {message}")).with("field", json!(field))
    }

    pub fn with(mut self, key: &'static str, value: Value) -> Self {
        self.extra.push((key, value));
        self
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("code".into(), json!(self.code));
        m.insert("message".into(), json!(self.message));
        for (k, v) in &self.extra {
            m.insert((*k).into(), v.clone());
        }
        Value::Object(m)
    }
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Parses one message. Returns the request id to echo (`null` when there is none to be found)
/// and the request or the reason it is not one.
pub fn parse(text: &str) -> (Value, Result<Request, ControlError>) {
    if text.len() > MAX_MESSAGE_BYTES {
        let e = ControlError::new(
            "too_large",
            format!("message of {} bytes; the limit is {MAX_MESSAGE_BYTES}", text.len()),
        );
        return (Value::Null, Err(e));
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return (Value::Null, Err(ControlError::new("bad_json", format!("not JSON: {e}")))),
    };
    let Value::Object(mut obj) = value else {
        return (Value::Null, Err(ControlError::new("bad_message", "a message is a JSON object")));
    };
    let id = match obj.remove("id") {
        None => {
            // Checked after the rest, so a message with several faults names the main one.
            let result = parse_object(obj)
                .and_then(|_| Err(ControlError::field("id", "missing (a number or string echoed in the reply)")));
            return (Value::Null, result);
        }
        Some(Value::Number(n)) => Value::Number(n),
        Some(Value::String(s)) if s.chars().count() <= MAX_ID_CHARS => Value::String(s),
        Some(_) => {
            let e = ControlError::field("id", "must be a number or a string of at most 64 characters");
            return (Value::Null, Err(e));
        }
    };
    let result = parse_object(obj);
    (id, result)
}

fn parse_object(mut obj: Map<String, Value>) -> Result<Request, ControlError> {
    match obj.remove("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
        Some(v) => {
            return Err(ControlError::new(
                "unsupported_version",
                format!("version {v} is not supported; this device speaks version {VERSION}"),
            ));
        }
        None => return Err(ControlError::field("v", "missing (the protocol version, 1)")),
    }
    let kind = match obj.remove("type") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(ControlError::field("type", "must be a string")),
        None => return Err(ControlError::field("type", "missing")),
    };
    let body = Value::Object(obj);
    match kind.as_str() {
        "get_settings" => Ok(Request::GetSettings),
        "apply_constraints" => {
            let apply: Apply = from_body(body)?;
            apply.validate()?;
            if apply.video.is_none() && apply.audio.is_none() {
                return Err(ControlError::new("bad_message", "apply_constraints needs \"video\" and/or \"audio\""));
            }
            Ok(Request::ApplyConstraints(apply))
        }
        "set_track_enabled" => Ok(Request::SetTrackEnabled(from_body(body)?)),
        "talk" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Talk {
                action: TalkAction,
            }
            Ok(Request::Talk(from_body::<Talk>(body)?.action))
        }
        "chat" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Chat {
                text: String,
                name: Option<String>,
            }
            let c: Chat = from_body(body)?;
            let text = c.text.trim().to_string();
            if text.is_empty() {
                return Err(ControlError::field("text", "is empty"));
            }
            if text.chars().count() > MAX_CHAT_CHARS {
                return Err(ControlError::field("text", "is longer than 500 characters"));
            }
            Ok(Request::Chat { text, name: c.name.map(|n| clean_name(&n)).transpose()? })
        }
        "set_name" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct SetName {
                name: String,
            }
            Ok(Request::SetName(clean_name(&from_body::<SetName>(body)?.name)?))
        }
        "lullaby" => Ok(Request::Lullaby(LullabyAction::from_json(body)?)),
        "get_sound" => Ok(Request::GetSound),
        "night" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Night {
                mode: Option<crate::pipeline::night::Mode>,
            }
            Ok(Request::Night(from_body::<Night>(body)?.mode))
        }
        "set_sound" => Ok(Request::SetSound(from_body(body)?)),
        "listen_only" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct ListenOnly {
                on: bool,
            }
            Ok(Request::ListenOnly(from_body::<ListenOnly>(body)?.on))
        }
        other => Err(ControlError::new(
            "unknown_type",
            format!(
                "unknown message type {:?}; known: get_settings, apply_constraints, set_track_enabled, talk, chat, set_name, lullaby, get_sound, set_sound, listen_only, night",
                truncate(other, 40)
            ),
        )),
    }
}

/// Deserializes a request body, naming the offending field in the error.
pub fn from_body<T: for<'de> Deserialize<'de>>(body: Value) -> Result<T, ControlError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        // A missing or unknown field is named in the message ("missing field `y`"); a bad value
        // by its path (`video.width`).
        let named = (msg.starts_with("missing field") || msg.starts_with("unknown field"))
            .then(|| msg.split('`').nth(1))
            .flatten()
            .map(|f| if path == "." { f.to_string() } else { format!("{path}.{f}") });
        let field = named.unwrap_or(path);
        let message = if field == "." { msg } else { format!("{field}: {msg}") };
        ControlError::new("bad_message", message).with("field", json!(field))
    })
}

fn clean_name(name: &str) -> Result<String, ControlError> {
    let n: String = name.trim().chars().filter(|c| !c.is_control()).collect();
    if n.chars().count() > MAX_NAME_CHARS {
        return Err(ControlError::field("name", "is longer than 40 characters"));
    }
    Ok(n)
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

pub fn reply_ok(id: &Value, result: Value) -> String {
    Reply { id: id.clone(), result: Ok(result) }.to_text()
}

pub fn reply_err(id: &Value, error: &ControlError) -> String {
    Reply { id: id.clone(), result: Err(error.clone()) }.to_text()
}

/// An event: `fields` (an object) plus the envelope.
pub fn event(name: &str, fields: Value) -> String {
    event_value(name, fields).to_string()
}

/// [`event`] as a JSON value (for transports that do not send JSON text).
pub fn event_value(name: &str, fields: Value) -> Value {
    let mut m = match fields {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    m.insert("v".into(), json!(VERSION));
    m.insert("type".into(), json!("event"));
    m.insert("event".into(), json!(name));
    Value::Object(m)
}

/// A reply as a value: serialized by the transport that carries it (JSON text on a control
/// channel, BinaryPack on a PeerJS data connection), never parsed back.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub id: Value,
    pub result: Result<Value, ControlError>,
}

impl Reply {
    pub fn error(id: Value, e: ControlError) -> Self {
        Self { id, result: Err(e) }
    }

    pub fn to_json(&self) -> Value {
        match &self.result {
            Ok(result) => json!({"v": VERSION, "type": "reply", "id": self.id, "ok": true, "result": result}),
            Err(e) => json!({"v": VERSION, "type": "reply", "id": self.id, "ok": false, "error": e.to_json()}),
        }
    }

    pub fn to_text(&self) -> String {
        self.to_json().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> &'static str {
        parse(text).1.unwrap_err().code
    }

    #[test]
    fn valid_requests() {
        let (id, r) = parse(r#"{"v":1,"id":7,"type":"get_settings"}"#);
        assert_eq!(id, json!(7));
        assert_eq!(r.unwrap(), Request::GetSettings);

        let (id, r) = parse(
            r#"{"v":1,"id":"a","type":"apply_constraints","video":{"width":640,"height":{"exact":360},"bitrate_kbps":800}}"#,
        );
        assert_eq!(id, json!("a"));
        let Request::ApplyConstraints(a) = r.unwrap() else { panic!() };
        let v = a.video.unwrap();
        assert_eq!(v.width, Some(NumConstraint::ideal(640.0)));
        assert_eq!(v.height, Some(NumConstraint::exact(360.0)));
        assert_eq!(v.bitrate_kbps, Some(800));

        let r = parse(r#"{"v":1,"id":1,"type":"set_track_enabled","kind":"audio","enabled":false}"#).1.unwrap();
        assert_eq!(r, Request::SetTrackEnabled(TrackEnabled { kind: TrackKind::Audio, enabled: false }));
        assert_eq!(parse(r#"{"v":1,"id":2,"type":"talk","action":"release"}"#).1.unwrap(), Request::Talk(TalkAction::Release));
        assert_eq!(parse(r#"{"v":1,"id":2,"type":"listen_only","on":true}"#).1.unwrap(), Request::ListenOnly(true));
        use crate::pipeline::night::Mode;
        assert_eq!(parse(r#"{"v":1,"id":3,"type":"night","mode":"watching"}"#).1.unwrap(), Request::Night(Some(Mode::Watching)));
        assert_eq!(parse(r#"{"v":1,"id":4,"type":"night"}"#).1.unwrap(), Request::Night(None));
        assert_eq!(
            parse(r#"{"v":1,"id":3,"type":"chat","text":"  hi  ","name":"Mum\u0007"}"#).1.unwrap(),
            Request::Chat { text: "hi".into(), name: Some("Mum".into()) }
        );
    }

    #[test]
    fn malformed_messages_get_typed_errors() {
        assert_eq!(code("{not json"), "bad_json");
        assert_eq!(code("[1,2]"), "bad_message");
        assert_eq!(code("42"), "bad_message");
        assert_eq!(code(r#"{"v":2,"type":"get_settings"}"#), "unsupported_version");
        assert_eq!(code(r#"{"type":"get_settings"}"#), "bad_message");
        assert_eq!(code(r#"{"v":1,"type":"reboot"}"#), "unknown_type");
        assert_eq!(code(r#"{"v":1,"type":7}"#), "bad_message");
        assert_eq!(code(r#"{"v":1,"type":"set_track_enabled","kind":"video","enabled":"no"}"#), "bad_message");
        assert_eq!(code(r#"{"v":1,"type":"set_track_enabled","kind":"screen","enabled":true}"#), "bad_message");
        assert_eq!(code(r#"{"v":1,"type":"talk","action":"shout"}"#), "bad_message");
        assert_eq!(code(r#"{"v":1,"type":"listen_only","on":"yes"}"#), "bad_message");
        assert_eq!(code(r#"{"v":1,"type":"listen_only"}"#), "bad_message");
        let (_, e) = parse(r#"{"v":1,"id":5,"type":"night","mode":"dusk"}"#);
        let e = e.unwrap_err();
        assert_eq!((e.code, e.to_json()["field"].as_str()), ("bad_message", Some("mode")), "{e}");
        assert_eq!(code(r#"{"v":1,"id":6,"type":"night","mode":"on","extra":1}"#), "bad_message");
        assert_eq!(code(r#"{"v":1,"type":"apply_constraints"}"#), "bad_message");
        assert_eq!(code(r#"{"v":1,"type":"apply_constraints","video":{"width":"big"}}"#), "bad_message");
        assert_eq!(code(r#"{"v":1,"type":"apply_constraints","video":{"bitrate_kbps":5}}"#), "bad_message");
        assert_eq!(code(r#"{"v":1,"type":"apply_constraints","video":{"depth":3}}"#), "bad_message");
        assert_eq!(code(r#"{"v":1,"type":"chat","text":"   "}"#), "bad_message");
        assert_eq!(code(&format!(r#"{{"v":1,"type":"chat","text":"{}"}}"#, "x".repeat(600))), "bad_message");
        assert_eq!(code(&format!(r#"{{"v":1,"type":"chat","text":"{}"}}"#, "x".repeat(20_000))), "too_large");
        // The field is named.
        let e = parse(r#"{"v":1,"id":1,"type":"set_track_enabled","kind":"video"}"#).1.unwrap_err();
        assert_eq!(e.to_json()["field"], json!("enabled"));
        let e = parse(r#"{"v":1,"id":1,"type":"set_track_enabled","kind":"screen","enabled":true}"#).1.unwrap_err();
        assert_eq!(e.to_json()["field"], json!("kind"));
        let e = parse(r#"{"v":1,"id":1,"type":"apply_constraints","video":{"width":"wide"}}"#).1.unwrap_err();
        assert_eq!(e.to_json()["field"], json!("video.width"));
        let e = parse(r#"{"v":1,"type":"get_settings"}"#).1.unwrap_err();
        assert_eq!(e.to_json()["field"], json!("id"));
        // A bad id cannot be echoed.
        let (id, r) = parse(r#"{"v":1,"id":{"x":1},"type":"get_settings"}"#);
        assert_eq!(id, Value::Null);
        assert_eq!(r.unwrap_err().code, "bad_message");
    }

    #[test]
    fn replies_and_events_have_the_envelope() {
        let r: Value = serde_json::from_str(&reply_ok(&json!(3), json!({"a": 1}))).unwrap();
        assert_eq!(r, json!({"v": 1, "type": "reply", "id": 3, "ok": true, "result": {"a": 1}}));
        let e = ControlError::new("busy", "v2 is talking").with("talker", json!("v2"));
        let r: Value = serde_json::from_str(&reply_err(&Value::Null, &e)).unwrap();
        assert_eq!(r["error"], json!({"code": "busy", "message": "v2 is talking", "talker": "v2"}));
        let ev: Value = serde_json::from_str(&event("viewer_joined", json!({"viewer": "v4"}))).unwrap();
        assert_eq!(ev, json!({"v": 1, "type": "event", "event": "viewer_joined", "viewer": "v4"}));
    }
}
