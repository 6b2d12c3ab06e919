//! The room: who is watching, who is talking, and the control requests that change the stream
//! for everyone. Sessions (WHEP, the page, PeerJS) join it; their control channels and the HTTP
//! API send it requests (see `CONTROL.md`); it pushes events back to every viewer.
//!
//! The rules live in [`state::RoomState`], a pure state machine (events in with `now`, effects
//! out); this file is its driver: it holds the state behind a lock, runs the effects (queues
//! events, opens the speaker on a blocking thread, asks the pipeline) and the background tick.
//!
//! Events go to each viewer through its own small bounded queue: a viewer that stops reading
//! loses events, the others do not wait for it.

pub mod event;
pub mod state;

use super::control::{self, Apply, ControlError, LullabyAction, Reply, Request};
use super::talkback::lullaby::{self, Lullaby};
use super::talkback::speaker::{LullabyEnd, Speaker};
use crate::capture::sounds::{Sound, SoundError};
use crate::pipeline::sound::OwnSound;
use crate::capture::constraints::VideoConstraints;
use crate::capture::ApplyError;
use crate::pipeline::{Change, Pipeline};
use bytes::Bytes;
pub use event::{CameraState, Event, Outgoing};
use serde_json::{json, Value};
pub use state::{viewer_label, Origin, RoomError, PUBLISHER_ID_BASE};
use state::{Effect, Handled, PipelineOp, PipelineResult, Reservation, RoomState};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events queued per viewer before the oldest ones are dropped for it.
const EVENT_QUEUE: usize = 64;
const TALK_CHECK: Duration = Duration::from_millis(250);

impl From<RoomError> for ControlError {
    fn from(e: RoomError) -> Self {
        let message = e.to_string();
        match e {
            RoomError::Full(_) => ControlError::new("unavailable", message),
            RoomError::Busy(t) => ControlError::new("busy", message).with("talker", t.to_json()),
            RoomError::NotTalking => ControlError::new("not_talking", message),
            RoomError::TalkbackOff | RoomError::SpeakerFailed(_) | RoomError::Unavailable(_) => {
                ControlError::new("unavailable", message)
            }
            RoomError::NeedsViewer(what) => ControlError::new(
                "bad_message",
                match what {
                    "talk" => "talk needs a viewer's connection (its audio is what plays)".to_string(),
                    "chat" => "chat is between viewers".to_string(),
                    _ => format!("{what} is for viewers"),
                },
            ),
            RoomError::Overconstrained { constraint, .. } => {
                ControlError::new("overconstrained", message).with("constraint", json!(constraint))
            }
        }
    }
}

type EventTx = mpsc::Sender<Arc<Outgoing>>;

struct Inner {
    state: RoomState,
    /// The event queue of each viewer whose channel is attached.
    queues: HashMap<u64, EventTx>,
    /// Each viewer's listen-only switch, watched by its session's video sender.
    listen_only: HashMap<u64, tokio::sync::watch::Sender<bool>>,
}

pub struct Room {
    pipeline: Arc<Pipeline>,
    /// Every broadcast event, numbered, for SSE, MQTT and the webhook.
    events: Arc<super::events::EventLog>,
    speaker: Option<Arc<Speaker>>,
    udp_port: u16,
    inner: Mutex<Inner>,
    /// Where sound files for the lullaby are (`<state_dir>/sounds`); unset: noises only.
    sounds_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// A task is watching the lullaby to tell everyone when it ends by itself.
    lullaby_watched: std::sync::atomic::AtomicBool,
    /// Problems the layers above found outside the room (a state directory that cannot be
    /// written, say), shown in `/api/settings` as `problems`. Bounded: see [`Room::report_problem`].
    problems: Mutex<Vec<String>>,
    /// Parts of `settings()` that layers above own (`publish`: the WHIP publisher's state).
    sections: Mutex<Vec<(&'static str, SettingsSection)>>,
}

/// Makes one named part of `settings()`; set by a layer above (see [`Room::add_settings_section`]).
pub type SettingsSection = Arc<dyn Fn() -> Value + Send + Sync>;

/// Distinct problems kept for `/api/settings`.
const MAX_PROBLEMS: usize = 16;

/// A viewer's membership; leaving the room is dropping it.
pub struct ViewerHandle {
    pub id: u64,
    room: Weak<Room>,
    listen_only: tokio::sync::watch::Receiver<bool>,
}

impl ViewerHandle {
    /// `true` while the viewer wants sound only (control `listen_only`): its video sender
    /// stops sending and stops asking the camera for frames.
    pub fn listen_only(&self) -> tokio::sync::watch::Receiver<bool> {
        self.listen_only.clone()
    }
}

impl Drop for ViewerHandle {
    fn drop(&mut self) {
        if let Some(room) = self.room.upgrade() {
            room.leave(self.id);
        }
    }
}

/// A place in the room held while a session negotiates (`max_viewers`); dropping it without
/// [`Slot::join`] frees the place.
pub struct Slot {
    reservation: Option<Reservation>,
    room: Arc<Room>,
}

impl Slot {
    /// The session is up: the place becomes a viewer.
    pub fn join(mut self, expects_control: bool) -> ViewerHandle {
        let r = self.reservation.take().expect("a slot joins once");
        let (tx, listen_only) = tokio::sync::watch::channel(false);
        let (id, effects) = {
            let mut inner = self.room.lock();
            let (id, effects) = inner.state.join(r, expects_control);
            inner.listen_only.insert(id, tx);
            (id, effects)
        };
        self.room.run_detached(effects);
        ViewerHandle { id, room: Arc::downgrade(&self.room), listen_only }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.room.lock().state.cancel(r);
        }
    }
}

