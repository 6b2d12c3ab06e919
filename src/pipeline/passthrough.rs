//! The encode thread's path for camera H.264 (`Frame::H264`): no encoder, the camera's access
//! units go through `codec::passthrough` into the hub. IDR requests (new viewer, PLI, units lost
//! on the way) go back to the camera over a pipeline-owned channel ([`ToCamera`]) that the
//! capture thread, which owns the camera, serves between frames (`VideoSource::request_keyframe`
//! becomes the V4L2 force-key-frame control); a profile browsers do not take makes the camera
//! drop its H.264 mode (`VideoSource::refuse_h264`).

use super::Stats;
use crate::capture::{H264Frame, H264_REOPEN_JUMP};
use crate::codec::passthrough::{H264Passthrough, PassthroughError};
use crate::hub::{Hub, KeyframeGate};
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

/// While units are held back for want of an IDR, the camera is asked again this often.
const IDR_RETRY: Duration = Duration::from_millis(500);

/// A request from the encode thread to the camera.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ToCamera {
    /// Send an IDR soon.
    Keyframe,
    /// Its H.264 cannot be passed through (the reason): stop using its H.264 modes.
    RefuseH264(String),
    /// Set its bitrate (bit/s) to what the viewers' links carry.
    Bitrate(u32),
}

/// A camera bitrate change smaller than this share is not worth a control call.
const BITRATE_DEADBAND: f64 = 0.1;
/// Going down follows the links at once (a queue is building); going up at most this often.
const BITRATE_UP_EVERY: Duration = Duration::from_secs(1);
const BITRATE_DOWN_EVERY: Duration = Duration::from_millis(200);

/// Whether to ask the camera for `want` bit/s, given what was asked last and when.
pub(super) fn bitrate_update(last: Option<(u32, Instant)>, want: u32, now: Instant) -> Option<u32> {
    let Some((was, at)) = last else { return Some(want) };
    let change = (want as f64 - was as f64) / (was.max(1) as f64);
    let since = now.saturating_duration_since(at);
    let due = if change < 0.0 { since >= BITRATE_DOWN_EVERY } else { since >= BITRATE_UP_EVERY };
    (change.abs() >= BITRATE_DEADBAND && due).then_some(want)
}

/// Requests waiting for the capture thread. IDR requests are rate-limited, so a full queue
/// means the capture thread is stuck in a dequeue; a request dropped then is not lost for
/// good: a held-back stream asks again every `IDR_RETRY`, a refused profile at its next IDR.
pub(super) const TO_CAMERA_QUEUE: usize = 8;

#[derive(Default)]
pub(super) struct CameraH264 {
    pt: H264Passthrough,
    last_sequence: Option<u64>,
    last_idr_request: Option<Instant>,
    failing: bool,
    announced: bool,
    /// The bitrate last asked of the camera, and when.
    last_bitrate: Option<(u32, Instant)>,
}

