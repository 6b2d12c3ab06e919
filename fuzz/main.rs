//! Fuzzing of the parsers fed from the network or the SD card, on stable Rust (see
//! fuzz/README.md for why this harness and not cargo-fuzz): each target's corpus
//! (fuzz/corpus/<target>/) is mutated for a time budget and every input is fed to the parser;
//! a panic fails the run and leaves the input in fuzz/artifacts/<target>/, an input that takes
//! longer than `HANG` is reported as a hang and fails the run too.
//!
//!   cargo test --release --test fuzz                    # short run: FUZZ_SECONDS=2 per target
//!   FUZZ_SECONDS=300 cargo test --release --test fuzz   # `make fuzz`
//!   FUZZ_SEED=123 FUZZ_TARGET=sdp cargo test --release --test fuzz   # one target, reproducible
//!   FUZZ_REPLAY=fuzz/artifacts/sdp/crash-… cargo test --release --test fuzz   # replay one input

use peercam::signal::peerjs::dataconn::{Decoder, Frame, Limits, Serialization};
use peercam::signal::peerjs::server::{Hello, Server, Settings};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One input taking longer than this is a hang (inputs are at most `MAX_LEN` bytes; generous,
/// since the 2-core test machine is often loaded: the slowest inputs take ~100 ms there).
const HANG: Duration = Duration::from_secs(2);
const MAX_LEN: usize = 64 * 1024;

struct Target {
    name: &'static str,
    /// Tokens the mutator splices in (the grammar's words): a dumb mutator rarely finds them.
    dict: &'static [&'static [u8]],
    run: fn(&[u8]),
}

fn sdp(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = peercam::rtc::offer::inspect(&text);
    let _ = peercam::rtc::offer::video_as_recvonly(&text);
}

fn control(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (_id, r) = peercam::rtc::control::parse(&text);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = peercam::rtc::control::from_body::<peercam::rtc::control::Apply>(v.clone());
        let _ = peercam::rtc::control::from_body::<peercam::rtc::control::TrackEnabled>(v);
    }
    drop(r);
}

fn peerjs_server(data: &[u8]) {
    // One connected peer sends each line as a WebSocket text frame; another peer is its target.
    let mut s = Server::new(Settings::default());
    let now = Instant::now();
    let _ = s.connect(now, 1, Hello { id: Some("alice"), token: Some("t"), key: Some("peerjs"), key_is_token: false });
    let _ = s.connect(now, 2, Hello { id: Some("bob"), token: Some("t"), key: Some("peerjs"), key_is_token: false });
    for line in data.split(|b| *b == b'\n') {
        let _ = s.message(now, 1, &String::from_utf8_lossy(line));
    }
    let _ = s.binary(now, 1);
    let _ = s.tick(now + Duration::from_secs(120));
}

fn binarypack(data: &[u8]) {
    if let Ok(v) = peercam::signal::peerjs::binarypack::unpack(data) {
        // What unpacks packs again and converts to JSON.
        let _ = v.to_json();
        let _ = peercam::signal::peerjs::binarypack::pack(&v);
    }
}

fn peerjs_data(data: &[u8]) {
    // Byte 0: text/binary frames; byte 1: serialization; the rest: frames separated by 0xFE 0xFF.
    let (Some(&kind), Some(&ser)) = (data.first(), data.get(1)) else { return };
    let serialization = [Serialization::Json, Serialization::Raw, Serialization::Binary, Serialization::BinaryUtf8][ser as usize % 4];
    let limits = Limits { max_message_bytes: 16 * 1024, max_partial: 4, ..Limits::default() };
    let mut d = Decoder::with_limits(serialization, limits);
    let now = Instant::now();
    for (i, part) in data[2..].split(|b| *b == 0xFE).enumerate() {
        let frame = if (kind as usize + i) % 2 == 0 {
            Frame::Text(String::from_utf8_lossy(part).into_owned())
        } else {
            Frame::Binary(part.to_vec())
        };
        let _ = d.push_at(frame, now + Duration::from_millis(i as u64));
    }
}

fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = peercam::config::Config::from_toml(&text, Path::new("fuzz.toml")) {
        let _ = c.to_toml();
    }
}

