//! `peercam encoder-check`: drives an M2M encoder through the same [`M2mEncoder`] code path the
//! service uses, with the codec as a parameter (FWHT on vicodec in the VM test, H.264 on a Pi),
//! and reports what happened as JSON: format negotiation (the driver's stride and sizes),
//! buffers, keyframe on request, bitrate changed in place, stream off/on, and — where the kernel
//! has a decoder for the codec (vicodec's) — the decoded pictures against the input (PSNR), so
//! a broken encoder cannot pass. `run_until` keeps encoding until an error or a deadline: the
//! VM test unbinds the driver under it (the device vanishing).

use super::device::{self, Device, PlaneFormat, BUF_CAPTURE_MPLANE, BUF_OUTPUT_MPLANE};
use super::{raw_layout_rows, Codec, Found, M2mEncoder, M2mError, Params};
use crate::capture::testsrc::TestPattern;
use crate::capture::VideoFrame;
use serde::Serialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use v4l::v4l_sys as sys;

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckArgs {
    pub device: Option<String>,
    pub codec: Codec,
    /// A decoder node for `codec`; `None`: look for one; `Some("none")`: skip decoding.
    pub decoder: Option<String>,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Encode until an error or this long, then report (the device-vanishing test).
    pub run_seconds: Option<u64>,
    /// Frames from this V4L2 camera instead of the test pattern, through the service's own
    /// camera code, lent as DMABUFs and read in place by the encoder (the zero-copy check).
    pub camera: Option<String>,
    /// The camera's pixel format for that (`NV12`, `YU12`).
    pub camera_format: Option<String>,
}

#[derive(Debug, Serialize)]
struct FrameReport {
    i: usize,
    bytes: usize,
    key: bool,
    flagged_key: bool,
    timestamp_kept: bool,
}

/// The frames encoded so far, and what came out.
struct Rec {
    pattern: TestPattern,
    w: u32,
    h: u32,
    fps: u32,
    inputs: Vec<VideoFrame>,
    units: Vec<Vec<u8>>,
    frames: Vec<FrameReport>,
    encode_us: Vec<u64>,
}

impl Rec {
    /// Encodes test-pattern frame `i`; returns whether its unit is a keyframe.
    fn step(&mut self, enc: &mut M2mEncoder, i: usize, force: bool) -> Result<bool, M2mError> {
        let mut f = VideoFrame::new(self.w, self.h);
        let ts = 1_000_000_000 + i as u64 * 1_000_000 / self.fps as u64;
        self.pattern.render(&mut f, i as u64, ts);
        f.capture_unix_us = ts;
        let t = Instant::now();
        let u = enc.encode(&f, force)?;
        self.encode_us.push(t.elapsed().as_micros() as u64);
        self.frames.push(FrameReport { i, bytes: u.data.len(), key: u.keyframe, flagged_key: u.flagged_keyframe, timestamp_kept: u.capture_unix_us == ts });
        let key = u.keyframe;
        self.units.push(u.data.to_vec());
        self.inputs.push(f);
        Ok(key)
    }
}

