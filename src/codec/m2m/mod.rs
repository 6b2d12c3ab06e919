//! Hardware video encoders behind the V4L2 memory-to-memory (M2M) interface — on a Raspberry
//! Pi 3 / 4 / Zero 2 W the VideoCore's `bcm2835-codec` (`/dev/video11`). See README.md.
//!
//! One code path for any stateful M2M encoder; the codec (its CAPTURE FourCC) is a parameter:
//! H.264 in the product ([`h264::M2mH264Encoder`]), FWHT (the kernel's `vicodec`) in the tests.
//! The encoder is synchronous, one frame in, one unit out: the raw frame goes into a free
//! OUTPUT buffer (copied row by row at the driver's stride), the encoded unit comes back on the
//! CAPTURE queue within [`STALL_TIMEOUT`] or the encoder counts as stalled. Fixed buffer counts
//! ([`OUTPUT_BUFFERS`], [`CAPTURE_BUFFERS`]); no queue grows.
//!
//! Zero-copy: a frame that carries its camera buffer as a DMABUF in the layout the encoder
//! asked for ([`VideoFrame::dmabuf`], `capture::dmabuf`) is queued by that descriptor
//! (`V4L2_MEMORY_DMABUF`) instead of copied; the OUTPUT queue switches between the two kinds
//! of memory (a stream restart: one keyframe) only when the kind of frames changes for good.

pub mod check;
pub mod device;
pub mod fwht;
pub mod h264;

use crate::capture::dmabuf::DmaBuf;
use crate::capture::VideoFrame;
use device::{Device, PlaneFormat, BUF_CAPTURE_MPLANE, BUF_OUTPUT_MPLANE};
use std::sync::Arc;
use std::time::{Duration, Instant};
use v4l::v4l_sys as sys;

/// Frames in a row that could be read in place before a copying encoder switches to DMABUF
/// (a switch restarts the stream: one keyframe; a lone frame is not worth it).
const IMPORT_AFTER: u32 = 30;

/// Raw frames the device may hold at once.
pub const OUTPUT_BUFFERS: u32 = 2;
/// Encoded units the device may have ready at once.
pub const CAPTURE_BUFFERS: u32 = 4;
/// An encoder that gives nothing back for this long after a frame went in is broken.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Video nodes probed for an encoder (`/dev/video0` … `/dev/video63`).
const PROBE_NODES: u32 = 64;

/// What went wrong, with the device named — what a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum M2mError {
    #[error("{path}: {what} failed: {source}")]
    Io { path: String, what: &'static str, source: std::io::Error },
    /// The device node disappeared (driver unbound or unloaded, USB unplugged).
    #[error("{path}: the encoder device is gone ({why})")]
    Gone { path: String, why: String },
    #[error("{path} cannot be used as an encoder: {why}")]
    Unsupported { path: String, why: String },
    #[error("{path}: {why}")]
    State { path: String, why: String },
    #[error("{path}: no encoded frame came back within {} ms (the encoder stalled)", STALL_TIMEOUT.as_millis())]
    Stalled { path: String },
    /// What the encoder produced is not what we can send (e.g. an H.264 profile browsers may
    /// not take).
    #[error("{path}: {why}")]
    Stream { path: String, why: String },
    #[error("frame is {got_w}x{got_h}, encoder is set up for {want_w}x{want_h}")]
    Size { got_w: u32, got_h: u32, want_w: u32, want_h: u32 },
}

impl M2mError {
    /// An ioctl error; ENODEV/ENXIO mean the device went away.
    pub fn io(path: &str, what: &'static str, e: std::io::Error) -> M2mError {
        match e.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) => M2mError::Gone { path: path.into(), why: format!("{what}: {e}") },
            _ => M2mError::Io { path: path.into(), what, source: e },
        }
    }

    pub fn is_gone(&self) -> bool {
        matches!(self, M2mError::Gone { .. })
    }
}

/// The compressed format the encoder makes (its CAPTURE queue's FourCC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    H264,
    /// vicodec's FWHT: only for testing the M2M plumbing on a kernel without an H.264 encoder.
    Fwht,
}

impl Codec {
    pub fn fourcc(self) -> u32 {
        match self {
            Codec::H264 => device::FMT_H264,
            Codec::Fwht => device::FMT_FWHT,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::Fwht => "fwht",
        }
    }
    pub fn parse(s: &str) -> Option<Codec> {
        match s.to_ascii_lowercase().as_str() {
            "h264" => Some(Codec::H264),
            "fwht" => Some(Codec::Fwht),
            _ => None,
        }
    }
    /// Whether an encoded unit is a keyframe, from the bitstream itself.
    pub fn is_keyframe(self, unit: &[u8]) -> bool {
        match self {
            Codec::H264 => super::passthrough::nal_units(unit).any(|n| super::passthrough::nal_type(n) == super::passthrough::NAL_IDR),
            Codec::Fwht => fwht::Header::parse(unit).is_some_and(|h| h.is_keyframe()),
        }
    }
}

