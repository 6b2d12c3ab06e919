//! Still pictures out of a camera's own H.264 (passthrough), for snapshots.
//!
//! A passthrough camera never hands peercam a raw frame, yet Home Assistant, Frigate and the page
//! ask for `snapshot.jpg`. An IDR decodes on its own, so the capture thread keeps the stream's
//! parameter sets and, when a snapshot is wanted, asks the camera for an IDR ([`IdrKeeper`]);
//! that one access unit is decoded here with openh264's decoder (already linked for the encoder),
//! off the capture thread. Decoding only IDRs keeps the cost at one picture per snapshot: no
//! decoder runs while nobody asks.

use super::passthrough::{nal_type, nal_units, NAL_IDR, NAL_PPS, NAL_SPS};
use crate::capture::convert::copy_plane;
use crate::capture::VideoFrame;
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use std::time::{Duration, Instant};

/// The largest parameter set kept (real SPS/PPS are tens of bytes; a bound against garbage).
const MAX_PARAMETER_SET: usize = 1024;
/// The largest IDR kept for a stale answer (a 1080p IDR at high quality is well under this).
pub const MAX_IDR_BYTES: usize = 4 << 20;

/// Why a still picture could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StillError {
    #[error("the camera's H.264 could not be decoded: {0}")]
    Decode(String),
    #[error("the camera's H.264 IDR decoded to no picture")]
    NoPicture,
}

/// Decodes one self-contained access unit (SPS, PPS and an IDR, Annex-B) to an I420 frame.
pub fn decode_idr(annexb: &[u8], capture_unix_us: u64) -> Result<VideoFrame, StillError> {
    let mut dec = Decoder::new().map_err(|e| StillError::Decode(format!("cannot start openh264's decoder: {e}")))?;
    // (openh264 copies the picture into the frame before the decoder is dropped)
    let frame = match dec.decode(annexb).map_err(|e| StillError::Decode(e.to_string()))? {
        Some(yuv) => Some(to_frame(&yuv, capture_unix_us)),
        None => None,
    };
    if let Some(f) = frame {
        return Ok(f);
    }
    let rest = dec.flush_remaining().map_err(|e| StillError::Decode(e.to_string()))?;
    rest.last().map(|yuv| to_frame(yuv, capture_unix_us)).ok_or(StillError::NoPicture)
}

fn to_frame(yuv: &impl YUVSource, capture_unix_us: u64) -> VideoFrame {
    // I420 needs even sizes; a cropped odd size loses its last row/column.
    let (w, h) = yuv.dimensions();
    let (w, h) = (w & !1, h & !1);
    let (sy, su, sv) = yuv.strides();
    let mut f = VideoFrame::new(w as u32, h as u32);
    f.capture_unix_us = capture_unix_us;
    let (cw, ch) = (w / 2, h / 2);
    let (y, rest) = f.data.split_at_mut(w * h);
    let (u, v) = rest.split_at_mut(cw * ch);
    copy_plane(yuv.y(), sy, y, w, h);
    copy_plane(yuv.u(), su, u, cw, ch);
    copy_plane(yuv.v(), sv, v, cw, ch);
    f
}

/// What the capture thread should do for the snapshots waiting on a passthrough camera.
#[derive(Debug, PartialEq, Eq)]
pub enum StillStep {
    /// Nothing yet: wait for the next access unit.
    Wait,
    /// Ask the camera for an IDR (once per round of waiting snapshots).
    RequestIdr,
    /// Answer every waiting snapshot with this self-contained access unit (SPS + PPS + IDR)
    /// and its capture time.
    Answer(Vec<u8>, u64),
}

/// Keeps what a snapshot of a passthrough camera needs: the newest SPS and PPS (cameras send
/// them once per stream start or per IDR) and the newest IDR, for a camera that ignores the
/// request for a new one. Sans-I/O: the capture thread feeds access units and the time.
#[derive(Debug, Default)]
pub struct IdrKeeper {
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    last: Option<(Vec<u8>, u64)>,
    asked_at: Option<Instant>,
}

impl IdrKeeper {
    /// How long a snapshot waits for the IDR it asked for before the last one is used (a
    /// camera without `FORCE_KEY_FRAME` sends one per keyframe interval; the HTTP side gives up
    /// after 5 s).
    pub const PATIENCE: Duration = Duration::from_millis(2500);

    pub fn new() -> Self {
        Self::default()
    }

    /// One access unit from the camera; `wanted` says whether snapshots are waiting.
    pub fn push(&mut self, au: &[u8], capture_unix_us: u64, wanted: bool, now: Instant) -> StillStep {
        let mut idr = false;
        for nal in nal_units(au) {
            match nal_type(nal) {
                NAL_SPS if nal.len() <= MAX_PARAMETER_SET => self.sps = Some(nal.to_vec()),
                NAL_PPS if nal.len() <= MAX_PARAMETER_SET => self.pps = Some(nal.to_vec()),
                NAL_IDR => idr = true,
                _ => {}
            }
        }
        if idr && au.len() <= MAX_IDR_BYTES {
            if let Some(unit) = self.self_contained(au) {
                self.last = Some((unit, capture_unix_us));
            }
        }
        if !wanted {
            self.asked_at = None;
            return StillStep::Wait;
        }
        if idr && let Some((unit, at)) = &self.last {
            if *at == capture_unix_us {
                self.asked_at = None;
                return StillStep::Answer(unit.clone(), *at);
            }
        }
        match self.asked_at {
            None => {
                self.asked_at = Some(now);
                StillStep::RequestIdr
            }
            Some(t) if now.duration_since(t) >= Self::PATIENCE => match &self.last {
                Some((unit, at)) => {
                    self.asked_at = None;
                    StillStep::Answer(unit.clone(), *at)
                }
                None => StillStep::Wait,
            },
            Some(_) => StillStep::Wait,
        }
    }

