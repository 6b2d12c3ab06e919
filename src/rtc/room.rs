//! The room: who is watching, who is talking, and the control requests that change the stream
//! for everyone. Sessions (WHEP, the page, PeerJS) join it; their control channels and the HTTP
//! API send it requests (see `CONTROL.md`); it pushes events back to every viewer.
//!
//! Events go to each viewer through its own small bounded queue: a viewer that stops reading
//! loses events, the others do not wait for it.

use super::control::{self, Apply, ControlError, Request, TalkAction, TrackKind};
use super::talkback::speaker::Speaker;
use super::talkback::{Claim, TalkArbiter};
use crate::capture::constraints::VideoConstraints;
use crate::capture::ApplyError;
use crate::pipeline::{Change, Pipeline};
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events queued per viewer before the oldest ones are dropped for it.
const EVENT_QUEUE: usize = 64;
const TALK_CHECK: Duration = Duration::from_millis(250);

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Viewer(u64),
    /// `POST /api/…` (scripts, home automation).
    Api,
}

impl Origin {
    fn label(self) -> Value {
        match self {
            Origin::Viewer(v) => json!(viewer_label(v)),
            Origin::Api => json!("api"),
        }
    }
}

pub fn viewer_label(id: u64) -> String {
    format!("v{id}")
}

struct Viewer {
    name: Option<String>,
    /// Its offer had a data channel: it will talk through `talk request`, never implicitly
    /// (its audio may arrive before the channel opens).
    expects_control: bool,
    events: Option<mpsc::Sender<Arc<str>>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    viewers: BTreeMap<u64, Viewer>,
    talk: TalkArbiter,
}

pub struct Room {
    pipeline: Arc<Pipeline>,
    speaker: Option<Arc<Speaker>>,
    udp_port: u16,
    inner: Mutex<Inner>,
    /// After the speaker failed to open, implicit talkers (audio packets) do not retry before
    /// this: a caller's 50 packets a second must not become 50 device opens and log lines.
    speaker_retry_at: Mutex<Option<Instant>>,
}

/// How long implicit talk waits after the speaker could not be opened.
const SPEAKER_RETRY: Duration = Duration::from_secs(10);

/// A viewer's membership; leaving the room is dropping it.
pub struct ViewerHandle {
    pub id: u64,
    room: Weak<Room>,
}

impl Drop for ViewerHandle {
    fn drop(&mut self) {
        if let Some(room) = self.room.upgrade() {
            room.leave(self.id);
        }
    }
}

