//! JPEG snapshots (`GET /api/snapshot.jpg`) from a raw I420 frame, with `jpeg-encoder`
//! (pure Rust, no decode of the H.264 stream). The planes go in as they are (YCbCr, 4:2:0):
//! no RGB round trip. An optional smaller width is made by area-averaging the planes first.

use crate::capture::VideoFrame;
use jpeg_encoder::{Encoder, ImageBuffer, JpegColorType, SamplingFactor};

/// Quality of the snapshots (1–100).
pub const QUALITY: u8 = 85;

#[derive(Debug, thiserror::Error)]
pub enum JpegError {
    #[error("the frame is not a whole I420 picture ({width}x{height}, {len} bytes)")]
    BadFrame { width: u32, height: u32, len: usize },
    #[error("JPEG encoding failed: {0}")]
    Encode(String),
}

/// The output size for a requested width: the frame's own when `width` is `None` or not
/// smaller; otherwise `width` (even, at least 16) and the height that keeps the aspect ratio.
pub fn output_size(frame_w: u32, frame_h: u32, width: Option<u32>) -> (u32, u32) {
    match width {
        Some(w) if w < frame_w => {
            let w = (w.max(16)) & !1;
            let h = ((frame_h as u64 * w as u64 + frame_w as u64 / 2) / frame_w as u64) as u32;
            (w, (h.max(2)) & !1)
        }
        _ => (frame_w, frame_h),
    }
}

struct I420<'a> {
    y: &'a [u8],
    u: &'a [u8],
    v: &'a [u8],
    w: usize,
    h: usize,
}

impl ImageBuffer for I420<'_> {
    fn get_jpeg_color_type(&self) -> JpegColorType {
        JpegColorType::Ycbcr
    }

    fn width(&self) -> u16 {
        self.w as u16
    }

    fn height(&self) -> u16 {
        self.h as u16
    }

    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        let y = y as usize;
        let cw = self.w.div_ceil(2);
        let row = &self.y[y * self.w..(y + 1) * self.w];
        buffers[0].extend_from_slice(row);
        let crow = y / 2;
        let (u, v) = (&self.u[crow * cw..(crow + 1) * cw], &self.v[crow * cw..(crow + 1) * cw]);
        for x in 0..self.w {
            buffers[1].push(u[x / 2]);
            buffers[2].push(v[x / 2]);
        }
    }
}

/// Area-average `src` (sw × sh) into `dst` (dw × dh), dw ≤ sw, dh ≤ sh.
fn scale_plane(src: &[u8], sw: usize, sh: usize, dst: &mut Vec<u8>, dw: usize, dh: usize) {
    dst.clear();
    dst.reserve(dw * dh);
    for dy in 0..dh {
        let (y0, y1) = (dy * sh / dh, ((dy + 1) * sh / dh).max(dy * sh / dh + 1));
        for dx in 0..dw {
            let (x0, x1) = (dx * sw / dw, ((dx + 1) * sw / dw).max(dx * sw / dw + 1));
            let mut sum = 0u32;
            for row in y0..y1 {
                sum += src[row * sw + x0..row * sw + x1].iter().map(|&p| p as u32).sum::<u32>();
            }
            let n = ((y1 - y0) * (x1 - x0)) as u32;
            dst.push(((sum + n / 2) / n) as u8);
        }
    }
}

/// Encodes `frame` as a baseline JPEG, `width` px wide at most (aspect ratio kept).
pub fn encode_i420(frame: &VideoFrame, width: Option<u32>) -> Result<Vec<u8>, JpegError> {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let bad = || JpegError::BadFrame { width: frame.width, height: frame.height, len: frame.data.len() };
    if w < 2 || h < 2 || w % 2 == 1 || h % 2 == 1 || w > 65_535 || h > 65_535 || frame.data.len() < w * h * 3 / 2 {
        return Err(bad());
    }
    let (y, u, v) = frame.planes();
    let (ow, oh) = output_size(frame.width, frame.height, width);
    let (ow, oh) = (ow as usize, oh as usize);
    let mut out = Vec::with_capacity(ow * oh / 4);
    let encoder = {
        let mut e = Encoder::new(&mut out, QUALITY);
        e.set_sampling_factor(SamplingFactor::R_4_2_0);
        e
    };
    let result = if (ow, oh) == (w, h) {
        encoder.encode_image(I420 { y, u, v, w, h })
    } else {
        let (mut sy, mut su, mut sv) = (Vec::new(), Vec::new(), Vec::new());
        scale_plane(y, w, h, &mut sy, ow, oh);
        scale_plane(u, w / 2, h / 2, &mut su, ow / 2, oh / 2);
        scale_plane(v, w / 2, h / 2, &mut sv, ow / 2, oh / 2);
        encoder.encode_image(I420 { y: &sy, u: &su, v: &sv, w: ow, h: oh })
    };
    result.map_err(|e| JpegError::Encode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::testsrc::TestPattern;

    #[test]
    fn sizes_keep_the_aspect_ratio() {
        assert_eq!(output_size(1280, 720, None), (1280, 720));
        assert_eq!(output_size(1280, 720, Some(4000)), (1280, 720));
        assert_eq!(output_size(1280, 720, Some(640)), (640, 360));
        assert_eq!(output_size(1280, 720, Some(321)), (320, 180));
        assert_eq!(output_size(1280, 720, Some(1)), (16, 8));
    }

    #[test]
    fn a_test_pattern_frame_round_trips_through_an_independent_decoder() {
        let p = TestPattern::new(640, 360, 30);
        let mut f = VideoFrame::new(640, 360);
        p.render(&mut f, 3, 1_764_000_000_000_000);
        for (want, size) in [(None, (640u16, 360u16)), (Some(320), (320, 180))] {
            let jpeg = encode_i420(&f, want).unwrap();
            assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
            let mut d = zune_jpeg::JpegDecoder::new(zune_jpeg::zune_core::bytestream::ZCursor::new(&jpeg));
            let pixels = d.decode().expect("zune-jpeg decodes it");
            let info = d.info().unwrap();
            assert_eq!((info.width, info.height), size);
            assert_eq!(pixels.len(), size.0 as usize * size.1 as usize * 3);
        }
        assert!(encode_i420(&VideoFrame { width: 640, height: 360, data: vec![0; 10], capture_unix_us: 0, dmabuf: None }, None).is_err());
    }
}
