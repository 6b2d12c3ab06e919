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
}

impl VideoFrame {
    pub fn new(width: u32, height: u32) -> Self {
        let (w, h) = (width as usize, height as usize);
        Self {
            width,
            height,
            data: vec![0; w * h + 2 * (w / 2) * (h / 2)],
            capture_unix_us: 0,
        }
    }

    /// Makes the buffer fit `width`×`height`, reusing its allocation where it can.
    pub fn resize(&mut self, width: u32, height: u32) {
        let (w, h) = (width as usize, height as usize);
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
}

/// A blocking source of 20 ms audio frames.
pub trait AudioSource: Send {
    fn name(&self) -> String;
    fn next_frame(&mut self, frame: &mut AudioFrame) -> Result<(), CaptureError>;
}

pub fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
