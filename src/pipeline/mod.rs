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
use crate::capture::{AudioFrame, AudioSource, ApplyError, CaptureError, VideoFrame, VideoSource, AUDIO_FRAME_SAMPLES};
use crate::codec::h264::{H264Encoder, H264Params, PROFILE_LEVEL_ID};
use crate::codec::opus::OpusEncoder;
use crate::config::{AudioSourceKind, Config, VideoSourceKind};
use crate::hub::{Hub, KeyframeGate};
use serde::Serialize;

mod passthrough;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Forced IDRs at most this often; more requests in between are coalesced.
const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(250);
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Frame period of the "CAMERA OFFLINE" slate.
const SLATE_PERIOD: Duration = Duration::from_millis(200);
/// A capture loop that has not turned for this long is stalled.
const STALL_LIMIT: Duration = Duration::from_secs(3);

/// Counters the threads update and `/api/settings` reads.
#[derive(Default)]
pub struct Stats {
    pub encoders_started: AtomicU64,
    pub frames_captured: AtomicU64,
    pub frames_dropped: AtomicU64,
    /// Last encode time in microseconds (for the settings page and benchmarks).
    pub encode_us: AtomicU64,
    /// ALSA capture overruns recovered (for `/api/settings`).
    pub audio_xruns: AtomicU64,
    /// Unix ms of the last captured video frame.
    pub last_capture_ms: AtomicU64,
    /// Unix ms of the last turn of the video capture loop (idle or not): the watchdog's proof
    /// that the capture thread is alive.
    pub capture_heartbeat_ms: AtomicU64,
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

        let (video_source, video_problem) = select_video(v);
        let (audio_source, audio_problem) = select_audio(&config.audio);
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
        let live = Arc::new(Live {
            video_enabled: AtomicBool::new(true),
            audio_enabled: AtomicBool::new(true),
            fps: AtomicU32::new(sfps),
            video_bitrate_kbps: AtomicU32::new(v.bitrate_kbps.get()),
            audio_bitrate_kbps: AtomicU32::new(config.audio.bitrate_kbps.get()),
            apply_tx: Mutex::new(apply_tx),
            camera_online: tokio::sync::watch::channel(true).0,
        });
        let keyframe_interval_s = v.keyframe_interval_s.get();
        // The config's size and rate as ideals, plus [video.constraints]: what live changes
        // are merged into.
        let constraints = crate::capture::v4l2::CameraRequest::from_config(v).constraints;

        let mailbox = Arc::new(Mailbox::default());
        let (recycle_tx, recycle_rx) = mpsc::channel::<VideoFrame>();
        let mut threads = Vec::new();
        threads.push(spawn("capture-video", {
            let (hub, stop, stats, mailbox, live) = (hub.clone(), stop.clone(), stats.clone(), mailbox.clone(), live.clone());
            move || {
                let ctl = CaptureControl { live: &live, commands: apply_rx, constraints };
                video_capture_loop(video_source, &hub, &stop, &stats, &mailbox, recycle_rx, ctl)
            }
        })?);
        threads.push(spawn("encode-video", {
            let (hub, stop, stats, mailbox, live) = (hub.clone(), stop.clone(), stats.clone(), mailbox.clone(), live.clone());
            move || video_encode_loop(keyframe_interval_s, &live, &hub, &stop, &stats, &mailbox, recycle_tx)
        })?);
        threads.push(spawn("audio", {
            let (hub, stop, live, stats) = (hub.clone(), stop.clone(), live.clone(), stats.clone());
            move || audio_loop(audio_source, &live, &hub, &stop, &stats)
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
        })
    }

