//! PeerJS `DataConnection` framing: how peerjs 1.5.5 puts messages on a data channel for each
//! `serialization`, so the device can talk to `peer.connect(id, {serialization})`.
//!
//! What peerjs 1.5.5 does (`lib/dataconnection/BufferedConnection/*.ts`):
//! - `binary` (the default) and `binary-utf8` (the same class, `BinaryPack`): every message is
//!   `pack(value)` in one binary frame; a packed message longer than 16300 bytes (`chunkedMTU`)
//!   is cut into 16300-byte slices, each sent as a packed map
//!   `{__peerData: id, n, data: <slice>, total}` with a per-connection `id` counting from 1;
//! - `json`: `TextEncoder().encode(JSON.stringify(value))` as a **binary** frame (the receiver
//!   runs `TextDecoder.decode` on it, which throws on a text frame); never chunked — the sender
//!   refuses 16300 bytes or more;
//! - `raw`: whatever was given, as is (strings as text frames, ArrayBuffers as binary frames);
//! - `conn.close({flush: true})` sends `{__peerData: {type: "close"}}` through the serializer
//!   (meaningful for `binary` and `json`; `raw` turns it into "[object Object]").
//!
//! [`Decoder`] and [`Encoder`] do this both ways and do no I/O: the session feeds received frames
//! in and sends what comes out. Reassembly is bounded by [`Limits`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::binarypack::{self, PackError, UnpackError, Value};

/// Largest packed message peerjs sends unchunked, and the size of its chunks.
pub const CHUNK_MTU: usize = 16300;

/// A `serialization` of the PeerJS connect options (and of the signaling `OFFER` payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Serialization {
    Json,
    Raw,
    /// BinaryPack, chunked above [`CHUNK_MTU`]; what PeerJS uses when none is given.
    #[default]
    Binary,
    /// The same as `Binary` in peerjs 1.x (the name is historical).
    BinaryUtf8,
}

impl Serialization {
    /// The name PeerJS uses on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Serialization::Json => "json",
            Serialization::Raw => "raw",
            Serialization::Binary => "binary",
            Serialization::BinaryUtf8 => "binary-utf8",
        }
    }

    fn is_binarypack(self) -> bool {
        matches!(self, Serialization::Binary | Serialization::BinaryUtf8)
    }
}

impl fmt::Display for Serialization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `serialization` peerjs does not know (it would fail to construct the connection too).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown PeerJS serialization {0:?} (expected json, raw, binary or binary-utf8)")]
pub struct UnknownSerialization(pub String);

impl FromStr for Serialization {
    type Err = UnknownSerialization;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Serialization::Json),
            "raw" => Ok(Serialization::Raw),
            "binary" => Ok(Serialization::Binary),
            "binary-utf8" => Ok(Serialization::BinaryUtf8),
            other => Err(UnknownSerialization(other.to_owned())),
        }
    }
}

/// One data channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A string message (WebRTC PPID "string").
    Text(String),
    /// A binary message (WebRTC PPID "binary").
    Binary(Vec<u8>),
}

impl Frame {
    /// Payload size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(s) => s.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a complete incoming message means.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// What the remote `conn.send(value)` sent. For `raw` this is `Value::Str` (text frame) or
    /// `Value::Bin` (binary frame); for `json` it is the parsed JSON, for `binary` the unpacked
    /// value.
    Data(Value),
    /// The remote called `conn.close({flush: true})`: the connection should be closed.
    Close,
}

/// Bounds on what a [`Decoder`] accepts and keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message, whole or reassembled (chunk frames may add a few bytes of framing).
    pub max_message_bytes: usize,
    /// Most chunked messages being reassembled at once; a new one evicts the least recently
    /// updated.
    pub max_partial: usize,
    /// A partial message that got no chunk for this long is dropped.
    pub stale_after: Duration,
    /// Deepest array/map nesting in a message.
    pub max_depth: usize,
}

/// Largest message a data connection to the device carries, whole or reassembled: what it is
/// for — control requests, whose protocol refuses more than 16 KiB anyway
/// (`rtc::control::MAX_MESSAGE_BYTES`; the page's and the demo's requests are a few hundred
/// bytes) — and binary data echoed back, which is held to the same size.
pub const MAX_MESSAGE: usize = crate::rtc::control::MAX_MESSAGE_BYTES;