fn h264(data: &[u8]) {
    for nal in peercam::codec::passthrough::nal_units(data) {
        let _ = peercam::codec::passthrough::nal_type(nal);
        let _ = peercam::codec::passthrough::SpsInfo::parse(nal).map(|s| (s.profile_level_id(), s.level(), s.browser_compatible()));
    }
    let mut p = peercam::codec::passthrough::H264Passthrough::new();
    for (i, au) in data.split(|b| *b == 0xFA).enumerate() {
        let _ = p.push(au, i as u64 * 33_333);
    }
}

const TARGETS: &[Target] = &[
    Target { name: "sdp", dict: &[b"\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", b"a=rtpmap:96 H264/90000", b"a=fmtp:96 profile-level-id=42e01f;packetization-mode=1", b"a=candidate:1 1 udp 2122260223 127.0.0.1 9 typ host", b"a=sendrecv", b"a=recvonly", b"a=inactive", b"a=mid:", b"a=group:BUNDLE", b"m=audio 9 UDP/TLS/RTP/SAVPF 111", b"m=application 9 UDP/DTLS/SCTP webrtc-datachannel", b"a=ice-ufrag:", b"a=fingerprint:sha-256 ", b"a=setup:actpass"], run: sdp },
    Target { name: "control", dict: &[b"\"type\":", b"\"apply_constraints\"", b"\"set_track_enabled\"", b"\"talk\"", b"\"chat\"", b"{\"exact\":", b"{\"min\":", b"\"ideal\":", b"1e309", b"-0", b"[]", b"{}", b"null", b"\"\\u0000\"", b"\"v\":1"], run: control },
    Target { name: "peerjs_server", dict: &[b"{\"type\":\"OFFER\",\"dst\":\"bob\",\"payload\":{}}", b"\"HEARTBEAT\"", b"\"LEAVE\"", b"\"CANDIDATE\"", b"\"dst\":\"peercam\"", b"\"dst\":\"alice\"", b"\n", b"\"payload\":null"], run: peerjs_server },
    Target { name: "binarypack", dict: &[b"\xdf\xff\xff\xff\xff", b"\xdd\x00\x00\x00\x10", b"\xd8\x00\x04", b"\xba\x00\x04", b"\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00", b"\x9f", b"\x8f", b"\xd9\xff\xff"], run: binarypack },
    Target { name: "peerjs_data", dict: &[b"\xfe", b"__peerData", b"\x84\xab__peerData\xa1\x01\xa1n\x00\xa5total\x02\xa4data\xb1x", b"{\"__peerData\":1}", b"\xdf\x7f\xff\xff\xff"], run: peerjs_data },
    Target { name: "config", dict: &[b"\n[video]\n", b"\n[http]\n", b"\n[auth]\n", b"width = 1e400\n", b"= { exact = ", b"= { min = ", b"\"\"\"", b"inf", b"nan", b"listen = \"[::]:0\"\n", b"\n[video.constraints]\n", b"[[x]]\n"], run: config },
    Target { name: "h264", dict: &[b"\x00\x00\x00\x01\x67", b"\x00\x00\x01\x68", b"\x00\x00\x00\x01\x65", b"\x00\x00\x01\x41", b"\x00\x00\x00\x01\x09\xf0", b"\xfa", b"\x00\x00\x03", b"\x64\x00\x1f\xac", b"\xff\xff\xff\xff"], run: h264 },
];