/// Raw formats we can fill from an I420 frame, in order of preference.
const RAW_FORMATS: [u32; 3] = [device::FMT_YU12, device::FMT_YM12, device::FMT_NV12];

/// An M2M encoder node found by [`probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: String,
    pub driver: String,
    pub card: String,
    /// The raw format its OUTPUT queue takes that we fill (the first of [`RAW_FORMATS`] it
    /// takes, or the camera's: [`Found::preferring_raw`]).
    pub raw_fourcc: u32,
    /// Every one of [`RAW_FORMATS`] it takes.
    pub raw_fourccs: Vec<u32>,
}

impl Found {
    /// The same device taking `fourcc` as its raw format when it can (a camera delivering
    /// NV12 is read in place only by an encoder set up for NV12); unchanged otherwise.
    pub fn preferring_raw(&self, fourcc: Option<u32>) -> Found {
        let mut f = self.clone();
        if let Some(c) = fourcc.filter(|c| self.raw_fourccs.contains(c)) {
            f.raw_fourcc = c;
        }
        f
    }
}

/// Why a node is not an encoder for `codec` (for the "forced but missing" message).
fn check_node(path: &str, codec: Codec) -> Result<Found, String> {
    let dev = Device::open(path).map_err(|e| e.to_string())?;
    let caps = dev.caps().map_err(|e| e.to_string())?;
    if !caps.is_m2m_mplane() {
        return Err(if caps.is_m2m_single_planar() {
            format!("{path} ({}): single-planar M2M (only the multi-planar API is supported)", caps.driver)
        } else {
            format!("{path} ({}): not a memory-to-memory device", caps.driver)
        });
    }
    let cap = dev.formats(BUF_CAPTURE_MPLANE);
    if !cap.contains(&codec.fourcc()) {
        let list: Vec<String> = cap.iter().map(|&f| device::fourcc_str(f)).collect();
        return Err(format!("{path} ({}): makes {} , not {}", caps.driver, list.join(" "), device::fourcc_str(codec.fourcc())));
    }
    let out = dev.formats(BUF_OUTPUT_MPLANE);
    let raws: Vec<u32> = RAW_FORMATS.iter().copied().filter(|f| out.contains(f)).collect();
    let Some(&raw) = raws.first() else {
        return Err(format!("{path} ({}): takes none of YU12, YM12, NV12", caps.driver));
    };
    Ok(Found { path: path.into(), driver: caps.driver, card: caps.card, raw_fourcc: raw, raw_fourccs: raws })
}

/// The first M2M device whose CAPTURE queue makes `codec` and whose OUTPUT queue takes a raw
/// format we have (I420 or NV12). `Err` lists what each video node was, for the log.
pub fn probe(codec: Codec) -> Result<Found, Vec<String>> {
    let mut seen = vec![];
    let mut nodes: Vec<u32> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("video")?.parse().ok())
                .filter(|&n: &u32| n < PROBE_NODES)
                .collect()
        })
        .unwrap_or_default();
    nodes.sort_unstable();
    for n in nodes {
        match check_node(&format!("/dev/video{n}"), codec) {
            Ok(f) => return Ok(f),
            Err(why) => seen.push(why),
        }
    }
    Err(seen)
}

/// A given node, checked like [`probe`] checks each one.
pub fn check(path: &str, codec: Codec) -> Result<Found, String> {
    check_node(path, codec)
}

/// What the encoder is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_bps: u32,
    pub keyframe_interval_frames: u32,
}

/// How a keyframe is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeMethod {
    /// `V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME` (bcm2835-codec and most H.264 encoders).
    Control,
    /// The stateful encoder's reset (STREAMOFF + STREAMON of the CAPTURE queue, per the kernel's
    /// encoder interface): what follows is independent of what came before (vicodec).
    Reset,
}

/// How the bitrate is changed in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateMethod {
    /// `V4L2_CID_MPEG_VIDEO_BITRATE`, clamped to the driver's range.
    Bitrate { min: i32, max: i32 },
    /// FWHT has no rate control: the target becomes a quantizer ([`fwht::qp_for`]).
    FwhtQp,
    /// Nothing to turn: the device runs at its own rate.
    None,
}

/// One encoded unit, borrowed from the encoder until the next call.
#[derive(Debug)]
pub struct Unit<'a> {
    pub data: &'a [u8],
    /// From the bitstream ([`Codec::is_keyframe`]).
    pub keyframe: bool,
    /// `V4L2_BUF_FLAG_KEYFRAME` on the capture buffer (what the driver says).
    pub flagged_keyframe: bool,
    pub capture_unix_us: u64,
    pub sequence: u32,
}

