//! The encode thread's path for camera H.264 (frames with `VideoFrame::h264` set): no encoder,
//! the camera's access units go through `codec::passthrough` into the hub. IDR requests (new
//! viewer, PLI, units lost on the way) go back to the camera through its `CameraLink`, which the
//! capture thread turns into the V4L2 force-key-frame control; a profile browsers do not take
//! makes the camera drop its H.264 mode.

use super::Stats;
use crate::capture::{VideoFrame, H264_REOPEN_JUMP};
use crate::codec::passthrough::{H264Passthrough, PassthroughError};
use crate::hub::{Hub, KeyframeGate};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// While units are held back for want of an IDR, the camera is asked again this often.
const IDR_RETRY: Duration = Duration::from_millis(500);

#[derive(Default)]
pub(super) struct CameraH264 {
    pt: H264Passthrough,
    last_sequence: Option<u64>,
    last_idr_request: Option<Instant>,
    failing: bool,
    announced: bool,
}

impl CameraH264 {
    /// Publishes one camera access unit (or holds it back until an IDR).
    pub(super) fn publish(&mut self, frame: &VideoFrame, hub: &Hub, gate: &mut KeyframeGate, stats: &Stats) {
        let Some(meta) = frame.h264.as_ref() else { return };
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
            meta.link.request_idr();
            self.last_idr_request = Some(now);
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
                meta.link.refuse(e.to_string());
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
    use crate::capture::{CameraH264 as Meta, CameraLink};
    use crate::codec::passthrough::access_units;
    use crate::hub::Next;
    use std::sync::Arc;

    fn units(name: &str) -> Vec<Vec<u8>> {
        let path = format!("{}/tests/fixtures/h264/{name}", env!("CARGO_MANIFEST_DIR"));
        access_units(&std::fs::read(path).unwrap())
    }

    fn frame(au: &[u8], sequence: u64, link: &Arc<CameraLink>) -> VideoFrame {
        let mut f = VideoFrame::new(2, 2);
        f.data = au.to_vec();
        (f.width, f.height) = (320, 240);
        f.capture_unix_us = 1_000_000 + sequence * 66_666;
        f.h264 = Some(Meta { sequence, link: link.clone() });
        f
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
        let (hub, stats, link) = (Hub::new(), Stats::default(), Arc::new(CameraLink::default()));
        let mut gate = KeyframeGate::new(Duration::from_millis(250));
        let mut pt = CameraH264::default();
        let aus = units("cam-cb-320x240.h264");
        // A viewer joins mid-GOP (the camera has been streaming): its join asks the camera for
        // an IDR, and P-frames are held back until one comes.
        let mut reader = hub.video.subscribe();
        pt.publish(&frame(&aus[0], 1, &link), &hub, &mut gate, &stats); // SPS/PPS + IDR
        assert!(link.take_idr_request(), "a join asks the camera for an IDR");
        for (i, au) in aus.iter().enumerate().skip(1) {
            pt.publish(&frame(au, 1 + i as u64, &link), &hub, &mut gate, &stats);
        }
        let got = drain(&mut reader, &hub);
        assert_eq!(got.len(), 20);
        assert_eq!(got.iter().filter(|u| u.keyframe).count(), 2);
        assert_eq!(hub.video.keyframes_published(), 2);
        assert!(!link.take_idr_request(), "no more requests while the stream is whole");

        // A unit lost on the way (sequence jump): held back until an IDR, which is asked for.
        pt.publish(&frame(&aus[3], 30, &link), &hub, &mut gate, &stats);
        assert!(link.take_idr_request());
        assert!(drain(&mut reader, &hub).is_empty(), "P-frame after a gap is not sent");
        pt.publish(&frame(&aus[10], 31, &link), &hub, &mut gate, &stats);
        let got = drain(&mut reader, &hub);
        assert!(got.len() == 1 && got[0].keyframe, "the next IDR (SPS/PPS put back) resumes the stream");
        assert_eq!(got[0].payloads[0][0] & 0x1f, 24, "STAP-A with SPS/PPS first");

        // A PLI goes through the gate to the camera.
        std::thread::sleep(Duration::from_millis(260));
        hub.video.request_keyframe();
        pt.publish(&frame(&aus[11], 32, &link), &hub, &mut gate, &stats);
        assert!(link.take_idr_request(), "PLI → force-key-frame");
    }

    #[test]
    fn a_high_profile_camera_is_told_to_drop_its_h264_mode() {
        let (hub, stats, link) = (Hub::new(), Stats::default(), Arc::new(CameraLink::default()));
        let mut gate = KeyframeGate::new(Duration::from_millis(250));
        let mut pt = CameraH264::default();
        let _reader = hub.video.subscribe();
        let aus = units("cam-high-320x240.h264");
        pt.publish(&frame(&aus[0], 1, &link), &hub, &mut gate, &stats);
        let why = link.take_refusal().expect("refused");
        assert!(why.contains("high profile") && why.contains("64000d"), "{why}");
        assert_eq!(hub.video.units_published(), 0, "nothing of it is sent");
    }
}
