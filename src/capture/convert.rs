//! Camera pixel formats → I420 (the one format the encoder takes), written into a `VideoFrame`
//! the caller keeps and reuses: the raw conversions allocate nothing per frame.
//!
//! Raw formats honour the driver's line stride (`bytesperline`). Odd widths or heights lose
//! their last column / row (4:2:0 needs even sizes). MJPEG is decoded by `zune-jpeg` into an
//! interleaved full-range YCbCr scratch buffer (kept between frames), then subsampled to 4:2:0
//! and mapped to the limited ("TV") range the H.264 stream signals. MJPEG from webcams often
//! leaves out its Huffman tables (the AVI1 convention); the standard tables are inserted then.

use super::constraints::FourCc;
use super::VideoFrame;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// Converts one camera format at one size.
pub struct Converter {
    kind: Kind,
    width: usize,
    height: usize,
    stride: usize,
    /// MJPEG only: decoded YCbCr, and a copy of the frame with Huffman tables inserted.
    scratch: Vec<u8>,
    patched: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// YU12 (I420) or YV12 (V before U).
    Planar420 { swap_uv: bool },
    /// NV12 or NV21 (VU order).
    SemiPlanar420 { swap_uv: bool },
    /// Packed 4:2:2: byte offsets of Y0, U, Y1, V in each 4-byte group.
    Packed422 { y0: usize, u: usize, y1: usize, v: usize },
    Mjpeg,
    /// Packed 24-bit RGB (RGB3: R, G, B bytes; BGR3: B, G, R): what libcamera's vimc pipeline
    /// and its software ISP paths give. BT.601, limited range, chroma of each 2x2 block averaged.
    Rgb24 { r: usize, b: usize },
}

/// Formats this module turns into I420.
pub const SUPPORTED: [&[u8; 4]; 12] =
    [b"YU12", b"YV12", b"NV12", b"NV21", b"YUYV", b"UYVY", b"YVYU", b"VYUY", b"MJPG", b"JPEG", b"RGB3", b"BGR3"];

impl Converter {
    /// `bytesperline` as the driver reported it (0 = tightly packed).
    pub fn new(fourcc: FourCc, width: u32, height: u32, bytesperline: u32) -> Result<Self, String> {
        let kind = match &fourcc.0 {
            b"YU12" => Kind::Planar420 { swap_uv: false },
            b"YV12" => Kind::Planar420 { swap_uv: true },
            b"NV12" => Kind::SemiPlanar420 { swap_uv: false },
            b"NV21" => Kind::SemiPlanar420 { swap_uv: true },
            b"YUYV" => Kind::Packed422 { y0: 0, u: 1, y1: 2, v: 3 },
            b"UYVY" => Kind::Packed422 { u: 0, y0: 1, v: 2, y1: 3 },
            b"YVYU" => Kind::Packed422 { y0: 0, v: 1, y1: 2, u: 3 },
            b"VYUY" => Kind::Packed422 { v: 0, y0: 1, u: 2, y1: 3 },
            b"MJPG" | b"JPEG" => Kind::Mjpeg,
            b"RGB3" => Kind::Rgb24 { r: 0, b: 2 },
            b"BGR3" => Kind::Rgb24 { r: 2, b: 0 },
            _ => return Err(format!("pixel format {fourcc} cannot be converted to I420")),
        };
        if width < 2 || height < 2 {
            return Err(format!("frame size {width}x{height} is too small"));
        }
        let min_stride = match kind {
            Kind::Packed422 { .. } => width as usize * 2,
            Kind::Rgb24 { .. } => width as usize * 3,
            _ => width as usize,
        };
        let stride = if bytesperline == 0 { min_stride } else { bytesperline as usize };
        if stride < min_stride {
            return Err(format!("line stride {stride} is shorter than a {fourcc} line of {width} pixels"));
        }
        Ok(Self { kind, width: width as usize, height: height as usize, stride, scratch: Vec::new(), patched: Vec::new() })
    }

