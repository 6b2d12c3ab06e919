//! The pipeline manager: opens the sources, runs capture and encode on their own threads, and
//! publishes encoded units into the hub. Nothing here runs on the tokio runtime.
//!
//! ```text
//! video: capture thread ──(mailbox: latest frame wins)──► encode thread ──► hub.video
//! audio: capture + Opus thread ────────────────────────────────────────────► hub.audio
//! ```
//! The mailbox holds at most one frame: if encoding falls behind, the older frame is dropped
//! rather than delayed. Both threads sleep while nobody watches.

use crate::capture::testsrc::TestPattern;
use crate::capture::tone::Tone;
use crate::capture::slate;
use crate::capture::constraints::{NumConstraint, VideoConstraints};
use crate::capture::{AudioFrame, AudioSource, ApplyError, CaptureError, Frame, VideoFrame, VideoSource, AUDIO_FRAME_SAMPLES};
use crate::codec::h264::{H264Params, PROFILE_LEVEL_ID};
use crate::codec::video::{Backend, VideoEncoder};
use crate::codec::opus::OpusEncoder;
use crate::codec::still::{IdrKeeper, StillStep};
use crate::config::{AudioSourceKind, Config, VideoSourceKind};
use crate::hub::{Hub, KeyframeGate};
use serde::Serialize;

mod passthrough;
pub mod motion;
pub mod night;
pub mod record;
pub mod sound;
pub mod request;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Forced IDRs at most this often; more requests in between are coalesced.
const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(250);
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Periodic IDR interval of the low rung, at least (seconds).
const LOW_RUNG_KEYFRAME_S: u32 = 10;
/// The low rung's name in logs and counters.
const LOW_RUNG_NAME: &str = "low";
/// Frame period of the "CAMERA OFFLINE" slate.
const SLATE_PERIOD: Duration = Duration::from_millis(200);
/// A capture loop that has not turned for this long is stalled.
const STALL_LIMIT: Duration = Duration::from_secs(3);

/// Counters the threads update and `/api/settings` reads.
#[derive(Default)]
pub struct Stats {
    /// Encoders opened, both rungs.
    pub encoders_started: AtomicU64,
    /// Of those, the low rung's: it starts when a viewer's link first needs it, which is not a
    /// restart of the main picture.
    pub low_rung_encoders_started: AtomicU64,
    pub frames_captured: AtomicU64,
    pub frames_dropped: AtomicU64,
    /// Last encode time in microseconds (for the settings page and benchmarks).
    pub encode_us: AtomicU64,
    /// Last low-rung downscale + encode time in microseconds.
    pub encode_low_us: AtomicU64,
    /// Frames the encoders' rate control skipped (over budget).
    pub frames_skipped: AtomicU64,
    /// ALSA capture overruns recovered (for `/api/settings`).
    pub audio_xruns: AtomicU64,
    /// Unix ms of the last captured video frame.
    pub last_capture_ms: AtomicU64,
    /// Unix ms of the last turn of the video capture loop (idle or not): the watchdog's proof
    /// that the capture thread is alive.
    pub capture_heartbeat_ms: AtomicU64,
    /// Who sets the video bitrate now ([`rate_control_code`]), and the camera's own when it does.
    pub rate_control: AtomicU8,
    pub camera_bitrate_bps: AtomicU32,
    /// Which encoder makes the main picture (`video.encoder` in `/api/settings`).
    pub encoder: Mutex<EncoderStatus>,
}

/// `video.encoder` in `/api/settings`: the main rung's encoder, the hardware device when it is
/// one, and why the service fell back to openh264 if it did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EncoderStatus {
    /// "openh264" or "v4l2m2m".
    pub name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Set when the hardware encoder failed and openh264 took over (the error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// The hardware encoder reads the camera's frames in place (DMABUF, no copy); v4l2m2m only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_copy: Option<bool>,
}

impl EncoderStatus {
    fn of(backend: &Backend) -> Self {
        match backend {
            Backend::OpenH264 => EncoderStatus { name: "openh264", ..Default::default() },
            Backend::M2m(f) => {
                EncoderStatus { name: "v4l2m2m", device: Some(f.path.clone()), driver: Some(f.driver.clone()), fallback: None, zero_copy: Some(false) }
            }
        }
    }
}

fn rate_control_code(rc: crate::capture::RateControl) -> u8 {
    match rc {
        crate::capture::RateControl::Encoder => 0,
        crate::capture::RateControl::Camera { .. } => 1,
        crate::capture::RateControl::Fixed => 2,
    }
}

