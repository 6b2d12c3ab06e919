//! Motion detection, pure (sans-I/O): a downscaled copy of the luma plane and its time in,
//! [`MotionEvent`]s out. The capture thread (`pipeline::video_capture_loop`) feeds it a few
//! times a second — while nobody watches too, when `[motion] enabled` — and hands the events on
//! through a bounded channel it never waits on; no encoder is involved.
//!
//! How it decides:
//! - [`Grid::fill`] averages the luma plane into [`GRID_W`] × (`GRID_W` · h / w) cells (a cell
//!   is a block of pixels, so sensor noise averages out and the cost is one read of the plane).
//! - A cell *moved* when its mean differs from the previous analysed frame's by more than the
//!   sensitivity's threshold ([`MotionParams::cell_threshold`]), and its centre is in no mask.
//!   On the test pattern, the cells under its timestamp code never move ([`Grid::blank_top_left`]
//!   where `capture::timecode::drawn_strip` finds it): the code changes every frame.
//! - The *area* is the share of all cells (of the whole picture, masked ones included) that
//!   moved, in %. Motion *starts* after [`START_FRAMES`] analysed frames in a row at or over
//!   `min_area_percent`, and *ends* `cooldown_s` after the last such frame (the end event
//!   carries the start, the end, the last moving frame and the peak area).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Cells across; the rows follow the picture's aspect ratio.
pub const GRID_W: usize = 64;
/// Most cells down (a very tall picture).
pub const GRID_H_MAX: usize = 64;
/// Analysed frames in a row over the area that start motion (one glitch is not motion).
pub const START_FRAMES: u32 = 2;
/// Most masks.
pub const MAX_MASKS: usize = 16;

/// A rectangle in normalized picture coordinates (0..1 from the top left).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rect {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

impl Rect {
    pub fn contains(&self, x: f32, y: f32) -> bool {
        x >= self.x && x < self.x + self.w && y >= self.y && y < self.y + self.h
    }

    /// Checks a rectangle from the config or the API.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |v: f32| v.is_finite() && (0.0..=1.0).contains(&v);
        if !(ok(self.x) && ok(self.y) && ok(self.w) && ok(self.h)) {
            return Err(format!("mask {:?}: every value must be between 0 and 1", [self.x, self.y, self.w, self.h]));
        }
        if self.w <= 0.0 || self.h <= 0.0 || self.x + self.w > 1.0 + 1e-6 || self.y + self.h > 1.0 + 1e-6 {
            return Err(format!(
                "mask {:?}: [x, y, width, height] must have a width and height over 0 and stay inside the picture (x + width ≤ 1, y + height ≤ 1)",
                [self.x, self.y, self.w, self.h]
            ));
        }
        Ok(())
    }
}

/// The detector's parameters; defaults and ranges are `[motion]`'s in the config, and
/// `POST /api/motion` changes them live.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MotionParams {
    /// 1–100: higher sees smaller changes of brightness ([`MotionParams::cell_threshold`]).
    pub sensitivity: u32,
    /// Share of the picture (%) that must move.
    pub min_area_percent: f32,
    /// Seconds without motion before it ends (and before a new start).
    pub cooldown_s: u32,
    /// Analysed frames per second.
    pub fps: u32,
    /// Regions to ignore.
    pub masks: Vec<Rect>,
}

impl Default for MotionParams {
    fn default() -> Self {
        Self { sensitivity: 50, min_area_percent: 1.0, cooldown_s: 10, fps: 5, masks: Vec::new() }
    }
}

impl MotionParams {
    /// The change of a cell's mean luma (0–255) that counts as movement: 64 at sensitivity 1,
    /// 34 at 50, 4 at 100.
    pub fn cell_threshold(&self) -> u8 {
        let s = self.sensitivity.clamp(1, 100);
        (4 + (100 - s) * 60 / 99) as u8
    }