/// Runs the check; `Ok` is the JSON report (with `"ok": bool`), `Err` a setup failure.
pub fn run(args: &CheckArgs) -> Result<Value, String> {
    if args.camera.is_some() {
        return run_camera(args);
    }
    let found = find_encoder(args)?;
    let (w, h, fps) = (args.width, args.height, args.fps.max(1));
    let high_bps = w * h * fps * 4; // 4 bits per pixel: fine quantizer
    let params = Params { width: w, height: h, fps, bitrate_bps: high_bps, keyframe_interval_frames: 1000 };
    let t0 = Instant::now();
    let mut enc = M2mEncoder::open(&found, args.codec, params).map_err(|e| e.to_string())?;
    let open_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let raw = enc.raw_format();
    let mut report = json!({
        "device": found.path, "driver": found.driver, "card": found.card, "codec": args.codec.name(),
        "open_ms": open_ms,
        "raw_format": plane_json(&raw), "raw_rows": raw_layout_rows(&raw),
        "coded_format": enc.coded_format().map(|f| plane_json(&f)),
        "buffers": { "output": enc.buffer_counts().0, "capture": enc.buffer_counts().1 },
        "keyframe_method": format!("{:?}", enc.keyframe_method), "rate_method": format!("{:?}", enc.rate_method),
    });
    if let Some(secs) = args.run_seconds {
        return Ok(run_until(&mut enc, report, w, h, fps, Duration::from_secs(secs)));
    }
    let mut rec = Rec { pattern: TestPattern::new(w, h, fps), w, h, fps, inputs: vec![], units: vec![], frames: vec![], encode_us: vec![] };
    let mut checks = serde_json::Map::new();
    let mut ok = true;
    let mut note = |name: &str, pass: bool, detail: Value, checks: &mut serde_json::Map<String, Value>| {
        ok &= pass;
        checks.insert(name.into(), json!({ "pass": pass, "detail": detail }));
    };
    let result: Result<(), M2mError> = (|| {
        // 0..6 at the high rate: the first is a keyframe, the rest are not.
        let mut keys = vec![];
        for i in 0..6 {
            keys.push(rec.step(&mut enc, i, false)?);
        }
        note("first_keyframe", keys[0], json!(keys), &mut checks);
        note("then_p_frames", keys[1..].iter().all(|k| !k), json!(keys), &mut checks);
        // 6: a keyframe on request; 7 is a P-frame again.
        let forced = rec.step(&mut enc, 6, true)?;
        let after = rec.step(&mut enc, 7, false)?;
        note("keyframe_on_request", forced && !after, json!({ "forced": forced, "next": after, "method": format!("{:?}", enc.keyframe_method) }), &mut checks);
        // 8..14: bitrate down in place (no keyframe, no new stream), sizes must drop.
        let before = enc.counters;
        let qp_before = qp(&enc);
        let low = high_bps / 40;
        enc.set_bitrate(low)?;
        let mut low_keys = vec![];
        for i in 8..14 {
            low_keys.push(rec.step(&mut enc, i, false)?);
        }
        let units = &rec.units;
        let mean = |r: std::ops::Range<usize>| units[r.clone()].iter().map(|u| u.len()).sum::<usize>() as f64 / r.len() as f64;
        let (high_mean, low_mean) = (mean(2..6), mean(9..14));
        note(
            "bitrate_in_place",
            low_mean < high_mean * 0.8 && low_keys.iter().all(|k| !k) && enc.counters.resets == before.resets,
            json!({ "high_bps": high_bps, "low_bps": low, "high_mean_bytes": high_mean, "low_mean_bytes": low_mean,
                    "qp_before": qp_before, "qp_after": qp(&enc), "keyframes_after_change": low_keys.iter().filter(|k| **k).count() }),
            &mut checks,
        );
        enc.set_bitrate(high_bps)?;
        // stream off/on: the next unit is a keyframe, then P again.
        enc.restart_streams()?;
        let k = rec.step(&mut enc, 14, false)?;
        let p = rec.step(&mut enc, 15, false)?;
        note("stream_off_on", k && !p, json!({ "first": k, "second": p }), &mut checks);
        Ok(())
    })();
    if let Err(e) = result {
        note("encode", false, json!(e.to_string()), &mut checks);
    }
    let Rec { inputs, units, frames, encode_us, .. } = rec;
    let ts_ok = frames.iter().all(|f| f.timestamp_kept);
    note("timestamps_copied", ts_ok, json!(null), &mut checks);
    let flags_agree = frames.iter().all(|f| f.flagged_key == f.key);
    // Informational: what the driver's buffer flags say (vicodec's encoder sets none).
    report["buffer_flags_agree"] = json!(flags_agree);
    report["frames"] = json!(frames);
    report["encode_us"] = json!(encode_us);
    report["counters"] = json!(format!("{:?}", enc.counters));
    drop(enc);
    // The decoder: every unit in order, compared with its input.
    if args.decoder.as_deref() != Some("none") && !units.is_empty() {
        match decode_all(args.decoder.as_deref(), args.codec, w, h, &units) {
            Ok(decoded) => {
                let psnr: Vec<f64> = decoded.iter().zip(&inputs).map(|(d, i)| psnr_y(i, d)).collect();
                let high: Vec<f64> = psnr.iter().enumerate().filter(|(i, _)| *i < 8 || *i >= 14).map(|(_, p)| *p).collect();
                let lowp: Vec<f64> = psnr.iter().enumerate().filter(|(i, _)| (8..14).contains(i)).map(|(_, p)| *p).collect();
                let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
                let (min_high, min_low) = (min(&high), min(&lowp));
                note(
                    "decoded_matches_input",
                    decoded.len() == units.len() && min_high >= 30.0 && min_low >= 20.0,
                    json!({ "frames": decoded.len(), "psnr_y_db": psnr.iter().map(|p| (p * 10.0).round() / 10.0).collect::<Vec<_>>(),
                            "min_psnr_high_rate_db": min_high, "min_psnr_low_rate_db": min_low, "thresholds_db": [30.0, 20.0] }),
                    &mut checks,
                );
            }
            Err(e) => note("decoded_matches_input", false, json!(e), &mut checks),
        }
    }
    report["checks"] = Value::Object(checks);
    report["ok"] = json!(ok);
    Ok(report)
}