impl Stats {
    /// `video.rate_control` in `/api/settings`: "encoder", "camera" or "none".
    pub fn rate_control_name(&self) -> &'static str {
        match self.rate_control.load(Ordering::Relaxed) {
            1 => "camera",
            2 => "none",
            _ => "encoder",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VideoSettings {
    pub source: String,
    /// False in privacy mode (`set_track_enabled`): viewers see a "VIDEO PAUSED" slate.
    pub enabled: bool,
    pub codec: &'static str,
    pub profile_level_id: &'static str,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub keyframe_interval_s: u32,
    /// The main picture's H.264 encoder (`[video] encoder`).
    pub encoder: EncoderStatus,
    /// Why the configured camera is not what is being sent (missing, busy, overconstrained…);
    /// the camera keeps it current.
    #[serde(skip_serializing_if = "crate::capture::Problem::is_none")]
    pub problem: crate::capture::Problem,
}

#[derive(Debug, Clone, Serialize)]
pub struct AudioSettings {
    pub source: String,
    /// False in privacy mode: silence is sent.
    pub enabled: bool,
    pub codec: &'static str,
    pub sample_rate: u32,
    pub channels: u32,
    pub bitrate_kbps: u32,
    /// Why the configured microphone is not what is being sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// What can change while running; the threads read it every frame.
struct Live {
    video_enabled: AtomicBool,
    audio_enabled: AtomicBool,
    fps: AtomicU32,
    video_bitrate_kbps: AtomicU32,
    audio_bitrate_kbps: AtomicU32,
    /// Live constraint changes for the capture thread (which owns the source).
    apply_tx: Mutex<mpsc::Sender<ApplyCommand>>,
    camera_online: tokio::sync::watch::Sender<bool>,
    /// Sound-analysis thresholds; `sound_version` changes with them, so the audio thread
    /// looks at the lock only when something changed.
    sound_params: Mutex<sound::SoundParams>,
    sound_version: AtomicU64,
    /// What the device plays on its own speaker ([`sound::OwnSound`] as u8).
    own_sound: AtomicU8,
    sound_state: Mutex<sound::SoundState>,
    /// Motion detection on (`[motion] enabled`, `POST /api/motion`): the capture thread keeps
    /// the camera open and analyses `fps` frames a second, watched or not.
    motion_enabled: AtomicBool,
    motion_params: Mutex<motion::MotionParams>,
    motion_version: AtomicU64,
    motion_state: Mutex<motion::MotionState>,
    /// The test pattern's box and strip move (shared with the `TestPattern`).
    test_pattern_moving: Arc<AtomicBool>,
    /// The test pattern is drawn dark (night-vision tests; shared with the `TestPattern`).
    test_pattern_dark: Arc<AtomicBool>,
    /// Night vision: luma samples go there, greyscale comes back (`night::run`).
    night: Arc<night::run::NightShared>,
}

/// Motion events queued for the room before the newest are dropped.
pub const MOTION_EVENT_QUEUE: usize = 16;
/// Snapshot requests waiting for the capture thread at once (more: 503).
pub const SNAPSHOT_QUEUE: usize = 4;
/// How often an idle capture thread looks for snapshot requests.
const IDLE_SNAPSHOT_POLL: Duration = Duration::from_millis(100);

/// `[motion]` as the detector's parameters.
pub fn motion_params(c: &crate::config::MotionConfig) -> motion::MotionParams {
    motion::MotionParams {
        sensitivity: c.sensitivity.get(),
        min_area_percent: c.min_area_percent.0,
        cooldown_s: c.cooldown_s.get(),
        fps: c.fps.get(),
        masks: c.masks.iter().map(|m| motion::Rect { x: m.0[0], y: m.0[1], w: m.0[2], h: m.0[3] }).collect(),
    }
}

/// Why there is no snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The camera delivers H.264 only (passthrough) and its IDR did not decode.
    #[error("{0}")]
    Still(#[from] crate::codec::still::StillError),
    #[error("the video is paused (privacy mode)")]
    Paused,
    #[error("the camera is offline: {0}")]
    Offline(String),
    #[error("too many snapshots at once; try again")]
    Busy,
    #[error("the camera gave no frame in time")]
    Timeout,
}

/// What the capture thread answers a snapshot with: a raw frame, or (passthrough) an IDR that
/// the asking task decodes itself, off the capture thread.
enum Picture {
    Raw(VideoFrame),
    H264Idr { annexb: Vec<u8>, capture_unix_us: u64 },
}

struct SnapshotRequest {
    reply: tokio::sync::oneshot::Sender<Result<Picture, SnapshotError>>,
}

/// Sound events queued for the room before the newest are dropped (the audio thread never
/// waits on its readers).
pub const SOUND_EVENT_QUEUE: usize = 64;

/// `[sound]` as the analyzer's parameters.
pub fn sound_params(c: &crate::config::SoundConfig) -> sound::SoundParams {
    sound::SoundParams {
        level_interval_ms: c.level_interval_ms.get(),
        noise_threshold_db: c.noise_threshold_db.0,
        noise_duration_ms: c.noise_duration_ms.get(),
        noise_reset_s: c.noise_reset_s.get(),
        cry_threshold_db: c.cry_threshold_db.0,
        cry_min_bursts: c.cry_min_bursts.get(),
        cry_window_s: c.cry_window_s.get(),
        cry_reset_s: c.cry_reset_s.get(),
    }
}

/// How the audio thread treats sound analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listening {
    analyse: bool,
    without_viewers: bool,
}

struct ApplyCommand {
    /// Only the keys to change; the capture thread merges them into its current set.
    change: VideoConstraints,
    reply: tokio::sync::oneshot::Sender<Result<(u32, u32, u32), ApplyError>>,
}

/// A live change of what is sent (`apply_constraints`): size/rate constraints for the source,
/// and bitrates for the encoders. `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub video: VideoConstraints,
    pub video_bitrate_kbps: Option<u32>,
    pub audio_bitrate_kbps: Option<u32>,
}

impl Change {
    fn touches_source(&self) -> bool {
        let v = &self.video;
        v.width.is_some() || v.height.is_some() || v.frame_rate.is_some() || v.aspect_ratio.is_some() || v.format.is_some()
    }
}

pub struct Pipeline {
    pub hub: Arc<Hub>,
    pub stats: Arc<Stats>,
    video: Mutex<VideoSettings>,
    audio: Mutex<AudioSettings>,
    live: Arc<Live>,
    /// One change at a time: a second waits rather than interleaving with the first.
    applying: tokio::sync::Mutex<()>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    sound_events: Mutex<Option<tokio::sync::mpsc::Receiver<sound::SoundEvent>>>,
    sound_enabled: bool,
    motion_events: Mutex<Option<tokio::sync::mpsc::Receiver<motion::MotionEvent>>>,
    snapshots: mpsc::SyncSender<SnapshotRequest>,
    testsrc: bool,
    night_events: Mutex<Option<tokio::sync::mpsc::Receiver<night::run::NightEvent>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pipeline {
    pub fn start(config: &Config, hub: Arc<Hub>) -> Result<Pipeline, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        stats.capture_heartbeat_ms.store(crate::capture::unix_now_us() / 1000, Ordering::Relaxed);
        let v = &config.video;

        let motion_initial = motion_params(&config.motion);
        motion_initial.validate().map_err(|e| format!("[motion] {e}"))?;
        let test_pattern_moving = Arc::new(AtomicBool::new(v.test_pattern_motion));
        let test_pattern_dark = Arc::new(AtomicBool::new(false));
        let (mut video_source, video_problem) = select_video(v, &test_pattern_moving, &test_pattern_dark);
        let testsrc = video_source.name() == "testsrc";
        let (audio_source, audio_problem) = select_audio(&config.audio);
        // The main rung's encoder: hardware when asked for or found (a forced one that is
        // missing stops the start here), else openh264.
        let (backend, note) = crate::codec::video::resolve(v.encoder, &v.encoder_device)?;
        log::info!("H.264 encoder: {note}");
        *lock(&stats.encoder) = EncoderStatus::of(&backend);
        if matches!(backend, Backend::M2m(_)) {
            // A camera delivering the encoder's layout lends it its buffers (zero-copy).
            video_source.offer_dmabuf();
        }
        let (sw, sh, sfps) = video_source.settings();
        let video = VideoSettings {
            source: video_source.name(),
            enabled: true,
            codec: "H264",
            profile_level_id: PROFILE_LEVEL_ID,
            width: sw,
            height: sh,
            fps: sfps,
            bitrate_kbps: v.bitrate_kbps.get(),
            keyframe_interval_s: v.keyframe_interval_s.get(),
            encoder: EncoderStatus::of(&backend),
            problem: video_source.problem().unwrap_or_else(|| video_problem.into()),
        };
        let audio = AudioSettings {
            source: audio_source.name(),
            enabled: true,
            codec: "opus",
            sample_rate: 48_000,
            channels: 1,
            bitrate_kbps: config.audio.bitrate_kbps.get(),
            problem: audio_problem,
        };
        let (apply_tx, apply_rx) = mpsc::channel();
        let (night_shared, night_rx, night_thread) = night::run::start(&config.night, hub.clone(), stop.clone())?;
        let live = Arc::new(Live {
            video_enabled: AtomicBool::new(true),
            audio_enabled: AtomicBool::new(true),
            fps: AtomicU32::new(sfps),
            video_bitrate_kbps: AtomicU32::new(v.bitrate_kbps.get()),
            audio_bitrate_kbps: AtomicU32::new(config.audio.bitrate_kbps.get()),
            apply_tx: Mutex::new(apply_tx),
            camera_online: tokio::sync::watch::channel(true).0,
            sound_params: Mutex::new(sound_params(&config.sound)),
            sound_version: AtomicU64::new(0),
            own_sound: AtomicU8::new(0),
            sound_state: Mutex::new(sound::SoundState::default()),
            motion_enabled: AtomicBool::new(config.motion.enabled),
            motion_params: Mutex::new(motion_initial),
            motion_version: AtomicU64::new(0),
            motion_state: Mutex::new(motion::MotionState::default()),
            test_pattern_moving,
            test_pattern_dark,
            night: night_shared,
        });
        let (motion_tx, motion_rx) = tokio::sync::mpsc::channel(MOTION_EVENT_QUEUE);
        let (snapshot_tx, snapshot_rx) = mpsc::sync_channel(SNAPSHOT_QUEUE);
        let listening = Listening { analyse: config.sound.enabled, without_viewers: config.sound.enabled && config.sound.listen_without_viewers };
        let (sound_tx, sound_rx) = tokio::sync::mpsc::channel(SOUND_EVENT_QUEUE);
        let keyframe_interval_s = v.keyframe_interval_s.get();
        // The config's size and rate as ideals, plus [video.constraints]: what live changes
        // are merged into.
        let constraints = request::camera_request(v).constraints;

        let mailbox = Arc::new(Mailbox::default());
        let (recycle_tx, recycle_rx) = mpsc::channel::<Frame>();
        // Requests from the encode thread (camera H.264 passthrough) to the camera, which the
        // capture thread owns.
        let (camera_tx, camera_rx) = mpsc::sync_channel(passthrough::TO_CAMERA_QUEUE);
        let mut threads = vec![night_thread];
        threads.push(spawn("capture-video", {
            let (hub, stop, stats, mailbox, live) = (hub.clone(), stop.clone(), stats.clone(), mailbox.clone(), live.clone());
            move || {
                let ctl = CaptureControl { live: &live, commands: apply_rx, camera: camera_rx, constraints, snapshots: snapshot_rx, motion_tx };
                video_capture_loop(video_source, &hub, &stop, &stats, &mailbox, recycle_rx, ctl)
            }
        })?);
        threads.push(spawn("encode-video", {
            let (hub, stop, stats, mailbox, live) = (hub.clone(), stop.clone(), stats.clone(), mailbox.clone(), live.clone());
            move || video_encode_loop(keyframe_interval_s, backend, &live, &hub, &stop, &stats, &mailbox, recycle_tx, camera_tx)
        })?);
        threads.push(spawn("audio", {
            let (hub, stop, live, stats) = (hub.clone(), stop.clone(), live.clone(), stats.clone());
            move || audio_loop(audio_source, &live, &hub, &stop, &stats, listening, sound_tx)
        })?);

        Ok(Pipeline {
            hub,
            stats,
            video: Mutex::new(video),
            audio: Mutex::new(audio),
            live,
            applying: tokio::sync::Mutex::new(()),
            stop,
            threads: Mutex::new(threads),
            sound_events: Mutex::new(Some(sound_rx)),
            sound_enabled: config.sound.enabled,
            motion_events: Mutex::new(Some(motion_rx)),
            snapshots: snapshot_tx,
            testsrc,
            night_events: Mutex::new(Some(night_rx)),
        })
    }