impl Room {
    /// `speaker`: the playback device for talk-back (`None`: talk-back is off).
    pub fn new(pipeline: Arc<Pipeline>, speaker: Option<Arc<Speaker>>, udp_port: u16) -> Arc<Self> {
        let room = Arc::new(Self {
            pipeline,
            speaker,
            udp_port,
            inner: Mutex::new(Inner::default()),
            speaker_retry_at: Mutex::new(None),
        });
        room.clone().watch_background();
        room
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Background duties: give the speaker back when its talker went quiet; tell everyone when
    /// the camera goes offline or comes back. Ends when the room is dropped.
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
                        let expired = room.lock().talk.expire(Instant::now());
                        if let Some(v) = expired {
                            log::info!("talk-back: {} went quiet; the speaker is free", viewer_label(v));
                            room.speaker_off();
                            room.broadcast("talker_changed", json!({"talker": null}));
                        }
                    }
                    changed = camera.changed() => {
                        if changed.is_err() { return; }
                        let online = *camera.borrow_and_update();
                        let Some(room) = weak.upgrade() else { return };
                        room.broadcast("camera", json!({"state": if online { "online" } else { "offline" }}));
                    }
                }
            }
        });
    }

    pub fn viewers(&self) -> usize {
        self.lock().viewers.len()
    }

    pub fn join(self: &Arc<Self>, expects_control: bool) -> ViewerHandle {
        let (id, count) = {
            let mut inner = self.lock();
            inner.next_id += 1;
            let id = inner.next_id;
            inner.viewers.insert(id, Viewer { name: None, expects_control, events: None });
            (id, inner.viewers.len())
        };
        self.broadcast_except(id, "viewer_joined", json!({"viewer": viewer_label(id), "viewers": count}));
        ViewerHandle { id, room: Arc::downgrade(self) }
    }

    fn leave(&self, id: u64) {
        let (was_talker, count) = {
            let mut inner = self.lock();
            inner.viewers.remove(&id);
            (inner.talk.release(id), inner.viewers.len())
        };
        if was_talker {
            log::info!("talk-back: {} left; the speaker is free", viewer_label(id));
            self.speaker_off();
            self.broadcast("talker_changed", json!({"talker": null}));
        }
        self.broadcast("viewer_left", json!({"viewer": viewer_label(id), "viewers": count}));
    }

    /// A viewer's control channel opened: events flow to it from now on, starting with `hello`.
    pub fn attach_events(&self, id: u64) -> Option<mpsc::Receiver<Arc<str>>> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let (count, talker) = {
            let mut inner = self.lock();
            let talker = inner.talk.talker();
            let count = inner.viewers.len();
            let viewer = inner.viewers.get_mut(&id)?;
            viewer.events = Some(tx.clone());
            (count, talker.map(|t| self.describe(&inner, t)))
        };
        let hello = control::event(
            "hello",
            json!({
                "viewer": viewer_label(id),
                "viewers": count,
                "talker": talker.unwrap_or(Value::Null),
                "talkback": self.speaker.is_some(),
                "camera": if *self.pipeline.camera_online().borrow() { "online" } else { "offline" },
                "settings": self.settings(),
            }),
        );
        let _ = tx.try_send(hello.into());
        Some(rx)
    }

    fn has_control(&self, id: u64) -> bool {
        self.lock().viewers.get(&id).is_some_and(|v| v.expects_control || v.events.is_some())
    }

    fn describe(&self, inner: &Inner, id: u64) -> Value {
        match inner.viewers.get(&id).and_then(|v| v.name.clone()) {
            Some(name) if !name.is_empty() => json!({"viewer": viewer_label(id), "name": name}),
            _ => json!({"viewer": viewer_label(id)}),
        }
    }

    pub fn broadcast(&self, event: &str, fields: Value) {
        self.send_events(None, event, fields);
    }

    fn broadcast_except(&self, except: u64, event: &str, fields: Value) {
        self.send_events(Some(except), event, fields);
    }

    fn send_events(&self, except: Option<u64>, event: &str, fields: Value) {
        let text: Arc<str> = control::event(event, fields).into();
        let inner = self.lock();
        for (id, v) in &inner.viewers {
            if Some(*id) == except {
                continue;
            }
            if let Some(tx) = &v.events {
                if tx.try_send(text.clone()).is_err() {
                    log::debug!("{}: event queue full; dropped {event}", viewer_label(*id));
                }
            }
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
            v.insert("frames_captured".into(), json!(p.stats.frames_captured.load(Ordering::Relaxed)));
            v.insert("frames_dropped".into(), json!(p.stats.frames_dropped.load(Ordering::Relaxed)));
            v.insert("encode_ms".into(), json!(p.stats.encode_us.load(Ordering::Relaxed) as f64 / 1000.0));
        }
        if let Value::Object(a) = &mut audio {
            a.insert("encoded_frames".into(), json!(p.hub.audio.units_published()));
            a.insert("xruns".into(), json!(p.stats.audio_xruns.load(Ordering::Relaxed)));
        }
        let (viewers, talker) = {
            let inner = self.lock();
            (inner.viewers.len(), inner.talk.talker().map(|t| self.describe(&inner, t)))
        };
        let talkback = match &self.speaker {
            Some(s) => serde_json::to_value(s.status()).unwrap_or(Value::Null),
            None => json!({"enabled": false}),
        };
        json!({
            "video": video,
            "audio": audio,
            "viewers": viewers,
            "talker": talker,
            "talkback": talkback,
            "webrtc": { "udp_port": self.udp_port },
            "version": env!("CARGO_PKG_VERSION"),
        })
    }

    /// One control message (text) → the reply to send back.
    pub async fn handle_text(&self, from: Origin, text: &str) -> String {
        let (id, request) = control::parse(text);
        let result = match request {
            Ok(r) => self.handle(from, r).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(v) => control::reply_ok(&id, v),
            Err(e) => {
                log::debug!("control request from {} refused: {e}", from.label());
                control::reply_err(&id, &e)
            }
        }
    }

    pub async fn handle(&self, from: Origin, request: Request) -> Result<Value, ControlError> {
        match request {
            Request::GetSettings => Ok(self.settings()),
            Request::ApplyConstraints(apply) => self.apply(from, apply).await,
            Request::SetTrackEnabled(t) => {
                if self.pipeline.set_enabled(t.kind == TrackKind::Video, t.enabled) {
                    log::info!("{} {} for everyone (by {})", t.kind.as_str(), if t.enabled { "resumed" } else { "paused" }, from.label());
                    self.broadcast(
                        "track_enabled",
                        json!({"kind": t.kind.as_str(), "enabled": t.enabled, "by": from.label()}),
                    );
                }
                Ok(self.settings())
            }
            Request::Talk(action) => {
                let Origin::Viewer(v) = from else {
                    return Err(ControlError::new("bad_message", "talk needs a viewer's connection (its audio is what plays)"));
                };
                self.talk(v, action).await
            }
            Request::Chat { text, name } => {
                let Origin::Viewer(v) = from else {
                    return Err(ControlError::new("bad_message", "chat is between viewers"));
                };
                if let Some(n) = name {
                    self.set_name(v, n);
                }
                let name = self.lock().viewers.get(&v).and_then(|x| x.name.clone());
                let at = crate::capture::unix_now_us() / 1000;
                self.broadcast("chat", json!({"from": viewer_label(v), "name": name, "text": text, "at": at}));
                Ok(json!({}))
            }
            Request::SetName(n) => {
                let Origin::Viewer(v) = from else {
                    return Err(ControlError::new("bad_message", "set_name is for viewers"));
                };
                self.set_name(v, n);
                Ok(json!({}))
            }
        }
    }

    fn set_name(&self, id: u64, name: String) {
        if let Some(v) = self.lock().viewers.get_mut(&id) {
            v.name = Some(name);
        }
    }

    pub async fn apply(&self, from: Origin, apply: Apply) -> Result<Value, ControlError> {
        apply.validate()?;
        let v = apply.video.unwrap_or_default();
        let change = Change {
            video: VideoConstraints {
                width: v.width,
                height: v.height,
                frame_rate: v.frame_rate,
                aspect_ratio: v.aspect_ratio,
                format: None,
            },
            video_bitrate_kbps: v.bitrate_kbps,
            audio_bitrate_kbps: apply.audio.and_then(|a| a.bitrate_kbps),
        };
        self.pipeline.apply(change).await.map_err(apply_error)?;
        let settings = self.settings();
        self.broadcast("settings_changed", json!({"settings": settings, "by": from.label()}));
        Ok(settings)
    }

    async fn talk(&self, v: u64, action: TalkAction) -> Result<Value, ControlError> {
        match action {
            TalkAction::Release => {
                if !self.lock().talk.release(v) {
                    return Err(ControlError::new("not_talking", "you are not the one talking"));
                }
                self.speaker_off();
                self.broadcast("talker_changed", json!({"talker": null}));
                Ok(json!({"talking": false, "talker": null}))
            }
            TalkAction::Request => {
                let Some(speaker) = self.speaker.clone() else {
                    return Err(ControlError::new(
                        "unavailable",
                        "talk-back is off on this camera ([speaker] device is empty)",
                    ));
                };
                let claim = {
                    let mut inner = self.lock();
                    let c = inner.talk.request(v, Instant::now());
                    if let Claim::Busy(t) = c {
                        let who = self.describe(&inner, t);
                        return Err(ControlError::new("busy", format!("{} is talking", viewer_label(t))).with("talker", who));
                    }
                    c
                };
                if claim == Claim::Granted {
                    if let Err(e) = open_speaker(&speaker).await {
                        self.lock().talk.release(v);
                        return Err(ControlError::new("unavailable", e));
                    }
                    log::info!("talk-back: {} is talking", viewer_label(v));
                    let who = self.describe(&self.lock(), v);
                    self.broadcast("talker_changed", json!({"talker": who}));
                }
                let who = self.describe(&self.lock(), v);
                Ok(json!({"talking": true, "talker": who}))
            }
        }
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
        let backing_off = self
            .speaker_retry_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| Instant::now() < t);
        let implicit = !self.has_control(v) && !backing_off;
        let (play, claim) = self.lock().talk.packet(v, implicit, Instant::now());
        if claim == Claim::Granted {
            log::info!("talk-back: {} (no control channel) is talking", viewer_label(v));
            let (room, speaker) = (Arc::clone(self), Arc::clone(speaker));
            tokio::spawn(async move {
                if let Err(e) = open_speaker(&speaker).await {
                    log::warn!("talk-back: {e}; not retrying for {} s", SPEAKER_RETRY.as_secs());
                    *room.speaker_retry_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + SPEAKER_RETRY);
                    room.lock().talk.release(v);
                    return;
                }
                room.broadcast("talker_changed", json!({"talker": {"viewer": viewer_label(v)}}));
            });
        }
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

/// The source's refusal as a control error; an OverconstrainedError names its constraint.
fn apply_error(e: ApplyError) -> ControlError {
    match e {
        ApplyError::Overconstrained(o) => {
            ControlError::new("overconstrained", o.to_string()).with("constraint", json!(o.constraint))
        }
        ApplyError::Failed(msg) => match msg.split("OverconstrainedError: ").nth(1) {
            // The camera path reports it as text (it resolves while opening the device).
            Some(rest) => {
                let name = rest.split([' ', '(']).next().unwrap_or("").to_string();
                ControlError::new("overconstrained", msg.clone()).with("constraint", json!(name))
            }
            None => ControlError::new("unavailable", msg),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_overconstrained_text_names_the_constraint() {
        let e = apply_error(ApplyError::Failed(
            "OverconstrainedError: frame_rate (min 60) cannot be satisfied by /dev/video0; it offers 5..30".into(),
        ));
        assert_eq!(e.code, "overconstrained");
        assert_eq!(e.to_json()["constraint"], json!("frame_rate"));
        assert_eq!(apply_error(ApplyError::Failed("device busy".into())).code, "unavailable");
    }
}
