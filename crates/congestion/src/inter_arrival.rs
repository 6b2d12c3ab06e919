//! Groups packets into send-time bursts and yields the delay variation between consecutive
//! groups (libwebrtc `InterArrivalDelta`). A single packet's arrival time is too noisy (pacer
//! granularity, receiver batching); a 5 ms group is what a bottleneck queue acts on.

/// Packets sent within this time of a group's first packet belong to that group.
const GROUP_LENGTH_US: i64 = 5_000;
/// A packet that arrives within this time of the previous one, earlier than its send spacing
/// predicts, was held up with it (e.g. a Wi-Fi aggregate) and joins its group...
const BURST_DELTA_US: i64 = 5_000;
/// ...unless the group already spans this long. (libwebrtc: 100 ms. On a saturated
/// high-rate link every packet arrives within 5 ms of the previous one, so 100 ms would merge
/// several frames into one group, leave the trendline ~10 groups a second and see a growing
/// queue only at ~400 ms; 30 ms keeps a Wi-Fi aggregate together and the groups fine.)
const MAX_BURST_US: i64 = 30_000;
/// Arrival spacing this much larger than the local feedback spacing means the receiver's clock
/// jumped: start over.
const ARRIVAL_OFFSET_THRESHOLD_US: i64 = 3_000_000;
/// This many consecutive groups arriving "before" their predecessor: start over.
const REORDERED_RESET: u32 = 3;

#[derive(Clone, Copy, Debug)]
struct Group {
    first_send: i64,
    /// Latest send time in the group.
    send: i64,
    first_arrival: i64,
    /// Arrival time of the group's last packet.
    complete: i64,
    size: u64,
    /// Local time (feedback processing) of the group's last packet.
    last_system: i64,
}

/// Delay variation inputs for the trendline, between two consecutive groups.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Deltas {
    pub send_ms: f64,
    pub arrival_ms: f64,
}

#[derive(Default)]
pub(crate) struct InterArrival {
    current: Option<Group>,
    prev: Option<Group>,
    reordered: u32,
}

impl InterArrival {
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Feeds one received packet (in arrival order). Returns the deltas between the two
    /// previous groups when this packet starts a new group.
    pub fn add(&mut self, send: i64, arrival: i64, system: i64, size: u32) -> Option<Deltas> {
        let mut out = None;
        let Some(cur) = self.current.as_mut() else {
            self.current = Some(Group {
                first_send: send,
                send,
                first_arrival: arrival,
                complete: arrival,
                size: u64::from(size),
                last_system: system,
            });
            return None;
        };
        if send < cur.first_send {
            // Reordered relative to the current group: says nothing useful.
            return None;
        }
        if Self::new_group(cur, send, arrival) {
            if let Some(prev) = self.prev {
                let send_delta = cur.send.saturating_sub(prev.send);
                let arrival_delta = cur.complete.saturating_sub(prev.complete);
                let system_delta = cur.last_system.saturating_sub(prev.last_system);
                if arrival_delta.saturating_sub(system_delta) >= ARRIVAL_OFFSET_THRESHOLD_US {
                    self.reset();
                    return None;
                }
                if arrival_delta < 0 {
                    // The group arrived before its predecessor: drop this packet; repeated,
                    // start over.
                    self.reordered += 1;
                    if self.reordered >= REORDERED_RESET {
                        self.reset();
                    }
                    return None;
                }
                self.reordered = 0;
                out = Some(Deltas { send_ms: send_delta as f64 / 1000.0, arrival_ms: arrival_delta as f64 / 1000.0 });
            }
            self.prev = Some(*cur);
            *cur = Group {
                first_send: send,
                send,
                first_arrival: arrival,
                complete: arrival,
                size: 0,
                last_system: system,
            };
        } else {
            cur.send = cur.send.max(send);
        }
        let cur = self.current.as_mut().expect("set above");
        cur.size = cur.size.saturating_add(u64::from(size));
        cur.complete = arrival;
        cur.last_system = system;
        out
    }

    fn new_group(cur: &Group, send: i64, arrival: i64) -> bool {
        if Self::belongs_to_burst(cur, send, arrival) {
            return false;
        }
        send.saturating_sub(cur.first_send) > GROUP_LENGTH_US
    }

    fn belongs_to_burst(cur: &Group, send: i64, arrival: i64) -> bool {
        let arrival_delta = arrival.saturating_sub(cur.complete);
        let send_delta = send.saturating_sub(cur.send);
        if send_delta == 0 {
            return true;
        }
        let propagation_delta = arrival_delta.saturating_sub(send_delta);
        propagation_delta < 0
            && arrival_delta <= BURST_DELTA_US
            && arrival.saturating_sub(cur.first_arrival) < MAX_BURST_US
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_5ms_of_send_time() {
        let mut ia = InterArrival::default();
        // groups every 20 ms of send time, 3 packets 1 ms apart each; arrivals spaced 25 ms
        // (the link is slower than the sending): arrival delta - send delta = 5 ms per group.
        let mut deltas = vec![];
        for g in 0..4i64 {
            for p in 0..3i64 {
                let send = g * 20_000 + p * 1_000;
                let arrival = 1_000_000 + g * 25_000 + p * 1_000;
                if let Some(d) = ia.add(send, arrival, arrival, 1200) {
                    deltas.push(d);
                }
            }
        }
        // groups 0,1,2 complete when groups 2,3 start: 2 deltas
        assert_eq!(deltas.len(), 2);
        for d in deltas {
            assert_eq!(d.send_ms, 20.0);
            assert_eq!(d.arrival_ms, 25.0);
        }
    }

    #[test]
    fn burst_arrivals_join_the_group() {
        let mut ia = InterArrival::default();
        // packets sent 10 ms apart but arriving together (1 ms apart) form one group
        let mut n = 0;
        for i in 0..10i64 {
            if ia.add(i * 10_000, 500_000 + i * 1_000, 0, 1000).is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 0);
        assert!(ia.prev.is_none());
    }

    #[test]
    fn clock_jump_resets() {
        let mut ia = InterArrival::default();
        for g in 0..3i64 {
            ia.add(g * 10_000, g * 10_000, g * 10_000, 100);
        }
        // receiver clock jumps 10 s while the local clock moves 10 ms; seen when the group
        // after the jump starts
        assert!(ia.add(30_000, 10_030_000, 30_000, 100).is_some());
        assert!(ia.add(40_000, 10_040_000, 40_000, 100).is_none());
        assert!(ia.prev.is_none());
    }
}
