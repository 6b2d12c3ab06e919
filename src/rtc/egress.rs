//! The last hop before the socket: every RTP packet a session sends passes here, NACK
//! retransmissions included, so retransmissions count within the viewer's link budget.
//!
//! Why an interceptor: webrtc-rs's NACK responder resends from its own buffer straight to the
//! writer below it, past the session's send loop, its pacer and its transport-wide sequence
//! numbers. A resent packet then carried the original's transport-cc number (the browser's
//! feedback cannot describe it, the controller never learns it was sent) and took bandwidth
//! the pacer did not know about. Registered before the responder, this interceptor wraps the
//! writer below it: it sees each retransmission, gives it a fresh transport-wide sequence
//! number (as libwebrtc does), charges it to the viewer's pacer, and drops it while the link's
//! congestion window is full (a retransmission into a full bottleneck queue only adds loss).
//!
//! Sessions register their outgoing SSRCs with their [`Link`]; packets of an SSRC with no live
//! link pass through untouched.

use super::link::Link;
use webrtc::rtp;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;
use webrtc::interceptor::stream_info::StreamInfo;
use webrtc::interceptor::{
    Attributes, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader, RTPWriter,
};

/// Outgoing streams registered at once (two per session; sessions are capped far below).
const MAX_STREAMS: usize = 4096;

/// SSRC → the link its packets travel on. Shared by every peer connection of the engine.
#[derive(Default)]
pub struct Egress {
    links: Mutex<HashMap<u32, Weak<Link>>>,
}

impl Egress {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Weak<Link>>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Packets with this SSRC travel on `link` (until the link is dropped).
    pub fn register(&self, ssrc: u32, link: &Arc<Link>) {
        let mut links = self.lock();
        if links.len() >= MAX_STREAMS {
            links.retain(|_, l| l.strong_count() > 0);
        }
        if links.len() < MAX_STREAMS {
            links.insert(ssrc, Arc::downgrade(link));
        }
    }

    fn link(&self, ssrc: u32) -> Option<Arc<Link>> {
        self.lock().get(&ssrc).and_then(Weak::upgrade)
    }
}

/// Builds one [`EgressInterceptor`] per peer connection (register it before the NACK responder).
pub struct EgressBuilder(pub Arc<Egress>);

impl InterceptorBuilder for EgressBuilder {
    fn build(&self, _id: &str) -> Result<Arc<dyn Interceptor + Send + Sync>, webrtc::interceptor::Error> {
        Ok(Arc::new(EgressInterceptor(Arc::clone(&self.0))))
    }
}

pub struct EgressInterceptor(Arc<Egress>);

#[async_trait::async_trait]
impl Interceptor for EgressInterceptor {
    async fn bind_rtcp_reader(&self, reader: Arc<dyn RTCPReader + Send + Sync>) -> Arc<dyn RTCPReader + Send + Sync> {
        reader
    }

    async fn bind_rtcp_writer(&self, writer: Arc<dyn RTCPWriter + Send + Sync>) -> Arc<dyn RTCPWriter + Send + Sync> {
        writer
    }

    async fn bind_local_stream(&self, info: &StreamInfo, writer: Arc<dyn RTPWriter + Send + Sync>) -> Arc<dyn RTPWriter + Send + Sync> {
        let twcc = info
            .rtp_header_extensions
            .iter()
            .find(|e| e.uri == webrtc::sdp::extmap::TRANSPORT_CC_URI)
            .map(|e| e.id as u8);
        Arc::new(EgressStream { egress: Arc::clone(&self.0), next: writer, twcc, highest: Mutex::new(None) })
    }

    async fn unbind_local_stream(&self, _info: &StreamInfo) {}

    async fn bind_remote_stream(&self, _info: &StreamInfo, reader: Arc<dyn RTPReader + Send + Sync>) -> Arc<dyn RTPReader + Send + Sync> {
        reader
    }

    async fn unbind_remote_stream(&self, _info: &StreamInfo) {}

    async fn close(&self) -> Result<(), webrtc::interceptor::Error> {
        Ok(())
    }
}

struct EgressStream {
    egress: Arc<Egress>,
    next: Arc<dyn RTPWriter + Send + Sync>,
    /// The transport-cc extension id negotiated for this stream, if any.
    twcc: Option<u8>,
    /// The highest RTP sequence number sent (a packet at or below it is a retransmission).
    highest: Mutex<Option<u16>>,
}

/// Whether `seq` was sent before, given the highest sequence number sent so far (16-bit
/// wrap-around: anything in the half-range behind `highest` is old).
pub fn is_resend(highest: Option<u16>, seq: u16) -> bool {
    highest.is_some_and(|h| h.wrapping_sub(seq) < 0x8000)
}

#[async_trait::async_trait]
impl RTPWriter for EgressStream {
    async fn write(&self, pkt: &rtp::packet::Packet, attributes: &Attributes) -> Result<usize, webrtc::interceptor::Error> {
        let resend = {
            let mut highest = self.highest.lock().unwrap_or_else(|e| e.into_inner());
            let resend = is_resend(*highest, pkt.header.sequence_number);
            if !resend {
                *highest = Some(pkt.header.sequence_number);
            }
            resend
        };
        if !resend {
            return self.next.write(pkt, attributes).await;
        }
        let Some(link) = self.egress.link(pkt.header.ssrc) else {
            return self.next.write(pkt, attributes).await;
        };
        let now = Instant::now();
        let size = pkt.payload.len();
        if !link.admit_resend(size, now) {
            return Ok(0);
        }
        let mut resent = pkt.clone();
        if let Some(id) = self.twcc {
            let tseq = link.next_transport_seq(size, now);
            let _ = resent.header.set_extension(id, bytes::Bytes::copy_from_slice(&tseq.to_be_bytes()));
        }
        self.next.write(&resent, attributes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resends_are_told_from_new_packets_across_the_wrap() {
        assert!(!is_resend(None, 5));
        assert!(!is_resend(Some(5), 6));
        assert!(is_resend(Some(5), 5));
        assert!(is_resend(Some(5), 1));
        assert!(!is_resend(Some(65535), 0), "the wrap is new");
        assert!(is_resend(Some(2), 65530), "behind the wrap is old");
    }
}
