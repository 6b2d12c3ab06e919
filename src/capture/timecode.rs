//! The test pattern's timestamp code (a contract: docs/interfaces.md, "Test pattern timestamp code").
//!
//! Block size `b = max(8, width / 40)`; 34 square blocks on row 0 from x = 0: block 0 white,
//! block 1 black (reference levels), blocks 2..33 are bits 31..0 of the capture time in Unix
//! milliseconds mod 2^32 (white = 1). Luma 235 / 16. Any client that can read pixels can measure
//! glass-to-glass latency with it.

pub const BLOCKS: usize = 34;
pub const WHITE: u8 = 235;
pub const BLACK: u8 = 16;

pub fn block_size(width: u32) -> usize {
    std::cmp::max(8, width as usize / 40)
}

/// Whether a frame of this size can carry the code.
pub fn fits(width: u32, height: u32) -> bool {
    let b = block_size(width);
    b * BLOCKS <= width as usize && b <= height as usize
}

/// Paints the code into an I420 frame (luma, and neutral chroma under it so it stays grey).
pub fn draw(y: &mut [u8], u: &mut [u8], v: &mut [u8], width: u32, height: u32, millis: u32) {
    if !fits(width, height) {
        return;
    }
    let (w, b) = (width as usize, block_size(width));
    for row in 0..b {
        let line = &mut y[row * w..row * w + BLOCKS * b];
        for (i, px) in line.chunks_mut(b).enumerate() {
            px.fill(if block_is_white(i, millis) { WHITE } else { BLACK });
        }
    }
    let cw = w / 2;
    for row in 0..b / 2 {
        u[row * cw..row * cw + BLOCKS * b / 2].fill(128);
        v[row * cw..row * cw + BLOCKS * b / 2].fill(128);
    }
}

fn block_is_white(index: usize, millis: u32) -> bool {
    match index {
        0 => true,
        1 => false,
        i => (millis >> (31 - (i - 2))) & 1 == 1,
    }
}

/// Whether this uncompressed luma plane carries the code as [`draw`] paints it: the two
/// reference blocks perfectly flat, the first brighter. A camera does not make two flat
/// squares in its corner; the test pattern does, also when it is dimmed ("dark"). Returns the
/// size of the code's strip in pixels (width, height) when it does.
pub fn drawn_strip(y: &[u8], width: u32, height: u32, stride: usize) -> Option<(usize, usize)> {
    if !fits(width, height) {
        return None;
    }
    let b = block_size(width);
    if y.len() < (b - 1) * stride + 2 * b {
        return None;
    }
    let flat = |block: usize| -> Option<u8> {
        let first = y[block * b];
        (0..b).all(|row| y[row * stride + block * b..row * stride + (block + 1) * b].iter().all(|&p| p == first)).then_some(first)
    };
    match (flat(0), flat(1)) {
        (Some(white), Some(black)) if white > black => Some((BLOCKS * b, b)),
        _ => None,
    }
}