    /// The motion events (once: the room takes them and spreads them).
    pub fn take_motion_events(&self) -> Option<tokio::sync::mpsc::Receiver<motion::MotionEvent>> {
        lock(&self.motion_events).take()
    }

    pub fn motion_enabled(&self) -> bool {
        self.live.motion_enabled.load(Ordering::SeqCst)
    }

    pub fn motion_params(&self) -> motion::MotionParams {
        lock(&self.live.motion_params).clone()
    }

    pub fn motion_state(&self) -> motion::MotionState {
        *lock(&self.live.motion_state)
    }

    /// Changes motion detection live (all or nothing): on/off and the parameters.
    pub fn set_motion(&self, change: &motion::MotionChange) -> Result<motion::MotionParams, motion::ParamError> {
        let mut p = lock(&self.live.motion_params);
        *p = p.with(change)?;
        self.live.motion_version.fetch_add(1, Ordering::SeqCst);
        if let Some(on) = change.enabled {
            self.live.motion_enabled.store(on, Ordering::SeqCst);
            // Wake an idle capture thread at once is not needed: it looks every 100 ms.
        }
        Ok(p.clone())
    }

    /// Whether the source is the test pattern, and whether its box moves.
    pub fn test_pattern(&self) -> (bool, bool) {
        (self.testsrc, self.live.test_pattern_moving.load(Ordering::SeqCst))
    }

    /// Stops or restarts the test pattern's box and strip.
    pub fn set_test_pattern_moving(&self, moving: bool) {
        self.live.test_pattern_moving.store(moving, Ordering::SeqCst);
    }

    /// Whether the test pattern is drawn dark (a dark room for the night-vision tests).
    pub fn test_pattern_dark(&self) -> bool {
        self.live.test_pattern_dark.load(Ordering::SeqCst)
    }

    pub fn set_test_pattern_dark(&self, dark: bool) {
        self.live.test_pattern_dark.store(dark, Ordering::SeqCst);
    }

    /// Night vision: status and live mode changes.
    pub fn night(&self) -> &night::run::NightShared {
        &self.live.night
    }

    /// The `night` events (once: the room takes them and spreads them).
    pub fn take_night_events(&self) -> Option<tokio::sync::mpsc::Receiver<night::run::NightEvent>> {
        lock(&self.night_events).take()
    }

    /// The next raw frame the capture thread reads (the camera is opened if it was idle: that
    /// can take a second or two; no encoder is started).
    pub async fn snapshot(&self) -> Result<VideoFrame, SnapshotError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.snapshots.try_send(SnapshotRequest { reply }).map_err(|_| SnapshotError::Busy)?;
        match tokio::time::timeout(Duration::from_secs(5), answer).await {
            Ok(Ok(Ok(Picture::Raw(f)))) => Ok(f),
            Ok(Ok(Ok(Picture::H264Idr { annexb, capture_unix_us }))) => {
                tokio::task::spawn_blocking(move || crate::codec::still::decode_idr(&annexb, capture_unix_us))
                    .await
                    .map_err(|_| SnapshotError::Timeout)?
                    .map_err(SnapshotError::from)
            }
            Ok(Ok(Err(e))) => Err(e),
            _ => Err(SnapshotError::Timeout),
        }
    }

    /// The sound-analysis events (once: the room takes them and spreads them).
    pub fn take_sound_events(&self) -> Option<tokio::sync::mpsc::Receiver<sound::SoundEvent>> {
        lock(&self.sound_events).take()
    }

    pub fn sound_enabled(&self) -> bool {
        self.sound_enabled
    }

    pub fn sound_params(&self) -> sound::SoundParams {
        *lock(&self.live.sound_params)
    }

    /// The last level window and whether an alert is on.
    pub fn sound_state(&self) -> sound::SoundState {
        *lock(&self.live.sound_state)
    }

    /// The device's speaker plays a lullaby (or stopped): its own sound must not raise alerts.
    pub fn set_own_sound(&self, own: sound::OwnSound) {
        self.live.own_sound.store(own as u8, Ordering::Relaxed);
    }

    /// Changes thresholds live (all or nothing); returns the new set.
    pub fn set_sound(&self, change: &sound::SoundChange) -> Result<sound::SoundParams, sound::ParamError> {
        let mut p = lock(&self.live.sound_params);
        *p = p.with(change)?;
        self.live.sound_version.fetch_add(1, Ordering::SeqCst);
        Ok(*p)
    }

    pub fn video_settings(&self) -> VideoSettings {
        let mut v = lock(&self.video).clone();
        v.encoder = lock(&self.stats.encoder).clone();
        v
    }

    pub fn audio_settings(&self) -> AudioSettings {
        lock(&self.audio).clone()
    }

    /// Follows the camera: false while it is gone (viewers see the offline slate).
    pub fn camera_online(&self) -> tokio::sync::watch::Receiver<bool> {
        self.live.camera_online.subscribe()
    }

