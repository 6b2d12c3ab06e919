//! Talk-back: a viewer's microphone on the device's speaker, one talker at a time.
//!
//! ```text
//! viewer's audio RTP ──► (only the talker's) ──► JitterBuffer ──► speaker thread:
//!                                                   Opus decode → gain/fade → resample → ALSA
//! ```
//! [`TalkArbiter`] decides who holds the speaker; [`jitter::JitterBuffer`] orders and paces
//! packets; both are pure. [`speaker::Speaker`] is the thread that drives them: jitter buffer →
//! `codec::opus::OpusDecoder` → `capture::alsa::AlsaSpeaker` (formats, negotiation, fade,
//! resampling and the device live there, shared with the microphone).

pub mod jitter;
pub mod lullaby;
pub mod speaker;

use std::time::{Duration, Instant};

/// An explicit talker (control channel `talk request`) whose audio stops this long gives the
/// speaker back, so a page that froze cannot hold it forever.
pub const EXPLICIT_IDLE: Duration = Duration::from_secs(10);
/// A WHEP client without a control channel holds the speaker only while its packets flow.
pub const IMPLICIT_IDLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub viewer: u64,
    /// Asked with `talk request` (vs. just started sending audio).
    pub explicit: bool,
    last_activity: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Granted,
    /// Already the holder.
    Already,
    Busy(u64),
}

/// Who may talk. Pure: time comes in as arguments.
#[derive(Debug, Default)]
pub struct TalkArbiter {
    holder: Option<Holder>,
}

impl TalkArbiter {
    pub fn holder(&self) -> Option<Holder> {
        self.holder
    }

    pub fn talker(&self) -> Option<u64> {
        self.holder.map(|h| h.viewer)
    }

    /// `talk request`.
    pub fn request(&mut self, viewer: u64, now: Instant) -> Claim {
        match &mut self.holder {
            Some(h) if h.viewer == viewer => {
                h.explicit = true;
                h.last_activity = now;
                Claim::Already
            }
            Some(h) => Claim::Busy(h.viewer),
            None => {
                self.holder = Some(Holder { viewer, explicit: true, last_activity: now });
                Claim::Granted
            }
        }
    }

    /// `talk release`, or the viewer left. True if it was the holder.
    pub fn release(&mut self, viewer: u64) -> bool {
        if self.talker() == Some(viewer) {
            self.holder = None;
            true
        } else {
            false
        }
    }

    /// An audio packet from `viewer`: whether it goes to the speaker. A free speaker is taken
    /// implicitly (WHEP clients that just send audio), unless `implicit_allowed` is false
    /// (viewers with a control channel must ask).
    pub fn packet(&mut self, viewer: u64, implicit_allowed: bool, now: Instant) -> (bool, Claim) {
        match &mut self.holder {
            Some(h) if h.viewer == viewer => {
                h.last_activity = now;
                (true, Claim::Already)
            }
            Some(h) => (false, Claim::Busy(h.viewer)),
            None if implicit_allowed => {
                self.holder = Some(Holder { viewer, explicit: false, last_activity: now });
                (true, Claim::Granted)
            }
            None => (false, Claim::Busy(0)),
        }
    }

    /// Gives the speaker back when its holder went quiet. Returns who lost it.
    pub fn expire(&mut self, now: Instant) -> Option<u64> {
        let h = self.holder?;
        let limit = if h.explicit { EXPLICIT_IDLE } else { IMPLICIT_IDLE };
        if now.duration_since(h.last_activity) > limit {
            self.holder = None;
            return Some(h.viewer);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_talker_at_a_time() {
        let t = Instant::now();
        let mut a = TalkArbiter::default();
        assert_eq!(a.request(1, t), Claim::Granted);
        assert_eq!(a.request(2, t), Claim::Busy(1));
        assert_eq!(a.request(1, t), Claim::Already);
        assert!(!a.release(2), "a non-holder cannot release");
        assert!(a.release(1));
        assert_eq!(a.request(2, t), Claim::Granted);
        assert_eq!(a.packet(1, true, t), (false, Claim::Busy(2)), "others' audio is not played");
        assert_eq!(a.packet(2, true, t).0, true);
    }

    #[test]
    fn implicit_claims_follow_the_packets() {
        let t = Instant::now();
        let mut a = TalkArbiter::default();
        assert_eq!(a.packet(5, false, t), (false, Claim::Busy(0)), "control-channel viewers must ask");
        assert_eq!(a.packet(5, true, t), (true, Claim::Granted));
        assert_eq!(a.expire(t + Duration::from_millis(900)), None);
        assert_eq!(a.packet(5, true, t + Duration::from_millis(900)).0, true);
        assert_eq!(a.expire(t + Duration::from_millis(1800)), None);
        assert_eq!(a.expire(t + Duration::from_millis(2000)), Some(5));
        assert_eq!(a.talker(), None);
    }

    #[test]
    fn explicit_talkers_expire_after_long_silence() {
        let t = Instant::now();
        let mut a = TalkArbiter::default();
        a.request(3, t);
        assert_eq!(a.expire(t + Duration::from_secs(5)), None);
        assert_eq!(a.expire(t + Duration::from_secs(11)), Some(3));
    }
}