    pub fn video_settings(&self) -> VideoSettings {
        lock(&self.video).clone()
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
fn select_video(v: &crate::config::VideoConfig) -> (Box<dyn VideoSource>, Option<String>) {
    use crate::capture::v4l2::{CameraRequest, V4l2Camera};
    let (width, height, fps) = (v.width.get(), v.height.get(), v.fps.get());
    match v.source {
        VideoSourceKind::Testsrc => (Box::new(TestPattern::new(width, height, fps)), None),
        VideoSourceKind::V4l2 => match V4l2Camera::new(CameraRequest::from_config(v)) {
            (cam, Ok(o)) => {
                log::info!("video source: camera {} ({}, {}), {}", o.device.id, o.device.path, o.device.card, o.mode);
                (Box::new(cam), None)
            }
            (cam, Err(e)) => {
                log::error!("video source \"v4l2\": {e}; showing the offline slate until the camera is usable");
                (Box::new(cam), Some(e))
            }
        },
        VideoSourceKind::Auto => match V4l2Camera::open(CameraRequest::from_config(v)) {
            Ok((cam, o)) => {
                log::info!("video source \"auto\": camera {} ({}, {}), {}", o.device.id, o.device.path, o.device.card, o.mode);
                (Box::new(cam), None)
            }
            Err(e) => {
                log::info!("video source \"auto\": {e}; using the test pattern");
                (Box::new(TestPattern::new(width, height, fps)), Some(e))
            }
        },
    }
}

/// The audio source the config asks for (see `select_video`); an offline microphone sends
/// silence.
fn select_audio(a: &crate::config::AudioConfig) -> (Box<dyn AudioSource>, Option<String>) {
    use crate::capture::alsa::{AlsaMic, MicRequest};
    match a.source {
        AudioSourceKind::Tone => (Box::new(Tone::new()), None),
        AudioSourceKind::None => (Box::new(Tone::silence()), None),
        AudioSourceKind::Alsa => match AlsaMic::new(MicRequest::from_config(a)) {
            (mic, Ok(o)) => {
                log::info!("audio source: {} ({:?}, {} Hz, {} ch)", o.pcm, o.format, o.rate, o.channels);
                (Box::new(mic), None)
            }
            (mic, Err(e)) => {
                log::error!("audio source \"alsa\": {e}; sending silence until the microphone is usable");
                (Box::new(mic), Some(e))
            }
        },
        AudioSourceKind::Auto => match AlsaMic::open(MicRequest::from_config(a)) {
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
    slot: Mutex<Option<VideoFrame>>,
    ready: Condvar,
}

impl Mailbox {
    fn put(&self, frame: VideoFrame) -> Option<VideoFrame> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let old = slot.replace(frame);
        self.ready.notify_one();
        old
    }

    fn take(&self, timeout: Duration) -> Option<VideoFrame> {
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
    /// The constraints the source was opened with; changes are merged into them.
    constraints: VideoConstraints,
}

impl CaptureControl<'_> {
    fn serve(&mut self, source: &mut dyn VideoSource) {
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

fn video_capture_loop(
    mut source: Box<dyn VideoSource>,
    hub: &Hub,
    stop: &AtomicBool,
    stats: &Stats,
    mailbox: &Mailbox,
    recycle: mpsc::Receiver<VideoFrame>,
    mut ctl: CaptureControl<'_>,
) {
    let mut spare: Option<VideoFrame> = None;
    let mut failing = false;
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
        if !hub.demand.wait_for_viewers(IDLE_POLL) {
            source.idle();
            continue;
        }
        let (w, h, _) = source.settings();
        // Reuse buffers: the one the mailbox handed back, or one the encoder finished with.
        let mut frame = spare
            .take()
            .or_else(|| recycle.try_recv().ok())
            .unwrap_or_else(|| VideoFrame::new(w, h));
        if !ctl.live.video_enabled.load(Ordering::Relaxed) {
            // Privacy mode: the camera is not read at all; viewers see that it is paused.
            slate::render(&mut frame, w, h, slate::PAUSED, crate::capture::unix_now_us());
            if let Some(old) = mailbox.put(frame) {
                spare = Some(old);
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
                stats.last_capture_ms.store(frame.capture_unix_us / 1000, Ordering::Relaxed);
                if let Some(old) = mailbox.put(frame) {
                    stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                    spare = Some(old);
                }
            }
            Err(e) => {
                if !failing {
                    log::warn!("video source {}: {e}", source.name());
                    failing = true;
                }
                if let CaptureError::Gone(_) = e {
                    ctl.live.camera_online.send_if_modified(|online| std::mem::replace(online, false));
                    // The device went away: viewers stay connected and see the slate (a few
                    // frames a second) while the source keeps trying to reopen it.
                    let (sw, sh, _) = source.settings();
                    slate::render(&mut frame, sw, sh, slate::OFFLINE, crate::capture::unix_now_us());
                    if let Some(old) = mailbox.put(frame) {
                        spare = Some(old);
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

fn video_encode_loop(
    keyframe_interval_s: u32,
    live: &Live,
    hub: &Hub,
    stop: &AtomicBool,
    stats: &Stats,
    mailbox: &Mailbox,
    recycle: mpsc::Sender<VideoFrame>,
) {
    let mut encoder: Option<H264Encoder> = None;
    let mut gate = KeyframeGate::new(KEYFRAME_MIN_INTERVAL);
    let mut failing = false;
    let mut camera_h264 = passthrough::CameraH264::default();
    while !stop.load(Ordering::Relaxed) {
        let Some(frame) = mailbox.take(IDLE_POLL) else { continue };
        if hub.demand.viewers() == 0 {
            let _ = recycle.send(frame);
            continue;
        }
        if frame.h264.is_some() {
            // Camera H.264: passed through, not encoded.
            camera_h264.publish(&frame, hub, &mut gate, stats);
            let _ = recycle.send(frame);
            continue;
        }
        // Size from the frame, rate and bitrate as set now: any change restarts the encoder.
        let fps = live.fps.load(Ordering::Relaxed).max(1);
        let frame_params = H264Params {
            width: frame.width,
            height: frame.height,
            fps,
            bitrate_bps: live.video_bitrate_kbps.load(Ordering::Relaxed) * 1000,
            keyframe_interval_frames: fps * keyframe_interval_s,
        };
        if encoder.as_ref().map(|e| e.params()) != Some(frame_params) {
            match H264Encoder::new(frame_params) {
                Ok(e) => {
                    stats.encoders_started.fetch_add(1, Ordering::Relaxed);
                    log::info!(
                        "H.264 encoder started: {}x{} @ {} fps, {} kbit/s",
                        frame_params.width,
                        frame_params.height,
                        frame_params.fps,
                        frame_params.bitrate_bps / 1000
                    );
                    encoder = Some(e);
                }
                Err(e) => {
                    log::error!("{e}");
                    let _ = recycle.send(frame);
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let enc = encoder.as_mut().expect("encoder was just created");
        let now = Instant::now();
        let force = gate.take_request(&hub.video, now);
        let t0 = Instant::now();
        match enc.encode(&frame, force) {
            Ok(Some(unit)) => {
                stats.encode_us.store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                if unit.keyframe {
                    gate.saw_keyframe(now);
                }
                failing = false;
                hub.video.publish(unit);
            }
            Ok(None) => {}
            Err(e) => {
                if !failing {
                    log::error!("{e}");
                    failing = true;
                }
            }
        }
        let _ = recycle.send(frame);
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

fn audio_loop(mut source: Box<dyn AudioSource>, live: &Live, hub: &Hub, stop: &AtomicBool, stats: &Stats) {
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
    while !stop.load(Ordering::Relaxed) {
        if !hub.demand.wait_for_viewers(IDLE_POLL) {
            continue;
        }
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