/// xorshift64*: deterministic from FUZZ_SEED, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, b'\n', b'"', b'\\', b'{', b'}', b'[', b']', b':', b',', b'=', b' '];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], dict: &[&[u8]]) {
    for _ in 0..1 + rng.below(6) {
        let len = input.len();
        match rng.below(10) {
            0 if len > 0 => { let i = rng.below(len); input[i] ^= 1 << rng.below(8); }
            1 if len > 0 => { let i = rng.below(len); input[i] = INTERESTING[rng.below(INTERESTING.len())]; }
            2 => { let i = rng.below(len + 1); let n = 1 + rng.below(8); for _ in 0..n { input.insert(i, rng.next() as u8); } }
            3 if len > 0 => { let i = rng.below(len); let n = 1 + rng.below((len - i).min(64)); input.drain(i..i + n); }
            4 if len > 0 => { let i = rng.below(len); let n = 1 + rng.below((len - i).min(256)); let chunk = input[i..i + n].to_vec(); let at = rng.below(input.len() + 1); input.splice(at..at, chunk); }
            5 | 6 if !dict.is_empty() => { let w = dict[rng.below(dict.len())]; let at = rng.below(len + 1); input.splice(at..at, w.iter().copied()); }
            7 if !corpus.is_empty() => { let other = &corpus[rng.below(corpus.len())]; if !other.is_empty() { let i = rng.below(other.len()); let n = 1 + rng.below(other.len() - i); let at = rng.below(len + 1); input.splice(at..at, other[i..i + n].iter().copied()); } }
            8 if len > 1 => { let i = rng.below(len); input.truncate(i.max(1)); }
            _ if len > 0 => {
                // An ASCII digit run made huge or negative: numbers are where parsers overflow.
                let i = rng.below(len);
                let w: &[u8] = [b"4294967296".as_slice(), b"-1", b"99999999999999999999", b"0"][rng.below(4)];
                input.splice(i..i, w.iter().copied());
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(MAX_LEN);
}

fn load_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn save_artifact(target: &str, kind: &str, input: &[u8]) -> PathBuf {
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/artifacts").join(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{kind}-{:016x}", h.finish()));
    let _ = std::fs::write(&path, input);
    path
}

/// Runs one input; Err(description) for a panic or a hang.
fn run_one(t: &Target, input: &[u8]) -> Result<Duration, String> {
    let t0 = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| (t.run)(input)));
    let took = t0.elapsed();
    match r {
        Err(e) => {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Err(format!("panic: {msg} -> {}", save_artifact(t.name, "crash", input).display()))
        }
        Ok(()) if took > HANG => Err(format!("hang: {} ms -> {}", took.as_millis(), save_artifact(t.name, "hang", input).display())),
        Ok(()) => Ok(took),
    }
}

#[test]
fn fuzz_parsers() {
    let seconds: f64 = std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    }) | 1;
    let only = std::env::var("FUZZ_TARGET").ok();
    // Panics are caught and reported once per target, not printed for every input.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();

    if let Ok(replay) = std::env::var("FUZZ_REPLAY") {
        let input = std::fs::read(&replay).expect("FUZZ_REPLAY names a readable file");
        let target = Path::new(&replay).parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("");
        let t = TARGETS.iter().find(|t| t.name == target).expect("the file sits in fuzz/artifacts/<target>/");
        let _ = std::panic::take_hook();
        (t.run)(&input);
        return;
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for t in TARGETS.iter().filter(|t| only.as_deref().is_none_or(|o| o == t.name)) {
        let corpus = load_corpus(&root.join(t.name));
        assert!(!corpus.is_empty(), "no corpus in fuzz/corpus/{}", t.name);
        let mut rng = Rng(seed ^ t.name.len() as u64 * 0x9E37_79B9_7F4A_7C15);
        let mut slowest = Duration::ZERO;
        let mut execs = 0u64;
        let mut found: Vec<String> = Vec::new();
        // The seeds themselves first.
        for input in &corpus {
            match run_one(t, input) {
                Ok(d) => slowest = slowest.max(d),
                Err(e) => found.push(e),
            }
            execs += 1;
        }
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < seconds && found.len() < 5 {
            let mut input = corpus[rng.below(corpus.len())].clone();
            mutate(&mut rng, &mut input, &corpus, t.dict);
            match run_one(t, &input) {
                Ok(d) => slowest = slowest.max(d),
                Err(e) => found.push(e),
            }
            execs += 1;
        }
        eprintln!(
            "fuzz {:<14} {:>8} inputs in {:.1} s, slowest {:.1} ms, seed {seed}: {}",
            t.name,
            execs,
            start.elapsed().as_secs_f64(),
            slowest.as_secs_f64() * 1000.0,
            if found.is_empty() { "0 panics, 0 hangs".to_string() } else { format!("{} FOUND", found.len()) }
        );
        failures.extend(found.into_iter().map(|f| format!("{}: {f}", t.name)));
    }
    let _ = std::panic::take_hook();
    assert!(failures.is_empty(), "fuzzing found:\n{}", failures.join("\n"));
}
