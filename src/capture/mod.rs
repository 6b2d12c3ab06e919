//! Capture: sources that hand out normalized raw media.
//!
//! Every video source produces I420 frames (or, a camera that encodes itself, H.264 access
//! units: [`Frame`]), every audio source 48 kHz mono `i16` PCM in 20 ms
//! chunks, each stamped with its capture time. Sources are blocking and run on their own threads
//! (see `pipeline`); they are paced by the device (a camera) or by the clock (the test sources).
//!
//! The V4L2 camera and ALSA microphone implement the same traits. `alsa` also holds the
//! speaker (talk-back playback), which shares the microphone's formats, negotiation and
//! resampler: device I/O lives in this layer in both directions.

pub mod alsa;
pub mod constraints;
pub mod convert;
pub mod devices;
pub mod dmabuf;
pub mod libcamera;
pub mod font;
pub mod slate;
pub mod sounds;
pub mod testsrc;
pub mod timecode;
pub mod tone;
pub mod v4l2;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// 48 kHz, 20 ms: the Opus frame the whole audio path is built around.
pub const AUDIO_RATE: u32 = 48_000;
pub const AUDIO_FRAME_SAMPLES: usize = 960;

/// One picture from a video source: what `data` holds is in the type.
#[derive(Debug, Clone)]
pub enum Frame {
    /// Raw I420: the pipeline encodes it (test pattern, slates, cameras in YUYV/MJPEG/…).
    I420(VideoFrame),
    /// One H.264 access unit from a camera that encodes itself: the pipeline passes it through
    /// (see `codec::passthrough`).
    H264(H264Frame),
}

/// One raw picture in I420 (planar Y, then U and V at half resolution), tightly packed.
#[derive(Debug)]
pub struct VideoFrame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
    /// Wall-clock capture time, microseconds since the Unix epoch.
    pub capture_unix_us: u64,
    /// The same picture in the camera's own buffer, lent for a hardware encoder to read in
    /// place (`capture::dmabuf`). Set by the camera after it filled `data`; dropped by anything
    /// that writes the pixels (`resize`, `planes_mut`: night's greyscale, the slate), so it never
    /// shows something `data` does not; not cloned (a clone is a copy of `data`).
    pub dmabuf: Option<std::sync::Arc<dmabuf::DmaBuf>>,
}

impl Clone for VideoFrame {
    fn clone(&self) -> Self {
        Self { width: self.width, height: self.height, data: self.data.clone(), capture_unix_us: self.capture_unix_us, dmabuf: None }
    }
}

/// One H.264 access unit (Annex-B) as the camera delivered it.
#[derive(Debug, Clone, Default)]
pub struct H264Frame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
    pub capture_unix_us: u64,
    /// +1 per access unit the camera delivered; a jump means units were lost in between (the
    /// driver skipped, or the one-frame mailbox dropped one), so the decoder needs an IDR. A
    /// jump of [`H264_REOPEN_JUMP`] or more: the camera was reopened.
    pub sequence: u64,
}

/// How far [`H264Frame::sequence`] jumps when the camera is (re)opened: what follows has no
/// reference to what came before (a jump of a few is lost units).
pub const H264_REOPEN_JUMP: u64 = 1000;

impl Frame {
    /// An I420 frame of the given size.
    pub fn new(width: u32, height: u32) -> Self {
        Frame::I420(VideoFrame::new(width, height))
    }

    pub fn capture_unix_us(&self) -> u64 {
        match self {
            Frame::I420(f) => f.capture_unix_us,
            Frame::H264(f) => f.capture_unix_us,
        }
    }

    /// This frame as an I420 picture to write into (the caller sizes it with
    /// [`VideoFrame::resize`]), reusing the buffer of whatever it held.
    pub fn i420_mut(&mut self) -> &mut VideoFrame {
        if let Frame::H264(h) = self {
            let data = std::mem::take(&mut h.data);
            let mut f = VideoFrame { width: 0, height: 0, data, capture_unix_us: h.capture_unix_us, dmabuf: None };
            f.resize(h.width.max(2), h.height.max(2));
            *self = Frame::I420(f);
        }
        match self {
            Frame::I420(f) => f,
            Frame::H264(_) => unreachable!("made I420 above"),
        }
    }

    /// Lets the camera have its buffer back (a frame that waits to be reused must not hold it).
    pub fn release_camera_buffer(&mut self) {
        if let Frame::I420(f) = self {
            f.dmabuf = None;
        }
    }

