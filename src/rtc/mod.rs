//! WebRTC: one peer connection per viewer, all sharing one UDP port.
//!
//! Built on `webrtc` 0.17 (the async API with a single-port `UDPMuxDefault`): 0.20+ has no UDP
//! mux in its async API, and a camera behind a port forward or firewall needs exactly one UDP
//! port. See the README's architecture section.

pub mod control;
pub mod offer;
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
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};

pub const OPUS_PAYLOAD_TYPE: u8 = 111;

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
    [("goog-remb", ""), ("ccm", "fir"), ("nack", ""), ("nack", "pli")]
        .iter()
        .map(|(t, p)| RTCPFeedback { typ: t.to_string(), parameter: p.to_string() })
        .collect()
}

/// Owns the shared UDP socket and the WebRTC API object every session is built from.
pub struct RtcEngine {
    api: API,
    ice_servers: Vec<RTCIceServer>,
    pub udp_addr: SocketAddr,
}

impl RtcEngine {
    pub async fn new(cfg: &WebRtcConfig) -> Result<Self, String> {
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
        let registry = register_default_interceptors(Registry::new(), &mut media)
            .map_err(|e| format!("cannot set up RTP interceptors: {e}"))?;

        let bind = SocketAddr::new(cfg.udp_bind, cfg.udp_port);
        let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| {
            format!(
                "cannot bind the WebRTC UDP port {bind}: {e} (set [webrtc] udp_port to a free port)"
            )
        })?;
        let udp_addr = socket.local_addr().map_err(|e| e.to_string())?;
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
            .map(|s| RTCIceServer {
                urls: s.urls.iter().map(|u| u.0.clone()).collect(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect();
        Ok(Self { api, ice_servers, udp_addr })
    }

    pub async fn new_peer_connection(&self) -> Result<Arc<RTCPeerConnection>, String> {
        let config = RTCConfiguration { ice_servers: self.ice_servers.clone(), ..Default::default() };
        self.api
            .new_peer_connection(config)
            .await
            .map(Arc::new)
            .map_err(|e| format!("cannot create a peer connection: {e}"))
    }
}
