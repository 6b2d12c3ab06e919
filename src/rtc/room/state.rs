//! The room as a pure state machine: who is in it (and under which name), who holds the speaker,
//! how many places are left. Events come in as method calls with `now`; what must happen out
//! there comes back as [`Effect`]s that the driver (`room.rs`) carries out: broadcast an event,
//! open or stop the speaker, apply a change to the pipeline. Nothing here touches a channel, a
//! thread or the clock, so every rule is tested with time as an argument.

use super::event::{CameraState, Event, Talker};
use crate::rtc::control::{Apply, TalkAction, TrackKind};
use crate::rtc::talkback::{Claim, TalkArbiter};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// After the speaker failed to open, implicit talkers (audio packets) do not retry before this:
/// a caller's 50 packets a second must not become 50 device opens and log lines.
pub const SPEAKER_RETRY: Duration = Duration::from_secs(10);

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Viewer(u64),
    /// `POST /api/…` (scripts, home automation).
    Api,
}

impl Origin {
    pub fn label(self) -> String {
        match self {
            Origin::Viewer(v) => viewer_label(v),
            Origin::Api => "api".into(),
        }
    }
}

/// Link ids from here up are the device's own publications (WHIP, `rtc::publish`), not room
/// viewers: they read the hub and report their link like a viewer, and are shown as `whipN`.
pub const PUBLISHER_ID_BASE: u64 = 1 << 62;

pub fn viewer_label(id: u64) -> String {
    match id.checked_sub(PUBLISHER_ID_BASE) {
        Some(n) => format!("whip{n}"),
        None => format!("v{id}"),
    }
}

/// Why the room refused something. Becomes a control-protocol error (`code`) at the edge.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoomError {
    #[error("too many viewers ({0}); try again later")]
    Full(usize),
    #[error("{} is talking", viewer_label(.0.viewer))]
    Busy(Talker),
    #[error("you are not the one talking")]
    NotTalking,
    #[error("talk-back is off on this camera ([speaker] device is empty)")]
    TalkbackOff,
    #[error("{0}")]
    SpeakerFailed(String),
    #[error("{0} needs a viewer's connection")]
    NeedsViewer(&'static str),
    #[error("{message}")]
    Overconstrained { constraint: String, message: String },
    #[error("{0}")]
    Unavailable(String),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Queue `event` for every viewer with an event channel, except `except`.
    Broadcast { except: Option<u64>, event: Event },
    /// Open the speaker for `viewer`; report back with [`RoomState::speaker_opened`] or
    /// [`RoomState::speaker_failed`].
    OpenSpeaker { viewer: u64, explicit: bool },
    StopSpeaker,
    /// Ask the pipeline; report back with [`RoomState::pipeline_done`].
    Pipeline(PipelineOp),
    /// Start, stop or describe the lullaby (the driver owns the speaker; it answers and tells
    /// everyone).
    Lullaby(crate::rtc::control::LullabyAction),
    /// Stop (`on`) or resume sending video to `viewer` (its session watches for this).
    ListenOnly { viewer: u64, on: bool },
}

/// A change for everyone that only the pipeline can make.
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineOp {
    Apply(Apply),
    SetEnabled { kind: TrackKind, enabled: bool },
}

/// How the pipeline answered a [`PipelineOp`].
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineResult {
    Applied,
    /// `set_enabled`: whether anything changed.
    Enabled { changed: bool },
    Refused(RoomError),
}

/// What a request became.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// The answer, with what to do now.
    Done(Result<Value, RoomError>, Vec<Effect>),
    /// The answer is the current settings (built by the driver).
    Settings,
    /// Waiting on the single effect given (speaker or pipeline); the driver reports back and
    /// gets the answer from that call.
    Pending(Effect),
}

#[derive(Debug, Clone, PartialEq)]
struct Viewer {
    name: Option<String>,
    /// Its offer had a data channel: it will talk through `talk request`, never implicitly
    /// (its audio may arrive before the channel opens).
    expects_control: bool,
    /// Its event channel is attached (events are queued for it).
    attached: bool,
    /// It asked for sound only (`listen_only`): its video is not sent.
    listen_only: bool,
}