/// Counters (for logs, the diagnostic command and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub frames_in: u64,
    pub units_out: u64,
    pub keyframes: u64,
    pub resets: u64,
    pub bitrate_changes: u64,
    /// Capture buffers the driver marked as failed.
    pub errors: u64,
    /// Frames the device read in place from the camera's buffer (DMABUF), not copied.
    pub imported: u64,
    /// OUTPUT memory switches (copy ⇄ DMABUF).
    pub memory_switches: u64,
}

/// A stateful M2M encoder: format negotiation, buffers, controls, keyframes, bitrate, streams.
pub struct M2mEncoder {
    dev: Device,
    codec: Codec,
    params: Params,
    found: Found,
    raw: PlaneFormat,
    /// Rows of the luma plane in the driver's layout (≥ height: drivers pad, e.g. to 16).
    luma_rows: u32,
    pub keyframe_method: KeyframeMethod,
    pub rate_method: RateMethod,
    applied_bps: u32,
    out: Vec<u8>,
    pub counters: Counters,
    /// DMABUF mode: the camera buffer each OUTPUT slot reads, held until the device hands the
    /// slot back (the camera must not refill it before).
    held: Vec<Option<Arc<DmaBuf>>>,
    /// Importable frames in a row while copying.
    import_streak: u32,
    /// The device refused a camera buffer (e.g. bcm2835-codec needs physically contiguous
    /// memory, which a USB camera's buffers are not): this encoder copies from then on.
    import_refused: Option<String>,
}

impl M2mEncoder {
    /// Opens `found` and negotiates: raw format and size on OUTPUT, `codec` on CAPTURE (the
    /// driver's stride and sizes taken as given), buffers, codec controls, streams on.
    pub fn open(found: &Found, codec: Codec, params: Params) -> Result<M2mEncoder, M2mError> {
        let path = found.path.clone();
        let dev = Device::open(&path)?;
        if !dev.caps()?.is_m2m_mplane() {
            return Err(M2mError::Unsupported { path, why: "not a multi-planar memory-to-memory device".into() });
        }
        // Capture first: for many encoders the coded format decides what the raw side may be.
        let cap = dev.set_format(BUF_CAPTURE_MPLANE, codec.fourcc(), params.width, params.height, 0)?;
        if cap.fourcc != codec.fourcc() {
            return Err(M2mError::Unsupported { path, why: format!("asked for {} on CAPTURE, the driver chose {}", device::fourcc_str(codec.fourcc()), device::fourcc_str(cap.fourcc)) });
        }
        let raw = dev.set_format(BUF_OUTPUT_MPLANE, found.raw_fourcc, params.width, params.height, 0)?;
        if raw.fourcc != found.raw_fourcc || raw.width != params.width || raw.height != params.height {
            return Err(M2mError::Unsupported {
                path,
                why: format!(
                    "asked for {} {}x{} on OUTPUT, the driver chose {} {}x{}",
                    device::fourcc_str(found.raw_fourcc), params.width, params.height, device::fourcc_str(raw.fourcc), raw.width, raw.height
                ),
            });
        }
        let luma_rows = raw_layout_rows(&raw).ok_or_else(|| M2mError::Unsupported { path: path.clone(), why: format!("unexpected raw layout from the driver: {raw:?}") })?;
        let mut enc = M2mEncoder {
            keyframe_method: if dev.query_control(sys::V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME).is_some() { KeyframeMethod::Control } else { KeyframeMethod::Reset },
            rate_method: RateMethod::None,
            dev,
            codec,
            params,
            found: found.clone(),
            raw,
            luma_rows,
            applied_bps: 0,
            out: Vec::with_capacity(cap.sizeimage[0] as usize),
            counters: Counters::default(),
            held: Vec::new(),
            import_streak: 0,
            import_refused: None,
        };
        enc.setup_controls();
        enc.dev.setup_queue(BUF_OUTPUT_MPLANE, raw, OUTPUT_BUFFERS)?;
        let cap = enc.dev.set_format(BUF_CAPTURE_MPLANE, codec.fourcc(), params.width, params.height, 0).unwrap_or(cap);
        enc.dev.setup_queue(BUF_CAPTURE_MPLANE, cap, CAPTURE_BUFFERS)?;
        enc.start()?;
        Ok(enc)
    }

