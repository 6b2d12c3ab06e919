//! Wiring of the recorder (`pipeline::record`): its triggers come from the room's event log
//! (motion and the sound alerts, as every other reader of events sees them), its own events go
//! back to the room (control channels, SSE, MQTT, webhook).

use crate::config::Config;
use crate::pipeline::record::{RecordSettings, Recorder, Trigger};
use crate::pipeline::Pipeline;
use crate::rtc::room::Room;
use std::sync::Arc;

/// `None` when `[record] mode = "off"` or the recorder could not start (logged; the camera
/// works on without it).
pub fn start(config: &Config, pipeline: &Pipeline, room: &Arc<Room>) -> Option<Arc<Recorder>> {
    let dir = config.record.dir(&config.http);
    let size = (config.video.width.get(), config.video.height.get());
    let recorder = match Recorder::start(RecordSettings::from_config(&config.record, dir, size), pipeline.hub.clone()) {
        Ok(Some(r)) => r,
        Ok(None) => {
            log::info!("recording is off ([record] mode = \"off\")");
            return None;
        }
        Err(e) => {
            log::error!("recording could not start: {e}");
            return None;
        }
    };
    if let Some(rx) = recorder.take_events() {
        room.spread_record_events(rx);
    }
    // The event log's live feed: bounded, a reader that lags skips (and the trigger queue is
    // bounded too); a missed end is covered by max_clip_s.
    let mut sub = room.events().subscribe_internal(None);
    let weak = Arc::downgrade(&recorder);
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match sub.live.recv().await {
                Ok(e) => {
                    if !matches!(e.name, "motion" | "noise" | "cry") {
                        continue;
                    }
                    let Some(rec) = weak.upgrade() else { return };
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&e.text) else { continue };
                    if let Some(t) = Trigger::from_event(e.name, &v) {
                        rec.trigger(t);
                    }
                }
                Err(RecvError::Lagged(n)) => log::warn!("recording: missed {n} events"),
                Err(RecvError::Closed) => return,
            }
        }
    });
    Some(recorder)
}
