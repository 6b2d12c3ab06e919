//! H.264 from a hardware M2M encoder, made ready for the hub exactly like openh264's output:
//! constrained baseline checked on every SPS (anything else is refused with a message naming
//! it — the SDP promises `42e01f`), SPS/PPS put in front of every IDR even when the driver does
//! not repeat them (bcm2835-codec sends them once in a buffer of their own unless
//! `repeat_sequence_header` takes), pictures before the first IDR held back, and the same RFC 6184
//! packetizer (through [`H264Passthrough`], which does this for camera H.264 too).

use super::{Codec, Found, M2mEncoder, M2mError, Params};
use crate::capture::VideoFrame;
use crate::codec::passthrough::{nal_type, nal_units, H264Passthrough, PassthroughError, SpsInfo, NAL_SPS};
use crate::codec::EncodedUnit;

/// `V4L2_MPEG_VIDEO_H264_PROFILE_CONSTRAINED_BASELINE`.
pub const V4L2_PROFILE_CONSTRAINED_BASELINE: i32 = 1;

/// The lowest H.264 level (as `level_idc`: 31 = 3.1) whose limits (macroblocks per frame and
/// per second, Table A-1) hold `width`x`height` at `fps`; at most 4.2. Browsers decode these
/// (the SDP's `level-asymmetry-allowed=1` lets the sender's level differ from 3.1).
pub fn level_for(width: u32, height: u32, fps: u32) -> u8 {
    let mbs = (width.div_ceil(16) as u64) * (height.div_ceil(16) as u64);
    let mbps = mbs * fps.max(1) as u64;
    // (level_idc, max frame size in MBs, max MBs per second)
    const LEVELS: [(u8, u64, u64); 9] = [
        (21, 792, 19_800),
        (22, 1_620, 20_250),
        (30, 1_620, 40_500),
        (31, 3_600, 108_000),
        (32, 5_120, 216_000),
        (40, 8_192, 245_760),
        (41, 8_192, 245_760),
        (42, 8_704, 522_240),
        (42, u64::MAX, u64::MAX),
    ];
    // Never below 3.1: what the SDP names, and what every browser takes.
    LEVELS.iter().find(|(idc, fs, r)| *idc >= 31 && mbs <= *fs && mbps <= *r).map_or(42, |l| l.0)
}

/// `level_idc` → the V4L2 menu value (`V4L2_MPEG_VIDEO_H264_LEVEL_*`).
pub fn v4l2_level(level_idc: u8) -> i32 {
    match level_idc {
        10 => 0,
        11 => 2,
        12 => 3,
        13 => 4,
        20 => 5,
        21 => 6,
        22 => 7,
        30 => 8,
        31 => 9,
        32 => 10,
        40 => 11,
        41 => 12,
        _ => 13,
    }
}

/// Checks every SPS in `au`: constrained baseline only (`profile_idc` 66 with constraint_set1),
/// what the device signals in SDP.
pub fn check_constrained_baseline(au: &[u8]) -> Result<Option<SpsInfo>, String> {
    let mut last = None;
    for nal in nal_units(au).filter(|n| nal_type(n) == NAL_SPS) {
        let info = SpsInfo::parse(nal).ok_or("the encoder's SPS is too short")?;
        if info.profile_idc != 66 || info.constraints & 0x40 == 0 {
            return Err(format!(
                "the hardware encoder makes {info}, but peercam sends constrained baseline (42e0xx) only; \
                 the driver ignored V4L2_CID_MPEG_VIDEO_H264_PROFILE = constrained baseline"
            ));
        }
        last = Some(info);
    }
    Ok(last)
}

/// The encoder's Annex-B units → [`EncodedUnit`]s.
#[derive(Default)]
pub struct H264Output {
    inner: H264Passthrough,
    sps: Option<SpsInfo>,
}

impl H264Output {
    pub fn new() -> Self {
        Self::default()
    }

    /// One unit from the encoder. `Ok(None)`: nothing to send (parameter sets alone, or a
    /// picture before the first IDR).
    pub fn push(&mut self, au: &[u8], capture_unix_us: u64) -> Result<Option<EncodedUnit>, String> {
        if let Some(info) = check_constrained_baseline(au)? {
            self.sps = Some(info);
        }
        self.inner.push(au, capture_unix_us).map_err(|e| match e {
            PassthroughError::Profile(info) => format!("the hardware encoder makes {info}"),
            PassthroughError::Packetize(m) => m,
        })
    }