    /// This frame as an H.264 unit to write into, reusing the buffer of whatever it held.
    pub fn h264_mut(&mut self) -> &mut H264Frame {
        if let Frame::I420(f) = self {
            let data = std::mem::take(&mut f.data);
            *self = Frame::H264(H264Frame { width: f.width, height: f.height, data, capture_unix_us: f.capture_unix_us, sequence: 0 });
        }
        match self {
            Frame::H264(h) => h,
            Frame::I420(_) => unreachable!("made H264 above"),
        }
    }
}

/// Why a source is not delivering what was asked for, shared between the source (which
/// updates it as the device comes and goes) and `/api/settings` (which shows it as it is now).
/// Serializes as the text, or `null`.
#[derive(Debug, Clone, Default)]
pub struct Problem(Arc<Mutex<Option<String>>>);

impl Problem {
    pub fn set(&self, p: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_none(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }
}

impl From<Option<String>> for Problem {
    fn from(p: Option<String>) -> Self {
        Problem(Arc::new(Mutex::new(p)))
    }
}

impl serde::Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl VideoFrame {
    pub fn new(width: u32, height: u32) -> Self {
        let (w, h) = (width as usize, height as usize);
        Self {
            width,
            height,
            data: vec![0; w * h + 2 * (w / 2) * (h / 2)],
            capture_unix_us: 0,
            dmabuf: None,
        }
    }

    /// Makes the buffer fit `width`×`height` of I420, reusing its allocation where it can.
    pub fn resize(&mut self, width: u32, height: u32) {
        self.dmabuf = None;
        let (w, h) = (width as usize, height as usize);
        self.width = width;
        self.height = height;
        self.data.resize(w * h + 2 * (w / 2) * (h / 2), 0);
    }

    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        self.dmabuf = None;
        let (w, h) = (self.width as usize, self.height as usize);
        let (y, uv) = self.data.split_at_mut(w * h);
        let (u, v) = uv.split_at_mut((w / 2) * (h / 2));
        (y, u, v)
    }

    /// Half the width and height (each rounded down to even), 2x2 box filter: the ladder's low
    /// rung made from the same captured frame (same capture time, so the same RTP timestamp).
    /// Writes into `out`, reusing its buffer.
    pub fn downscale_half_into(&self, out: &mut VideoFrame) {
        let (ow, oh) = ((self.width / 2) & !1, (self.height / 2) & !1);
        out.resize(ow.max(2), oh.max(2));
        out.capture_unix_us = self.capture_unix_us;
        let (sw, sh) = (self.width as usize, self.height as usize);
        let (sy, su, sv) = self.planes();
        let (dy, du, dv) = out.planes_mut();
        halve_plane(sy, sw, sh, dy, ow as usize, oh as usize);
        halve_plane(su, sw / 2, sh / 2, du, ow as usize / 2, oh as usize / 2);
        halve_plane(sv, sw / 2, sh / 2, dv, ow as usize / 2, oh as usize / 2);
    }

    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let (w, h) = (self.width as usize, self.height as usize);
        let (y, uv) = self.data.split_at(w * h);
        let (u, v) = uv.split_at((w / 2) * (h / 2));
        (y, u, v)
    }
}

/// `dst` (dw×dh) = 2x2 averages of `src` (sw×sh); rows/columns past the source edge repeat it.
fn halve_plane(src: &[u8], sw: usize, sh: usize, dst: &mut [u8], dw: usize, dh: usize) {
    if sw == 0 || sh == 0 {
        return;
    }
    for y in 0..dh {
        let r0 = (2 * y).min(sh - 1) * sw;
        let r1 = (2 * y + 1).min(sh - 1) * sw;
        let out = &mut dst[y * dw..(y + 1) * dw];
        for (x, o) in out.iter_mut().enumerate() {
            let c0 = (2 * x).min(sw - 1);
            let c1 = (2 * x + 1).min(sw - 1);
            let sum = src[r0 + c0] as u32 + src[r0 + c1] as u32 + src[r1 + c0] as u32 + src[r1 + c1] as u32;
            *o = ((sum + 2) / 4) as u8;
        }
    }
}

#[cfg(test)]
mod downscale_tests {
    use super::VideoFrame;