impl CameraH264 {
    /// Publishes one camera access unit (or holds it back until an IDR).
    /// `ceiling_bps` is the configured bitrate: the camera follows the viewers' links below it.
    pub(super) fn publish(
        &mut self,
        frame: &H264Frame,
        hub: &Hub,
        gate: &mut KeyframeGate,
        stats: &Stats,
        camera: &SyncSender<ToCamera>,
        ceiling_bps: u32,
    ) {
        let meta = frame;
        match self.last_sequence {
            Some(last) if meta.sequence >= last + H264_REOPEN_JUMP => {
                self.pt.reset();
                self.announced = false;
            }
            Some(last) if meta.sequence != last + 1 => {
                // Units were lost: ask for an IDR now (then every IDR_RETRY until it comes).
                self.pt.discontinuity();
                self.last_idr_request = None;
            }
            _ => {}
        }
        self.last_sequence = Some(meta.sequence);

        let now = Instant::now();
        let force = gate.take_request(&hub.video, now);
        let retry = self.pt.waiting_for_idr() && self.last_idr_request.is_none_or(|t| now - t >= IDR_RETRY);
        if force || retry {
            let _ = camera.try_send(ToCamera::Keyframe);
            self.last_idr_request = Some(now);
        }

        // The camera encodes once for every viewer, like the main rung: it follows the links of
        // the best-connected viewers (the ladder's main target), not the worst.
        let want = hub.rates.targets().main_bps.min(ceiling_bps);
        if let Some(bps) = bitrate_update(self.last_bitrate, want, now)
            && camera.try_send(ToCamera::Bitrate(bps)).is_ok()
        {
            self.last_bitrate = Some((bps, now));
        }

        let t0 = Instant::now();
        match self.pt.push(&frame.data, frame.capture_unix_us) {
            Ok(Some(unit)) => {
                stats.encode_us.store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                if unit.keyframe {
                    gate.saw_keyframe(now);
                    if !self.announced {
                        if let Some(sps) = self.pt.sps_info() {
                            log::info!("camera H.264 passed through: {}x{}, {sps}", frame.width, frame.height);
                        }
                        self.announced = true;
                    }
                }
                self.failing = false;
                hub.video.publish(unit);
            }
            Ok(None) => {}
            Err(e @ PassthroughError::Profile(_)) => {
                // Logged by the camera, which now reopens in a format peercam encodes itself.
                let _ = camera.try_send(ToCamera::RefuseH264(e.to_string()));
                self.pt.reset();
            }
            Err(e) => {
                if !self.failing {
                    log::warn!("camera H.264: {e}; waiting for the next IDR");
                    self.failing = true;
                }
                self.pt.discontinuity();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The encode thread's passthrough fed as the V4L2 camera feeds it: the real x264 fixture
    //! (tests/fixtures/h264), one access unit per frame. The same stream through a real V4L2
    //! device (v4l2loopback, out of tree) is decoded by aiortc in the VM rig (tests/vm); the IDR
    //! request path is tested here, as v4l2loopback has no force-key-frame control.
    use super::*;
    use std::sync::mpsc::{sync_channel, Receiver};
    use crate::codec::passthrough::access_units;
    use crate::hub::Next;
    use std::sync::Arc;

    fn units(name: &str) -> Vec<Vec<u8>> {
        let path = format!("{}/tests/fixtures/h264/{name}", env!("CARGO_MANIFEST_DIR"));
        access_units(&std::fs::read(path).unwrap())
    }

    fn frame(au: &[u8], sequence: u64) -> H264Frame {
        H264Frame { width: 320, height: 240, data: au.to_vec(), capture_unix_us: 1_000_000 + sequence * 66_666, sequence }
    }

    /// Whether the camera was asked for an IDR since last time (requests queue up; the camera
    /// serves them as one).
    fn idr_asked(rx: &Receiver<ToCamera>) -> bool {
        rx.try_iter().filter(|r| *r == ToCamera::Keyframe).count() > 0
    }

    fn drain(r: &mut crate::hub::Reader, hub: &Hub) -> Vec<Arc<crate::codec::EncodedUnit>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let mut got = vec![];
        rt.block_on(async {
            while let Ok(Next::Unit(u)) = tokio::time::timeout(Duration::from_millis(20), r.next(&hub.video)).await {
                got.push(u);
            }
        });
        got
    }

    #[test]
    fn camera_units_reach_the_hub_and_idr_requests_reach_the_camera() {
        let (hub, stats, (link, camera)) = (Hub::new(), Stats::default(), sync_channel(TO_CAMERA_QUEUE));
        let mut gate = KeyframeGate::new(Duration::from_millis(250));
        let mut pt = CameraH264::default();
        let aus = units("cam-cb-320x240.h264");
        // A viewer joins mid-GOP (the camera has been streaming): its join asks the camera for
        // an IDR, and P-frames are held back until one comes.
        let mut reader = hub.video.subscribe();
        pt.publish(&frame(&aus[0], 1), &hub, &mut gate, &stats, &link, 2_500_000); // SPS/PPS + IDR
        assert!(idr_asked(&camera), "a join asks the camera for an IDR");
        for (i, au) in aus.iter().enumerate().skip(1) {
            pt.publish(&frame(au, 1 + i as u64), &hub, &mut gate, &stats, &link, 2_500_000);
        }
        let got = drain(&mut reader, &hub);
        assert_eq!(got.len(), 20);
        assert_eq!(got.iter().filter(|u| u.keyframe).count(), 2);
        assert_eq!(hub.video.keyframes_published(), 2);
        assert!(!idr_asked(&camera), "no more requests while the stream is whole");

        // A unit lost on the way (sequence jump): held back until an IDR, which is asked for.
        pt.publish(&frame(&aus[3], 30), &hub, &mut gate, &stats, &link, 2_500_000);
        assert!(idr_asked(&camera));
        assert!(drain(&mut reader, &hub).is_empty(), "P-frame after a gap is not sent");
        pt.publish(&frame(&aus[10], 31), &hub, &mut gate, &stats, &link, 2_500_000);
        let got = drain(&mut reader, &hub);
        assert!(got.len() == 1 && got[0].keyframe, "the next IDR (SPS/PPS put back) resumes the stream");
        assert_eq!(got[0].payloads[0][0] & 0x1f, 24, "STAP-A with SPS/PPS first");

        // A PLI goes through the gate to the camera.
        std::thread::sleep(Duration::from_millis(260));
        hub.video.request_keyframe();
        pt.publish(&frame(&aus[11], 32), &hub, &mut gate, &stats, &link, 2_500_000);
        assert!(idr_asked(&camera), "PLI → force-key-frame");
    }

    #[test]
    fn the_camera_bitrate_follows_the_links_within_the_ceiling() {
        let (hub, stats, (link, camera)) = (Hub::new(), Stats::default(), sync_channel(TO_CAMERA_QUEUE));
        let mut gate = KeyframeGate::new(Duration::from_millis(250));
        let mut pt = CameraH264::default();
        let _reader = hub.video.subscribe();
        hub.rates.set_low_available(false); // camera H.264 has one size
        let asked = |rx: &Receiver<ToCamera>| rx.try_iter().filter_map(|r| match r { ToCamera::Bitrate(b) => Some(b), _ => None }).last();
        let aus = units("cam-cb-320x240.h264");
        pt.publish(&frame(&aus[0], 1), &hub, &mut gate, &stats, &link, 2_000_000);
        let first = asked(&camera).expect("the first unit sets the camera's bitrate");
        assert!(first <= 2_000_000, "never above the configured bitrate: {first}");
        // One viewer whose link carries ~600 kbit/s: the camera is turned down to follow it.
        let now = Instant::now();
        let weak = crate::hub::ladder::LinkReport { video_budget_bps: 600_000, estimate_bps: 650_000, limited: true, ..Default::default() };
        hub.rates.report(1, weak, now);
        std::thread::sleep(BITRATE_DOWN_EVERY);
        pt.publish(&frame(&aus[1], 2), &hub, &mut gate, &stats, &link, 2_000_000);
        let down = asked(&camera).expect("a lower target reaches the camera");
        assert_eq!(down, hub.rates.targets().main_bps.min(2_000_000));
        assert!(down < first, "{first} -> {down}");
        // Unchanged: no more control calls.
        pt.publish(&frame(&aus[2], 3), &hub, &mut gate, &stats, &link, 2_000_000);
        assert_eq!(asked(&camera), None);
    }

    #[test]
    fn bitrate_updates_have_a_deadband_and_go_up_slower_than_down() {
        let t0 = Instant::now();
        assert_eq!(bitrate_update(None, 1_000_000, t0), Some(1_000_000));
        let last = Some((1_000_000, t0));
        assert_eq!(bitrate_update(last, 1_050_000, t0 + Duration::from_secs(5)), None, "5 % is noise");
        assert_eq!(bitrate_update(last, 700_000, t0 + Duration::from_millis(250)), Some(700_000), "down at once");
        assert_eq!(bitrate_update(last, 700_000, t0 + Duration::from_millis(100)), None, "not twice in 200 ms");
        assert_eq!(bitrate_update(last, 1_500_000, t0 + Duration::from_millis(500)), None, "up waits a second");
        assert_eq!(bitrate_update(last, 1_500_000, t0 + Duration::from_secs(1)), Some(1_500_000));
    }

    #[test]
    fn a_high_profile_camera_is_told_to_drop_its_h264_mode() {
        let (hub, stats, (link, camera)) = (Hub::new(), Stats::default(), sync_channel(TO_CAMERA_QUEUE));
        let mut gate = KeyframeGate::new(Duration::from_millis(250));
        let mut pt = CameraH264::default();
        let _reader = hub.video.subscribe();
        let aus = units("cam-high-320x240.h264");
        pt.publish(&frame(&aus[0], 1), &hub, &mut gate, &stats, &link, 2_500_000);
        // (The viewer's join asked for an IDR first; the refusal follows it.)
        let why = camera
            .try_iter()
            .find_map(|r| match r {
                ToCamera::RefuseH264(why) => Some(why),
                _ => None,
            })
            .expect("refused");
        assert!(why.contains("high profile") && why.contains("64000d"), "{why}");
        assert_eq!(hub.video.units_published(), 0, "nothing of it is sent");
    }
}
