//! Opus at 48 kHz mono, 20 ms frames: one RTP payload per frame.

use super::EncodedUnit;
use crate::capture::AudioFrame;
use bytes::Bytes;

pub struct OpusEncoder {
    inner: opus::Encoder,
    out: Vec<u8>,
    index: u64,
}

impl OpusEncoder {
    pub fn new(bitrate_bps: u32) -> Result<Self, String> {
        let mut inner = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::LowDelay)
            .map_err(|e| format!("cannot create Opus encoder: {e}"))?;
        inner
            .set_bitrate(opus::Bitrate::Bits(bitrate_bps as i32))
            .map_err(|e| format!("cannot set Opus bitrate {bitrate_bps}: {e}"))?;
        Ok(Self { inner, out: vec![0; 1500], index: 0 })
    }

    pub fn encode(&mut self, frame: &AudioFrame) -> Result<EncodedUnit, String> {
        let n = self
            .inner
            .encode(&frame.samples, &mut self.out)
            .map_err(|e| format!("Opus encode failed: {e}"))?;
        self.index += 1;
        Ok(EncodedUnit {
            payloads: vec![Bytes::copy_from_slice(&self.out[..n])],
            keyframe: true,
            capture_unix_us: frame.capture_unix_us,
            index: self.index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{tone::Tone, AUDIO_FRAME_SAMPLES};

    #[test]
    fn tone_survives_encode_and_decode() {
        let mut enc = OpusEncoder::new(32_000).unwrap();
        let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut decoded = Vec::new();
        for i in 0..10u64 {
            let mut f = AudioFrame { samples: vec![0; AUDIO_FRAME_SAMPLES], capture_unix_us: i * 20_000 };
            Tone::render(&mut f.samples, f.capture_unix_us);
            let unit = enc.encode(&f).unwrap();
            assert_eq!(unit.payloads.len(), 1);
            let mut pcm = vec![0i16; AUDIO_FRAME_SAMPLES];
            let n = dec.decode(&unit.payloads[0], &mut pcm, false).unwrap();
            decoded.extend_from_slice(&pcm[..n]);
        }
        // Skip the codec's start-up delay, then count rising zero crossings over 100 ms.
        let tail = &decoded[2400..7200];
        let crossings = tail.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        assert!((42..=46).contains(&crossings), "{crossings}");
        let rms = (tail.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
        assert!(rms > 5000.0, "rms {rms}");
    }
}
