//! Room events as types (see `CONTROL.md`, "Events"). Each transport serializes an event once:
//! [`Outgoing`] keeps the JSON value (PeerJS data connections BinaryPack it) and the JSON text
//! (control channels) made on first use, shared by every viewer that gets the event.

use super::state::{viewer_label, Origin};
use crate::pipeline::motion::MotionEvent;
use crate::pipeline::record::RecordEvent;
use crate::pipeline::night::run::NightEvent;
use crate::pipeline::sound::SoundEvent;
use crate::rtc::control::{self, TrackKind};
use serde_json::{json, Value};
use std::sync::OnceLock;

/// Who holds the speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Talker {
    pub viewer: u64,
    pub name: Option<String>,
}

impl Talker {
    pub fn to_json(&self) -> Value {
        match &self.name {
            Some(name) => json!({"viewer": viewer_label(self.viewer), "name": name}),
            None => json!({"viewer": viewer_label(self.viewer)}),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraState {
    Online,
    Offline,
}

impl CameraState {
    pub fn as_str(self) -> &'static str {
        match self {
            CameraState::Online => "online",
            CameraState::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Hello { viewer: u64, viewers: usize, talker: Option<Talker>, talkback: bool, camera: CameraState, settings: Value },
    ViewerJoined { viewer: u64, viewers: usize },
    ViewerLeft { viewer: u64, viewers: usize },
    TalkerChanged { talker: Option<Talker> },
    Camera { state: CameraState },
    TrackEnabled { kind: TrackKind, enabled: bool, by: Origin },
    SettingsChanged { settings: Value, by: Origin },
    Chat { from: u64, name: Option<String>, text: String, at_ms: u64 },
    /// The lullaby started, stopped or ended: what plays now (`null`: nothing), who changed it
    /// (`None`: it ended by itself), why (`started`, `stopped`, `timer`, `failed`) and, for
    /// `failed`, what went wrong.
    Lullaby { lullaby: Value, by: Option<Origin>, reason: &'static str, message: Option<String> },
    /// `sound_level`, `noise`, `cry` from the sound analysis (fields: `pipeline::sound`).
    Sound(SoundEvent),
    /// `motion` start/end from the motion detector (fields: `pipeline::motion`).
    Motion(MotionEvent),
    /// `recording` (a clip saved) and `record_error` from the recorder (fields: `pipeline::record`).
    Record(RecordEvent),
    /// `night`: day ↔ night (or a new mode), with the reason (fields: `pipeline::night::run`).
    Night(NightEvent),
}

fn talker_json(t: &Option<Talker>) -> Value {
    t.as_ref().map(Talker::to_json).unwrap_or(Value::Null)
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Hello { .. } => "hello",
            Event::ViewerJoined { .. } => "viewer_joined",
            Event::ViewerLeft { .. } => "viewer_left",
            Event::TalkerChanged { .. } => "talker_changed",
            Event::Camera { .. } => "camera",
            Event::TrackEnabled { .. } => "track_enabled",
            Event::SettingsChanged { .. } => "settings_changed",
            Event::Chat { .. } => "chat",
            Event::Lullaby { .. } => "lullaby",
            Event::Sound(e) => e.name(),
            Event::Motion(e) => e.name(),
            Event::Record(e) => e.name(),
            Event::Night(e) => e.name(),
        }
    }

    /// The event's own members (without the envelope).
    fn fields(&self) -> Value {
        match self {
            Event::Hello { viewer, viewers, talker, talkback, camera, settings } => json!({
                "viewer": viewer_label(*viewer),
                "viewers": viewers,
                "talker": talker_json(talker),
                "talkback": talkback,
                "camera": camera.as_str(),
                "settings": settings,
            }),
            Event::ViewerJoined { viewer, viewers } | Event::ViewerLeft { viewer, viewers } => {
                json!({"viewer": viewer_label(*viewer), "viewers": viewers})
            }
            Event::TalkerChanged { talker } => json!({"talker": talker_json(talker)}),
            Event::Camera { state } => json!({"state": state.as_str()}),
            Event::TrackEnabled { kind, enabled, by } => {
                json!({"kind": kind.as_str(), "enabled": enabled, "by": by.label()})
            }
            Event::SettingsChanged { settings, by } => json!({"settings": settings, "by": by.label()}),
            Event::Chat { from, name, text, at_ms } => {
                json!({"from": viewer_label(*from), "name": name, "text": text, "at": at_ms})
            }
            Event::Lullaby { lullaby, by, reason, message } => {
                let mut v = json!({"lullaby": lullaby, "by": by.map(|b| b.label()), "reason": reason});
                if let (Some(m), Value::Object(o)) = (message, &mut v) {
                    o.insert("message".into(), json!(m));
                }
                v
            }
            Event::Sound(e) => e.fields(),
            Event::Motion(e) => e.fields(),
            Event::Record(e) => e.fields(),
            Event::Night(e) => e.fields(),
        }
    }

    /// The whole message, envelope included.
    pub fn to_json(&self) -> Value {
        control::event_value(self.name(), self.fields())
    }
}

/// An event on its way to viewers: serialized at most once per form.
#[derive(Debug)]
pub struct Outgoing {
    pub event: Event,
    json: OnceLock<Value>,
    text: OnceLock<String>,
}

impl Outgoing {
    pub fn new(event: Event) -> Self {
        Self { event, json: OnceLock::new(), text: OnceLock::new() }
    }

    pub fn json(&self) -> &Value {
        self.json.get_or_init(|| self.event.to_json())
    }

    pub fn text(&self) -> &str {
        self.text.get_or_init(|| self.json().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_the_documented_shape() {
        let e = Event::Hello {
            viewer: 3,
            viewers: 2,
            talker: Some(Talker { viewer: 1, name: Some("Mum".into()) }),
            talkback: true,
            camera: CameraState::Offline,
            settings: json!({"a": 1}),
        };
        assert_eq!(
            e.to_json(),
            json!({"v": 1, "type": "event", "event": "hello", "viewer": "v3", "viewers": 2,
                   "talker": {"viewer": "v1", "name": "Mum"}, "talkback": true, "camera": "offline", "settings": {"a": 1}})
        );
        assert_eq!(
            Event::TalkerChanged { talker: None }.to_json(),
            json!({"v": 1, "type": "event", "event": "talker_changed", "talker": null})
        );
        assert_eq!(
            Event::Camera { state: CameraState::Online }.to_json(),
            json!({"v": 1, "type": "event", "event": "camera", "state": "online"})
        );
        let o = Outgoing::new(Event::ViewerLeft { viewer: 2, viewers: 0 });
        let text = o.text();
        assert_eq!(serde_json::from_str::<Value>(text).unwrap(), *o.json());
        assert!(std::ptr::eq(text, o.text()), "serialized once");
    }
}