    /// Codec controls, best effort (each driver has its own set; what matters is checked on
    /// the output — for H.264 the SPS).
    fn setup_controls(&mut self) {
        let p = self.params;
        let d = &self.dev;
        let set = |id: u32, v: i32| {
            if d.query_control(id).is_some() {
                if let Err(e) = d.set_control(id, v) {
                    log::debug!("{e} (control {id:#x} = {v})");
                }
            }
        };
        match self.codec {
            Codec::H264 => {
                set(sys::V4L2_CID_MPEG_VIDEO_H264_PROFILE, h264::V4L2_PROFILE_CONSTRAINED_BASELINE);
                set(sys::V4L2_CID_MPEG_VIDEO_H264_LEVEL, h264::v4l2_level(h264::level_for(p.width, p.height, p.fps)));
                set(sys::V4L2_CID_MPEG_VIDEO_H264_I_PERIOD, p.keyframe_interval_frames.min(i32::MAX as u32) as i32);
                set(sys::V4L2_CID_MPEG_VIDEO_REPEAT_SEQ_HEADER, 1);
                // Constant bitrate: what congestion control sets is what goes out.
                set(sys::V4L2_CID_MPEG_VIDEO_BITRATE_MODE, sys::v4l2_mpeg_video_bitrate_mode_V4L2_MPEG_VIDEO_BITRATE_MODE_CBR as i32);
                // Baseline: no B-frames.
                set(sys::V4L2_CID_MPEG_VIDEO_B_FRAMES, 0);
            }
            Codec::Fwht => {
                // vicodec's GOP is 1..16 frames.
                if let Some((min, max)) = d.query_control(sys::V4L2_CID_MPEG_VIDEO_GOP_SIZE) {
                    let gop = (p.keyframe_interval_frames.min(i32::MAX as u32) as i32).clamp(min, max);
                    if let Err(e) = d.set_control(sys::V4L2_CID_MPEG_VIDEO_GOP_SIZE, gop) {
                        log::debug!("{e}");
                    }
                }
            }
        }
        self.rate_method = match self.dev.query_control(sys::V4L2_CID_MPEG_VIDEO_BITRATE) {
            Some((min, max)) => RateMethod::Bitrate { min, max },
            None if self.codec == Codec::Fwht && self.dev.query_control(sys::V4L2_CID_FWHT_P_FRAME_QP).is_some() => RateMethod::FwhtQp,
            None => RateMethod::None,
        };
        if let Err(e) = self.apply_bitrate(p.bitrate_bps) {
            log::warn!("{e}");
        }
        let _ = self.dev.set_output_rate(p.fps);
    }

    fn start(&mut self) -> Result<(), M2mError> {
        for i in 0..self.dev.capture.as_ref().map_or(0, |q| q.count()) {
            self.dev.qbuf(BUF_CAPTURE_MPLANE, i, &[], 0, 0)?;
        }
        self.dev.stream_on(BUF_OUTPUT_MPLANE)?;
        self.dev.stream_on(BUF_CAPTURE_MPLANE)?;
        Ok(())
    }

    pub fn params(&self) -> Params {
        self.params
    }
    pub fn found(&self) -> &Found {
        &self.found
    }
    pub fn codec(&self) -> Codec {
        self.codec
    }
    /// The raw format the driver settled on (FourCC, stride, plane sizes).
    pub fn raw_format(&self) -> PlaneFormat {
        self.raw
    }
    pub fn coded_format(&self) -> Option<PlaneFormat> {
        self.dev.capture.as_ref().map(|q| q.format)
    }
    pub fn buffer_counts(&self) -> (usize, usize) {
        (self.dev.output.as_ref().map_or(0, |q| q.count()), self.dev.capture.as_ref().map_or(0, |q| q.count()))
    }
    pub fn applied_bitrate(&self) -> u32 {
        self.applied_bps
    }
    /// A control's current value (diagnostics, tests).
    pub fn control(&self, id: u32) -> Result<i32, M2mError> {
        self.dev.get_control(id)
    }

    /// Changes the target in place: a control, no new stream, no keyframe.
    pub fn set_bitrate(&mut self, bps: u32) -> Result<(), M2mError> {
        self.params.bitrate_bps = bps.max(1);
        if self.params.bitrate_bps == self.applied_bps {
            return Ok(());
        }
        self.apply_bitrate(self.params.bitrate_bps)
    }

    fn apply_bitrate(&mut self, bps: u32) -> Result<(), M2mError> {
        match self.rate_method {
            RateMethod::Bitrate { min, max } => {
                let v = (bps.min(i32::MAX as u32) as i32).clamp(min, max.max(min));
                self.dev.set_control(sys::V4L2_CID_MPEG_VIDEO_BITRATE, v)?;
            }
            RateMethod::FwhtQp => {
                let qp = fwht::qp_for(bps, self.params.width, self.params.height, self.params.fps);
                self.dev.set_control(sys::V4L2_CID_FWHT_P_FRAME_QP, qp)?;
                self.dev.set_control(sys::V4L2_CID_FWHT_I_FRAME_QP, qp)?;
            }
            RateMethod::None => {}
        }
        if self.applied_bps != 0 {
            self.counters.bitrate_changes += 1;
        }
        self.applied_bps = bps;
        Ok(())
    }

