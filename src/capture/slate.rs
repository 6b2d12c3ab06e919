//! The "CAMERA OFFLINE" slate viewers see while the camera is gone: dark grey, the message, a
//! running clock (so it is visibly live) and the timestamp code on row 0 like the test pattern.

use super::{font, timecode, VideoFrame};

pub const OFFLINE: &str = "CAMERA OFFLINE";
/// Privacy mode: a viewer paused the video for everyone (the camera is not read meanwhile).
pub const PAUSED: &str = "VIDEO PAUSED";

/// Paints the slate at `width`×`height` into `frame`, stamped `unix_us`.
pub fn render(frame: &mut VideoFrame, width: u32, height: u32, text: &str, unix_us: u64) {
    frame.resize(width & !1, height & !1);
    frame.capture_unix_us = unix_us;
    let (w, h) = (frame.width as usize, frame.height as usize);
    let (y, u, v) = frame.planes_mut();
    y.fill(40);
    u.fill(128);
    v.fill(128);
    let scale = (w / (font::text_width(text, 1) + 12)).clamp(1, 16);
    let tx = w.saturating_sub(font::text_width(text, scale)) / 2;
    let ty = (h / 2).saturating_sub(7 * scale);
    font::draw_text(y, w, h, tx, ty, scale, text, 235);
    let ms_of_day = (unix_us / 1000) % 86_400_000;
    let clock = format!(
        "{:02}:{:02}:{:02}",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60
    );
    let small = (scale / 2).max(1);
    let cx = w.saturating_sub(font::text_width(&clock, small)) / 2;
    font::draw_text(y, w, h, cx, ty + 10 * scale, small, &clock, 180);
    if w >= 64 && h >= 16 {
        timecode::draw(y, u, v, w as u32, h as u32, (unix_us / 1000) as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slate_has_the_message_and_the_time_code() {
        let mut f = VideoFrame::new(2, 2);
        let t = 1_764_000_000_123_000u64;
        render(&mut f, 640, 480, OFFLINE, t);
        assert_eq!((f.width, f.height), (640, 480));
        let (y, _, _) = f.planes();
        assert_eq!(timecode::read(y, 640, 640), Some((t / 1000) as u32));
        let bright = y[480 * 640 / 4..].iter().filter(|&&p| p == 235).count();
        assert!(bright > 2000, "text pixels: {bright}");
        // Tiny sizes do not panic.
        render(&mut f, 2, 2, OFFLINE, t);
        render(&mut f, 33, 17, OFFLINE, t);
    }
}