/// `--device`, or the first M2M encoder of `--codec`.
fn find_encoder(args: &CheckArgs) -> Result<Found, String> {
    match &args.device {
        Some(p) => super::check(p, args.codec),
        None => super::probe(args.codec).map_err(|seen| format!("no M2M {} encoder found: {}", args.codec.name(), seen.join("; "))),
    }
}

/// Frames in the camera check.
const CAMERA_FRAMES: usize = 40;

/// The zero-copy path on real drivers: a V4L2 camera opened by the service's own code
/// (`capture::v4l2`, asked to lend its buffers), its frames encoded by [`M2mEncoder`] from the
/// camera's DMABUFs, and what came out decoded and compared with the camera's picture (the
/// I420 copy the pipeline makes anyway). Fails if the frames were copied instead, or if the
/// encoder read a buffer the camera had already refilled (the picture would not match).
fn run_camera(args: &CheckArgs) -> Result<Value, String> {
    use crate::capture::constraints::{NumConstraint, StrConstraint, VideoConstraints};
    use crate::capture::v4l2::{CameraRequest, V4l2Camera};
    use crate::capture::{Frame, VideoSource};
    let path = args.camera.clone().unwrap_or_default();
    let req = CameraRequest {
        device: Some(StrConstraint { exact: Some(path.clone()), ideal: None }),
        constraints: VideoConstraints {
            width: Some(NumConstraint::exact(args.width as f64)),
            height: Some(NumConstraint::exact(args.height as f64)),
            frame_rate: Some(NumConstraint::ideal(args.fps.max(1) as f64)),
            format: args.camera_format.as_deref().map(|f| StrConstraint { exact: Some(f.to_string()), ideal: None }),
            ..Default::default()
        },
        controls: Default::default(),
    };
    let (mut cam, opened) = V4l2Camera::new(req);
    opened.map_err(|e| format!("camera {path}: {e}"))?;
    cam.offer_dmabuf();
    let mut frame = Frame::new(args.width, args.height);
    cam.next_frame(&mut frame).map_err(|e| format!("camera {path}: {e}"))?;
    let Frame::I420(first) = &frame else { return Err(format!("camera {path} delivered H.264, not raw frames")) };
    let (w, h) = (first.width, first.height);
    let lent = first.dmabuf.as_ref().map(|d| json!({ "fourcc": device::fourcc_str(d.fourcc), "width": d.width, "height": d.height,
        "bytesperline": d.bytesperline, "len": d.len, "bytesused": d.bytesused }));
    let camera_fourcc = first.dmabuf.as_ref().map(|d| d.fourcc);
    let found = find_encoder(args)?.preferring_raw(camera_fourcc);
    let fps = args.fps.max(1);
    let params = Params { width: w, height: h, fps, bitrate_bps: w * h * fps * 4, keyframe_interval_frames: 1000 };
    let mut enc = M2mEncoder::open(&found, args.codec, params).map_err(|e| e.to_string())?;
    let mut report = json!({
        "device": found.path, "driver": found.driver, "codec": args.codec.name(), "camera": path,
        "camera_buffer": lent, "raw_format": plane_json(&enc.raw_format()),
    });
    let (mut inputs, mut units, mut encode_us, mut lent_frames) = (vec![], vec![], vec![], 0usize);
    let mut error = None;
    for i in 0..CAMERA_FRAMES {
        if i > 0 {
            if let Err(e) = cam.next_frame(&mut frame) {
                error = Some(format!("camera, frame {i}: {e}"));
                break;
            }
        }
        let Frame::I420(f) = &frame else { break };
        lent_frames += f.dmabuf.is_some() as usize;
        let t = Instant::now();
        match enc.encode(f, false) {
            Ok(u) => units.push(u.data.to_vec()),
            Err(e) => {
                error = Some(format!("encoder, frame {i}: {e}"));
                break;
            }
        }
        encode_us.push(t.elapsed().as_micros() as u64);
        inputs.push(f.clone());
    }
    let counters = enc.counters;
    drop(enc);
    let mut checks = serde_json::Map::new();
    let mut ok = error.is_none();
    let mut note = |name: &str, pass: bool, detail: Value| {
        ok &= pass;
        checks.insert(name.into(), json!({ "pass": pass, "detail": detail }));
    };
    note("frames", units.len() == CAMERA_FRAMES, json!({ "encoded": units.len(), "wanted": CAMERA_FRAMES, "error": error }));
    // Every frame came with its camera buffer (the camera never ran out of queued buffers:
    // each lent one came back), and every one was read in place (none copied).
    note("camera_lent_every_frame", lent_frames == units.len() && !units.is_empty(), json!({ "lent": lent_frames, "frames": units.len() }));
    note("read_in_place", counters.imported as usize == units.len() && !units.is_empty(),
        json!({ "imported": counters.imported, "frames": units.len(), "memory_switches": counters.memory_switches }));
    if args.decoder.as_deref() != Some("none") && !units.is_empty() {
        match decode_all(args.decoder.as_deref(), args.codec, w, h, &units) {
            Ok(decoded) => {
                let psnr: Vec<f64> = decoded.iter().zip(&inputs).map(|(d, i)| psnr_y(i, d)).collect();
                // Against the frame before as well: a buffer the camera had refilled would match
                // that (or the next) better than its own.
                let shifted: Vec<f64> = decoded.iter().skip(1).zip(&inputs).map(|(d, i)| psnr_y(i, d)).collect();
                let min = psnr.iter().copied().fold(f64::INFINITY, f64::min);
                note("decoded_matches_camera", decoded.len() == units.len() && min >= 30.0,
                    json!({ "frames": decoded.len(), "min_psnr_y_db": min,
                            "psnr_y_db": psnr.iter().map(|p| (p * 10.0).round() / 10.0).collect::<Vec<_>>(),
                            "psnr_y_vs_previous_frame_db": shifted.iter().map(|p| (p * 10.0).round() / 10.0).collect::<Vec<_>>() }));
            }
            Err(e) => note("decoded_matches_camera", false, json!(e)),
        }
    }
    report["encode_us"] = json!(encode_us);
    report["counters"] = json!(format!("{counters:?}"));
    report["checks"] = Value::Object(checks);
    report["ok"] = json!(ok);
    Ok(report)
}

