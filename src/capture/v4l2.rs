//! A V4L2 camera as a `VideoSource`: mmap streaming with a blocking dequeue on the capture
//! thread, the mode chosen by constraint resolution over what the device enumerates, controls
//! from the config, frames converted to I420 (see `convert`).
//!
//! Faults: when a dequeue (or anything else) fails, the device is closed and `next_frame`
//! returns `CaptureError::Gone`; the pipeline then shows the "CAMERA OFFLINE" slate. Every call
//! after that tries to open the camera again, at most every [`RETRY`], and the first frame after
//! a successful reopen is delivered as usual. Reopening resolves the constraints again, so a
//! camera that comes back under another `/dev/videoN` is found by its stable id or card name.

use super::constraints::{
    resolve_video, ControlValue, FourCc, NumConstraint, StrConstraint, VideoConstraints, VideoMode,
};
use super::convert::Converter;
use super::dmabuf::{self, Exported, Layout};
use super::devices::{self, ControlInfo, VideoDevice};
use super::{unix_now_us, ApplyError, CaptureError, Frame, Problem, VideoSource};
use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};
use v4l::buffer::Type as BufType;
use v4l::io::traits::CaptureStream;
use v4l::prelude::MmapStream;
use v4l::video::Capture;

/// How often a missing camera is looked for.
pub const RETRY: Duration = Duration::from_millis(500);
/// A dequeue that waits longer than this counts as a stalled camera (closed and reopened).
const DEQUEUE_TIMEOUT: Duration = Duration::from_secs(2);
const BUFFERS: u32 = 4;
/// A gap between dequeues longer than this (no viewer) restarts the stream.
const IDLE_RESTART: Duration = Duration::from_millis(500);
/// With nobody watching for this long the camera is closed (streaming off: its LED goes out,
/// the USB bandwidth is free, other programs may use it); the next viewer opens it again.
/// `PEERCAM_CAMERA_IDLE_OFF_MS` overrides it (tests).
pub const IDLE_STREAM_OFF: Duration = Duration::from_secs(10);
/// While idle and failing (busy, missing), the camera is looked for this often, so
/// `/api/settings` follows it without a viewer.
const IDLE_RETRY: Duration = Duration::from_secs(2);
/// `V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME` (a button in the codec class).
pub const CID_FORCE_KEY_FRAME: u32 = 0x0099_0900 + 229;
/// `V4L2_CID_MPEG_VIDEO_BITRATE` (bit/s; the codec class). UVC H.264 cameras rarely have it;
/// the Pi's encoder (`bcm2835-codec`) and most M2M encoders do.
pub const CID_VIDEO_BITRATE: u32 = 0x0099_0900 + 207;
/// `V4L2_CID_MPEG_VIDEO_H264_PROFILE` (menu: 0 baseline, 1 constrained baseline, 2 main, …).
pub const CID_H264_PROFILE: u32 = 0x0099_0900 + 363;

/// Which camera and mode to open (the pipeline builds it from `[video]`; see
/// `pipeline::request`).
#[derive(Debug, Clone, PartialEq)]
pub struct CameraRequest {
    pub device: Option<StrConstraint>,
    pub constraints: VideoConstraints,
    pub controls: BTreeMap<String, ControlValue>,
}

impl CameraRequest {
    /// The size and rate to show while nothing is open (the ideal, or exact, values).
    pub fn nominal(&self) -> (u32, u32, u32) {
        let pick = |c: &Option<NumConstraint>, d: f64| {
            c.as_ref().and_then(|c| c.exact.or(c.ideal).or(c.max).or(c.min)).unwrap_or(d)
        };
        let w = (pick(&self.constraints.width, 640.0) as u32).clamp(64, 3840) & !1;
        let h = (pick(&self.constraints.height, 480.0) as u32).clamp(64, 2160) & !1;
        let fps = (pick(&self.constraints.frame_rate, 30.0).round() as u32).clamp(1, 60);
        (w, h, fps)
    }
}

struct Open {
    /// Declared before `dev` so it is dropped (STREAMOFF, unmap) first.
    stream: MmapStream<'static>,
    dev: v4l::Device,
    sink: Sink,
    timeouts: u32,
    bad_frames: u32,
    /// When a frame was last dequeued: after a pause (nobody watching) the stream is
    /// restarted so the first frames are fresh, not the ones the driver queued long ago.
    last_dequeue: Instant,
    /// The driver's sequence number of the last buffer (H.264: a jump means lost units).
    last_sequence: Option<u32>,
    /// The device's force-key-frame control, if it has one.
    force_key_frame: Option<u32>,
    /// The camera's H.264 bitrate control, when it has one.
    bitrate: Option<BitrateControl>,
    /// (stable id, node) for messages.
    name: (String, String),
    /// A libcamera camera behind libcamera's V4L2 compatibility layer (`capture::libcamera`).
    libcamera: bool,
    /// The buffers exported as DMABUFs for a hardware encoder, and their picture layout
    /// (`capture::dmabuf`): only for YU12 / NV12 and only when the pipeline asked.
    exported: Option<(Exported, Layout)>,
}