/// The room's state. See the module comment.
#[derive(Debug)]
pub struct RoomState {
    next_id: u64,
    viewers: BTreeMap<u64, Viewer>,
    talk: TalkArbiter,
    talkback: bool,
    max_viewers: usize,
    /// Places promised to sessions still negotiating.
    reserved: usize,
    speaker_retry_at: Option<Instant>,
    camera: CameraState,
}

/// A place held for a session being negotiated (see [`RoomState::reserve`]).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a reservation must be joined or cancelled"]
pub struct Reservation(());

impl RoomState {
    /// `talkback`: a speaker is configured.
    pub fn new(talkback: bool, max_viewers: usize) -> Self {
        Self {
            next_id: 0,
            viewers: BTreeMap::new(),
            talk: TalkArbiter::default(),
            talkback,
            max_viewers,
            reserved: 0,
            speaker_retry_at: None,
            camera: CameraState::Online,
        }
    }

    pub fn set_max_viewers(&mut self, max: usize) {
        self.max_viewers = max;
    }

    pub fn viewers(&self) -> usize {
        self.viewers.len()
    }

    pub fn talkback(&self) -> bool {
        self.talkback
    }

    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// Holds a place before negotiating, so concurrent offers cannot all pass the limit check
    /// and overshoot it. Counted with the viewers until joined or cancelled.
    pub fn reserve(&mut self) -> Result<Reservation, RoomError> {
        if self.viewers.len() + self.reserved >= self.max_viewers {
            return Err(RoomError::Full(self.max_viewers));
        }
        self.reserved += 1;
        Ok(Reservation(()))
    }

    /// Negotiation failed: the place is free again.
    pub fn cancel(&mut self, r: Reservation) {
        let Reservation(()) = r;
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// A reserved place becomes a viewer. Returns its id.
    pub fn join(&mut self, r: Reservation, expects_control: bool) -> (u64, Vec<Effect>) {
        self.cancel(r);
        self.next_id += 1;
        let id = self.next_id;
        self.viewers.insert(id, Viewer { name: None, expects_control, attached: false, listen_only: false });
        let event = Event::ViewerJoined { viewer: id, viewers: self.viewers.len() };
        (id, vec![Effect::Broadcast { except: Some(id), event }])
    }

    pub fn leave(&mut self, id: u64) -> Vec<Effect> {
        if self.viewers.remove(&id).is_none() {
            return Vec::new();
        }
        let mut effects = Vec::new();
        if self.talk.release(id) {
            effects.push(Effect::StopSpeaker);
            effects.push(Effect::Broadcast { except: None, event: Event::TalkerChanged { talker: None } });
        }
        effects.push(Effect::Broadcast { except: None, event: Event::ViewerLeft { viewer: id, viewers: self.viewers.len() } });
        effects
    }

    /// The viewer's event channel opened. Returns the `hello` to send it first (the driver adds
    /// the settings), or `None` if the viewer is gone.
    pub fn attach(&mut self, id: u64, settings: Value) -> Option<Event> {
        self.viewers.get_mut(&id)?.attached = true;
        Some(Event::Hello {
            viewer: id,
            viewers: self.viewers.len(),
            talker: self.talker(),
            talkback: self.talkback,
            camera: self.camera,
            settings,
        })
    }

    pub fn is_attached(&self, id: u64) -> bool {
        self.viewers.get(&id).is_some_and(|v| v.attached)
    }

    /// The viewers an event goes to.
    pub fn recipients(&self, except: Option<u64>) -> impl Iterator<Item = u64> + '_ {
        self.viewers.iter().filter(move |(id, v)| v.attached && Some(**id) != except).map(|(id, _)| *id)
    }

    pub fn talker(&self) -> Option<Talker> {
        self.talk.talker().map(|t| self.describe(t))
    }

    fn describe(&self, id: u64) -> Talker {
        let name = self.viewers.get(&id).and_then(|v| v.name.clone()).filter(|n| !n.is_empty());
        Talker { viewer: id, name }
    }

    pub fn camera(&mut self, state: CameraState) -> Vec<Effect> {
        if self.camera == state {
            return Vec::new();
        }
        self.camera = state;
        vec![Effect::Broadcast { except: None, event: Event::Camera { state } }]
    }

