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
    /// The bitrate openh264 runs at (it takes options only once it has seen a frame, so a
    /// change before the first frame waits here).
    applied_bps: u32,
    applied_fps: u32,
    started: bool,
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
            applied_bps: params.bitrate_bps,
            applied_fps: params.fps,
            started: false,
            inner,
            payloader: Default::default(),
            annexb: Vec::with_capacity(256 * 1024),
            index: 0,
        })
    }

    pub fn params(&self) -> H264Params {
        self.params
    }

    /// Changes the target bitrate in place: no new encoder, no IDR, the rate control simply
    /// aims lower (or higher) from the next frame on. This is what congestion control drives
    /// several times a second, so it must be cheap and must not disturb the stream.
    pub fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<(), String> {
        self.params.bitrate_bps = bitrate_bps.max(1);
        self.apply_bitrate()
    }

    /// openh264 keeps a max bitrate per layer (the crate sets it to the first target) and
    /// refuses a target above it; its frame skipping holds the output under it. The max follows
    /// the target: raised before a higher target, lowered after a lower one.
    fn apply_bitrate(&mut self) -> Result<(), String> {
        let bps = self.params.bitrate_bps;
        if !self.started || bps == self.applied_bps {
            return Ok(());
        }
        use openh264_sys2::{ENCODER_OPTION_BITRATE as TARGET, ENCODER_OPTION_MAX_BITRATE as MAX};
        use openh264_sys2::{SPATIAL_LAYER_0 as LAYER, SPATIAL_LAYER_ALL as ALL};
        let steps = if bps > self.applied_bps { [(MAX, LAYER), (TARGET, ALL)] } else { [(TARGET, ALL), (MAX, LAYER)] };
        for (option, layer) in steps {
            let mut info = openh264_sys2::SBitrateInfo { iLayer: layer, iBitrate: bps.min(i32::MAX as u32) as i32 };
            self.set_option(option, &mut info)
                .map_err(|rc| format!("openh264 refused bitrate {bps} bit/s (option {option}, error {rc})"))?;
        }
        self.applied_bps = bps;
        Ok(())
    }

    /// Changes the frame rate the rate control budgets for (frames fed at a lower rate get a
    /// proportionally bigger share of the bitrate), in place like [`Self::set_bitrate`].
    pub fn set_frame_rate(&mut self, fps: u32) -> Result<(), String> {
        self.params.fps = fps.max(1);
        self.apply_frame_rate()
    }

    fn apply_frame_rate(&mut self) -> Result<(), String> {
        let fps = self.params.fps;
        if !self.started || fps == self.applied_fps {
            return Ok(());
        }
        let mut rate = fps as f32;
        self.set_option(openh264_sys2::ENCODER_OPTION_FRAME_RATE, &mut rate)
            .map_err(|rc| format!("openh264 refused frame rate {fps} (error {rc})"))?;
        self.applied_fps = fps;
        Ok(())
    }

    /// One rate-control option. Callers pass the value type the option takes (`SBitrateInfo`
    /// for the bitrates, `f32` for the frame rate); openh264 copies it during the call.
    fn set_option<T>(&mut self, option: openh264_sys2::ENCODER_OPTION, value: &mut T) -> Result<(), i32> {
        // SAFETY: `value` is a live, exclusively borrowed value of the type `option` reads, for
        // the duration of the call; these options change only rate-control targets.
        let rc = unsafe { self.inner.raw_api().set_option(option, (value as *mut T).cast()) };
        if rc == 0 { Ok(()) } else { Err(rc) }
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
        // The capture time as the frame's timestamp: openh264's rate control earns bits by the
        // time between frames; with the crate's default (0 for every frame) its frame-skip
        // budget never refills on time, and it skips runs of frames after every big one.
        let bitstream = self
            .inner
            .encode_at(&yuv, openh264::Timestamp::from_millis(frame.capture_unix_us / 1000))
            .map_err(|e| format!("H.264 encode failed: {e}"))?;
        let started = std::mem::replace(&mut self.started, true);
        let keyframe = bitstream.frame_type() == FrameType::IDR;
        self.annexb.clear();
        bitstream.write_vec(&mut self.annexb);
        if !started {
            // openh264 is initialized now: changes made before the first frame apply from here
            self.apply_bitrate()?;
            self.apply_frame_rate()?;
        }
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
    fn bitrate_changes_in_place_without_an_idr() {
        let p = H264Params { width: 640, height: 360, fps: 30, bitrate_bps: 1_000_000, keyframe_interval_frames: 1000 };
        let mut enc = H264Encoder::new(p).unwrap();
        let pattern = TestPattern::new(640, 360, 30).with_noise(50);
        let mut f = VideoFrame::new(640, 360);
        let mut bytes = |enc: &mut H264Encoder, from: u64, n: u64| -> (usize, usize) {
            let (mut total, mut idrs) = (0, 0);
            for i in from..from + n {
                pattern.render(&mut f, i, i * 33_333);
                if let Some(u) = enc.encode(&f, false).unwrap() {
                    total += u.payloads.iter().map(|p| p.len()).sum::<usize>();
                    idrs += u.keyframe as usize;
                }
            }
            (total, idrs)
        };
        bytes(&mut enc, 0, 30); // settle (first frame is the IDR)
        enc.set_bitrate(2_000_000).expect("above the first target");
        bytes(&mut enc, 30, 15);
        let (high, _) = bytes(&mut enc, 45, 45);
        enc.set_bitrate(200_000).unwrap();
        bytes(&mut enc, 90, 15); // rate control adapts over a few frames
        let (low, idrs) = bytes(&mut enc, 105, 60);
        assert_eq!(idrs, 0, "a bitrate change must not force an IDR");
        assert!(low * 3 < high, "200 kbit/s must produce far less than 2 Mbit/s: {low} vs {high} bytes in 2 s");
        assert!((low * 8 / 2) < 400_000, "about the new target: {} bit/s", low * 8 / 2);
        assert_eq!(enc.params().bitrate_bps, 200_000);
        enc.set_bitrate(2_000_000).expect("raising the target above the first one works too");
        bytes(&mut enc, 165, 15);
        let (back, idrs) = bytes(&mut enc, 180, 60);
        assert_eq!(idrs, 0);
        assert!(back > low * 3, "back up: {back} vs {low} bytes in 2 s");
        enc.set_frame_rate(15).unwrap();
        assert_eq!(enc.params().fps, 15);
    }

    #[test]
    fn wrong_size_is_an_error_not_a_panic() {
        let mut enc = H264Encoder::new(params()).unwrap();
        let f = VideoFrame::new(640, 480);
        assert!(enc.encode(&f, false).is_err());
    }
}