    #[test]
    fn halves_size_keeps_time_and_averages() {
        let mut f = VideoFrame::new(8, 4);
        f.capture_unix_us = 42;
        {
            let (y, u, v) = f.planes_mut();
            for (i, p) in y.iter_mut().enumerate() {
                *p = if (i % 8) % 2 == 0 { 100 } else { 200 };
            }
            u.fill(60);
            v.fill(90);
        }
        let mut out = VideoFrame::new(2, 2);
        f.downscale_half_into(&mut out);
        assert_eq!((out.width, out.height, out.capture_unix_us), (4, 2, 42));
        let (y, u, v) = out.planes();
        assert!(y.iter().all(|&p| p == 150), "{y:?}");
        assert!(u.iter().all(|&p| p == 60) && v.iter().all(|&p| p == 90));
        // A frame's camera buffer goes with anything that writes its pixels, and is not cloned.
        let mut f = VideoFrame::new(64, 48);
        let lent = || Some(super::dmabuf::DmaBuf::stand_in(super::dmabuf::Layout { fourcc: 0, width: 64, height: 48, bytesperline: 64 }, 4608));
        f.dmabuf = lent();
        assert!(f.clone().dmabuf.is_none() && f.dmabuf.is_some());
        let _ = f.planes_mut();
        assert!(f.dmabuf.is_none(), "planes_mut (night's greyscale, the slate)");
        f.dmabuf = lent();
        f.resize(64, 48);
        assert!(f.dmabuf.is_none(), "resize (a conversion)");
        let mut fr = super::Frame::I420(VideoFrame::new(64, 48));
        fr.i420_mut().dmabuf = lent();
        fr.release_camera_buffer();
        assert!(matches!(&fr, super::Frame::I420(v) if v.dmabuf.is_none()));
        // 1280x720 -> 640x360; 642x362 -> 320x180 (even)
        let big = VideoFrame::new(642, 362);
        big.downscale_half_into(&mut out);
        assert_eq!((out.width, out.height), (320, 180));
    }
}

/// 20 ms of 48 kHz mono audio.
#[derive(Debug, Clone)]
pub struct AudioFrame {
    pub samples: Vec<i16>,
    pub capture_unix_us: u64,
}

/// Why a source could not deliver. `Gone` means the device disappeared and may come back.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Failed(String),
}

/// A blocking source of video frames.
pub trait VideoSource: Send {
    /// A short human-readable name for logs and `/api/settings`.
    fn name(&self) -> String;
    /// Blocks until the next frame and writes it into `frame` (reusing its buffer; a source
    /// may turn an I420 frame into an H.264 one and back).
    fn next_frame(&mut self, frame: &mut Frame) -> Result<(), CaptureError>;
    /// Frame size and rate actually delivered.
    fn settings(&self) -> (u32, u32, u32);
    /// Called about twice a second while nobody watches (a camera stops streaming after a
    /// while, so its LED goes off and the USB bandwidth is free).
    fn idle(&mut self) {}
    /// The source's own, live account of why it is not delivering what was asked for.
    fn problem(&self) -> Option<Problem> {
        None
    }
    /// Changes size and rate live (the `applyConstraints` of the W3C model); `c` is the whole
    /// new constraint set. On failure the source keeps delivering what it did.
    fn apply_constraints(&mut self, _c: &constraints::VideoConstraints) -> Result<(), ApplyError> {
        Err(ApplyError::Failed(format!("{} cannot change its size or rate", self.name())))
    }
    /// The pipeline wants an IDR soon (a new viewer, a PLI, units lost): a camera that encodes
    /// H.264 itself is asked for one on its next dequeue. Raw sources ignore it.
    fn request_keyframe(&mut self) {}
    /// The camera's H.264 cannot be passed through (e.g. High profile): the source stops
    /// choosing its H.264 modes and reopens in a format peercam encodes itself.
    fn refuse_h264(&mut self, _why: String) {}
    /// The encoder imports DMABUFs (a hardware encoder): a camera whose frames it can read in
    /// place lends its buffers with each frame ([`VideoFrame::dmabuf`]); takes effect when the
    /// camera is next opened. Sources without such buffers ignore it.
    fn offer_dmabuf(&mut self) {}
    /// Who sets the bitrate of what this source delivers right now.
    fn rate_control(&self) -> RateControl {
        RateControl::Encoder
    }
    /// The viewers' links carry about `bps`: a camera that encodes H.264 itself and has a
    /// bitrate control is set to it (clamped to the control's range). Raw sources ignore it.
    fn set_bitrate(&mut self, _bps: u32) {}
}