    /// Time passes: a talker that went quiet gives the speaker back.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        match self.talk.expire(now) {
            Some(v) => {
                log::info!("talk-back: {} went quiet; the speaker is free", viewer_label(v));
                vec![Effect::StopSpeaker, Effect::Broadcast { except: None, event: Event::TalkerChanged { talker: None } }]
            }
            None => Vec::new(),
        }
    }

    /// One RTP packet of a viewer's audio: whether it goes to the speaker. A viewer without a
    /// control channel (a plain WHEP client, a PeerJS caller) takes a free speaker by sending.
    pub fn audio(&mut self, v: u64, now: Instant) -> (bool, Vec<Effect>) {
        if !self.talkback {
            return (false, Vec::new());
        }
        let has_control = self.viewers.get(&v).is_some_and(|x| x.expects_control || x.attached);
        let backing_off = self.speaker_retry_at.is_some_and(|t| now < t);
        let (play, claim) = self.talk.packet(v, !has_control && !backing_off, now);
        let mut effects = Vec::new();
        if claim == Claim::Granted {
            log::info!("talk-back: {} (no control channel) is talking", viewer_label(v));
            effects.push(Effect::OpenSpeaker { viewer: v, explicit: false });
        }
        (play, effects)
    }

    /// The speaker opened for `v`: everyone learns who talks. The answer to its `talk request`.
    pub fn speaker_opened(&mut self, v: u64) -> (Result<Value, RoomError>, Vec<Effect>) {
        if self.talk.talker() != Some(v) {
            // Released (or left) while the device opened: give it back.
            return (Err(RoomError::NotTalking), vec![Effect::StopSpeaker]);
        }
        log::info!("talk-back: {} is talking", viewer_label(v));
        let who = self.describe(v);
        let reply = json!({"talking": true, "talker": who.to_json()});
        (Ok(reply), vec![Effect::Broadcast { except: None, event: Event::TalkerChanged { talker: Some(who) } }])
    }

    /// The speaker could not be opened for `v`.
    pub fn speaker_failed(&mut self, v: u64, explicit: bool, why: String, now: Instant) -> Result<Value, RoomError> {
        self.talk.release(v);
        if !explicit {
            log::warn!("talk-back: {why}; not retrying for {} s", SPEAKER_RETRY.as_secs());
            self.speaker_retry_at = Some(now + SPEAKER_RETRY);
        }
        Err(RoomError::SpeakerFailed(why))
    }

    fn set_name(&mut self, id: u64, name: String) {
        if let Some(v) = self.viewers.get_mut(&id) {
            v.name = Some(name);
        }
    }

    /// `talk request` / `talk release`.
    pub fn talk(&mut self, v: u64, action: TalkAction, now: Instant) -> Handled {
        match action {
            TalkAction::Release => {
                if !self.talk.release(v) {
                    return Handled::Done(Err(RoomError::NotTalking), Vec::new());
                }
                let effects =
                    vec![Effect::StopSpeaker, Effect::Broadcast { except: None, event: Event::TalkerChanged { talker: None } }];
                Handled::Done(Ok(json!({"talking": false, "talker": null})), effects)
            }
            TalkAction::Request => {
                if !self.talkback {
                    return Handled::Done(Err(RoomError::TalkbackOff), Vec::new());
                }
                match self.talk.request(v, now) {
                    Claim::Busy(t) => Handled::Done(Err(RoomError::Busy(self.describe(t))), Vec::new()),
                    Claim::Granted => Handled::Pending(Effect::OpenSpeaker { viewer: v, explicit: true }),
                    Claim::Already => {
                        let who = self.describe(v);
                        Handled::Done(Ok(json!({"talking": true, "talker": who.to_json()})), Vec::new())
                    }
                }
            }
        }
    }

    /// A chat line; `at` is the wall-clock time in ms (for the event).
    /// `listen_only`: the viewer's own video stops or resumes; nobody else is told.
    pub fn listen_only(&mut self, v: u64, on: bool) -> Handled {
        let Some(viewer) = self.viewers.get_mut(&v) else {
            return Handled::Done(Err(RoomError::NeedsViewer("listen_only")), Vec::new());
        };
        let changed = viewer.listen_only != on;
        viewer.listen_only = on;
        let effects = if changed { vec![Effect::ListenOnly { viewer: v, on }] } else { Vec::new() };
        Handled::Done(Ok(json!({ "listen_only": on })), effects)
    }

    /// Viewers in listen-only mode (no video sent to them).
    pub fn listeners(&self) -> usize {
        self.viewers.values().filter(|v| v.listen_only).count()
    }

    pub fn chat(&mut self, v: u64, text: String, name: Option<String>, at_ms: u64) -> Handled {
        if let Some(n) = name {
            self.set_name(v, n);
        }
        let name = self.viewers.get(&v).and_then(|x| x.name.clone());
        let event = Event::Chat { from: v, name, text, at_ms };
        Handled::Done(Ok(json!({})), vec![Effect::Broadcast { except: None, event }])
    }

    /// A control request (already parsed). `at_ms`: wall-clock time for chat lines.
    pub fn request(&mut self, from: Origin, request: crate::rtc::control::Request, now: Instant, at_ms: u64) -> Handled {
        use crate::rtc::control::Request;
        let viewer = match from {
            Origin::Viewer(v) => Some(v),
            Origin::Api => None,
        };
        match request {
            Request::GetSettings => Handled::Settings,
            // The driver answers these from the pipeline before asking the room.
            Request::GetSound | Request::SetSound(_) => {
                Handled::Done(Err(RoomError::Unavailable("sound requests are served by the room's driver".into())), Vec::new())
            }
            Request::Night(_) => {
                Handled::Done(Err(RoomError::Unavailable("night requests are served by the room's driver".into())), Vec::new())
            }
            Request::ApplyConstraints(apply) => Handled::Pending(Effect::Pipeline(PipelineOp::Apply(apply))),
            Request::SetTrackEnabled(t) => {
                Handled::Pending(Effect::Pipeline(PipelineOp::SetEnabled { kind: t.kind, enabled: t.enabled }))
            }
            Request::Talk(action) => match viewer {
                Some(v) => self.talk(v, action, now),
                None => Handled::Done(Err(RoomError::NeedsViewer("talk")), Vec::new()),
            },
            Request::Chat { text, name } => match viewer {
                Some(v) => self.chat(v, text, name, at_ms),
                None => Handled::Done(Err(RoomError::NeedsViewer("chat")), Vec::new()),
            },
            Request::SetName(n) => match viewer {
                Some(v) => {
                    self.set_name(v, n);
                    Handled::Done(Ok(json!({})), Vec::new())
                }
                None => Handled::Done(Err(RoomError::NeedsViewer("set_name")), Vec::new()),
            },
            Request::ListenOnly(on) => match viewer {
                Some(v) => self.listen_only(v, on),
                None => Handled::Done(Err(RoomError::NeedsViewer("listen_only")), Vec::new()),
            },
            Request::Lullaby(_) if !self.talkback => Handled::Done(Err(RoomError::TalkbackOff), Vec::new()),
            Request::Lullaby(action) => Handled::Pending(Effect::Lullaby(action)),
        }
    }

    /// The pipeline answered `op` (asked by `from`). On success the answer is the settings
    /// (the driver builds them), and the effects tell everyone.
    pub fn pipeline_done(&mut self, from: Origin, op: &PipelineOp, result: PipelineResult) -> Result<Vec<Effect>, RoomError> {
        match (op, result) {
            (_, PipelineResult::Refused(e)) => Err(e),
            (PipelineOp::Apply(_), _) => Ok(vec![Effect::Broadcast {
                except: None,
                event: Event::SettingsChanged { settings: Value::Null, by: from },
            }]),
            (PipelineOp::SetEnabled { kind, enabled }, PipelineResult::Enabled { changed: true }) => {
                log::info!(
                    "{} {} for everyone (by {})",
                    kind.as_str(),
                    if *enabled { "resumed" } else { "paused" },
                    from.label()
                );
                Ok(vec![Effect::Broadcast {
                    except: None,
                    event: Event::TrackEnabled { kind: *kind, enabled: *enabled, by: from },
                }])
            }
            (PipelineOp::SetEnabled { .. }, _) => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtc::control::Request;
    use crate::rtc::talkback::{EXPLICIT_IDLE, IMPLICIT_IDLE};

    fn joined(s: &mut RoomState, control: bool) -> u64 {
        let r = s.reserve().unwrap();
        s.join(r, control).0
    }

    fn broadcasts(effects: &[Effect]) -> Vec<&Event> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Broadcast { event, .. } => Some(event),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn reservations_hold_the_viewer_limit_under_concurrency() {
        let mut s = RoomState::new(true, 3);
        // Twelve offers arrive before any finishes negotiating: exactly three get a place.
        let mut held = Vec::new();
        let mut full = 0;
        for _ in 0..12 {
            match s.reserve() {
                Ok(r) => held.push(r),
                Err(e) => {
                    assert_eq!(e, RoomError::Full(3));
                    full += 1;
                }
            }
        }
        assert_eq!((held.len(), full), (3, 9));
        // One fails to negotiate: its place is free again; the others join.
        s.cancel(held.pop().unwrap());
        for r in held {
            s.join(r, false);
        }
        assert_eq!((s.viewers(), s.reserved()), (2, 0));
        let r = s.reserve().expect("the cancelled place is free");
        assert!(s.reserve().is_err());
        s.join(r, false);
        assert_eq!(s.viewers(), 3);
        // Someone leaves: one more may come.
        s.leave(1);
        assert!(s.reserve().is_ok());
    }

    #[test]
    fn listen_only_is_the_viewers_own_and_told_to_its_session_once() {
        let t = Instant::now();
        let mut s = RoomState::new(true, 10);
        let (a, b) = (joined(&mut s, true), joined(&mut s, true));
        let on = s.request(Origin::Viewer(a), Request::ListenOnly(true), t, 0);
        assert_eq!(on, Handled::Done(Ok(json!({"listen_only": true})), vec![Effect::ListenOnly { viewer: a, on: true }]));
        assert_eq!(s.listeners(), 1);
        // Asking again changes nothing, so the session is not told again.
        assert_eq!(s.request(Origin::Viewer(a), Request::ListenOnly(true), t, 0), Handled::Done(Ok(json!({"listen_only": true})), vec![]));
        // Nobody else's video is touched; the API has no video of its own to stop.
        assert!(matches!(s.request(Origin::Api, Request::ListenOnly(true), t, 0), Handled::Done(Err(RoomError::NeedsViewer(_)), _)));
        let off = s.request(Origin::Viewer(a), Request::ListenOnly(false), t, 0);
        assert_eq!(off, Handled::Done(Ok(json!({"listen_only": false})), vec![Effect::ListenOnly { viewer: a, on: false }]));
        assert_eq!(s.listeners(), 0);
        s.request(Origin::Viewer(b), Request::ListenOnly(true), t, 0);
        s.leave(b);
        assert_eq!(s.listeners(), 0, "a listener who left is not counted");
    }

    #[test]
    fn join_and_leave_are_broadcast_to_the_others() {
        let mut s = RoomState::new(true, 10);
        let a = joined(&mut s, true);
        let hello = s.attach(a, json!({})).unwrap();
        assert!(matches!(hello, Event::Hello { viewer: 1, viewers: 1, talker: None, talkback: true, .. }));
        let r = s.reserve().unwrap();
        let (b, effects) = s.join(r, false);
        assert_eq!(effects, vec![Effect::Broadcast { except: Some(b), event: Event::ViewerJoined { viewer: b, viewers: 2 } }]);
        // Only attached viewers receive events, never the one excluded.
        assert_eq!(s.recipients(Some(b)).collect::<Vec<_>>(), vec![a]);
        assert_eq!(s.recipients(None).collect::<Vec<_>>(), vec![a]);
        let effects = s.leave(b);
        assert_eq!(broadcasts(&effects), vec![&Event::ViewerLeft { viewer: b, viewers: 1 }]);
        assert!(s.leave(b).is_empty(), "leaving twice changes nothing");
    }

    #[test]
    fn talk_arbitration_busy_and_release() {
        let t = Instant::now();
        let mut s = RoomState::new(true, 10);
        let (a, b) = (joined(&mut s, true), joined(&mut s, true));
        s.request(Origin::Viewer(b), Request::SetName("Dad".into()), t, 0);
        // a asks: the speaker must be opened first.
        assert_eq!(s.talk(a, TalkAction::Request, t), Handled::Pending(Effect::OpenSpeaker { viewer: a, explicit: true }));
        let (reply, effects) = s.speaker_opened(a);
        assert_eq!(reply.unwrap()["talker"], json!({"viewer": "v1"}));
        assert_eq!(broadcasts(&effects), vec![&Event::TalkerChanged { talker: Some(Talker { viewer: a, name: None }) }]);
        // b is told who holds it.
        match s.talk(b, TalkAction::Request, t) {
            Handled::Done(Err(RoomError::Busy(who)), fx) => {
                assert_eq!(who.viewer, a);
                assert!(fx.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // b's audio is not played; b cannot release a's speaker.
        assert_eq!(s.audio(b, t).0, false);
        assert!(matches!(s.talk(b, TalkAction::Release, t), Handled::Done(Err(RoomError::NotTalking), _)));
        // a asks again: already holding, no new open.
        assert!(matches!(s.talk(a, TalkAction::Request, t), Handled::Done(Ok(_), ref fx) if fx.is_empty()));
        // a releases: speaker stopped, everyone told; b may talk now and its name is shown.
        let Handled::Done(Ok(_), fx) = s.talk(a, TalkAction::Release, t) else { panic!() };
        assert_eq!(fx[0], Effect::StopSpeaker);
        assert_eq!(broadcasts(&fx), vec![&Event::TalkerChanged { talker: None }]);
        assert!(matches!(s.talk(b, TalkAction::Request, t), Handled::Pending(_)));
        let (reply, _) = s.speaker_opened(b);
        assert_eq!(reply.unwrap()["talker"], json!({"viewer": "v2", "name": "Dad"}));
    }

    #[test]
    fn the_talker_leaving_frees_the_speaker() {
        let t = Instant::now();
        let mut s = RoomState::new(true, 10);
        let (a, b) = (joined(&mut s, true), joined(&mut s, true));
        s.talk(a, TalkAction::Request, t);
        let _ = s.speaker_opened(a);
        let fx = s.leave(a);
        assert_eq!(fx[0], Effect::StopSpeaker);
        assert_eq!(
            broadcasts(&fx),
            vec![&Event::TalkerChanged { talker: None }, &Event::ViewerLeft { viewer: a, viewers: 1 }]
        );
        assert!(matches!(s.talk(b, TalkAction::Request, t), Handled::Pending(_)));
        // A viewer that is not talking leaves: no speaker effect.
        let c = joined(&mut s, false);
        assert!(!s.leave(c).contains(&Effect::StopSpeaker));
    }

    #[test]
    fn a_talker_released_while_the_speaker_opened_gives_it_back() {
        let t = Instant::now();
        let mut s = RoomState::new(true, 10);
        let a = joined(&mut s, true);
        s.talk(a, TalkAction::Request, t);
        s.leave(a);
        let (reply, fx) = s.speaker_opened(a);
        assert!(reply.is_err());
        assert_eq!(fx, vec![Effect::StopSpeaker]);
    }

    #[test]
    fn quiet_talkers_time_out() {
        let t = Instant::now();
        let mut s = RoomState::new(true, 10);
        // Implicit (no control channel): held while packets flow, released after IMPLICIT_IDLE.
        let w = joined(&mut s, false);
        let (play, fx) = s.audio(w, t);
        assert!(play);
        assert_eq!(fx, vec![Effect::OpenSpeaker { viewer: w, explicit: false }]);
        assert_eq!(s.speaker_opened(w).1.len(), 1);
        let later = t + IMPLICIT_IDLE / 2;
        assert_eq!(s.audio(w, later), (true, vec![]));
        assert!(s.tick(later + IMPLICIT_IDLE / 2).is_empty());
        let fx = s.tick(later + IMPLICIT_IDLE + Duration::from_millis(1));
        assert_eq!(fx[0], Effect::StopSpeaker);
        assert_eq!(broadcasts(&fx), vec![&Event::TalkerChanged { talker: None }]);
        // Explicit: EXPLICIT_IDLE.
        let c = joined(&mut s, true);
        s.talk(c, TalkAction::Request, t);
        assert!(s.tick(t + EXPLICIT_IDLE).is_empty());
        assert!(!s.tick(t + EXPLICIT_IDLE + Duration::from_millis(1)).is_empty());
    }

    #[test]
    fn control_viewers_must_ask_and_failed_speakers_back_off() {
        let t = Instant::now();
        let mut s = RoomState::new(true, 10);
        let c = joined(&mut s, true);
        assert_eq!(s.audio(c, t), (false, vec![]), "a control-channel viewer talks only after asking");
        let w = joined(&mut s, false);
        let (_, fx) = s.audio(w, t);
        assert_eq!(fx, vec![Effect::OpenSpeaker { viewer: w, explicit: false }]);
        assert!(s.speaker_failed(w, false, "no such device".into(), t).is_err());
        // Packets keep coming: no new open until SPEAKER_RETRY has passed.
        assert_eq!(s.audio(w, t + Duration::from_secs(1)), (false, vec![]));
        let (_, fx) = s.audio(w, t + SPEAKER_RETRY);
        assert_eq!(fx.len(), 1);
        // Without a speaker configured nothing plays and requests say so.
        let mut off = RoomState::new(false, 10);
        let v = joined(&mut off, false);
        assert_eq!(off.audio(v, t), (false, vec![]));
        assert_eq!(off.talk(v, TalkAction::Request, t), Handled::Done(Err(RoomError::TalkbackOff), vec![]));
    }

    #[test]
    fn privacy_and_settings_changes_are_broadcast() {
        let t = Instant::now();
        let mut s = RoomState::new(true, 10);
        let a = joined(&mut s, true);
        let req = Request::SetTrackEnabled(crate::rtc::control::TrackEnabled { kind: TrackKind::Video, enabled: false });
        let Handled::Pending(Effect::Pipeline(op)) = s.request(Origin::Viewer(a), req, t, 0) else { panic!() };
        assert_eq!(op, PipelineOp::SetEnabled { kind: TrackKind::Video, enabled: false });
        let fx = s.pipeline_done(Origin::Api, &op, PipelineResult::Enabled { changed: true }).unwrap();
        assert_eq!(
            broadcasts(&fx),
            vec![&Event::TrackEnabled { kind: TrackKind::Video, enabled: false, by: Origin::Api }]
        );
        assert_eq!(
            broadcasts(&fx)[0].to_json(),
            json!({"v": 1, "type": "event", "event": "track_enabled", "kind": "video", "enabled": false, "by": "api"})
        );
        // Already paused: nothing to tell.
        assert!(s.pipeline_done(Origin::Api, &op, PipelineResult::Enabled { changed: false }).unwrap().is_empty());
        // A refusal is the answer.
        let apply = PipelineOp::Apply(Apply::default());
        let e = RoomError::Overconstrained { constraint: "width".into(), message: "no".into() };
        assert_eq!(s.pipeline_done(Origin::Viewer(a), &apply, PipelineResult::Refused(e.clone())), Err(e));
        let fx = s.pipeline_done(Origin::Viewer(a), &apply, PipelineResult::Applied).unwrap();
        assert!(matches!(broadcasts(&fx)[0], Event::SettingsChanged { by: Origin::Viewer(1), .. }));
        // The camera going away is told once.
        assert_eq!(s.camera(CameraState::Offline).len(), 1);
        assert!(s.camera(CameraState::Offline).is_empty());
    }

    #[test]
    fn api_requests_that_need_a_viewer_are_refused() {
        let t = Instant::now();
        let mut s = RoomState::new(true, 10);
        for req in [Request::Talk(TalkAction::Request), Request::SetName("x".into()), Request::Chat { text: "hi".into(), name: None }] {
            assert!(matches!(s.request(Origin::Api, req, t, 0), Handled::Done(Err(RoomError::NeedsViewer(_)), _)));
        }
        let a = joined(&mut s, true);
        let Handled::Done(Ok(_), fx) = s.request(Origin::Viewer(a), Request::Chat { text: "hi".into(), name: Some("Mum".into()) }, t, 42)
        else {
            panic!()
        };
        assert_eq!(
            broadcasts(&fx)[0].to_json(),
            json!({"v": 1, "type": "event", "event": "chat", "from": "v1", "name": "Mum", "text": "hi", "at": 42})
        );
    }
}
