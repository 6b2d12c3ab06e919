//! Loss accounting from transport-cc feedback: the fraction of reported packets that were
//! lost, over the recent feedback.

use std::collections::VecDeque;

/// A loss fraction is only acted on once it covers this many packets. Random loss needs a
/// large sample: over 20 packets a link with 3 % random loss reads > 10 % about one time in
/// fifty, which would ratchet the estimate down; over 100 about one in 3000.
pub(crate) const MIN_PACKETS: i64 = 100;
/// Within a loss episode (shortly after a cut) a smaller fresh sample confirms it.
pub(crate) const MIN_PACKETS_IN_EPISODE: i64 = 30;
/// The window covers at least this much recent feedback...
const MIN_AGE_US: i64 = 1_000_000;
/// ...and at most this much (fewer than MIN_PACKETS by then: not enough to say).
const MAX_AGE_US: i64 = 5_000_000;
/// Bound on entries whatever the feedback rate.
const MAX_ENTRIES: usize = 512;

#[derive(Clone, Copy)]
struct Entry {
    time: i64,
    received: i64,
    lost: i64,
}

#[derive(Default)]
pub(crate) struct LossWindow {
    entries: VecDeque<Entry>,
    received: i64,
    lost: i64,
}

impl LossWindow {
    /// Forgets everything: after a cut, the losses that caused it must not cause the next.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Adds one feedback's counts (`lost` may be negative: packets reported lost earlier and
    /// received now).
    pub fn add(&mut self, now: i64, received: i64, lost: i64) {
        self.entries.push_back(Entry { time: now, received, lost });
        self.received = self.received.saturating_add(received);
        self.lost = self.lost.saturating_add(lost);
        while let Some(&f) = self.entries.front() {
            let age = now.saturating_sub(f.time);
            let rest = self.received.saturating_sub(f.received).saturating_add(self.lost.saturating_sub(f.lost));
            let drop =
                self.entries.len() > MAX_ENTRIES || age > MAX_AGE_US || (age > MIN_AGE_US && rest >= MIN_PACKETS);
            if !drop {
                break;
            }
            self.entries.pop_front();
            self.received = self.received.saturating_sub(f.received);
            self.lost = self.lost.saturating_sub(f.lost);
        }
    }

    /// The lost fraction, when the window holds at least `min_packets`.
    pub fn fraction(&self, min_packets: i64) -> Option<f64> {
        let lost = self.lost.max(0);
        let total = self.received.max(0).saturating_add(lost);
        (total >= min_packets).then(|| (lost as f64 / total as f64).clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_enough_packets_and_slides() {
        let mut w = LossWindow::default();
        w.add(0, 40, 10);
        assert_eq!(w.fraction(MIN_PACKETS), None);
        assert_eq!(w.fraction(MIN_PACKETS_IN_EPISODE), Some(0.2));
        w.add(100_000, 45, 5);
        assert_eq!(w.fraction(MIN_PACKETS), Some(0.15));
        // 2 s later, only clean feedback counts (once it alone has enough packets)
        for i in 0..20 {
            w.add(2_000_000 + i * 100_000, 10, 0);
        }
        assert_eq!(w.fraction(MIN_PACKETS), Some(0.0));
    }

    #[test]
    fn late_arrivals_correct_the_count() {
        let mut w = LossWindow::default();
        w.add(0, 90, 10);
        w.add(1, 10, -10);
        assert_eq!(w.fraction(MIN_PACKETS), Some(0.0));
    }
}