    pub fn validate(&self) -> Result<(), ParamError> {
        if !(1..=100).contains(&self.sensitivity) {
            return Err(ParamError::new("sensitivity", format!("{} is out of range: expected 1 to 100", self.sensitivity)));
        }
        if !(self.min_area_percent.is_finite() && (0.01..=100.0).contains(&self.min_area_percent)) {
            return Err(ParamError::new("min_area_percent", format!("{} is out of range: expected 0.01 to 100", self.min_area_percent)));
        }
        if !(1..=3600).contains(&self.cooldown_s) {
            return Err(ParamError::new("cooldown_s", format!("{} is out of range: expected 1 to 3600", self.cooldown_s)));
        }
        if !(1..=30).contains(&self.fps) {
            return Err(ParamError::new("fps", format!("{} is out of range: expected 1 to 30", self.fps)));
        }
        if self.masks.len() > MAX_MASKS {
            return Err(ParamError::new("masks", format!("{} masks: at most {MAX_MASKS}", self.masks.len())));
        }
        for m in &self.masks {
            m.validate().map_err(|e| ParamError::new("masks", e))?;
        }
        Ok(())
    }

    /// This set with `change` applied, if the result is valid (all or nothing).
    pub fn with(&self, change: &MotionChange) -> Result<MotionParams, ParamError> {
        let mut p = self.clone();
        if let Some(v) = change.sensitivity {
            p.sensitivity = v;
        }
        if let Some(v) = change.min_area_percent {
            p.min_area_percent = v;
        }
        if let Some(v) = change.cooldown_s {
            p.cooldown_s = v;
        }
        if let Some(v) = change.fps {
            p.fps = v;
        }
        if let Some(m) = &change.masks {
            p.masks = m.iter().map(|a| Rect { x: a[0], y: a[1], w: a[2], h: a[3] }).collect();
        }
        p.validate()?;
        Ok(p)
    }
}

/// A live change (`POST /api/motion`): only the keys given. Masks are `[x, y, width, height]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MotionChange {
    pub enabled: Option<bool>,
    pub sensitivity: Option<u32>,
    pub min_area_percent: Option<f32>,
    pub cooldown_s: Option<u32>,
    pub fps: Option<u32>,
    pub masks: Option<Vec<[f32; 4]>>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParamError {
    pub field: &'static str,
    pub message: String,
}

impl ParamError {
    fn new(field: &'static str, message: String) -> Self {
        Self { field, message }
    }
}

/// Motion started or ended. Times are Unix ms (capture times of the analysed frames).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MotionEvent {
    Start { start_ms: u64, area_percent: f32 },
    End { start_ms: u64, end_ms: u64, last_motion_ms: u64, peak_area_percent: f32 },
}

fn round1(x: f32) -> f64 {
    (x as f64 * 10.0).round() / 10.0
}

impl MotionEvent {
    pub fn name(&self) -> &'static str {
        "motion"
    }

    /// The event's own members (the control protocol adds the envelope).
    pub fn fields(&self) -> Value {
        match *self {
            MotionEvent::Start { start_ms, area_percent } => {
                json!({"state": "start", "start": start_ms, "area_percent": round1(area_percent)})
            }
            MotionEvent::End { start_ms, end_ms, last_motion_ms, peak_area_percent } => json!({
                "state": "end", "start": start_ms, "end": end_ms, "last_motion": last_motion_ms,
                "peak_area_percent": round1(peak_area_percent),
            }),
        }
    }
}

/// What `/api/motion` shows besides the parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MotionState {
    pub motion: bool,
    /// Area of the last analysed frame (%).
    pub area_percent: f32,
    /// Frames analysed since start.
    pub frames: u64,
}

/// The downscaled luma: one mean per cell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grid {
    pub w: usize,
    pub h: usize,
    pub cells: Vec<u8>,
}

impl Grid {
    /// Averages a `width` × `height` luma plane (rows `stride` apart) into cells. Pictures
    /// narrower than the grid get one cell per pixel.
    pub fn fill(&mut self, y: &[u8], width: usize, height: usize, stride: usize) {
        if width == 0 || height == 0 || y.len() < stride * (height - 1) + width {
            self.w = 0;
            self.h = 0;
            self.cells.clear();
            return;
        }
        let gw = GRID_W.min(width);
        let gh = ((gw * height + width / 2) / width).clamp(1, GRID_H_MAX.min(height));
        self.w = gw;
        self.h = gh;
        self.cells.clear();
        self.cells.resize(gw * gh, 0);
        // Cell edges across; each row is summed cell by cell over contiguous slices (which the
        // compiler vectorizes) rather than pixel by pixel through a lookup.
        let edges: Vec<usize> = (0..=gw).map(|gx| gx * width / gw).collect();
        let mut sums = vec![0u32; gw];
        for gy in 0..gh {
            let (r0, r1) = (gy * height / gh, (gy + 1) * height / gh);
            sums.iter_mut().for_each(|s| *s = 0);
            for row in r0..r1 {
                let line = &y[row * stride..row * stride + width];
                for (gx, sum) in sums.iter_mut().enumerate() {
                    *sum += line[edges[gx]..edges[gx + 1]].iter().map(|&p| p as u32).sum::<u32>();
                }
            }
            let rows = (r1 - r0) as u32;
            for (gx, sum) in sums.iter().enumerate() {
                let n = (edges[gx + 1] - edges[gx]) as u32 * rows;
                self.cells[gy * gw + gx] = if n == 0 { 0 } else { ((sum + n / 2) / n) as u8 };
            }
        }
    }

