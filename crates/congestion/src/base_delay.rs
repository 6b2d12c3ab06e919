//! The lowest one-way delay over the last ~30 s: the delay of an empty queue. Windowed (per
//! second minima) so that clock drift between the two ends and route changes age out.

use std::collections::VecDeque;

const BUCKET_US: i64 = 1_000_000;
const BUCKETS: usize = 30;

#[derive(Default)]
pub(crate) struct BaseDelay {
    /// (bucket start, lowest delay in it), oldest first.
    buckets: VecDeque<(i64, i64)>,
}

impl BaseDelay {
    pub fn reset(&mut self) {
        self.buckets.clear();
    }

    pub fn add(&mut self, now: i64, delay: i64) {
        match self.buckets.back_mut() {
            Some((start, min)) if now.saturating_sub(*start) < BUCKET_US => *min = (*min).min(delay),
            _ => self.buckets.push_back((now, delay)),
        }
        let oldest_ok = now.saturating_sub(BUCKET_US.saturating_mul(BUCKETS as i64));
        while self.buckets.len() > BUCKETS || self.buckets.front().is_some_and(|&(t, _)| t < oldest_ok) {
            self.buckets.pop_front();
        }
    }

    pub fn get(&self) -> Option<i64> {
        self.buckets.iter().map(|&(_, d)| d).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windowed_minimum() {
        let mut b = BaseDelay::default();
        assert_eq!(b.get(), None);
        b.add(0, 50);
        b.add(500_000, 40);
        b.add(2_000_000, 90);
        assert_eq!(b.get(), Some(40));
        // 40 s later the old minimum has aged out
        b.add(40_000_000, 70);
        assert_eq!(b.get(), Some(70));
        for i in 0..1000 {
            b.add(40_000_000 + i * 700_000, 100);
        }
        assert!(b.buckets.len() <= BUCKETS);
    }
}