    /// The I420 size frames come out at (MJPEG: the negotiated size; a JPEG of another size
    /// is delivered at its own size).
    pub fn output_size(&self) -> (u32, u32) {
        ((self.width & !1) as u32, (self.height & !1) as u32)
    }

    /// Bytes a raw frame must have at least (MJPEG: 0, frames vary).
    pub fn min_frame_bytes(&self) -> usize {
        let (s, h) = (self.stride, self.height);
        match self.kind {
            Kind::Planar420 { .. } => s * h + 2 * (s / 2) * (h / 2),
            Kind::SemiPlanar420 { .. } => s * h + s * (h / 2),
            Kind::Packed422 { .. } | Kind::Rgb24 { .. } => s * h,
            Kind::Mjpeg => 0,
        }
    }

    /// Converts `src` (one dequeued buffer, `bytesused` long) into `dst`, resizing `dst` to the
    /// even-cropped size. `dst.capture_unix_us` is left to the caller.
    pub fn convert(&mut self, src: &[u8], dst: &mut VideoFrame) -> Result<(), String> {
        if self.kind == Kind::Mjpeg {
            return self.mjpeg(src, dst);
        }
        if src.len() < self.min_frame_bytes() {
            return Err(format!("short frame: {} bytes, expected {}", src.len(), self.min_frame_bytes()));
        }
        let (w, h) = (self.width & !1, self.height & !1);
        dst.resize(w as u32, h as u32);
        let (s, full_h) = (self.stride, self.height);
        let (y, u, v) = dst.planes_mut();
        match self.kind {
            Kind::Planar420 { swap_uv } => {
                let cs = s / 2;
                let (p0, p1) = (s * full_h, s * full_h + cs * (full_h / 2));
                let (su, sv) = if swap_uv { (p1, p0) } else { (p0, p1) };
                copy_plane(&src[..], s, y, w, h);
                copy_plane(&src[su..], cs, u, w / 2, h / 2);
                copy_plane(&src[sv..], cs, v, w / 2, h / 2);
            }
            Kind::SemiPlanar420 { swap_uv } => {
                copy_plane(src, s, y, w, h);
                let uv = &src[s * full_h..];
                let (cu, cv) = if swap_uv { (1, 0) } else { (0, 1) };
                let cw = w / 2;
                for row in 0..h / 2 {
                    let line = &uv[row * s..row * s + w];
                    let (urow, vrow) = (&mut u[row * cw..row * cw + cw], &mut v[row * cw..row * cw + cw]);
                    for (x, pair) in line.chunks_exact(2).enumerate() {
                        urow[x] = pair[cu];
                        vrow[x] = pair[cv];
                    }
                }
            }
            Kind::Packed422 { y0, u: ou, y1, v: ov } => {
                let cw = w / 2;
                for row in (0..h).step_by(2) {
                    let a = &src[row * s..row * s + w * 2];
                    let b = &src[(row + 1) * s..(row + 1) * s + w * 2];
                    let (ya, yb) = y[row * w..(row + 2) * w].split_at_mut(w);
                    let (urow, vrow) = (&mut u[row / 2 * cw..row / 2 * cw + cw], &mut v[row / 2 * cw..row / 2 * cw + cw]);
                    for (x, (ga, gb)) in a.chunks_exact(4).zip(b.chunks_exact(4)).enumerate() {
                        ya[2 * x] = ga[y0];
                        ya[2 * x + 1] = ga[y1];
                        yb[2 * x] = gb[y0];
                        yb[2 * x + 1] = gb[y1];
                        // 4:2:2 → 4:2:0: average the two lines' chroma, rounding.
                        urow[x] = ((ga[ou] as u16 + gb[ou] as u16 + 1) >> 1) as u8;
                        vrow[x] = ((ga[ov] as u16 + gb[ov] as u16 + 1) >> 1) as u8;
                    }
                }
            }
            Kind::Rgb24 { r, b } => {
                let cw = w / 2;
                let luma = |px: &[u8]| -> u8 {
                    let (rr, gg, bb) = (px[r] as i32, px[1] as i32, px[b] as i32);
                    (((66 * rr + 129 * gg + 25 * bb + 128) >> 8) + 16) as u8
                };
                for row in (0..h).step_by(2) {
                    let a = &src[row * s..row * s + w * 3];
                    let bl = &src[(row + 1) * s..(row + 1) * s + w * 3];
                    let (ya, yb) = y[row * w..(row + 2) * w].split_at_mut(w);
                    let (urow, vrow) = (&mut u[row / 2 * cw..row / 2 * cw + cw], &mut v[row / 2 * cw..row / 2 * cw + cw]);
                    for x in 0..cw {
                        let (p, q) = (6 * x, 6 * x + 3);
                        ya[2 * x] = luma(&a[p..p + 3]);
                        ya[2 * x + 1] = luma(&a[q..q + 3]);
                        yb[2 * x] = luma(&bl[p..p + 3]);
                        yb[2 * x + 1] = luma(&bl[q..q + 3]);
                        let sum = |c: usize| a[p + c] as i32 + a[q + c] as i32 + bl[p + c] as i32 + bl[q + c] as i32;
                        let (rr, gg, bb) = ((sum(r) + 2) >> 2, (sum(1) + 2) >> 2, (sum(b) + 2) >> 2);
                        urow[x] = (((-38 * rr - 74 * gg + 112 * bb + 128) >> 8) + 128) as u8;
                        vrow[x] = (((112 * rr - 94 * gg - 18 * bb + 128) >> 8) + 128) as u8;
                    }
                }
            }
            Kind::Mjpeg => unreachable!(),
        }
        Ok(())
    }