fn qp(enc: &M2mEncoder) -> Option<i32> {
    enc.control(sys::V4L2_CID_FWHT_P_FRAME_QP).ok().or_else(|| enc.control(sys::V4L2_CID_MPEG_VIDEO_BITRATE).ok())
}

fn plane_json(f: &PlaneFormat) -> Value {
    json!({ "fourcc": device::fourcc_str(f.fourcc), "width": f.width, "height": f.height, "planes": f.num_planes,
            "bytesperline": &f.bytesperline[..f.num_planes], "sizeimage": &f.sizeimage[..f.num_planes] })
}

/// Encodes at `fps` until an error or `limit`; the report says which and how it ended.
fn run_until(enc: &mut M2mEncoder, mut report: Value, w: u32, h: u32, fps: u32, limit: Duration) -> Value {
    let pattern = TestPattern::new(w, h, fps);
    let mut f = VideoFrame::new(w, h);
    let start = Instant::now();
    let mut n = 0u64;
    let period = Duration::from_secs(1) / fps;
    let outcome = loop {
        if start.elapsed() >= limit {
            break Ok(());
        }
        pattern.render(&mut f, n, crate::capture::unix_now_us());
        if let Err(e) = enc.encode(&f, false) {
            break Err(e);
        }
        n += 1;
        std::thread::sleep(period);
    };
    report["frames_encoded"] = json!(n);
    report["seconds"] = json!(start.elapsed().as_secs_f64());
    match outcome {
        Ok(()) => report["ok"] = json!(true),
        Err(e) => {
            report["ok"] = json!(false);
            report["gone"] = json!(e.is_gone());
            report["error"] = json!(e.to_string());
        }
    }
    report
}

