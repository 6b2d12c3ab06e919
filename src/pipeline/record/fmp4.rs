//! A small fragmented-MP4 writer (ISO/IEC 14496-12) for H.264 (`avc1` + `avcC`, 14496-15) and
//! Opus (`Opus` + `dOps`, "Encapsulation of Opus in ISO Base Media File Format" v0.8.1).
//!
//! Why our own: the crates seen (mp4, mp4e, muxide, shiguredo_mp4, re_mp4) either do not write
//! fragments with Opus or hide how bytes reach the disk; a recording must be appended one fragment
//! at a time (one write + fdatasync each), so a power cut loses at most the fragment being
//! written. The layout is the plainest one every player takes:
//!
//! ```text
//! ftyp  moov(mvhd, trak video, trak audio, mvex(mehd, trex, trex))     ← `init_segment`
//! moof(mfhd, traf(tfhd, tfdt, trun) per track)  mdat(video samples, audio samples)   ← `fragment`, repeated
//! ```
//!
//! Sample times are decode times; there are no B-frames, so composition = decode (no `ctts`).
//! Video runs at 90 kHz, audio at 48 kHz. Everything here is pure (bytes in, bytes out).

/// Track ids.
pub const VIDEO_TRACK: u32 = 1;
pub const AUDIO_TRACK: u32 = 2;
pub const VIDEO_TIMESCALE: u32 = 90_000;
pub const AUDIO_TIMESCALE: u32 = 48_000;
/// The movie (mvhd/mehd) time scale: milliseconds.
pub const MOVIE_TIMESCALE: u32 = 1000;

/// What the init segment describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracks {
    pub width: u16,
    pub height: u16,
    /// SPS and PPS NAL units (no start code).
    pub sps: Vec<u8>,
    pub pps: Vec<u8>,
    /// Opus: channels of the decoded output (1: the device's mono microphone). `None`: no audio track.
    pub audio_channels: Option<u8>,
}

/// Where `init_segment` put the durations that are only known at the end (patched on a clean
/// close; a file cut short keeps 0 = "unknown, read the fragments").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationOffsets {
    pub mvhd: usize,
    pub mehd: usize,
}

/// One sample of a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// In the track's time scale.
    pub duration: u32,
    pub size: u32,
    /// A sync sample (IDR; every Opus packet).
    pub sync: bool,
}

