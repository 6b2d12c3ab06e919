//! The built-in test pattern: colour bars, a bouncing box and a scrolling strip (so the encoder
//! does real work), a readable UTC clock, and the timestamp code on row 0 (see `timecode`).
//! Paced by the monotonic clock at the configured rate.

use super::constraints::{
    resolve_video, FormatModes, FourCc, Fraction, IntervalRange, SizeModes, SizeRange, VideoConstraints, VideoDeviceModes,
};
use super::{font, timecode, unix_now_us, ApplyError, CaptureError, Frame, VideoFrame, VideoSource};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// BT.601 limited-range YUV of the classic bars: white, yellow, cyan, green, magenta, red, blue.
const BARS: [(u8, u8, u8); 7] = [
    (180, 128, 128),
    (162, 44, 142),
    (131, 156, 44),
    (112, 72, 58),
    (84, 184, 198),
    (65, 100, 212),
    (35, 212, 114),
];

pub struct TestPattern {
    width: u32,
    height: u32,
    fps: u32,
    start: Instant,
    frame_index: u64,
    /// The bars never change: painted once, copied into each frame.
    background: Vec<u8>,
    /// Share of the picture (a band at the bottom, in %) with sensor-like noise.
    noise_percent: u32,
    /// Whether the box and the strip move (shared, so it can change live: a scene with and
    /// without motion for the motion detector's tests). The clock and the code always run.
    moving: Arc<AtomicBool>,
    /// How far the box and the strip have gone (advances only while `moving`), and when.
    box_step: u64,
    box_at: Option<Instant>,
    /// While set, the picture is drawn at an eighth of its brightness: a dark room for the
    /// night-vision tests (`POST /api/test-pattern {"dark": true}`).
    dark: Arc<AtomicBool>,
}

