//! Camera H.264 passed through without re-encoding (a camera whose V4L2 mode is FourCC `H264`).
//!
//! The camera hands over one access unit per buffer, Annex-B. This module checks that its
//! profile is one browsers decode, makes every IDR self-contained (SPS and PPS in front: many
//! cameras send them only once, at stream start, or in a buffer of their own), holds back
//! pictures until the first IDR (after a start, a reopen or lost frames, P-frames would refer to
//! pictures the viewers never got), and packetizes exactly as `h264` does (webrtc's
//! `H264Payloader`, RFC 6184 packetization-mode 1, [`RTP_MTU`]) into the crate's
//! [`EncodedUnit`].
//!
//! Pure logic: bytes in, payloads out, no device I/O. Asking the camera for an IDR (the V4L2
//! force-key-frame control) is the caller's job; [`H264Passthrough::waiting_for_idr`] says when.

use super::h264::RTP_MTU;
use super::EncodedUnit;
use bytes::Bytes;
use std::fmt;
use webrtc::rtp::codecs::h264::H264Payloader;
use webrtc::rtp::packetizer::Payloader;

pub const NAL_SLICE: u8 = 1;
pub const NAL_IDR: u8 = 5;
pub const NAL_SEI: u8 = 6;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;

/// The NAL units of an Annex-B byte stream (3- or 4-byte start codes), without their start
/// codes and without the zero bytes that may trail a unit. Bytes before the first start code
/// are skipped; empty units are not returned.
pub fn nal_units(annexb: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = find_start(annexb, 0).map(|(_, after)| after);
    std::iter::from_fn(move || loop {
        let start = pos?;
        let (end, next) = match find_start(annexb, start) {
            Some((at, after)) => (at, Some(after)),
            None => (annexb.len(), None),
        };
        pos = next;
        let mut nal = &annexb[start..end];
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        if !nal.is_empty() {
            return Some(nal);
        }
    })
}

/// The next `00 00 01` at or after `from`: (index of its first zero, index after the `01`).
fn find_start(b: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 3 <= b.len() {
        // Skip fast: a start code has a 1 at i+2 and zeros before it.
        if b[i + 2] > 1 {
            i += 3;
        } else if b[i + 2] == 1 && b[i] == 0 && b[i + 1] == 0 {
            return Some((i, i + 3));
        } else {
            i += 1;
        }
    }
    None
}

/// The NAL unit type (the low 5 bits of its header byte).
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |h| h & 0x1f)
}

/// What the first three bytes of an SPS say: `profile_idc`, the constraint flags byte and
/// `level_idc` — the `profile-level-id` of SDP (RFC 6184).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    pub constraints: u8,
    pub level_idc: u8,
}

impl SpsInfo {
    /// Reads an SPS NAL unit (with its header byte). `None` if it is not an SPS or too short.
    /// (Emulation prevention cannot touch these bytes: `profile_idc` is never 0, so no
    /// `00 00` pair ends before `level_idc`.)
    pub fn parse(nal: &[u8]) -> Option<SpsInfo> {
        if nal_type(nal) != NAL_SPS || nal.len() < 4 {
            return None;
        }
        Some(SpsInfo { profile_idc: nal[1], constraints: nal[2], level_idc: nal[3] })
    }

    /// `profile-level-id` as SDP writes it, e.g. `42e01f`.
    pub fn profile_level_id(&self) -> String {
        format!("{:02x}{:02x}{:02x}", self.profile_idc, self.constraints, self.level_idc)
    }