/// Who sets the bitrate of the video sent (`/api/settings` `video.rate_control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateControl {
    /// Raw frames: peercam's encoder follows the viewers' links.
    Encoder,
    /// Camera H.264 with a V4L2 bitrate control: the camera follows them, at this rate now.
    Camera { bps: u32 },
    /// Camera H.264 without one: it sends at its own rate whatever the links carry.
    Fixed,
}

impl RateControl {
    pub fn name(&self) -> &'static str {
        match self {
            RateControl::Encoder => "encoder",
            RateControl::Camera { .. } => "camera",
            RateControl::Fixed => "none",
        }
    }
}

/// Why live constraints were not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Overconstrained(#[from] constraints::Overconstrained),
    #[error("{0}")]
    Failed(String),
}

/// A blocking source of 20 ms audio frames.
pub trait AudioSource: Send {
    fn name(&self) -> String;
    fn next_frame(&mut self, frame: &mut AudioFrame) -> Result<(), CaptureError>;
    /// Capture overruns recovered so far (a microphone that was not read in time).
    fn xruns(&self) -> u64 {
        0
    }
    /// The caller stops reading on purpose for a while (nobody listens): what piles up meanwhile
    /// is no overrun to count. A gap without this call is one (the process stalled).
    fn pause(&mut self) {}
}

/// The media clock: Unix time in µs as it was when the process first asked, advanced by the
/// monotonic clock since. Capture times (and so RTP timestamps, the test pattern's timestamp
/// code and the capture heartbeat) come from here, not from the wall clock: a camera without a
/// real-time clock boots with a stale wall clock that NTP then steps by days, forward or back,
/// and a wall-clock jump in RTP timestamps makes receivers drop or freeze frames, while a jump
/// in the heartbeat made the watchdog think capture had stalled for days (and restart us).
/// The price: after a step the media clock stays off wall time by the step (logged once per
/// step by [`wall_clock_offset_us`]'s check); a restart re-anchors it.
pub fn unix_now_us() -> u64 {
    let anchor = media_anchor();
    let media = anchor.unix_us.saturating_add(anchor.at.elapsed().as_micros() as u64);
    note_clock_step(wall_now_us(), media);
    media
}

/// Wall-clock Unix time in µs (what a user reads: chat timestamps, log lines). May jump.
pub fn wall_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct MediaAnchor {
    at: std::time::Instant,
    unix_us: u64,
}

fn media_anchor() -> &'static MediaAnchor {
    static ANCHOR: std::sync::OnceLock<MediaAnchor> = std::sync::OnceLock::new();
    ANCHOR.get_or_init(|| MediaAnchor { at: std::time::Instant::now(), unix_us: wall_now_us() })
}

/// Wall clock minus media clock at the last look, µs.
static WALL_OFFSET_US: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
/// Wall-clock steps seen since start.
static CLOCK_STEPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Steps smaller than this between two looks are ordinary (NTP slewing moves the wall clock by
/// at most 0.5 ms a second; a look happens every frame).
const CLOCK_STEP_US: i64 = 1_000_000;

fn note_clock_step(wall: u64, media: u64) {
    use std::sync::atomic::Ordering;
    let offset = wall as i64 - media as i64;
    let before = WALL_OFFSET_US.swap(offset, Ordering::Relaxed);
    let step = offset - before;
    if step.abs() >= CLOCK_STEP_US {
        CLOCK_STEPS.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "the wall clock jumped {} by {} (NTP setting the time after boot?); video and audio keep \
             their own steady clock, now {} wall time; logins and tokens are not affected",
            if step > 0 { "forward" } else { "back" },
            human_us(step.unsigned_abs()),
            if offset == 0 { "equal to".to_string() } else { format!("{} {}", human_us(offset.unsigned_abs()), if offset > 0 { "behind" } else { "ahead of" }) },
        );
    }
}

/// The wall clock's distance from the media clock now (µs, positive: the wall clock is ahead)
/// and how many steps it made since start.
pub fn wall_clock_offset_us() -> (i64, u64) {
    use std::sync::atomic::Ordering;
    let _ = unix_now_us();
    (WALL_OFFSET_US.load(Ordering::Relaxed), CLOCK_STEPS.load(Ordering::Relaxed))
}

fn human_us(us: u64) -> String {
    let s = us / 1_000_000;
    match s {
        0..=119 => format!("{:.1} s", us as f64 / 1e6),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{:.1} h", s as f64 / 3600.0),
        _ => format!("{:.1} days", s as f64 / 86400.0),
    }
}