    /// Applies a live change for everyone; viewers stay connected (a new size makes the encoder
    /// restart with an IDR). Size and rate go to the source first: if it cannot meet them,
    /// nothing changes.
    pub async fn apply(&self, change: Change) -> Result<(), ApplyError> {
        let _one_at_a_time = self.applying.lock().await;
        if change.touches_source() {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let sent = lock(&self.live.apply_tx).send(ApplyCommand { change: change.video.clone(), reply });
            if sent.is_err() {
                return Err(ApplyError::Failed("the video capture thread is not running".into()));
            }
            // The capture thread looks at least every IDLE_POLL; a camera reopen takes < 1 s.
            let (w, h, fps) = match tokio::time::timeout(Duration::from_secs(5), answer).await {
                Ok(Ok(result)) => result?,
                _ => return Err(ApplyError::Failed("the video source did not answer within 5 s".into())),
            };
            self.live.fps.store(fps, Ordering::Relaxed);
            let mut v = lock(&self.video);
            (v.width, v.height, v.fps) = (w, h, fps);
        }
        if let Some(kbps) = change.video_bitrate_kbps {
            self.live.video_bitrate_kbps.store(kbps, Ordering::Relaxed);
            self.hub.rates.set_max_bps(kbps.saturating_mul(1000));
            lock(&self.video).bitrate_kbps = kbps;
        }
        if let Some(kbps) = change.audio_bitrate_kbps {
            self.live.audio_bitrate_kbps.store(kbps, Ordering::Relaxed);
            lock(&self.audio).bitrate_kbps = kbps;
        }
        Ok(())
    }

    /// Privacy mode: pauses the video (a slate; the camera is not read) or the microphone
    /// (silence) for every viewer. Returns whether anything changed.
    pub fn set_enabled(&self, video: bool, enabled: bool) -> bool {
        let flag = if video { &self.live.video_enabled } else { &self.live.audio_enabled };
        let changed = flag.swap(enabled, Ordering::SeqCst) != enabled;
        if video {
            lock(&self.video).enabled = enabled;
        } else {
            lock(&self.audio).enabled = enabled;
        }
        changed
    }

    /// Stops the threads (they notice within `IDLE_POLL` or one frame). A thread stuck in a
    /// device call is left behind rather than holding up the exit.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let threads: Vec<_> = self.threads.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        let deadline = Instant::now() + Duration::from_millis(700);
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                log::warn!("thread {} did not stop in time", t.thread().name().unwrap_or("?"));
            }
        }
    }

    /// Whether the capture thread is still turning (for the systemd watchdog).
    pub fn health(&self) -> Result<(), String> {
        let beat = self.stats.capture_heartbeat_ms.load(Ordering::Relaxed);
        let now = crate::capture::unix_now_us() / 1000;
        let age = now.saturating_sub(beat);
        if age > STALL_LIMIT.as_millis() as u64 {
            return Err(format!("the video capture thread has not run for {:.1} s", age as f64 / 1000.0));
        }
        Ok(())
    }
}

/// The video source the config asks for. `v4l2`: the camera, or, while it cannot be opened, the
/// offline slate (it keeps being retried). `auto`: the first usable camera, else the test
/// pattern. Returns the reason when the source is not what was asked for.
fn select_video(v: &crate::config::VideoConfig, moving: &Arc<AtomicBool>, dark: &Arc<AtomicBool>) -> (Box<dyn VideoSource>, Option<String>) {
    use crate::capture::v4l2::V4l2Camera;
    use request::camera_request;
    let (width, height, fps) = (v.width.get(), v.height.get(), v.fps.get());
    let noise = v.test_pattern_noise_percent.get();
    match v.source {
        VideoSourceKind::Testsrc => (Box::new(TestPattern::new(width, height, fps).with_noise(noise).with_motion_switch(moving.clone()).with_dark_switch(dark.clone())), None),
        VideoSourceKind::V4l2 | VideoSourceKind::Libcamera => match V4l2Camera::new(camera_request(v)) {
            (cam, Ok(o)) => {
                log::info!("video source: camera {} ({}, {}), {}", o.device.id, o.device.path, o.device.card, o.mode);
                (Box::new(cam), None)
            }
            (cam, Err(e)) => {
                log::error!("video source \"v4l2\": {e}; showing the offline slate until the camera is usable");
                (Box::new(cam), Some(e))
            }
        },
        VideoSourceKind::Auto => match V4l2Camera::open(camera_request(v)) {
            Ok((cam, o)) => {
                log::info!("video source \"auto\": camera {} ({}, {}), {}", o.device.id, o.device.path, o.device.card, o.mode);
                (Box::new(cam), None)
            }
            Err(e) => {
                log::info!("video source \"auto\": {e}; using the test pattern");
                (Box::new(TestPattern::new(width, height, fps).with_noise(noise).with_motion_switch(moving.clone()).with_dark_switch(dark.clone())), Some(e))
            }
        },
    }
}

/// The audio source the config asks for (see `select_video`); an offline microphone sends
/// silence.
fn select_audio(a: &crate::config::AudioConfig) -> (Box<dyn AudioSource>, Option<String>) {
    use crate::capture::alsa::AlsaMic;
    use request::mic_request;
    match a.source {
        AudioSourceKind::Tone => (Box::new(Tone::new()), None),
        AudioSourceKind::None => (Box::new(Tone::silence()), None),
        AudioSourceKind::Alsa => match AlsaMic::new(mic_request(a)) {
            (mic, Ok(o)) => {
                log::info!("audio source: {} ({:?}, {} Hz, {} ch)", o.pcm, o.format, o.rate, o.channels);
                (Box::new(mic), None)
            }
            (mic, Err(e)) => {
                log::error!("audio source \"alsa\": {e}; sending silence until the microphone is usable");
                (Box::new(mic), Some(e))
            }
        },
        AudioSourceKind::Auto => match AlsaMic::open(mic_request(a)) {
            Ok((mic, o)) => {
                log::info!("audio source \"auto\": {} ({:?}, {} Hz, {} ch)", o.pcm, o.format, o.rate, o.channels);
                (Box::new(mic), None)
            }
            Err(e) => {
                log::info!("audio source \"auto\": {e}; using the test tone");
                (Box::new(Tone::new()), Some(e))
            }
        },
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| format!("cannot start thread {name}: {e}"))
}

/// Holds the newest frame; putting a new one hands back the one it replaced.
#[derive(Default)]
struct Mailbox {
    slot: Mutex<Option<Frame>>,
    ready: Condvar,
}

impl Mailbox {
    fn put(&self, frame: Frame) -> Option<Frame> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let old = slot.replace(frame);
        self.ready.notify_one();
        old
    }

    fn take(&self, timeout: Duration) -> Option<Frame> {
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let (mut slot, _) = self
            .ready
            .wait_timeout_while(slot, timeout, |s| s.is_none())
            .unwrap_or_else(|e| e.into_inner());
        slot.take()
    }
}

/// What the capture thread needs for live changes.
struct CaptureControl<'a> {
    live: &'a Live,
    commands: mpsc::Receiver<ApplyCommand>,
    /// IDR requests and refusals from the H.264 passthrough (encode thread).
    camera: mpsc::Receiver<passthrough::ToCamera>,
    /// The constraints the source was opened with; changes are merged into them.
    constraints: VideoConstraints,
    /// `GET /api/snapshot.jpg`: each gets a copy of the next raw frame.
    snapshots: mpsc::Receiver<SnapshotRequest>,
    motion_tx: tokio::sync::mpsc::Sender<motion::MotionEvent>,
}

