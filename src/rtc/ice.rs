//! STUN/TURN helpers, pure (values in, values out) except [`discover_public`]:
//!
//! - TURN REST API credentials for coturn's `use-auth-secret` mode: `username = "<expiry-unix>:<id>"`,
//!   `credential = base64(HMAC-SHA1(secret, username))` ([`turn_credentials`]);
//! - the device's server-reflexive address. The device's one UDP port is shared by every peer
//!   connection through webrtc-rs's `UDPMuxDefault`, and webrtc-rs gathers no server-reflexive
//!   candidate on a muxed port. So the engine asks a STUN server once, from that very socket,
//!   before the mux takes it ([`discover_public`]), and each answer carries that address as a
//!   `typ srflx` candidate ([`add_srflx`]): a browser behind another NAT then reaches the device
//!   directly (both sides punch through), without a relay.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// TURN REST API credentials valid until `now_unix + ttl_s`, for `id` (who asked; any text
/// without `:`): `(username, credential)`.
pub fn turn_credentials(secret: &str, id: &str, now_unix: u64, ttl_s: u64) -> (String, String) {
    let username = format!("{}:{}", now_unix + ttl_s, id.replace(':', "_"));
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

/// Seconds since the Unix epoch (TURN expiry is wall-clock time by definition).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `host:port` of a `stun:`/`turn:` URL (UDP ones only: `turns:` and `?transport=tcp` are not
/// asked for a binding). Default port 3478.
pub fn stun_target(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once(':')?;
    if !matches!(scheme, "stun" | "turn") {
        return None;
    }
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    if query.contains("transport=tcp") {
        return None;
    }
    let hostport = hostport.trim_start_matches("//");
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, port) = v6.split_once(']')?;
        let port = match port.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if port.is_empty() => 3478,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None if !hostport.is_empty() => Some((hostport.to_string(), 3478)),
        None => None,
    }
}

/// A STUN Binding request (RFC 5389) with transaction id `tid`.
pub fn binding_request(tid: [u8; 12]) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    b[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    b[8..20].copy_from_slice(&tid);
    b
}

/// The mapped address of a Binding success response to `tid`; `None` for anything else
/// (another message, a truncated one, another transaction). Never panics on any input.
pub fn parse_binding_response(buf: &[u8], tid: [u8; 12]) -> Option<SocketAddr> {
    if buf.len() < 20 || u16::from_be_bytes([buf[0], buf[1]]) != BINDING_SUCCESS {
        return None;
    }
    if u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE || buf[8..20] != tid {
        return None;
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let body = buf.get(20..20 + len)?;
    let (mut i, mut plain) = (0usize, None);
    while i + 4 <= body.len() {
        let t = u16::from_be_bytes([body[i], body[i + 1]]);
        let l = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        let v = body.get(i + 4..i + 4 + l)?;
        match t {
            ATTR_XOR_MAPPED_ADDRESS => return decode_address(v, Some(&buf[4..20])),
            ATTR_MAPPED_ADDRESS => plain = decode_address(v, None),
            _ => {}
        }
        i += 4 + l.div_ceil(4) * 4;
    }
    plain
}

/// (XOR-)MAPPED-ADDRESS value; `xor` = magic cookie + transaction id.
fn decode_address(v: &[u8], xor: Option<&[u8]>) -> Option<SocketAddr> {
    if v.len() < 8 {
        return None;
    }
    let x = |i: usize| xor.map_or(0, |k| k[i]);
    let port = u16::from_be_bytes([v[2] ^ x(0), v[3] ^ x(1)]);
    match v[1] {
        1 => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(v[4] ^ x(0), v[5] ^ x(1), v[6] ^ x(2), v[7] ^ x(3))), port)),
        2 if v.len() >= 20 => {
            let mut a = [0u8; 16];
            for (k, b) in a.iter_mut().enumerate() {
                *b = v[4 + k] ^ x(k);
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        _ => None,
    }
}

/// Asks the STUN servers among `urls`, from `socket`, for its public address: the first answer
/// wins; each server gets up to two tries of `wait`. `None` when none answered.
pub async fn discover_public(socket: &tokio::net::UdpSocket, urls: &[String], wait: Duration) -> Option<SocketAddr> {
    let local = socket.local_addr().ok()?;
    for url in urls {
        let Some((host, port)) = stun_target(url) else { continue };
        let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await else {
            log::warn!("ice: cannot resolve the STUN server {host}:{port}");
            continue;
        };
        let Some(server) = addrs.into_iter().find(|a| a.is_ipv4() == local.is_ipv4()) else { continue };
        for _ in 0..2 {
            let tid: [u8; 12] = rand::random();
            if socket.send_to(&binding_request(tid), server).await.is_err() {
                break;
            }
            let deadline = tokio::time::Instant::now() + wait;
            let mut buf = [0u8; 576];
            while let Ok(Ok((n, from))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                if from == server
                    && let Some(addr) = parse_binding_response(&buf[..n], tid)
                {
                    return Some(addr);
                }
            }
        }
        log::warn!("ice: the STUN server {server} did not answer");
    }
    None
}