    /// The profile and level of the last SPS.
    pub fn sps(&self) -> Option<SpsInfo> {
        self.sps
    }

    /// IDRs that came without SPS/PPS and got the cached ones.
    pub fn idrs_repaired(&self) -> u64 {
        self.inner.stats.idrs_repaired
    }

    /// The stream restarted (encoder reset): wait for its next IDR.
    pub fn discontinuity(&mut self) {
        self.inner.discontinuity();
    }
}

/// The hardware H.264 encoder with the interface of `codec::h264::H264Encoder`.
pub struct M2mH264Encoder {
    enc: M2mEncoder,
    out: H264Output,
}

impl M2mH264Encoder {
    pub fn open(found: &Found, params: Params) -> Result<Self, M2mError> {
        Ok(Self { enc: M2mEncoder::open(found, Codec::H264, params)?, out: H264Output::new() })
    }

    /// The raw format the device was set up with.
    pub fn raw_fourcc(&self) -> u32 {
        self.enc.raw_format().fourcc
    }

    /// Whether frames are read in place from the camera's DMABUFs right now.
    pub fn reads_in_place(&self) -> bool {
        self.enc.reads_in_place()
    }

    pub fn params(&self) -> Params {
        self.enc.params()
    }

    pub fn found(&self) -> &Found {
        self.enc.found()
    }

    pub fn sps(&self) -> Option<SpsInfo> {
        self.out.sps()
    }

    pub fn set_bitrate(&mut self, bps: u32) -> Result<(), M2mError> {
        self.enc.set_bitrate(bps)
    }

    pub fn set_frame_rate(&mut self, fps: u32) -> Result<(), M2mError> {
        self.enc.set_frame_rate(fps)
    }

