//! MQTT: the events to a broker, with Home Assistant MQTT discovery so the camera shows up
//! without YAML — a sound level sensor, noise, cry and motion binary sensors, a viewers sensor — and
//! availability through a retained last will, so Home Assistant shows the camera offline when
//! the service dies (the broker publishes the will when the connection drops without a
//! DISCONNECT) and online again once it is back.
//!
//! Topics (`base` = `<topic_prefix>/<node_id>`, default `peercam/peercam`):
//! - `base/availability`: `online` / `offline` (retained; the will is `offline`)
//! - `base/sound_level`: the voice-band level in dBFS, at most every `level_interval_s`
//! - `base/noise`, `base/cry`, `base/motion`: `ON` / `OFF` (retained)
//! - `base/night`: `ON` at night (IR on, greyscale), `OFF` in the day (retained)
//! - `base/viewers`: the number of viewers (retained)
//! - `base/event`: every event but `sound_level` as the control channel's JSON object
//! - `<discovery_prefix>/{sensor,binary_sensor}/<node_id>/<object>/config`: discovery (retained)
//!
//! What to send for an event is pure ([`messages_for`], [`discovery`]); the task around
//! `rumqttc` connects, reconnects with backoff, and never blocks on a slow broker: publishes go
//! through `try_publish` into the client's bounded queue and are dropped when it is full.

use super::Backoff;
use crate::config::MqttConfig;
use crate::rtc::events::EventLog;
use crate::rtc::room::Room;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests queued in the MQTT client before publishes are dropped.
const CLIENT_QUEUE: usize = 64;
const KEEP_ALIVE: Duration = Duration::from_secs(15);
const MAX_BACKOFF_S: u64 = 30;

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

fn msg(topic: String, payload: impl Into<String>, retain: bool) -> Msg {
    Msg { topic, payload: payload.into(), retain }
}

#[derive(Debug, Clone)]
pub struct Topics {
    pub base: String,
    pub discovery_prefix: String,
    pub node_id: String,
}

impl Topics {
    pub fn new(c: &MqttConfig) -> Self {
        let prefix = c.topic_prefix.trim_end_matches('/');
        Self { base: format!("{prefix}/{}", c.node_id), discovery_prefix: c.discovery_prefix.trim_end_matches('/').to_string(), node_id: c.node_id.clone() }
    }

    pub fn availability(&self) -> String {
        format!("{}/availability", self.base)
    }

    pub fn state(&self, object: &str) -> String {
        format!("{}/{object}", self.base)
    }
}

/// Home Assistant discovery configs (retained), one per entity. Empty without a prefix.
pub fn discovery(t: &Topics, version: &str) -> Vec<Msg> {
    if t.discovery_prefix.is_empty() {
        return Vec::new();
    }
    let device = json!({
        "identifiers": [format!("peercam_{}", t.node_id)],
        "name": format!("peercam {}", t.node_id),
        "manufacturer": "peercam",
        "model": "peercam camera",
        "sw_version": version,
    });
    let common = |object: &str, name: &str| {
        json!({
            "name": name,
            "unique_id": format!("peercam_{}_{object}", t.node_id),
            "object_id": format!("peercam_{}_{object}", t.node_id),
            "state_topic": t.state(object),
            "availability_topic": t.availability(),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
        })
    };
    let with = |mut v: Value, extra: Value| {
        if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
            a.extend(b);
        }
        v
    };
    let entities = [
        ("sensor", "sound_level", with(common("sound_level", "Sound level"), json!({
            "unit_of_measurement": "dB", "device_class": "sound_pressure", "state_class": "measurement",
            "icon": "mdi:waveform", "expire_after": 120
        }))),
        ("binary_sensor", "noise", with(common("noise", "Noise"), json!({"device_class": "sound", "payload_on": "ON", "payload_off": "OFF"}))),
        ("binary_sensor", "cry", with(common("cry", "Crying"), json!({"device_class": "sound", "payload_on": "ON", "payload_off": "OFF", "icon": "mdi:emoticon-cry-outline"}))),
        ("sensor", "viewers", with(common("viewers", "Viewers"), json!({"state_class": "measurement", "icon": "mdi:eye"}))),
        ("binary_sensor", "motion", with(common("motion", "Motion"), json!({"device_class": "motion", "payload_on": "ON", "payload_off": "OFF"}))),
        ("binary_sensor", "night", with(common("night", "Night vision"), json!({"payload_on": "ON", "payload_off": "OFF", "icon": "mdi:weather-night"}))),
    ];
    entities
        .into_iter()
        .map(|(component, object, config)| msg(format!("{}/{component}/{}/{object}/config", t.discovery_prefix, t.node_id), config.to_string(), true))
        .collect()
}

