//! Trendline estimator and overuse detector (libwebrtc `TrendlineEstimator`).
//!
//! The accumulated inter-group delay variation is how much the bottleneck queue has grown since
//! the start; its slope over the last ~20 groups estimates (send rate - capacity) / capacity.
//! The slope, scaled, is compared with a threshold that adapts to the path's own noise so that
//! a jittery link (Wi-Fi) does not read as permanent overuse, nor a clean one hide real growth.

use std::collections::VecDeque;

/// Groups in the linear regression.
const WINDOW: usize = 20;
/// Exponential smoothing of the accumulated delay before the regression.
const SMOOTHING: f64 = 0.9;
/// Scales the slope into "ms" comparable with the threshold.
const THRESHOLD_GAIN: f64 = 4.0;
/// The slope counts more as more deltas have been seen, up to this many.
const MIN_NUM_DELTAS: u32 = 60;
const DELTA_COUNTER_MAX: u32 = 1000;
/// Adaptive threshold: how fast it rises towards the signal (when the signal is above it) and
/// falls (when below), per ms; its start and bounds, ms.
const K_UP: f64 = 0.0087;
const K_DOWN: f64 = 0.039;
pub(crate) const INITIAL_THRESHOLD: f64 = 12.5;
const MIN_THRESHOLD: f64 = 6.0;
const MAX_THRESHOLD: f64 = 600.0;
/// Spikes this far above the threshold (a sudden capacity drop) do not move it: it must stay
/// sensitive exactly then.
const MAX_ADAPT_OFFSET: f64 = 15.0;
const MAX_ADAPT_STEP_MS: f64 = 100.0;
/// Overuse must persist this long (in send time) and over 2+ groups before it is signalled.
const OVERUSE_TIME_MS: f64 = 10.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Usage {
    Normal,
    Overusing,
    Underusing,
}

pub(crate) struct Trendline {
    /// (arrival ms since the first, smoothed accumulated delay ms)
    window: VecDeque<(f64, f64)>,
    num_deltas: u32,
    first_arrival_ms: Option<f64>,
    accumulated: f64,
    smoothed: f64,
    prev_trend: f64,
    trend: f64,
    modified_trend: f64,
    threshold: f64,
    last_threshold_update_ms: Option<f64>,
    time_over_using: Option<f64>,
    overuse_counter: u32,
    usage: Usage,
}

impl Default for Trendline {
    fn default() -> Self {
        Self {
            window: VecDeque::with_capacity(WINDOW + 1),
            num_deltas: 0,
            first_arrival_ms: None,
            accumulated: 0.0,
            smoothed: 0.0,
            prev_trend: 0.0,
            trend: 0.0,
            modified_trend: 0.0,
            threshold: INITIAL_THRESHOLD,
            last_threshold_update_ms: None,
            time_over_using: None,
            overuse_counter: 0,
            usage: Usage::Normal,
        }
    }
}

