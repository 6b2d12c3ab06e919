//! peercam: a camera appliance that browsers watch directly over WebRTC.
//!
//! The modules follow the media: `capture` → `codec` → `hub` (fan-out) → `rtc` → `signal` →
//! `http`, with `pipeline` running capture and encode threads, `config` the one TOML file and
//! `service` the process around them. Each layer uses only those before it.

pub mod capture;
pub mod codec;
pub mod config;
pub mod http;
pub mod hub;
pub mod pipeline;
pub mod rtc;
pub mod notify;
pub mod selftest;
pub mod service;
pub mod signal;