/// One track's run inside a fragment.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub track_id: u32,
    /// Decode time of the first sample, in the track's time scale.
    pub base_time: u64,
    pub samples: Vec<Sample>,
    /// The samples' bytes, back to back (H.264: 4-byte length prefixed NAL units).
    pub data: Vec<u8>,
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn zeros(&mut self, n: usize) {
        self.0.resize(self.0.len() + n, 0);
    }
    /// Opens a box; returns where its size goes (fixed by `end`).
    fn open(&mut self, kind: &[u8; 4]) -> usize {
        let at = self.0.len();
        self.u32(0);
        self.bytes(kind);
        at
    }
    /// A full box: version and flags after the type.
    fn open_full(&mut self, kind: &[u8; 4], version: u8, flags: u32) -> usize {
        let at = self.open(kind);
        self.u32((version as u32) << 24 | (flags & 0x00ff_ffff));
        at
    }
    fn end(&mut self, at: usize) {
        let size = (self.0.len() - at) as u32;
        self.0[at..at + 4].copy_from_slice(&size.to_be_bytes());
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// `ftyp` + `moov`: written once at the start of a file.
pub fn init_segment(t: &Tracks) -> (Vec<u8>, DurationOffsets) {
    let mut w = W(Vec::with_capacity(1024));
    let ftyp = w.open(b"ftyp");
    w.bytes(b"iso5");
    w.u32(512);
    for brand in [b"iso5", b"iso6", b"mp41", b"avc1"] {
        w.bytes(brand);
    }
    w.end(ftyp);

    let moov = w.open(b"moov");
    let mvhd = w.open_full(b"mvhd", 0, 0);
    w.u32(0); // creation time
    w.u32(0); // modification time
    w.u32(MOVIE_TIMESCALE);
    let mvhd_duration = w.len();
    w.u32(0); // duration: patched on close
    w.u32(0x0001_0000); // rate 1.0
    w.u16(0x0100); // volume 1.0
    w.zeros(10);
    for m in MATRIX {
        w.u32(m);
    }
    w.zeros(24); // pre_defined
    w.u32(if t.audio_channels.is_some() { 3 } else { 2 }); // next track id
    w.end(mvhd);

    trak(&mut w, t, true);
    if t.audio_channels.is_some() {
        trak(&mut w, t, false);
    }

    let mvex = w.open(b"mvex");
    let mehd = w.open_full(b"mehd", 0, 0);
    let mehd_duration = w.len();
    w.u32(0); // fragment_duration: patched on close
    w.end(mehd);
    for id in [Some(VIDEO_TRACK), t.audio_channels.map(|_| AUDIO_TRACK)].into_iter().flatten() {
        let trex = w.open_full(b"trex", 0, 0);
        w.u32(id);
        w.u32(1); // default sample description index
        w.u32(0); // default duration
        w.u32(0); // default size
        w.u32(0); // default flags
        w.end(trex);
    }
    w.end(mvex);
    w.end(moov);
    (w.0, DurationOffsets { mvhd: mvhd_duration, mehd: mehd_duration })
}

fn trak(w: &mut W, t: &Tracks, video: bool) {
    let trak = w.open(b"trak");
    // tkhd flags: enabled | in movie | in preview
    let tkhd = w.open_full(b"tkhd", 0, 0x7);
    w.u32(0);
    w.u32(0);
    w.u32(if video { VIDEO_TRACK } else { AUDIO_TRACK });
    w.u32(0); // reserved
    w.u32(0); // duration (fragments say)
    w.zeros(8);
    w.u16(0); // layer
    w.u16(if video { 0 } else { 1 }); // alternate group
    w.u16(if video { 0 } else { 0x0100 }); // volume
    w.u16(0);
    for m in MATRIX {
        w.u32(m);
    }
    let (width, height) = if video { (t.width as u32, t.height as u32) } else { (0, 0) };
    w.u32(width << 16);
    w.u32(height << 16);
    w.end(tkhd);

    let mdia = w.open(b"mdia");
    let mdhd = w.open_full(b"mdhd", 0, 0);
    w.u32(0);
    w.u32(0);
    w.u32(if video { VIDEO_TIMESCALE } else { AUDIO_TIMESCALE });
    w.u32(0);
    w.u16(0x55c4); // language "und"
    w.u16(0);
    w.end(mdhd);
    let hdlr = w.open_full(b"hdlr", 0, 0);
    w.u32(0);
    w.bytes(if video { b"vide" } else { b"soun" });
    w.zeros(12);
    w.bytes(if video { b"VideoHandler\0" } else { b"SoundHandler\0" });
    w.end(hdlr);

    let minf = w.open(b"minf");
    if video {
        let vmhd = w.open_full(b"vmhd", 0, 1);
        w.zeros(8);
        w.end(vmhd);
    } else {
        let smhd = w.open_full(b"smhd", 0, 0);
        w.zeros(4);
        w.end(smhd);
    }
    let dinf = w.open(b"dinf");
    let dref = w.open_full(b"dref", 0, 0);
    w.u32(1);
    let url = w.open_full(b"url ", 0, 1); // self-contained
    w.end(url);
    w.end(dref);
    w.end(dinf);

    let stbl = w.open(b"stbl");
    let stsd = w.open_full(b"stsd", 0, 0);
    w.u32(1);
    if video {
        avc1(w, t);
    } else {
        opus(w, t.audio_channels.unwrap_or(1));
    }
    w.end(stsd);
    // Empty tables: the samples are in the fragments.
    for kind in [b"stts", b"stsc", b"stco"] {
        let b = w.open_full(kind, 0, 0);
        w.u32(0);
        w.end(b);
    }
    let stsz = w.open_full(b"stsz", 0, 0);
    w.u32(0);
    w.u32(0);
    w.end(stsz);
    w.end(stbl);
    w.end(minf);
    w.end(mdia);
    w.end(trak);
}

fn avc1(w: &mut W, t: &Tracks) {
    let avc1 = w.open(b"avc1");
    w.zeros(6);
    w.u16(1); // data reference index
    w.zeros(16); // pre_defined, reserved
    w.u16(t.width);
    w.u16(t.height);
    w.u32(0x0048_0000); // 72 dpi
    w.u32(0x0048_0000);
    w.u32(0);
    w.u16(1); // frame count
    w.zeros(32); // compressor name
    w.u16(0x0018); // depth
    w.u16(0xffff); // pre_defined = -1
    let avcc = w.open(b"avcC");
    w.u8(1);
    w.u8(t.sps.get(1).copied().unwrap_or(66)); // profile
    w.u8(t.sps.get(2).copied().unwrap_or(0)); // constraint flags
    w.u8(t.sps.get(3).copied().unwrap_or(31)); // level
    w.u8(0xfc | 3); // 4-byte NAL lengths
    w.u8(0xe0 | 1); // one SPS
    w.u16(t.sps.len() as u16);
    w.bytes(&t.sps);
    w.u8(1); // one PPS
    w.u16(t.pps.len() as u16);
    w.bytes(&t.pps);
    w.end(avcc);
    w.end(avc1);
}

fn opus(w: &mut W, channels: u8) {
    let entry = w.open(b"Opus");
    w.zeros(6);
    w.u16(1); // data reference index
    w.zeros(8); // reserved
    w.u16(channels as u16);
    w.u16(16); // sample size
    w.u16(0);
    w.u16(0);
    w.u32(AUDIO_TIMESCALE << 16);
    let dops = w.open(b"dOps");
    w.u8(0); // version
    w.u8(channels);
    // Pre-skip 0: a clip starts in the middle of a running stream, so the encoder's start-up
    // samples are not in it.
    w.u16(0);
    w.u32(48_000); // input sample rate
    w.u16(0); // output gain
    w.u8(0); // channel mapping family 0 (mono/stereo)
    w.end(dops);
    w.end(entry);
}

/// sample_flags: a sync sample depends on no other; any other is a non-sync difference sample.
const SYNC_FLAGS: u32 = 0x0200_0000;
const NON_SYNC_FLAGS: u32 = 0x0101_0000;

/// `moof` + `mdat` for one fragment (sequence numbers start at 1). Runs without samples are left out.
pub fn fragment(sequence: u32, runs: &[Run]) -> Vec<u8> {
    let runs: Vec<&Run> = runs.iter().filter(|r| !r.samples.is_empty()).collect();
    let data_len: usize = runs.iter().map(|r| r.data.len()).sum();
    let mut w = W(Vec::with_capacity(256 + runs.iter().map(|r| r.samples.len() * 12).sum::<usize>() + data_len));
    let moof = w.open(b"moof");
    let mfhd = w.open_full(b"mfhd", 0, 0);
    w.u32(sequence);
    w.end(mfhd);
    let mut offsets = Vec::with_capacity(runs.len());
    for r in &runs {
        let traf = w.open(b"traf");
        // default-base-is-moof: data offsets count from the start of this moof.
        let tfhd = w.open_full(b"tfhd", 0, 0x02_0000);
        w.u32(r.track_id);
        w.end(tfhd);
        let tfdt = w.open_full(b"tfdt", 1, 0);
        w.u64(r.base_time);
        w.end(tfdt);
        // data offset | duration | size | flags per sample
        let trun = w.open_full(b"trun", 0, 0x000001 | 0x000100 | 0x000200 | 0x000400);
        w.u32(r.samples.len() as u32);
        offsets.push(w.len());
        w.u32(0); // data offset, fixed below
        for s in &r.samples {
            w.u32(s.duration);
            w.u32(s.size);
            w.u32(if s.sync { SYNC_FLAGS } else { NON_SYNC_FLAGS });
        }
        w.end(trun);
        w.end(traf);
    }
    w.end(moof);
    let moof_len = w.len() - moof;
    let mut at = moof_len + 8; // past the mdat header
    for (r, off) in runs.iter().zip(offsets) {
        w.0[off..off + 4].copy_from_slice(&(at as u32).to_be_bytes());
        at += r.data.len();
    }
    w.u32((8 + data_len) as u32);
    w.bytes(b"mdat");
    for r in &runs {
        w.bytes(&r.data);
    }
    w.0
}

/// A top-level box header at `at`: (type, size). `None` if fewer than 8 bytes remain or the size
/// is not a plain 32-bit one that fits.
pub fn box_at(data: &[u8], at: usize) -> Option<([u8; 4], usize)> {
    let h = data.get(at..at + 8)?;
    let size = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let kind = [h[4], h[5], h[6], h[7]];
    (size >= 8).then_some((kind, size))
}

/// How many leading bytes of a recording are whole, playable boxes: a file cut by a power loss
/// or a kill may end inside a fragment, or with a `moof` whose `mdat` never came. `header`: the
/// file's first bytes up to `len`, read through `read_at`.
pub fn complete_prefix(len: u64, mut read_at: impl FnMut(u64, &mut [u8]) -> bool) -> u64 {
    let mut at = 0u64;
    let mut good = 0u64;
    let mut pending_moof = false;
    while at + 8 <= len {
        let mut h = [0u8; 8];
        if !read_at(at, &mut h) {
            break;
        }
        let Some((kind, size)) = box_at(&h, 0) else { break };
        if at + size as u64 > len {
            break;
        }
        at += size as u64;
        match &kind {
            b"moof" => pending_moof = true,
            b"mdat" => {
                pending_moof = false;
                good = at;
            }
            _ => {
                if !pending_moof {
                    good = at;
                }
            }
        }
    }
    good
}

/// Annex-B-free NAL units → an MP4 sample (4-byte big-endian length before each).
pub fn length_prefixed(nals: &[&[u8]], out: &mut Vec<u8>) {
    for n in nals {
        out.extend_from_slice(&(n.len() as u32).to_be_bytes());
        out.extend_from_slice(n);
    }
}

/// RFC 6184 payloads of one access unit (single NAL units, STAP-A, FU-A: what
/// `codec::h264`'s packetizer makes) → its NAL units. Broken fragments are dropped.
pub fn depacketize(payloads: &[bytes::Bytes]) -> Vec<Vec<u8>> {
    let mut nals = Vec::new();
    let mut fu: Option<Vec<u8>> = None;
    for p in payloads {
        let Some(&first) = p.first() else { continue };
        match first & 0x1f {
            1..=23 => nals.push(p.to_vec()),
            24 => {
                let mut i = 1;
                while i + 2 <= p.len() {
                    let n = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                    i += 2;
                    if n == 0 || i + n > p.len() {
                        break;
                    }
                    nals.push(p[i..i + n].to_vec());
                    i += n;
                }
            }
            28 if p.len() >= 2 => {
                let (start, end) = (p[1] & 0x80 != 0, p[1] & 0x40 != 0);
                if start {
                    let mut n = vec![(first & 0xe0) | (p[1] & 0x1f)];
                    n.extend_from_slice(&p[2..]);
                    fu = Some(n);
                } else if let Some(n) = fu.as_mut() {
                    n.extend_from_slice(&p[2..]);
                }
                if end && let Some(n) = fu.take() {
                    nals.push(n);
                }
            }
            _ => {}
        }
    }
    nals
}

/// Width and height from an SPS (H.264 7.3.2.1.1), cropping applied. `None` for what this
/// reader does not follow (scaling matrices); the caller then uses the configured size.
pub fn sps_dimensions(sps: &[u8]) -> Option<(u16, u16)> {
    // Remove emulation prevention bytes (00 00 03 → 00 00).
    let mut rbsp = Vec::with_capacity(sps.len());
    let mut zeros = 0;
    for &b in sps.iter().skip(1) {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut r = Bits { data: &rbsp, pos: 0 };
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // sps id
    let mut chroma_format = 1;
    if matches!(profile, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma_format = r.ue()?;
        if chroma_format == 3 {
            r.bits(1)?;
        }
        r.ue()?;
        r.ue()?;
        r.bits(1)?;
        if r.bits(1)? == 1 {
            return None; // scaling matrices: not followed here
        }
    }
    r.ue()?; // log2_max_frame_num - 4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bits(1)?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()? {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max refs
    r.bits(1)?;
    let w_mbs = r.ue()? + 1;
    let h_units = r.ue()? + 1;
    let frame_mbs_only = r.bits(1)?;
    if frame_mbs_only == 0 {
        r.bits(1)?;
    }
    r.bits(1)?;
    let (mut cl, mut cr, mut ct, mut cb) = (0, 0, 0, 0);
    if r.bits(1)? == 1 {
        cl = r.ue()?;
        cr = r.ue()?;
        ct = r.ue()?;
        cb = r.ue()?;
    }
    let (cx, cy) = match chroma_format {
        1 => (2, 2 * (2 - frame_mbs_only)),
        2 => (2, 2 - frame_mbs_only),
        _ => (1, 2 - frame_mbs_only),
    };
    let w = (w_mbs * 16).checked_sub(cx * (cl + cr))?;
    let h = ((2 - frame_mbs_only) * h_units * 16).checked_sub(cy * (ct + cb))?;
    Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let b = self.data.get(self.pos / 8)?;
        let v = (b >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(v as u32)
    }
    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0;
        for _ in 0..n {
            v = v << 1 | self.bit()?;
        }
        Some(v)
    }
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }
    fn se(&mut self) -> Option<i32> {
        let v = self.ue()?;
        Some(if v % 2 == 1 { v.div_ceil(2) as i32 } else { -((v / 2) as i32) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Top-level or child boxes of `data`: (type, offset, size).
    fn boxes(data: &[u8]) -> Vec<(String, usize, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((kind, size)) = box_at(data, at) {
            out.push((String::from_utf8_lossy(&kind).into_owned(), at, size));
            at += size;
        }
        assert_eq!(at, data.len(), "boxes tile the data exactly");
        out
    }

    fn child<'a>(data: &'a [u8], path: &[&str]) -> &'a [u8] {
        let mut cur = data;
        for name in path {
            let b = boxes(cur);
            let (_, at, size) = b.iter().find(|(k, _, _)| k == name).unwrap_or_else(|| panic!("no {name} in {b:?}"));
            // Containers start after the 8-byte header (stsd: + 8 for version/flags and count).
            let skip = match *name {
                "stsd" => 16,
                "avc1" => 8 + 78,
                "Opus" => 8 + 28,
                _ => 8,
            };
            cur = &cur[at + skip..at + size];
        }
        cur
    }

    /// The SPS and PPS openh264 makes for a 640x360 picture (360 is not a multiple of 16: cropped).
    fn real_parameter_sets() -> (Vec<u8>, Vec<u8>) {
        use crate::capture::testsrc::TestPattern;
        use crate::capture::VideoFrame;
        use crate::codec::h264::{H264Encoder, H264Params};
        let mut enc = H264Encoder::new(H264Params { width: 640, height: 360, fps: 30, bitrate_bps: 500_000, keyframe_interval_frames: 60 }).unwrap();
        let mut f = VideoFrame::new(640, 360);
        TestPattern::new(640, 360, 30).render(&mut f, 0, 0);
        let unit = enc.encode(&f, true).unwrap().expect("a frame");
        let nals = depacketize(&unit.payloads);
        let find = |t: u8| nals.iter().find(|n| n[0] & 0x1f == t).cloned().expect("parameter set");
        (find(7), find(8))
    }

    fn tracks() -> Tracks {
        let (sps, pps) = real_parameter_sets();
        Tracks { width: 640, height: 360, sps, pps, audio_channels: Some(1) }
    }

    #[test]
    fn sps_gives_the_picture_size_with_cropping() {
        let (sps, _) = real_parameter_sets();
        assert_eq!(sps_dimensions(&sps), Some((640, 360)));
        assert_eq!(sps_dimensions(&[0x67]), None, "a truncated SPS is refused, no panic");
    }

    #[test]
    fn init_segment_has_both_tracks_with_codec_config() {
        let (init, offs) = init_segment(&tracks());
        let top: Vec<String> = boxes(&init).into_iter().map(|b| b.0).collect();
        assert_eq!(top, ["ftyp", "moov"]);
        let moov = child(&init, &["moov"]);
        let kinds: Vec<String> = boxes(moov).into_iter().map(|b| b.0).collect();
        assert_eq!(kinds, ["mvhd", "trak", "trak", "mvex"]);
        let t = tracks();
        let avcc = child(&init, &["moov", "trak", "mdia", "minf", "stbl", "stsd", "avc1"]);
        let (kind, size) = box_at(avcc, 0).unwrap();
        assert_eq!(&kind, b"avcC");
        assert_eq!(size, 8 + 6 + 2 + t.sps.len() + 1 + 2 + t.pps.len());
        assert_eq!(&avcc[8..12], &[1, t.sps[1], t.sps[2], t.sps[3]]);
        assert_eq!(&avcc[16..16 + t.sps.len()], &t.sps[..]);
        // The second trak is the Opus one, with a dOps of 11 bytes.
        let moov_boxes = boxes(moov);
        let (_, at, size) = moov_boxes[2].clone();
        let audio = &moov[at..at + size];
        let dops = child(audio, &["trak", "mdia", "minf", "stbl", "stsd", "Opus"]);
        assert_eq!(box_at(dops, 0), Some((*b"dOps", 8 + 11)));
        assert_eq!(&dops[8..12], &[0, 1, 0, 0], "version 0, mono, pre-skip 0");
        assert_eq!(u32::from_be_bytes(dops[12..16].try_into().unwrap()), 48_000);
        // The durations to patch are the zeros after mvhd's time scale and in mehd.
        assert_eq!(u32::from_be_bytes(init[offs.mvhd - 4..offs.mvhd].try_into().unwrap()), MOVIE_TIMESCALE);
        assert_eq!(&init[offs.mehd - 8..offs.mehd - 4], b"mehd");
    }

    #[test]
    fn fragment_offsets_point_at_each_tracks_samples() {
        let v = Run {
            track_id: VIDEO_TRACK,
            base_time: 9000,
            samples: vec![Sample { duration: 3000, size: 5, sync: true }, Sample { duration: 3003, size: 3, sync: false }],
            data: b"VVVVVvvv".to_vec(),
        };
        let a = Run { track_id: AUDIO_TRACK, base_time: 4800, samples: vec![Sample { duration: 960, size: 2, sync: true }], data: b"AA".to_vec() };
        let empty = Run { track_id: 7, ..Default::default() };
        let f = fragment(3, &[v, a, empty]);
        let top = boxes(&f);
        assert_eq!(top.iter().map(|b| b.0.as_str()).collect::<Vec<_>>(), ["moof", "mdat"]);
        let moof = child(&f, &["moof"]);
        assert_eq!(boxes(moof).iter().map(|b| b.0.as_str()).collect::<Vec<_>>(), ["mfhd", "traf", "traf"], "the empty run is left out");
        assert_eq!(&moof[12..16], &3u32.to_be_bytes());
        let trafs = boxes(moof);
        for (i, (expect, bytes)) in [(b"VVVVVvvv".as_slice(), 2usize), (b"AA".as_slice(), 1)].into_iter().enumerate() {
            let (_, at, size) = trafs[1 + i].clone();
            let traf = &moof[at + 8..at + size];
            let tfdt = child(traf, &[]);
            let b = boxes(tfdt);
            assert_eq!(b.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["tfhd", "tfdt", "trun"]);
            let trun = &traf[b[2].1..b[2].1 + b[2].2];
            assert_eq!(u32::from_be_bytes(trun[12..16].try_into().unwrap()), bytes as u32);
            let off = u32::from_be_bytes(trun[16..20].try_into().unwrap()) as usize;
            assert_eq!(&f[off..off + expect.len()], expect, "the data offset (from the moof) finds the samples");
            let tfdt_time = u64::from_be_bytes(traf[b[1].1 + 12..b[1].1 + 20].try_into().unwrap());
            assert_eq!(tfdt_time, if i == 0 { 9000 } else { 4800 });
        }
        // First video sample: duration 3000, size 5, sync flags.
        let (_, at, _) = trafs[1].clone();
        let traf = &moof[at + 8..];
        let trun_at = boxes(&traf[..trafs[1].2 - 8])[2].1;
        let s0 = &traf[trun_at + 20..trun_at + 32];
        assert_eq!(s0, [0, 0, 0x0b, 0xb8, 0, 0, 0, 5, 2, 0, 0, 0]);
        let s1 = &traf[trun_at + 32..trun_at + 44];
        assert_eq!(&s1[8..], &[1, 1, 0, 0], "a P frame is a non-sync sample");
    }

    #[test]
    fn a_cut_file_keeps_whole_fragments_only() {
        let (mut file, _) = init_segment(&tracks());
        let init_len = file.len() as u64;
        let run = |t| Run { track_id: VIDEO_TRACK, base_time: t, samples: vec![Sample { duration: 3000, size: 4, sync: true }], data: vec![9; 4] };
        file.extend(fragment(1, &[run(0)]));
        let one = file.len() as u64;
        file.extend(fragment(2, &[run(3000)]));
        let two = file.len() as u64;
        let read = |f: &Vec<u8>| {
            let f = f.clone();
            move |at: u64, buf: &mut [u8]| {
                let at = at as usize;
                if at + buf.len() > f.len() {
                    return false;
                }
                buf.copy_from_slice(&f[at..at + buf.len()]);
                true
            }
        };
        assert_eq!(complete_prefix(two, read(&file)), two);
        for cut in [two - 1, two - 10, one + 9, one + 3] {
            assert_eq!(complete_prefix(cut, read(&file)), one, "cut at {cut}");
        }
        assert_eq!(complete_prefix(one - 2, read(&file)), init_len);
        // A moof that lost its mdat entirely.
        let moof_only = one + box_at(&file, one as usize).unwrap().1 as u64;
        assert_eq!(complete_prefix(moof_only, read(&file)), one);
    }

    #[test]
    fn depacketizes_single_stap_a_and_fu_a() {
        use bytes::Bytes;
        let stap = Bytes::from(vec![24, 0, 2, 0x67, 1, 0, 1, 0x68]);
        let fu1 = Bytes::from(vec![0x7c, 0x85, 1, 2]);
        let fu2 = Bytes::from(vec![0x7c, 0x45, 3]);
        let single = Bytes::from(vec![0x41, 7, 7]);
        let nals = depacketize(&[stap, fu1, fu2, single]);
        assert_eq!(nals, vec![vec![0x67, 1], vec![0x68], vec![0x65, 1, 2, 3], vec![0x41, 7, 7]]);
        // A lost middle: the FU-A without its start is dropped, no panic on short payloads.
        let nals = depacketize(&[Bytes::from(vec![0x7c, 0x45, 3]), Bytes::from(vec![24, 0, 9, 1]), Bytes::from(vec![28])]);
        assert!(nals.is_empty());
    }
}
