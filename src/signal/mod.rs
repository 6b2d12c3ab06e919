//! Signaling: how a peer's offer reaches a session. WHEP (draft-ietf-wish-whep, not an RFC)
//! over HTTP and PeerJS-compatible signaling; the contract is docs/interfaces.md. Also the RTSP
//! server (`rtsp`): another way for a client to become a reader of the hub, and the WHIP client
//! (`whip`): the device publishing its stream to a media server.
//!
//! This layer knows nothing of logins, cookies or the HTTP server: its handlers take their own
//! sub-states ([`whep::WhepState`], [`peerjs::PeerJsState`]) that the `http` layer builds from its
//! state (axum `FromRef`), and the layer above tells them who a request belongs to with an
//! [`Owner`] request extension. `http` mounts these routers; nothing here imports `http`.

pub mod peerjs;
pub mod rtsp;
pub mod whep;
pub mod whip;

/// Which login a request (and what it opens: a WHEP session, a PeerJS socket) belongs to, set
/// by the layer that checked the credentials as a request extension. Opaque here: a digest,
/// never the secret itself. When that login ends, what it opened is ended too
/// (`PeerServer::end_owned_by`, `Sessions::end_owned_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner(pub [u8; 32]);
