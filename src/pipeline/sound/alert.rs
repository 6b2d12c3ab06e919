//! The noise alert: "the level stayed over a threshold for a duration", then on until it has
//! stayed under for the reset time (the Home Assistant recipe's `delay_off`; it is also the
//! cooldown: one noisy night gives one alert per episode, not one every two seconds). Pure: a
//! window's times and whether it was over in, a change out.

/// A change of an alert, with times in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    Start { start_ms: u64, peak_db: f32 },
    End { start_ms: u64, end_ms: u64, peak_db: f32 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SustainParams {
    /// Over the threshold this long (gaps shorter than `gap_ms` bridged) to start.
    pub duration_ms: u64,
    /// A pause between words or sobs shorter than this does not break "sustained" (300 ms: one
    /// quiet 250 ms window is bridged, two are not — the test beep's 800 ms pauses always break it).
    pub gap_ms: u64,
    /// Under the threshold this long to end; a new start needs `duration_ms` again.
    pub reset_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Idle { candidate: Option<u64>, last_over: u64 },
    Active { start: u64, last_over: u64, peak: f32 },
}

#[derive(Debug, Clone)]
pub struct Sustain {
    state: State,
}

impl Default for Sustain {
    fn default() -> Self {
        Self { state: State::Idle { candidate: None, last_over: 0 } }
    }
}

impl Sustain {
    pub fn active(&self) -> bool {
        matches!(self.state, State::Active { .. })
    }

    /// One window `[start_ms, end_ms)`: `over` when its level passed the threshold.
    pub fn update(&mut self, p: &SustainParams, start_ms: u64, end_ms: u64, over: bool, peak_db: f32) -> Option<Change> {
        match &mut self.state {
            State::Idle { candidate, last_over } => {
                if over {
                    if candidate.is_none() || start_ms.saturating_sub(*last_over) >= p.gap_ms {
                        *candidate = Some(start_ms);
                    }
                    *last_over = end_ms;
                    let since = candidate.expect("just set");
                    if end_ms.saturating_sub(since) >= p.duration_ms {
                        self.state = State::Active { start: since, last_over: end_ms, peak: peak_db };
                        return Some(Change::Start { start_ms: since, peak_db });
                    }
                } else if candidate.is_some() && end_ms.saturating_sub(*last_over) >= p.gap_ms {
                    *candidate = None;
                }
                None
            }
            State::Active { start, last_over, peak } => {
                if over {
                    *last_over = end_ms;
                    *peak = peak.max(peak_db);
                    None
                } else if end_ms.saturating_sub(*last_over) >= p.reset_ms {
                    let change = Change::End { start_ms: *start, end_ms: *last_over, peak_db: *peak };
                    self.state = State::Idle { candidate: None, last_over: *last_over };
                    Some(change)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: SustainParams = SustainParams { duration_ms: 2000, gap_ms: 300, reset_ms: 60_000 };

    /// Runs 250 ms windows from t = 0 with `over(t)`; returns the changes with their window end.
    fn run(until_ms: u64, over: impl Fn(u64) -> bool) -> Vec<(u64, Change)> {
        let mut s = Sustain::default();
        let mut out = vec![];
        let mut t = 0;
        while t < until_ms {
            if let Some(c) = s.update(&P, t, t + 250, over(t), -20.0) {
                out.push((t + 250, c));
            }
            t += 250;
        }
        out
    }

    #[test]
    fn starts_after_the_duration_and_ends_after_the_reset() {
        let c = run(120_000, |t| (10_000..20_000).contains(&t));
        assert_eq!(c, vec![
            (12_000, Change::Start { start_ms: 10_000, peak_db: -20.0 }),
            (80_000, Change::End { start_ms: 10_000, end_ms: 20_000, peak_db: -20.0 }),
        ]);
    }

    #[test]
    fn short_bursts_and_a_beep_each_second_do_not_start_it() {
        // The built-in test tone: 200 ms on, 800 ms off — the gaps are longer than 300 ms, also
        // when a beep straddles two windows (two over, two under).
        assert!(run(30_000, |t| t % 1000 < 250).is_empty());
        assert!(run(30_000, |t| t % 1000 < 500).is_empty());
        // 1.5 s of noise.
        assert!(run(30_000, |t| (1000..2500).contains(&t)).is_empty());
    }

    #[test]
    fn gaps_shorter_than_the_gap_are_bridged_and_noise_inside_the_reset_extends_it() {
        // 750 ms on / 250 ms off (sobs): sustained.
        let c = run(5_000, |t| t % 1000 < 750);
        assert!(matches!(c.as_slice(), [(_, Change::Start { start_ms: 0, .. })]), "{c:?}");
        // A second burst 30 s after the first ended: still the same episode.
        let c = run(200_000, |t| (0..3000).contains(&t) || (33_000..36_000).contains(&t));
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[1].1, Change::End { start_ms: 0, end_ms: 36_000, peak_db: -20.0 });
    }
}
