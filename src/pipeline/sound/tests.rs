//! The analyses on generated signals (issue 14's list): a cry-like voice (harmonic bursts at a
//! baby's pitch and rhythm) raises `cry`; white and pink noise, silence, the device's own test
//! beep, a steady harmonic drone and speech from `espeak-ng` do not. Plus the CPU cost.

use super::alert::Change;
use super::*;
use std::f64::consts::PI;

const FRAME: usize = crate::capture::AUDIO_FRAME_SAMPLES;
const T0: u64 = 1_764_000_000_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

fn to_i16(x: &[f64]) -> Vec<i16> {
    x.iter().map(|v| (v * 32767.0).clamp(-32768.0, 32767.0) as i16).collect()
}

fn white(secs: f64, rms: f64) -> Vec<f64> {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    // Uniform in [-1, 1) has RMS 1/sqrt(3).
    (0..(secs * 48_000.0) as usize).map(|_| r.next() * rms * 3f64.sqrt()).collect()
}

/// Pink noise (Paul Kellet's filter over white), scaled to `rms`.
fn pink(secs: f64, rms: f64) -> Vec<f64> {
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    let mut b = [0.0f64; 7];
    let raw: Vec<f64> = (0..(secs * 48_000.0) as usize)
        .map(|_| {
            let w = r.next();
            b[0] = 0.99886 * b[0] + w * 0.0555179;
            b[1] = 0.99332 * b[1] + w * 0.0750759;
            b[2] = 0.96900 * b[2] + w * 0.1538520;
            b[3] = 0.86650 * b[3] + w * 0.3104856;
            b[4] = 0.55000 * b[4] + w * 0.5329522;
            b[5] = -0.7616 * b[5] - w * 0.0168980;
            let y = b.iter().sum::<f64>() + w * 0.5362;
            b[6] = w * 0.115926;
            y
        })
        .collect();
    let now = (raw.iter().map(|v| v * v).sum::<f64>() / raw.len() as f64).sqrt();
    raw.iter().map(|v| v * rms / now).collect()
}

/// A cry-like voice: `f0` with a 5 Hz vibrato, 12 harmonics falling 1/h, in bursts of `on_ms`
/// separated by `off_ms` (breaths), 30 ms fades; `peak` is the amplitude.
fn cry(secs: f64, f0: f64, on_ms: u64, off_ms: u64, peak: f64) -> Vec<f64> {
    let n = (secs * 48_000.0) as usize;
    let norm: f64 = (1..=12).map(|h| 1.0 / h as f64).sum();
    let mut phase = 0.0f64;
    (0..n)
        .map(|i| {
            let t = i as f64 / 48_000.0;
            let in_cycle = (t * 1000.0) as u64 % (on_ms + off_ms);
            let env = if in_cycle >= on_ms {
                0.0
            } else {
                let edge = (in_cycle.min(on_ms - in_cycle) as f64 / 30.0).min(1.0);
                edge
            };
            let f = f0 * (1.0 + 0.06 * (2.0 * PI * 5.0 * t).sin());
            phase += 2.0 * PI * f / 48_000.0;
            let v: f64 = (1..=12).map(|h| (h as f64 * phase).sin() / h as f64).sum::<f64>() / norm;
            v * env * peak
        })
        .collect()
}

fn sine_bursts(secs: f64, f: f64, on_ms: u64, period_ms: u64, amp: f64, harmonics: usize) -> Vec<f64> {
    (0..(secs * 48_000.0) as usize)
        .map(|i| {
            let t = i as f64 / 48_000.0;
            if (t * 1000.0) as u64 % period_ms >= on_ms {
                return 0.0;
            }
            (1..=harmonics).map(|h| (2.0 * PI * f * h as f64 * t).sin() / h as f64).sum::<f64>() * amp
        })
        .collect()
}