/// The retained states as they are now (sent on every connect).
pub fn initial_states(t: &Topics, noise: bool, cry: bool, motion: bool, viewers: usize) -> Vec<Msg> {
    let on = |b: bool| if b { "ON" } else { "OFF" };
    vec![
        msg(t.state("noise"), on(noise), true),
        msg(t.state("cry"), on(cry), true),
        msg(t.state("motion"), on(motion), true),
        msg(t.state("viewers"), viewers.to_string(), true),
    ]
}

/// What one event becomes on MQTT. `level_due`: whether a `sound_level` may go out now.
pub fn messages_for(t: &Topics, name: &str, event: &Value, level_due: bool) -> Vec<Msg> {
    let mut out = Vec::new();
    match name {
        "sound_level" => {
            if level_due && let Some(db) = event.get("level_db").and_then(Value::as_f64) {
                out.push(msg(t.state("sound_level"), format!("{db:.1}"), false));
            }
            return out;
        }
        "noise" | "cry" | "motion" => {
            let on = event.get("state").and_then(Value::as_str) == Some("start");
            out.push(msg(t.state(name), if on { "ON" } else { "OFF" }, true));
        }
        "night" => {
            let on = event.get("state").and_then(Value::as_str) == Some("night");
            out.push(msg(t.state("night"), if on { "ON" } else { "OFF" }, true));
        }
        "viewer_joined" | "viewer_left" => {
            if let Some(n) = event.get("viewers").and_then(Value::as_u64) {
                out.push(msg(t.state("viewers"), n.to_string(), true));
            }
        }
        _ => {}
    }
    out.push(msg(t.state("event"), event.to_string(), false));
    out
}

/// Starts the MQTT task when `[mqtt] host` is set. The returned handle says goodbye
/// (`offline`, then DISCONNECT) at shutdown.
pub fn start(config: &MqttConfig, room: Arc<Room>) -> Option<Mqtt> {
    if config.host.is_empty() {
        return None;
    }
    let topics = Topics::new(config);
    let client_id = if config.client_id.is_empty() { format!("peercam-{}", config.node_id) } else { config.client_id.clone() };
    let mut opts = MqttOptions::new(client_id, config.host.clone(), config.port);
    opts.set_keep_alive(KEEP_ALIVE);
    opts.set_clean_session(true);
    opts.set_last_will(LastWill::new(topics.availability(), "offline", QoS::AtLeastOnce, true));
    if !config.username.is_empty() {
        opts.set_credentials(config.username.clone(), config.password.0.clone());
    }
    let (client, eventloop) = AsyncClient::new(opts, CLIENT_QUEUE);
    // The password is in `opts` only; what is logged names the broker and the user.
    log::info!(
        "mqtt: broker {}:{}{}, topics {}/…",
        config.host,
        config.port,
        if config.username.is_empty() { String::new() } else { format!(" as {}", config.username) },
        topics.base
    );
    let level_every = Duration::from_secs(config.level_interval_s.get() as u64);
    tokio::spawn(run(client.clone(), eventloop, topics.clone(), room, level_every));
    Some(Mqtt { client, topics })
}

pub struct Mqtt {
    client: AsyncClient,
    topics: Topics,
}

impl Mqtt {
    /// A clean stop: `offline` (retained) and DISCONNECT, within `within`.
    pub async fn stop(&self, within: Duration) {
        let goodbye = async {
            let _ = self.client.publish(self.topics.availability(), QoS::AtLeastOnce, true, "offline").await;
            let _ = self.client.disconnect().await;
        };
        let _ = tokio::time::timeout(within, goodbye).await;
        // Give the event loop a moment to write them out.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn publish(client: &AsyncClient, m: Msg) {
    if let Err(e) = client.try_publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload) {
        log::debug!("mqtt: not queued ({e}); dropped");
    }
}