impl CaptureControl<'_> {
    fn serve(&mut self, source: &mut dyn VideoSource) {
        while let Ok(req) = self.camera.try_recv() {
            match req {
                passthrough::ToCamera::Keyframe => source.request_keyframe(),
                passthrough::ToCamera::RefuseH264(why) => source.refuse_h264(why),
                passthrough::ToCamera::Bitrate(bps) => source.set_bitrate(bps),
            }
        }
        while let Ok(cmd) = self.commands.try_recv() {
            let mut next = self.constraints.clone();
            let c = cmd.change;
            let keep = |new: Option<NumConstraint>, old: &mut Option<NumConstraint>| {
                if new.is_some() {
                    *old = new;
                }
            };
            keep(c.width, &mut next.width);
            keep(c.height, &mut next.height);
            keep(c.frame_rate, &mut next.frame_rate);
            keep(c.aspect_ratio, &mut next.aspect_ratio);
            if c.format.is_some() {
                next.format = c.format;
            }
            let result = source.apply_constraints(&next).map(|()| {
                self.constraints = next;
                let s = source.settings();
                log::info!("video source {} now delivers {}x{} @ {} fps", source.name(), s.0, s.1, s.2);
                s
            });
            if let Err(e) = &result {
                log::info!("live constraints not applied: {e}");
            }
            let _ = cmd.reply.send(result);
        }
    }
}

/// Motion detection as the capture thread runs it: at its own rate, watched or not.
#[derive(Default)]
struct MotionRun {
    detector: Option<motion::MotionDetector>,
    grid: motion::Grid,
    next_due: Option<Instant>,
    version: u64,
    out: Vec<motion::MotionEvent>,
}

impl MotionRun {
    /// How long until the next analysis, if it is not due yet.
    fn due_in(&self, now: Instant) -> Option<Duration> {
        self.next_due.filter(|t| *t > now).map(|t| t - now)
    }

    /// The frames stopped coming for a while (idle, privacy, a camera fault): the next one is
    /// compared with nothing.
    fn gap(&mut self) {
        if let Some(d) = self.detector.as_mut() {
            d.reset_reference();
        }
    }

    /// Motion detection was turned off: an ongoing motion ends now.
    fn stop(&mut self, live: &Live, tx: &tokio::sync::mpsc::Sender<motion::MotionEvent>) {
        if let Some(mut d) = self.detector.take() {
            d.finish(crate::capture::unix_now_us() / 1000, &mut self.out);
            *lock(&live.motion_state) = d.state();
            for e in self.out.drain(..) {
                let _ = tx.try_send(e);
            }
        }
        self.next_due = None;
    }

    fn analyse(&mut self, frame: &VideoFrame, live: &Live, tx: &tokio::sync::mpsc::Sender<motion::MotionEvent>) {
        let now = Instant::now();
        if self.due_in(now).is_some() {
            return;
        }
        let version = live.motion_version.load(Ordering::SeqCst);
        let detector = match self.detector.as_mut() {
            Some(d) => {
                if version != self.version {
                    d.set_params(lock(&live.motion_params).clone());
                }
                d
            }
            None => self.detector.insert(motion::MotionDetector::new(lock(&live.motion_params).clone())),
        };
        self.version = version;
        let period = Duration::from_secs(1) / detector.params().fps.max(1);
        // On the grid of the previous analysis unless it fell behind by a period.
        self.next_due = Some(match self.next_due {
            Some(t) if now.duration_since(t) < period => t + period,
            _ => now + period,
        });
        let (y, _, _) = frame.planes();
        let (w, h) = (frame.width as usize, frame.height as usize);
        self.grid.fill(y, w, h, w);
        // The test pattern's timestamp code changes every frame, and at a carry many of its bits
        // flip at once (over 1 % of the picture at 640x360): that is not motion.
        if let Some((x1, y1)) = crate::capture::timecode::drawn_strip(y, frame.width, frame.height, w) {
            self.grid.blank_top_left(w, h, x1, y1);
        }
        detector.push(&self.grid, frame.capture_unix_us / 1000, &mut self.out);
        *lock(&live.motion_state) = detector.state();
        for e in self.out.drain(..) {
            // Full: the room is behind; never wait here.
            let _ = tx.try_send(e);
        }
    }
}

fn answer_snapshots(pending: &mut Vec<SnapshotRequest>, result: impl Fn() -> Result<Picture, SnapshotError>) {
    for r in pending.drain(..) {
        let _ = r.reply.send(result());
    }
}