/// What becomes of a dequeued buffer.
enum Sink {
    /// Converted to I420.
    Raw(Converter),
    /// The camera's own H.264, handed on as it is (passthrough).
    H264 { width: u32, height: u32 },
}

pub struct V4l2Camera {
    req: CameraRequest,
    open: Option<Open>,
    /// The chosen camera and mode (last known while offline).
    label: String,
    size: (u32, u32, u32),
    mode: Option<VideoMode>,
    next_retry: Instant,
    last_error: String,
    /// Why the camera is not streaming, for `/api/settings` (live).
    problem: Problem,
    /// H.264 passthrough: an IDR asked for by the pipeline (`request_keyframe`), a refusal of
    /// the camera's H.264 not acted on yet (`refuse_h264`), and the access unit count.
    want_idr: bool,
    refusal: Option<String>,
    /// A bitrate asked for by the pipeline, not set on the camera yet.
    want_bitrate: Option<u32>,
    h264_sequence: u64,
    /// Why the camera's H.264 was refused (its profile): its H.264 modes are not chosen again.
    h264_refused: Option<String>,
    /// The camera was closed because nobody watched (not a fault).
    idle_closed: bool,
    idle_off_after: Duration,
    /// The pipeline's encoder imports DMABUFs (`VideoSource::offer_dmabuf`).
    export: bool,
}

/// What `open` found, for logs and `/api/settings`.
#[derive(Debug, Clone)]
pub struct Opened {
    pub device: VideoDevice,
    pub mode: VideoMode,
    pub warnings: Vec<String>,
}

