//! Opus at 48 kHz mono, 20 ms frames: one RTP payload per frame. [`OpusEncoder`] for the
//! microphone (audio in), [`OpusDecoder`] for the talker's voice (audio out, talk-back).

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

/// The talker's Opus → 48 kHz mono `i16`, up to 120 ms per packet.
pub struct OpusDecoder {
    inner: opus::Decoder,
}

impl OpusDecoder {
    pub fn new() -> Result<Self, String> {
        let inner = opus::Decoder::new(48_000, opus::Channels::Mono).map_err(|e| format!("cannot create Opus decoder: {e}"))?;
        Ok(Self { inner })
    }

    /// Decodes one packet into `pcm`; returns the samples written.
    pub fn decode(&mut self, payload: &[u8], pcm: &mut [i16]) -> Result<usize, String> {
        self.inner.decode(payload, pcm, false).map_err(|e| format!("undecodable Opus packet: {e}"))
    }

    /// A lost packet: libopus extrapolates the last frame (decaying), better than a gap.
    pub fn conceal(&mut self, pcm: &mut [i16]) -> Result<usize, String> {
        self.inner.decode(&[], pcm, false).map_err(|e| format!("Opus concealment failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{tone::Tone, AUDIO_FRAME_SAMPLES};

    #[test]
    fn tone_survives_encode_and_decode() {
        let mut enc = OpusEncoder::new(32_000).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut decoded = Vec::new();
        for i in 0..10u64 {
            let mut f = AudioFrame { samples: vec![0; AUDIO_FRAME_SAMPLES], capture_unix_us: i * 20_000 };
            Tone::render(&mut f.samples, f.capture_unix_us);
            let unit = enc.encode(&f).unwrap();
            assert_eq!(unit.payloads.len(), 1);
            let mut pcm = vec![0i16; AUDIO_FRAME_SAMPLES];
            let n = dec.decode(&unit.payloads[0], &mut pcm).unwrap();
            decoded.extend_from_slice(&pcm[..n]);
        }
        // Skip the codec's start-up delay, then count rising zero crossings over 100 ms.
        let tail = &decoded[2400..7200];
        let crossings = tail.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        assert!((42..=46).contains(&crossings), "{crossings}");
        let rms = (tail.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
        assert!(rms > 5000.0, "rms {rms}");
    }

    #[test]
    fn loss_is_concealed_and_garbage_is_an_error() {
        let mut enc = OpusEncoder::new(32_000).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut pcm = vec![0i16; AUDIO_FRAME_SAMPLES];
        for i in 0..5u64 {
            let mut f = AudioFrame { samples: vec![0; AUDIO_FRAME_SAMPLES], capture_unix_us: i * 20_000 };
            Tone::render(&mut f.samples, f.capture_unix_us);
            dec.decode(&enc.encode(&f).unwrap().payloads[0], &mut pcm).unwrap();
        }
        assert_eq!(dec.conceal(&mut pcm).unwrap(), AUDIO_FRAME_SAMPLES, "one frame of concealment");
        assert!(pcm.iter().any(|&s| s != 0), "extrapolated, not silence");
        // A TOC byte that claims a frame longer than the buffer: an error, not a panic.
        assert!(dec.decode(&[0xff, 0xff, 0xff], &mut pcm[..10]).is_err());
    }
}