    /// The profile's name (constraint_set1 on Baseline is Constrained Baseline).
    pub fn profile_name(&self) -> &'static str {
        match self.profile_idc {
            66 if self.constraints & 0x40 != 0 => "constrained baseline",
            66 => "baseline",
            77 => "main",
            88 => "extended",
            100 => "high",
            110 => "high 10",
            122 => "high 4:2:2",
            244 => "high 4:4:4",
            _ => "unknown",
        }
    }

    /// Level as written in the spec (`level_idc` 31 → "3.1"; 11 with constraint_set3 → "1b").
    pub fn level(&self) -> String {
        if self.level_idc == 11 && self.profile_idc == 66 && self.constraints & 0x10 != 0 {
            return "1b".into();
        }
        format!("{}.{}", self.level_idc / 10, self.level_idc % 10)
    }

    /// Whether browsers decode this over WebRTC. The device answers with the profiles of
    /// `rtc::offer::H264_PROFILES`; Chromium offers 42001f, 42e01f, 4d001f and no High, so
    /// Baseline (constrained or not) and Main are passed through, everything else is refused.
    pub fn browser_compatible(&self) -> bool {
        matches!(self.profile_idc, 66 | 77)
    }
}

impl fmt::Display for SpsInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} profile level {} ({})", self.profile_name(), self.level(), self.profile_level_id())
    }
}

/// Why camera H.264 cannot be passed through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PassthroughError {
    /// The camera encodes a profile browsers do not take (e.g. High). Not recoverable by
    /// waiting: the camera must be used in another format.
    #[error(
        "the camera's H.264 is {0}, which browsers do not all decode; passthrough takes constrained \
         baseline (42e0xx/42c0xx), baseline (4200xx) or main (4d00xx) — choose another format \
         ([video.constraints] format) or set the camera's H.264 profile"
    )]
    Profile(SpsInfo),
    #[error("H.264 packetization failed: {0}")]
    Packetize(String),
}

/// Counters for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassthroughStats {
    /// Access units handed out.
    pub units: u64,
    pub keyframes: u64,
    /// IDRs that came without SPS/PPS and got the cached ones in front.
    pub idrs_repaired: u64,
    /// Pictures held back while waiting for an IDR.
    pub dropped_waiting: u64,
}

/// Turns the camera's access units into RTP-ready [`EncodedUnit`]s.
pub struct H264Passthrough {
    payloader: H264Payloader,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    sps_info: Option<SpsInfo>,
    need_idr: bool,
    index: u64,
    out: Vec<u8>,
    pub stats: PassthroughStats,
}

impl Default for H264Passthrough {
    fn default() -> Self {
        Self::new()
    }
}

impl H264Passthrough {
    pub fn new() -> Self {
        Self {
            payloader: H264Payloader::default(),
            sps: None,
            pps: None,
            sps_info: None,
            need_idr: true,
            index: 0,
            out: Vec::with_capacity(256 * 1024),
            stats: PassthroughStats::default(),
        }
    }

    /// The camera was (re)opened: forget its parameter sets and wait for an IDR.
    pub fn reset(&mut self) {
        self.payloader = H264Payloader::default();
        self.sps = None;
        self.pps = None;
        self.sps_info = None;
        self.need_idr = true;
    }

    /// Frames were lost before the next one (the driver's sequence numbers skipped, or a unit
    /// was dropped): what follows refers to pictures nobody got, so wait for an IDR.
    pub fn discontinuity(&mut self) {
        self.need_idr = true;
    }

    /// Whether pictures are being held back until the camera sends an IDR (the caller should
    /// ask the camera for one).
    pub fn waiting_for_idr(&self) -> bool {
        self.need_idr
    }

    /// The profile and level of the camera's last SPS.
    pub fn sps_info(&self) -> Option<SpsInfo> {
        self.sps_info
    }