    fn mjpeg(&mut self, src: &[u8], dst: &mut VideoFrame) -> Result<(), String> {
        let data: &[u8] = match missing_huffman_tables(src)? {
            None => src,
            Some(sos) => {
                self.patched.clear();
                self.patched.extend_from_slice(&src[..sos]);
                self.patched.extend_from_slice(&STD_DHT);
                self.patched.extend_from_slice(&src[sos..]);
                &self.patched
            }
        };
        let opts = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::YCbCr)
            .set_max_width(8192)
            .set_max_height(8192);
        let mut dec = JpegDecoder::new_with_options(ZCursor::new(data), opts);
        dec.decode_headers().map_err(|e| format!("MJPEG frame: {e}"))?;
        let (jw, jh) = dec.dimensions().ok_or("MJPEG frame: no dimensions")?;
        let (jw, jh) = (jw, jh);
        if dec.output_colorspace() != Some(ColorSpace::YCbCr) {
            return Err(format!("MJPEG frame: unsupported colour space {:?}", dec.input_colorspace()));
        }
        let need = dec.output_buffer_size().ok_or("MJPEG frame: size overflow")?;
        self.scratch.resize(need, 0);
        dec.decode_into(&mut self.scratch).map_err(|e| format!("MJPEG frame: {e}"))?;
        if jw < 2 || jh < 2 {
            return Err(format!("MJPEG frame: {jw}x{jh} is too small"));
        }
        let (w, h) = (jw & !1, jh & !1);
        dst.resize(w as u32, h as u32);
        let (y, u, v) = dst.planes_mut();
        let ycc = &self.scratch;
        let cw = w / 2;
        for row in (0..h).step_by(2) {
            let a = &ycc[row * jw * 3..(row * jw + w) * 3];
            let b = &ycc[(row + 1) * jw * 3..((row + 1) * jw + w) * 3];
            let (ya, yb) = y[row * w..(row + 2) * w].split_at_mut(w);
            let (urow, vrow) = (&mut u[row / 2 * cw..row / 2 * cw + cw], &mut v[row / 2 * cw..row / 2 * cw + cw]);
            for x in 0..cw {
                let (p, q) = (6 * x, 6 * x + 3);
                ya[2 * x] = LUMA_TV[a[p] as usize];
                ya[2 * x + 1] = LUMA_TV[a[q] as usize];
                yb[2 * x] = LUMA_TV[b[p] as usize];
                yb[2 * x + 1] = LUMA_TV[b[q] as usize];
                let cb = (a[p + 1] as u16 + a[q + 1] as u16 + b[p + 1] as u16 + b[q + 1] as u16 + 2) >> 2;
                let cr = (a[p + 2] as u16 + a[q + 2] as u16 + b[p + 2] as u16 + b[q + 2] as u16 + 2) >> 2;
                urow[x] = CHROMA_TV[cb as usize];
                vrow[x] = CHROMA_TV[cr as usize];
            }
        }
        Ok(())
    }
}

