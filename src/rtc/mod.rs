//! WebRTC: one peer connection per viewer, all sharing one UDP port.
//!
//! Built on `webrtc` 0.17 (the async API with a single-port `UDPMuxDefault`): 0.20+ has no UDP
//! mux in its async API, and a camera behind a port forward or firewall needs exactly one UDP
//! port. See the README's architecture section.

pub mod control;
pub mod egress;
pub mod events;
pub mod ice;
pub mod link;
pub mod offer;
pub mod plan;
pub mod publish;
pub mod room;
pub mod session;
pub mod talkback;

use crate::codec::h264::PROFILE_LEVEL_ID;
use crate::config::WebRtcConfig;
use offer::H264_PROFILES;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::RTCPFeedback;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType,
};

pub const OPUS_PAYLOAD_TYPE: u8 = 111;
/// RTP header extension asking the receiver for a playout delay range (WebRTC's own).
pub const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// The codec the video track is created with (what the encoder produces).
pub fn h264_capability() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: format!(
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={PROFILE_LEVEL_ID}"
        ),
        rtcp_feedback: video_feedback(),
    }
}

pub fn opus_capability() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn video_feedback() -> Vec<RTCPFeedback> {
    [("goog-remb", ""), ("transport-cc", ""), ("ccm", "fir"), ("nack", ""), ("nack", "pli")]
        .iter()
        .map(|(t, p)| RTCPFeedback { typ: t.to_string(), parameter: p.to_string() })
        .collect()
}

/// Owns the shared UDP socket and the WebRTC API object every session is built from.
pub struct RtcEngine {
    api: API,
    ice_servers: Vec<RTCIceServer>,
    /// coturn `use-auth-secret`: fresh TURN credentials for each peer connection (`[ice] turn_secret`).
    turn: Option<TurnMint>,
    /// The UDP port's address as a STUN server saw it (behind a NAT), offered as `typ srflx`.
    public: Option<SocketAddr>,
    pub udp_addr: SocketAddr,
    /// Which link each outgoing SSRC travels on (for NACK retransmissions).
    pub egress: Arc<egress::Egress>,
}

/// What the device needs to mint its own TURN credentials (the secret is never logged).
struct TurnMint {
    secret: String,
    urls: Vec<String>,
    ttl_s: u64,
}

impl RtcEngine {
    pub async fn new(cfg: &WebRtcConfig) -> Result<Self, String> {
        Self::with_ice(cfg, &crate::config::IceConfig::default()).await
    }

    /// The engine with `[ice]`: its servers join `[webrtc] ice_servers`; with a TURN secret each
    /// peer connection gets freshly minted TURN credentials; a STUN/TURN server is asked for the
    /// UDP port's public address before the port is shared (see `ice`).
    pub async fn with_ice(cfg: &WebRtcConfig, ice: &crate::config::IceConfig) -> Result<Self, String> {
        let mut media = MediaEngine::default();
        // Only H.264 and Opus: the answer then carries nothing else, whatever the offer lists
        // first. Several H.264 profiles are registered because a constrained-baseline stream is
        // valid for each of them, and a peer may offer only one.
        for (i, profile) in H264_PROFILES.iter().enumerate() {
            let mut capability = h264_capability();
            capability.sdp_fmtp_line = format!(
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"
            );
            media
                .register_codec(
                    RTCRtpCodecParameters { capability, payload_type: 102 + 2 * i as u8, ..Default::default() },
                    RTPCodecType::Video,
                )
                .map_err(|e| format!("cannot register H.264: {e}"))?;
        }
        media
            .register_codec(
                RTCRtpCodecParameters {
                    capability: opus_capability(),
                    payload_type: OPUS_PAYLOAD_TYPE,
                    ..Default::default()
                },
                RTPCodecType::Audio,
            )
            .map_err(|e| format!("cannot register Opus: {e}"))?;
        // Playout delay min = max = 0 on the video: a live monitor wants each frame shown as soon
        // as it is decoded, not held for smoothness (Chromium honours it when negotiated).
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability { uri: PLAYOUT_DELAY_URI.to_owned() },
                RTPCodecType::Video,
                None,
            )
            .map_err(|e| format!("cannot register the playout-delay extension: {e}"))?;
        // default interceptors: NACK, RTCP reports, and transport-cc (the feedback and the
        // header extension for both kinds; the sessions stamp the sequence numbers themselves
        // and run congestion control on the feedback, see `link`). `egress` goes first, so it
        // wraps the writer below the NACK responder and sees its retransmissions.
        let egress = egress::Egress::new();
        let mut registry = Registry::new();
        registry.add(Box::new(egress::EgressBuilder(Arc::clone(&egress))));
        let registry = register_default_interceptors(registry, &mut media)
            .map_err(|e| format!("cannot set up RTP interceptors: {e}"))?;