impl TestPattern {
    pub fn new(width: u32, height: u32, fps: u32) -> Self {
        let mut bg = VideoFrame::new(width, height);
        paint_background(&mut bg);
        Self {
            width,
            height,
            fps,
            start: Instant::now(),
            frame_index: 0,
            background: bg.data,
            noise_percent: 0,
            moving: Arc::new(AtomicBool::new(true)),
            box_step: 0,
            box_at: None,
            dark: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Shares a switch that stops (false) and restarts the box and the strip.
    pub fn with_motion_switch(mut self, moving: Arc<AtomicBool>) -> Self {
        self.moving = moving;
        self
    }

    /// Shares a switch that darkens the picture (true) and brightens it again.
    pub fn with_dark_switch(mut self, dark: Arc<AtomicBool>) -> Self {
        self.dark = dark;
        self
    }

    /// Covers the bottom `percent` of the picture with fresh low-amplitude noise every frame,
    /// as a real sensor in dim light gives: the plain pattern needs only ~0.6 Mbit/s at 720p,
    /// so an encoder at 2.5 Mbit/s never spends its budget. With noise it does (and, having
    /// low amplitude, the noise is quantized away at low bitrates instead of costing frames),
    /// which is what link tests and benchmarks of rate adaptation need.
    pub fn with_noise(mut self, percent: u32) -> Self {
        self.noise_percent = percent.min(100);
        self
    }

    /// Draws frame number `index` captured at `unix_us` (no pacing; used by benches and tests).
    pub fn render(&self, frame: &mut VideoFrame, index: u64, unix_us: u64) {
        self.render_box_at(frame, index, index, unix_us)
    }

    /// [`TestPattern::render`] with the box and the strip at `box_step` (they stand still while
    /// it does) and the counter, clock and code at `index` / `unix_us`.
    pub fn render_box_at(&self, frame: &mut VideoFrame, index: u64, box_step: u64, unix_us: u64) {
        frame.resize(self.width, self.height);
        frame.dmabuf = None;
        frame.data.copy_from_slice(&self.background);
        frame.capture_unix_us = unix_us;
        let (w, h) = (self.width as usize, self.height as usize);
        let (y, u, v) = frame.planes_mut();

        // A box bouncing around the lower two thirds.
        let side = (h / 6).max(16) & !1;
        let span_x = (w - side).max(1) as u64;
        let span_y = (h / 2 - side / 2).max(1) as u64;
        let step = box_step * 4;
        let bx = bounce(step, span_x) as usize & !1;
        let by = (h / 3 + bounce(step * 3 / 4, span_y) as usize) & !1;
        for row in by..(by + side).min(h) {
            y[row * w + bx..row * w + (bx + side).min(w)].fill(235);
        }
        let cw = w / 2;
        for row in by / 2..((by + side) / 2).min(h / 2) {
            u[row * cw + bx / 2..row * cw + ((bx + side) / 2).min(cw)].fill(90);
            v[row * cw + bx / 2..row * cw + ((bx + side) / 2).min(cw)].fill(240);
        }

        // A strip of diagonal stripes scrolling under the code, full width.
        let strip_top = timecode::block_size(self.width) + 4;
        let strip_h = (h / 24).max(4);
        for row in strip_top..(strip_top + strip_h).min(h) {
            let line = &mut y[row * w..row * w + w];
            for (x, px) in line.iter_mut().enumerate() {
                let phase = (x + row + (box_step as usize) * 6) % 64;
                *px = if phase < 32 { 200 } else { 40 };
            }
        }

        if self.noise_percent > 0 {
            let top = h - h * self.noise_percent as usize / 100;
            let mut state = (index as u32).wrapping_mul(0x9E37_79B9) | 1;
            for px in &mut y[top * w..h * w] {
                // xorshift32: cheap, different every frame
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *px = (*px as i32 + (state & 31) as i32 - 16).clamp(16, 235) as u8;
            }
        }

        // A human-readable clock (UTC) and frame counter.
        let ms_of_day = (unix_us / 1000) % 86_400_000;
        let clock = format!(
            "{:02}:{:02}:{:02}.{:03} UTC",
            ms_of_day / 3_600_000,
            ms_of_day / 60_000 % 60,
            ms_of_day / 1000 % 60,
            ms_of_day % 1000
        );
        let scale = (w / 160).max(2);
        let tx = w.saturating_sub(font::text_width(&clock, scale)) / 2;
        let ty = strip_top + strip_h + scale * 4;
        font::draw_text(y, w, h, tx, ty, scale, &clock, 235);
        let counter = format!("{index}  {}x{}", self.width, self.height);
        let small = (scale / 2).max(1);
        font::draw_text(y, w, h, tx, ty + scale * 10, small, &counter, 235);

        timecode::draw(y, u, v, self.width, self.height, (unix_us / 1000) as u32);
    }
}

fn bounce(step: u64, span: u64) -> u64 {
    let p = step % (2 * span);
    if p < span { p } else { 2 * span - p }
}

fn paint_background(frame: &mut VideoFrame) {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let (y, u, v) = frame.planes_mut();
    let bar_of = |x: usize| BARS[(x * BARS.len() / w).min(BARS.len() - 1)];
    for row in 0..h {
        for x in 0..w {
            y[row * w + x] = bar_of(x).0;
        }
    }
    for row in 0..h / 2 {
        for x in 0..w / 2 {
            let (_, cb, cr) = bar_of(x * 2);
            u[row * (w / 2) + x] = cb;
            v[row * (w / 2) + x] = cr;
        }
    }
}

impl VideoSource for TestPattern {
    fn name(&self) -> String {
        "testsrc".into()
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<(), CaptureError> {
        let period = Duration::from_secs(1) / self.fps;
        let now = Instant::now();
        let mut due = self.start + period * self.frame_index as u32;
        if due + period < now {
            // We fell behind (or the source was idle): resynchronise instead of bursting.
            self.start = now;
            self.frame_index = 0;
            due = now;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        // The box moves with time, not per frame read: a reader that takes a frame now and then
        // (motion detection with nobody watching) sees it as far on as a camera would show it.
        let now = Instant::now();
        if self.moving.load(Ordering::Relaxed) {
            let periods = self.box_at.map_or(1, |t| ((now - t).as_secs_f64() / period.as_secs_f64()).round() as u64);
            self.box_step += periods.clamp(1, self.fps as u64 * 10);
        }
        self.box_at = Some(now);
        self.render_box_at(frame.i420_mut(), self.frame_index, self.box_step, unix_now_us());
        if self.dark.load(Ordering::Relaxed) {
            let (y, _, _) = frame.i420_mut().planes_mut();
            for px in y {
                *px = 16 + px.saturating_sub(16) / 8;
            }
        }
        self.frame_index += 1;
        Ok(())
    }

    fn settings(&self) -> (u32, u32, u32) {
        (self.width, self.height, self.fps)
    }

    fn apply_constraints(&mut self, c: &VideoConstraints) -> Result<(), ApplyError> {
        let device = VideoDeviceModes { names: vec!["testsrc".into()], formats: vec![test_pattern_modes()] };
        let choice = resolve_video(&[device], None, c, false)?;
        let m = choice.mode;
        let moving = self.moving.clone();
        *self = TestPattern::new(m.width & !1, m.height & !1, (m.fps().round() as u32).clamp(1, 60))
            .with_noise(self.noise_percent)
            .with_motion_switch(moving);
        Ok(())
    }
}

/// What the test pattern offers to constraints: any even size from 160x120 to 1920x1080 at
/// 1–60 fps, like a very flexible camera.
pub fn test_pattern_modes() -> FormatModes {
    FormatModes {
        fourcc: FourCc(*b"YU12"),
        description: "test pattern".into(),
        sizes: vec![SizeModes {
            size: SizeRange::Stepwise {
                min_width: 160,
                max_width: 1920,
                step_width: 2,
                min_height: 120,
                max_height: 1080,
                step_height: 2,
            },
            intervals: IntervalRange::Stepwise {
                min: Fraction::new(1, 60),
                max: Fraction::new(1, 1),
                step: Fraction::new(1, 60),
            },
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_capture_time() {
        let p = TestPattern::new(640, 480, 30);
        let mut f = VideoFrame::new(16, 16);
        let t = 1_764_000_000_123_456u64;
        p.render(&mut f, 7, t);
        assert_eq!((f.width, f.height), (640, 480));
        let (y, _, _) = f.planes();
        assert_eq!(timecode::read(y, 640, 640), Some((t / 1000) as u32));
    }

    #[test]
    fn the_picture_moves() {
        let p = TestPattern::new(320, 240, 30);
        let (mut a, mut b) = (VideoFrame::new(320, 240), VideoFrame::new(320, 240));
        p.render(&mut a, 1, 0);
        p.render(&mut b, 2, 0);
        let differing = a.data.iter().zip(&b.data).filter(|(x, y)| x != y).count();
        assert!(differing > 1000, "only {differing} bytes changed");
    }

    #[test]
    fn applies_constraints_live() {
        use crate::capture::constraints::NumConstraint;
        let mut p = TestPattern::new(1280, 720, 30);
        let c = VideoConstraints {
            width: Some(NumConstraint::ideal(640.0)),
            height: Some(NumConstraint::ideal(360.0)),
            frame_rate: Some(NumConstraint::ideal(15.0)),
            ..Default::default()
        };
        p.apply_constraints(&c).unwrap();
        assert_eq!(p.settings(), (640, 360, 15));
        let too_big = VideoConstraints { width: Some(NumConstraint::exact(4000.0)), ..Default::default() };
        match p.apply_constraints(&too_big) {
            Err(ApplyError::Overconstrained(o)) => assert_eq!(o.constraint, "width"),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.settings(), (640, 360, 15), "a failed apply keeps the mode");
    }

    #[test]
    fn paces_at_the_configured_rate() {
        let mut p = TestPattern::new(320, 240, 50);
        let mut f = Frame::new(320, 240);
        let t0 = Instant::now();
        for _ in 0..11 {
            p.next_frame(&mut f).unwrap();
        }
        let took = t0.elapsed();
        // 10 periods of 20 ms; generous upper bound for a loaded CI machine.
        assert!(took >= Duration::from_millis(195), "{took:?}");
        assert!(took < Duration::from_millis(600), "{took:?}");
    }
}