    /// The frame rate the rate control budgets for, in place (`VIDIOC_S_PARM`; best effort).
    pub fn set_frame_rate(&mut self, fps: u32) -> Result<(), M2mError> {
        let fps = fps.max(1);
        if fps == self.params.fps {
            return Ok(());
        }
        self.params.fps = fps;
        let _ = self.dev.set_output_rate(fps);
        if self.rate_method == RateMethod::FwhtQp {
            self.apply_bitrate(self.params.bitrate_bps)?;
        }
        Ok(())
    }

    /// The encoder's reset: CAPTURE stream off, its buffers back in, stream on. The next unit
    /// starts a new independent stream (a keyframe, with headers).
    pub fn reset(&mut self) -> Result<(), M2mError> {
        self.dev.stream_off(BUF_CAPTURE_MPLANE)?;
        for i in 0..self.dev.capture.as_ref().map_or(0, |q| q.count()) {
            self.dev.qbuf(BUF_CAPTURE_MPLANE, i, &[], 0, 0)?;
        }
        self.dev.stream_on(BUF_CAPTURE_MPLANE)?;
        self.counters.resets += 1;
        Ok(())
    }

    /// Both queues off, then on again (what a pause does): nothing queued survives, and the
    /// first unit after it is a keyframe.
    pub fn restart_streams(&mut self) -> Result<(), M2mError> {
        self.dev.stream_off(BUF_OUTPUT_MPLANE)?;
        self.held.iter_mut().for_each(|h| *h = None);
        self.dev.stream_off(BUF_CAPTURE_MPLANE)?;
        self.start()?;
        self.counters.resets += 1;
        Ok(())
    }

    /// Asks for the next unit to be a keyframe.
    pub fn request_keyframe(&mut self) -> Result<(), M2mError> {
        match self.keyframe_method {
            KeyframeMethod::Control => self.dev.set_control(sys::V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME, 1),
            KeyframeMethod::Reset => self.reset(),
        }
    }

    /// Why the device refused a camera buffer, if it did (it copies from then on).
    pub fn import_refused(&self) -> Option<&str> {
        self.import_refused.as_deref()
    }

    /// Whether the OUTPUT queue takes camera buffers by descriptor (DMABUF) right now.
    pub fn reads_in_place(&self) -> bool {
        self.dev.output.as_ref().is_some_and(|q| q.is_dmabuf())
    }

    /// Whether the device can read `d` in place: the very layout it asked for on OUTPUT (FourCC,
    /// stride, rows — the chroma sits where it expects it) and a buffer at least `sizeimage` long.
    pub fn can_import(&self, d: &DmaBuf) -> bool {
        self.import_refused.is_none() && layout_fits(&self.raw, self.luma_rows, self.params.width, self.params.height, d)
    }

    /// Both queues off, OUTPUT set up again with the other kind of memory, streams on.
    fn switch_output_memory(&mut self, dmabuf: bool) -> Result<(), M2mError> {
        self.dev.stream_off(BUF_OUTPUT_MPLANE)?;
        self.dev.stream_off(BUF_CAPTURE_MPLANE)?;
        self.held.clear();
        if dmabuf {
            self.dev.setup_dmabuf_queue(BUF_OUTPUT_MPLANE, self.raw, OUTPUT_BUFFERS)?;
            self.held.resize(self.dev.output.as_ref().map_or(0, |q| q.count()), None);
        } else {
            self.dev.setup_queue(BUF_OUTPUT_MPLANE, self.raw, OUTPUT_BUFFERS)?;
        }
        self.start()?;
        self.counters.memory_switches += 1;
        log::info!(
            "{}: {}",
            self.found.path,
            if dmabuf { "reading the camera's frames in place (DMABUF), no copy" } else { "copying frames into the encoder (they no longer come as camera DMABUFs in its layout)" }
        );
        Ok(())
    }