impl Room {
    /// `speaker`: the playback device for talk-back (`None`: talk-back is off).
    pub fn new(pipeline: Arc<Pipeline>, speaker: Option<Arc<Speaker>>, udp_port: u16) -> Arc<Self> {
        let state = RoomState::new(speaker.is_some(), usize::MAX);
        let events = super::events::EventLog::new(super::events::MAX_SUBSCRIBERS);
        let room = Arc::new(Self {
            pipeline,
            events,
            speaker,
            udp_port,
            inner: Mutex::new(Inner { state, queues: HashMap::new(), listen_only: HashMap::new() }),
            sounds_dir: std::sync::OnceLock::new(),
            lullaby_watched: std::sync::atomic::AtomicBool::new(false),
            problems: Mutex::new(Vec::new()),
            sections: Mutex::new(Vec::new()),
        });
        room.clone().watch_background();
        room.clone().spread_sound_events();
        room.clone().spread_motion_events();
        room.clone().spread_night_events();
        room
    }

    /// Where the lullaby's sound files are (set once, at start).
    pub fn set_sounds_dir(&self, dir: std::path::PathBuf) {
        let _ = self.sounds_dir.set(dir);
    }

    fn sounds_dir(&self) -> std::path::PathBuf {
        self.sounds_dir.get().cloned().unwrap_or_default()
    }

    /// What the lullaby plays and what it can play (the `lullaby status` result).
    pub fn lullaby_json(&self) -> Value {
        let dir = self.sounds_dir();
        // (An unset or missing directory lists the built-in noises only.)
        let sounds = crate::capture::sounds::list(&dir);
        json!({
            "lullaby": self.speaker.as_ref().and_then(|s| s.lullaby()),
            "sounds": sounds,
            "sounds_dir": dir.display().to_string(),
        })
    }

    async fn lullaby(self: &Arc<Self>, from: Origin, action: LullabyAction) -> Result<Value, ControlError> {
        let Some(speaker) = self.speaker.clone() else { return Err(RoomError::TalkbackOff.into()) };
        match action {
            LullabyAction::Status => Ok(self.lullaby_json()),
            LullabyAction::Stop => {
                if speaker.stop_lullaby() {
                    log::info!("lullaby stopped by {}", from.label());
                    let lullaby = json!(speaker.lullaby());
                    self.broadcast(None, Event::Lullaby { lullaby, by: Some(from), reason: "stopped", message: None });
                }
                Ok(self.lullaby_json())
            }
            LullabyAction::Start { sound, volume_percent, timer } => {
                let dir = self.sounds_dir();
                let request = lullaby::Request { sound: sound.clone(), volume_percent, timer };
                let sp = Arc::clone(&speaker);
                let opened = tokio::task::spawn_blocking(move || {
                    let s = Sound::open(&sound, &dir).map_err(|e| match e {
                        SoundError::Unknown(..) => ControlError::field("sound", &e.to_string()),
                        SoundError::File(..) => ControlError::new("unavailable", e.to_string()),
                    })?;
                    sp.play_lullaby(Lullaby::new(s, request, Instant::now())).map_err(|e| ControlError::new("unavailable", e))
                })
                .await
                .map_err(|e| ControlError::new("internal", format!("lullaby task: {e}")))??;
                log::info!("lullaby started by {} on speaker {} ({} Hz)", from.label(), opened.device, opened.rate);
                let noise = crate::capture::sounds::NOISES.iter().any(|n| speaker.lullaby().is_some_and(|l| l.sound == *n));
                self.pipeline.set_own_sound(if noise { OwnSound::Noise } else { OwnSound::File });
                let lullaby = json!(speaker.lullaby());
                self.broadcast(None, Event::Lullaby { lullaby, by: Some(from), reason: "started", message: None });
                self.watch_lullaby(speaker);
                Ok(self.lullaby_json())
            }
        }
    }