        let bind = SocketAddr::new(cfg.udp_bind, cfg.udp_port);
        let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| {
            format!(
                "cannot bind the WebRTC UDP port {bind}: {e} (set [webrtc] udp_port to a free port)"
            )
        })?;
        let udp_addr = socket.local_addr().map_err(|e| e.to_string())?;
        let stun_urls: Vec<String> = cfg
            .ice_servers
            .iter()
            .chain(&ice.servers)
            .flat_map(|s| s.urls.iter().map(|u| u.0.clone()))
            .chain(ice.turn_urls.iter().map(|u| u.0.clone()))
            .collect();
        let public = if stun_urls.iter().any(|u| ice::stun_target(u).is_some()) {
            let found = ice::discover_public(&socket, &stun_urls, Duration::from_millis(1500)).await;
            match found {
                Some(p) if Some(p) != Some(udp_addr) => log::info!("ice: the UDP port {udp_addr} is {p} as the STUN server sees it (offered as srflx)"),
                Some(_) => log::info!("ice: the UDP port {udp_addr} is not behind a NAT"),
                None => log::warn!("ice: no STUN server answered; no server-reflexive candidate (viewers behind another NAT need TURN)"),
            }
            found.filter(|p| *p != udp_addr && !p.ip().is_unspecified())
        } else {
            None
        };
        // UDP TURN only for the device itself: webrtc-rs 0.17 has no TCP/TLS TURN client (it warns
        // on each such URL, per peer connection). Viewers still get every URL from /api/ice.
        let udp_turn: Vec<String> = ice.turn_urls.iter().map(|u| u.0.clone()).filter(|u| ice::stun_target(u).is_some()).collect();
        if ice.mints_turn() && udp_turn.is_empty() {
            log::info!("ice: turn_urls has no UDP turn: URL; the device gathers no relay candidate of its own (viewers still get every URL from /api/ice)");
        }
        let turn = (ice.mints_turn() && !udp_turn.is_empty()).then(|| TurnMint {
            secret: ice.turn_secret.0.clone(),
            urls: udp_turn,
            ttl_s: ice.turn_ttl_s.get() as u64,
        });
        if !ice.turn_secret.0.is_empty() && ice.turn_urls.is_empty() {
            log::warn!("ice: turn_secret is set but turn_urls is empty: no TURN credentials are minted");
        }
        let mux = UDPMuxDefault::new(UDPMuxParams::new(socket));

        let mut settings = SettingEngine::default();
        settings.set_udp_network(UDPNetwork::Muxed(mux));
        // mDNS candidates need a multicast socket (absent in namespaces and some images); the
        // device's page is reached by address anyway.
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        // Data channels are read by `session::pump` (see there why).
        settings.detach_data_channels();
        settings.set_include_loopback_candidate(cfg.include_loopback);
        settings.set_network_types(match cfg.udp_bind {
            IpAddr::V4(_) => vec![NetworkType::Udp4],
            IpAddr::V6(_) => vec![NetworkType::Udp4, NetworkType::Udp6],
        });
        if let IpAddr::V4(v4) = cfg.udp_bind {
            if !v4.is_unspecified() {
                // Bound to one address: offering others would only produce failing pairs.
                let only = cfg.udp_bind;
                settings.set_ip_filter(Box::new(move |ip| ip == only));
            }
        }
        if !cfg.nat_1to1_ips.is_empty() {
            settings.set_nat_1to1_ips(
                cfg.nat_1to1_ips.iter().map(|ip| ip.to_string()).collect(),
                RTCIceCandidateType::Host,
            );
        }
        if !cfg.interfaces.is_empty() {
            let allowed = cfg.interfaces.clone();
            settings.set_interface_filter(Box::new(move |name| {
                allowed.iter().any(|a| a == name) || (name == "lo")
            }));
        }
        let timeout = Duration::from_secs(cfg.peer_timeout_s.get() as u64);
        settings.set_ice_timeouts(Some(timeout / 2), Some(timeout), Some(Duration::from_secs(2)));

        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .build();
        let ice_servers = cfg
            .ice_servers
            .iter()
            .chain(&ice.servers)
            .map(|s| RTCIceServer {
                urls: s.urls.iter().map(|u| u.0.clone()).collect(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect();
        Ok(Self { api, ice_servers, turn, public, udp_addr, egress })
    }

    /// The public address found by STUN at start, if any.
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.public
    }

    /// An answer's SDP as sent: with the public address as a server-reflexive candidate.
    pub fn finish_answer(&self, sdp: String) -> String {
        match self.public {
            Some(p) => ice::add_srflx(&sdp, p, self.udp_addr),
            None => sdp,
        }
    }

    pub async fn new_peer_connection(&self) -> Result<Arc<RTCPeerConnection>, String> {
        let mut ice_servers = self.ice_servers.clone();
        if let Some(t) = &self.turn {
            let (username, credential) = ice::turn_credentials(&t.secret, "peercam-device", ice::unix_now(), t.ttl_s);
            ice_servers.push(RTCIceServer { urls: t.urls.clone(), username, credential });
        }
        let config = RTCConfiguration { ice_servers, ..Default::default() };
        self.api
            .new_peer_connection(config)
            .await
            .map(Arc::new)
            .map_err(|e| format!("cannot create a peer connection: {e}"))
    }
}