    /// One access unit (Annex-B) from the camera. `Ok(None)`: nothing to send for it (only
    /// parameter sets, or a picture before the first IDR).
    pub fn push(&mut self, au: &[u8], capture_unix_us: u64) -> Result<Option<EncodedUnit>, PassthroughError> {
        let mut has_idr = false;
        let mut has_vcl = false;
        for nal in nal_units(au) {
            match nal_type(nal) {
                NAL_SPS => {
                    let info = SpsInfo::parse(nal).ok_or_else(|| PassthroughError::Packetize("SPS too short".into()))?;
                    if !info.browser_compatible() {
                        return Err(PassthroughError::Profile(info));
                    }
                    self.sps_info = Some(info);
                    self.sps = Some(Bytes::copy_from_slice(nal));
                }
                NAL_PPS => self.pps = Some(Bytes::copy_from_slice(nal)),
                NAL_IDR => {
                    has_idr = true;
                    has_vcl = true;
                }
                t if (NAL_SLICE..NAL_IDR).contains(&t) => has_vcl = true,
                _ => {}
            }
        }
        if !has_vcl {
            return Ok(None);
        }
        if !has_idr && self.need_idr {
            self.stats.dropped_waiting += 1;
            return Ok(None);
        }
        self.out.clear();
        if has_idr {
            let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
                // An IDR nobody can decode without parameter sets: keep waiting.
                self.stats.dropped_waiting += 1;
                self.need_idr = true;
                return Ok(None);
            };
            if sps.len() + pps.len() + 5 > RTP_MTU {
                return Err(PassthroughError::Packetize(format!(
                    "SPS + PPS ({} bytes) do not fit one RTP packet",
                    sps.len() + pps.len()
                )));
            }
            let own = nal_units(au).filter(|n| matches!(nal_type(n), NAL_SPS | NAL_PPS)).count();
            if own < 2 {
                self.stats.idrs_repaired += 1;
            }
            for ps in [sps, pps] {
                self.out.extend_from_slice(&[0, 0, 0, 1]);
                self.out.extend_from_slice(ps);
            }
            self.need_idr = false;
        }
        for nal in nal_units(au) {
            // Parameter sets went in front (the cached ones are this unit's own when it had
            // them); delimiters carry nothing over RTP.
            if matches!(nal_type(nal), NAL_SPS | NAL_PPS | NAL_AUD) {
                continue;
            }
            self.out.extend_from_slice(&[0, 0, 0, 1]);
            self.out.extend_from_slice(nal);
        }
        let payloads = self
            .payloader
            .payload(RTP_MTU, &Bytes::copy_from_slice(&self.out))
            .map_err(|e| PassthroughError::Packetize(e.to_string()))?;
        if payloads.is_empty() {
            return Ok(None);
        }
        self.index += 1;
        self.stats.units += 1;
        if has_idr {
            self.stats.keyframes += 1;
        }
        Ok(Some(EncodedUnit { payloads, keyframe: has_idr, capture_unix_us, index: self.index }))
    }
}