fn video_capture_loop(
    mut source: Box<dyn VideoSource>,
    hub: &Hub,
    stop: &AtomicBool,
    stats: &Stats,
    mailbox: &Mailbox,
    recycle: mpsc::Receiver<Frame>,
    mut ctl: CaptureControl<'_>,
) {
    let mut spare: Option<Frame> = None;
    let mut failing = false;
    let mut motion_run = MotionRun::default();
    let mut night_hook = night::run::FrameHook::new();
    // Passthrough cameras: what a snapshot needs from their H.264 (codec::still).
    let mut still = IdrKeeper::new();
    let mut still_sequence = 0u64;
    // Snapshot requests taken from the channel: answered (or failed) on this turn or the next
    // frame, so at most `SNAPSHOT_QUEUE` wait here.
    let mut pending: Vec<SnapshotRequest> = Vec::with_capacity(SNAPSHOT_QUEUE);
    // Test hook for the watchdog test: simulate a capture thread wedged in a driver call.
    let stall_at = std::env::var("PEERCAM_FAULT_STALL_CAPTURE_AFTER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    while !stop.load(Ordering::Relaxed) {
        stats.capture_heartbeat_ms.store(crate::capture::unix_now_us() / 1000, Ordering::Relaxed);
        if stall_at.is_some_and(|t| Instant::now() >= t) {
            log::warn!("PEERCAM_FAULT_STALL_CAPTURE_AFTER_MS: stalling the capture thread");
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        ctl.serve(source.as_mut());
        let rc = source.rate_control();
        stats.rate_control.store(rate_control_code(rc), Ordering::Relaxed);
        if let crate::capture::RateControl::Camera { bps } = rc {
            stats.camera_bitrate_bps.store(bps, Ordering::Relaxed);
        }
        while pending.len() < SNAPSHOT_QUEUE {
            match ctl.snapshots.try_recv() {
                Ok(r) => pending.push(r),
                Err(_) => break,
            }
        }
        let motion_on = ctl.live.motion_enabled.load(Ordering::Relaxed);
        if !motion_on && motion_run.detector.is_some() {
            motion_run.stop(ctl.live, &ctl.motion_tx);
        }
        // Nobody watches: the source is read only for a snapshot or a due motion analysis
        // (`[motion] enabled`, like `[sound] listen_without_viewers` for the microphone);
        // nothing is encoded then (the encode thread sees no viewer).
        if hub.demand.watchers() == 0 && pending.is_empty() {
            if !motion_on {
                if !hub.demand.wait_for_watchers(IDLE_SNAPSHOT_POLL) {
                    source.idle();
                    motion_run.gap();
                    continue;
                }
            } else if let Some(wait) = motion_run.due_in(Instant::now()) {
                hub.demand.wait_for_watchers(wait.min(IDLE_SNAPSHOT_POLL));
                continue;
            }
        }
        let watched = hub.demand.watchers() > 0;
        let (w, h, _) = source.settings();
        // Reuse buffers: the one the mailbox handed back, or one the encoder finished with.
        let mut frame = spare
            .take()
            .or_else(|| recycle.try_recv().ok())
            .unwrap_or_else(|| Frame::new(w, h));
        if !ctl.live.video_enabled.load(Ordering::Relaxed) {
            // Privacy mode: the camera is not read at all; viewers see that it is paused.
            answer_snapshots(&mut pending, || Err(SnapshotError::Paused));
            motion_run.gap();
            if watched {
                slate::render(frame.i420_mut(), w, h, slate::PAUSED, crate::capture::unix_now_us());
                if let Some(old) = mailbox.put(frame) {
                    spare = Some(old);
                }
            } else {
                spare = Some(frame);
            }
            std::thread::sleep(SLATE_PERIOD);
            continue;
        }
        match source.next_frame(&mut frame) {
            Ok(()) => {
                if failing {
                    log::info!("video source {} is delivering again", source.name());
                    failing = false;
                    ctl.live.camera_online.send_replace(true);
                }
                stats.frames_captured.fetch_add(1, Ordering::Relaxed);
                stats.last_capture_ms.store(frame.capture_unix_us() / 1000, Ordering::Relaxed);
                match &mut frame {
                    Frame::I420(f) => {
                        // Brightness for night vision, and greyscale at night: before the
                        // snapshot and the encoder, so both show what viewers see.
                        night_hook.on_frame(&ctl.live.night, f, Instant::now());
                        answer_snapshots(&mut pending, || Ok(Picture::Raw(f.clone())));
                        if motion_on {
                            motion_run.analyse(f, ctl.live, &ctl.motion_tx);
                        }
                    }
                    Frame::H264(h) => {
                        // Passthrough: snapshots get an IDR (asked for once), decoded by the asker.
                        if h.sequence.saturating_sub(still_sequence) >= crate::capture::H264_REOPEN_JUMP {
                            still.reset();
                        }
                        still_sequence = h.sequence;
                        match still.push(&h.data, h.capture_unix_us, !pending.is_empty(), Instant::now()) {
                            StillStep::Wait => {}
                            StillStep::RequestIdr => source.request_keyframe(),
                            StillStep::Answer(annexb, capture_unix_us) => answer_snapshots(&mut pending, || {
                                Ok(Picture::H264Idr { annexb: annexb.clone(), capture_unix_us })
                            }),
                        }
                    }
                }
                if watched {
                    if let Some(old) = mailbox.put(frame) {
                        stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                        spare = Some(old);
                    }
                } else {
                    spare = Some(frame);
                }
            }
            Err(e) => {
                if !failing {
                    log::warn!("video source {}: {e}", source.name());
                    failing = true;
                }
                let why = e.to_string();
                answer_snapshots(&mut pending, || Err(SnapshotError::Offline(why.clone())));
                motion_run.gap();
                if let CaptureError::Gone(_) = e {
                    ctl.live.camera_online.send_if_modified(|online| std::mem::replace(online, false));
                    // The device went away: viewers stay connected and see the slate (a few
                    // frames a second) while the source keeps trying to reopen it.
                    if watched {
                        let (sw, sh, _) = source.settings();
                        slate::render(frame.i420_mut(), sw, sh, slate::OFFLINE, crate::capture::unix_now_us());
                        if let Some(old) = mailbox.put(frame) {
                            spare = Some(old);
                        }
                    } else {
                        spare = Some(frame);
                    }
                    std::thread::sleep(SLATE_PERIOD);
                } else {
                    spare = Some(frame);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}


#[allow(clippy::too_many_arguments)]
fn video_encode_loop(
    keyframe_interval_s: u32,
    backend: Backend,
    live: &Live,
    hub: &Hub,
    stop: &AtomicBool,
    stats: &Stats,
    mailbox: &Mailbox,
    recycle: mpsc::Sender<Frame>,
    camera: mpsc::SyncSender<passthrough::ToCamera>,
) {
    // The hardware encoder makes the main picture only: a Pi's VideoCore runs few encoder
    // instances, and the low rung is small enough for openh264.
    let mut main = RungEncoder::new("main", backend);
    let mut low = RungEncoder::new(LOW_RUNG_NAME, Backend::OpenH264);
    let mut low_frame = VideoFrame::new(2, 2);
    let mut low_turn = false;
    let mut gate = KeyframeGate::new(KEYFRAME_MIN_INTERVAL);
    let mut camera_h264 = passthrough::CameraH264::default();
    let mut camera_h264_mode: Option<bool> = None;
    let mut clock = VideoClock::default();
    while !stop.load(Ordering::Relaxed) {
        let Some(mut slot) = mailbox.take(IDLE_POLL) else { continue };
        if hub.demand.watchers() == 0 {
            slot.release_camera_buffer();
            let _ = recycle.send(slot);
            continue;
        }
        let passthrough = matches!(slot, Frame::H264(_));
        if camera_h264_mode != Some(passthrough) {
            // Camera H.264 has one size only: no low rung to offer viewers on weak links.
            hub.rates.set_low_available(!passthrough);
            camera_h264_mode = Some(passthrough);
        }
        let frame = match &mut slot {
            Frame::I420(frame) => frame,
            Frame::H264(unit) => {
                let ceiling = live.video_bitrate_kbps.load(Ordering::Relaxed).saturating_mul(1000);
                camera_h264.publish(unit, hub, &mut gate, stats, &camera, ceiling);
                let _ = recycle.send(slot);
                continue;
            }
        };
        // Each rung is encoded only while someone reads it; its bitrate follows the viewers'
        // links (hub::ladder) in place, without a new encoder or an IDR.
        let fps = live.fps.load(Ordering::Relaxed).max(1);
        frame.capture_unix_us = clock.stamp(frame.capture_unix_us, fps);
        let ceiling = live.video_bitrate_kbps.load(Ordering::Relaxed).saturating_mul(1000);
        let targets = hub.rates.targets();
        let kf = fps * keyframe_interval_s;
        if hub.video.readers() > 0 {
            if let Some(us) = main.encode(&frame, fps, kf, targets.main_bps.min(ceiling), &hub.video, stats) {
                stats.encode_us.store(us, Ordering::Relaxed);
            }
        }
        if hub.video_low.readers() > 0 {
            // Half frame rate: every other frame (the encoder budgets for the rate it gets).
            low_turn = !low_turn;
            if !targets.low_half_fps || low_turn {
                let low_fps = if targets.low_half_fps { (fps / 2).max(1) } else { fps };
                let t0 = Instant::now();
                frame.downscale_half_into(&mut low_frame);
                // Periodic IDRs are insurance (joins and PLIs get one at once); on a weak link each
                // one costs the low rung several frames of budget, so it gets them less often.
                let low_kf = kf.max(fps * LOW_RUNG_KEYFRAME_S);
                if low.encode(&low_frame, low_fps, low_kf, targets.low_bps.min(ceiling), &hub.video_low, stats).is_some() {
                    stats.encode_low_us.store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
            }
        }
        // The camera may refill its buffer once the encoder is done with it (a frame waiting
        // in the recycle channel must not hold it).
        frame.dmabuf = None;
        let _ = recycle.send(slot);
    }
}

/// One rung's H.264 encoder: made on first use, restarted only when the picture size or the
/// keyframe interval changes. Bitrate and frame rate change in place (congestion control moves
/// them several times a second).
struct RungEncoder {
    name: &'static str,
    backend: Backend,
    encoder: Option<VideoEncoder>,
    gate: KeyframeGate,
    failing: bool,
    /// What `video.encoder.zero_copy` last said (the shared status is written only on a change).
    zero_copy: bool,
}

impl RungEncoder {
    fn new(name: &'static str, backend: Backend) -> Self {
        Self { name, backend, encoder: None, gate: KeyframeGate::new(KEYFRAME_MIN_INTERVAL), failing: false, zero_copy: false }
    }

    /// The hardware encoder failed (at open or while encoding, e.g. the device vanished):
    /// openh264 takes over for the rest of the run; the next frame starts it with an IDR, so
    /// viewers lose nothing but the frame that failed.
    fn fall_back(&mut self, why: &str, stats: &Stats) {
        log::error!("{} rung: hardware H.264 encoder failed: {why}; switching to openh264 (software) for the rest of the run", self.name);
        self.backend = Backend::OpenH264;
        self.encoder = None;
        let mut s = lock(&stats.encoder);
        s.name = "openh264";
        s.fallback = Some(why.to_string());
        s.zero_copy = None;
    }

    /// Encodes `frame` into `stream`; returns the encode time in µs when a unit was published.
    fn encode(&mut self, frame: &VideoFrame, fps: u32, keyframe_interval_frames: u32, bitrate_bps: u32, stream: &crate::hub::Stream, stats: &Stats) -> Option<u64> {
        let wanted = H264Params { width: frame.width, height: frame.height, fps, bitrate_bps, keyframe_interval_frames };
        let camera_fourcc = frame.dmabuf.as_ref().map(|d| d.fourcc);
        let same_shape = self.encoder.as_ref().is_some_and(|e| {
            let p = e.params();
            (p.width, p.height, p.keyframe_interval_frames) == (wanted.width, wanted.height, wanted.keyframe_interval_frames)
                && !e.raw_format_differs(camera_fourcc)
        });
        if !same_shape {
            self.encoder = None;
            match VideoEncoder::open(&self.backend, wanted, camera_fourcc) {
                Ok(e) => {
                    stats.encoders_started.fetch_add(1, Ordering::Relaxed);
                    if self.name == LOW_RUNG_NAME {
                        stats.low_rung_encoders_started.fetch_add(1, Ordering::Relaxed);
                    }
                    log::info!(
                        "H.264 encoder ({} rung, {}) started: {}x{} @ {} fps, {} kbit/s",
                        self.name, self.backend.name(), wanted.width, wanted.height, wanted.fps, wanted.bitrate_bps / 1000
                    );
                    self.encoder = Some(e);
                }
                Err(e) if self.backend != Backend::OpenH264 => {
                    self.fall_back(&e, stats);
                    return self.encode(frame, fps, keyframe_interval_frames, bitrate_bps, stream, stats);
                }
                Err(e) => {
                    if !self.failing {
                        log::error!("{e}");
                        self.failing = true;
                    }
                    return None;
                }
            }
        }
        let enc = self.encoder.as_mut()?;
        if let Err(e) = enc.set_bitrate(bitrate_bps).and_then(|()| enc.set_frame_rate(fps)) {
            log::debug!("{} rung: {e}", self.name);
        }
        let now = Instant::now();
        let force = self.gate.take_request(stream, now);
        let t0 = Instant::now();
        match enc.encode(frame, force) {
            Ok(Some(unit)) => {
                let us = t0.elapsed().as_micros() as u64;
                if unit.keyframe {
                    self.gate.saw_keyframe(now);
                }
                if enc.is_hardware() && enc.reads_in_place() != self.zero_copy {
                    self.zero_copy = !self.zero_copy;
                    lock(&stats.encoder).zero_copy = Some(self.zero_copy);
                }
                self.failing = false;
                stream.publish(unit);
                Some(us)
            }
            Ok(None) => {
                stats.frames_skipped.fetch_add(1, Ordering::Relaxed);
                log::debug!("{} rung: frame skipped by rate control at {} kbit/s", self.name, bitrate_bps / 1000);
                None
            }
            Err(e) if enc.is_hardware() => {
                // This frame again on openh264 (which starts with an IDR).
                self.fall_back(&e, stats);
                self.encode(frame, fps, keyframe_interval_frames, bitrate_bps, stream, stats)
            }
            Err(e) => {
                if !self.failing {
                    log::error!("{} rung: {e}", self.name);
                    self.failing = true;
                }
                None
            }
        }
    }
}

/// Video timestamps step evenly: capture times carry thread wake-up and driver jitter of a few
/// ms, and the receiver's jitter estimator reads every uneven step between RTP timestamps as
/// network jitter and holds frames longer to cover it. Each frame is stamped on the frame-period
/// grid of the previous one, nudged 1/8 of the way towards its measured time (so the clock
/// follows a camera running slightly fast or slow); a real gap or jump re-anchors on the
/// measured time. The picture keeps its own capture time (the test pattern's code).
#[derive(Default)]
struct VideoClock {
    last_us: Option<u64>,
}

impl VideoClock {
    fn stamp(&mut self, measured_us: u64, fps: u32) -> u64 {
        let period = 1_000_000 / fps.max(1) as u64;
        let stamped = match self.last_us {
            Some(last) if measured_us > last && measured_us - last < 10 * period => {
                let steps = ((measured_us - last + period / 2) / period).max(1);
                let grid = last + steps * period;
                let error = measured_us as i64 - grid as i64;
                if error.unsigned_abs() < period / 2 { (grid as i64 + error / 8) as u64 } else { measured_us }
            }
            _ => measured_us,
        };
        let stamped = match self.last_us {
            Some(last) if stamped <= last => last + 1,
            _ => stamped,
        };
        self.last_us = Some(stamped);
        stamped
    }
}

/// Audio timestamps must advance by exactly one frame (960 samples) per frame: the receiver's
/// jitter buffer (NetEq) reads any wobble as timing error, conceals, and grows its delay — and
/// lip-sync then holds video back too. Thread wake-up jitter is smoothed away; a real jump
/// (after idle, or a device restart) re-anchors on the wall clock.
#[derive(Default)]
struct AudioClock {
    next_us: Option<u64>,
}

impl AudioClock {
    const FRAME_US: u64 = 20_000;
    const REANCHOR_US: u64 = 100_000;

    fn stamp(&mut self, measured_us: u64) -> u64 {
        let stamped = match self.next_us {
            Some(next) if measured_us.abs_diff(next) < Self::REANCHOR_US => next,
            _ => measured_us,
        };
        self.next_us = Some(stamped + Self::FRAME_US);
        stamped
    }
}

fn audio_loop(
    mut source: Box<dyn AudioSource>,
    live: &Live,
    hub: &Hub,
    stop: &AtomicBool,
    stats: &Stats,
    listening: Listening,
    sound_tx: tokio::sync::mpsc::Sender<sound::SoundEvent>,
) {
    // Opus on 20 ms of mono costs well under a millisecond: it shares the capture thread rather
    // than adding a queue between the two.
    let mut bitrate_kbps = live.audio_bitrate_kbps.load(Ordering::Relaxed);
    let mut encoder = match OpusEncoder::new(bitrate_kbps * 1000) {
        Ok(e) => e,
        Err(e) => {
            log::error!("{e}; audio is disabled");
            return;
        }
    };
    let mut frame = AudioFrame { samples: vec![0; AUDIO_FRAME_SAMPLES], capture_unix_us: 0 };
    let mut failing = false;
    let mut clock = AudioClock::default();
    // Analysis runs inline: ~0.5 % of a core at worst on the dev VM (sound::tests), less than
    // a queue and a thread would cost. Its events leave through `try_send`: never a wait here.
    let mut analyzer = listening.analyse.then(|| sound::Analyzer::new(*lock(&live.sound_params)));
    let mut sound_version = live.sound_version.load(Ordering::SeqCst);
    let mut sound_out = Vec::new();
    // The analysis's clock counts samples (exact, no wake-up jitter) from the capture time of
    // the first frame; it re-anchors when capture time runs ahead (after a pause or a device
    // restart). A source faster than real time (the tests' ALSA file plugin) keeps its own
    // sample time, so its durations stay right.
    let mut sound_clock: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) {
        // With `listen_without_viewers` the microphone is read (and analysed) all the time, but
        // only encoded while someone watches; otherwise the thread sleeps without viewers.
        let watched = if listening.without_viewers {
            hub.demand.viewers() > 0
        } else if hub.demand.wait_for_viewers(IDLE_POLL) {
            true
        } else {
            source.pause();
            continue;
        };
        let wanted = live.audio_bitrate_kbps.load(Ordering::Relaxed);
        if wanted != bitrate_kbps {
            match OpusEncoder::new(wanted * 1000) {
                Ok(e) => encoder = e,
                Err(e) => log::warn!("{e}; keeping {bitrate_kbps} kbit/s"),
            }
            bitrate_kbps = wanted;
        }
        let captured = source.next_frame(&mut frame).map_err(|e| e.to_string());
        stats.audio_xruns.store(source.xruns(), Ordering::Relaxed);
        if captured.is_ok() {
            frame.capture_unix_us = clock.stamp(frame.capture_unix_us);
            if !live.audio_enabled.load(Ordering::Relaxed) {
                // Privacy mode: the microphone keeps being read (no overrun when it comes back)
                // but nothing of it leaves the device.
                frame.samples.fill(0);
            }
            if let Some(a) = analyzer.as_mut() {
                let v = live.sound_version.load(Ordering::SeqCst);
                if v != sound_version {
                    sound_version = v;
                    a.set_params(*lock(&live.sound_params));
                }
                a.set_own_sound(match live.own_sound.load(Ordering::Relaxed) {
                    1 => sound::OwnSound::Noise,
                    2 => sound::OwnSound::File,
                    _ => sound::OwnSound::None,
                });
                // Privacy mode analyses the silence it sends: no level or alert leaves either.
                let captured_ms = frame.capture_unix_us / 1000;
                let t = match sound_clock {
                    Some(c) if captured_ms <= c + 1000 => c,
                    _ => captured_ms,
                };
                sound_clock = Some(t + (frame.samples.len() as u64 * 1000 / crate::capture::AUDIO_RATE as u64));
                a.push(&frame.samples, t, &mut sound_out);
                if !sound_out.is_empty() {
                    *lock(&live.sound_state) = a.state();
                    for e in sound_out.drain(..) {
                        // Full: the room is behind; a level reading is worth less than waiting.
                        let _ = sound_tx.try_send(e);
                    }
                }
            }
        }
        if !watched {
            if let Err(e) = &captured {
                if !failing {
                    log::warn!("audio source {}: {e}", source.name());
                    failing = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            } else {
                failing = false;
            }
            continue;
        }
        match captured.and_then(|()| encoder.encode(&frame)) {
            Ok(unit) => {
                failing = false;
                hub.audio.publish(unit);
            }
            Err(e) => {
                if !failing {
                    log::warn!("audio source {}: {e}", source.name());
                    failing = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hardware encoder that cannot be used (here: a node that is not there, as after the
    /// device vanished) hands over to openh264 on the same frame: a keyframe is published,
    /// and `video.encoder` says what happened.
    #[test]
    fn a_failing_hardware_encoder_falls_back_to_openh264_without_losing_the_frame() {
        let found = crate::codec::m2m::Found { path: "/dev/peercam-vanished-encoder".into(), driver: "bcm2835-codec".into(), card: "x".into(), raw_fourcc: crate::codec::m2m::device::FMT_YU12, raw_fourccs: vec![crate::codec::m2m::device::FMT_YU12] };
        let backend = Backend::M2m(found);
        let stats = Stats::default();
        *lock(&stats.encoder) = EncoderStatus::of(&backend);
        assert_eq!(lock(&stats.encoder).device.as_deref(), Some("/dev/peercam-vanished-encoder"));
        let hub = Hub::new();
        let mut rung = RungEncoder::new("main", backend);
        let mut f = VideoFrame::new(320, 240);
        TestPattern::new(320, 240, 30).render(&mut f, 0, 1_000_000);
        assert!(rung.encode(&f, 30, 60, 500_000, &hub.video, &stats).is_some(), "the frame went out");
        assert_eq!((hub.video.units_published(), hub.video.keyframes_published()), (1, 1), "an IDR went out");
        let s = lock(&stats.encoder).clone();
        assert_eq!(s.name, "openh264");
        assert!(s.fallback.as_deref().is_some_and(|w| w.contains("/dev/peercam-vanished-encoder")), "{s:?}");
        assert_eq!(rung.backend, Backend::OpenH264);
        // and it keeps encoding
        TestPattern::new(320, 240, 30).render(&mut f, 1, 1_033_333);
        assert!(rung.encode(&f, 30, 60, 500_000, &hub.video, &stats).is_some());
    }

    #[test]
    fn video_clock_steps_evenly_and_follows_drift() {
        let mut c = VideoClock::default();
        let jitter = [0i64, 4000, -3000, 6000, -5000, 2000, 0, -4000];
        let mut stamps = vec![];
        for i in 0..200u64 {
            let measured = (1_000_000 + i * 33_333) as i64 + jitter[(i % 8) as usize];
            stamps.push(c.stamp(measured as u64, 30));
        }
        let steps: Vec<i64> = stamps.windows(2).map(|w| w[1] as i64 - w[0] as i64).collect();
        // measured steps vary by up to ±11 ms; stamped ones by about an eighth of that
        assert!(steps[20..].iter().all(|s| (s - 33_333).abs() <= 2_000), "{:?}", &steps[20..40]);
        // a camera 1 % fast: the stamps follow it, not the nominal rate
        let mut c = VideoClock::default();
        let mut last = 0;
        for i in 0..300u64 {
            last = c.stamp(1_000_000 + i * 33_000, 30);
        }
        assert!((last as i64 - (1_000_000 + 299 * 33_000) as i64).abs() < 3_000, "drift followed");
        // a gap (frames dropped) keeps the grid; a jump re-anchors
        let a = c.stamp(1_000_000 + 301 * 33_000, 30);
        assert!(a > last);
        assert_eq!(c.stamp(50_000_000, 30), 50_000_000);
    }

    #[test]
    fn audio_clock_advances_exactly_one_frame_despite_jitter() {
        let mut c = AudioClock::default();
        let t0 = 1_764_000_000_000_000u64;
        let measured = [t0, t0 + 21_300, t0 + 39_100, t0 + 61_000, t0 + 80_200];
        let stamped: Vec<u64> = measured.iter().map(|&m| c.stamp(m)).collect();
        assert_eq!(stamped, vec![t0, t0 + 20_000, t0 + 40_000, t0 + 60_000, t0 + 80_000]);
        // After a pause (no viewers) the clock re-anchors on the wall clock.
        assert_eq!(c.stamp(t0 + 5_000_000), t0 + 5_000_000);
        assert_eq!(c.stamp(t0 + 5_019_000), t0 + 5_020_000);
    }
}