fn mix(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

struct Run {
    events: Vec<SoundEvent>,
    voiced_frames: usize,
    frames: usize,
}

fn run_with(samples: &[i16], params: SoundParams) -> Run {
    let mut a = Analyzer::new(params);
    let mut events = vec![];
    let mut voiced_frames = 0;
    let mut frames = 0;
    for (i, chunk) in samples.chunks_exact(FRAME).enumerate() {
        a.push(chunk, T0 + i as u64 * 20, &mut events);
        frames += 1;
        voiced_frames += a.last_look().voiced as usize;
    }
    Run { events, voiced_frames, frames }
}

fn run(samples: &[i16]) -> Run {
    run_with(samples, SoundParams::default())
}

fn alerts(r: &Run, kind: AlertKind) -> Vec<Change> {
    r.events
        .iter()
        .filter_map(|e| match e {
            SoundEvent::Alert { kind: k, change } if *k == kind => Some(*change),
            _ => None,
        })
        .collect()
}

fn levels(r: &Run) -> Vec<(f32, f32)> {
    r.events.iter().filter_map(|e| if let SoundEvent::Level { level_db, peak_db, .. } = e { Some((*level_db, *peak_db)) } else { None }).collect()
}

#[test]
fn a_cry_raises_cry_and_noise_with_times_and_peak() {
    // 12 s of crying at 420 Hz: 900 ms bursts, 400 ms breaths, peak −6 dBFS; room noise under it.
    let signal = mix(&cry(12.0, 420.0, 900, 400, 0.5), &pink(12.0, 0.003));
    let mut p = SoundParams::default();
    p.cry_reset_s = 5;
    p.noise_reset_s = 5;
    let r = run_with(&to_i16(&[signal, vec![0.0; 48_000 * 8]].concat()), p);
    let c = alerts(&r, AlertKind::Cry);
    eprintln!("cry: {c:?}; voiced frames {} of {}", r.voiced_frames, r.frames);
    let [Change::Start { start_ms, peak_db }, Change::End { end_ms, .. }] = c.as_slice() else { panic!("{c:?}") };
    assert!(*start_ms - T0 < 200, "the episode starts with the first burst: {}", start_ms - T0);
    assert!((-12.0..=0.0).contains(peak_db), "peak {peak_db}");
    // The last burst starts at 11.7 s and is cut at 12 s.
    assert!((end_ms - T0).abs_diff(12_000) <= 40, "ends with the last burst: {}", end_ms - T0);
    // When it fired: after the third burst (~3.5 s of crying).
    let fired_at = r
        .events
        .iter()
        .take_while(|e| !matches!(e, SoundEvent::Alert { kind: AlertKind::Cry, .. }))
        .filter(|e| matches!(e, SoundEvent::Level { .. }))
        .count() as f64
        * 0.25;
    eprintln!("cry alert after {fired_at:.2} s of crying");
    assert!(fired_at <= 5.0, "{fired_at}");
    assert_eq!(alerts(&r, AlertKind::Noise).len(), 2, "crying is noise too");
}

#[test]
fn cries_at_the_edges_of_the_pitch_range_and_a_fast_rhythm_are_cries() {
    for (f0, on, off) in [(280.0, 700, 300), (550.0, 1200, 500), (350.0, 500, 250)] {
        let r = run(&to_i16(&cry(10.0, f0, on, off, 0.3)));
        let c = alerts(&r, AlertKind::Cry);
        eprintln!("f0 {f0}: {c:?} ({} voiced of {})", r.voiced_frames, r.frames);
        assert!(matches!(c.first(), Some(Change::Start { .. })), "f0 {f0} {on}/{off}: {c:?}");
    }
}

#[test]
fn steady_noise_silence_and_the_test_beep_are_not_cries() {
    let cases: Vec<(&str, Vec<f64>)> = vec![
        ("white noise −20 dBFS", white(20.0, 0.1)),
        ("pink noise −14 dBFS", pink(20.0, 0.2)),
        ("silence", vec![0.0; 48_000 * 20]),
        // The service's own test tone: 440 Hz, 200 ms each second, amplitude 0.3.
        ("test beep", sine_bursts(20.0, 440.0, 200, 1000, 0.3, 1)),
        // A pure 440 Hz sine in cry-like bursts: pitch and rhythm but no harmonics.
        ("pure sine bursts", sine_bursts(20.0, 440.0, 900, 1300, 0.3, 1)),
        // Harmonic and at cry pitch, but steady: a motor or an organ note — no rhythm.
        ("steady harmonic drone", cry(20.0, 400.0, 100_000, 1, 0.3)),
        // A fan: pink noise plus a hum with harmonics at 100 Hz.
        ("fan", mix(&pink(20.0, 0.1), &sine_bursts(20.0, 100.0, 1000, 1000, 0.05, 6))),
    ];
    for (name, s) in cases {
        let r = run(&to_i16(&s));
        eprintln!("{name}: voiced {} of {} frames", r.voiced_frames, r.frames);
        assert!(alerts(&r, AlertKind::Cry).is_empty(), "{name}: {:?}", alerts(&r, AlertKind::Cry));
    }
}

#[test]
fn steady_noise_raises_noise_but_the_beep_and_silence_do_not() {
    assert!(matches!(alerts(&run(&to_i16(&white(5.0, 0.1))), AlertKind::Noise).as_slice(), [Change::Start { .. }]));
    assert!(alerts(&run(&to_i16(&sine_bursts(20.0, 440.0, 200, 1000, 0.3, 1))), AlertKind::Noise).is_empty());
    assert!(alerts(&run(&to_i16(&vec![0.0; 48_000 * 5])), AlertKind::Noise).is_empty());
    // Under the threshold: −50 dBFS of white noise (its voice-band peak is about −45 dB).
    assert!(alerts(&run(&to_i16(&white(5.0, 0.003))), AlertKind::Noise).is_empty());
}

#[test]
fn the_level_meter_reads_a_known_rms_four_times_a_second() {
    // 1 kHz sine, amplitude 0.25: RMS −15.05 dBFS, peak −12.04 dB.
    let r = run(&to_i16(&sine_bursts(3.0, 1000.0, 1000, 1000, 0.25, 1)));
    let l = levels(&r);
    assert_eq!(l.len(), 12, "3 s at 250 ms");
    for (rms, peak) in &l[1..] {
        assert!((rms - -15.05).abs() < 0.2, "{rms}");
        assert!((peak - -12.04).abs() < 0.3, "{peak}");
    }
    // The event's JSON: one decimal, the window's end time.
    let e = r.events.iter().find(|e| matches!(e, SoundEvent::Level { .. })).unwrap();
    assert_eq!(e.name(), "sound_level");
    assert_eq!(e.fields()["at"], T0 + 240, "a window is whole 20 ms frames");
    // White noise of RMS 0.1 (−20 dBFS) over the full band: the voice band holds
    // (2500 − 300) / 24000 of its power, i.e. −20 + 10·log10(0.0917) = −30.4 dB.
    let l = levels(&run(&to_i16(&white(3.0, 0.1))));
    for (rms, _) in &l[1..] {
        assert!((rms - -30.4).abs() < 0.7, "{rms}");
    }
}

#[test]
fn live_changes_are_range_checked_and_name_the_key() {
    let p = SoundParams::default();
    let c: SoundChange = serde_json::from_str(r#"{"noise_threshold_db": -40, "cry_min_bursts": 2}"#).unwrap();
    let q = p.with(&c).unwrap();
    assert_eq!((q.noise_threshold_db, q.cry_min_bursts, q.noise_reset_s), (-40, 2, 60));
    let c: SoundChange = serde_json::from_str(r#"{"noise_threshold_db": 5}"#).unwrap();
    assert_eq!(p.with(&c).unwrap_err().field, "noise_threshold_db");
    assert!(serde_json::from_str::<SoundChange>(r#"{"nope": 1}"#).is_err());
}

/// Reads espeak-ng's WAV (16-bit mono) and resamples it to 48 kHz (linear: fine for a test).
fn espeak(args: &[&str], text: &str) -> Option<Vec<f64>> {
    let out = match std::process::Command::new("espeak-ng").args(args).arg("--stdout").arg(text).output() {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => panic!("espeak-ng failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            let why = format!("espeak-ng is not installed ({e}): scripts/install-deps.sh installs it");
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIP speech test: {why}");
            return None;
        }
    };
    let rate = u32::from_le_bytes(out[24..28].try_into().unwrap()) as f64;
    let data = out.windows(4).position(|w| w == b"data").expect("a data chunk") + 8;
    let s: Vec<f64> = out[data..].chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as f64 / 32768.0).collect();
    let n = (s.len() as f64 * 48_000.0 / rate) as usize;
    Some(
        (0..n)
            .map(|i| {
                let x = i as f64 * rate / 48_000.0;
                let (j, f) = (x as usize, x.fract());
                s[j] * (1.0 - f) + s.get(j + 1).copied().unwrap_or(0.0) * f
            })
            .collect(),
    )
}

#[test]
fn speech_from_espeak_is_not_a_cry() {
    let text = "Shh, it is all right, go back to sleep now. Mummy is here. \
                Did you have a bad dream? Let me tell you a story about a little bear who could not sleep.";
    for (voice, args) in [("male", vec!["-s", "150"]), ("female", vec!["-v", "en+f3", "-s", "150"]), ("high", vec!["-v", "en+f4", "-p", "70"])] {
        let Some(speech) = espeak(&args, text) else { return };
        // Loud: peak at −3 dBFS (quiet speech is also under the cry threshold; this is harder).
        let peak = speech.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let loud: Vec<f64> = speech.iter().map(|v| v / peak * 0.7).collect();
        let twice = [loud.clone(), loud].concat();
        let r = run(&to_i16(&twice));
        eprintln!("speech ({voice}, {:.1} s): voiced {} of {} frames", twice.len() as f64 / 48_000.0, r.voiced_frames, r.frames);
        assert!(alerts(&r, AlertKind::Cry).is_empty(), "{voice}: {:?}", alerts(&r, AlertKind::Cry));
    }
}

/// The price per second of audio on this machine; printed (run with `--nocapture`). The
/// worst case is sound over the cry threshold all the time (two FFTs every 20 ms); at night,
/// quiet frames skip them.
#[test]
fn analysis_costs_little_per_second() {
    let loud = to_i16(&mix(&cry(20.0, 420.0, 900, 400, 0.5), &pink(20.0, 0.05)));
    let quiet = to_i16(&pink(20.0, 0.001));
    // The test tone: a beep at the start of each second, digital silence between (the filters'
    // state must not decay into slow subnormal floats: see level::flush).
    let beeps: Vec<i16> = (0..20 * 48_000).map(|i| if i % 48_000 < 4_800 { ((i as f64 * 0.13).sin() * 12_000.0) as i16 } else { 0 }).collect();
    for (name, s) in [("loud (FFT every frame)", &loud), ("quiet (meter only)", &quiet), ("a beep a second, silence between", &beeps)] {
        let mut a = Analyzer::new(SoundParams::default());
        let mut out = Vec::new();
        let t = std::time::Instant::now();
        for (i, c) in s.chunks_exact(FRAME).enumerate() {
            a.push(c, T0 + i as u64 * 20, &mut out);
            out.clear();
        }
        let us_per_s = t.elapsed().as_secs_f64() * 1e6 / 20.0;
        eprintln!("sound analysis, {name}: {us_per_s:.0} µs per second of audio = {:.3} % of one core", us_per_s / 1e4);
        if !cfg!(debug_assertions) {
            assert!(us_per_s < 20_000.0, "{name}: {us_per_s} µs/s");
        }
    }
}

#[test]
fn the_devices_own_lullaby_raises_no_alert_but_a_cry_over_its_noise_does() {
    let run_own = |samples: &[i16], own: OwnSound| {
        let mut a = Analyzer::new(SoundParams::default());
        a.set_own_sound(own);
        let mut events = vec![];
        for (i, chunk) in samples.chunks_exact(FRAME).enumerate() {
            a.push(chunk, T0 + i as u64 * 20, &mut events);
        }
        Run { events, voiced_frames: 0, frames: 0 }
    };
    // Loud pink noise from its own speaker: levels go on, no noise alert.
    let noise = to_i16(&pink(6.0, 0.2));
    let r = run_own(&noise, OwnSound::Noise);
    assert!(alerts(&r, AlertKind::Noise).is_empty());
    assert!(levels(&r).iter().any(|(l, _)| *l > -30.0), "levels still published");
    assert!(!alerts(&run(&noise), AlertKind::Noise).is_empty(), "the same noise from the room alerts");
    // A baby crying over the device's white noise is still a cry (the noise is steady).
    // (−34 dBFS of noise under a −6 dBFS cry: a cry is 20-40 dB louder than a noise machine at the cot.)
    let crying = to_i16(&mix(&cry(8.0, 420.0, 900, 400, 0.5), &pink(8.0, 0.02)));
    assert!(!alerts(&run_own(&crying, OwnSound::Noise), AlertKind::Cry).is_empty(), "cry over the lullaby noise");
    // A sound file (music may look like a cry): no alerts while it plays.
    let r = run_own(&crying, OwnSound::File);
    assert!(alerts(&r, AlertKind::Cry).is_empty() && alerts(&r, AlertKind::Noise).is_empty());
}