/// A stateful M2M decoder (vicodec's): compressed units in on OUTPUT, I420 out on CAPTURE.
/// Only for the check; the product has no decoder.
fn decode_all(path: Option<&str>, codec: Codec, w: u32, h: u32, units: &[Vec<u8>]) -> Result<Vec<VideoFrame>, String> {
    let path = match path {
        Some(p) => p.to_string(),
        None => find_decoder(codec).ok_or_else(|| format!("no M2M {} decoder found", codec.name()))?,
    };
    let err = |e: M2mError| e.to_string();
    let mut dev = Device::open(&path).map_err(err)?;
    let coded = dev.set_format(BUF_OUTPUT_MPLANE, codec.fourcc(), w, h, 0).map_err(err)?;
    let raw = dev.set_format(BUF_CAPTURE_MPLANE, device::FMT_YU12, w, h, 0).map_err(err)?;
    if raw.fourcc != device::FMT_YU12 || raw.num_planes != 1 || (raw.width, raw.height) != (w, h) {
        return Err(format!("{path}: decoder chose {raw:?}"));
    }
    let rows = raw_layout_rows(&raw).ok_or_else(|| format!("{path}: odd raw layout {raw:?}"))? as usize;
    dev.setup_queue(BUF_OUTPUT_MPLANE, coded, 2).map_err(err)?;
    dev.setup_queue(BUF_CAPTURE_MPLANE, raw, 4).map_err(err)?;
    for i in 0..dev.capture.as_ref().map_or(0, |q| q.count()) {
        dev.qbuf(BUF_CAPTURE_MPLANE, i, &[], 0, 0).map_err(err)?;
    }
    dev.stream_on(BUF_OUTPUT_MPLANE).map_err(err)?;
    dev.stream_on(BUF_CAPTURE_MPLANE).map_err(err)?;
    let mut out = vec![];
    for (n, unit) in units.iter().enumerate() {
        let deadline = Instant::now() + super::STALL_TIMEOUT;
        let index = loop {
            while dev.dqbuf(BUF_OUTPUT_MPLANE).map_err(err)?.is_some() {}
            if let Some(i) = dev.output.as_ref().and_then(|q| q.free_index()) {
                break i;
            }
            if Instant::now() >= deadline {
                return Err(format!("{path}: decoder took no input at unit {n}"));
            }
            dev.poll(libc::POLLOUT, Duration::from_millis(50)).map_err(err)?;
        };
        let q = dev.output.as_mut().ok_or("no OUTPUT queue")?;
        let buf = q.plane_mut(index, 0).ok_or("no output buffer")?;
        if buf.len() < unit.len() {
            return Err(format!("{path}: unit {n} ({} bytes) does not fit the decoder's buffer ({})", unit.len(), buf.len()));
        }
        buf[..unit.len()].copy_from_slice(unit);
        dev.qbuf(BUF_OUTPUT_MPLANE, index, &[unit.len() as u32], n as u64 + 1, 0).map_err(err)?;
        let mut source_changes = 0;
        let d = loop {
            if let Some(d) = dev.dqbuf(BUF_CAPTURE_MPLANE).map_err(err)? {
                if d.flags & sys::V4L2_BUF_FLAG_LAST != 0 && d.bytesused[0] == 0 && source_changes < 2 {
                    // A stateful decoder's source change (the stream's size is now known; the
                    // visible size is not settable by S_FMT): CAPTURE off, its format and
                    // buffers again, on — the unit is decoded after that.
                    source_changes += 1;
                    dev.stream_off(BUF_CAPTURE_MPLANE).map_err(err)?;
                    // S_FMT is refused (EBUSY) while the queue has buffers.
                    dev.release_queue(BUF_CAPTURE_MPLANE);
                    let raw2 = dev.set_format(BUF_CAPTURE_MPLANE, device::FMT_YU12, w, h, 0).map_err(err)?;
                    if raw2 != raw {
                        return Err(format!("{path}: after the source change the decoder chose {raw2:?}"));
                    }
                    dev.setup_queue(BUF_CAPTURE_MPLANE, raw, 4).map_err(err)?;
                    for i in 0..dev.capture.as_ref().map_or(0, |q| q.count()) {
                        dev.qbuf(BUF_CAPTURE_MPLANE, i, &[], 0, 0).map_err(err)?;
                    }
                    dev.stream_on(BUF_CAPTURE_MPLANE).map_err(err)?;
                    continue;
                }
                break d;
            }
            if Instant::now() >= deadline {
                return Err(format!("{path}: no decoded picture for unit {n}"));
            }
            dev.poll(libc::POLLIN, Duration::from_millis(50)).map_err(err)?;
        };
        if d.flags & sys::V4L2_BUF_FLAG_ERROR != 0 || d.bytesused[0] == 0 {
            return Err(format!("{path}: decoder failed on unit {n} (flags {:#x}, {} bytes)", d.flags, d.bytesused[0]));
        }
        let q = dev.capture.as_ref().ok_or("no CAPTURE queue")?;
        let plane = q.plane(d.index, 0).ok_or("no capture buffer")?;
        out.push(read_i420(plane, &raw, rows).ok_or_else(|| format!("{path}: decoded buffer too small"))?);
        dev.qbuf(BUF_CAPTURE_MPLANE, d.index, &[], 0, 0).map_err(err)?;
    }
    Ok(out)
}