/// Largest frame a data connection sends for a message within [`MAX_MESSAGE`]: the message
/// itself (`raw`, `json`: peerjs never chunks those), or one BinaryPack chunk (16300 bytes of
/// slice plus its map), whichever is larger.
pub const MAX_FRAME: usize = if MAX_MESSAGE > CHUNK_MTU + CHUNK_FRAMING { MAX_MESSAGE } else { CHUNK_MTU + CHUNK_FRAMING };

/// The device's read buffer for one data connection: twice [`MAX_FRAME`], so a frame somewhat
/// over the limit still gets a `too_large` reply from the [`Decoder`] (and the connection goes
/// on); a frame longer than this is not read at all — the stack ends that data channel.
pub const READ_BUFFER: usize = 2 * MAX_FRAME;

impl Default for Limits {
    /// [`MAX_MESSAGE`] (16 KiB) messages, 4 partial messages (64 KiB worst case per
    /// connection), 30 s, 64 levels.
    fn default() -> Self {
        Limits {
            max_message_bytes: MAX_MESSAGE,
            max_partial: 4,
            stale_after: Duration::from_secs(30),
            max_depth: binarypack::DEFAULT_MAX_DEPTH,
        }
    }
}

/// Bytes a chunk frame may carry on top of its slice (`{__peerData, n, data, total}` is ≤ 60).
const CHUNK_FRAMING: usize = 64;