async fn run(client: AsyncClient, mut eventloop: rumqttc::EventLoop, topics: Topics, room: Arc<Room>, level_every: Duration) {
    let log: Arc<EventLog> = room.events().clone();
    let mut sub = log.subscribe_internal(None);
    let mut backoff = Backoff::new(MAX_BACKOFF_S);
    let mut last_level: Option<Instant> = None;
    let mut connected = false;
    loop {
        tokio::select! {
            polled = eventloop.poll() => match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    log::info!("mqtt: connected");
                    connected = true;
                    backoff.reset();
                    let sound = room.sound();
                    let on = |k: &str| sound["state"][k].as_bool().unwrap_or(false);
                    let mut hello = discovery(&topics, env!("CARGO_PKG_VERSION"));
                    hello.push(msg(topics.availability(), "online", true));
                    let motion = room.motion()["state"]["motion"].as_bool().unwrap_or(false);
                    hello.extend(initial_states(&topics, on("noise"), on("cry"), motion, room.viewers()));
                    let night = room.night()["state"] == "night";
                    hello.push(msg(topics.state("night"), if night { "ON" } else { "OFF" }, true));
                    for m in hello {
                        publish(&client, m);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        log::warn!("mqtt: connection lost: {e}");
                    } else {
                        log::debug!("mqtt: cannot connect: {e}");
                    }
                    connected = false;
                    let wait = backoff.next();
                    tokio::time::sleep(wait).await;
                }
            },
            e = sub.live.recv() => match e {
                Ok(e) => {
                    if !connected {
                        continue; // the states are sent fresh on connect
                    }
                    let due = last_level.is_none_or(|t| t.elapsed() >= level_every);
                    let Ok(value) = serde_json::from_str::<Value>(&e.text) else { continue };
                    let msgs = messages_for(&topics, e.name, &value, due);
                    if e.name == "sound_level" && !msgs.is_empty() {
                        last_level = Some(Instant::now());
                    }
                    for m in msgs {
                        publish(&client, m);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => log::debug!("mqtt: skipped {n} events"),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new(&MqttConfig { node_id: "nursery".into(), ..MqttConfig::default() })
    }

    #[test]
    fn discovery_names_every_entity_with_availability() {
        let d = discovery(&topics(), "1.2.3");
        let names: Vec<&str> = d.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(names, vec![
            "homeassistant/sensor/nursery/sound_level/config",
            "homeassistant/binary_sensor/nursery/noise/config",
            "homeassistant/binary_sensor/nursery/cry/config",
            "homeassistant/sensor/nursery/viewers/config",
            "homeassistant/binary_sensor/nursery/motion/config",
            "homeassistant/binary_sensor/nursery/night/config",
        ]);
        assert!(d.iter().all(|m| m.retain));
        let cry: Value = serde_json::from_str(&d[2].payload).unwrap();
        assert_eq!(cry["state_topic"], "peercam/nursery/cry");
        assert_eq!(cry["availability_topic"], "peercam/nursery/availability");
        assert_eq!(cry["unique_id"], "peercam_nursery_cry");
        assert_eq!(cry["device"]["identifiers"][0], "peercam_nursery");
        assert!(discovery(&Topics { discovery_prefix: String::new(), ..topics() }, "1").is_empty());
    }

    #[test]
    fn events_become_states_and_the_level_is_throttled() {
        let t = topics();
        let start = json!({"v": 1, "type": "event", "event": "cry", "state": "start", "start": 1, "peak_db": -9.0});
        let m = messages_for(&t, "cry", &start, false);
        assert_eq!(m[0], msg("peercam/nursery/cry".into(), "ON", true));
        assert_eq!(m[1].topic, "peercam/nursery/event");
        let end = json!({"event": "noise", "state": "end"});
        assert_eq!(messages_for(&t, "noise", &end, false)[0].payload, "OFF");
        let level = json!({"event": "sound_level", "level_db": -41.26});
        assert_eq!(messages_for(&t, "sound_level", &level, true), vec![msg("peercam/nursery/sound_level".into(), "-41.3", false)]);
        assert!(messages_for(&t, "sound_level", &level, false).is_empty());
        let night = json!({"event": "night", "state": "night", "reason": "dark", "mode": "auto", "luma": 20});
        assert_eq!(messages_for(&t, "night", &night, false)[0], msg("peercam/nursery/night".into(), "ON", true));
        let day = json!({"event": "night", "state": "day", "reason": "mode", "mode": "off", "luma": null});
        assert_eq!(messages_for(&t, "night", &day, false)[0].payload, "OFF");
        let joined = json!({"event": "viewer_joined", "viewer": "v2", "viewers": 2});
        assert_eq!(messages_for(&t, "viewer_joined", &joined, false)[0], msg("peercam/nursery/viewers".into(), "2", true));
        let motion = json!({"event": "motion", "state": "start", "start": 5, "area_percent": 3.1});
        assert_eq!(messages_for(&t, "motion", &motion, false)[0], msg("peercam/nursery/motion".into(), "ON", true));
        let d = discovery(&t, "0");
        let m = d.iter().find(|m| m.topic == "homeassistant/binary_sensor/nursery/motion/config").expect("motion discovered");
        let cfg: Value = serde_json::from_str(&m.payload).unwrap();
        assert_eq!(cfg["device_class"], "motion");
        assert_eq!(cfg["state_topic"], "peercam/nursery/motion");
    }
}