    /// Tells everyone when the lullaby ends by itself (its timer, or a file that fails).
    fn watch_lullaby(self: &Arc<Self>, speaker: Arc<Speaker>) {
        use std::sync::atomic::Ordering as O;
        if self.lullaby_watched.swap(true, O::SeqCst) {
            return;
        }
        let room = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(room) = room.upgrade() else { return };
                if speaker.lullaby().is_some() {
                    continue;
                }
                room.lullaby_watched.store(false, O::SeqCst);
                room.pipeline.set_own_sound(OwnSound::None);
                let (reason, message) = match speaker.take_lullaby_end() {
                    Some(LullabyEnd::Timer) => ("timer", None),
                    Some(LullabyEnd::Failed(m)) => ("failed", Some(m)),
                    None => ("stopped", None), // a stop request, already told
                };
                if reason != "stopped" {
                    room.broadcast(None, Event::Lullaby { lullaby: Value::Null, by: None, reason, message });
                }
                return;
            }
        });
    }

    /// `[webrtc] max_viewers`: sessions of every kind count.
    pub fn set_max_viewers(&self, max: usize) {
        self.lock().state.set_max_viewers(max);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Background duties: the talk timeout tick; tell everyone when the camera goes offline or
    /// comes back. Ends when the room is dropped.
    fn watch_background(self: Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let weak = Arc::downgrade(&self);
        let mut camera = self.pipeline.camera_online();
        drop(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(TALK_CHECK);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let Some(room) = weak.upgrade() else { return };
                        let effects = room.lock().state.tick(Instant::now());
                        room.run_detached(effects);
                    }
                    changed = camera.changed() => {
                        if changed.is_err() { return; }
                        let online = *camera.borrow_and_update();
                        let Some(room) = weak.upgrade() else { return };
                        let state = if online { CameraState::Online } else { CameraState::Offline };
                        let effects = room.lock().state.camera(state);
                        room.run_detached(effects);
                    }
                }
            }
        });
    }

    /// The sound analysis's events go to everyone, like the room's own.
    fn spread_sound_events(self: Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let Some(mut rx) = self.pipeline.take_sound_events() else { return };
        let weak = Arc::downgrade(&self);
        drop(self);
        rt.spawn(async move {
            while let Some(e) = rx.recv().await {
                let Some(room) = weak.upgrade() else { return };
                room.broadcast(None, Event::Sound(e));
            }
        });
    }

    /// The motion detector's events go to everyone too.
    fn spread_motion_events(self: Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let Some(mut rx) = self.pipeline.take_motion_events() else { return };
        let weak = Arc::downgrade(&self);
        drop(self);
        rt.spawn(async move {
            while let Some(e) = rx.recv().await {
                let Some(room) = weak.upgrade() else { return };
                room.broadcast(None, Event::Motion(e));
            }
        });
    }

    /// The recorder's events (clips saved, a full or read-only folder) go to everyone too.
    pub fn spread_record_events(self: &Arc<Self>, mut rx: mpsc::Receiver<crate::pipeline::record::RecordEvent>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            while let Some(e) = rx.recv().await {
                let Some(room) = weak.upgrade() else { return };
                room.broadcast(None, Event::Record(e));
            }
        });
    }

    /// Night vision's day/night switches go to everyone too.
    fn spread_night_events(self: Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let Some(mut rx) = self.pipeline.take_night_events() else { return };
        let weak = Arc::downgrade(&self);
        drop(self);
        rt.spawn(async move {
            while let Some(e) = rx.recv().await {
                let Some(room) = weak.upgrade() else { return };
                room.broadcast(None, Event::Night(e));
            }
        });
    }

    /// `GET /api/night` (and `night` in the settings): mode, state, lines, error.
    pub fn night(&self) -> Value {
        serde_json::to_value(self.pipeline.night().status()).unwrap_or(Value::Null)
    }

    /// Changes the night-vision mode for everyone (`POST /api/night`, control `night`); the
    /// `night` event tells every viewer.
    pub async fn set_night(&self, mode: crate::pipeline::night::Mode, from: Origin) -> Result<Value, ControlError> {
        let s = self.pipeline.night().set_mode(mode).await.map_err(|e| ControlError::new("unavailable", e.to_string()))?;
        log::info!("night vision mode {} set by {}", mode.as_str(), from.label());
        Ok(serde_json::to_value(s).unwrap_or(Value::Null))
    }

    /// `GET /api/motion`: on/off, the parameters and the detector's state.
    pub fn motion(&self) -> Value {
        let p = &self.pipeline;
        let mut v = json!({"enabled": p.motion_enabled(), "params": p.motion_params(), "state": p.motion_state()});
        if let Some(a) = v.pointer_mut("/state/area_percent").and_then(|x| x.as_f64()) {
            v["state"]["area_percent"] = json!((a * 10.0).round() / 10.0);
        }
        if let Some(masks) = v.pointer_mut("/params/masks").and_then(Value::as_array_mut) {
            for m in masks.iter_mut() {
                let r = |k: &str| m.get(k).and_then(Value::as_f64).map(|x| (x * 10_000.0).round() / 10_000.0).unwrap_or(0.0);
                *m = json!([r("x"), r("y"), r("w"), r("h")]);
            }
        }
        if let Some(x) = v.pointer("/params/min_area_percent").and_then(Value::as_f64) {
            v["params"]["min_area_percent"] = json!((x * 1000.0).round() / 1000.0);
        }
        v
    }

    /// Changes motion detection for everyone (`POST /api/motion`).
    pub fn set_motion(&self, change: &crate::pipeline::motion::MotionChange) -> Result<Value, ControlError> {
        self.pipeline
            .set_motion(change)
            .map_err(|e| ControlError::new("bad_message", e.to_string()).with("field", json!(e.field)))?;
        log::info!("motion detection changed: enabled {}, {:?}", self.pipeline.motion_enabled(), self.pipeline.motion_params());
        Ok(self.motion())
    }

    /// The numbered log of every broadcast event.
    pub fn events(&self) -> &Arc<super::events::EventLog> {
        &self.events
    }

    /// `GET /api/sound`: the thresholds, the last level and which alerts are on.
    pub fn sound(&self) -> Value {
        let p = &self.pipeline;
        let mut v = json!({"enabled": p.sound_enabled(), "params": p.sound_params(), "state": p.sound_state()});
        if let Some(state) = v.get_mut("state").and_then(Value::as_object_mut) {
            for k in ["level_db", "peak_db"] {
                if let Some(x) = state.get(k).and_then(Value::as_f64) {
                    state.insert(k.into(), json!((x * 10.0).round() / 10.0));
                }
            }
        }
        v
    }

    /// Changes the sound thresholds for everyone (`POST /api/sound`, control `set_sound`).
    pub fn set_sound(&self, change: &crate::pipeline::sound::SoundChange) -> Result<Value, ControlError> {
        self.pipeline
            .set_sound(change)
            .map_err(|e| ControlError::new("bad_message", e.to_string()).with("field", json!(e.field)))?;
        Ok(self.sound())
    }

    pub fn viewers(&self) -> usize {
        self.lock().state.viewers()
    }

    /// Holds a place for a session about to negotiate; `Err(Full)` at `max_viewers`.
    pub fn reserve(self: &Arc<Self>) -> Result<Slot, RoomError> {
        let r = self.lock().state.reserve()?;
        Ok(Slot { reservation: Some(r), room: Arc::clone(self) })
    }

    fn leave(self: &Arc<Self>, id: u64) {
        let effects = {
            let mut inner = self.lock();
            inner.queues.remove(&id);
            inner.listen_only.remove(&id);
            inner.state.leave(id)
        };
        self.run_detached(effects);
    }

    /// A viewer's control channel opened: events flow to it from now on, starting with `hello`.
    pub fn attach_events(&self, id: u64) -> Option<mpsc::Receiver<Arc<Outgoing>>> {
        let settings = self.settings();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let mut inner = self.lock();
        let hello = inner.state.attach(id, settings)?;
        let _ = tx.try_send(Arc::new(Outgoing::new(hello)));
        inner.queues.insert(id, tx);
        Some(rx)
    }

    fn broadcast(&self, except: Option<u64>, event: Event) {
        let name = event.name();
        let out = Arc::new(Outgoing::new(event));
        let inner = self.lock();
        // Under the room lock, so the log's order is the control channels' order.
        self.events.publish(name, out.json());
        for id in inner.state.recipients(except) {
            if let Some(tx) = inner.queues.get(&id) {
                if tx.try_send(out.clone()).is_err() {
                    log::debug!("{}: event queue full; dropped {name}", viewer_label(id));
                }
            }
        }
    }

    /// Runs effects that need no answer (broadcasts, speaker stop, implicit speaker opens).
    fn run_detached(self: &Arc<Self>, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Broadcast { except, event } => self.broadcast(except, self.fill(event)),
                Effect::StopSpeaker => self.speaker_off(),
                Effect::OpenSpeaker { viewer, explicit } => {
                    let Some(speaker) = self.speaker.clone() else { continue };
                    let room = Arc::clone(self);
                    let Ok(rt) = tokio::runtime::Handle::try_current() else { continue };
                    rt.spawn(async move {
                        let effects = match open_speaker(&speaker).await {
                            Ok(()) => room.lock().state.speaker_opened(viewer).1,
                            Err(e) => {
                                let _ = room.lock().state.speaker_failed(viewer, explicit, e, Instant::now());
                                Vec::new()
                            }
                        };
                        room.run_detached(effects);
                    });
                }
                Effect::ListenOnly { viewer, on } => {
                    if let Some(tx) = self.lock().listen_only.get(&viewer) {
                        tx.send_replace(on);
                    }
                    log::info!("{}: {}", viewer_label(viewer), if on { "listen-only (no video)" } else { "video resumed" });
                }
                Effect::Pipeline(op) => log::warn!("room: pipeline change {op:?} without a requester; ignored"),
                Effect::Lullaby(action) => log::warn!("room: lullaby {action:?} without a requester; ignored"),
            }
        }
    }

    /// Events whose content the pure state cannot know (the settings) get it here.
    fn fill(&self, event: Event) -> Event {
        match event {
            Event::SettingsChanged { by, .. } => Event::SettingsChanged { settings: self.settings(), by },
            e => e,
        }
    }

    /// What is being sent (getSettings), with counters; also `GET /api/settings`.
    pub fn settings(&self) -> Value {
        let p = &self.pipeline;
        let mut video = serde_json::to_value(p.video_settings()).unwrap_or(Value::Null);
        let mut audio = serde_json::to_value(p.audio_settings()).unwrap_or(Value::Null);
        if let Value::Object(v) = &mut video {
            v.insert("encoded_frames".into(), json!(p.hub.video.units_published()));
            v.insert("keyframes".into(), json!(p.hub.video.keyframes_published()));
            v.insert("encoders_started".into(), json!(p.stats.encoders_started.load(Ordering::Relaxed)));
            v.insert("low_rung_encoders_started".into(), json!(p.stats.low_rung_encoders_started.load(Ordering::Relaxed)));
            v.insert("rate_control".into(), json!(p.stats.rate_control_name()));
            if p.stats.rate_control_name() == "camera" {
                v.insert("camera_bitrate_kbps".into(), json!(p.stats.camera_bitrate_bps.load(Ordering::Relaxed) / 1000));
            }
            v.insert("frames_captured".into(), json!(p.stats.frames_captured.load(Ordering::Relaxed)));
            v.insert("frames_dropped".into(), json!(p.stats.frames_dropped.load(Ordering::Relaxed)));
            v.insert("frames_skipped".into(), json!(p.stats.frames_skipped.load(Ordering::Relaxed)));
            v.insert("encode_ms".into(), json!(p.stats.encode_us.load(Ordering::Relaxed) as f64 / 1000.0));
            v.insert("low_rung_frames".into(), json!(p.hub.video_low.units_published()));
            v.insert("low_rung_encode_ms".into(), json!(p.stats.encode_low_us.load(Ordering::Relaxed) as f64 / 1000.0));
            let cfg = p.hub.rates.config();
            v.insert("min_bitrate_kbps".into(), json!(cfg.min_bps / 1000));
            v.insert("ladder".into(), json!(cfg.enabled));
            v.insert("targets".into(), serde_json::to_value(p.hub.rates.targets()).unwrap_or(Value::Null));
        }
        if let Value::Object(a) = &mut audio {
            a.insert("encoded_frames".into(), json!(p.hub.audio.units_published()));
            a.insert("xruns".into(), json!(p.stats.audio_xruns.load(Ordering::Relaxed)));
        }
        let (viewers, listeners, talker) = {
            let inner = self.lock();
            (inner.state.viewers(), inner.state.listeners(), inner.state.talker().map(|t| t.to_json()))
        };
        let talkback = match &self.speaker {
            Some(s) => serde_json::to_value(s.status()).unwrap_or(Value::Null),
            None => json!({"enabled": false}),
        };
        // Each viewer's link as congestion control sees it (the page shows its own).
        let links: Vec<Value> = p
            .hub
            .rates
            .viewers()
            .into_iter()
            .map(|v| {
                let mut j = serde_json::to_value(&v).unwrap_or(Value::Null);
                if let Value::Object(o) = &mut j {
                    o.insert("viewer".into(), json!(viewer_label(v.viewer)));
                }
                j
            })
            .collect();
        let (offset_us, steps) = crate::capture::wall_clock_offset_us();
        // How far the wall clock is from the media clock (it jumped `steps` times since start).
        let clock = json!({"wall_offset_ms": offset_us / 1000, "wall_clock_steps": steps});
        let mut settings = json!({
            "video": video,
            "audio": audio,
            "viewers": viewers,
            "listeners": listeners,
            "links": links,
            "talker": talker,
            "talkback": talkback,
            "webrtc": { "udp_port": self.udp_port },
            "problems": self.problems(),
            "night": self.night(),
            "clock": clock,
            "version": env!("CARGO_PKG_VERSION"),
        });
        let sections: Vec<(&'static str, SettingsSection)> = self.sections.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Value::Object(o) = &mut settings {
            for (name, section) in sections {
                o.insert(name.into(), section());
            }
        }
        settings
    }

    /// Adds `name` to `settings()` (`/api/settings`, control `get_settings`), made by `section`
    /// each time. Replaces an earlier section of that name.
    pub fn add_settings_section(&self, name: &'static str, section: SettingsSection) {
        let mut s = self.sections.lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|(n, _)| *n != name);
        s.push((name, section));
    }


    /// Reports a problem found outside the room, for `/api/settings` (`problems`). The same text
    /// twice is kept once; past [`MAX_PROBLEMS`] the oldest goes.
    pub fn report_problem(&self, text: impl Into<String>) {
        let text = text.into();
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if !p.contains(&text) {
            if p.len() >= MAX_PROBLEMS {
                p.remove(0);
            }
            p.push(text);
        }
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One control message (text) → the reply to send back (serialized by the caller).
    pub async fn handle_message(self: &Arc<Self>, from: Origin, text: &str) -> Reply {
        let (id, request) = control::parse(text);
        let result = match request {
            Ok(r) => self.handle(from, r).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            log::debug!("control request from {} refused: {e}", from.label());
        }
        Reply { id, result }
    }

    /// [`Room::handle_message`] as JSON text.
    pub async fn handle_text(self: &Arc<Self>, from: Origin, text: &str) -> String {
        self.handle_message(from, text).await.to_text()
    }

    pub async fn handle(self: &Arc<Self>, from: Origin, request: Request) -> Result<Value, ControlError> {
        match &request {
            Request::GetSound => return Ok(self.sound()),
            Request::Night(mode) => {
                return match mode {
                    Some(m) => self.set_night(*m, from).await,
                    None => Ok(self.night()),
                };
            }
            Request::SetSound(change) => {
                let result = self.set_sound(change);
                if result.is_ok() {
                    log::info!("sound thresholds changed by {}: {:?}", from.label(), self.pipeline.sound_params());
                }
                return result;
            }
            _ => {}
        }
        // Chat times are for people: the wall clock, whatever it says now.
        let at_ms = crate::capture::wall_now_us() / 1000;
        let handled = self.lock().state.request(from, request, Instant::now(), at_ms);
        match handled {
            Handled::Done(result, effects) => {
                self.run_detached(effects);
                result.map_err(ControlError::from)
            }
            Handled::Settings => Ok(self.settings()),
            Handled::Pending(Effect::Pipeline(op)) => self.pipeline_op(from, op).await,
            Handled::Pending(Effect::Lullaby(action)) => self.lullaby(from, action).await,
            Handled::Pending(Effect::OpenSpeaker { viewer, explicit }) => {
                let Some(speaker) = self.speaker.clone() else {
                    return Err(RoomError::TalkbackOff.into());
                };
                let (result, effects) = match open_speaker(&speaker).await {
                    Ok(()) => self.lock().state.speaker_opened(viewer),
                    Err(e) => (self.lock().state.speaker_failed(viewer, explicit, e, Instant::now()), Vec::new()),
                };
                self.run_detached(effects);
                result.map_err(ControlError::from)
            }
            Handled::Pending(other) => {
                self.run_detached(vec![other]);
                Ok(json!({}))
            }
        }
    }

    async fn pipeline_op(self: &Arc<Self>, from: Origin, op: PipelineOp) -> Result<Value, ControlError> {
        let result = match &op {
            PipelineOp::Apply(apply) => {
                apply.validate()?;
                let v = apply.video.clone().unwrap_or_default();
                let change = Change {
                    video: VideoConstraints {
                        width: v.width,
                        height: v.height,
                        frame_rate: v.frame_rate,
                        aspect_ratio: v.aspect_ratio,
                        format: None,
                    },
                    video_bitrate_kbps: v.bitrate_kbps,
                    audio_bitrate_kbps: apply.audio.as_ref().and_then(|a| a.bitrate_kbps),
                };
                match self.pipeline.apply(change).await {
                    Ok(()) => PipelineResult::Applied,
                    Err(e) => PipelineResult::Refused(apply_error(e)),
                }
            }
            PipelineOp::SetEnabled { kind, enabled } => PipelineResult::Enabled {
                changed: self.pipeline.set_enabled(*kind == control::TrackKind::Video, *enabled),
            },
        };
        let effects = self.lock().state.pipeline_done(from, &op, result)?;
        self.run_detached(effects);
        Ok(self.settings())
    }

    /// `POST /api/constraints` and `apply_constraints`.
    pub async fn apply(self: &Arc<Self>, from: Origin, apply: Apply) -> Result<Value, ControlError> {
        self.pipeline_op(from, PipelineOp::Apply(apply)).await
    }

    fn speaker_off(&self) {
        if let Some(s) = &self.speaker {
            s.stop();
        }
    }

    /// One RTP packet of a viewer's audio. Only the talker's reach the speaker; a viewer without
    /// a control channel (a plain WHEP client) takes a free speaker by sending.
    pub fn talk_packet(self: &Arc<Self>, v: u64, seq: u16, rtp_ts: u32, payload: Bytes) {
        let Some(speaker) = &self.speaker else { return };
        let (play, effects) = self.lock().state.audio(v, Instant::now());
        self.run_detached(effects);
        if play {
            speaker.push(seq, rtp_ts, payload);
        }
    }
}