/// Why an incoming frame was refused. The connection can go on: the decoder stays usable.
#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("{size}-byte frame exceeds the {limit}-byte limit")]
    FrameTooLarge { size: usize, limit: usize },
    #[error("text frame on a {0} connection (peerjs sends binary frames)")]
    UnexpectedText(Serialization),
    #[error(transparent)]
    BinaryPack(#[from] UnpackError),
    #[error("JSON message is not UTF-8")]
    JsonNotUtf8,
    #[error("invalid JSON message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("malformed chunk: {0}")]
    BadChunk(&'static str),
    #[error("chunk {n} of message {id} received twice")]
    DuplicateChunk { id: i64, n: i64 },
    #[error("chunked message {id} exceeds the {limit}-byte limit")]
    MessageTooLarge { id: i64, limit: usize },
}

/// Why a value could not be encoded.
#[derive(Debug, Error)]
pub enum EncodeError {
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A chunked message being put back together.
#[derive(Debug)]
struct Partial {
    total: i64,
    /// Slices by index; a map so that a forged `total` allocates nothing.
    slices: BTreeMap<i64, Vec<u8>>,
    bytes: usize,
    updated: Instant,
}

/// Turns received frames into messages for one connection.
#[derive(Debug)]
pub struct Decoder {
    serialization: Serialization,
    limits: Limits,
    partial: HashMap<i64, Partial>,
}

impl Decoder {
    /// A decoder with [`Limits::default`].
    pub fn new(serialization: Serialization) -> Self {
        Self::with_limits(serialization, Limits::default())
    }

    pub fn with_limits(serialization: Serialization, limits: Limits) -> Self {
        Decoder {
            serialization,
            limits,
            partial: HashMap::new(),
        }
    }

    pub fn serialization(&self) -> Serialization {
        self.serialization
    }

    /// Chunked messages currently being reassembled.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Takes one received frame: `Ok(Some(_))` when it completes a message, `Ok(None)` for a
    /// chunk of one still incomplete.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Message>, DecodeError> {
        self.push_at(frame, Instant::now())
    }

    /// [`Decoder::push`] with the current time given, for staleness (tests drive the clock).
    pub fn push_at(&mut self, frame: Frame, now: Instant) -> Result<Option<Message>, DecodeError> {
        let limit = self.limits.max_message_bytes
            + if self.serialization.is_binarypack() {
                CHUNK_FRAMING
            } else {
                0
            };
        if frame.len() > limit {
            return Err(DecodeError::FrameTooLarge {
                size: frame.len(),
                limit,
            });
        }
        match (self.serialization, frame) {
            (Serialization::Raw, Frame::Text(s)) => Ok(Some(Message::Data(Value::Str(s)))),
            (Serialization::Raw, Frame::Binary(b)) => Ok(Some(Message::Data(Value::Bin(b)))),
            // peerjs sends binary frames; a text frame carrying JSON is accepted all the same.
            (Serialization::Json, Frame::Text(s)) => Self::json(s.as_bytes()),
            (Serialization::Json, Frame::Binary(b)) => Self::json(&b),
            (ser, Frame::Text(_)) => Err(DecodeError::UnexpectedText(ser)),
            (_, Frame::Binary(b)) => self.binarypack(&b, now),
        }
    }

    fn json(bytes: &[u8]) -> Result<Option<Message>, DecodeError> {
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::JsonNotUtf8)?;
        let value = Value::from_json(&serde_json::from_str(text)?);
        Ok(Some(if is_close(&value) {
            Message::Close
        } else {
            Message::Data(value)
        }))
    }

    fn binarypack(&mut self, bytes: &[u8], now: Instant) -> Result<Option<Message>, DecodeError> {
        let value = binarypack::unpack_with_depth(bytes, self.limits.max_depth)?;
        if is_close(&value) {
            return Ok(Some(Message::Close));
        }
        if !has_peer_data(&value) {
            return Ok(Some(Message::Data(value)));
        }
        let Some(whole) = self.chunk(value, now)? else {
            return Ok(None);
        };
        let value = binarypack::unpack_with_depth(&whole, self.limits.max_depth)?;
        if is_close(&value) {
            Ok(Some(Message::Close))
        } else if has_peer_data(&value) {
            // peerjs would recurse; nobody sends chunks of chunks.
            Err(DecodeError::BadChunk("chunked message is itself a chunk"))
        } else {
            Ok(Some(Message::Data(value)))
        }
    }

    /// Files one chunk; returns the whole packed message once its last chunk is in.
    fn chunk(&mut self, chunk: Value, now: Instant) -> Result<Option<Vec<u8>>, DecodeError> {
        let field = |name: &'static str| {
            chunk
                .get(name)
                .and_then(Value::as_i64)
                .ok_or(DecodeError::BadChunk(name))
        };
        let (id, n, total) = (field("__peerData")?, field("n")?, field("total")?);
        let Some(Value::Bin(data)) = chunk.get("data") else {
            return Err(DecodeError::BadChunk("data is not binary"));
        };
        let limit = self.limits.max_message_bytes;
        if total < 1 || total > limit as i64 {
            return Err(DecodeError::BadChunk("total out of range"));
        }
        if !(0..total).contains(&n) {
            return Err(DecodeError::BadChunk("n out of range"));
        }
        if data.is_empty() {
            // peerjs never sends one, and allowing them would let a peer grow our index for free.
            return Err(DecodeError::BadChunk("empty data"));
        }

        // Drop what went stale, then make room for a new message by evicting the oldest.
        let stale_after = self.limits.stale_after;
        self.partial
            .retain(|_, p| now.saturating_duration_since(p.updated) <= stale_after);
        let full = self.partial.len() >= self.limits.max_partial.max(1);
        if full && !self.partial.contains_key(&id) {
            let oldest = self
                .partial
                .iter()
                .min_by_key(|(_, p)| p.updated)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.partial.remove(&oldest);
            }
        }

        let partial = self.partial.entry(id).or_insert_with(|| Partial {
            total,
            slices: BTreeMap::new(),
            bytes: 0,
            updated: now,
        });
        let refused = if partial.total != total {
            Some(DecodeError::BadChunk("total differs between chunks"))
        } else if partial.slices.contains_key(&n) {
            Some(DecodeError::DuplicateChunk { id, n })
        } else if partial.bytes + data.len() > limit {
            Some(DecodeError::MessageTooLarge { id, limit })
        } else {
            None
        };
        if let Some(err) = refused {
            // The message cannot complete correctly any more: forget it.
            self.partial.remove(&id);
            return Err(err);
        }
        partial.bytes += data.len();
        partial.updated = now;
        partial.slices.insert(n, data.clone());
        if partial.slices.len() as i64 != total {
            return Ok(None);
        }
        let done = self.partial.remove(&id).expect("entry exists");
        let mut whole = Vec::with_capacity(done.bytes);
        for slice in done.slices.into_values() {
            whole.extend_from_slice(&slice);
        }
        Ok(Some(whole))
    }
}

