//! The H.264 encoder the pipeline drives: openh264 (software) or the hardware M2M encoder, one
//! interface (`params`, `set_bitrate`, `set_frame_rate`, `encode` → [`EncodedUnit`]), chosen
//! once at start from `[video] encoder` ([`resolve`]).

use super::h264::{H264Encoder, H264Params};
use super::m2m::{self, h264::M2mH264Encoder, Found};
use super::EncodedUnit;
use crate::capture::VideoFrame;
use crate::config::VideoEncoderKind;

/// Which encoder to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    OpenH264,
    M2m(Found),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::OpenH264 => "openh264",
            Backend::M2m(_) => "v4l2m2m",
        }
    }
}

/// `[video] encoder` / `encoder_device` → the backend. `auto`: the hardware encoder when one is
/// found, else openh264 (the note says why); `v4l2m2m` with none found is an error naming what
/// each video node was.
pub fn resolve(kind: VideoEncoderKind, device: &str) -> Result<(Backend, String), String> {
    if kind == VideoEncoderKind::Openh264 {
        return Ok((Backend::OpenH264, "openh264 (software; [video] encoder = \"openh264\")".into()));
    }
    let found = if device.is_empty() {
        m2m::probe(m2m::Codec::H264).map_err(|seen| {
            if seen.is_empty() { "no video devices".to_string() } else { seen.join("; ") }
        })
    } else {
        m2m::check(device, m2m::Codec::H264)
    };
    match (kind, found) {
        (_, Ok(f)) => {
            let note = format!("hardware H.264 encoder {} ({}, raw {})", f.path, f.driver, m2m::device::fourcc_str(f.raw_fourcc));
            Ok((Backend::M2m(f), note))
        }
        (VideoEncoderKind::Auto | VideoEncoderKind::Openh264, Err(why)) => Ok((Backend::OpenH264, format!("openh264 (software): no hardware H.264 encoder ({why})"))),
        (VideoEncoderKind::V4l2m2m, Err(why)) => Err(format!(
            "[video] encoder = \"v4l2m2m\" but there is no V4L2 memory-to-memory H.264 encoder{}: {why}. \
             Use encoder = \"auto\" (falls back to openh264) or \"openh264\"",
            if device.is_empty() { String::new() } else { format!(" at {device}") }
        )),
    }
}

pub enum VideoEncoder {
    OpenH264(H264Encoder),
    M2m(Box<M2mH264Encoder>),
}

impl VideoEncoder {
    /// `camera_fourcc`: the raw format of the camera's own buffers when they come as DMABUFs,
    /// which a hardware encoder then takes if it can (to read them in place).
    pub fn open(backend: &Backend, p: H264Params, camera_fourcc: Option<u32>) -> Result<VideoEncoder, String> {
        match backend {
            Backend::OpenH264 => H264Encoder::new(p).map(VideoEncoder::OpenH264),
            Backend::M2m(found) => {
                let mp = m2m::Params { width: p.width, height: p.height, fps: p.fps, bitrate_bps: p.bitrate_bps, keyframe_interval_frames: p.keyframe_interval_frames };
                M2mH264Encoder::open(&found.preferring_raw(camera_fourcc), mp).map(|e| VideoEncoder::M2m(Box::new(e))).map_err(|e| e.to_string())
            }
        }
    }

    /// A hardware encoder set up for another raw format than the camera's DMABUFs, which it
    /// could take: opening it again lets it read them in place.
    pub fn raw_format_differs(&self, camera_fourcc: Option<u32>) -> bool {
        match (self, camera_fourcc) {
            (VideoEncoder::M2m(e), Some(c)) => e.raw_fourcc() != c && e.found().raw_fourccs.contains(&c),
            _ => false,
        }
    }

    /// A hardware encoder reading camera DMABUFs in place (no copy) right now.
    pub fn reads_in_place(&self) -> bool {
        matches!(self, VideoEncoder::M2m(e) if e.reads_in_place())
    }

    pub fn is_hardware(&self) -> bool {
        matches!(self, VideoEncoder::M2m(_))
    }

    pub fn params(&self) -> H264Params {
        match self {
            VideoEncoder::OpenH264(e) => e.params(),
            VideoEncoder::M2m(e) => {
                let p = e.params();
                H264Params { width: p.width, height: p.height, fps: p.fps, bitrate_bps: p.bitrate_bps, keyframe_interval_frames: p.keyframe_interval_frames }
            }
        }
    }

    pub fn set_bitrate(&mut self, bps: u32) -> Result<(), String> {
        match self {
            VideoEncoder::OpenH264(e) => e.set_bitrate(bps),
            VideoEncoder::M2m(e) => e.set_bitrate(bps).map_err(|e| e.to_string()),
        }
    }

    pub fn set_frame_rate(&mut self, fps: u32) -> Result<(), String> {
        match self {
            VideoEncoder::OpenH264(e) => e.set_frame_rate(fps),
            VideoEncoder::M2m(e) => e.set_frame_rate(fps).map_err(|e| e.to_string()),
        }
    }

    /// One frame; `force_idr` makes it an IDR. `Ok(None)`: nothing to send for it.
    pub fn encode(&mut self, frame: &VideoFrame, force_idr: bool) -> Result<Option<EncodedUnit>, String> {
        match self {
            VideoEncoder::OpenH264(e) => e.encode(frame, force_idr),
            VideoEncoder::M2m(e) => e.encode(frame, force_idr).map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_hardware_encoder_that_is_missing_is_a_clear_error() {
        let e = resolve(VideoEncoderKind::V4l2m2m, "/dev/peercam-no-encoder").unwrap_err();
        assert!(e.contains("v4l2m2m") && e.contains("/dev/peercam-no-encoder") && e.contains("openh264"), "{e}");
        let (b, note) = resolve(VideoEncoderKind::Auto, "/dev/peercam-no-encoder").unwrap();
        assert_eq!(b, Backend::OpenH264);
        assert!(note.contains("no hardware H.264 encoder"), "{note}");
        assert_eq!(resolve(VideoEncoderKind::Openh264, "").unwrap().0, Backend::OpenH264);
    }
}
