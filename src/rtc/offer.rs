//! Reading a remote offer before any WebRTC state exists: is it SDP at all, does it carry a codec
//! the device can send (H.264 packetization-mode 1 with a profile a constrained-baseline stream
//! satisfies, Opus), and which way does each m-line point. Pure: unit-tested on real offers.

use std::io::Cursor;
use webrtc::sdp::description::session::SessionDescription;

/// H.264 profile-level-id prefixes (profile_idc + constraint flags) whose decoders accept the
/// device's constrained-baseline stream. Each is registered in the media engine (see `rtc`).
pub const H264_PROFILES: [&str; 4] = ["42e01f", "42001f", "4d001f", "640c1f"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// Whether the remote wants to receive what the device sends.
    pub fn remote_receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
    /// Whether the remote will send to the device (talk-back).
    pub fn remote_sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLine {
    pub kind: String,
    pub direction: Direction,
    /// Payload types of usable codecs (H.264 for video, Opus for audio), in offer order.
    pub usable_payload_types: Vec<u8>,
    /// Every codec name offered, for error messages.
    pub offered_codecs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferSummary {
    pub video: Option<MediaLine>,
    pub audio: Option<MediaLine>,
    pub data_channel: bool,
    /// `a=candidate` lines in the offer (session level and every m-line).
    pub candidates: usize,
}

/// Remote ICE candidates one session accepts, in its offer and trickled together. Each is a
/// target of the device's connectivity checks, so an unbounded list would let a client aim
/// STUN traffic at hosts of its choosing (and burn CPU). A browser offers a handful per
/// network interface; real offers carry 2–10.
pub const MAX_REMOTE_CANDIDATES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("the offer is not valid SDP: {0}")]
    Malformed(String),
    #[error("the offer has no audio or video m-line (add recvonly video and audio transceivers)")]
    NoMedia,
    #[error(
        "the offer's video has no usable H.264 (packetization-mode=1, profile-level-id {profiles}); \
         offered: {offered}. peercam sends H.264 only"
    )]
    NoH264 { offered: String, profiles: String },
    #[error("the offer's audio has no Opus (offered: {offered}); peercam sends Opus only")]
    NoOpus { offered: String },
    #[error("the offer carries {count} ICE candidates; at most {max} are accepted per session")]
    TooManyCandidates { count: usize, max: usize },
}

/// Checks an offer. Bundle, ICE and DTLS details are left to the WebRTC stack.
pub fn inspect(sdp: &str) -> Result<OfferSummary, OfferError> {
    if sdp.trim().is_empty() {
        return Err(OfferError::Malformed("the body is empty".into()));
    }
    let desc = SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes()))
        .map_err(|e| OfferError::Malformed(printable(&e.to_string())))?;
    let mut summary = OfferSummary { video: None, audio: None, data_channel: false, candidates: 0 };
    summary.candidates = desc.attributes.iter().filter(|a| a.key == "candidate").count()
        + desc.media_descriptions.iter().flat_map(|m| &m.attributes).filter(|a| a.key == "candidate").count();
    if summary.candidates > MAX_REMOTE_CANDIDATES {
        return Err(OfferError::TooManyCandidates { count: summary.candidates, max: MAX_REMOTE_CANDIDATES });
    }
    for m in &desc.media_descriptions {
        let kind = m.media_name.media.as_str();
        if kind == "application" {
            summary.data_channel = true;
            continue;
        }
        if kind != "video" && kind != "audio" {
            continue;
        }
        // A rejected m-line (port 0) is not offered media.
        if m.media_name.port.value == 0 {
            continue;
        }
        let mut direction = Direction::SendRecv;
        let mut rtpmaps: Vec<(u8, String)> = Vec::new();
        let mut fmtps: Vec<(u8, String)> = Vec::new();
        for a in &m.attributes {
            let value = a.value.as_deref().unwrap_or("");
            match a.key.as_str() {
                "sendrecv" => direction = Direction::SendRecv,
                "sendonly" => direction = Direction::SendOnly,
                "recvonly" => direction = Direction::RecvOnly,
                "inactive" => direction = Direction::Inactive,
                "rtpmap" => {
                    if let Some((pt, codec)) = split_pt(value) {
                        rtpmaps.push((pt, codec.to_string()));
                    }
                }
                "fmtp" => {
                    if let Some((pt, params)) = split_pt(value) {
                        fmtps.push((pt, params.to_string()));
                    }
                }
                _ => {}
            }
        }
        let fmtp_of = |pt: u8| fmtps.iter().find(|(p, _)| *p == pt).map(|(_, f)| f.as_str()).unwrap_or("");
        let codec_name = |rtpmap: &str| rtpmap.split('/').next().unwrap_or("").to_string();
        let offered_codecs: Vec<String> = {
            let mut names: Vec<String> = rtpmaps.iter().map(|(_, r)| codec_name(r)).collect();
            names.dedup();
            names
        };
        let usable_payload_types: Vec<u8> = rtpmaps
            .iter()
            .filter(|(pt, rtpmap)| {
                let name = codec_name(rtpmap).to_ascii_lowercase();
                if kind == "video" {
                    name == "h264" && h264_fmtp_usable(fmtp_of(*pt))
                } else {
                    name == "opus"
                }
            })
            .map(|(pt, _)| *pt)
            .collect();
        if rtpmaps.is_empty() && m.media_name.formats.iter().any(|f| f.parse::<u8>().is_ok_and(|pt| pt >= 96)) {
            return Err(OfferError::Malformed(format!(
                "the {kind} m-line lists dynamic payload types without a=rtpmap lines (truncated offer?)"
            )));
        }
        let line = MediaLine { kind: kind.to_string(), direction, usable_payload_types, offered_codecs };
        if kind == "video" && summary.video.is_none() {
            summary.video = Some(line);
        } else if kind == "audio" && summary.audio.is_none() {
            summary.audio = Some(line);
        }
    }

    if summary.video.is_none() && summary.audio.is_none() && !summary.data_channel {
        return Err(OfferError::NoMedia);
    }
    if let Some(v) = &summary.video {
        if v.usable_payload_types.is_empty() {
            return Err(OfferError::NoH264 {
                offered: list_or_none(&v.offered_codecs),
                profiles: H264_PROFILES.join("/"),
            });
        }
    }
    if let Some(a) = &summary.audio {
        if a.usable_payload_types.is_empty() {
            return Err(OfferError::NoOpus { offered: list_or_none(&a.offered_codecs) });
        }
    }
    Ok(summary)
}

