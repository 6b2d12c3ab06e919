//! H.264 with openh264: constrained baseline (no B-frames), bitrate-controlled, IDR on request,
//! SPS/PPS in front of every IDR; output packetized for RTP (RFC 6184, packetization-mode 1)
//! right here, once, for every viewer.

use super::EncodedUnit;
use crate::capture::VideoFrame;
use bytes::Bytes;
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Level,
    Profile, RateControlMode, UsageType,
};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;
use webrtc::rtp;
use webrtc::rtp::packetizer::Payloader;

/// What the device signals in SDP: constrained baseline, level 3.1 (720p30).
pub const PROFILE_LEVEL_ID: &str = "42e01f";
/// Payload size that fits a 1280-byte UDP datagram with SRTP and header extensions on any path.
pub const RTP_MTU: usize = 1200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H264Params {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_bps: u32,
    pub keyframe_interval_frames: u32,
}

pub struct H264Encoder {
    params: H264Params,
    inner: Encoder,
    payloader: rtp::codecs::h264::H264Payloader,
    annexb: Vec<u8>,
    index: u64,
}

impl H264Encoder {
    pub fn new(params: H264Params) -> Result<Self, String> {
        let config = EncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .profile(Profile::Baseline)
            .level(Level::Level_3_1)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(params.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(params.fps as f32))
            // openh264 only honours the bitrate with frame skipping on; it skips only when a
            // frame would overshoot the budget (without it, the target is ignored).
            .skip_frames(true)
            .complexity(Complexity::Low)
            .intra_frame_period(IntraFramePeriod::from_num_frames(params.keyframe_interval_frames))
            // One thread: lowest latency per frame, and leaves cores for capture and SRTP.
            .num_threads(1);
        let inner = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| format!("cannot create H.264 encoder: {e}"))?;
        Ok(Self {
            params,
            inner,
            payloader: Default::default(),
            annexb: Vec::with_capacity(256 * 1024),
            index: 0,
        })
    }

    pub fn params(&self) -> H264Params {
        self.params
    }

    /// Encodes one frame. `force_idr` makes this frame an IDR (new viewer, PLI/FIR).
    /// Returns `None` when the encoder produced nothing for this frame.
    pub fn encode(&mut self, frame: &VideoFrame, force_idr: bool) -> Result<Option<EncodedUnit>, String> {
        if frame.width != self.params.width || frame.height != self.params.height {
            return Err(format!(
                "frame is {}x{}, encoder is set up for {}x{}",
                frame.width, frame.height, self.params.width, self.params.height
            ));
        }
        if force_idr {
            self.inner.force_intra_frame();
        }
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (y, u, v) = frame.planes();
        let yuv = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        let bitstream = self
            .inner
            .encode(&yuv)
            .map_err(|e| format!("H.264 encode failed: {e}"))?;
        let keyframe = bitstream.frame_type() == FrameType::IDR;
        self.annexb.clear();
        bitstream.write_vec(&mut self.annexb);
        if self.annexb.is_empty() {
            return Ok(None);
        }
        let payloads = self
            .payloader
            .payload(RTP_MTU, &Bytes::copy_from_slice(&self.annexb))
            .map_err(|e| format!("H.264 packetization failed: {e}"))?;
        if payloads.is_empty() {
            return Ok(None);
        }
        self.index += 1;
        Ok(Some(EncodedUnit {
            payloads,
            keyframe,
            capture_unix_us: frame.capture_unix_us,
            index: self.index,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::testsrc::TestPattern;

    fn params() -> H264Params {
        H264Params { width: 320, height: 240, fps: 30, bitrate_bps: 500_000, keyframe_interval_frames: 60 }
    }

    fn nal_types(unit: &EncodedUnit) -> Vec<u8> {
        // First NAL type of each payload; STAP-A (24) carries SPS+PPS, FU-A (28) fragments.
        unit.payloads
            .iter()
            .flat_map(|p| match p[0] & 0x1f {
                24 => {
                    let mut types = vec![];
                    let mut i = 1;
                    while i + 2 < p.len() {
                        let len = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                        types.push(p[i + 2] & 0x1f);
                        i += 2 + len;
                    }
                    types
                }
                28 => vec![p[1] & 0x1f],
                t => vec![t],
            })
            .collect()
    }

    #[test]
    fn first_frame_is_idr_with_parameter_sets_and_idr_on_request() {
        let mut enc = H264Encoder::new(params()).unwrap();
        let pattern = TestPattern::new(320, 240, 30);
        let mut f = VideoFrame::new(320, 240);
        let mut units = vec![];
        for i in 0..10 {
            pattern.render(&mut f, i, i * 33_333);
            units.push(enc.encode(&f, i == 6).unwrap().expect("a frame"));
        }
        assert!(units[0].keyframe);
        let first = nal_types(&units[0]);
        assert!(first.contains(&7) && first.contains(&8) && first.contains(&5), "{first:?}");
        assert!(!units[3].keyframe, "no IDR without a request");
        assert!(units[6].keyframe, "forced IDR");
        assert!(nal_types(&units[6]).contains(&7), "SPS with every IDR");
        for u in &units {
            assert!(u.payloads.iter().all(|p| p.len() <= RTP_MTU));
        }
    }

    #[test]
    fn sps_is_constrained_baseline() {
        let mut enc = H264Encoder::new(params()).unwrap();
        let mut f = VideoFrame::new(320, 240);
        TestPattern::new(320, 240, 30).render(&mut f, 0, 0);
        let unit = enc.encode(&f, false).unwrap().unwrap();
        let stap = &unit.payloads[0];
        assert_eq!(stap[0] & 0x1f, 24, "SPS+PPS aggregated in a STAP-A");
        let sps = &stap[3..];
        assert_eq!(sps[0] & 0x1f, 7);
        assert_eq!(sps[1], 0x42, "profile_idc baseline");
        assert!(sps[2] & 0x40 != 0, "constraint_set1 (constrained baseline)");
    }

    #[test]
    fn wrong_size_is_an_error_not_a_panic() {
        let mut enc = H264Encoder::new(params()).unwrap();
        let f = VideoFrame::new(640, 480);
        assert!(enc.encode(&f, false).is_err());
    }
}
