//! `peercam selftest`: proves on the target (or under qemu) that the codecs work, and prints
//! how long they take. No devices, no network.

use crate::capture::testsrc::TestPattern;
use crate::capture::tone::Tone;
use crate::capture::{timecode, AudioFrame, VideoFrame, AUDIO_FRAME_SAMPLES};
use crate::codec::h264::{H264Encoder, H264Params};
use crate::codec::opus::OpusEncoder;
use crate::config::Config;
use std::time::Instant;

pub fn run(config: &Config, frames: u64) -> Result<String, String> {
    let v = &config.video;
    let (w, h, fps) = (v.width.get(), v.height.get(), v.fps.get());
    let pattern = TestPattern::new(w, h, fps).with_noise(v.test_pattern_noise_percent.get());
    let mut enc = H264Encoder::new(H264Params {
        width: w,
        height: h,
        fps,
        bitrate_bps: v.bitrate_kbps.get() * 1000,
        keyframe_interval_frames: fps * v.keyframe_interval_s.get(),
    })?;
    let mut frame = VideoFrame::new(w, h);
    let (mut bytes, mut keyframes, mut encoded) = (0usize, 0u64, 0u64);
    let t0 = Instant::now();
    for i in 0..frames.max(1) {
        let t = 1_700_000_000_000_000 + i * 1_000_000 / fps as u64;
        pattern.render(&mut frame, i, t);
        let (y, _, _) = frame.planes();
        if timecode::fits(w, h) && timecode::read(y, w, w as usize) != Some((t / 1000) as u32) {
            return Err("timestamp code did not read back".into());
        }
        if let Some(unit) = enc.encode(&frame, false)? {
            encoded += 1;
            keyframes += unit.keyframe as u64;
            bytes += unit.payloads.iter().map(|p| p.len()).sum::<usize>();
        }
    }
    let video_ms = t0.elapsed().as_secs_f64() * 1000.0 / frames.max(1) as f64;
    if encoded == 0 || keyframes == 0 {
        return Err(format!("H.264 produced {encoded} frames, {keyframes} keyframes"));
    }

    let mut opus = OpusEncoder::new(config.audio.bitrate_kbps.get() * 1000)?;
    let mut audio = AudioFrame { samples: vec![0; AUDIO_FRAME_SAMPLES], capture_unix_us: 0 };
    let t1 = Instant::now();
    for i in 0..50u64 {
        audio.capture_unix_us = i * 20_000;
        Tone::render(&mut audio.samples, audio.capture_unix_us);
        opus.encode(&audio)?;
    }
    let audio_ms = t1.elapsed().as_secs_f64() * 1000.0 / 50.0;

    // The sound analysis at its worst: a loud harmonic sound in every frame, so the cry detector's
    // two FFTs run every 20 ms (a quiet room skips them). 5 s of audio.
    let mut params = crate::pipeline::sound_params(&config.sound);
    params.cry_threshold_db = -90;
    let mut analyzer = crate::pipeline::sound::Analyzer::new(params);
    let mut events = Vec::new();
    let t2 = Instant::now();
    for i in 0..250u64 {
        for (j, s) in audio.samples.iter_mut().enumerate() {
            *s = (((i as usize * AUDIO_FRAME_SAMPLES + j) % 110) as i16 - 55) * 300;
        }
        analyzer.push(&audio.samples, i * 20, &mut events);
        events.clear();
    }
    let sound_ms_per_s = t2.elapsed().as_secs_f64() * 1000.0 / 5.0;
    Ok(format!(
        "selftest OK: H.264 {w}x{h}: {encoded} frames ({keyframes} IDR), {:.1} kB/frame ({:.0} kbit/s), {video_ms:.2} ms/frame (pattern+encode+packetize); Opus: {audio_ms:.3} ms/20 ms frame; sound analysis (worst case): {sound_ms_per_s:.2} ms per second of audio",
        bytes as f64 / encoded as f64 / 1000.0,
        bytes as f64 * 8.0 * fps as f64 / frames.max(1) as f64 / 1000.0
    ))
}