/// Error text safe for a log line and a response: no control characters, bounded length.
/// The offer as the device's WebRTC stack should read it: a video m-line that would also *send*
/// video (a PeerJS caller sharing its camera) is read as receive-only. The device never wants
/// a viewer's video, and webrtc-rs only pairs a sendrecv remote line with a local transceiver
/// that receives — it would then not send the camera at all. Answered `sendonly`, the browser
/// does not upload its video either.
pub fn video_as_recvonly(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    let mut in_video = false;
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if let Some(m) = bare.strip_prefix("m=") {
            in_video = m.starts_with("video ");
        }
        if in_video && (bare == "a=sendrecv" || bare == "a=sendonly") {
            let to = if bare == "a=sendrecv" { "a=recvonly" } else { "a=inactive" };
            out.push_str(to);
            out.push_str(&line[bare.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

fn printable(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(200).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() { "nothing".into() } else { v.join(", ") }
}

fn split_pt(value: &str) -> Option<(u8, &str)> {
    let (pt, rest) = value.split_once(' ')?;
    Some((pt.trim().parse().ok()?, rest.trim()))
}

/// `packetization-mode=1` and a profile-level-id whose profile part we registered.
fn h264_fmtp_usable(fmtp: &str) -> bool {
    let mut mode1 = false;
    let mut profile_ok = false;
    for kv in fmtp.split(';') {
        let Some((k, v)) = kv.trim().split_once('=') else { continue };
        match k.trim().to_ascii_lowercase().as_str() {
            "packetization-mode" => mode1 = v.trim() == "1",
            "profile-level-id" => {
                let v = v.trim().to_ascii_lowercase();
                // Compared as bytes: the value comes from the network and may hold any UTF-8,
                // where a `str` slice at 4 could fall inside a character and panic.
                profile_ok = v.len() == 6 && H264_PROFILES.iter().any(|p| p.as_bytes()[..4] == v.as_bytes()[..4]);
            }
            _ => {}
        }
    }
    mode1 && profile_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

    fn offer(media: &str) -> String {
        format!("{MINIMAL}{media}")
    }

    #[test]
    fn h264_and_opus_recvonly() {
        let sdp = offer(
            "m=video 9 UDP/TLS/RTP/SAVPF 96 102\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n\
             a=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n\
             a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n",
        );
        let s = inspect(&sdp).unwrap();
        let v = s.video.unwrap();
        assert_eq!(v.usable_payload_types, vec![102]);
        assert_eq!(v.direction, Direction::RecvOnly);
        let a = s.audio.unwrap();
        assert_eq!(a.usable_payload_types, vec![111]);
        assert!(a.direction.remote_sends());
    }

    #[test]
    fn h264_mode_0_or_unknown_profile_is_not_usable() {
        let sdp = offer(
            "m=video 9 UDP/TLS/RTP/SAVPF 102 104\r\na=rtpmap:102 H264/90000\r\n\
             a=fmtp:102 packetization-mode=0;profile-level-id=42e01f\r\n\
             a=rtpmap:104 H264/90000\r\na=fmtp:104 packetization-mode=1;profile-level-id=f4001f\r\n",
        );
        let e = inspect(&sdp).unwrap_err();
        assert!(matches!(e, OfferError::NoH264 { .. }), "{e}");
    }

    /// Found by the fuzzer in CI: a 6-byte profile-level-id whose 4th byte falls inside a
    /// multi-byte character made the profile comparison slice a `str` mid-character and panic.
    #[test]
    fn profile_level_id_with_multibyte_characters_is_refused_not_a_panic() {
        for id in ["42\u{fffd}x", "4-\u{20ac}x", "\u{e9}\u{e9}\u{e9}"] {
            assert_eq!(id.len(), 6, "{id:?}");
            let sdp = offer(&format!("m=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1;profile-level-id={id}\r\n"));
            assert!(matches!(inspect(&sdp), Err(OfferError::NoH264 { .. })), "{id:?}");
        }
    }

    #[test]
    fn vp8_only_names_what_was_offered() {
        let sdp = offer("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n");
        let e = inspect(&sdp).unwrap_err().to_string();
        assert!(e.contains("VP8") && e.contains("H.264"), "{e}");
    }

    #[test]
    fn garbage_empty_and_mediumless_offers() {
        assert!(matches!(inspect(""), Err(OfferError::Malformed(_))));
        assert!(matches!(inspect("hello world"), Err(OfferError::Malformed(_))));
        assert!(matches!(inspect("v=0\r\nm=video x\r\n"), Err(OfferError::Malformed(_))));
        assert_eq!(inspect(MINIMAL), Err(OfferError::NoMedia));
        let Err(OfferError::Malformed(m)) = inspect("v=0\r\nbogus line\r\n\x07") else { panic!() };
        assert!(!m.chars().any(|c| c.is_control()), "{m:?}");
        let truncated = offer("m=video 9 UDP/TLS/RTP/SAVPF 96 102\r\nc=IN IP4 0.0.0.0\r\n");
        assert!(matches!(inspect(&truncated), Err(OfferError::Malformed(_))));
    }

    #[test]
    fn audio_without_opus_is_refused() {
        let sdp = offer("m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n");
        assert!(matches!(inspect(&sdp), Err(OfferError::NoOpus { .. })));
    }

    /// Real offers captured from Chromium and aiortc (see tests/fixtures/offers/README.md).
    #[test]
    fn sendrecv_video_is_read_as_recvonly_and_audio_is_untouched() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=sendrecv\r\na=mid:1\r\n";
        let got = video_as_recvonly(sdp);
        assert_eq!(
            got,
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=recvonly\r\na=mid:1\r\n"
        );
        let summary = inspect(&video_as_recvonly(&std::fs::read_to_string(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/offers/chromium_recvonly.sdp"),
        ).unwrap())).unwrap();
        assert_eq!(summary.video.unwrap().direction, Direction::RecvOnly);
    }

    #[test]
    fn real_offers() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/offers");
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));

        let chromium = inspect(&read("chromium_recvonly.sdp")).unwrap();
        let v = chromium.video.unwrap();
        assert!(!v.usable_payload_types.is_empty());
        assert!(v.offered_codecs.iter().any(|c| c == "VP8"), "Chromium offers VP8 too");
        assert_eq!(v.direction, Direction::RecvOnly);
        assert_eq!(chromium.audio.unwrap().direction, Direction::RecvOnly);

        let talk = inspect(&read("chromium_sendrecv_audio.sdp")).unwrap();
        assert!(talk.audio.unwrap().direction.remote_sends());

        let aiortc = inspect(&read("aiortc_recvonly.sdp")).unwrap();
        assert!(!aiortc.video.unwrap().usable_payload_types.is_empty());
        assert!(!aiortc.audio.unwrap().usable_payload_types.is_empty());

        let vp8 = inspect(&read("chromium_vp8_only.sdp")).unwrap_err();
        assert!(matches!(vp8, OfferError::NoH264 { .. }), "{vp8}");
    }
}
