//! The pure parts of the RTSP server: the paths it serves, the SDP it describes, the
//! `Authorization` header, RTP and RTCP packet building, and the transport a `SETUP` asks for.
//! No sockets here; unit-tested.

use base64::Engine;
use rtsp_types::headers::transport::{RtpLowerTransport, RtpProfile, Transport, Transports};
use rtsp_types::Request;

/// RTP payload types in the SDP.
pub const PT_H264: u8 = 96;
pub const PT_OPUS: u8 = 97;

/// The two tracks of `/live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    Video = 0,
    Audio = 1,
}

impl Track {
    pub fn payload_type(self) -> u8 {
        match self {
            Track::Video => PT_H264,
            Track::Audio => PT_OPUS,
        }
    }

    pub fn clock_rate(self) -> u32 {
        match self {
            Track::Video => 90_000,
            Track::Audio => 48_000,
        }
    }
}

/// What a request URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `*` (OPTIONS) or no URL.
    Server,
    /// `/live` (the presentation, aggregate control).
    Live,
    /// `/live/trackID=N`.
    Track(Track),
    Unknown,
}

/// Which resource a request URL names, by its path alone (the host is whatever the client used).
pub fn target(req: &Request<impl AsRef<[u8]>>) -> Target {
    let Some(url) = req.request_uri() else { return Target::Server };
    let path = url.path().trim_end_matches('/');
    match path {
        "" | "*" => Target::Server,
        "/live" => Target::Live,
        "/live/trackID=0" => Target::Track(Track::Video),
        "/live/trackID=1" => Target::Track(Track::Audio),
        _ => Target::Unknown,
    }
}

/// The SDP of `/live`: H.264 (constrained baseline, packetization mode 1, parameter sets in
/// band with every IDR) and Opus (48 kHz, mono in a stereo-signalled stream as RFC 7587 has it).
pub fn sdp(session_id: u64, server_ip: std::net::IpAddr, profile_level_id: &str) -> String {
    let ipv = if server_ip.is_ipv4() { "IP4" } else { "IP6" };
    format!(
        "v=0\r\n\
         o=- {session_id} 1 IN {ipv} {server_ip}\r\n\
         s=peercam\r\n\
         c=IN {ipv} {server_ip}\r\n\
         t=0 0\r\n\
         a=control:*\r\n\
         a=range:npt=now-\r\n\
         m=video 0 RTP/AVP {PT_H264}\r\n\
         a=rtpmap:{PT_H264} H264/90000\r\n\
         a=fmtp:{PT_H264} packetization-mode=1;profile-level-id={profile_level_id}\r\n\
         a=control:trackID=0\r\n\
         m=audio 0 RTP/AVP {PT_OPUS}\r\n\
         a=rtpmap:{PT_OPUS} opus/48000/2\r\n\
         a=fmtp:{PT_OPUS} sprop-stereo=0\r\n\
         a=control:trackID=1\r\n"
    )
}

/// The password of a Basic `Authorization` header (the user name is ignored: a bearer token is
/// the password). `None` for anything else or anything malformed.
pub fn basic_password(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let rest = rest.trim();
    if rest.len() > 1024 {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_string())
}

/// Where a track's RTP goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Interleaved in the RTSP connection on these channels (RTP, RTCP).
    Tcp { rtp: u8, rtcp: u8 },
    /// UDP to the client's address on these ports (RTP, RTCP).
    Udp { rtp: u16, rtcp: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("no Transport header")]
    Missing,
    #[error("the Transport header cannot be parsed")]
    Malformed,
    #[error("only unicast RTP/AVP over TCP (interleaved) or UDP (client_port) is supported")]
    Unsupported,
}

