//! Codecs: raw media in, RTP-ready payloads out. Each stream is encoded **once** and packetized
//! once; viewers only stamp headers and encrypt (see `hub` and `rtc`).

pub mod h264;
pub mod jpeg;
pub mod m2m;
pub mod opus;
pub mod passthrough;
pub mod still;
pub mod video;

use bytes::Bytes;

/// One encoded access unit (a video frame or a 20 ms audio frame), already split into RTP
/// payloads. Shared by all viewers through `Arc`.
#[derive(Debug, Clone)]
pub struct EncodedUnit {
    pub payloads: Vec<Bytes>,
    /// An IDR with SPS/PPS in front: a new viewer can start here.
    pub keyframe: bool,
    pub capture_unix_us: u64,
    /// Sequence number of this unit in its stream (for counting and tests).
    pub index: u64,
}

/// RTP timestamp for a capture time at the given clock rate. Derived from wall-clock capture
/// time, so audio and video stay aligned and the receiver's jitter estimate sees real timing.
pub fn rtp_timestamp(capture_unix_us: u64, clock_rate: u32) -> u32 {
    (capture_unix_us as u128 * clock_rate as u128 / 1_000_000) as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn rtp_timestamps_advance_at_the_clock_rate() {
        let a = super::rtp_timestamp(1_000_000, 90_000);
        let b = super::rtp_timestamp(1_033_333, 90_000);
        assert_eq!(b.wrapping_sub(a), 2999);
        assert_eq!(super::rtp_timestamp(20_000, 48_000), 960);
    }
}