    /// The stream was reopened (new parameter sets follow; the old IDR is another picture).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// SPS + PPS + the unit's own NAL units (its own parameter sets win), Annex-B.
    fn self_contained(&self, au: &[u8]) -> Option<Vec<u8>> {
        let (sps, pps) = (self.sps.as_ref()?, self.pps.as_ref()?);
        let mut out = Vec::with_capacity(au.len() + sps.len() + pps.len() + 12);
        for nal in [sps.as_slice(), pps.as_slice()].into_iter().chain(nal_units(au).filter(|n| !matches!(nal_type(n), NAL_SPS | NAL_PPS))) {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::passthrough::access_units;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/h264/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn is_idr(au: &[u8]) -> bool {
        nal_units(au).any(|n| nal_type(n) == NAL_IDR)
    }

    #[test]
    fn an_idr_from_the_middle_of_a_stream_decodes_alone_with_the_kept_parameter_sets() {
        // The fixture sends SPS/PPS once, in front of its first IDR: the later IDRs decode only
        // with the kept ones put in front.
        let aus = access_units(&fixture("cam-cb-320x240.h264"));
        let mut k = IdrKeeper::new();
        let t0 = Instant::now();
        let mut idrs = 0;
        let mut answered = None;
        for (i, au) in aus.iter().enumerate() {
            let wanted = idrs >= 1; // a snapshot arrives after the first IDR went by
            let step = k.push(au, 1000 + i as u64, wanted, t0);
            if is_idr(au) {
                idrs += 1;
            }
            if let StillStep::Answer(unit, at) = step {
                answered = Some((unit, at, i));
                break;
            }
        }
        let (unit, at, i) = answered.expect("the second IDR answers the snapshot");
        assert!(i > 0 && is_idr(&aus[i]), "answered at access unit {i}");
        assert_eq!(nal_units(&aus[i]).filter(|n| nal_type(n) == NAL_SPS).count(), 0, "the fixture's later IDRs carry no SPS");
        assert_eq!(at, 1000 + i as u64);
        let f = decode_idr(&unit, at).unwrap();
        assert_eq!((f.width, f.height, f.capture_unix_us), (320, 240, at));
        // The same picture as a decoder gets that ran the stream from its start (an IDR
        // references nothing, so they are equal to the bit), and it is the fixture's gradient
        // ((x + y) & 255 with a moving box): mostly within a few steps of it.
        let mut dec = Decoder::new().unwrap();
        let mut pictures = Vec::new();
        for au in &aus[..=i] {
            if let Some(yuv) = dec.decode(au).unwrap() {
                pictures.push(to_frame(&yuv, 0));
            }
        }
        assert_eq!(pictures.len(), i + 1, "one picture per access unit");
        assert!(pictures[i].data == f.data, "the IDR alone decodes to what the whole stream shows");
        let near = (0..240usize)
            .flat_map(|y| (0..320usize).map(move |x| (x, y)))
            .filter(|&(x, y)| (f.data[y * 320 + x] as i32 - ((x + y) & 255) as i32).abs() <= 6)
            .count();
        assert!(near > 320 * 240 / 2, "{near} of {} pixels follow the gradient", 320 * 240);
    }

    #[test]
    fn the_keeper_asks_once_and_falls_back_to_the_last_idr_when_the_camera_ignores_it() {
        let aus = access_units(&fixture("cam-cb-320x240.h264"));
        let first_p = aus.iter().position(|a| !is_idr(a) && nal_units(a).any(|n| nal_type(n) == 1)).unwrap();
        let mut k = IdrKeeper::new();
        let t0 = Instant::now();
        assert_eq!(k.push(&aus[0], 1, false, t0), StillStep::Wait);
        assert_eq!(k.push(&aus[first_p], 2, true, t0), StillStep::RequestIdr);
        assert_eq!(k.push(&aus[first_p], 3, true, t0 + Duration::from_millis(100)), StillStep::Wait);
        match k.push(&aus[first_p], 4, true, t0 + IdrKeeper::PATIENCE) {
            StillStep::Answer(unit, at) => {
                assert_eq!(at, 1, "the stale IDR keeps its own capture time");
                assert_eq!(decode_idr(&unit, at).unwrap().width, 320);
            }
            s => panic!("expected the last IDR, got {s:?}"),
        }
        // Without any IDR seen there is nothing to fall back to: keep waiting (HTTP times out).
        let mut empty = IdrKeeper::new();
        assert_eq!(empty.push(&aus[first_p], 1, true, t0), StillStep::RequestIdr);
        assert_eq!(empty.push(&aus[first_p], 2, true, t0 + Duration::from_secs(10)), StillStep::Wait);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_idr(&[0, 0, 0, 1, 0x65, 0xff, 0x00, 0x12], 0).is_err());
        assert!(decode_idr(&[], 0).is_err());
    }
}