    /// Sets every cell that overlaps the pixels `0..x1` × `0..y1` of the `width` × `height`
    /// picture [`Grid::fill`] read to 0, so that corner never counts as motion.
    pub fn blank_top_left(&mut self, width: usize, height: usize, x1: usize, y1: usize) {
        if self.w == 0 || self.h == 0 || width == 0 || height == 0 {
            return;
        }
        for gy in (0..self.h).take_while(|gy| gy * height / self.h < y1) {
            for gx in (0..self.w).take_while(|gx| gx * width / self.w < x1) {
                self.cells[gy * self.w + gx] = 0;
            }
        }
    }
}

/// The detector. Feed it grids with [`MotionDetector::push`].
pub struct MotionDetector {
    params: MotionParams,
    prev: Option<Grid>,
    /// Per cell: ignored (its centre is in a mask), for the grid size it was made for.
    masked: Vec<bool>,
    masked_for: (usize, usize),
    over_in_row: u32,
    active: Option<Active>,
    /// When the last motion ended: no new start within the cooldown after it.
    ended_at_ms: Option<u64>,
    state: MotionState,
}

struct Active {
    start_ms: u64,
    last_motion_ms: u64,
    peak: f32,
}

impl MotionDetector {
    pub fn new(params: MotionParams) -> Self {
        Self {
            params,
            prev: None,
            masked: Vec::new(),
            masked_for: (0, 0),
            over_in_row: 0,
            active: None,
            ended_at_ms: None,
            state: MotionState::default(),
        }
    }

    pub fn params(&self) -> &MotionParams {
        &self.params
    }

    /// New parameters: an ongoing motion goes on under them.
    pub fn set_params(&mut self, params: MotionParams) {
        self.params = params;
        self.masked_for = (0, 0);
    }

    pub fn state(&self) -> MotionState {
        self.state
    }

    /// Forgets the previous frame (after a gap: the camera was closed, the size changed): the
    /// next frame is compared with nothing. An ongoing motion still ends on time.
    pub fn reset_reference(&mut self) {
        self.prev = None;
        self.over_in_row = 0;
    }

    fn update_mask(&mut self, w: usize, h: usize) {
        if self.masked_for == (w, h) {
            return;
        }
        self.masked = (0..w * h)
            .map(|i| {
                let (cx, cy) = ((i % w) as f32 + 0.5, (i / w) as f32 + 0.5);
                let (x, y) = (cx / w as f32, cy / h as f32);
                self.params.masks.iter().any(|m| m.contains(x, y))
            })
            .collect();
        self.masked_for = (w, h);
    }

    /// The share (%) of cells that changed between `a` and `b` (same size), masks applied.
    pub fn area_percent(&mut self, a: &Grid, b: &Grid) -> f32 {
        if a.w != b.w || a.h != b.h || a.cells.is_empty() {
            return 0.0;
        }
        self.update_mask(b.w, b.h);
        let t = self.params.cell_threshold();
        let moved = a
            .cells
            .iter()
            .zip(&b.cells)
            .zip(&self.masked)
            .filter(|((p, q), m)| !**m && p.abs_diff(**q) > t)
            .count();
        moved as f32 * 100.0 / b.cells.len() as f32
    }

    /// Detection stops (turned off): an ongoing motion ends at `now_ms`.
    pub fn finish(&mut self, now_ms: u64, out: &mut Vec<MotionEvent>) {
        if let Some(a) = self.active.take() {
            out.push(MotionEvent::End { start_ms: a.start_ms, end_ms: now_ms, last_motion_ms: a.last_motion_ms, peak_area_percent: a.peak });
        }
        self.state.motion = false;
        self.reset_reference();
    }

