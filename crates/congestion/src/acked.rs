//! Acknowledged (received) bitrate: bytes the receiver reported as arrived, over the last
//! ~500 ms of *arrival* time. Arrival spacing is the bottleneck's pace, so while the link is
//! saturated this is its capacity, and while the sender is application-limited it is the
//! sending rate. Overuse backs off relative to it.

use std::collections::VecDeque;

/// The window of the reported rate.
pub(crate) const WINDOW_US: i64 = 500_000;
/// A short window: right after the link's capacity drops, the 500 ms rate still mostly
/// describes the old capacity; this one already describes the new one.
pub(crate) const RECENT_WINDOW_US: i64 = 200_000;
/// Hard cap on entries (each packet is acknowledged at most once, so the history cap already
/// bounds this; kept as a second guard).
const MAX_ENTRIES: usize = 16_384;

pub(crate) struct AckedBitrate {
    window_us: i64,
    packets: VecDeque<(i64, u32)>,
    bytes: u64,
    newest: Option<i64>,
    /// Something has left the window: it covers a full WINDOW_US.
    full: bool,
}

impl AckedBitrate {
    pub fn new(window_us: i64) -> Self {
        Self { window_us, packets: VecDeque::new(), bytes: 0, newest: None, full: false }
    }

    pub fn reset(&mut self) {
        *self = Self::new(self.window_us);
    }

    pub fn add(&mut self, arrival_us: i64, size: u32) {
        let newest = self.newest.map_or(arrival_us, |n| n.max(arrival_us));
        self.newest = Some(newest);
        self.packets.push_back((arrival_us, size));
        self.bytes = self.bytes.saturating_add(u64::from(size));
        let oldest_ok = newest.saturating_sub(self.window_us);
        while let Some(&(t, s)) = self.packets.front() {
            if t > oldest_ok && self.packets.len() <= MAX_ENTRIES {
                break;
            }
            self.packets.pop_front();
            self.bytes = self.bytes.saturating_sub(u64::from(s));
            self.full = true;
        }
    }

    /// Bits per second, once there is enough to say.
    pub fn rate(&self) -> Option<f64> {
        let newest = self.newest?;
        let &(oldest, first_size) = self.packets.front()?;
        if self.full {
            Some(self.bytes as f64 * 8.0 / (self.window_us as f64 / 1e6))
        } else {
            // Below 30 % of the window (start of a stream) the rate is too noisy to act on.
            let span = newest.saturating_sub(oldest);
            // The first packet's bytes arrived before the span began.
            (span >= self.window_us * 3 / 10)
                .then(|| self.bytes.saturating_sub(u64::from(first_size)) as f64 * 8.0 / (span as f64 / 1e6))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_over_the_window() {
        let mut a = AckedBitrate::new(WINDOW_US);
        assert_eq!(a.rate(), None);
        // 1000 bytes every 10 ms = 800 kbit/s
        for i in 0..10 {
            a.add(i * 10_000, 1000);
        }
        assert_eq!(a.rate(), None, "90 ms is too short");
        for i in 10..200 {
            a.add(i * 10_000, 1000);
        }
        let r = a.rate().unwrap();
        assert!((r - 800_000.0).abs() < 20_000.0, "{r}");
        // then 2x faster
        for i in 0..100 {
            a.add(2_000_000 + i * 5_000, 1000);
        }
        let r = a.rate().unwrap();
        assert!((r - 1_600_000.0).abs() < 40_000.0, "{r}");
    }

    #[test]
    fn early_estimate_from_the_span() {
        let mut a = AckedBitrate::new(WINDOW_US);
        for i in 0..=20 {
            a.add(1_000_000_000 + i * 10_000, 1000);
        }
        let r = a.rate().unwrap();
        assert!((r - 800_000.0).abs() < 1.0, "{r}");
    }
}