impl V4l2Camera {
    /// Opens the camera the request resolves to. On failure the camera starts *offline*: the
    /// error is returned alongside so the caller can log and report it, and `next_frame` keeps
    /// trying.
    pub fn new(req: CameraRequest) -> (Self, Result<Opened, String>) {
        let mut cam = Self {
            size: req.nominal(),
            req,
            open: None,
            label: "v4l2 camera".into(),
            mode: None,
            next_retry: Instant::now(),
            last_error: String::new(),
            problem: Problem::default(),
            want_idr: false,
            refusal: None,
            want_bitrate: None,
            h264_sequence: 0,
            h264_refused: None,
            idle_closed: false,
            export: false,
            idle_off_after: std::env::var("PEERCAM_CAMERA_IDLE_OFF_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(IDLE_STREAM_OFF, Duration::from_millis),
        };
        let r = cam.try_open();
        (cam, r)
    }

    /// Opens the camera or fails (for `source = "auto"`, which then uses the test pattern).
    pub fn open(req: CameraRequest) -> Result<(Self, Opened), String> {
        let (cam, r) = Self::new(req);
        r.map(|o| (cam, o))
    }

    pub fn mode(&self) -> Option<VideoMode> {
        self.mode
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The live problem text (`/api/settings` `video.problem`).
    pub fn problem_handle(&self) -> Problem {
        self.problem.clone()
    }

    fn try_open(&mut self) -> Result<Opened, String> {
        self.next_retry = Instant::now() + RETRY;
        match open_device(&self.req, self.h264_refused.is_none(), self.export) {
            Ok((open, opened)) => {
                let m = opened.mode;
                self.size = (open.conv_size().0, open.conv_size().1, m.fps().round().max(1.0) as u32);
                let kind = if open.libcamera { "libcamera" } else { "v4l2" };
                self.label = format!("{kind} {} ({}) {}", opened.device.id, opened.device.card, m.fourcc);
                if matches!(open.sink, Sink::H264 { .. }) {
                    // Whatever came before is no reference for what the camera sends now.
                    self.h264_sequence += super::H264_REOPEN_JUMP;
                    if open.force_key_frame.is_none() {
                        log::info!(
                            "camera {}: H.264 passthrough; the camera has no force-key-frame control, so new \
                             viewers wait for its own periodic IDR",
                            opened.device.id
                        );
                    } else {
                        log::info!("camera {}: H.264 passthrough, IDRs on request (force-key-frame control)", opened.device.id);
                    }
                    match &open.bitrate {
                        Some(b) => log::info!(
                            "camera {}: its H.264 bitrate follows the viewers' links ({}-{} kbit/s, V4L2 bitrate control)",
                            opened.device.id, b.min / 1000, b.max / 1000
                        ),
                        None => log::info!(
                            "camera {}: no bitrate control, so its H.264 goes out at the camera's own rate; viewers on \
                             links slower than that fall behind (choose a raw format to let peercam's encoder adapt)",
                            opened.device.id
                        ),
                    }
                }
                self.mode = Some(m);
                self.open = Some(open);
                self.last_error.clear();
                self.problem.set(None);
                self.idle_closed = false;
                for w in &opened.warnings {
                    log::warn!("camera {}: {w}", opened.device.id);
                }
                Ok(opened)
            }
            Err(e) => {
                let e = match &self.h264_refused {
                    Some(why) if requires_h264(&self.req) => format!("{why} ([video.constraints] format requires H264)"),
                    _ => e,
                };
                if e != self.last_error {
                    log::debug!("camera: {e}");
                }
                self.last_error = e.clone();
                self.problem.set(Some(e.clone()));
                Err(e)
            }
        }
    }

    fn close(&mut self, why: String) -> CaptureError {
        self.release();
        self.last_error = why.clone();
        self.problem.set(Some(why.clone()));
        self.next_retry = Instant::now() + RETRY;
        CaptureError::Gone(why)
    }

    /// Closes the device (STREAMOFF, buffers unmapped, file closed).
    fn release(&mut self) {
        if let Some(open) = self.open.take() {
            // The v4l crate panics in Drop on errors other than ENODEV (a half-gone device can
            // give others); never let that take the capture thread down.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(open)));
        }
    }

    /// Serves the passthrough's requests: a refused profile (reopen without H.264) and IDRs.
    fn serve_link(&mut self) {
        if let Some(why) = self.refusal.take() {
            log::error!("{}: {why}", self.label);
            self.h264_refused = Some(why);
            self.release();
            self.next_retry = Instant::now();
            return;
        }
        if std::mem::take(&mut self.want_idr)
            && let Some(open) = self.open.as_ref()
            && let Some(id) = open.force_key_frame
        {
            let c = v4l::control::Control { id, value: v4l::control::Value::None };
            if let Err(e) = open.dev.set_control(c) {
                log::debug!("{}: force-key-frame failed: {e}", self.label);
            }
        }
        if let Some(bps) = self.want_bitrate.take()
            && let Some(open) = self.open.as_mut()
            && let Some(b) = open.bitrate.as_mut()
        {
            let value = b.clamp(bps);
            if b.current != Some(value) {
                let c = v4l::control::Control { id: b.id, value: v4l::control::Value::Integer(value as i64) };
                match open.dev.set_control(c) {
                    Ok(()) => {
                        log::debug!("{}: bitrate set to {} kbit/s", self.label, value / 1000);
                        b.current = Some(value);
                    }
                    Err(e) => log::debug!("{}: setting the bitrate failed: {e}", self.label),
                }
            }
        }
    }
}

impl Open {
    fn conv_size(&self) -> (u32, u32) {
        match &self.sink {
            Sink::Raw(conv) => conv.output_size(),
            Sink::H264 { width, height } => (*width, *height),
        }
    }
}

fn requires_h264(req: &CameraRequest) -> bool {
    req.constraints.format.as_ref().is_some_and(|f| f.is_required() && f.wanted().is_some_and(|w| w.eq_ignore_ascii_case("H264")))
}

impl VideoSource for V4l2Camera {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn request_keyframe(&mut self) {
        self.want_idr = true;
    }

    fn offer_dmabuf(&mut self) {
        if !self.export {
            self.export = true;
            let lendable = self.mode.is_some_and(|m| matches!(&m.fourcc.0, b"YU12" | b"NV12"));
            if lendable && self.open.as_ref().is_some_and(|o| o.exported.is_none()) {
                // Opened before the encoder was known: open again, this time lending buffers.
                self.release();
                self.next_retry = Instant::now();
            }
        }
    }

    fn refuse_h264(&mut self, why: String) {
        self.refusal = Some(why);
    }

    fn rate_control(&self) -> crate::capture::RateControl {
        use crate::capture::RateControl;
        match self.open.as_ref() {
            Some(Open { sink: Sink::H264 { .. }, bitrate: Some(b), .. }) => RateControl::Camera { bps: b.current.unwrap_or(0) },
            Some(Open { sink: Sink::H264 { .. }, bitrate: None, .. }) => RateControl::Fixed,
            _ => RateControl::Encoder,
        }
    }

    fn set_bitrate(&mut self, bps: u32) {
        self.want_bitrate = Some(bps);
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<(), CaptureError> {
        if let Frame::I420(f) = frame {
            // This frame's camera buffer (if it had one) is no longer this frame's picture.
            f.dmabuf = None;
        }
        self.serve_link();
        if self.open.is_none() {
            if Instant::now() < self.next_retry {
                return Err(CaptureError::Gone(self.offline_message()));
            }
            if self.try_open().is_err() {
                return Err(CaptureError::Gone(self.offline_message()));
            }
        }
        if let Some(open) = self.open.as_mut() {
            if open.last_dequeue.elapsed() > IDLE_RESTART {
                // STREAMOFF drops the queued (stale) buffers; the next dequeue requeues and
                // starts again. A failure here shows up on that dequeue.
                let _ = v4l::io::traits::Stream::stop(&mut open.stream);
                if open.libcamera {
                    // libcamera's V4L2 layer (0.0.3 to 0.7.1) stops the camera on a STREAMOFF but
                    // leaves its cancelled requests holding their buffers: the next QBUF fails
                    // ("FrameBuffer already set for stream", ENOMEM). A second STREAMOFF, on the
                    // stopped camera, recycles every request (seen in the rig-3 VM with vimc).
                    let _ = v4l::io::traits::Stream::stop(&mut open.stream);
                }
            }
        }
        loop {
            let open = self.open.as_mut().expect("opened above");
            if let Some((exported, _)) = &open.exported {
                // Lent buffers every holder has dropped go back to the driver.
                for i in 0..open.stream.count() {
                    if open.stream.is_held(i) && exported.is_back(i) {
                        if let Err(e) = open.stream.give_back(i) {
                            log::debug!("{}: giving back buffer {i}: {e}", self.label);
                        }
                    }
                }
            }
            let h264_sequence = &mut self.h264_sequence;
            let mut filled = (0usize, 0usize);
            let result = open.stream.next().map(|(buf, meta)| {
                filled = (buf.len(), meta.bytesused as usize);
                let used = (meta.bytesused as usize).min(buf.len());
                let error = meta.flags.contains(v4l::buffer::Flags::ERROR) || used == 0;
                let ts = (meta.timestamp.sec as i64) * 1_000_000 + meta.timestamp.usec as i64;
                let lost = open.last_sequence.is_some_and(|last| meta.sequence != last.wrapping_add(1));
                open.last_sequence = Some(meta.sequence);
                let out = match &mut open.sink {
                    _ if error => Ok(()),
                    Sink::Raw(conv) => conv.convert(&buf[..used], frame.i420_mut()),
                    Sink::H264 { width, height } => {
                        // One access unit per buffer, handed on as it is; a jump in the
                        // sequence tells the passthrough that units were lost.
                        *h264_sequence += 1 + lost as u64;
                        let unit = frame.h264_mut();
                        unit.data.clear();
                        unit.data.extend_from_slice(&buf[..used]);
                        (unit.width, unit.height) = (*width, *height);
                        unit.sequence = *h264_sequence;
                        Ok(())
                    }
                };
                (error, out, ts)
            });
            // When the dequeue returned, not when it began: a camera slower than IDLE_RESTART
            // (a libcamera pipeline under emulation, a long exposure) is not restarted every frame.
            open.last_dequeue = Instant::now();
            match result {
                Ok((true, _, _)) => continue, // the driver flagged a corrupt buffer: next one
                Ok((false, Ok(()), ts)) => {
                    open.timeouts = 0;
                    open.bad_frames = 0;
                    let t = capture_time_us(ts);
                    match frame {
                        Frame::I420(f) => {
                            f.capture_unix_us = t;
                            if let Some((exported, layout)) = &open.exported {
                                let (len, used) = filled;
                                if let Some(d) = exported.lend(open.stream.index(), open.stream.held_count(), len, used, *layout) {
                                    open.stream.hold();
                                    f.dmabuf = Some(d);
                                }
                            }
                        }
                        Frame::H264(u) => u.capture_unix_us = t,
                    }
                    return Ok(());
                }
                Ok((false, Err(e), _)) => {
                    // A broken MJPEG frame now and then is normal on USB; many in a row is not.
                    open.bad_frames += 1;
                    if open.bad_frames >= 30 {
                        return Err(self.close(format!("every frame is broken: {e}")));
                    }
                    if open.bad_frames == 1 {
                        log::debug!("{}: dropped a frame: {e}", self.label);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    open.timeouts += 1;
                    if open.timeouts >= 2 {
                        return Err(self.close(format!("no frame for {} s", 2 * DEQUEUE_TIMEOUT.as_secs())));
                    }
                    return Err(CaptureError::Failed(format!("no frame within {:?}", DEQUEUE_TIMEOUT)));
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // STREAMON refused: someone else streams from it.
                    let why = busy_message(&open.name.0, &open.name.1);
                    return Err(self.close(why));
                }
                Err(e) => {
                    return Err(self.close(format!("camera disappeared: {}", describe_io(&e))));
                }
            }
        }
    }

    fn settings(&self) -> (u32, u32, u32) {
        self.size
    }

    fn idle(&mut self) {
        match self.open.as_ref() {
            Some(open) if open.last_dequeue.elapsed() >= self.idle_off_after => {
                log::info!(
                    "{}: nobody watching for {} s: camera closed (streaming off) until the next viewer",
                    self.label,
                    self.idle_off_after.as_secs_f32()
                );
                self.release();
                self.idle_closed = true;
                self.next_retry = Instant::now();
            }
            // Failing (busy, missing) with nobody watching: keep looking, more slowly, so that
            // `/api/settings` follows the camera. Once open, it is closed again after the idle
            // time above.
            None if !self.idle_closed && Instant::now() >= self.next_retry => {
                self.serve_link();
                if self.try_open().is_ok() {
                    log::info!("{} is usable again", self.label);
                } else {
                    self.next_retry = Instant::now() + IDLE_RETRY;
                }
            }
            _ => {}
        }
    }

    fn problem(&self) -> Option<Problem> {
        Some(self.problem.clone())
    }

    /// Reopens the camera with the new constraints; if it cannot meet them, reopens it as it
    /// was (the device must be closed first: it cannot change format while streaming).
    fn apply_constraints(&mut self, c: &VideoConstraints) -> Result<(), ApplyError> {
        // Resolve against the cameras' modes first: a request no mode meets is refused with the
        // constraint it names, without closing a camera that viewers are watching.
        let cams = devices::list_video();
        let modes: Vec<_> = cams.iter().map(|c| c.modes()).collect();
        if let Err(e) = resolve_video(&modes, self.req.device.as_ref(), c, self.h264_refused.is_none()) {
            if e.constraint != "device" {
                return Err(ApplyError::Overconstrained(e));
            }
        }
        let old = self.req.clone();
        self.close("reconfiguring".into());
        self.req.constraints = c.clone();
        match self.try_open() {
            Ok(o) => {
                log::info!("camera {}: now {}", o.device.id, o.mode);
                Ok(())
            }
            Err(e) => {
                self.req = old;
                if let Err(again) = self.try_open() {
                    log::warn!("camera: cannot reopen with the previous settings: {again}");
                }
                Err(ApplyError::Failed(e))
            }
        }
    }
}

impl V4l2Camera {
    fn offline_message(&self) -> String {
        if self.last_error.is_empty() { format!("{} is offline", self.label) } else { self.last_error.clone() }
    }
}

fn describe_io(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENODEV) => "device removed (ENODEV)".into(),
        Some(libc::EBUSY) => "device busy (EBUSY)".into(),
        _ => e.to_string(),
    }
}

/// The V4L2 buffer timestamp (CLOCK_MONOTONIC) as Unix time; the dequeue time if the driver
/// gave none or an implausible one.
fn capture_time_us(mono_us: i64) -> u64 {
    let now_unix = unix_now_us();
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    if mono_us <= 0 || unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return now_unix;
    }
    let now_mono = ts.tv_sec as i64 * 1_000_000 + ts.tv_nsec as i64 / 1000;
    let age = now_mono - mono_us;
    if !(0..1_000_000).contains(&age) {
        return now_unix;
    }
    now_unix.saturating_sub(age as u64)
}

/// Resolves the request over the cameras present and opens the winner.
fn open_device(req: &CameraRequest, allow_h264: bool, export: bool) -> Result<(Open, Opened), String> {
    let cams = devices::list_video();
    if cams.is_empty() {
        return Err(not_found_message(req));
    }
    let modes: Vec<_> = cams.iter().map(|c| c.modes()).collect();
    let choice = resolve_video(&modes, req.device.as_ref(), &req.constraints, allow_h264).map_err(|e| {
        if e.constraint == "device" { not_found_message(req) + &format!("; cameras here: {}", e.offers) } else { e.to_string() }
    })?;
    let cam = cams[choice.device].clone();
    let mode = choice.mode;
    let dev = v4l::Device::with_path(&cam.path).map_err(|e| format!("cannot open camera {}: {e}", cam.path))?;
    let mut fmt = dev.format().map_err(|e| format!("camera {}: cannot read its format: {}", cam.path, describe_io(&e)))?;
    fmt.width = mode.width;
    fmt.height = mode.height;
    fmt.fourcc = v4l::FourCC::new(&mode.fourcc.0);
    // The driver's own stride for this format: G_FMT's is the last format's (vivid kept YUYV's
    // 1280 bytes for 640-wide NV12), and drivers that take custom strides would keep it.
    fmt.stride = 0;
    let fmt = dev.set_format(&fmt).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => busy_message(&cam.id, &cam.path),
        _ => format!("camera {}: cannot set {mode}: {}", cam.path, describe_io(&e)),
    })?;
    let got = FourCc(fmt.fourcc.repr);
    if got != mode.fourcc {
        return Err(format!("camera {}: asked for {}, the driver gave {got}", cam.path, mode.fourcc));
    }
    let sink = if &got.0 == b"H264" {
        // Ask for a profile browsers take where the camera lets us choose (encoders that
        // expose the control; most UVC cameras do not, and their SPS decides).
        if let Some(c) = cam.controls.iter().find(|c| c.id == CID_H264_PROFILE && !c.read_only) {
            let want = [1i64, 0].into_iter().find(|v| c.menu.contains_key(v) || c.menu.is_empty());
            if let Some(v) = want {
                let _ = dev.set_control(v4l::control::Control { id: c.id, value: v4l::control::Value::Integer(v) });
            }
        }
        Sink::H264 { width: fmt.width, height: fmt.height }
    } else {
        Sink::Raw(Converter::new(got, fmt.width, fmt.height, fmt.stride)?)
    };
    let force_key_frame = cam.controls.iter().find(|c| c.id == CID_FORCE_KEY_FRAME).map(|c| c.id);
    let bitrate = match &sink {
        Sink::H264 { .. } => cam
            .controls
            .iter()
            .find(|c| c.id == CID_VIDEO_BITRATE && !c.read_only)
            .and_then(BitrateControl::from_info),
        Sink::Raw(_) => None,
    };
    let mut actual = mode;
    actual.width = fmt.width;
    actual.height = fmt.height;
    let params = v4l::video::capture::Parameters::new(v4l::Fraction::new(mode.interval.num, mode.interval.den));
    match dev.set_params(&params) {
        Ok(p) if p.interval.numerator > 0 && p.interval.denominator > 0 => {
            actual.interval = super::constraints::Fraction::new(p.interval.numerator, p.interval.denominator)
        }
        Ok(_) => {}
        Err(e) => log::debug!("camera {}: cannot set the frame interval: {e}", cam.path),
    }
    let mut warnings = apply_controls(&dev, &cam.controls, &req.controls);
    if cam.driver == super::libcamera::DRIVER {
        if dev.params().is_err() {
            warnings.push(format!(
                "libcamera's V4L2 layer here cannot set the frame rate (no VIDIOC_S_PARM before libcamera 0.3.2): \
                 the camera runs at libcamera's default rate, listed as a nominal {} fps",
                super::libcamera::NOMINAL_FPS
            ));
        }
        if (fmt.width, fmt.height) != (mode.width, mode.height) {
            warnings.push(format!("libcamera adjusted {}x{} to {}x{}", mode.width, mode.height, fmt.width, fmt.height));
        }
    }
    // Zero-copy into a hardware encoder: a 4:2:0 layout the encoder takes as it is.
    let layout = (export && matches!(&got.0, b"YU12" | b"NV12")).then(|| Layout {
        fourcc: u32::from_le_bytes(got.0),
        width: fmt.width,
        height: fmt.height,
        bytesperline: fmt.stride,
    });
    let count = if layout.is_some() { dmabuf::EXPORT_BUFFERS } else { BUFFERS };
    let mut stream = MmapStream::with_buffers(&dev, BufType::VideoCapture, count).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => busy_message(&cam.id, &cam.path),
        _ => format!("camera {}: cannot map buffers: {}", cam.path, describe_io(&e)),
    })?;
    stream.set_timeout(DEQUEUE_TIMEOUT);
    let exported = layout.and_then(|l| match Exported::export(dev.handle().fd(), stream.count()) {
        Ok(e) => {
            log::info!("camera {}: {} buffers exported as DMABUFs: the hardware encoder reads {} frames in place", cam.path, stream.count(), got);
            Some((e, l))
        }
        Err(e) => {
            log::info!("camera {}: cannot export its buffers as DMABUFs ({}): frames are copied into the encoder", cam.path, describe_io(&e));
            None
        }
    });
    Ok((
        Open {
            stream,
            dev,
            sink,
            timeouts: 0,
            bad_frames: 0,
            last_dequeue: Instant::now(),
            last_sequence: None,
            force_key_frame,
            bitrate,
            name: (cam.id.clone(), cam.path.clone()),
            libcamera: cam.driver == super::libcamera::DRIVER,
            exported,
        },
        Opened { device: cam, mode: actual, warnings },
    ))
}