/// Reads the code back from a luma plane (after compression: samples the middle of each block
/// and thresholds halfway between the two reference blocks). `None` if the references are not
/// distinguishable, i.e. this is not a test-pattern frame.
pub fn read(y: &[u8], width: u32, stride: usize) -> Option<u32> {
    let b = block_size(width);
    if b * BLOCKS > width as usize {
        return None;
    }
    let sample = |i: usize| -> u32 {
        // Average a small square in the middle of the block to ride over coding noise.
        let (cx, cy) = (i * b + b / 2, b / 2);
        let mut sum = 0u32;
        for dy in 0..2 {
            for dx in 0..2 {
                sum += y[(cy + dy - 1) * stride + cx + dx - 1] as u32;
            }
        }
        sum / 4
    };
    let (white, black) = (sample(0), sample(1));
    if white < black + 64 {
        return None;
    }
    let threshold = (white + black) / 2;
    let mut value = 0u32;
    for i in 2..BLOCKS {
        value = (value << 1) | u32::from(sample(i) > threshold);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: u32, h: u32) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let (w, h) = (w as usize, h as usize);
        (vec![90; w * h], vec![60; w * h / 4], vec![200; w * h / 4])
    }

    #[test]
    fn drawn_strip_is_found_on_the_pattern_and_not_on_a_picture() {
        let (w, h) = (640u32, 360u32);
        let (mut y, mut u, mut v) = frame(w, h);
        assert_eq!(drawn_strip(&y, w, h, w as usize), None, "a flat grey picture has no brighter first block");
        draw(&mut y, &mut u, &mut v, w, h, 0x1234_5678);
        assert_eq!(drawn_strip(&y, w, h, w as usize), Some((BLOCKS * 16, 16)));
        // Dimmed as the test pattern's "dark" does: still the pattern's code.
        let dim: Vec<u8> = y.iter().map(|&p| 16 + p.saturating_sub(16) / 8).collect();
        assert_eq!(drawn_strip(&dim, w, h, w as usize), Some((BLOCKS * 16, 16)));
        // One pixel off in a reference block (a camera's noise): not the code.
        y[3 * w as usize + 5] = WHITE - 1;
        assert_eq!(drawn_strip(&y, w, h, w as usize), None);
        assert_eq!(drawn_strip(&y[..100], w, h, w as usize), None, "a short plane is not read past its end");
    }

    #[test]
    fn block_size_follows_the_contract() {
        assert_eq!(block_size(1280), 32);
        assert_eq!(block_size(640), 16);
        assert_eq!(block_size(320), 8);
        assert_eq!(block_size(160), 8);
        assert!(!fits(160, 120));
        assert!(fits(320, 240));
    }

    #[test]
    fn draw_then_read_round_trips() {
        for (w, h) in [(1280, 720), (640, 480), (320, 240), (1920, 1080)] {
            for millis in [0u32, 1, 0x8000_0001, 0xdead_beef, u32::MAX, 1_732_500_123] {
                let (mut y, mut u, mut v) = frame(w, h);
                draw(&mut y, &mut u, &mut v, w, h, millis);
                assert_eq!(read(&y, w, w as usize), Some(millis), "{w}x{h} {millis:#x}");
            }
        }
    }

    #[test]
    fn layout_is_exactly_the_contract() {
        let (w, h) = (640u32, 480u32);
        let (mut y, mut u, mut v) = frame(w, h);
        // bit 31 set, bit 0 set, everything else clear
        draw(&mut y, &mut u, &mut v, w, h, 0x8000_0001);
        let b = 16;
        let at = |x: usize, row: usize| y[row * w as usize + x];
        assert_eq!(at(0, 0), WHITE);
        assert_eq!(at(b - 1, b - 1), WHITE);
        assert_eq!(at(b, 0), BLACK);
        assert_eq!(at(2 * b, 0), WHITE, "bit 31 is block 2");
        assert_eq!(at(3 * b, 5), BLACK);
        assert_eq!(at(33 * b + b - 1, b - 1), WHITE, "bit 0 is block 33");
        assert_eq!(at(34 * b, 0), 90, "nothing painted after block 33");
        assert_eq!(at(0, b), 90, "nothing painted below row b");
        assert_eq!(u[0], 128);
    }

    #[test]
    fn survives_coding_noise() {
        let (w, h) = (1280u32, 720u32);
        let (mut y, mut u, mut v) = frame(w, h);
        draw(&mut y, &mut u, &mut v, w, h, 0x1234_5678);
        // +-40 of noise, as a lossy codec at low bitrate might leave
        for (i, px) in y.iter_mut().enumerate() {
            let n = ((i * 7919) % 81) as i32 - 40;
            *px = (*px as i32 + n).clamp(0, 255) as u8;
        }
        assert_eq!(read(&y, w, w as usize), Some(0x1234_5678));
    }

    #[test]
    fn a_frame_without_the_code_reads_none() {
        let (y, _, _) = frame(640, 480);
        assert_eq!(read(&y, 640, 640), None);
    }
}
