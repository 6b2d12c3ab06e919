//! vicodec's FWHT ("fast Walsh-Hadamard transform") frames: just enough to tell keyframes from
//! P-frames and to turn a bitrate into a quantizer. FWHT is only the stand-in codec that lets the
//! VM test drive the M2M code path on a kernel without an H.264 encoder.

/// `FWHT_MAGIC1`, `FWHT_MAGIC2` of `struct fwht_cframe_hdr` (drivers/media/test-drivers/vicodec).
const MAGIC1: u32 = 0x4f4f_4f4f;
const MAGIC2: u32 = 0xffff_ffff;
/// `V4L2_FWHT_FL_I_FRAME` (include/uapi/linux/v4l2-controls.h).
pub const FL_I_FRAME: u32 = 1 << 10;
pub const HEADER_LEN: usize = 44;

/// The header in front of every FWHT frame (big-endian fields after the two magics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub width: u32,
    pub height: u32,
    pub flags: u32,
    /// Compressed payload bytes after the header.
    pub size: u32,
}

impl Header {
    pub fn parse(b: &[u8]) -> Option<Header> {
        let word = |i: usize| -> Option<[u8; 4]> { b.get(i * 4..i * 4 + 4)?.try_into().ok() };
        if u32::from_ne_bytes(word(0)?) != MAGIC1 || u32::from_ne_bytes(word(1)?) != MAGIC2 {
            return None;
        }
        let be = |i: usize| word(i).map(u32::from_be_bytes);
        Some(Header { version: be(2)?, width: be(3)?, height: be(4)?, flags: be(5)?, size: be(10)? })
    }

    pub fn is_keyframe(&self) -> bool {
        self.flags & FL_I_FRAME != 0
    }
}

/// FWHT has no rate control; its quantizer (1..31, a dead zone on the coefficients) is what
/// sets the size. Bits per pixel of the target → quantizer: 1 bit/pixel or more → 1 (finest),
/// each halving of the budget → +6, at most 31.
pub fn qp_for(bitrate_bps: u32, width: u32, height: u32, fps: u32) -> i32 {
    let pixels = (width as f64 * height as f64 * fps.max(1) as f64).max(1.0);
    let bpp = (bitrate_bps as f64 / pixels).max(1e-6);
    let qp = 1.0 - 6.0 * bpp.log2();
    (qp.round() as i32).clamp(1, 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32) -> Vec<u8> {
        let mut b = vec![];
        b.extend_from_slice(&MAGIC1.to_ne_bytes());
        b.extend_from_slice(&MAGIC2.to_ne_bytes());
        for v in [3u32, 320, 240, flags, 1, 1, 1, 1, 123] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b
    }

    #[test]
    fn header_tells_keyframes_from_p_frames() {
        let h = Header::parse(&header(FL_I_FRAME | 0x3)).unwrap();
        assert!(h.is_keyframe());
        assert_eq!((h.width, h.height, h.size, h.version), (320, 240, 123, 3));
        assert!(!Header::parse(&header(0x3)).unwrap().is_keyframe());
        assert_eq!(header(0).len(), HEADER_LEN);
        assert!(Header::parse(&header(0)[..20]).is_none(), "short");
        assert!(Header::parse(&[0u8; 64]).is_none(), "no magic");
    }

    #[test]
    fn lower_bitrate_means_coarser_quantizer() {
        let hi = qp_for(20_000_000, 640, 480, 10);
        let mid = qp_for(1_000_000, 640, 480, 10);
        let lo = qp_for(100_000, 640, 480, 10);
        assert!(hi < mid && mid < lo, "{hi} {mid} {lo}");
        assert_eq!(qp_for(u32::MAX, 2, 2, 1), 1);
        assert_eq!(qp_for(1, 3840, 2160, 60), 31);
        assert_eq!(qp_for(0, 0, 0, 0), 31, "no panic on zeros");
    }
}
