//! The ALSA microphone through real alsa-lib, without a sound card (docs/test-rigs.md, rig 2).
//!
//! How: every test in this binary points `ALSA_CONFIG_PATH` at a configuration written into a
//! temporary directory before alsa-lib is first used (alsa-lib reads its configuration once per
//! process). That configuration defines capture PCMs of alsa-lib's `file` plugin on a `null`
//! slave: `infile` is the "microphone" — raw interleaved samples the test wrote — and `file`
//! (here `/dev/null`) receives a copy. The real `AlsaMic` opens such a PCM by name
//! (`audio.device = { exact = "peercam_test_mic_44k" }`), negotiates format, rate and channels,
//! reads, downmixes, resamples to 48 kHz and cuts 20 ms frames; the test then encodes them
//! with the pipeline's Opus encoder, decodes them with libopus and checks that the tone
//! arrives with its frequency and level.
//!
//! Run alone: `cargo test --release --test alsa`.

use peercam::capture::alsa::{AlsaMic, MicRequest, SampleFormat};
use peercam::capture::constraints::{AudioConstraints, NumConstraint, StrConstraint};
use peercam::capture::{AudioFrame, AudioSource, AUDIO_FRAME_SAMPLES};
use peercam::codec::opus::OpusEncoder;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

const TONE_HZ: f64 = 1000.0;
const AMPLITUDE: f64 = 0.5;

/// Writes the inputs and the configuration once, and points alsa-lib at it.
fn setup() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("peercam-alsa-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 44.1 kHz stereo S16_LE (resampled and downmixed by the source), and 48 kHz mono S16_LE
        // (passed straight through); 2 s each.
        std::fs::write(dir.join("tone-44k-stereo.raw"), tone_s16(44_100, 2, 2.0)).unwrap();
        std::fs::write(dir.join("tone-48k-mono.raw"), tone_s16(48_000, 1, 2.0)).unwrap();
        let pcm = |name: &str, file: &str| {
            format!(
                "pcm.{name} {{\n  type file\n  slave.pcm {{ type null }}\n  file \"/dev/null\"\n  infile \"{}\"\n  format \"raw\"\n  hint.show on\n  hint.description \"peercam test microphone\"\n}}\n",
                dir.join(file).display()
            )
        };
        // A PCM without `plug` in front that takes exactly two channels (alsa-lib's `multi`
        // plugin fixes the channel count, as a stereo-only USB microphone's hw device does).
        let two_only = "pcm.peercam_test_mic_2ch_only {\n  type multi\n  slaves.a { pcm { type null } channels 2 }\n  bindings.0 { slave a channel 0 }\n  bindings.1 { slave a channel 1 }\n}\n";
        let conf = pcm("peercam_test_mic_44k", "tone-44k-stereo.raw") + &pcm("peercam_test_mic_48k", "tone-48k-mono.raw") + two_only;
        let path = dir.join("asound.conf");
        std::fs::write(&path, conf).unwrap();
        // SAFETY: set once, before any thread of this binary calls into alsa-lib (all tests
        // come through here first).
        unsafe { std::env::set_var("ALSA_CONFIG_PATH", &path) };
        dir
    })
}