/// `h` rows of `w` bytes from a plane with `stride` bytes per row into a packed plane.
pub fn copy_plane(src: &[u8], stride: usize, dst: &mut [u8], w: usize, h: usize) {
    for row in 0..h {
        dst[row * w..row * w + w].copy_from_slice(&src[row * stride..row * stride + w]);
    }
}

/// Full range (JPEG) → limited range (BT.601 "TV"), luma 0..255 → 16..235.
static LUMA_TV: [u8; 256] = range_lut(219);
/// Chroma 0..255 → 16..240 around 128.
static CHROMA_TV: [u8; 256] = range_lut(224);

const fn range_lut(span: u32) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        // round(16 + i * span / 255); chroma: 128 + (i-128)*224/255 is the same map.
        t[i] = (16 + (i as u32 * span * 2 + 255) / 510) as u8;
        i += 1;
    }
    t
}

/// `Ok(Some(offset of SOS))` when the JPEG has no DHT before its first scan; `Ok(None)` when it
/// has tables. Errors on something that is not a JPEG at all.
fn missing_huffman_tables(jpeg: &[u8]) -> Result<Option<usize>, String> {
    if jpeg.len() < 4 || jpeg[0] != 0xFF || jpeg[1] != 0xD8 {
        return Err("MJPEG frame: no JPEG start marker (truncated or not a JPEG)".into());
    }
    let mut i = 2;
    while i + 4 <= jpeg.len() {
        if jpeg[i] != 0xFF {
            return Err(format!("MJPEG frame: garbage at byte {i}"));
        }
        let marker = jpeg[i + 1];
        match marker {
            0xFF => {
                i += 1; // fill byte
                continue;
            }
            0xC4 => return Ok(None),
            0xDA => return Ok(Some(i)),
            0xD0..=0xD7 | 0x01 => {
                i += 2;
                continue;
            }
            _ => {}
        }
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        i += 2 + len;
    }
    Err("MJPEG frame: no image data (truncated)".into())
}

/// The DHT segment with the JPEG standard's example Huffman tables (ITU T.81, Annex K.3),
/// which MJPEG ("AVI1") streams imply when they leave the tables out.
static STD_DHT: [u8; 4 + 4 * 17 + 12 + 12 + 162 + 162] = std_dht();

const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const DC_VALS: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
const AC_LUMA_VALS: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
    0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
    0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];
const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
const AC_CHROMA_VALS: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
    0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26,
    0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
    0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
    0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
    0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];

