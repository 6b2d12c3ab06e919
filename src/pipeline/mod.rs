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
use crate::capture::{AudioFrame, AudioSource, CaptureError, VideoFrame, VideoSource, AUDIO_FRAME_SAMPLES};
use crate::codec::h264::{H264Encoder, H264Params, PROFILE_LEVEL_ID};
use crate::codec::opus::OpusEncoder;
use crate::config::{AudioSourceKind, Config, VideoSourceKind};
use crate::hub::{Hub, KeyframeGate};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Unix ms of the last captured video frame.
    pub last_capture_ms: AtomicU64,
    /// Unix ms of the last turn of the video capture loop (idle or not): the watchdog's proof
    /// that the capture thread is alive.
    pub capture_heartbeat_ms: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VideoSettings {
    pub source: String,
    pub codec: &'static str,
    pub profile_level_id: &'static str,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub keyframe_interval_s: u32,
    /// Why the configured camera is not what is being sent (missing, busy, overconstrained…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AudioSettings {
    pub source: String,
    pub codec: &'static str,
    pub sample_rate: u32,
    pub channels: u32,
    pub bitrate_kbps: u32,
    /// Why the configured microphone is not what is being sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

pub struct Pipeline {
    pub hub: Arc<Hub>,
    pub stats: Arc<Stats>,
    pub video: VideoSettings,
    pub audio: AudioSettings,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
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
            codec: "H264",
            profile_level_id: PROFILE_LEVEL_ID,
            width: sw,
            height: sh,
            fps: sfps,
            bitrate_kbps: v.bitrate_kbps.get(),
            keyframe_interval_s: v.keyframe_interval_s.get(),
            problem: video_problem,
        };
        let audio = AudioSettings {
            source: audio_source.name(),
            codec: "opus",
            sample_rate: 48_000,
            channels: 1,
            bitrate_kbps: config.audio.bitrate_kbps.get(),
            problem: audio_problem,
        };
        let params = H264Params {
            width: sw,
            height: sh,
            fps: sfps,
            bitrate_bps: v.bitrate_kbps.get() * 1000,
            keyframe_interval_frames: sfps * v.keyframe_interval_s.get(),
        };

        let mailbox = Arc::new(Mailbox::default());
        let (recycle_tx, recycle_rx) = mpsc::channel::<VideoFrame>();
        let mut threads = Vec::new();
        threads.push(spawn("capture-video", {
            let (hub, stop, stats, mailbox) = (hub.clone(), stop.clone(), stats.clone(), mailbox.clone());
            move || video_capture_loop(video_source, &hub, &stop, &stats, &mailbox, recycle_rx)
        })?);
        threads.push(spawn("encode-video", {
            let (hub, stop, stats, mailbox) = (hub.clone(), stop.clone(), stats.clone(), mailbox.clone());
            move || video_encode_loop(params, &hub, &stop, &stats, &mailbox, recycle_tx)
        })?);
        let opus_bps = config.audio.bitrate_kbps.get() * 1000;
        threads.push(spawn("audio", {
            let (hub, stop) = (hub.clone(), stop.clone());
            move || audio_loop(audio_source, opus_bps, &hub, &stop)
        })?);

        Ok(Pipeline { hub, stats, video, audio, stop, threads: Mutex::new(threads) })
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

fn video_capture_loop(
    mut source: Box<dyn VideoSource>,
    hub: &Hub,
    stop: &AtomicBool,
    stats: &Stats,
    mailbox: &Mailbox,
    recycle: mpsc::Receiver<VideoFrame>,
) {
    let (w, h, _) = source.settings();
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
        if !hub.demand.wait_for_viewers(IDLE_POLL) {
            continue;
        }
        // Reuse buffers: the one the mailbox handed back, or one the encoder finished with.
        let mut frame = spare
            .take()
            .or_else(|| recycle.try_recv().ok())
            .unwrap_or_else(|| VideoFrame::new(w, h));
        match source.next_frame(&mut frame) {
            Ok(()) => {
                if failing {
                    log::info!("video source {} is delivering again", source.name());
                    failing = false;
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
    params: H264Params,
    hub: &Hub,
    stop: &AtomicBool,
    stats: &Stats,
    mailbox: &Mailbox,
    recycle: mpsc::Sender<VideoFrame>,
) {
    let mut encoder: Option<H264Encoder> = None;
    let mut gate = KeyframeGate::new(KEYFRAME_MIN_INTERVAL);
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        let Some(frame) = mailbox.take(IDLE_POLL) else { continue };
        if hub.demand.viewers() == 0 {
            let _ = recycle.send(frame);
            continue;
        }
        let frame_params = H264Params { width: frame.width, height: frame.height, ..params };
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
        let joined = hub.video.take_join_request();
        let force = match gate.decide(hub.video.take_keyframe_request(), now) {
            Some(true) => true,
            Some(false) => {
                hub.video.defer_keyframe_request();
                joined
            }
            None => joined,
        };
        if joined {
            gate.saw_keyframe(now);
        }
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

fn audio_loop(mut source: Box<dyn AudioSource>, bitrate_bps: u32, hub: &Hub, stop: &AtomicBool) {
    // Opus on 20 ms of mono costs well under a millisecond: it shares the capture thread rather
    // than adding a queue between the two.
    let mut encoder = match OpusEncoder::new(bitrate_bps) {
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
        let captured = source.next_frame(&mut frame).map_err(|e| e.to_string());
        if captured.is_ok() {
            frame.capture_unix_us = clock.stamp(frame.capture_unix_us);
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
