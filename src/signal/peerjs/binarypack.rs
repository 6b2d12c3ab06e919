//! BinaryPack: the serialization PeerJS data connections use by default (`binary`, and
//! `binary-utf8`, which PeerJS 1.5 treats the same).
//!
//! This is a byte-for-byte port of `peerjs-js-binarypack` 2.1.0 (what `peerjs` 1.5.5 depends on),
//! a MessagePack dialect with its own tags: `0xa0..=0xaf`/`0xda`/`0xdb` are *binary* ("raw"),
//! `0xb0..=0xbf`/`0xd8`/`0xd9` are UTF-8 strings, `0xc1` is `undefined`, and there are no
//! extension types. Fixtures produced by the real library live in
//! `tests/fixtures/binarypack/` and are checked by the tests below.
//!
//! Where the JS library is wrong we follow what a JS *receiver* will see, not its packer's bytes:
//! - its packer derives a double's exponent with `Math.log`, which is off by one just below some
//!   powers of two; we write IEEE-754 bits, which its unpacker reads exactly;
//! - its unpacker reads int64 through doubles, so a negative int64 that is not a multiple of
//!   2048 comes back rounded; we send those as doubles (exact up to 2^53) instead;
//! - its float32 unpacker mishandles zero and subnormals; we decode float32 properly (its packer
//!   never writes float32 anyway).
//!
//! Decoding never panics: nesting depth is bounded, and every announced length is checked against
//! the bytes actually left before anything is allocated.

use thiserror::Error;

/// How deep arrays/maps may nest before [`unpack`] gives up (control messages nest 3 levels).
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// 2^63 as a double: the first value an `i64` cannot hold.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
/// 2^64 as a double.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
/// Largest magnitude JS numbers (doubles) hold exactly as integers.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// A BinaryPack value: what a JS `pack()` can produce and `unpack()` can return.
///
/// Numbers are kept canonical, as JS has only one number type: an integral value is `Int` (or
/// `Uint` above `i64::MAX`), `Float` only holds non-integral or non-finite values or integers
/// beyond 64 bits. [`Value::number`] builds one from an `f64`; decoding and [`Value::from_json`]
/// produce only canonical numbers. A hand-built `Float(2.0)` still packs as the integer 2.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null` (JS `undefined` is packed as null too).
    Null,
    /// Tag `0xc1` (and the unassigned tags, as the JS unpacker does); JS never packs it.
    Undefined,
    Bool(bool),
    Int(i64),
    /// Only for values above `i64::MAX`.
    Uint(u64),
    Float(f64),
    Str(String),
    /// An `ArrayBuffer` / typed array on the JS side.
    Bin(Vec<u8>),
    Array(Vec<Value>),
    /// Key/value pairs in wire order. JS maps them to an object, stringifying the keys.
    Map(Vec<(Value, Value)>),
}

/// Why bytes are not a BinaryPack value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnpackError {
    #[error("truncated BinaryPack: {needed} byte(s) needed at offset {offset}, {left} left")]
    Truncated {
        offset: usize,
        needed: u64,
        left: usize,
    },
    #[error("BinaryPack nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("BinaryPack string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: usize },
    #[error("{0} trailing byte(s) after the BinaryPack value")]
    TrailingBytes(usize),
}

/// Why a value cannot be packed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PackError {
    #[error("length {0} exceeds BinaryPack's 32-bit limit")]
    TooLong(usize),
    #[error("value nests deeper than {0} levels")]
    TooDeep(usize),
}