    /// One analysed frame captured at `now_ms`; its events go to `out`.
    pub fn push(&mut self, grid: &Grid, now_ms: u64, out: &mut Vec<MotionEvent>) {
        let area = match self.prev.take() {
            Some(prev) if prev.w == grid.w && prev.h == grid.h => {
                let a = self.area_percent(&prev, grid);
                self.prev = Some(prev);
                a
            }
            _ => 0.0,
        };
        match &mut self.prev {
            Some(p) if p.w == grid.w && p.h == grid.h => p.cells.copy_from_slice(&grid.cells),
            _ => self.prev = Some(grid.clone()),
        }
        self.state.frames += 1;
        self.state.area_percent = area;
        let over = area >= self.params.min_area_percent;
        self.over_in_row = if over { self.over_in_row + 1 } else { 0 };
        let cooldown_ms = self.params.cooldown_s as u64 * 1000;
        match &mut self.active {
            Some(a) => {
                if over {
                    a.last_motion_ms = now_ms;
                    a.peak = a.peak.max(area);
                } else if now_ms.saturating_sub(a.last_motion_ms) >= cooldown_ms {
                    out.push(MotionEvent::End { start_ms: a.start_ms, end_ms: now_ms, last_motion_ms: a.last_motion_ms, peak_area_percent: a.peak });
                    self.active = None;
                    self.ended_at_ms = Some(now_ms);
                }
            }
            None => {
                let cooling = self.ended_at_ms.is_some_and(|e| now_ms.saturating_sub(e) < cooldown_ms);
                if self.over_in_row >= START_FRAMES && !cooling {
                    self.active = Some(Active { start_ms: now_ms, last_motion_ms: now_ms, peak: area });
                    out.push(MotionEvent::Start { start_ms: now_ms, area_percent: area });
                }
            }
        }
        self.state.motion = self.active.is_some();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 320x180 grey picture with a bright square of `side` px at (x, y).
    fn picture(x: usize, y: usize, side: usize) -> Vec<u8> {
        let (w, h) = (320, 180);
        let mut p = vec![60u8; w * h];
        for row in y..(y + side).min(h) {
            for col in x..(x + side).min(w) {
                p[row * w + col] = 220;
            }
        }
        p
    }

    fn grid(p: &[u8]) -> Grid {
        let mut g = Grid::default();
        g.fill(p, 320, 180, 320);
        g
    }

    fn run(det: &mut MotionDetector, frames: &[(u64, Vec<u8>)]) -> Vec<MotionEvent> {
        let mut out = Vec::new();
        for (t, p) in frames {
            det.push(&grid(p), *t, &mut out);
        }
        out
    }

    /// Found in the e2e `record` test: on a still test pattern, a carry in the timestamp code
    /// (many bits flipping at once) moved over 1 % of the cells and started "motion".
    #[test]
    fn the_test_patterns_timestamp_code_is_not_motion() {
        use crate::capture::timecode;
        let (w, h) = (640usize, 360usize);
        let at = |millis: u32| {
            let (mut y, mut u, mut v) = (vec![60u8; w * h], vec![128u8; w * h / 4], vec![128u8; w * h / 4]);
            timecode::draw(&mut y, &mut u, &mut v, w as u32, h as u32, millis);
            y
        };
        let (before, after) = (at(0x0FFF_FF00), at(0x1000_0000)); // 28 bits flip
        let mut det = MotionDetector::new(MotionParams::default());
        let (mut a, mut b) = (Grid::default(), Grid::default());
        a.fill(&before, w, h, w);
        b.fill(&after, w, h, w);
        assert!(det.area_percent(&a, &b) > 1.0, "the carry alone is over the default area");
        for (g, y) in [(&mut a, &before), (&mut b, &after)] {
            let (x1, y1) = timecode::drawn_strip(y, w as u32, h as u32, w).expect("the code is found");
            g.blank_top_left(w, h, x1, y1);
        }
        assert_eq!(det.area_percent(&a, &b), 0.0);
        // The rest of the picture still counts: a box below the strip moves.
        let mut moved = after.clone();
        for row in 100..160 {
            moved[row * w + 200..row * w + 260].fill(235);
        }
        let mut c = Grid::default();
        c.fill(&moved, w, h, w);
        let (x1, y1) = timecode::drawn_strip(&moved, w as u32, h as u32, w).unwrap();
        c.blank_top_left(w, h, x1, y1);
        assert!(det.area_percent(&b, &c) > 1.0);
    }

    #[test]
    fn grid_averages_cells_and_follows_the_aspect_ratio() {
        let g = grid(&picture(0, 0, 0));
        assert_eq!((g.w, g.h), (64, 36));
        assert!(g.cells.iter().all(|&c| c == 60));
        let g = grid(&picture(0, 0, 5));
        assert_eq!(g.cells[0], 220, "a 5x5 cell fully covered");
        let mut tiny = Grid::default();
        tiny.fill(&[1, 2, 3, 4], 2, 2, 2);
        assert_eq!((tiny.w, tiny.h, tiny.cells.clone()), (2, 2, vec![1, 2, 3, 4]));
        let mut bad = Grid::default();
        bad.fill(&[1, 2, 3], 2, 2, 2);
        assert!(bad.cells.is_empty(), "a short plane gives an empty grid, not a panic");
    }

    #[test]
    fn a_moving_square_starts_and_ends_with_times_and_peak() {
        let mut det = MotionDetector::new(MotionParams { cooldown_s: 2, ..Default::default() });
        let mut frames = vec![];
        // still for 1 s at 5 fps, moving for 2 s, still for 3 s
        for i in 0..5 {
            frames.push((1000 + i * 200, picture(10, 10, 40)));
        }
        for i in 0..10 {
            frames.push((2000 + i * 200, picture(10 + i as usize * 20, 10 + i as usize * 10, 40)));
        }
        for i in 0..15 {
            frames.push((4000 + i * 200, picture(190, 100, 40)));
        }
        let ev = run(&mut det, &frames);
        assert_eq!(ev.len(), 2, "{ev:?}");
        match ev[0] {
            // The frame at 2000 is where the still square was; 2200 is the first over the
            // area, 2400 the second, which starts it.
            MotionEvent::Start { start_ms, area_percent } => {
                assert_eq!(start_ms, 2400);
                assert!(area_percent > 1.0, "{area_percent}");
            }
            _ => panic!("{ev:?}"),
        }
        match ev[1] {
            MotionEvent::End { start_ms, end_ms, last_motion_ms, peak_area_percent } => {
                assert_eq!(start_ms, 2400);
                // the still phase keeps the last position (3800)
                assert_eq!(last_motion_ms, 3800);
                assert_eq!(end_ms, 5800, "cooldown 2 s after the last motion");
                // the 40 px square (1.6 % of the cells each) moving 20 px: ~2.5–5 %
                assert!((2.0..8.0).contains(&peak_area_percent), "{peak_area_percent}");
            }
            _ => panic!("{ev:?}"),
        }
        assert!(!det.state().motion);
    }

    #[test]
    fn min_area_ignores_small_changes() {
        // an 8 px square moving: ~0.2 % of the picture
        let frames: Vec<_> = (0..20).map(|i| (i * 200, picture(10 + i as usize * 8, 50, 8))).collect();
        let mut det = MotionDetector::new(MotionParams { min_area_percent: 1.0, ..Default::default() });
        assert!(run(&mut det, &frames).is_empty());
        let mut det = MotionDetector::new(MotionParams { min_area_percent: 0.1, ..Default::default() });
        assert!(matches!(run(&mut det, &frames)[0], MotionEvent::Start { .. }));
    }

    #[test]
    fn sensitivity_sets_the_brightness_step() {
        // the whole picture brightens by 20 levels every frame
        let frames: Vec<_> = (0..10u64).map(|i| (i * 200, vec![40 + (i as u8) * 20; 320 * 180])).collect();
        let mut low = MotionDetector::new(MotionParams { sensitivity: 50, ..Default::default() });
        assert!(run(&mut low, &frames[..8]).is_empty(), "threshold 34 > 20");
        let mut high = MotionDetector::new(MotionParams { sensitivity: 90, ..Default::default() });
        assert!(!run(&mut high, &frames[..8]).is_empty(), "threshold 10 < 20");
        assert_eq!(MotionParams { sensitivity: 1, ..Default::default() }.cell_threshold(), 64);
        assert_eq!(MotionParams { sensitivity: 100, ..Default::default() }.cell_threshold(), 4);
    }

    #[test]
    fn masks_hide_their_region_only() {
        let frames: Vec<_> = (0..12).map(|i| (i * 200, picture(10 + i as usize * 20, 100, 40))).collect();
        // the square moves along y 100..140 of 180 (0.55–0.78)
        let covered = MotionParams { masks: vec![Rect { x: 0.0, y: 0.5, w: 1.0, h: 0.5 }], ..Default::default() };
        assert!(run(&mut MotionDetector::new(covered), &frames).is_empty());
        let elsewhere = MotionParams { masks: vec![Rect { x: 0.0, y: 0.0, w: 1.0, h: 0.5 }], ..Default::default() };
        assert!(!run(&mut MotionDetector::new(elsewhere), &frames).is_empty());
        // half of the path masked: still seen in the other half
        let half = MotionParams { masks: vec![Rect { x: 0.0, y: 0.0, w: 0.3, h: 1.0 }], ..Default::default() };
        assert!(!run(&mut MotionDetector::new(half), &frames).is_empty());
    }

    #[test]
    fn cooldown_holds_back_a_new_start() {
        let mut det = MotionDetector::new(MotionParams { cooldown_s: 1, ..Default::default() });
        let mut frames = vec![];
        let mut t = 0;
        let mut x = 0;
        let mut phase = |n: usize, moving: bool, frames: &mut Vec<(u64, Vec<u8>)>| {
            for _ in 0..n {
                if moving {
                    x = (x + 20) % 260;
                }
                frames.push((t, picture(x, 50, 40)));
                t += 200;
            }
        };
        phase(5, true, &mut frames); // start at 200
        phase(5, false, &mut frames); // end 1 s after the last motion (t=1000 → 2000? see below)
        phase(3, true, &mut frames); // within the cooldown after the end: no new start
        phase(10, true, &mut frames);
        let ev = run(&mut det, &frames);
        let starts: Vec<u64> = ev.iter().filter_map(|e| if let MotionEvent::Start { start_ms, .. } = e { Some(*start_ms) } else { None }).collect();
        let ends: Vec<u64> = ev.iter().filter_map(|e| if let MotionEvent::End { end_ms, .. } = e { Some(*end_ms) } else { None }).collect();
        assert_eq!(starts.len(), 2, "{ev:?}");
        assert_eq!(ends.len(), 1, "{ev:?}");
        assert!(starts[1] >= ends[0] + 1000, "a new start waits out the cooldown: {ev:?}");
    }

    #[test]
    fn params_are_checked_all_or_nothing() {
        let p = MotionParams::default();
        let bad = MotionChange { sensitivity: Some(70), masks: Some(vec![[0.5, 0.5, 0.6, 0.1]]), ..Default::default() };
        let e = p.with(&bad).unwrap_err();
        assert_eq!(e.field, "masks");
        assert!(p.with(&MotionChange { min_area_percent: Some(f32::NAN), ..Default::default() }).is_err());
        assert!(p.with(&MotionChange { fps: Some(0), ..Default::default() }).is_err());
        let ok = p.with(&MotionChange { sensitivity: Some(70), masks: Some(vec![[0.0, 0.0, 1.0, 0.25]]), ..Default::default() }).unwrap();
        assert_eq!(ok.sensitivity, 70);
        assert_eq!(ok.masks, vec![Rect { x: 0.0, y: 0.0, w: 1.0, h: 0.25 }]);
    }

    #[test]
    fn a_test_pattern_box_is_seen_and_a_frozen_one_is_not() {
        use crate::capture::testsrc::TestPattern;
        use crate::capture::VideoFrame;
        let p = TestPattern::new(640, 360, 30);
        let mut f = VideoFrame::new(640, 360);
        let mut g = Grid::default();
        // the overlay at the top (code, strip, clock, counter) masked, as in tests/nvr
        let params = MotionParams { masks: vec![Rect { x: 0.0, y: 0.0, w: 1.0, h: 0.3 }], ..Default::default() };
        let mut moving = MotionDetector::new(params.clone());
        let mut frozen = MotionDetector::new(params);
        let (mut out_m, mut out_f) = (vec![], vec![]);
        for i in 0..20u64 {
            let t = 1_764_000_000_000_000 + i * 200_000;
            p.render_box_at(&mut f, i * 6, i * 6, t);
            g.fill(&f.data[..640 * 360], 640, 360, 640);
            moving.push(&g, t / 1000, &mut out_m);
            p.render_box_at(&mut f, i * 6, 0, t);
            g.fill(&f.data[..640 * 360], 640, 360, 640);
            frozen.push(&g, t / 1000, &mut out_f);
        }
        assert!(matches!(out_m.first(), Some(MotionEvent::Start { .. })), "{out_m:?}");
        assert!(out_f.is_empty(), "{out_f:?} (area {})", frozen.state().area_percent);
    }
}