/// A camera encoder's `V4L2_CID_MPEG_VIDEO_BITRATE`: its range and what it was last set to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitrateControl {
    pub id: u32,
    pub min: u32,
    pub max: u32,
    pub step: u32,
    pub current: Option<u32>,
}

impl BitrateControl {
    pub fn from_info(c: &ControlInfo) -> Option<Self> {
        let min = u32::try_from(c.min.max(1)).ok()?;
        let max = u32::try_from(c.max.min(u32::MAX as i64)).ok()?;
        (min <= max).then(|| Self {
            id: c.id,
            min,
            max,
            step: u32::try_from(c.step.max(1)).unwrap_or(1),
            current: c.current.and_then(|v| u32::try_from(v).ok()),
        })
    }

    /// `bps` within the control's range, on its step grid.
    pub fn clamp(&self, bps: u32) -> u32 {
        let v = bps.clamp(self.min, self.max);
        let v = self.min + (v - self.min) / self.step * self.step;
        v.clamp(self.min, self.max)
    }
}

/// "camera X (/dev/videoN) is busy: …" naming the processes that hold the device open.
pub fn busy_message(id: &str, path: &str) -> String {
    let holders = holders_of(std::path::Path::new(path));
    let who = if holders.is_empty() {
        "another program is using it (none visible from here: /proc may be restricted)".to_string()
    } else {
        let list: Vec<String> = holders.iter().map(|(pid, comm)| format!("{comm} (pid {pid})")).collect();
        format!("it is in use by {}", list.join(", "))
    };
    let name = if id == path { path.to_string() } else { format!("{id} ({path})") };
    format!("camera {name} is busy: {who}; peercam keeps trying and takes it when it is free")
}