/// Splits an Annex-B elementary stream (a file, a test fixture) into access units: a new unit
/// starts at an access unit delimiter, or at SPS/PPS/SEI or a slice whose `first_mb_in_slice` is
/// 0 when the current unit already holds a picture. Cameras deliver one unit per buffer; this is
/// for streams that come as one piece.
pub fn access_units(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut units: Vec<Vec<u8>> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut cur_has_picture = false;
    for nal in nal_units(stream) {
        let t = nal_type(nal);
        // first_mb_in_slice is ue(v) first in the slice header: value 0 is the single bit "1".
        let first_slice = matches!(t, NAL_SLICE | NAL_IDR) && nal.get(1).is_some_and(|b| b & 0x80 != 0);
        let starts = t == NAL_AUD || (cur_has_picture && (matches!(t, NAL_SPS | NAL_PPS | NAL_SEI) || first_slice));
        if starts && !cur.is_empty() {
            units.push(std::mem::take(&mut cur));
            cur_has_picture = false;
        }
        cur.extend_from_slice(&[0, 0, 0, 1]);
        cur.extend_from_slice(nal);
        if matches!(t, NAL_SLICE | NAL_IDR) {
            cur_has_picture = true;
        }
    }
    if !cur.is_empty() {
        units.push(cur);
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc::rtp::codecs::h264::H264Packet;
    use webrtc::rtp::packetizer::Depacketizer;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/h264/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// RTP payloads → Annex-B, as a receiver does (webrtc's depacketizer).
    fn depacketize(units: &[EncodedUnit]) -> Vec<Vec<u8>> {
        let mut d = H264Packet::default();
        units
            .iter()
            .map(|u| {
                let mut au = Vec::new();
                for p in &u.payloads {
                    au.extend_from_slice(&d.depacketize(p).unwrap());
                }
                au
            })
            .collect()
    }

    fn types(au: &[u8]) -> Vec<u8> {
        nal_units(au).map(nal_type).collect()
    }

    #[test]
    fn annex_b_split_handles_3_and_4_byte_start_codes_and_trailing_zeros() {
        let s = [0xff, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 0, 0, 1, 0x65, 0, 0, 3, 1, 0, 0, 1];
        let nals: Vec<&[u8]> = nal_units(&s).collect();
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 0, 0, 3, 1][..]]);
        assert_eq!(nal_units(&[]).count(), 0);
        assert_eq!(nal_units(&[0, 0, 1]).count(), 0);
        assert_eq!(nal_units(&[1, 2, 3, 4]).count(), 0, "no start code: nothing");
    }

    #[test]
    fn sps_profile_level_and_browser_compatibility() {
        let cb = SpsInfo::parse(&[0x67, 0x42, 0xe0, 0x1f, 0xda]).unwrap();
        assert_eq!((cb.profile_level_id().as_str(), cb.profile_name(), cb.level()), ("42e01f", "constrained baseline", "3.1".into()));
        assert!(cb.browser_compatible());
        let b = SpsInfo::parse(&[0x67, 0x42, 0x00, 0x1f]).unwrap();
        assert_eq!(b.profile_name(), "baseline");
        assert!(b.browser_compatible());
        let main = SpsInfo::parse(&[0x27, 0x4d, 0x00, 0x28]).unwrap();
        assert_eq!((main.profile_name(), main.level()), ("main", "4.0".into()));
        assert!(main.browser_compatible());
        let high = SpsInfo::parse(&[0x67, 0x64, 0x00, 0x28]).unwrap();
        assert!(!high.browser_compatible());
        assert_eq!(high.to_string(), "high profile level 4.0 (640028)");
        assert_eq!(SpsInfo::parse(&[0x68, 0x42, 0xe0, 0x1f]), None, "a PPS is not an SPS");
        assert_eq!(SpsInfo::parse(&[0x67, 0x42]), None, "truncated");
    }

    #[test]
    fn fixture_streams_split_into_their_pictures() {
        // x264: AUD before every picture, SPS/PPS/SEI only before the first, IDR every 10, two
        // slices per picture.
        let units = access_units(&fixture("cam-cb-320x240.h264"));
        assert_eq!(units.len(), 20);
        assert_eq!(types(&units[0]), vec![NAL_AUD, NAL_SPS, NAL_PPS, NAL_SEI, NAL_IDR, NAL_IDR]);
        assert_eq!(types(&units[1]), vec![NAL_AUD, NAL_SLICE, NAL_SLICE]);
        assert_eq!(types(&units[10]), vec![NAL_AUD, NAL_IDR, NAL_IDR], "the second IDR comes without SPS/PPS");
        let sps = nal_units(&units[0]).find(|n| nal_type(n) == NAL_SPS).unwrap();
        assert_eq!(SpsInfo::parse(sps).unwrap().profile_level_id(), "42c00d");
    }

    #[test]
    fn real_camera_stream_passes_through_and_decodes_from_every_idr() {
        let units = access_units(&fixture("cam-cb-320x240.h264"));
        let mut pt = H264Passthrough::new();
        let mut out = Vec::new();
        for (i, au) in units.iter().enumerate() {
            let u = pt.push(au, 1_000 + i as u64).unwrap().expect("every picture is sent once started");
            assert!(u.payloads.iter().all(|p| p.len() <= RTP_MTU), "payloads fit the MTU");
            assert_eq!(u.capture_unix_us, 1_000 + i as u64);
            out.push(u);
        }
        let keys: Vec<usize> = out.iter().enumerate().filter(|(_, u)| u.keyframe).map(|(i, _)| i).collect();
        assert_eq!(keys, vec![0, 10]);
        assert_eq!(pt.stats, PassthroughStats { units: 20, keyframes: 2, idrs_repaired: 1, dropped_waiting: 0 });
        // SPS+PPS travel in a STAP-A in front of both IDRs, the repaired one too.
        for k in [0, 10] {
            assert_eq!(out[k].payloads[0][0] & 0x1f, 24, "STAP-A first in unit {k}");
        }
        // What a receiver reassembles decodes with an independent decoder (openh264's) —
        // from the start, and for a viewer who joins at the second IDR.
        let received = depacketize(&out);
        assert_eq!(types(&received[10])[..3], [NAL_SPS, NAL_PPS, NAL_IDR]);
        for start in [0, 10] {
            let mut dec = openh264::decoder::Decoder::new().unwrap();
            let mut pictures = 0;
            for au in &received[start..] {
                use openh264::formats::YUVSource;
                if let Some(yuv) = dec.decode(au).unwrap_or_else(|e| panic!("decode from {start}: {e}")) {
                    assert_eq!(yuv.dimensions(), (320, 240));
                    pictures += 1;
                }
            }
            // openh264 may hold the last picture back until flushed.
            assert!(pictures >= 20 - start - 1, "from {start}: {pictures} pictures");
        }
    }

    #[test]
    fn a_viewer_joining_mid_stream_waits_for_the_next_idr() {
        let units = access_units(&fixture("cam-cb-320x240.h264"));
        let mut pt = H264Passthrough::new();
        // The camera was opened mid-GOP: the parameter sets came (some cameras send them in a
        // buffer of their own), then P-frames, then an IDR.
        let params: Vec<u8> = nal_units(&units[0])
            .filter(|n| matches!(nal_type(n), NAL_SPS | NAL_PPS))
            .flat_map(|n| [&[0, 0, 0, 1][..], n].concat())
            .collect();
        assert!(pt.push(&params, 0).unwrap().is_none(), "parameter sets alone: nothing to send");
        for au in &units[3..10] {
            assert!(pt.waiting_for_idr());
            assert!(pt.push(au, 0).unwrap().is_none(), "P-frames before the first IDR are held back");
        }
        let u = pt.push(&units[10], 0).unwrap().unwrap();
        assert!(u.keyframe && !pt.waiting_for_idr());
        assert_eq!(pt.stats.dropped_waiting, 7);
        assert!(pt.push(&units[11], 0).unwrap().is_some());
        // Frames lost upstream: wait for the next IDR again.
        pt.discontinuity();
        assert!(pt.push(&units[12], 0).unwrap().is_none());
        // A reopened camera: the old parameter sets are forgotten; an IDR without any waits.
        pt.reset();
        assert!(pt.push(&units[10], 0).unwrap().is_none(), "IDR without SPS/PPS known");
        assert!(pt.push(&units[0], 0).unwrap().unwrap().keyframe);
    }

    #[test]
    fn main_profile_passes_high_profile_is_refused_with_a_clear_message() {
        let main = access_units(&fixture("cam-main-320x240.h264"));
        let mut pt = H264Passthrough::new();
        let u = pt.push(&main[0], 0).unwrap().unwrap();
        assert!(u.keyframe);
        assert_eq!(pt.sps_info().unwrap().profile_level_id(), "4d400d");
        let high = access_units(&fixture("cam-high-320x240.h264"));
        let e = H264Passthrough::new().push(&high[0], 0).unwrap_err();
        assert!(matches!(e, PassthroughError::Profile(s) if s.profile_idc == 100));
        let msg = e.to_string();
        assert!(msg.contains("high profile") && msg.contains("64000d") && msg.contains("format"), "{msg}");
    }

    #[test]
    fn garbage_never_panics() {
        let mut pt = H264Passthrough::new();
        let mut x: u32 = 12345;
        for len in [0usize, 1, 3, 4, 5, 17, 300, 5000] {
            let mut buf: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = pt.push(&buf, 0);
            // With start codes and every NAL type sprinkled in.
            for (i, b) in buf.iter_mut().enumerate() {
                if i % 40 == 0 {
                    *b = 0;
                }
            }
            for t in 0..32u8 {
                let au = [&[0, 0, 1, t | 0x60][..], &buf, &[0, 0, 0, 1, 0x67][..]].concat();
                let _ = pt.push(&au, 0);
                let _ = access_units(&au);
            }
        }
    }
}
