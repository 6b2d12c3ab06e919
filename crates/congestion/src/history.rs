//! Bounded history of sent packets, keyed by the unwrapped transport-wide sequence number.

use std::collections::VecDeque;

/// Most packets remembered. At 20 Mbit/s of 1200-byte packets that is ~5 s, far more than any
/// feedback delay worth using; it bounds memory whatever the caller or the peer does.
pub(crate) const MAX_PACKETS: usize = 10_000;
/// Packets older than this are forgotten even below the cap: feedback about them is too late
/// to say anything about the link as it is now.
const MAX_AGE_US: i64 = 5_000_000;
/// A sequence number this far *behind* the newest one is not a reordered call but a restarted
/// counter (new transport, renegotiation): the history starts over.
const MAX_REORDER: i64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Unreported,
    Lost,
    Received,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    pub seq: u64,
    pub send_us: i64,
    pub size: u32,
    pub status: Status,
    /// Bytes sent up to and including this packet (for the data in flight).
    pub cum: u64,
}

#[derive(Default)]
pub(crate) struct History {
    packets: VecDeque<Sent>,
    /// Newest (highest) unwrapped sequence number seen, the reference for unwrapping.
    newest: Option<u64>,
    /// Bytes of every packet recorded so far.
    total: u64,
    /// `cum` of the newest packet feedback has reported on (received or lost).
    reported: u64,
}

impl History {
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Records a sent packet. Returns false when it was ignored (a duplicate).
    pub fn on_sent(&mut self, seq16: u16, size: usize, now_us: i64) -> bool {
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        let cum = self.total + u64::from(size);
        let entry = |seq| Sent { seq, send_us: now_us, size, status: Status::Unreported, cum };
        let ok = match self.newest {
            None => {
                // Start well above zero so that unwrapping backwards never underflows.
                let seq = (1u64 << 32) + u64::from(seq16);
                self.packets.push_back(entry(seq));
                self.newest = Some(seq);
                true
            }
            Some(newest) => {
                let d = i64::from(seq16.wrapping_sub(newest as u16) as i16);
                if d > 0 {
                    let seq = newest + d as u64;
                    self.packets.push_back(entry(seq));
                    self.newest = Some(seq);
                    true
                } else if d == 0 {
                    false
                } else if -d <= MAX_REORDER {
                    // Sent-notifications may come out of order (several tasks sending): keep
                    // the history sorted.
                    let seq = newest - d.unsigned_abs();
                    match self.packets.binary_search_by_key(&seq, |p| p.seq) {
                        Ok(_) => false,
                        Err(i) => {
                            self.packets.insert(i, entry(seq));
                            true
                        }
                    }
                } else {
                    // Counter restarted: everything remembered belongs to the old numbering.
                    self.packets.clear();
                    self.reported = self.total;
                    let seq = ((newest >> 16) + 2) << 16 | u64::from(seq16);
                    self.packets.push_back(entry(seq));
                    self.newest = Some(seq);
                    true
                }
            }
        };
        if ok {
            self.total = cum;
        }
        self.prune(now_us);
        ok
    }

    /// Feedback reported on this packet: everything sent before it has left the network.
    pub fn reported(&mut self, cum: u64) {
        self.reported = self.reported.max(cum);
    }

    /// Bytes sent after the newest packet feedback has reported on.
    pub fn in_flight(&self) -> u64 {
        self.total.saturating_sub(self.reported)
    }

    pub fn prune(&mut self, now_us: i64) {
        while self.packets.len() > MAX_PACKETS {
            self.packets.pop_front();
        }
        let oldest_ok = now_us.saturating_sub(MAX_AGE_US);
        while self.packets.front().is_some_and(|p| p.send_us < oldest_ok) {
            self.packets.pop_front();
        }
    }

    /// The remembered packet a 16-bit sequence number from feedback refers to: the most recent
    /// packet (not newer than the newest sent) with those low 16 bits, if still remembered.
    pub fn get_mut(&mut self, seq16: u16) -> Option<&mut Sent> {
        let newest = self.newest?;
        let back = u64::from((newest as u16).wrapping_sub(seq16));
        let seq = newest.checked_sub(back)?;
        let i = self.packets.binary_search_by_key(&seq, |p| p.seq).ok()?;
        self.packets.get_mut(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_across_the_16_bit_boundary() {
        let mut h = History::default();
        for (i, s) in (65530u16..=65535).chain(0..10).enumerate() {
            assert!(h.on_sent(s, 100, i as i64 * 1000));
        }
        assert_eq!(h.len(), 16);
        let a = h.get_mut(65535).unwrap().seq;
        let b = h.get_mut(0).unwrap().seq;
        assert_eq!(b, a + 1);
        assert!(h.get_mut(20).is_none(), "not sent yet");
        assert!(h.get_mut(65000).is_none(), "never sent");
    }

    #[test]
    fn duplicates_ignored_and_reordered_sends_kept_sorted() {
        let mut h = History::default();
        assert!(h.on_sent(10, 100, 0));
        assert!(h.on_sent(12, 100, 0));
        assert!(!h.on_sent(12, 100, 0));
        assert!(h.on_sent(11, 100, 0));
        assert!(!h.on_sent(11, 100, 0));
        let seqs: Vec<u64> = h.packets.iter().map(|p| p.seq - h.packets[0].seq).collect();
        assert_eq!(seqs, vec![0, 1, 2]);
    }

    #[test]
    fn restarted_counter_starts_over() {
        let mut h = History::default();
        for s in 30_000..30_100u16 {
            h.on_sent(s, 100, 0);
        }
        assert!(h.on_sent(5, 100, 0));
        assert_eq!(h.len(), 1);
        assert!(h.on_sent(6, 100, 0));
        assert!(h.get_mut(5).is_some() && h.get_mut(6).is_some());
    }

    #[test]
    fn bounded_by_count_and_age() {
        let mut h = History::default();
        for i in 0..50_000u32 {
            h.on_sent(i as u16, 1200, 0);
        }
        assert_eq!(h.len(), MAX_PACKETS);
        h.on_sent(50_000u32 as u16, 1200, 10_000_000);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn in_flight_counts_bytes_after_the_newest_reported_packet() {
        let mut h = History::default();
        for s in 0..10u16 {
            h.on_sent(s, 1000, 0);
        }
        assert_eq!(h.in_flight(), 10_000);
        let cum = h.get_mut(3).unwrap().cum;
        h.reported(cum);
        assert_eq!(h.in_flight(), 6_000);
        // an older report does not move it back
        let old = h.get_mut(1).unwrap().cum;
        h.reported(old);
        assert_eq!(h.in_flight(), 6_000);
        h.on_sent(10, 500, 0);
        assert_eq!(h.in_flight(), 6_500);
    }
}