/// The first transport of `SETUP`'s `Transport` header this server can serve. `next_channel`
/// is the interleaved channel pair to offer when the client left it to the server.
pub fn choose_transport(req: &Request<impl AsRef<[u8]>>, next_channel: u8) -> Result<Delivery, TransportError> {
    let transports = match req.typed_header::<Transports>() {
        Ok(Some(t)) => t,
        Ok(None) => return Err(TransportError::Missing),
        Err(_) => return Err(TransportError::Malformed),
    };
    for t in transports.iter() {
        let Transport::Rtp(rtp) = t else { continue };
        if rtp.profile != RtpProfile::Avp || rtp.params.multicast {
            continue;
        }
        // Never to another host than the client (`destination=` would make us a reflector).
        if rtp.params.destination.is_some() {
            continue;
        }
        match rtp.lower_transport {
            Some(RtpLowerTransport::Tcp) => {
                let (a, b) = match rtp.params.interleaved {
                    Some((a, Some(b))) => (a, b),
                    Some((a, None)) => (a, a.wrapping_add(1)),
                    None => (next_channel, next_channel.wrapping_add(1)),
                };
                return Ok(Delivery::Tcp { rtp: a, rtcp: b });
            }
            Some(RtpLowerTransport::Udp) | None => {
                let Some((a, b)) = rtp.params.client_port else { continue };
                if a == 0 {
                    continue;
                }
                return Ok(Delivery::Udp { rtp: a, rtcp: b.unwrap_or(a.wrapping_add(1)) });
            }
            _ => continue,
        }
    }
    Err(TransportError::Unsupported)
}

/// The `Transport` header of a `SETUP` reply.
pub fn transport_reply(d: Delivery, ssrc: u32, server_ports: Option<(u16, u16)>) -> String {
    match d {
        Delivery::Tcp { rtp, rtcp } => format!("RTP/AVP/TCP;unicast;interleaved={rtp}-{rtcp};ssrc={ssrc:08X}"),
        Delivery::Udp { rtp, rtcp } => {
            let (s1, s2) = server_ports.unwrap_or((0, 0));
            format!("RTP/AVP;unicast;client_port={rtp}-{rtcp};server_port={s1}-{s2};ssrc={ssrc:08X}")
        }
    }
}

