//! Sounds the device plays on its own speaker: white, pink and brown noise made here, and sound
//! files a parent put in the state directory (`<state_dir>/sounds/`: WAV, FLAC, Ogg Vorbis, MP3,
//! decoded by `symphonia`). Each hands out 48 kHz mono `f32`, a frame at a time, for ever (files
//! loop). Pure sources: who plays them, how loud and for how long is `rtc::talkback::lullaby`.
//!
//! Why decode on the fly rather than load a file: a 10-minute lullaby is 115 MB of 48 kHz
//! floats, a quarter of a Zero 2 W's memory; decoding 20 ms at a time costs well under 1 % of a
//! core and a few kilobytes.

use super::alsa::Resampler;
use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{Decoder, DecoderOptions};
use symphonia::core::formats::{FormatOptions, FormatReader, SeekMode, SeekTo};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

pub const RATE: u32 = 48_000;
/// The built-in noises, by name.
pub const NOISES: [&str; 3] = ["white", "pink", "brown"];
/// File extensions listed as sounds.
pub const EXTENSIONS: [&str; 5] = ["wav", "flac", "ogg", "oga", "mp3"];
/// Files listed at most (a directory of thousands is not a menu).
pub const MAX_FILES: usize = 100;
/// Bigger files are not offered (an SD card's sound file is minutes, not hours).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// RMS of every noise at full volume: −15 dBFS, loud enough to mask a room, with headroom.
const NOISE_RMS: f32 = 0.178;

/// A sound by name: a noise, or a file in the sounds directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SoundInfo {
    pub name: String,
    /// "noise" or "file".
    pub kind: &'static str,
}

/// Why a sound cannot play.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoundError {
    #[error("no sound named {0:?} (built in: white, pink, brown; files go in {1})")]
    Unknown(String, String),
    #[error("{0}: {1}")]
    File(String, String),
}

/// What can be played: the noises, then the files in `dir` (sorted; bounded).
pub fn list(dir: &Path) -> Vec<SoundInfo> {
    let mut out: Vec<SoundInfo> = NOISES.iter().map(|n| SoundInfo { name: n.to_string(), kind: "noise" }).collect();
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() <= MAX_FILE_BYTES))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_sound_file(n))
        .collect();
    files.sort();
    files.truncate(MAX_FILES);
    out.extend(files.into_iter().map(|name| SoundInfo { name, kind: "file" }));
    out
}

fn is_sound_file(name: &str) -> bool {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    !name.starts_with('.') && ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str()))
}

/// A playing sound.
pub enum Sound {
    Noise(Noise),
    File(Box<FileSound>),
}

impl Sound {
    /// Opens `name`: a noise, or a file directly inside `dir` (no paths: a name with a slash or
    /// a leading dot is refused, so a request cannot reach outside the sounds directory).
    pub fn open(name: &str, dir: &Path) -> Result<Self, SoundError> {
        if let Some(n) = Noise::named(name) {
            return Ok(Sound::Noise(n));
        }
        let unknown = || SoundError::Unknown(name.to_string(), dir.display().to_string());
        if name.contains(['/', '\\']) || !is_sound_file(name) {
            return Err(unknown());
        }
        let path = dir.join(name);
        if !path.is_file() {
            return Err(unknown());
        }
        FileSound::open(path).map(|f| Sound::File(Box::new(f)))
    }

    /// Fills `out` with the next samples (48 kHz mono, −1..1).
    pub fn fill(&mut self, out: &mut [f32]) -> Result<(), SoundError> {
        match self {
            Sound::Noise(n) => {
                n.fill(out);
                Ok(())
            }
            Sound::File(f) => f.fill(out),
        }
    }
}

/// White, pink (−3 dB/octave) or brown (−6 dB/octave) noise at `NOISE_RMS`.
pub struct Noise {
    colour: Colour,
    rng: u64,
    /// Pink: Paul Kellet's filter state; brown: the integrator in `b[0]`.
    b: [f32; 7],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Colour {
    White,
    Pink,
    Brown,
}

impl Noise {
    pub fn named(name: &str) -> Option<Self> {
        let colour = match name {
            "white" => Colour::White,
            "pink" => Colour::Pink,
            "brown" => Colour::Brown,
            _ => return None,
        };
        Some(Self { colour, rng: 0x9E37_79B9_7F4A_7C15, b: [0.0; 7] })
    }

