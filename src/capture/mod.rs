//! Capture: sources that hand out normalized raw media.
//!
//! Every video source produces I420 frames, every audio source 48 kHz mono `i16` PCM in 20 ms
//! chunks, each stamped with its capture time. Sources are blocking and run on their own threads
//! (see `pipeline`); they are paced by the device (a camera) or by the clock (the test sources).
//!
//! The V4L2 camera and ALSA microphone implement the same traits.

pub mod alsa;
pub mod constraints;
pub mod convert;
pub mod devices;
pub mod font;
pub mod slate;
pub mod testsrc;
pub mod timecode;
pub mod tone;
pub mod v4l2;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// 48 kHz, 20 ms: the Opus frame the whole audio path is built around.
pub const AUDIO_RATE: u32 = 48_000;
pub const AUDIO_FRAME_SAMPLES: usize = 960;

/// One raw picture in I420 (planar Y, then U and V at half resolution), tightly packed.
#[derive(Debug, Clone)]
pub struct VideoFrame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
    /// Wall-clock capture time, microseconds since the Unix epoch.
    pub capture_unix_us: u64,
    /// `Some` when `data` is not I420 but one H.264 access unit (Annex-B) from a camera that
    /// encodes itself: the pipeline passes it through instead of encoding (see
    /// `codec::passthrough`). Every raw-frame producer clears it through [`VideoFrame::resize`].
    pub h264: Option<CameraH264>,
}

/// How far [`CameraH264::sequence`] jumps when the camera is (re)opened: what follows has no
/// reference to what came before (a jump of a few is lost units).
pub const H264_REOPEN_JUMP: u64 = 1000;

/// What travels with a camera's H.264 access unit.
#[derive(Debug, Clone)]
pub struct CameraH264 {
    /// +1 per access unit the camera delivered; a jump means units were lost in between (the
    /// driver skipped, or the one-frame mailbox dropped one), so the decoder needs an IDR.
    pub sequence: u64,
    /// The way back to the camera (IDR requests, profile refusal).
    pub link: Arc<CameraLink>,
}

/// Requests from the H.264 passthrough (encode thread) back to the camera (capture thread).
#[derive(Debug, Default)]
pub struct CameraLink {
    want_idr: AtomicBool,
    refused: Mutex<Option<String>>,
}

impl CameraLink {
    /// Asks the camera for an IDR (done on its next dequeue, through the V4L2 force-key-frame
    /// control where it has one).
    pub fn request_idr(&self) {
        self.want_idr.store(true, Ordering::Relaxed);
    }

    pub fn take_idr_request(&self) -> bool {
        self.want_idr.swap(false, Ordering::Relaxed)
    }

    /// The camera's H.264 cannot be passed through (e.g. High profile): it should stop using
    /// its H.264 mode.
    pub fn refuse(&self, why: String) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    pub fn take_refusal(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).take()
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
            h264: None,
        }
    }

    /// Makes the buffer fit `width`×`height` of I420, reusing its allocation where it can.
    pub fn resize(&mut self, width: u32, height: u32) {
        let (w, h) = (width as usize, height as usize);
        self.h264 = None;
        self.width = width;
        self.height = height;
        self.data.resize(w * h + 2 * (w / 2) * (h / 2), 0);
    }

    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let (w, h) = (self.width as usize, self.height as usize);
        let (y, uv) = self.data.split_at_mut(w * h);
        let (u, v) = uv.split_at_mut((w / 2) * (h / 2));
        (y, u, v)
    }

    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let (w, h) = (self.width as usize, self.height as usize);
        let (y, uv) = self.data.split_at(w * h);
        let (u, v) = uv.split_at((w / 2) * (h / 2));
        (y, u, v)
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
    /// Blocks until the next frame and writes it into `frame` (resizing it if needed).
    fn next_frame(&mut self, frame: &mut VideoFrame) -> Result<(), CaptureError>;
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
}

pub fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
