//! Events leaving the device for home automation: MQTT with Home Assistant discovery
//! (`mqtt`) and an optional webhook (`webhook`). Both read the room's event log
//! (`rtc::events`) as internal subscribers — a reader that falls behind skips, it never holds
//! up the room or the pipeline — and both are off unless configured.
//!
//! Layer: above `rtc` (the room and its log), below `signal`/`http`/`service`, which start them.

pub mod mqtt;
pub mod webhook;

/// Doubling backoff for reconnects and retries: 1, 2, 4 … `max_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next_s: u64,
    max_s: u64,
}

impl Backoff {
    pub fn new(max_s: u64) -> Self {
        Self { next_s: 1, max_s }
    }

    /// The wait before the next try; doubles each time, up to the maximum.
    pub fn next(&mut self) -> std::time::Duration {
        let d = self.next_s;
        self.next_s = (self.next_s * 2).min(self.max_s);
        std::time::Duration::from_secs(d)
    }

    pub fn reset(&mut self) {
        self.next_s = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_limit_and_resets() {
        let mut b = Backoff::new(30);
        let s: Vec<u64> = (0..7).map(|_| b.next().as_secs()).collect();
        assert_eq!(s, vec![1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.next().as_secs(), 1);
    }
}