/// The processes (pid, command name) other than this one with `node` open, from /proc.
pub fn holders_of(node: &std::path::Path) -> Vec<(u32, String)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(want) = std::fs::metadata(node).map(|m| m.rdev()) else { return Vec::new() };
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        // stat through the fd link: the same character device, whatever name it was opened by.
        let holds = fds
            .flatten()
            .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == want));
        if holds {
            let comm = std::fs::read_to_string(p.path().join("comm")).map(|c| c.trim().to_string()).unwrap_or_default();
            out.push((pid, comm));
        }
    }
    out.sort();
    out
}

fn not_found_message(req: &CameraRequest) -> String {
    match req.device.as_ref().and_then(|d| d.wanted()) {
        Some(want) => {
            let p = std::path::Path::new(want);
            if p.exists() {
                match devices::probe_video(p, &BTreeMap::new()) {
                    Ok(None) => return format!("{want} is not a video capture device"),
                    Err(e) => return format!("camera {want}: {e}"),
                    Ok(Some(_)) => {}
                }
            }
            format!("camera {want:?} not found")
        }
        None => "no V4L2 capture device found".into(),
    }
}

/// Sets `[video.controls]`; returns one warning per control that could not be set.
pub fn apply_controls(dev: &v4l::Device, have: &[ControlInfo], want: &BTreeMap<String, ControlValue>) -> Vec<String> {
    let mut warnings = Vec::new();
    for (key, value) in want {
        let Some(c) = have.iter().find(|c| c.key == *key || c.name.eq_ignore_ascii_case(key)) else {
            let keys: Vec<&str> = have.iter().map(|c| c.key.as_str()).collect();
            warnings.push(format!("no control {key:?}; this camera has: {}", keys.join(", ")));
            continue;
        };
        match control_value(c, value) {
            Ok(v) => {
                let value = if c.typ == "bool" {
                    v4l::control::Value::Boolean(v != 0)
                } else {
                    v4l::control::Value::Integer(v)
                };
                if let Err(e) = dev.set_control(v4l::control::Control { id: c.id, value }) {
                    warnings.push(format!("cannot set {key} = {value:?}: {e}", value = v));
                }
            }
            Err(e) => warnings.push(e),
        }
    }
    warnings
}