impl Trendline {
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The regression slope (dimensionless: ms of queue growth per ms).
    pub fn trend(&self) -> f64 {
        self.trend
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    pub fn modified_trend(&self) -> f64 {
        self.modified_trend
    }

    /// One inter-group delta; `arrival_ms` is the arrival time of the newer group.
    pub fn update(&mut self, recv_delta_ms: f64, send_delta_ms: f64, arrival_ms: f64) {
        if !(recv_delta_ms.is_finite() && send_delta_ms.is_finite() && arrival_ms.is_finite()) {
            return;
        }
        let delta = recv_delta_ms - send_delta_ms;
        self.num_deltas = (self.num_deltas + 1).min(DELTA_COUNTER_MAX);
        let first = *self.first_arrival_ms.get_or_insert(arrival_ms);
        self.accumulated += delta;
        self.smoothed = SMOOTHING * self.smoothed + (1.0 - SMOOTHING) * self.accumulated;
        self.window.push_back((arrival_ms - first, self.smoothed));
        if self.window.len() > WINDOW {
            self.window.pop_front();
        }
        let mut trend = self.prev_trend;
        if self.window.len() == WINDOW
            && let Some(slope) = linear_fit_slope(&self.window)
        {
            trend = slope;
        }
        self.trend = trend;
        self.detect(trend, send_delta_ms, arrival_ms);
    }

    fn detect(&mut self, trend: f64, send_delta_ms: f64, now_ms: f64) {
        if self.num_deltas < 2 {
            self.usage = Usage::Normal;
            return;
        }
        let modified = f64::from(self.num_deltas.min(MIN_NUM_DELTAS)) * trend * THRESHOLD_GAIN;
        self.modified_trend = modified;
        if modified > self.threshold {
            let t = match self.time_over_using {
                // Assume we have been overusing for half the time since the previous group.
                None => send_delta_ms / 2.0,
                Some(t) => t + send_delta_ms,
            };
            self.time_over_using = Some(t);
            self.overuse_counter += 1;
            // Only while the trend is still rising: a falling one is already being drained.
            if t > OVERUSE_TIME_MS && self.overuse_counter > 1 && trend >= self.prev_trend {
                self.time_over_using = Some(0.0);
                self.overuse_counter = 0;
                self.usage = Usage::Overusing;
            }
        } else if modified < -self.threshold {
            self.time_over_using = None;
            self.overuse_counter = 0;
            self.usage = Usage::Underusing;
        } else {
            self.time_over_using = None;
            self.overuse_counter = 0;
            self.usage = Usage::Normal;
        }
        self.prev_trend = trend;
        self.update_threshold(modified, now_ms);
    }

    fn update_threshold(&mut self, modified: f64, now_ms: f64) {
        let last = *self.last_threshold_update_ms.get_or_insert(now_ms);
        if modified.abs() > self.threshold + MAX_ADAPT_OFFSET {
            self.last_threshold_update_ms = Some(now_ms);
            return;
        }
        let k = if modified.abs() < self.threshold { K_DOWN } else { K_UP };
        let dt = (now_ms - last).clamp(0.0, MAX_ADAPT_STEP_MS);
        self.threshold += k * (modified.abs() - self.threshold) * dt;
        self.threshold = self.threshold.clamp(MIN_THRESHOLD, MAX_THRESHOLD);
        self.last_threshold_update_ms = Some(now_ms);
    }
}

fn linear_fit_slope(points: &VecDeque<(f64, f64)>) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
    let (xa, ya) = (sx / n, sy / n);
    let (num, den) =
        points.iter().fold((0.0, 0.0), |(num, den), &(x, y)| (num + (x - xa) * (y - ya), den + (x - xa) * (x - xa)));
    (den != 0.0 && num.is_finite() && den.is_finite()).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `n` groups `send_ms` apart whose arrivals are `send_ms * ratio` apart.
    fn feed(t: &mut Trendline, n: usize, send_ms: f64, ratio: f64, arrival: &mut f64) -> Vec<Usage> {
        (0..n)
            .map(|_| {
                *arrival += send_ms * ratio;
                t.update(send_ms * ratio, send_ms, *arrival);
                t.usage()
            })
            .collect()
    }

    #[test]
    fn steady_path_is_normal() {
        let mut t = Trendline::default();
        let mut a = 0.0;
        let u = feed(&mut t, 200, 33.0, 1.0, &mut a);
        assert!(u.iter().all(|&u| u == Usage::Normal));
        assert!(t.trend().abs() < 1e-9);
        // with no noise the threshold decays to its floor
        assert_eq!(t.threshold(), MIN_THRESHOLD);
    }

    #[test]
    fn growing_queue_is_overuse_and_draining_is_underuse() {
        let mut t = Trendline::default();
        let mut a = 0.0;
        feed(&mut t, 100, 33.0, 1.0, &mut a);
        // sending 20 % above capacity: arrivals spread 1.2x
        let u = feed(&mut t, 30, 33.0, 1.2, &mut a);
        let first = u.iter().position(|&u| u == Usage::Overusing).expect("overuse detected");
        assert!(first < 10, "detected after {first} groups");
        assert!(t.trend() > 0.05);
        let u = feed(&mut t, 30, 33.0, 0.7, &mut a);
        assert!(u.contains(&Usage::Underusing));
    }

    #[test]
    fn small_overuse_is_not_detected_before_the_window_fills() {
        let mut t = Trendline::default();
        let mut a = 0.0;
        let u = feed(&mut t, WINDOW - 1, 33.0, 1.5, &mut a);
        assert!(u.iter().all(|&u| u == Usage::Normal));
    }

    #[test]
    fn threshold_stays_in_bounds_and_ignores_garbage() {
        let mut t = Trendline::default();
        let mut a = 0.0;
        for i in 0..1000 {
            let r = if i % 2 == 0 { 3.0 } else { 0.01 };
            feed(&mut t, 1, 33.0, r, &mut a);
            assert!((MIN_THRESHOLD..=MAX_THRESHOLD).contains(&t.threshold()));
        }
        t.update(f64::NAN, 1.0, 1.0);
        t.update(f64::INFINITY, 1.0, 1.0);
        assert!(t.trend().is_finite());
    }
}