fn find_decoder(codec: Codec) -> Option<String> {
    (0..64u32).map(|n| format!("/dev/video{n}")).find(|p| {
        let Ok(dev) = Device::open(p) else { return false };
        dev.caps().is_ok_and(|c| c.is_m2m_mplane())
            && dev.formats(BUF_OUTPUT_MPLANE).contains(&codec.fourcc())
            && dev.formats(BUF_CAPTURE_MPLANE).contains(&device::FMT_YU12)
    })
}

fn read_i420(plane: &[u8], f: &PlaneFormat, rows: usize) -> Option<VideoFrame> {
    let (w, h) = (f.width as usize, f.height as usize);
    let bpl = f.bytesperline[0] as usize;
    let mut frame = VideoFrame::new(f.width, f.height);
    let (cu, cv) = (bpl * rows, bpl * rows + (bpl / 2) * (rows / 2));
    let data = &mut frame.data;
    for r in 0..h {
        data[r * w..r * w + w].copy_from_slice(plane.get(r * bpl..r * bpl + w)?);
    }
    let (ys, cs) = (w * h, (w / 2) * (h / 2));
    for r in 0..h / 2 {
        let s = r * (bpl / 2);
        data[ys + r * (w / 2)..ys + r * (w / 2) + w / 2].copy_from_slice(plane.get(cu + s..cu + s + w / 2)?);
        data[ys + cs + r * (w / 2)..ys + cs + r * (w / 2) + w / 2].copy_from_slice(plane.get(cv + s..cv + s + w / 2)?);
    }
    Some(frame)
}

/// PSNR of the luma planes, dB (99 for identical).
pub fn psnr_y(a: &VideoFrame, b: &VideoFrame) -> f64 {
    let n = (a.width * a.height) as usize;
    let (ya, yb) = (&a.data[..n.min(a.data.len())], &b.data[..n.min(b.data.len())]);
    let se: f64 = ya.iter().zip(yb).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let mse = se / n.max(1) as f64;
    if mse == 0.0 { 99.0 } else { 10.0 * (255.0 * 255.0 / mse).log10() }
}

/// The found device as JSON (for `/api/settings`-like reports).
pub fn found_json(f: &Found) -> Value {
    json!({ "device": f.path, "driver": f.driver, "card": f.card, "raw_format": device::fourcc_str(f.raw_fourcc) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_is_high_for_near_copies_and_low_for_noise() {
        let mut a = VideoFrame::new(64, 64);
        TestPattern::new(64, 64, 30).render(&mut a, 0, 0);
        assert_eq!(psnr_y(&a, &a.clone()), 99.0);
        let mut b = a.clone();
        for (i, p) in b.data.iter_mut().enumerate() {
            *p = p.wrapping_add((i % 3) as u8);
        }
        assert!(psnr_y(&a, &b) > 40.0);
        let mut c = a.clone();
        for (i, p) in c.data.iter_mut().enumerate() {
            *p = (i * 7919 % 251) as u8;
        }
        assert!(psnr_y(&a, &c) < 15.0);
    }

    #[test]
    fn read_i420_honours_the_stride() {
        let f = PlaneFormat { fourcc: device::FMT_YU12, width: 4, height: 2, num_planes: 1, bytesperline: [8, 0, 0], sizeimage: [8 * 2 * 3 / 2, 0, 0] };
        let mut plane = vec![0u8; 24];
        plane[0..4].copy_from_slice(&[1, 2, 3, 4]);
        plane[8..12].copy_from_slice(&[5, 6, 7, 8]);
        plane[16..18].copy_from_slice(&[9, 10]);
        plane[20..22].copy_from_slice(&[11, 12]);
        let fr = read_i420(&plane, &f, 2).unwrap();
        assert_eq!(fr.data, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert!(read_i420(&plane[..10], &f, 2).is_none(), "short buffer: None, no panic");
    }
}