    /// Uniform in −1..1 (xorshift64*: the noise needs no better randomness, and it is cheap).
    fn white(&mut self) -> f32 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    pub fn fill(&mut self, out: &mut [f32]) {
        // Uniform −1..1 has an RMS of 1/√3; each colour's gain brings it to NOISE_RMS.
        for o in out.iter_mut() {
            let w = self.white();
            *o = match self.colour {
                Colour::White => w * NOISE_RMS * 3f32.sqrt(),
                Colour::Pink => {
                    // Paul Kellet's refined pink filter (accurate to ±0.05 dB above 9 Hz at 44.1 kHz).
                    let b = &mut self.b;
                    b[0] = 0.99886 * b[0] + w * 0.0555179;
                    b[1] = 0.99332 * b[1] + w * 0.0750759;
                    b[2] = 0.96900 * b[2] + w * 0.1538520;
                    b[3] = 0.86650 * b[3] + w * 0.3104856;
                    b[4] = 0.55000 * b[4] + w * 0.5329522;
                    b[5] = -0.7616 * b[5] - w * 0.0168980;
                    let p = b[0] + b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + w * 0.5362;
                    b[6] = w * 0.115926;
                    p * NOISE_RMS * 0.575
                }
                Colour::Brown => {
                    // A leaky integrator of white noise: −6 dB/octave above ~4 Hz, no DC drift.
                    self.b[0] = 0.9995 * self.b[0] + 0.02 * w;
                    self.b[0] * NOISE_RMS * 2.8
                }
            };
        }
    }
}

/// A sound file decoded on the fly, downmixed to mono, resampled to 48 kHz, looped.
pub struct FileSound {
    name: String,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track: u32,
    resampler: Option<Resampler>,
    ready: VecDeque<f32>,
    mono: Vec<f32>,
    resampled: Vec<f32>,
    /// Packets decoded since the last loop start: a file that loops without giving any audio
    /// would spin for ever.
    decoded_since_loop: u64,
}

/// Decode errors in a row before the file is given up (one corrupt packet is skipped).
const MAX_DECODE_ERRORS: u32 = 20;

impl FileSound {
    pub fn open(path: PathBuf) -> Result<Self, SoundError> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let err = |e: String| SoundError::File(name.clone(), e);
        let file = File::open(&path).map_err(|e| err(format!("cannot open: {e}")))?;
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let mss = MediaSourceStream::new(Box::new(file), Default::default());
        let probed = symphonia::default::get_probe()
            .format(&hint, mss, &FormatOptions::default(), &MetadataOptions::default())
            .map_err(|e| err(format!("not a sound file peercam can play (WAV, FLAC, Ogg Vorbis, MP3): {e}")))?;
        let format = probed.format;
        let track = format
            .default_track()
            .filter(|t| t.codec_params.codec != symphonia::core::codecs::CODEC_TYPE_NULL)
            .ok_or_else(|| err("no audio track".into()))?;
        let rate = track.codec_params.sample_rate.ok_or_else(|| err("no sample rate".into()))?;
        let decoder = symphonia::default::get_codecs()
            .make(&track.codec_params, &DecoderOptions::default())
            .map_err(|e| err(format!("cannot decode its audio: {e}")))?;
        let resampler = if rate == RATE { None } else { Some(Resampler::new(rate, RATE).map_err(err)?) };
        let track = track.id;
        Ok(Self {
            name: name.clone(),
            format,
            decoder,
            track,
            resampler,
            ready: VecDeque::new(),
            mono: Vec::new(),
            resampled: Vec::new(),
            decoded_since_loop: 0,
        })
    }

    pub fn fill(&mut self, out: &mut [f32]) -> Result<(), SoundError> {
        let mut errors = 0;
        while self.ready.len() < out.len() {
            match self.decode_next() {
                Ok(()) => errors = 0,
                Err(e) if errors < MAX_DECODE_ERRORS => {
                    log::debug!("sound {}: {e}", self.name);
                    errors += 1;
                }
                Err(e) => return Err(SoundError::File(self.name.clone(), e)),
            }
        }
        for o in out.iter_mut() {
            *o = self.ready.pop_front().unwrap_or(0.0);
        }
        Ok(())
    }

