//! Per-frame cost of motion detection on the test pattern (no criterion: a loop and a clock).
//!   cargo bench --bench motion          (MOTION_BENCH_FRAMES=n to change the count)
//! Prints ns per analysed frame for the downscale (`Grid::fill`, one read of the luma plane) and
//! the detector (`MotionDetector::push`), at 640x360, 1280x720 and 1920x1080, with the box moving.
//! Rendering the test pattern is not counted (a camera delivers its frames for free).

use peercam::capture::testsrc::TestPattern;
use peercam::capture::VideoFrame;
use peercam::pipeline::motion::{Grid, MotionDetector, MotionParams, Rect};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn main() {
    let n: u64 = std::env::var("MOTION_BENCH_FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    println!("motion detection, {n} frames per size, box moving, one mask");
    for (w, h) in [(640u32, 360u32), (1280, 720), (1920, 1080)] {
        let pattern = TestPattern::new(w, h, 30);
        let frames: Vec<VideoFrame> = (0..8)
            .map(|i| {
                let mut f = VideoFrame::new(w, h);
                pattern.render(&mut f, i * 6, 1_764_000_000_000_000 + i * 200_000);
                f
            })
            .collect();
        let params = MotionParams { masks: vec![Rect { x: 0.0, y: 0.0, w: 1.0, h: 0.3 }], ..Default::default() };
        let mut det = MotionDetector::new(params);
        let mut grid = Grid::default();
        let mut out = Vec::new();
        let (mut fill, mut push) = (Duration::ZERO, Duration::ZERO);
        let mut events = 0;
        for i in 0..n {
            let f = &frames[(i % 8) as usize];
            let t0 = Instant::now();
            grid.fill(black_box(&f.data[..(w * h) as usize]), w as usize, h as usize, w as usize);
            let t1 = Instant::now();
            det.push(&grid, i * 200, &mut out);
            let t2 = Instant::now();
            fill += t1 - t0;
            push += t2 - t1;
            events += out.len();
            out.clear();
        }
        let per = |d: Duration| d.as_nanos() as f64 / n as f64;
        println!(
            "{w}x{h}: downscale {:.0} ns/frame + detector {:.0} ns/frame = {:.0} ns/frame; at 5 fps {:.3} % of a core ({events} events, grid {}x{})",
            per(fill),
            per(push),
            per(fill) + per(push),
            (per(fill) + per(push)) * 5.0 / 1e9 * 100.0,
            grid.w,
            grid.h
        );
    }
}