/// peerjs tests `data["__peerData"]` for truthiness.
fn has_peer_data(value: &Value) -> bool {
    match value.get("__peerData") {
        None | Some(Value::Null | Value::Undefined | Value::Bool(false)) => false,
        Some(Value::Int(0)) => false,
        Some(Value::Float(f)) => !(*f == 0.0 || f.is_nan()),
        Some(Value::Str(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// `{__peerData: {type: "close"}}`.
fn is_close(value: &Value) -> bool {
    value
        .get("__peerData")
        .and_then(|p| p.get("type"))
        .and_then(Value::as_str)
        == Some("close")
}

/// Turns outgoing values into frames for one connection (it numbers chunked messages).
#[derive(Debug)]
pub struct Encoder {
    serialization: Serialization,
    next_chunked_id: i64,
}

impl Encoder {
    pub fn new(serialization: Serialization) -> Self {
        Encoder {
            serialization,
            next_chunked_id: 1,
        }
    }

    pub fn serialization(&self) -> Serialization {
        self.serialization
    }

    /// The frames that make the remote's `data` event fire with `value`:
    /// - `binary`/`binary-utf8`: one packed frame, or chunk frames above [`CHUNK_MTU`] bytes
    ///   (don't send a top-level `null`: peerjs's receiver does `null["__peerData"]` and throws);
    /// - `json`: one binary frame of UTF-8 JSON ([`Value::to_json`]: binary data becomes an
    ///   array of numbers); not chunked, and peerjs reads any size;
    /// - `raw`: `Str` as a text frame, `Bin` as a binary frame, anything else as a text frame
    ///   of its JSON (the remote gets a string to `JSON.parse`).
    pub fn encode(&mut self, value: &Value) -> Result<Vec<Frame>, EncodeError> {
        Ok(match self.serialization {
            Serialization::Json => vec![Frame::Binary(serde_json::to_vec(&value.to_json())?)],
            Serialization::Raw => vec![match value {
                Value::Str(s) => Frame::Text(s.clone()),
                Value::Bin(b) => Frame::Binary(b.clone()),
                other => Frame::Text(serde_json::to_string(&other.to_json())?),
            }],
            Serialization::Binary | Serialization::BinaryUtf8 => {
                let packed = binarypack::pack(value)?;
                if packed.len() <= CHUNK_MTU {
                    vec![Frame::Binary(packed)]
                } else {
                    self.chunks(&packed)?
                }
            }
        })
    }

    /// [`Encoder::encode`] for a JSON value, e.g. a control protocol reply.
    pub fn encode_json(&mut self, json: &serde_json::Value) -> Result<Vec<Frame>, EncodeError> {
        self.encode(&Value::from_json(json))
    }

    /// What `conn.close({flush: true})` sends: tells the remote to close (`binary`, `json`;
    /// `raw` has no such message, so nothing).
    pub fn close(&mut self) -> Result<Vec<Frame>, EncodeError> {
        if self.serialization == Serialization::Raw {
            return Ok(Vec::new());
        }
        let close = Value::Map(vec![(
            Value::Str("__peerData".into()),
            Value::Map(vec![(
                Value::Str("type".into()),
                Value::Str("close".into()),
            )]),
        )]);
        self.encode(&close)
    }

    /// peerjs's `BinaryPackChunker.chunk`, each chunk packed as `{__peerData, n, data, total}`
    /// (that key order, so the bytes match peerjs's).
    fn chunks(&mut self, packed: &[u8]) -> Result<Vec<Frame>, EncodeError> {
        let id = self.next_chunked_id;
        self.next_chunked_id += 1;
        let total = packed.len().div_ceil(CHUNK_MTU);
        packed
            .chunks(CHUNK_MTU)
            .enumerate()
            .map(|(n, slice)| {
                let chunk = Value::Map(vec![
                    (Value::Str("__peerData".into()), Value::Int(id)),
                    (Value::Str("n".into()), Value::Int(n as i64)),
                    (Value::Str("data".into()), Value::Bin(slice.to_vec())),
                    (Value::Str("total".into()), Value::Int(total as i64)),
                ]);
                Ok(Frame::Binary(binarypack::pack(&chunk)?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::peerjs::binarypack::tests::{FIXTURES, Rng, hex, typed};
    use serde_json::json;

    fn data(value: Value) -> Option<Message> {
        Some(Message::Data(value))
    }

    fn bin(frames: Vec<Frame>) -> Vec<Vec<u8>> {
        frames
            .into_iter()
            .map(|f| match f {
                Frame::Binary(b) => b,
                Frame::Text(t) => panic!("text frame {t:?}"),
            })
            .collect()
    }

    #[test]
    fn serialization_names() {
        for s in ["json", "raw", "binary", "binary-utf8"] {
            assert_eq!(s.parse::<Serialization>().unwrap().to_string(), s);
        }
        assert_eq!(
            "msgpack".parse::<Serialization>(),
            Err(UnknownSerialization("msgpack".into()))
        );
        assert_eq!(Serialization::default(), Serialization::Binary);
    }

    #[test]
    fn peerjs_chunks_reassemble_and_reencode_byte_exact() {
        let fixtures: serde_json::Value = serde_json::from_str(FIXTURES).unwrap();
        for case in fixtures["chunked"].as_array().unwrap() {
            assert_eq!(case["chunk_mtu"], json!(CHUNK_MTU));
            let frames: Vec<Vec<u8>> = case["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| hex(f.as_str().unwrap()))
                .collect();
            assert!(frames.len() > 1, "fixture is not chunked");
            let expected = typed(&case["value"]);
            for ser in [Serialization::Binary, Serialization::BinaryUtf8] {
                // The real library's chunked message is bigger than the device takes
                // (MAX_MESSAGE); reassembly itself is what is checked here.
                let limits = Limits { max_message_bytes: 256 * 1024, ..Limits::default() };
                let mut dec = Decoder::with_limits(ser, limits);
                let last = frames.len() - 1;
                for (i, frame) in frames.iter().enumerate() {
                    let out = dec.push(Frame::Binary(frame.clone())).unwrap();
                    if i < last {
                        assert_eq!(out, None);
                        assert_eq!(dec.pending(), 1);
                    } else {
                        assert_eq!(out, data(expected.clone()));
                        assert_eq!(dec.pending(), 0);
                    }
                }
                // A fresh encoder numbers its first chunked message 1, like peerjs.
                assert_eq!(bin(Encoder::new(ser).encode(&expected).unwrap()), frames);
            }
        }
    }

    #[test]
    fn chunks_out_of_order_and_interleaved() {
        let a = Value::Bin((0..40_000u32).map(|i| i as u8).collect());
        let b = Value::Str("ü".repeat(20_000));
        let mut enc = Encoder::new(Serialization::Binary);
        let fa = enc.encode(&a).unwrap();
        let fb = enc.encode(&b).unwrap();
        assert_eq!((fa.len(), fb.len()), (3, 3));
        // Messages this big are over the device's limit (MAX_MESSAGE): reassembly is tested
        // with a larger one.
        let limits = Limits { max_message_bytes: 64 * 1024, ..Limits::default() };
        let mut dec = Decoder::with_limits(Serialization::Binary, limits);
        // b2 a1 b0 a2 a0 b1
        let order = [(&fb, 2), (&fa, 1), (&fb, 0), (&fa, 2), (&fa, 0), (&fb, 1)];
        let mut got = Vec::new();
        for (frames, i) in order {
            if let Some(m) = dec.push(frames[i].clone()).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![Message::Data(a), Message::Data(b)]);
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn the_device_limit_refuses_bigger_messages_without_keeping_them() {
        // A control request at the protocol's limit fits, chunked or not.
        let at_limit = Value::Str("x".repeat(MAX_MESSAGE - 3)); // 0xda + u16 length
        let frames = Encoder::new(Serialization::Binary).encode(&at_limit).unwrap();
        assert!(frames.iter().all(|f| f.len() <= MAX_FRAME), "every frame within MAX_FRAME");
        let mut dec = Decoder::new(Serialization::Binary);
        let mut got = None;
        for f in frames {
            got = dec.push(f).unwrap();
        }
        assert_eq!(got, Some(Message::Data(at_limit)));
        // 100 KB sent the way peerjs sends it (7 chunks): refused at the second chunk, and what
        // follows never adds up to a message or to more than one chunk kept.
        let big = Value::Bin(vec![5; 100_000]);
        let frames = Encoder::new(Serialization::Binary).encode(&big).unwrap();
        assert_eq!(frames.len(), 7);
        let mut refused = 0;
        for f in frames {
            match dec.push(f) {
                Ok(None) => {}
                Ok(Some(m)) => panic!("a message over the limit came through: {m:?}"),
                Err(DecodeError::MessageTooLarge { .. }) => refused += 1,
                Err(e) => panic!("unexpected {e}"),
            }
            assert!(dec.partial.values().map(|p| p.bytes).sum::<usize>() <= MAX_MESSAGE);
        }
        assert!(refused >= 3, "{refused}");
        // A raw or json frame over the limit: refused as too large.
        for ser in [Serialization::Raw, Serialization::Json] {
            let e = Decoder::new(ser).push(Frame::Binary(vec![b' '; MAX_FRAME + 1])).unwrap_err();
            assert!(matches!(e, DecodeError::FrameTooLarge { .. }), "{e}");
        }
        assert!(READ_BUFFER < 64 * 1024, "was 256 KiB per data connection");
    }

    #[test]
    fn small_messages_are_single_frames() {
        let req = json!({"v": 1, "id": 7, "type": "get_settings"});
        let mut enc = Encoder::new(Serialization::Binary);
        let frames = enc.encode_json(&req).unwrap();
        assert_eq!(frames.len(), 1);
        let mut dec = Decoder::new(Serialization::Binary);
        let Some(Message::Data(v)) = dec.push(frames[0].clone()).unwrap() else {
            panic!()
        };
        assert_eq!(v.to_json(), req);
        // With JS's key order, the very bytes of pack({v: 1, id: 7, type: "get_settings"}).
        let ordered = Value::Map(vec![
            (Value::Str("v".into()), Value::Int(1)),
            (Value::Str("id".into()), Value::Int(7)),
            (Value::Str("type".into()), Value::Str("get_settings".into())),
        ]);
        let js = hex("83b17601b2696407b474797065bc6765745f73657474696e6773");
        assert_eq!(bin(enc.encode(&ordered).unwrap()), vec![js]);
        // Exactly CHUNK_MTU bytes still goes whole; one more byte is chunked.
        let at_mtu = Value::Bin(vec![7; CHUNK_MTU - 3]); // 0xda + u16 length
        assert_eq!(enc.encode(&at_mtu).unwrap().len(), 1);
        let over = Value::Bin(vec![7; CHUNK_MTU - 2]);
        assert_eq!(enc.encode(&over).unwrap().len(), 2);
    }

    #[test]
    fn json_serialization() {
        let req = json!({"v": 1, "id": "a", "type": "chat", "text": "héllo"});
        let mut enc = Encoder::new(Serialization::Json);
        let frames = enc.encode_json(&req).unwrap();
        // Binary frames: peerjs decodes them with TextDecoder, which rejects strings.
        assert_eq!(
            frames,
            vec![Frame::Binary(serde_json::to_vec(&req).unwrap())]
        );
        let mut dec = Decoder::new(Serialization::Json);
        let Some(Message::Data(v)) = dec.push(frames[0].clone()).unwrap() else {
            panic!()
        };
        assert_eq!(v.to_json(), req);
        let Some(Message::Data(v)) = dec.push(Frame::Text(req.to_string())).unwrap() else {
            panic!()
        };
        assert_eq!(v.to_json(), req);
        // Large JSON is one frame; binary data becomes an array of numbers.
        let big = Value::Map(vec![(Value::Str("b".into()), Value::Bin(vec![1, 2]))]);
        assert_eq!(
            enc.encode(&big).unwrap(),
            vec![Frame::Binary(br#"{"b":[1,2]}"#.to_vec())]
        );
        assert_eq!(
            enc.encode(&Value::Str("x".repeat(20_000))).unwrap().len(),
            1
        );
        assert!(matches!(
            dec.push(Frame::Binary(b"{".to_vec())),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            dec.push(Frame::Binary(vec![0xff])),
            Err(DecodeError::JsonNotUtf8)
        ));
    }

    #[test]
    fn raw_serialization() {
        let mut dec = Decoder::new(Serialization::Raw);
        assert_eq!(
            dec.push(Frame::Text("hi".into())).unwrap(),
            data(Value::Str("hi".into()))
        );
        assert_eq!(
            dec.push(Frame::Binary(vec![1, 2])).unwrap(),
            data(Value::Bin(vec![1, 2]))
        );
        let mut enc = Encoder::new(Serialization::Raw);
        assert_eq!(
            enc.encode(&Value::Str("hi".into())).unwrap(),
            vec![Frame::Text("hi".into())]
        );
        assert_eq!(
            enc.encode(&Value::Bin(vec![3])).unwrap(),
            vec![Frame::Binary(vec![3])]
        );
        assert_eq!(
            enc.encode_json(&json!({"ok": true})).unwrap(),
            vec![Frame::Text(r#"{"ok":true}"#.into())]
        );
        assert_eq!(enc.close().unwrap(), vec![]);
    }

    #[test]
    fn close_message() {
        for ser in [
            Serialization::Binary,
            Serialization::BinaryUtf8,
            Serialization::Json,
        ] {
            let mut enc = Encoder::new(ser);
            let mut dec = Decoder::new(ser);
            let frames = enc.close().unwrap();
            assert_eq!(frames.len(), 1);
            assert_eq!(
                dec.push(frames[0].clone()).unwrap(),
                Some(Message::Close),
                "{ser}"
            );
        }
        // The bytes peerjs-js-binarypack makes of {__peerData: {type: "close"}}.
        let mut dec = Decoder::new(Serialization::Binary);
        let bytes = hex("81ba5f5f706565724461746181b474797065b5636c6f7365");
        assert_eq!(
            dec.push(Frame::Binary(bytes)).unwrap(),
            Some(Message::Close)
        );
    }

    #[test]
    fn binary_payload_round_trip() {
        let payload = Value::Bin(vec![0, 1, 2, 255]);
        let mut enc = Encoder::new(Serialization::Binary);
        let mut dec = Decoder::new(Serialization::Binary);
        let frames = enc.encode(&payload).unwrap();
        assert_eq!(dec.push(frames[0].clone()).unwrap(), data(payload));
        // A falsy __peerData is plain data to peerjs.
        let falsy = Value::Map(vec![(Value::Str("__peerData".into()), Value::Int(0))]);
        let frames = enc.encode(&falsy).unwrap();
        assert_eq!(dec.push(frames[0].clone()).unwrap(), data(falsy));
    }

    fn small_limits() -> Limits {
        Limits {
            max_message_bytes: 50_000,
            max_partial: 2,
            ..Limits::default()
        }
    }

    #[test]
    fn oversize_is_refused() {
        let mut dec = Decoder::with_limits(Serialization::Binary, small_limits());
        // One frame too big.
        let err = dec.push(Frame::Binary(vec![0; 50_100])).unwrap_err();
        assert!(
            matches!(err, DecodeError::FrameTooLarge { size: 50_100, .. }),
            "{err}"
        );
        // Chunks adding up to too much: 4 × 16300 > 50 000.
        let mut enc = Encoder::new(Serialization::Binary);
        let frames = enc.encode(&Value::Bin(vec![1; 60_000])).unwrap();
        assert_eq!(frames.len(), 4);
        for f in &frames[..3] {
            assert_eq!(dec.push(f.clone()).unwrap(), None);
        }
        let err = dec.push(frames[3].clone()).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::MessageTooLarge {
                    id: 1,
                    limit: 50_000
                }
            ),
            "{err}"
        );
        assert_eq!(dec.pending(), 0, "the refused message is forgotten");
        // json and raw frames have the plain limit.
        let mut dec = Decoder::with_limits(Serialization::Json, small_limits());
        assert!(matches!(
            dec.push(Frame::Text(" ".repeat(50_001))),
            Err(DecodeError::FrameTooLarge { .. })
        ));
    }

    fn chunk(id: i64, n: i64, total: i64, data: Value) -> Frame {
        let v = Value::Map(vec![
            (Value::Str("__peerData".into()), Value::Int(id)),
            (Value::Str("n".into()), Value::Int(n)),
            (Value::Str("data".into()), data),
            (Value::Str("total".into()), Value::Int(total)),
        ]);
        Frame::Binary(binarypack::pack(&v).unwrap())
    }

    #[test]
    fn bad_chunks_are_refused() {
        let mut dec = Decoder::with_limits(Serialization::Binary, small_limits());
        let b = || Value::Bin(vec![0xc3]);
        for (frame, what) in [
            (chunk(1, 0, 0, b()), "total 0"),
            (chunk(1, 2, 2, b()), "n == total"),
            (chunk(1, -1, 2, b()), "n < 0"),
            (chunk(1, 0, i64::MAX, b()), "huge total"),
            (chunk(1, 0, 2, Value::Str("x".into())), "string data"),
            (chunk(1, 0, 2, Value::Bin(vec![])), "empty data"),
            (chunk(1, 0, 2, Value::Null), "null data"),
        ] {
            assert!(
                matches!(dec.push(frame), Err(DecodeError::BadChunk(_))),
                "{what}"
            );
        }
        let no_n = Value::Map(vec![(Value::Str("__peerData".into()), Value::Int(3))]);
        let frame = Frame::Binary(binarypack::pack(&no_n).unwrap());
        assert!(matches!(dec.push(frame), Err(DecodeError::BadChunk("n"))));
        assert_eq!(dec.pending(), 0);
        // Duplicates and inconsistent totals drop the message.
        assert_eq!(dec.push(chunk(5, 0, 3, b())).unwrap(), None);
        assert!(matches!(
            dec.push(chunk(5, 0, 3, b())),
            Err(DecodeError::DuplicateChunk { id: 5, n: 0 })
        ));
        assert_eq!(dec.pending(), 0);
        assert_eq!(dec.push(chunk(6, 0, 3, b())).unwrap(), None);
        assert!(matches!(
            dec.push(chunk(6, 1, 4, b())),
            Err(DecodeError::BadChunk(_))
        ));
        // A text frame on a binary connection.
        assert!(matches!(
            dec.push(Frame::Text("{}".into())),
            Err(DecodeError::UnexpectedText(_))
        ));
        // Reassembled bytes that are not BinaryPack, or are a chunk again.
        assert_eq!(
            dec.push(chunk(7, 0, 2, Value::Bin(vec![0xcd]))).unwrap(),
            None
        );
        assert!(matches!(
            dec.push(chunk(7, 1, 2, Value::Bin(vec![0x01]))),
            Err(DecodeError::BinaryPack(_))
        ));
        let Frame::Binary(inner) = chunk(9, 0, 1, b()) else {
            unreachable!()
        };
        assert!(matches!(
            dec.push(chunk(8, 0, 1, Value::Bin(inner))),
            Err(DecodeError::BadChunk(_))
        ));
        // The decoder still works afterwards.
        assert_eq!(
            dec.push(chunk(10, 0, 1, b())).unwrap(),
            data(Value::Bool(true))
        );
    }

    #[test]
    fn partial_messages_are_bounded_and_expire() {
        let limits = small_limits(); // at most 2 partial messages
        let mut dec = Decoder::with_limits(Serialization::Binary, limits);
        let t0 = Instant::now();
        let b = |byte| Value::Bin(vec![byte]);
        assert_eq!(dec.push_at(chunk(1, 0, 2, b(0x01)), t0).unwrap(), None);
        assert_eq!(
            dec.push_at(chunk(2, 0, 2, b(0x02)), t0 + Duration::from_secs(1))
                .unwrap(),
            None
        );
        // A third message evicts the least recently updated (1).
        assert_eq!(
            dec.push_at(chunk(3, 0, 2, b(0x03)), t0 + Duration::from_secs(2))
                .unwrap(),
            None
        );
        assert_eq!(dec.pending(), 2);
        // So 1's second chunk starts a new partial instead of completing it (evicting 2).
        assert_eq!(
            dec.push_at(chunk(1, 1, 2, b(0x04)), t0 + Duration::from_secs(3))
                .unwrap(),
            None
        );
        // 3 completes, but [0x03, 0x05] is two values, not one: refused, and gone.
        let err = dec
            .push_at(chunk(3, 1, 2, b(0x05)), t0 + Duration::from_secs(4))
            .unwrap_err();
        assert!(
            matches!(err, DecodeError::BinaryPack(UnpackError::TrailingBytes(1))),
            "{err}"
        );
        assert_eq!(dec.pending(), 1);
        // Staleness: after `stale_after` without news, the partial is gone.
        let late = t0 + Duration::from_secs(3) + limits.stale_after + Duration::from_secs(1);
        assert_eq!(dec.push_at(chunk(9, 0, 2, b(0x92)), late).unwrap(), None);
        assert_eq!(dec.pending(), 1, "message 1 expired");
        assert_eq!(
            dec.push_at(chunk(9, 1, 2, Value::Bin(vec![0x01, 0x02])), late)
                .unwrap(),
            data(Value::Array(vec![Value::Int(1), Value::Int(2)]))
        );
    }

    #[test]
    fn fuzz_frames_never_panic() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let mut enc = Encoder::new(Serialization::Binary);
        let good = enc.encode(&Value::Str("z".repeat(40_000))).unwrap();
        for ser in [
            Serialization::Binary,
            Serialization::Json,
            Serialization::Raw,
        ] {
            let mut dec = Decoder::with_limits(ser, small_limits());
            for _ in 0..5_000 {
                let frame = match rng.below(3) {
                    0 => {
                        // A real chunk, truncated or corrupted.
                        let Frame::Binary(mut b) = good[rng.below(3) as usize].clone() else {
                            unreachable!()
                        };
                        let i = rng.below(b.len() as u64) as usize;
                        if rng.below(2) == 0 {
                            b.truncate(i)
                        } else {
                            b[i] = rng.next() as u8
                        }
                        Frame::Binary(b)
                    }
                    1 => Frame::Binary((0..rng.below(40)).map(|_| rng.next() as u8).collect()),
                    _ => Frame::Text(
                        (0..rng.below(40))
                            .map(|_| char::from(rng.below(128) as u8))
                            .collect(),
                    ),
                };
                let _ = dec.push(frame);
                assert!(dec.pending() <= 2);
            }
        }
    }
}