    /// Encodes one frame: read in place from its camera buffer where it can be
    /// ([`Self::can_import`]), else copied into a free OUTPUT buffer at the driver's stride;
    /// queued, and the unit waited for. (A unit may hold no picture — H.264 parameter sets
    /// alone, as bcm2835-codec sends first: the codec's wrapper then asks [`Self::next_unit`]
    /// again.)
    pub fn encode(&mut self, frame: &VideoFrame, force_keyframe: bool) -> Result<Unit<'_>, M2mError> {
        let p = self.params;
        if frame.width != p.width || frame.height != p.height {
            return Err(M2mError::Size { got_w: frame.width, got_h: frame.height, want_w: p.width, want_h: p.height });
        }
        let import = frame.dmabuf.as_ref().filter(|d| self.can_import(d)).cloned();
        match (&import, self.reads_in_place()) {
            (Some(_), false) => {
                self.import_streak += 1;
                if self.import_streak >= IMPORT_AFTER || self.counters.frames_in == 0 {
                    self.switch_output_memory(true)?;
                }
            }
            (None, true) => {
                self.import_streak = 0;
                self.switch_output_memory(false)?;
            }
            (None, false) => self.import_streak = 0,
            (Some(_), true) => {}
        }
        if force_keyframe {
            self.request_keyframe()?;
        }
        let index = self.free_output()?;
        match import.filter(|_| self.reads_in_place()) {
            Some(d) => {
                let used = self.raw.sizeimage[0];
                match self.dev.qbuf_dmabuf(BUF_OUTPUT_MPLANE, index, d.fd(), d.len.min(u32::MAX as usize) as u32, used, frame.capture_unix_us) {
                    Ok(()) => {
                        if let Some(slot) = self.held.get_mut(index) {
                            *slot = Some(d);
                        }
                        self.counters.imported += 1;
                    }
                    Err(e) if !e.is_gone() => {
                        // The device cannot read this camera's memory: copy, as before, for good.
                        log::warn!("{e}: the encoder cannot read the camera's buffers in place; copying frames instead");
                        self.import_refused = Some(e.to_string());
                        self.switch_output_memory(false)?;
                        return self.encode(frame, false);
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                let mut used = [0u32; 3];
                {
                    let raw = self.raw;
                    let rows = self.luma_rows;
                    let q = self.dev.output.as_mut().ok_or_else(|| M2mError::State { path: self.found.path.clone(), why: "no OUTPUT queue".into() })?;
                    fill_raw(q, index, &raw, rows, frame, &mut used).map_err(|why| M2mError::State { path: self.found.path.clone(), why })?;
                }
                self.dev.qbuf(BUF_OUTPUT_MPLANE, index, &used[..self.raw.num_planes], frame.capture_unix_us, 0)?;
            }
        }
        self.counters.frames_in += 1;
        self.next_unit()
    }

    /// Dequeues the next encoded unit (waits up to [`STALL_TIMEOUT`]).
    pub fn next_unit(&mut self) -> Result<Unit<'_>, M2mError> {
        let deadline = Instant::now() + STALL_TIMEOUT;
        loop {
            self.reclaim_outputs()?;
            if let Some(d) = self.dev.dqbuf(BUF_CAPTURE_MPLANE)? {
                let q = self.dev.capture.as_ref().ok_or_else(|| M2mError::State { path: self.found.path.clone(), why: "no CAPTURE queue".into() })?;
                let plane = q.plane(d.index, 0).unwrap_or(&[]);
                let end = (d.bytesused[0] as usize).min(plane.len());
                let start = (d.data_offset[0] as usize).min(end);
                self.out.clear();
                self.out.extend_from_slice(&plane[start..end]);
                // The buffer goes straight back: the unit is in `self.out`.
                self.dev.qbuf(BUF_CAPTURE_MPLANE, d.index, &[], 0, 0)?;
                if d.flags & sys::V4L2_BUF_FLAG_ERROR != 0 || self.out.is_empty() {
                    self.counters.errors += 1;
                    if d.flags & sys::V4L2_BUF_FLAG_LAST != 0 {
                        return Err(M2mError::State { path: self.found.path.clone(), why: "the encoder ended its stream (last buffer)".into() });
                    }
                    continue;
                }
                let keyframe = self.codec.is_keyframe(&self.out);
                self.counters.units_out += 1;
                self.counters.keyframes += keyframe as u64;
                return Ok(Unit {
                    data: &self.out,
                    keyframe,
                    flagged_keyframe: d.flags & sys::V4L2_BUF_FLAG_KEYFRAME != 0,
                    capture_unix_us: d.timestamp_us,
                    sequence: d.sequence,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(M2mError::Stalled { path: self.found.path.clone() });
            }
            self.dev.poll(libc::POLLIN, (deadline - now).min(Duration::from_millis(100)))?;
        }
    }

    /// Takes back the raw buffers the device is done with.
    fn reclaim_outputs(&mut self) -> Result<(), M2mError> {
        while let Some(d) = self.dev.dqbuf(BUF_OUTPUT_MPLANE)? {
            // The device is done reading that camera buffer: the camera may refill it.
            if let Some(slot) = self.held.get_mut(d.index) {
                *slot = None;
            }
        }
        Ok(())
    }

    fn free_output(&mut self) -> Result<usize, M2mError> {
        let deadline = Instant::now() + STALL_TIMEOUT;
        loop {
            self.reclaim_outputs()?;
            if let Some(i) = self.dev.output.as_ref().and_then(|q| q.free_index()) {
                return Ok(i);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(M2mError::Stalled { path: self.found.path.clone() });
            }
            self.dev.poll(libc::POLLOUT, (deadline - now).min(Duration::from_millis(100)))?;
        }
    }
}

/// Whether a camera buffer is laid out exactly as the device wants its raw input (`raw`, with
/// `luma_rows` rows before the chroma): same single-plane FourCC, size, stride and rows, and at
/// least `sizeimage` long. bcm2835-codec pads 1080 rows to 1088, so a 1080p camera buffer is
/// copied, not read in place.
pub fn layout_fits(raw: &PlaneFormat, luma_rows: u32, width: u32, height: u32, d: &DmaBuf) -> bool {
    raw.num_planes == 1
        && d.fourcc == raw.fourcc
        && (d.width, d.height) == (width, height)
        && d.bytesperline == raw.bytesperline[0]
        && d.height == luma_rows
        && d.len >= raw.sizeimage[0] as usize
}

/// Rows of the first plane in the driver's layout of a single-plane 4:2:0 format: from
/// `sizeimage = bytesperline × rows × 3/2` (drivers pad the height, bcm2835-codec to 16).
/// `None` when the layout does not add up.
pub fn raw_layout_rows(f: &PlaneFormat) -> Option<u32> {
    let bpl = f.bytesperline[0];
    if bpl < f.width || f.width == 0 || f.height == 0 {
        return None;
    }
    if f.num_planes == 3 {
        let ok = f.bytesperline[1] >= f.width / 2 && f.bytesperline[2] >= f.width / 2
            && f.sizeimage[0] as u64 >= bpl as u64 * f.height as u64;
        return ok.then_some(f.height);
    }
    if f.num_planes != 1 {
        return None;
    }
    let rows = (f.sizeimage[0] as u64 * 2 / 3 / bpl as u64) as u32;
    (rows >= f.height).then_some(rows)
}

/// Copies an I420 frame into an OUTPUT buffer in the driver's layout; `used` gets each plane's
/// bytes.
fn fill_raw(q: &mut device::Queue, index: usize, f: &PlaneFormat, rows: u32, frame: &VideoFrame, used: &mut [u32; 3]) -> Result<(), String> {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let (y, u, v) = frame.planes();
    let copy = |dst: &mut [u8], off: usize, stride: usize, src: &[u8], sw: usize, sh: usize| -> Result<(), String> {
        for r in 0..sh {
            let d = off + r * stride;
            let s = r * sw;
            let (Some(dd), Some(ss)) = (dst.get_mut(d..d + sw), src.get(s..s + sw)) else {
                return Err(format!("the driver's buffer ({} bytes) is too small for the frame", dst.len()));
            };
            dd.copy_from_slice(ss);
        }
        Ok(())
    };
    let bpl = f.bytesperline[0] as usize;
    let rows = rows as usize;
    match (f.fourcc, f.num_planes) {
        (device::FMT_YU12, 1) => {
            let buf = q.plane_mut(index, 0).ok_or("no output buffer")?;
            copy(buf, 0, bpl, y, w, h)?;
            let cu = bpl * rows;
            let cv = cu + (bpl / 2) * (rows / 2);
            copy(buf, cu, bpl / 2, u, w / 2, h / 2)?;
            copy(buf, cv, bpl / 2, v, w / 2, h / 2)?;
            used[0] = (cv + (bpl / 2) * (rows / 2)) as u32;
        }
        (device::FMT_NV12, 1) => {
            let buf = q.plane_mut(index, 0).ok_or("no output buffer")?;
            copy(buf, 0, bpl, y, w, h)?;
            let c = bpl * rows;
            for r in 0..h / 2 {
                let d = buf.get_mut(c + r * bpl..c + r * bpl + w).ok_or("the driver's buffer is too small for the frame")?;
                for x in 0..w / 2 {
                    d[2 * x] = u[r * (w / 2) + x];
                    d[2 * x + 1] = v[r * (w / 2) + x];
                }
            }
            used[0] = (c + bpl * (rows / 2)) as u32;
        }
        (device::FMT_YM12, 3) | (device::FMT_YU12, 3) => {
            for (p, (src, sw, sh)) in [(y, w, h), (u, w / 2, h / 2), (v, w / 2, h / 2)].into_iter().enumerate() {
                let stride = f.bytesperline[p] as usize;
                let buf = q.plane_mut(index, p).ok_or("no output buffer plane")?;
                copy(buf, 0, stride, src, sw, sh)?;
                used[p] = (stride * sh) as u32;
            }
        }
        (fcc, n) => return Err(format!("raw format {} in {n} planes is not handled", device::fourcc_str(fcc))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf(fourcc: u32, w: u32, h: u32, bpl: u32, size: u32) -> PlaneFormat {
        PlaneFormat { fourcc, width: w, height: h, num_planes: 1, bytesperline: [bpl, 0, 0], sizeimage: [size, 0, 0] }
    }

    #[test]
    fn raw_layout_follows_the_drivers_stride_and_padding() {
        // vicodec: no padding at a multiple of 8
        assert_eq!(raw_layout_rows(&pf(device::FMT_YU12, 640, 480, 640, 640 * 480 * 3 / 2)), Some(480));
        // bcm2835-codec style: stride to 32 (or 64), rows to 16
        assert_eq!(raw_layout_rows(&pf(device::FMT_YU12, 1280, 720, 1280, 1280 * 720 * 3 / 2)), Some(720));
        assert_eq!(raw_layout_rows(&pf(device::FMT_YU12, 1916, 1080, 1920, 1920 * 1088 * 3 / 2)), Some(1088));
        // nonsense from a driver is refused, not trusted
        assert_eq!(raw_layout_rows(&pf(device::FMT_YU12, 640, 480, 320, 640 * 480 * 3 / 2)), None);
        assert_eq!(raw_layout_rows(&pf(device::FMT_YU12, 640, 480, 640, 1000)), None);
        assert_eq!(raw_layout_rows(&pf(device::FMT_YU12, 640, 480, 0, 0)), None);
    }

    #[test]
    fn a_camera_buffer_is_read_in_place_only_in_the_devices_exact_layout() {
        use crate::capture::dmabuf::{DmaBuf, Layout};
        let nv12 = |w: u32, h: u32, bpl: u32, len: usize| DmaBuf::stand_in(Layout { fourcc: device::FMT_NV12, width: w, height: h, bytesperline: bpl }, len);
        let raw = pf(device::FMT_NV12, 640, 480, 640, 460_800);
        let rows = raw_layout_rows(&raw).unwrap();
        assert!(layout_fits(&raw, rows, 640, 480, &nv12(640, 480, 640, 460_800)), "vivid NV12 → vicodec NV12");
        assert!(layout_fits(&raw, rows, 640, 480, &nv12(640, 480, 640, 462_848)), "a page-rounded buffer is fine");
        assert!(!layout_fits(&raw, rows, 640, 480, &nv12(640, 480, 704, 506_880)), "another stride");
        assert!(!layout_fits(&raw, rows, 640, 480, &nv12(640, 480, 640, 400_000)), "shorter than sizeimage");
        assert!(!layout_fits(&raw, rows, 640, 480, &nv12(320, 240, 640, 460_800)), "another size");
        let yu12 = DmaBuf::stand_in(Layout { fourcc: device::FMT_YU12, width: 640, height: 480, bytesperline: 640 }, 460_800);
        assert!(!layout_fits(&raw, rows, 640, 480, &yu12), "another FourCC");
        // bcm2835-codec at 1080p: 1088 rows (16-row padding) — the camera's 1080 do not fit.
        let padded = pf(device::FMT_NV12, 1920, 1080, 1920, 1920 * 1088 * 3 / 2);
        let prows = raw_layout_rows(&padded).unwrap();
        assert_eq!(prows, 1088);
        assert!(!layout_fits(&padded, prows, 1920, 1080, &nv12(1920, 1080, 1920, 1920 * 1088 * 3 / 2)));
    }

    #[test]
    fn the_encoder_takes_the_cameras_raw_format_when_it_can() {
        let f = Found { path: "/dev/video11".into(), driver: "bcm2835-codec".into(), card: "x".into(), raw_fourcc: device::FMT_YU12,
            raw_fourccs: vec![device::FMT_YU12, device::FMT_NV12] };
        assert_eq!(f.preferring_raw(Some(device::FMT_NV12)).raw_fourcc, device::FMT_NV12);
        assert_eq!(f.preferring_raw(Some(device::FMT_H264)).raw_fourcc, device::FMT_YU12, "not one it takes");
        assert_eq!(f.preferring_raw(None).raw_fourcc, device::FMT_YU12);
    }

    #[test]
    fn codecs_parse_and_name_their_fourcc() {
        assert_eq!(Codec::parse("FWHT"), Some(Codec::Fwht));
        assert_eq!(Codec::parse("h264"), Some(Codec::H264));
        assert_eq!(Codec::parse("vp8"), None);
        assert_eq!(device::fourcc_str(Codec::H264.fourcc()), "H264");
    }

    #[test]
    fn a_missing_device_is_a_clear_error() {
        let e = check("/dev/peercam-missing-encoder", Codec::H264).unwrap_err();
        assert!(e.contains("/dev/peercam-missing-encoder"), "{e}");
        let e = M2mError::io("/dev/video11", "VIDIOC_QBUF", std::io::Error::from_raw_os_error(libc::ENODEV));
        assert!(e.is_gone(), "{e}");
        assert!(e.to_string().contains("gone"), "{e}");
    }
}