/// `secs` of a sine at TONE_HZ / AMPLITUDE, every channel the same, S16_LE interleaved.
fn tone_s16(rate: u32, channels: usize, secs: f64) -> Vec<u8> {
    let n = (rate as f64 * secs) as usize;
    let mut out = Vec::with_capacity(n * channels * 2);
    for i in 0..n {
        let v = (AMPLITUDE * 32767.0 * (2.0 * std::f64::consts::PI * TONE_HZ * i as f64 / rate as f64).sin()) as i16;
        for _ in 0..channels {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Runs `f` on a thread and fails the test if it takes longer than `secs` (a capture stream that
/// was never started would block forever).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).expect("timed out: capture never delivered")
}

/// Captures `frames` 20 ms frames, Opus-encodes and decodes them; returns the decoded PCM.
fn capture_through_opus(mic: &mut AlsaMic, frames: usize) -> Vec<i16> {
    let mut enc = OpusEncoder::new(64_000).unwrap();
    let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut frame = AudioFrame { samples: vec![0; AUDIO_FRAME_SAMPLES], capture_unix_us: 0 };
    let mut decoded = Vec::new();
    for _ in 0..frames {
        mic.next_frame(&mut frame).unwrap();
        assert_eq!(frame.samples.len(), AUDIO_FRAME_SAMPLES);
        assert!(frame.capture_unix_us > 0);
        let unit = enc.encode(&frame).unwrap();
        let mut pcm = vec![0i16; AUDIO_FRAME_SAMPLES];
        let n = dec.decode(&unit.payloads[0], &mut pcm, false).unwrap();
        decoded.extend_from_slice(&pcm[..n]);
    }
    decoded
}

fn assert_tone(decoded: &[i16], what: &str) {
    // Skip the first 200 ms (codec and resampler start-up), measure the next 800 ms.
    let tail = &decoded[9_600..48_000];
    let crossings = tail.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
    assert!((798..=802).contains(&crossings), "{what}: {crossings} rising zero crossings in 0.8 s, want 800 (1 kHz)");
    let rms = (tail.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
    let want = AMPLITUDE * 32767.0 / 2f64.sqrt();
    assert!((rms / want - 1.0).abs() < 0.1, "{what}: level rms {rms:.0}, want {want:.0} ±10%");
}

fn request(name: &str, rate: f64, channels: f64) -> MicRequest {
    MicRequest {
        device: Some(StrConstraint::exact(name)),
        constraints: AudioConstraints {
            sample_rate: Some(NumConstraint::exact(rate)),
            channel_count: Some(NumConstraint::exact(channels)),
        },
    }
}

#[test]
fn tone_at_44k_stereo_arrives_as_48k_mono_with_its_frequency_and_level() {
    setup();
    let decoded = within(30, || {
        let (mut mic, opened) = AlsaMic::open(request("peercam_test_mic_44k", 44_100.0, 2.0)).unwrap();
        assert_eq!(opened.pcm, "peercam_test_mic_44k");
        assert_eq!((opened.rate, opened.channels), (44_100, 2));
        assert_eq!(opened.format, SampleFormat::S16);
        capture_through_opus(&mut mic, 55)
    });
    assert_tone(&decoded, "44.1 kHz stereo → 48 kHz mono");
}

#[test]
fn tone_at_48k_mono_passes_straight_through() {
    setup();
    let decoded = within(30, || {
        // No constraints on rate or channels: the PCM takes anything, so 48 kHz mono (the
        // pipeline's own format, the default ideal) is chosen.
        let req = MicRequest { device: Some(StrConstraint::exact("peercam_test_mic_48k")), constraints: AudioConstraints::default() };
        let (mut mic, opened) = AlsaMic::open(req).unwrap();
        assert_eq!((opened.rate, opened.channels), (48_000, 1));
        capture_through_opus(&mut mic, 55)
    });
    assert_tone(&decoded, "48 kHz mono");
}

#[test]
fn a_pcm_that_does_not_exist_is_named_in_the_error() {
    setup();
    let e = AlsaMic::open(request("peercam_no_such_pcm", 48_000.0, 1.0)).err().expect("must fail");
    assert!(e.contains("peercam_no_such_pcm"), "{e}");
}

#[test]
fn device_listing_shows_the_configured_pcm_names() {
    setup();
    let names = peercam::capture::devices::list_pcm_names();
    assert!(names.iter().any(|p| p.name == "peercam_test_mic_44k"), "{names:?}");
}

#[test]
fn a_pcm_that_refuses_the_channel_count_is_named_with_what_it_offers() {
    setup();
    let e = AlsaMic::open(request("peercam_test_mic_2ch_only", 48_000.0, 1.0)).err().expect("must fail");
    eprintln!("error shown: {e}");
    assert!(e.contains("peercam_test_mic_2ch_only") && e.contains("channel_count") && e.contains('2'), "{e}");
    // Without the constraint it opens, in the two channels it takes (downmixed to mono).
    let req = MicRequest { device: Some(StrConstraint::exact("peercam_test_mic_2ch_only")), constraints: AudioConstraints::default() };
    let (_mic, opened) = AlsaMic::open(req).unwrap();
    assert_eq!(opened.channels, 2);
}

/// Why this rig cannot provoke a capture overrun (xrun): the `null` slave keeps no time, so the
/// `file` plugin hands over as much as is asked for at once and its buffer never overruns. The
/// xrun test runs on a real kernel driver instead (snd-aloop in the VM rig, tests/vm).
#[test]
fn the_file_plugin_rig_keeps_no_time() {
    setup();
    let (mut mic, _) = AlsaMic::open(request("peercam_test_mic_48k", 48_000.0, 1.0)).unwrap();
    let mut frame = AudioFrame { samples: vec![0; AUDIO_FRAME_SAMPLES], capture_unix_us: 0 };
    let t0 = std::time::Instant::now();
    for _ in 0..50 {
        mic.next_frame(&mut frame).unwrap();
    }
    assert!(t0.elapsed() < Duration::from_millis(500), "1 s of audio took {:?}", t0.elapsed());
    assert_eq!(mic.xruns(), 0);
}

/// A reader that stalls (a busy or stopped process) lets the capture buffer overrun: counted as
/// an overrun even where the driver reports none (this rig's file plugin keeps no time, see
/// above). A pause the caller asked for (nobody listens) is not one.
#[test]
fn a_stalled_reader_counts_an_overrun_and_a_pause_does_not() {
    setup();
    let (mut mic, _) = AlsaMic::open(request("peercam_test_mic_48k", 48_000.0, 1.0)).unwrap();
    let mut frame = AudioFrame { samples: vec![0; AUDIO_FRAME_SAMPLES], capture_unix_us: 0 };
    mic.next_frame(&mut frame).unwrap();
    mic.pause();
    std::thread::sleep(Duration::from_millis(500));
    mic.next_frame(&mut frame).unwrap();
    assert_eq!(mic.xruns(), 0, "a pause asked for is no overrun");
    std::thread::sleep(Duration::from_millis(500));
    mic.next_frame(&mut frame).unwrap();
    assert_eq!(mic.xruns(), 1, "a stall is one");
    mic.next_frame(&mut frame).unwrap();
    assert_eq!(mic.xruns(), 1);
}