    /// Decodes one packet into `ready` (at the end of the file, starts again).
    fn decode_next(&mut self) -> Result<(), String> {
        let packet = match self.format.next_packet() {
            Ok(p) => p,
            Err(symphonia::core::errors::Error::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                if self.decoded_since_loop == 0 {
                    return Err("the file has no audio to play".into());
                }
                self.decoded_since_loop = 0;
                self.format
                    .seek(SeekMode::Coarse, SeekTo::TimeStamp { ts: 0, track_id: self.track })
                    .map_err(|e| format!("cannot loop back to the start: {e}"))?;
                self.decoder.reset();
                return Ok(());
            }
            Err(e) => return Err(format!("read: {e}")),
        };
        if packet.track_id() != self.track {
            return Ok(());
        }
        let decoded = self.decoder.decode(&packet).map_err(|e| format!("decode: {e}"))?;
        let spec = *decoded.spec();
        let channels = spec.channels.count().max(1);
        let mut buf = SampleBuffer::<f32>::new(decoded.capacity() as u64, spec);
        buf.copy_interleaved_ref(decoded);
        self.mono.clear();
        self.mono.extend(buf.samples().chunks(channels).map(|c| c.iter().sum::<f32>() / channels as f32));
        self.decoded_since_loop += 1;
        match self.resampler.as_mut() {
            Some(r) => {
                self.resampled.clear();
                r.push(&self.mono, &mut self.resampled)?;
                self.ready.extend(self.resampled.iter().copied());
            }
            None => self.ready.extend(self.mono.iter().copied()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
    }

    /// Power in a band, by a plain DFT over a few bins (enough to compare octaves).
    fn band_power(x: &[f32], lo: f32, hi: f32) -> f32 {
        let n = x.len();
        let mut p = 0.0;
        let (k0, k1) = ((lo * n as f32 / RATE as f32) as usize, (hi * n as f32 / RATE as f32) as usize);
        for k in (k0..k1).step_by(((k1 - k0) / 16).max(1)) {
            let w = 2.0 * std::f32::consts::PI * k as f32 / n as f32;
            let (mut re, mut im) = (0.0f32, 0.0f32);
            for (i, v) in x.iter().enumerate() {
                re += v * (w * i as f32).cos();
                im -= v * (w * i as f32).sin();
            }
            p += re * re + im * im;
        }
        p
    }

    #[test]
    fn noises_have_their_level_and_slope() {
        let mut slopes = vec![];
        for name in NOISES {
            let mut n = Noise::named(name).unwrap();
            let mut x = vec![0.0; RATE as usize];
            n.fill(&mut x[..1000]); // settle the filters
            n.fill(&mut x);
            let level = rms(&x);
            assert!((level / NOISE_RMS - 1.0).abs() < 0.25, "{name}: rms {level}");
            assert!(x.iter().all(|v| v.abs() <= 1.0), "{name} clips");
            // Power per bin an octave apart (500 Hz vs 1000 Hz bands of equal width in bins).
            let x = &x[..8192];
            let low = band_power(x, 400.0, 600.0);
            let high = band_power(x, 1600.0, 1800.0);
            slopes.push((name, 10.0 * (high / low).log10()));
        }
        // Two octaves apart: white ~0 dB, pink ~−6 dB, brown ~−12 dB (noisy estimates: wide bounds).
        let s: Vec<f32> = slopes.iter().map(|(_, d)| *d).collect();
        assert!(s[0].abs() < 3.0 && (-9.0..-3.0).contains(&s[1]) && (-16.0..-8.0).contains(&s[2]), "{slopes:?}");
    }

    #[test]
    fn names_cannot_leave_the_sounds_directory() {
        let dir = std::env::temp_dir();
        for bad in ["../etc/passwd", "/etc/passwd", ".hidden.wav", "a\\b.wav", "x.txt", "nope.wav"] {
            assert!(matches!(Sound::open(bad, &dir), Err(SoundError::Unknown(..))), "{bad}");
        }
        assert!(Sound::open("pink", &dir).is_ok());
    }

    #[test]
    fn a_wav_file_is_decoded_resampled_and_looped() {
        // 0.25 s of a 1 kHz tone at 22.05 kHz stereo, written as WAV by hand.
        let dir = std::env::temp_dir().join(format!("peercam-sounds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rate = 22_050u32;
        let frames = rate / 4;
        let mut data = Vec::new();
        for i in 0..frames {
            let v = ((2.0 * std::f32::consts::PI * 1000.0 * i as f32 / rate as f32).sin() * 0.5 * 32767.0) as i16;
            data.extend_from_slice(&v.to_le_bytes());
            data.extend_from_slice(&v.to_le_bytes());
        }
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF");
        wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        wav.extend_from_slice(b"WAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&2u16.to_le_bytes());
        wav.extend_from_slice(&rate.to_le_bytes());
        wav.extend_from_slice(&(rate * 4).to_le_bytes());
        wav.extend_from_slice(&4u16.to_le_bytes());
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
        wav.extend_from_slice(&data);
        std::fs::write(dir.join("tone.wav"), &wav).unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.join("broken.mp3"), b"not an mp3 at all").unwrap();

        let names: Vec<String> = list(&dir).into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["white", "pink", "brown", "broken.mp3", "tone.wav"]);
        assert!(matches!(Sound::open("broken.mp3", &dir), Err(SoundError::File(..))));

        let mut s = Sound::open("tone.wav", &dir).unwrap();
        // 1 s of output from a 0.25 s file: it loops, at 48 kHz, at the tone's level.
        let mut out = vec![0.0f32; RATE as usize];
        for chunk in out.chunks_mut(960) {
            s.fill(chunk).unwrap();
        }
        let level = rms(&out[4800..]);
        assert!((level - 0.5 / 2f32.sqrt()).abs() < 0.05, "rms {level}");
        let tone = band_power(&out[9600..9600 + 4800], 950.0, 1050.0);
        let off = band_power(&out[9600..9600 + 4800], 2950.0, 3050.0);
        assert!(tone > 100.0 * off, "1 kHz after resampling: {tone} vs {off}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