    /// Encodes one frame; `force_idr` makes it an IDR. A unit holding only parameter sets is
    /// cached and the picture waited for.
    pub fn encode(&mut self, frame: &VideoFrame, force_idr: bool) -> Result<Option<EncodedUnit>, M2mError> {
        let path = self.enc.found().path.clone();
        let stream = |why: String| M2mError::Stream { path: path.clone(), why };
        let unit = self.enc.encode(frame, force_idr)?;
        let (data, ts) = (unit.data, unit.capture_unix_us);
        let ts = if ts == 0 { frame.capture_unix_us } else { ts };
        if let Some(u) = self.out.push(data, ts).map_err(&stream)? {
            return Ok(Some(u));
        }
        // Parameter sets alone (bcm2835-codec's first buffer): the picture follows.
        if nal_units(data).any(|n| matches!(nal_type(n), 1..=5)) {
            return Ok(None);
        }
        let unit = self.enc.next_unit()?;
        let ts = if unit.capture_unix_us == 0 { frame.capture_unix_us } else { unit.capture_unix_us };
        self.out.push(unit.data, ts).map_err(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::passthrough::{access_units, NAL_IDR, NAL_PPS};
    use webrtc::rtp::codecs::h264::H264Packet;
    use webrtc::rtp::packetizer::Depacketizer;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/h264/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
    }

    fn nal_types_of(unit: &EncodedUnit) -> Vec<u8> {
        let mut pkt = H264Packet::default();
        let mut au = vec![];
        for p in &unit.payloads {
            if let Ok(b) = pkt.depacketize(&bytes::Bytes::copy_from_slice(p)) {
                au.extend_from_slice(&b);
            }
        }
        nal_units(&au).map(nal_type).collect()
    }

    #[test]
    fn levels_fit_the_picture_and_never_go_below_3_1() {
        assert_eq!(level_for(640, 480, 30), 31);
        assert_eq!(level_for(1280, 720, 30), 31);
        assert_eq!(level_for(1280, 720, 60), 32);
        assert_eq!(level_for(1920, 1080, 30), 40);
        assert_eq!(level_for(1920, 1080, 60), 42);
        assert_eq!(level_for(3840, 2160, 30), 42, "over every limit: the highest the Pi offers");
        assert_eq!(v4l2_level(31), 9);
        assert_eq!(v4l2_level(40), 11);
        assert_eq!(v4l2_level(42), 13);
    }

    /// Real x264 constrained-baseline output (42c00d), shaped like a hardware encoder that sends
    /// SPS/PPS once: every IDR leaves with SPS + PPS in front.
    #[test]
    fn sps_pps_go_in_front_of_every_idr_even_when_the_encoder_sends_them_once() {
        let units = access_units(&fixture("cam-cb-320x240.h264"));
        assert!(units.len() >= 20);
        let mut out = H264Output::new();
        let mut idrs = 0;
        for (i, au) in units.iter().enumerate() {
            let Some(u) = out.push(au, i as u64 * 66_666).unwrap() else { continue };
            let types = nal_types_of(&u);
            if u.keyframe {
                idrs += 1;
                assert!(types.starts_with(&[NAL_SPS, NAL_PPS]), "unit {i}: {types:?}");
                assert!(types.contains(&NAL_IDR));
            }
        }
        assert!(idrs >= 2, "{idrs}");
        assert!(out.idrs_repaired() >= 1, "later IDRs came without parameter sets");
        let sps = out.sps().expect("parsed");
        assert_eq!((sps.profile_idc, sps.level_idc), (66, 13));
        assert_eq!(sps.profile_name(), "constrained baseline");
        assert_eq!(sps.level(), "1.3");
    }

    /// bcm2835-codec's first capture buffer holds only SPS + PPS; the IDR comes in the next one.
    #[test]
    fn a_header_only_unit_is_cached_and_the_next_idr_carries_it() {
        let stream = fixture("cam-cb-320x240.h264");
        let first = &access_units(&stream)[0];
        let (mut headers, mut picture) = (vec![], vec![]);
        for nal in nal_units(first) {
            let dst = if matches!(nal_type(nal), NAL_SPS | NAL_PPS) { &mut headers } else { &mut picture };
            dst.extend_from_slice(&[0, 0, 0, 1]);
            dst.extend_from_slice(nal);
        }
        let mut out = H264Output::new();
        assert!(out.push(&headers, 0).unwrap().is_none(), "nothing to send yet");
        let u = out.push(&picture, 1).unwrap().expect("the IDR");
        assert!(u.keyframe);
        assert!(nal_types_of(&u).starts_with(&[NAL_SPS, NAL_PPS]));
    }

    #[test]
    fn main_and_high_profile_output_is_refused_naming_the_profile() {
        for (name, profile) in [("cam-main-320x240.h264", "main"), ("cam-high-320x240.h264", "high")] {
            let units = access_units(&fixture(name));
            let mut out = H264Output::new();
            let e = out.push(&units[0], 0).unwrap_err();
            assert!(e.contains(profile) && e.contains("constrained baseline"), "{name}: {e}");
        }
        // plain baseline (no constraint_set1) is refused too: the SDP says 42e0xx
        let sps = [0, 0, 0, 1, 0x67, 0x42, 0x00, 0x1f, 0xe9];
        assert!(check_constrained_baseline(&sps).unwrap_err().contains("baseline profile level 3.1"));
        assert!(check_constrained_baseline(&[0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0xe9]).is_ok());
        assert!(check_constrained_baseline(&[0, 0, 0, 1, 0x67, 0x42]).is_err(), "short SPS");
    }

    #[test]
    fn pictures_before_the_first_idr_are_held_back() {
        let units = access_units(&fixture("cam-cb-320x240.h264"));
        let is_idr = |au: &Vec<u8>| nal_units(au).any(|n| nal_type(n) == NAL_IDR);
        let mut out = H264Output::new();
        assert!(out.push(&units[0], 0).unwrap().unwrap().keyframe);
        // the encoder restarted mid-GOP: P pictures wait, the next IDR (without parameter sets
        // of its own in this stream) goes out with the cached ones
        out.discontinuity();
        let p = units.iter().position(|au| !is_idr(au)).unwrap();
        assert!(out.push(&units[p], 0).unwrap().is_none());
        let next_idr = units.iter().skip(p).position(is_idr).unwrap() + p;
        for au in &units[p + 1..next_idr] {
            assert!(out.push(au, 0).unwrap().is_none(), "held back");
        }
        let u = out.push(&units[next_idr], 0).unwrap().expect("the IDR");
        assert!(u.keyframe && nal_types_of(&u).starts_with(&[NAL_SPS, NAL_PPS]));
        // and a fresh output that never saw parameter sets sends nothing rather than an IDR
        // nobody can decode
        assert!(H264Output::new().push(&units[next_idr], 0).unwrap().is_none());
    }
}