async fn open_speaker(speaker: &Arc<Speaker>) -> Result<(), String> {
    let s = Arc::clone(speaker);
    match tokio::task::spawn_blocking(move || s.start()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(format!("speaker start failed: {e}")),
    }
}

/// The source's refusal as a room error; an OverconstrainedError names its constraint.
fn apply_error(e: ApplyError) -> RoomError {
    match e {
        ApplyError::Overconstrained(o) => {
            RoomError::Overconstrained { constraint: o.constraint.to_string(), message: o.to_string() }
        }
        // Anything else (the device vanished, the thread did not answer) is not the request's fault.
        ApplyError::Failed(msg) => RoomError::Unavailable(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overconstrained_names_the_constraint_and_other_failures_are_unavailable() {
        let o = crate::capture::constraints::Overconstrained {
            constraint: "frame_rate".into(),
            wanted: "min 60".into(),
            subject: "/dev/video0".into(),
            offers: "5..30".into(),
        };
        let e: ControlError = apply_error(ApplyError::Overconstrained(o)).into();
        assert_eq!(e.code, "overconstrained");
        assert_eq!(e.to_json()["constraint"], json!("frame_rate"));
        // text that merely looks like one is not parsed back
        let text = "OverconstrainedError: frame_rate (min 60) cannot be satisfied".to_string();
        assert_eq!(ControlError::from(apply_error(ApplyError::Failed(text))).code, "unavailable");
        assert_eq!(ControlError::from(apply_error(ApplyError::Failed("device busy".into()))).code, "unavailable");
    }
}