/// One RTP packet (RFC 3550, no extensions) into `out`.
pub fn rtp_packet(out: &mut Vec<u8>, pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) {
    out.push(0x80);
    out.push(pt | if marker { 0x80 } else { 0 });
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An RTCP sender report (RFC 3550 §6.4.1) for `now_unix_us`: NTP time and the RTP time of the
/// same instant (the RTP clock is the wall clock, `codec::rtp_timestamp`), so a client can line
/// audio and video up.
pub fn sender_report(ssrc: u32, now_unix_us: u64, rtp_ts: u32, packets: u32, octets: u32) -> [u8; 28] {
    const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;
    let secs = now_unix_us / 1_000_000 + NTP_UNIX_OFFSET_S;
    let frac = ((now_unix_us % 1_000_000) << 32) / 1_000_000;
    let mut p = [0u8; 28];
    p[0] = 0x80;
    p[1] = 200;
    p[2..4].copy_from_slice(&6u16.to_be_bytes());
    p[4..8].copy_from_slice(&ssrc.to_be_bytes());
    p[8..12].copy_from_slice(&(secs as u32).to_be_bytes());
    p[12..16].copy_from_slice(&(frac as u32).to_be_bytes());
    p[16..20].copy_from_slice(&rtp_ts.to_be_bytes());
    p[20..24].copy_from_slice(&packets.to_be_bytes());
    p[24..28].copy_from_slice(&octets.to_be_bytes());
    p
}

/// Appends one interleaved frame (`$`, channel, length, data; RFC 2326 §10.12).
pub fn interleave(out: &mut Vec<u8>, channel: u8, data_len: usize) {
    out.push(b'$');
    out.push(channel);
    out.extend_from_slice(&(data_len.min(u16::MAX as usize) as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtsp_types::Message;

    fn parse(text: &str) -> Request<Vec<u8>> {
        match Message::<Vec<u8>>::parse(text.as_bytes()) {
            Ok((Message::Request(r), _)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn targets_by_path() {
        let r = parse("DESCRIBE rtsp://cam.local:8554/live RTSP/1.0\r\nCSeq: 2\r\n\r\n");
        assert_eq!(target(&r), Target::Live);
        let r = parse("SETUP rtsp://127.0.0.1:8554/live/trackID=1 RTSP/1.0\r\nCSeq: 3\r\n\r\n");
        assert_eq!(target(&r), Target::Track(Track::Audio));
        let r = parse("DESCRIBE rtsp://127.0.0.1:8554/other RTSP/1.0\r\nCSeq: 2\r\n\r\n");
        assert_eq!(target(&r), Target::Unknown);
        let r = parse("OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n");
        assert_eq!(target(&r), Target::Server);
    }

    #[test]
    fn transports_as_ffmpeg_and_gstreamer_send_them() {
        let tcp = parse("SETUP rtsp://h/live/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n");
        assert_eq!(choose_transport(&tcp, 0), Ok(Delivery::Tcp { rtp: 0, rtcp: 1 }));
        let udp = parse("SETUP rtsp://h/live/trackID=1 RTSP/1.0\r\nCSeq: 4\r\nTransport: RTP/AVP/UDP;unicast;client_port=5000-5001\r\n\r\n");
        assert_eq!(choose_transport(&udp, 0), Ok(Delivery::Udp { rtp: 5000, rtcp: 5001 }));
        let plain = parse("SETUP rtsp://h/live/trackID=1 RTSP/1.0\r\nCSeq: 4\r\nTransport: RTP/AVP;unicast;client_port=6000-6001\r\n\r\n");
        assert_eq!(choose_transport(&plain, 0), Ok(Delivery::Udp { rtp: 6000, rtcp: 6001 }));
        // GStreamer offers several; the first usable wins
        let gst = parse("SETUP rtsp://h/live/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP;multicast;client_port=7000-7001,RTP/AVP/TCP;unicast;interleaved=2-3\r\n\r\n");
        assert_eq!(choose_transport(&gst, 0), Ok(Delivery::Tcp { rtp: 2, rtcp: 3 }));
        let reflect = parse("SETUP rtsp://h/live/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP;unicast;destination=192.0.2.1;client_port=7000-7001\r\n\r\n");
        assert_eq!(choose_transport(&reflect, 0), Err(TransportError::Unsupported));
        let none = parse("SETUP rtsp://h/live/trackID=0 RTSP/1.0\r\nCSeq: 3\r\n\r\n");
        assert_eq!(choose_transport(&none, 0), Err(TransportError::Missing));
    }

    #[test]
    fn basic_auth_carries_the_token_as_password() {
        // "viewer:tok:en" — a colon in the password stays
        let h = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("viewer:tok:en"));
        assert_eq!(basic_password(&h).as_deref(), Some("tok:en"));
        assert_eq!(basic_password("Digest username=\"x\""), None);
        assert_eq!(basic_password("Basic !!!"), None);
        assert_eq!(basic_password("Basic"), None);
    }

    #[test]
    fn packets_are_laid_out_as_rfc_3550_says() {
        let mut p = Vec::new();
        rtp_packet(&mut p, PT_H264, true, 0x1234, 0xA0B0C0D0, 0xDEADBEEF, &[9, 9]);
        assert_eq!(p, [0x80, 0x80 | 96, 0x12, 0x34, 0xA0, 0xB0, 0xC0, 0xD0, 0xDE, 0xAD, 0xBE, 0xEF, 9, 9]);
        let sr = sender_report(1, 1_700_000_000_500_000, 7, 10, 1000);
        assert_eq!(sr[1], 200);
        assert_eq!(u32::from_be_bytes(sr[8..12].try_into().unwrap()), (1_700_000_000u64 + 2_208_988_800) as u32);
        assert_eq!(u32::from_be_bytes(sr[12..16].try_into().unwrap()), 1 << 31, "half a second");
        let sdp = sdp(5, "127.0.0.1".parse().unwrap(), "42e01f");
        assert!(sdp.contains("a=rtpmap:96 H264/90000\r\n") && sdp.contains("a=rtpmap:97 opus/48000/2\r\n"));
        assert!(sdp.contains("a=control:trackID=1\r\n"));
    }
}