/// Adds `public` as a server-reflexive candidate (base `base`) to every media section of `sdp`
/// that lists candidates, after its last one. Unchanged if the SDP already has it.
pub fn add_srflx(sdp: &str, public: SocketAddr, base: SocketAddr) -> String {
    let ip = public.ip().to_string();
    if sdp.lines().any(|l| l.starts_with("a=candidate:") && l.contains(" typ srflx") && l.contains(&format!(" {ip} {} ", public.port()))) {
        return sdp.to_string();
    }
    // type preference 100 (srflx), local preference 65535, component 1.
    let priority: u32 = (100 << 24) | (65535 << 8) | 255;
    let line = format!(
        "a=candidate:peercamsrflx 1 udp {priority} {ip} {} typ srflx raddr {} rport {}",
        public.port(),
        base.ip(),
        base.port()
    );
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let lines: Vec<&str> = sdp.split(eol).collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 4);
    for (i, l) in lines.iter().enumerate() {
        out.push(l.to_string());
        let last_candidate_of_section = l.starts_with("a=candidate:")
            && lines[i + 1..].iter().take_while(|n| !n.starts_with("m=")).all(|n| !n.starts_with("a=candidate:"));
        if last_candidate_of_section {
            out.push(line.clone());
        }
    }
    out.join(eol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_rest_credentials_match_coturn() {
        // Known answer: python3 -c "import hmac,hashlib,base64;
        //   print(base64.b64encode(hmac.new(b'secret', b'1700003600:peercam', hashlib.sha1).digest()))"
        let (u, c) = turn_credentials("secret", "peercam", 1_700_000_000, 3600);
        assert_eq!(u, "1700003600:peercam");
        assert_eq!(c, "Pyppb4JXwYJV95f2dTbkAnPWSuY=");
        let (u, _) = turn_credentials("s", "a:b", 10, 5);
        assert_eq!(u, "15:a_b", "a ':' in the id would change the expiry coturn reads");
    }

    #[test]
    fn stun_targets() {
        assert_eq!(stun_target("stun:10.0.0.1:3478"), Some(("10.0.0.1".into(), 3478)));
        assert_eq!(stun_target("turn:example.org?transport=udp"), Some(("example.org".into(), 3478)));
        assert_eq!(stun_target("turn:example.org:443?transport=tcp"), None);
        assert_eq!(stun_target("turns:example.org:5349"), None);
        assert_eq!(stun_target("stun:[::1]:19302"), Some(("::1".into(), 19302)));
        assert_eq!(stun_target("stun:"), None);
        assert_eq!(stun_target("stun:host:notaport"), None);
    }

    #[test]
    fn binding_round_trip_and_garbage() {
        let tid = [7u8; 12];
        let req = binding_request(tid);
        assert_eq!(&req[0..2], &[0, 1]);
        // a success response with XOR-MAPPED-ADDRESS 10.88.1.2:8189
        let mut r = vec![0x01, 0x01, 0, 12];
        r.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        r.extend_from_slice(&tid);
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let port = 8189u16 ^ 0x2112;
        r.extend_from_slice(&[0, 0x20, 0, 8, 0, 1]);
        r.extend_from_slice(&port.to_be_bytes());
        for (i, b) in [10u8, 88, 1, 2].iter().enumerate() {
            r.push(b ^ cookie[i]);
        }
        assert_eq!(parse_binding_response(&r, tid), Some("10.88.1.2:8189".parse().unwrap()));
        assert_eq!(parse_binding_response(&r, [8u8; 12]), None, "another transaction");
        for n in 0..r.len() {
            let _ = parse_binding_response(&r[..n], tid); // no panic on truncation
        }
        let mut bad = r.clone();
        bad[3] = 200; // length beyond the buffer
        assert_eq!(parse_binding_response(&bad, tid), None);
        let mut odd = r.clone();
        odd[22..24].copy_from_slice(&[0xff, 0xff]); // attribute length beyond the body
        assert_eq!(parse_binding_response(&odd, tid), None);
    }

    #[test]
    fn srflx_goes_after_each_sections_candidates() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 192.168.1.2 8189 typ host\r\na=end-of-candidates\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=candidate:1 1 udp 2130706431 192.168.1.2 8189 typ host\r\n";
        let out = add_srflx(sdp, "10.88.1.2:8189".parse().unwrap(), "192.168.1.2:8189".parse().unwrap());
        let srflx: Vec<_> = out.lines().filter(|l| l.contains("typ srflx")).collect();
        assert_eq!(srflx.len(), 2, "{out}");
        assert!(out.contains("typ host\r\na=candidate:peercamsrflx 1 udp 1694498815 10.88.1.2 8189 typ srflx raddr 192.168.1.2 rport 8189\r\na=end-of-candidates"), "{out}");
        assert_eq!(add_srflx(&out, "10.88.1.2:8189".parse().unwrap(), "192.168.1.2:8189".parse().unwrap()), out, "idempotent");
    }
}
