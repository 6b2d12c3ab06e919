//! Signaling: how a peer's offer reaches a session. WHEP (RFC 9725) over HTTP.

pub mod peerjs;
pub mod whep;