impl Value {
    /// The canonical value of a JS number (see [`Value`]).
    pub fn number(x: f64) -> Value {
        if x.is_finite() && x.fract() == 0.0 {
            if (-TWO_POW_63..TWO_POW_63).contains(&x) {
                return Value::Int(x as i64);
            }
            if (0.0..TWO_POW_64).contains(&x) {
                return Value::Uint(x as u64);
            }
        }
        Value::Float(x)
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value under string key `key` of a map, as JS's `obj[key]` sees it (the last of
    /// duplicate keys wins; non-string keys are compared in their JS string form).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries
                .iter()
                .rev()
                .find(|(k, _)| k.as_str().map_or_else(|| js_key(k) == key, |s| s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The integer, if this is a number with an `i64` value.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            Value::Uint(u) => i64::try_from(u).ok(),
            Value::Float(f) => match Value::number(f) {
                Value::Int(i) => Some(i),
                _ => None,
            },
            _ => None,
        }
    }

    /// Converts JSON, the form the control protocol speaks. Numbers become canonical (`2.0` is
    /// `Int(2)`, as `JSON.parse` makes no difference either).
    pub fn from_json(json: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match json {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Value::Uint(u)
                } else {
                    Value::number(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            J::String(s) => Value::Str(s.clone()),
            J::Array(items) => Value::Array(items.iter().map(Value::from_json).collect()),
            J::Object(map) => Value::Map(
                map.iter()
                    .map(|(k, v)| (Value::Str(k.clone()), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Converts to JSON the way JS would see it after `unpack` then `JSON.stringify`, except
    /// for binary data and big integers:
    /// - `Bin` becomes an array of byte values (`Array.from(new Uint8Array(buf))`), so nothing is
    ///   lost silently (`JSON.stringify` of an ArrayBuffer is `{}`); callers that care about
    ///   binary payloads should match on [`Value::Bin`] before converting;
    /// - 64-bit integers stay exact (JS would round above 2^53);
    /// - `Undefined` map entries are dropped and array elements become `null`, non-finite floats
    ///   become `null`, map keys are stringified as JS does (`1` → `"1"`) and the last duplicate
    ///   key wins.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null | Value::Undefined => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Uint(u) => J::from(*u),
            Value::Float(f) => match Value::number(*f) {
                Value::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
                canonical => canonical.to_json(),
            },
            Value::Str(s) => J::String(s.clone()),
            Value::Bin(bytes) => J::Array(bytes.iter().map(|&b| J::from(b)).collect()),
            Value::Array(items) => J::Array(items.iter().map(Value::to_json).collect()),
            Value::Map(entries) => {
                let mut map = serde_json::Map::new();
                for (k, v) in entries {
                    let key = js_key(k);
                    if matches!(v, Value::Undefined) {
                        map.remove(&key);
                    } else {
                        map.insert(key, v.to_json());
                    }
                }
                J::Object(map)
            }
        }
    }
}

impl From<&serde_json::Value> for Value {
    fn from(json: &serde_json::Value) -> Value {
        Value::from_json(json)
    }
}

impl From<serde_json::Value> for Value {
    fn from(json: serde_json::Value) -> Value {
        Value::from_json(&json)
    }
}

impl From<&Value> for serde_json::Value {
    fn from(value: &Value) -> serde_json::Value {
        value.to_json()
    }
}

/// JS's `String(key)` for a map key (approximate for floats in exponent notation).
fn js_key(key: &Value) -> String {
    match key {
        Value::Null => "null".into(),
        Value::Undefined => "undefined".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Uint(u) => u.to_string(),
        Value::Float(f) => match Value::number(*f) {
            Value::Float(f) if f.is_nan() => "NaN".into(),
            Value::Float(f) if f.is_infinite() => {
                if f > 0.0 {
                    "Infinity".into()
                } else {
                    "-Infinity".into()
                }
            }
            Value::Float(f) => f.to_string(),
            canonical => js_key(&canonical),
        },
        Value::Str(s) => s.clone(),
        Value::Bin(_) => "[object ArrayBuffer]".into(),
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::Null | Value::Undefined => String::new(),
                v => js_key(v),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Map(_) => "[object Object]".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Decodes one complete BinaryPack value (nesting at most [`DEFAULT_MAX_DEPTH`]).
pub fn unpack(bytes: &[u8]) -> Result<Value, UnpackError> {
    unpack_with_depth(bytes, DEFAULT_MAX_DEPTH)
}

/// Decodes one complete BinaryPack value nesting at most `max_depth` arrays/maps.
///
/// Unlike the JS unpacker, which ignores them, trailing bytes are an error: a JS packer never
/// writes any, so they mean a framing bug or garbage.
pub fn unpack_with_depth(bytes: &[u8], max_depth: usize) -> Result<Value, UnpackError> {
    let mut reader = Reader {
        buf: bytes,
        pos: 0,
        max_depth,
    };
    let value = reader.value(0)?;
    match bytes.len() - reader.pos {
        0 => Ok(value),
        n => Err(UnpackError::TrailingBytes(n)),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], UnpackError> {
        let truncated = UnpackError::Truncated {
            offset: self.pos,
            needed: n,
            left: self.left(),
        };
        let n = usize::try_from(n).map_err(|_| truncated.clone())?;
        if n > self.left() {
            return Err(truncated);
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], UnpackError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, UnpackError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, UnpackError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, UnpackError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, UnpackError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Checks that `count` elements of at least `min_size` bytes each can still follow, so a
    /// forged length cannot make us allocate or loop beyond the input.
    fn check_count(&self, count: u64, min_size: u64) -> Result<usize, UnpackError> {
        let needed = count.saturating_mul(min_size);
        if needed > self.left() as u64 {
            return Err(UnpackError::Truncated {
                offset: self.pos,
                needed,
                left: self.left(),
            });
        }
        Ok(count as usize) // <= left, so it fits
    }

    fn bin(&mut self, len: u64) -> Result<Value, UnpackError> {
        Ok(Value::Bin(self.take(len)?.to_vec()))
    }

    fn str(&mut self, len: u64) -> Result<Value, UnpackError> {
        let offset = self.pos;
        let bytes = self.take(len)?;
        // The JS decoder is lenient with malformed UTF-8; a JS packer (TextEncoder) never
        // produces any, so we refuse it rather than guess.
        let s = std::str::from_utf8(bytes).map_err(|_| UnpackError::InvalidUtf8 { offset })?;
        Ok(Value::Str(s.to_owned()))
    }

    fn items(&mut self, count: u64, depth: usize) -> Result<Value, UnpackError> {
        if depth >= self.max_depth {
            return Err(UnpackError::TooDeep(self.max_depth));
        }
        let count = self.check_count(count, 1)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, count: u64, depth: usize) -> Result<Value, UnpackError> {
        if depth >= self.max_depth {
            return Err(UnpackError::TooDeep(self.max_depth));
        }
        let count = self.check_count(count, 2)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let key = self.value(depth + 1)?;
            let value = self.value(depth + 1)?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }

    fn value(&mut self, depth: usize) -> Result<Value, UnpackError> {
        let tag = self.u8()?;
        let low = u64::from(tag & 0x0f);
        Ok(match tag {
            0x00..=0x7f => Value::Int(i64::from(tag)),
            0xe0..=0xff => Value::Int(i64::from(tag as i8)),
            0x80..=0x8f => return self.map(low, depth),
            0x90..=0x9f => return self.items(low, depth),
            0xa0..=0xaf => return self.bin(low),
            0xb0..=0xbf => return self.str(low),
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xca => Value::number(f64::from(f32::from_bits(self.u32()?))),
            0xcb => Value::number(f64::from_bits(self.u64()?)),
            0xcc => Value::Int(i64::from(self.u8()?)),
            0xcd => Value::Int(i64::from(self.u16()?)),
            0xce => Value::Int(i64::from(self.u32()?)),
            0xcf => {
                let u = self.u64()?;
                i64::try_from(u).map_or(Value::Uint(u), Value::Int)
            }
            0xd0 => Value::Int(i64::from(self.u8()? as i8)),
            0xd1 => Value::Int(i64::from(self.u16()? as i16)),
            0xd2 => Value::Int(i64::from(self.u32()? as i32)),
            0xd3 => Value::Int(self.u64()? as i64),
            0xd8 => {
                let len = self.u16()?;
                return self.str(len.into());
            }
            0xd9 => {
                let len = self.u32()?;
                return self.str(len.into());
            }
            0xda => {
                let len = self.u16()?;
                return self.bin(len.into());
            }
            0xdb => {
                let len = self.u32()?;
                return self.bin(len.into());
            }
            0xdc => {
                let len = self.u16()?;
                return self.items(len.into(), depth);
            }
            0xdd => {
                let len = self.u32()?;
                return self.items(len.into(), depth);
            }
            0xde => {
                let len = self.u16()?;
                return self.map(len.into(), depth);
            }
            0xdf => {
                let len = self.u32()?;
                return self.map(len.into(), depth);
            }
            // 0xc1 is `undefined`; the JS unpacker also returns `undefined` for the unassigned
            // tags 0xc4..=0xc9 and 0xd4..=0xd7, reading nothing after the tag.
            0xc1 | 0xc4..=0xc9 | 0xd4..=0xd7 => Value::Undefined,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Encodes a value as the JS packer would (same tags, widths and key order), apart from the
/// JS bugs listed in the module docs. Nesting is limited to [`DEFAULT_MAX_DEPTH`].
pub fn pack(value: &Value) -> Result<Vec<u8>, PackError> {
    let mut out = Vec::new();
    pack_into(value, &mut out, 0)?;
    Ok(out)
}

fn pack_into(value: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), PackError> {
    match value {
        // JS packs `undefined` as null too.
        Value::Null | Value::Undefined => out.push(0xc0),
        Value::Bool(false) => out.push(0xc2),
        Value::Bool(true) => out.push(0xc3),
        Value::Int(i) => pack_int(*i, out),
        Value::Uint(u) => match i64::try_from(*u) {
            Ok(i) => pack_int(i, out),
            Err(_) => {
                out.push(0xcf);
                out.extend_from_slice(&u.to_be_bytes());
            }
        },
        Value::Float(f) => match Value::number(*f) {
            Value::Float(f) => pack_double(f, out),
            canonical => pack_into(&canonical, out, depth)?,
        },
        Value::Str(s) => {
            pack_len(s.len(), [0xb0, 0xd8, 0xd9], out)?;
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bin(bytes) => {
            pack_len(bytes.len(), [0xa0, 0xda, 0xdb], out)?;
            out.extend_from_slice(bytes);
        }
        Value::Array(items) => {
            if depth >= DEFAULT_MAX_DEPTH {
                return Err(PackError::TooDeep(DEFAULT_MAX_DEPTH));
            }
            pack_len(items.len(), [0x90, 0xdc, 0xdd], out)?;
            for item in items {
                pack_into(item, out, depth + 1)?;
            }
        }
        Value::Map(entries) => {
            if depth >= DEFAULT_MAX_DEPTH {
                return Err(PackError::TooDeep(DEFAULT_MAX_DEPTH));
            }
            pack_len(entries.len(), [0x80, 0xde, 0xdf], out)?;
            for (k, v) in entries {
                pack_into(k, out, depth + 1)?;
                pack_into(v, out, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// A length prefix: `tags` are the fix (low nibble = length), 16-bit and 32-bit forms.
fn pack_len(len: usize, tags: [u8; 3], out: &mut Vec<u8>) -> Result<(), PackError> {
    if len <= 0x0f {
        out.push(tags[0] + len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(tags[1]);
        out.extend_from_slice(&len.to_be_bytes());
    } else if let Ok(len) = u32::try_from(len) {
        out.push(tags[2]);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        return Err(PackError::TooLong(len));
    }
    Ok(())
}

/// The JS packer's integer ranges, in its order (it prefers unsigned tags for non-negatives).
fn pack_int(i: i64, out: &mut Vec<u8>) {
    if (-0x20..=0x7f).contains(&i) {
        out.push(i as u8);
    } else if let Ok(u) = u8::try_from(i) {
        out.extend_from_slice(&[0xcc, u]);
    } else if let Ok(s) = i8::try_from(i) {
        out.extend_from_slice(&[0xd0, s as u8]);
    } else if let Ok(u) = u16::try_from(i) {
        out.push(0xcd);
        out.extend_from_slice(&u.to_be_bytes());
    } else if let Ok(s) = i16::try_from(i) {
        out.push(0xd1);
        out.extend_from_slice(&s.to_be_bytes());
    } else if let Ok(u) = u32::try_from(i) {
        out.push(0xce);
        out.extend_from_slice(&u.to_be_bytes());
    } else if let Ok(s) = i32::try_from(i) {
        out.push(0xd2);
        out.extend_from_slice(&s.to_be_bytes());
    } else if i < 0 && i % 2048 != 0 && (i as f64) >= -MAX_SAFE_INTEGER {
        // JS's unpack_int64 computes `uint64 - 2^64` in doubles and would round this value;
        // a double carries it exactly.
        pack_double(i as f64, out);
    } else {
        out.push(0xd3);
        out.extend_from_slice(&i.to_be_bytes());
    }
}

fn pack_double(f: f64, out: &mut Vec<u8>) {
    out.push(0xcb);
    out.extend_from_slice(&f.to_bits().to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// The fixture file written by `tests/fixtures/binarypack/make.mjs` from the real library.
    pub(crate) const FIXTURES: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/binarypack/cases.json"
    ));

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd hex length");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Parses make.mjs's typed description (`{"t": "int", "v": "-5"}` …) into a `Value`.
    pub(crate) fn typed(d: &serde_json::Value) -> Value {
        let v = &d["v"];
        match d["t"].as_str().unwrap() {
            "null" => Value::Null,
            "undefined" => Value::Undefined,
            "bool" => Value::Bool(v.as_bool().unwrap()),
            "int" => {
                let s = v.as_str().unwrap();
                s.parse::<i64>()
                    .map(Value::Int)
                    .unwrap_or_else(|_| Value::Uint(s.parse().unwrap()))
            }
            "float" => Value::Float(v.as_f64().unwrap()),
            "str" => Value::Str(v.as_str().unwrap().to_owned()),
            "bin" => Value::Bin(hex(v.as_str().unwrap())),
            "array" => Value::Array(v.as_array().unwrap().iter().map(typed).collect()),
            "map" => Value::Map(
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|kv| (typed(&kv[0]), typed(&kv[1])))
                    .collect(),
            ),
            t => panic!("unknown fixture type {t}"),
        }
    }

    fn fixtures() -> serde_json::Value {
        serde_json::from_str(FIXTURES).expect("fixture file is JSON")
    }

    #[test]
    fn js_fixtures_decode_and_encode() {
        let fixtures = fixtures();
        let cases = fixtures["cases"].as_array().unwrap();
        assert!(cases.len() > 50, "fixture table looks truncated");
        let mut exact = 0;
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let bytes = hex(case["hex"].as_str().unwrap());
            let expected = typed(&case["value"]);
            let decoded = unpack(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(decoded, expected, "{name}: decoded value");
            if let Some(json) = case.get("json") {
                assert_eq!(&decoded.to_json(), json, "{name}: as JSON");
            }
            let packed = pack(&expected).unwrap();
            if case["encode_exact"].as_bool().unwrap() {
                assert_eq!(
                    packed, bytes,
                    "{name}: encoding differs from peerjs-js-binarypack"
                );
                exact += 1;
            }
            // Whatever the bytes, they must mean the same value.
            assert_eq!(
                unpack(&packed).unwrap(),
                expected,
                "{name}: re-encoding round trip"
            );
        }
        assert!(
            exact >= cases.len() - 6,
            "too few byte-exact cases: {exact}"
        );
    }

    #[test]
    fn control_request_decodes_to_the_json_object() {
        // pack({v: 1, id: 7, type: "get_settings"}) in JS.
        let bytes = hex("83b17601b2696407b474797065bc6765745f73657474696e6773");
        let value = unpack(&bytes).unwrap();
        assert_eq!(
            value.to_json(),
            json!({"v": 1, "id": 7, "type": "get_settings"})
        );
        assert_eq!(
            value.get("type").and_then(Value::as_str),
            Some("get_settings")
        );
        assert_eq!(value.get("id").and_then(Value::as_i64), Some(7));
    }

    #[test]
    fn json_round_trips() {
        let reply = json!({
            "v": 1, "type": "reply", "id": 7, "ok": true,
            "result": {"width": 1280, "fps": 29.97, "name": "Küche 📷", "list": [1, -2, 3.5, null],
                       "big": 1_u64 << 40, "neg": -(1_i64 << 40), "max": u64::MAX, "min": i64::MIN,
                       "empty": {}, "none": []}
        });
        let packed = pack(&Value::from(&reply)).unwrap();
        assert_eq!(unpack(&packed).unwrap().to_json(), reply);
    }

    #[test]
    fn numbers_are_canonical_like_js() {
        assert_eq!(Value::from(json!(2.0)), Value::Int(2));
        assert_eq!(pack(&Value::Float(2.0)).unwrap(), vec![0x02]);
        assert_eq!(pack(&Value::Float(-0.0)).unwrap(), vec![0x00]);
        assert_eq!(pack(&Value::Float(-300.0)).unwrap(), vec![0xd1, 0xfe, 0xd4]);
        // An integral double on the wire decodes as an integer, as JS cannot tell them apart.
        assert_eq!(unpack(&hex("cb4000000000000000")).unwrap(), Value::Int(2));
        assert_eq!(unpack(&hex("ca3fc00000")).unwrap(), Value::Float(1.5));
        assert_eq!(unpack(&hex("ca00000000")).unwrap(), Value::Int(0));
        assert_eq!(Value::Float(1e300).to_json(), json!(1e300));
        assert_eq!(Value::Float(f64::NAN).to_json(), json!(null));
        // Above i64::MAX: uint64; JS reads these (approximately) as numbers.
        assert_eq!(
            pack(&Value::Uint(u64::MAX)).unwrap(),
            hex("cfffffffffffffffff")
        );
        assert_eq!(
            unpack(&hex("cfffffffffffffffff")).unwrap(),
            Value::Uint(u64::MAX)
        );
        assert_eq!(unpack(&hex("cf0000000000000005")).unwrap(), Value::Int(5));
        assert_eq!(Value::number(1e19), Value::Uint(10_000_000_000_000_000_000));
    }

    #[test]
    fn lossy_negative_int64_goes_as_double() {
        // JS's unpack_int64 would read d3ffffffff7fffffff as -2147483648.
        let packed = pack(&Value::Int(-2_147_483_649)).unwrap();
        assert_eq!(packed[0], 0xcb);
        assert_eq!(unpack(&packed).unwrap(), Value::Int(-2_147_483_649));
        // Multiples of 2048 are exact in JS, so they keep the JS packer's int64 bytes.
        assert_eq!(
            pack(&Value::Int(-(1 << 32))).unwrap(),
            hex("d3ffffffff00000000")
        );
        assert_eq!(
            pack(&Value::Int(i64::MIN)).unwrap(),
            hex("d38000000000000000")
        );
        // Beyond 2^53 a double cannot help either: int64 it is.
        assert_eq!(pack(&Value::Int(i64::MIN + 1)).unwrap()[0], 0xd3);
    }

    #[test]
    fn binary_and_odd_keys_to_json() {
        let v = Value::Map(vec![
            (Value::Str("data".into()), Value::Bin(vec![0, 255])),
            (Value::Int(1), Value::Bool(true)),
            (Value::Str("gone".into()), Value::Undefined),
            (Value::Str("dup".into()), Value::Int(1)),
            (Value::Str("dup".into()), Value::Int(2)),
            (
                Value::Array(vec![Value::Int(1), Value::Null, Value::Str("a".into())]),
                Value::Null,
            ),
            (Value::Float(0.5), Value::Array(vec![Value::Undefined])),
        ]);
        assert_eq!(
            v.to_json(),
            json!({"data": [0, 255], "1": true, "dup": 2, "1,,a": null, "0.5": [null]})
        );
        assert_eq!(v.get("1"), Some(&Value::Bool(true)));
        assert_eq!(v.get("dup"), Some(&Value::Int(2)));
        let packed = pack(&v).unwrap();
        assert_eq!(
            unpack(&packed).unwrap(),
            Value::Map(match v {
                Value::Map(mut e) => {
                    e[2].1 = Value::Null; // undefined is packed as null, as JS does
                    e[6].1 = Value::Array(vec![Value::Null]);
                    e
                }
                _ => unreachable!(),
            })
        );
    }

    #[test]
    fn thirty_two_bit_lengths() {
        let n = 70_000;
        let cases = [
            (Value::Str("s".repeat(n)), 0xd9),
            (Value::Bin(vec![1; n]), 0xdb),
            (Value::Array(vec![Value::Null; n]), 0xdd),
            (
                Value::Map(
                    (0..n as i64)
                        .map(|i| (Value::Int(i), Value::Null))
                        .collect(),
                ),
                0xdf,
            ),
        ];
        for (value, tag) in cases {
            let packed = pack(&value).unwrap();
            assert_eq!(&packed[..5], &[tag, 0x00, 0x01, 0x11, 0x70]);
            assert_eq!(unpack(&packed).unwrap(), value);
        }
    }

    #[test]
    fn undefined_and_unassigned_tags() {
        for tag in [0xc1, 0xc4, 0xc9, 0xd4, 0xd7] {
            assert_eq!(unpack(&[tag]).unwrap(), Value::Undefined, "tag {tag:#x}");
        }
        assert_eq!(pack(&Value::Undefined).unwrap(), vec![0xc0]);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(unpack(&[]), Err(UnpackError::Truncated { .. })));
        assert!(matches!(
            unpack(&[0xcd, 0x01]),
            Err(UnpackError::Truncated { .. })
        ));
        assert_eq!(unpack(&[0x01, 0x02]), Err(UnpackError::TrailingBytes(1)));
        assert_eq!(
            unpack(&[0xb2, 0xc3, 0x28]),
            Err(UnpackError::InvalidUtf8 { offset: 1 })
        );
        // A 4-billion-element array in 5 bytes: refused before allocating anything.
        assert!(matches!(
            unpack(&hex("ddffffffff")),
            Err(UnpackError::Truncated { .. })
        ));
        assert!(matches!(
            unpack(&hex("dfffffffff00")),
            Err(UnpackError::Truncated { .. })
        ));
        assert!(matches!(
            unpack(&hex("dbffffffff00")),
            Err(UnpackError::Truncated { .. })
        ));
        // Deep nesting: [[[[…]]]] 10 000 levels.
        let deep = vec![0x91; 10_000];
        assert_eq!(unpack(&deep), Err(UnpackError::TooDeep(DEFAULT_MAX_DEPTH)));
        let mut ok = vec![0x91; DEFAULT_MAX_DEPTH - 1];
        ok.push(0x90);
        assert!(unpack(&ok).is_ok());
        let mut deep_value = Value::Null;
        for _ in 0..=DEFAULT_MAX_DEPTH {
            deep_value = Value::Array(vec![deep_value]);
        }
        assert_eq!(
            pack(&deep_value),
            Err(PackError::TooDeep(DEFAULT_MAX_DEPTH))
        );
    }

    /// A tiny deterministic PRNG (xorshift64*), so the fuzz test needs no dependency and a
    /// failure reproduces.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn without_undefined(v: Value) -> Value {
        match v {
            Value::Undefined => Value::Null,
            Value::Array(items) => Value::Array(items.into_iter().map(without_undefined).collect()),
            Value::Map(entries) => Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (without_undefined(k), without_undefined(v)))
                    .collect(),
            ),
            v => v,
        }
    }

    fn has_nan(v: &Value) -> bool {
        match v {
            Value::Float(f) => f.is_nan(),
            Value::Array(items) => items.iter().any(has_nan),
            Value::Map(entries) => entries.iter().any(|(k, v)| has_nan(k) || has_nan(v)),
            _ => false,
        }
    }

    #[test]
    fn fuzz_random_and_truncated_input_never_panics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Random bytes, biased towards container and length tags.
        for _ in 0..20_000 {
            let len = rng.below(64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.below(4) {
                    0 => [0x91, 0xdc, 0xdd, 0xde, 0xdf, 0xd9, 0xdb, 0x81][rng.below(8) as usize],
                    _ => rng.next() as u8,
                })
                .collect();
            if let Ok(v) = unpack(&bytes) {
                // Whatever decodes must re-encode and decode to the same value (undefined is
                // packed as null, as in JS; NaN is never equal to itself).
                let v = without_undefined(v);
                if !has_nan(&v) {
                    assert_eq!(unpack(&pack(&v).unwrap()).unwrap(), v, "{bytes:02x?}");
                }
            }
        }
        // Every prefix and every single-byte corruption of every fixture.
        let fixtures = fixtures();
        for case in fixtures["cases"].as_array().unwrap() {
            let bytes = hex(case["hex"].as_str().unwrap());
            for cut in 0..bytes.len() {
                assert!(
                    unpack(&bytes[..cut]).is_err(),
                    "{}: prefix {cut} decoded",
                    case["name"]
                );
            }
            for _ in 0..32 {
                let mut corrupt = bytes.clone();
                let i = rng.below(corrupt.len() as u64) as usize;
                corrupt[i] = rng.next() as u8;
                let _ = unpack(&corrupt);
            }
        }
    }
}