/// The integer a config value means for one control (menu names looked up, range checked).
pub fn control_value(c: &ControlInfo, value: &ControlValue) -> Result<i64, String> {
    if c.read_only {
        return Err(format!("control {} is read-only", c.key));
    }
    let v = match value {
        ControlValue::Int(v) => *v,
        ControlValue::Bool(b) => *b as i64,
        ControlValue::Menu(name) => match c.menu.iter().find(|(_, n)| n.eq_ignore_ascii_case(name)) {
            Some((v, _)) => *v,
            None => {
                let items: Vec<String> = c.menu.iter().map(|(v, n)| format!("{v} ({n:?})")).collect();
                return Err(format!("control {} has no item {name:?}; it has: {}", c.key, items.join(", ")));
            }
        },
    };
    if v < c.min || v > c.max {
        return Err(format!("control {} = {v} is out of range {}..={}", c.key, c.min, c.max));
    }
    if c.typ == "menu" && !c.menu.is_empty() && !c.menu.contains_key(&v) {
        return Err(format!("control {} has no item {v}", c.key));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_bitrate_control_is_clamped_to_its_range_and_step() {
        let mut info = ctl("video_bitrate", "int", 25_000, 25_000_000, &[]);
        info.id = CID_VIDEO_BITRATE;
        info.step = 25_000;
        let b = BitrateControl::from_info(&info).unwrap();
        assert_eq!(b.clamp(1_000), 25_000);
        assert_eq!(b.clamp(612_345), 600_000);
        assert_eq!(b.clamp(u32::MAX), 25_000_000);
        info.min = 10;
        info.max = 5;
        assert_eq!(BitrateControl::from_info(&info), None, "a broken range is ignored");
    }

    fn ctl(key: &str, typ: &str, min: i64, max: i64, menu: &[(i64, &str)]) -> ControlInfo {
        ControlInfo {
            key: key.into(),
            name: key.into(),
            id: 1,
            typ: typ.into(),
            min,
            max,
            step: 1,
            default: 0,
            current: None,
            menu: menu.iter().map(|(v, n)| (*v, n.to_string())).collect(),
            read_only: false,
            inactive: false,
        }
    }

    #[test]
    fn control_values_from_config() {
        let plf = ctl("power_line_frequency", "menu", 0, 2, &[(0, "Disabled"), (1, "50 Hz"), (2, "60 Hz")]);
        assert_eq!(control_value(&plf, &ControlValue::Menu("50 hz".into())), Ok(1));
        assert_eq!(control_value(&plf, &ControlValue::Int(2)), Ok(2));
        let e = control_value(&plf, &ControlValue::Menu("55 Hz".into())).unwrap_err();
        assert!(e.contains("\"50 Hz\""), "{e}");
        let b = ctl("brightness", "int", -64, 64, &[]);
        assert_eq!(control_value(&b, &ControlValue::Int(10)), Ok(10));
        assert!(control_value(&b, &ControlValue::Int(100)).unwrap_err().contains("out of range"));
        let auto = ctl("white_balance_automatic", "bool", 0, 1, &[]);
        assert_eq!(control_value(&auto, &ControlValue::Bool(true)), Ok(1));
    }

    #[test]
    fn nominal_size_takes_exact_then_ideal() {
        let c = VideoConstraints {
            width: Some(NumConstraint::ideal(640.0)),
            height: Some(NumConstraint::exact(360.0)),
            frame_rate: Some(NumConstraint::ideal(25.0)),
            ..Default::default()
        };
        let r = CameraRequest { device: None, constraints: c, controls: BTreeMap::new() };
        assert_eq!(r.nominal(), (640, 360, 25));
    }

    #[test]
    fn a_busy_device_is_blamed_on_the_process_that_holds_it() {
        // Any character device works for the /proc scan: a child holding /dev/zero open.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .stdin(std::fs::File::open("/dev/zero").unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let holders = holders_of(Path::new("/dev/zero"));
        let msg = busy_message("usb-cam", "/dev/zero");
        let _ = child.kill();
        let _ = child.wait();
        assert!(holders.contains(&(child.id(), "sleep".to_string())), "{holders:?}");
        assert!(msg.starts_with("camera usb-cam (/dev/zero) is busy: it is in use by "), "{msg}");
        assert!(msg.contains(&format!("sleep (pid {})", child.id())), "{msg}");
        assert!(!holders.iter().any(|(pid, _)| *pid == std::process::id()), "not blamed on itself");
        assert!(holders_of(Path::new("/nonexistent/video9")).is_empty());
    }

    #[test]
    fn a_missing_camera_starts_offline_and_reports_why() {
        let c = VideoConstraints {
            width: Some(NumConstraint::ideal(1280.0)),
            height: Some(NumConstraint::ideal(720.0)),
            frame_rate: Some(NumConstraint::ideal(30.0)),
            ..Default::default()
        };
        let req = CameraRequest {
            device: Some(StrConstraint::exact("/dev/video-none")),
            constraints: c,
            controls: BTreeMap::new(),
        };
        let (mut cam, r) = V4l2Camera::new(req);
        let e = r.unwrap_err();
        assert!(e.contains("/dev/video-none") || e.contains("no V4L2 capture device"), "{e}");
        assert!(!cam.is_open());
        assert_eq!(cam.problem().and_then(|p| p.get()), Some(e.clone()), "/api/settings shows why");
        let mut f = Frame::new(2, 2);
        match cam.next_frame(&mut f) {
            Err(CaptureError::Gone(m)) => assert!(!m.is_empty()),
            other => panic!("expected Gone, got {other:?}"),
        }
        assert_eq!(cam.settings(), (1280, 720, 30));
    }
}