const fn std_dht() -> [u8; 4 + 4 * 17 + 12 + 12 + 162 + 162] {
    let mut out = [0u8; 4 + 4 * 17 + 12 + 12 + 162 + 162];
    let len = out.len() - 2;
    out[0] = 0xFF;
    out[1] = 0xC4;
    out[2] = (len >> 8) as u8;
    out[3] = len as u8;
    let mut p = 4;
    // (class << 4 | id, bits, values): DC luma, AC luma, DC chroma, AC chroma.
    let tables: [(u8, &[u8; 16], &[u8]); 4] = [
        (0x00, &DC_LUMA_BITS, &DC_VALS),
        (0x10, &AC_LUMA_BITS, &AC_LUMA_VALS),
        (0x01, &DC_CHROMA_BITS, &DC_VALS),
        (0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALS),
    ];
    let mut t = 0;
    while t < 4 {
        let (tc, bits, vals) = tables[t];
        out[p] = tc;
        p += 1;
        let mut i = 0;
        while i < 16 {
            out[p] = bits[i];
            p += 1;
            i += 1;
        }
        let mut i = 0;
        while i < vals.len() {
            out[p] = vals[i];
            p += 1;
            i += 1;
        }
        t += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: usize = 8;
    const H: usize = 4;

    /// A synthetic 8x4 picture: luma = 10*x + y, per 2x2 block chroma (u, v) = (100 + bx, 200 - by),
    /// and the I420 it must become.
    fn reference() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let y: Vec<u8> = (0..H).flat_map(|r| (0..W).map(move |x| (10 * x + r) as u8)).collect();
        let u: Vec<u8> = (0..H / 2).flat_map(|r| (0..W / 2).map(move |x| (100 + x + 10 * r) as u8)).collect();
        let v: Vec<u8> = (0..H / 2).flat_map(|r| (0..W / 2).map(move |x| (200 - x - 10 * r) as u8)).collect();
        (y, u, v)
    }

    fn check(fourcc: &[u8; 4], src: &[u8], stride: u32) {
        let (ry, ru, rv) = reference();
        let mut c = Converter::new(FourCc(*fourcc), W as u32, H as u32, stride).unwrap();
        let mut f = VideoFrame::new(2, 2);
        c.convert(src, &mut f).unwrap();
        assert_eq!((f.width, f.height), (W as u32, H as u32));
        let (y, u, v) = f.planes();
        assert_eq!(y, &ry[..], "{} Y", FourCc(*fourcc));
        assert_eq!(u, &ru[..], "{} U", FourCc(*fourcc));
        assert_eq!(v, &rv[..], "{} V", FourCc(*fourcc));
    }

    fn pad(lines: &[Vec<u8>], stride: usize) -> Vec<u8> {
        lines.iter().flat_map(|l| {
            let mut l = l.clone();
            l.resize(stride, 0xEE);
            l
        }).collect()
    }

    fn rows(plane: &[u8], w: usize) -> Vec<Vec<u8>> {
        plane.chunks(w).map(|c| c.to_vec()).collect()
    }

    #[test]
    fn packed_rgb_becomes_bt601_limited_range() {
        // 4x2: white, black, pure red, pure blue in the top row; the bottom row repeats it.
        let px: [[u8; 3]; 4] = [[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255]];
        for (fourcc, swap) in [(b"RGB3", false), (b"BGR3", true)] {
            let line: Vec<u8> = px.iter().flat_map(|p| if swap { [p[2], p[1], p[0]] } else { *p }).collect();
            let src = pad(&[line.clone(), line], 16); // stride 16 > 12: padding is skipped
            let mut c = Converter::new(FourCc(*fourcc), 4, 2, 16).unwrap();
            let mut f = VideoFrame::new(2, 2);
            c.convert(&src, &mut f).unwrap();
            let (y, u, v) = f.planes();
            assert_eq!(&y[..4], &[235, 16, 82, 41], "{} Y", FourCc(*fourcc));
            // Left block: white + black averaged = grey (neutral chroma); right: red + blue.
            assert_eq!((u[0], v[0]), (128, 128), "{} grey", FourCc(*fourcc));
            assert!(u[1] > 140 && v[1] > 140, "{} red+blue is magenta: U {} V {}", FourCc(*fourcc), u[1], v[1]);
        }
        assert!(Converter::new(FourCc(*b"RGB3"), 4, 2, 8).is_err(), "stride shorter than 3 bytes a pixel");
    }

    #[test]
    fn planar_420_with_and_without_padding() {
        let (y, u, v) = reference();
        let tight: Vec<u8> = [&y[..], &u[..], &v[..]].concat();
        check(b"YU12", &tight, 0);
        let yv12: Vec<u8> = [&y[..], &v[..], &u[..]].concat();
        check(b"YV12", &yv12, 0);
        // Stride 12: luma lines of 12 bytes, chroma lines of 6.
        let padded = [pad(&rows(&y, W), 12), pad(&rows(&u, W / 2), 6), pad(&rows(&v, W / 2), 6)].concat();
        check(b"YU12", &padded, 12);
    }

    #[test]
    fn nv12_and_nv21() {
        let (y, u, v) = reference();
        let inter = |a: &[u8], b: &[u8]| -> Vec<u8> { a.iter().zip(b).flat_map(|(p, q)| [*p, *q]).collect() };
        check(b"NV12", &[&y[..], &inter(&u, &v)[..]].concat(), 0);
        check(b"NV21", &[&y[..], &inter(&v, &u)[..]].concat(), 0);
        let padded = [pad(&rows(&y, W), 16), pad(&rows(&inter(&u, &v), W), 16)].concat();
        check(b"NV12", &padded, 16);
    }

    /// Packed 4:2:2 where both lines of a pair carry chroma that averages to the reference:
    /// top line c-1, bottom line c+1 (rounded average = c).
    fn packed(order: [usize; 4], stride: usize) -> Vec<u8> {
        let (y, u, v) = reference();
        let mut out = Vec::new();
        for r in 0..H {
            let mut line = Vec::new();
            for x in 0..W / 2 {
                let d: i32 = if r % 2 == 0 { -1 } else { 1 };
                let cu = (u[(r / 2) * (W / 2) + x] as i32 + d) as u8;
                let cv = (v[(r / 2) * (W / 2) + x] as i32 + d) as u8;
                let vals = [y[r * W + 2 * x], cu, y[r * W + 2 * x + 1], cv]; // Y0 U Y1 V
                let mut g = [0u8; 4];
                for (k, &pos) in order.iter().enumerate() {
                    g[pos] = vals[k];
                }
                line.extend_from_slice(&g);
            }
            line.resize(stride, 0xEE);
            out.extend(line);
        }
        out
    }

    #[test]
    fn packed_422_orders() {
        // order = byte positions of [Y0, U, Y1, V].
        check(b"YUYV", &packed([0, 1, 2, 3], 16), 0);
        check(b"UYVY", &packed([1, 0, 3, 2], 16), 0);
        check(b"YVYU", &packed([0, 3, 2, 1], 16), 0);
        check(b"VYUY", &packed([1, 2, 3, 0], 16), 0);
        check(b"YUYV", &packed([0, 1, 2, 3], 20), 20);
    }

    #[test]
    fn odd_sizes_are_cropped_and_short_frames_rejected() {
        let mut c = Converter::new(FourCc(*b"YUYV"), 5, 3, 0).unwrap();
        let mut f = VideoFrame::new(2, 2);
        c.convert(&[16u8; 5 * 2 * 3], &mut f).unwrap();
        assert_eq!((f.width, f.height), (4, 2));
        let mut c = Converter::new(FourCc(*b"YUYV"), 6, 3, 12).unwrap();
        c.convert(&[16u8; 12 * 3], &mut f).unwrap();
        assert_eq!((f.width, f.height), (6, 2));
        let e = c.convert(&[0u8; 10], &mut f).unwrap_err();
        assert!(e.contains("short frame"), "{e}");
        assert!(Converter::new(FourCc(*b"BA81"), 640, 480, 0).err().unwrap().contains("BA81"));
    }

    #[test]
    fn converting_allocates_nothing_once_the_frame_has_its_size() {
        let (y, u, v) = reference();
        let src: Vec<u8> = [&y[..], &u[..], &v[..]].concat();
        let mut c = Converter::new(FourCc(*b"YU12"), W as u32, H as u32, 0).unwrap();
        let mut f = VideoFrame::new(W as u32, H as u32);
        let ptr = f.data.as_ptr();
        for _ in 0..3 {
            c.convert(&src, &mut f).unwrap();
        }
        assert_eq!(ptr, f.data.as_ptr());
    }

    fn tv(r: f64, g: f64, b: f64) -> (f64, f64, f64) {
        let y = 0.299 * r + 0.587 * g + 0.114 * b;
        let cb = -0.168736 * r - 0.331264 * g + 0.5 * b;
        let cr = 0.5 * r - 0.418688 * g - 0.081312 * b;
        (16.0 + y * 219.0 / 255.0, 128.0 + cb * 224.0 / 255.0, 128.0 + cr * 224.0 / 255.0)
    }

    fn fixture() -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bars-64x64-420.jpg")).unwrap()
    }

    /// The fixture (made with libjpeg-turbo's `cjpeg -quality 95 -sample 2x2` from a PPM): 64x64,
    /// top half bars white, red, green, blue; bottom half black, grey 85, grey 170, yellow; each
    /// bar 16 pixels wide (one chroma MCU, so no bleeding between bars).
    fn check_bars(f: &VideoFrame) {
        assert_eq!((f.width, f.height), (64, 64));
        let colours = [
            [(255.0, 255.0, 255.0), (255.0, 0.0, 0.0), (0.0, 255.0, 0.0), (0.0, 0.0, 255.0)],
            [(0.0, 0.0, 0.0), (85.0, 85.0, 85.0), (170.0, 170.0, 170.0), (255.0, 255.0, 0.0)],
        ];
        let (y, u, v) = f.planes();
        for (half, row) in colours.iter().enumerate() {
            for (bar, &(r, g, b)) in row.iter().enumerate() {
                let (ey, eu, ev) = tv(r, g, b);
                let (px, py) = (bar * 16 + 8, half * 32 + 16);
                let (gy, gu, gv) = (y[py * 64 + px] as f64, u[py / 2 * 32 + px / 2] as f64, v[py / 2 * 32 + px / 2] as f64);
                assert!((gy - ey).abs() <= 3.0, "bar {half}/{bar}: Y {gy} expected {ey:.1}");
                assert!((gu - eu).abs() <= 4.0, "bar {half}/{bar}: U {gu} expected {eu:.1}");
                assert!((gv - ev).abs() <= 4.0, "bar {half}/{bar}: V {gv} expected {ev:.1}");
            }
        }
    }

    #[test]
    fn mjpeg_decodes_a_real_jpeg_to_limited_range_i420() {
        let jpeg = fixture();
        let mut c = Converter::new(FourCc(*b"MJPG"), 64, 64, 0).unwrap();
        let mut f = VideoFrame::new(64, 64);
        c.convert(&jpeg, &mut f).unwrap();
        check_bars(&f);
        assert_eq!(LUMA_TV[0], 16);
        assert_eq!(LUMA_TV[255], 235);
        assert_eq!(CHROMA_TV[128], 128);
        assert_eq!((CHROMA_TV[0], CHROMA_TV[255]), (16, 240));
    }

    /// Removes every DHT segment, as MJPEG webcams send their frames.
    fn strip_dht(jpeg: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (mut out, mut tables) = (jpeg[..2].to_vec(), Vec::new());
        let mut i = 2;
        loop {
            let marker = jpeg[i + 1];
            if marker == 0xDA {
                out.extend_from_slice(&jpeg[i..]);
                return (out, tables);
            }
            let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
            if marker == 0xC4 {
                tables.extend_from_slice(&jpeg[i + 4..i + 2 + len]);
            } else {
                out.extend_from_slice(&jpeg[i..i + 2 + len]);
            }
            i += 2 + len;
        }
    }

    #[test]
    fn mjpeg_without_huffman_tables_gets_the_standard_ones() {
        let (stripped, tables) = strip_dht(&fixture());
        // libjpeg (no -optimize) writes exactly the standard tables: ours must match byte for byte.
        assert_eq!(&STD_DHT[4..], &tables[..], "inserted tables differ from libjpeg's");
        assert_eq!(missing_huffman_tables(&stripped).unwrap().is_some(), true);
        let mut c = Converter::new(FourCc(*b"MJPG"), 64, 64, 0).unwrap();
        let mut f = VideoFrame::new(64, 64);
        c.convert(&stripped, &mut f).unwrap();
        check_bars(&f);
    }

    #[test]
    fn broken_mjpeg_is_an_error_not_a_panic() {
        let jpeg = fixture();
        let mut c = Converter::new(FourCc(*b"MJPG"), 64, 64, 0).unwrap();
        let mut f = VideoFrame::new(64, 64);
        for bad in [&b""[..], &b"\xff\xd8"[..], &jpeg[..jpeg.len() / 3], &b"not a jpeg at all"[..]] {
            assert!(c.convert(bad, &mut f).is_err());
        }
    }
}
