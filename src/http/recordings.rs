//! `/api/recordings`: the recorder's clips — list, download (with `Range`), delete. Behind the
//! same `guard` as every route; a name is looked up only if it is one the recorder makes
//! (`pipeline::record::valid_name`: a timestamp and a trigger, no separators), so no path can
//! leave the recordings folder.

use super::{json_error, AppState};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Read size of a download (what one request holds in memory at a time).
const CHUNK: usize = 64 * 1024;

fn off() -> Response {
    json_error(StatusCode::NOT_FOUND, "recording_off", "recording is off ([record] mode = \"off\")".into())
}

/// `GET /api/recordings`: `{mode, dir, recording, clips: [{name, start, duration_ms, bytes, trigger, recording}], stats}`.
pub async fn list(State(app): State<AppState>) -> Response {
    let Some(rec) = app.recorder.clone() else { return off() };
    let r = rec.clone();
    let clips = match tokio::task::spawn_blocking(move || r.list()).await {
        Ok(c) => c,
        Err(_) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "listing failed".into()),
    };
    let s = &rec.stats;
    Json(json!({
        "mode": rec.settings.mode,
        "recording": s.recording.load(Ordering::Relaxed),
        "clips": clips,
        "stats": {
            "clips_saved": s.clips_saved.load(Ordering::Relaxed),
            "fragments_written": s.fragments_written.load(Ordering::Relaxed),
            "fragments_dropped": s.fragments_dropped.load(Ordering::Relaxed),
            "errors": s.errors.load(Ordering::Relaxed),
            "units_skipped": s.units_skipped.load(Ordering::Relaxed),
        },
    }))
    .into_response()
}

fn bad_name() -> Response {
    json_error(StatusCode::BAD_REQUEST, "bad_name", "not a recording name (as GET /api/recordings lists them)".into())
}

/// A single `bytes=a-b` / `a-` / `-n` range within `len`. `Err`: unsatisfiable. `Ok(None)`: none
/// asked (or a form not handled, e.g. several ranges: the whole file is sent, as RFC 9110 allows).
fn parse_range(h: Option<&HeaderValue>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = h.and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let Some(spec) = v.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else { return Ok(None) };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b => (a, b.min(len.saturating_sub(1))),
        (Ok(a), Err(_)) if b.is_empty() => (a, len.saturating_sub(1)),
        (Err(_), Ok(n)) if a.is_empty() && n > 0 => (len.saturating_sub(n), len.saturating_sub(1)),
        _ => return Ok(None),
    };
    if len == 0 || range.0 >= len {
        return Err(());
    }
    Ok(Some(range))
}

/// `GET /api/recordings/<name>`: the file as `video/mp4`, `Range` honoured (a `<video>` seeks
/// with it). Streamed in chunks; the one being written can be fetched too (up to its last
/// whole fragment at the time of the request).
pub async fn download(State(app): State<AppState>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(rec) = app.recorder.clone() else { return off() };
    if !crate::pipeline::record::valid_name(&name) {
        return bad_name();
    }
    let Some(path) = rec.path_of(&name) else {
        return json_error(StatusCode::NOT_FOUND, "not_found", format!("no recording {name}"));
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return json_error(StatusCode::NOT_FOUND, "not_found", format!("no recording {name}")),
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let (status, start, end) = match parse_range(headers.get(header::RANGE), len) {
        Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        Ok(None) => (StatusCode::OK, 0, len),
        Err(()) => {
            return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{len}"))]).into_response();
        }
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "read_failed", "cannot read the recording".into());
    }
    let stream = futures_util::stream::unfold((file, end - start), |(mut f, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), (f, left - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `DELETE /api/recordings/<name>`: 204; 404 if there is none; 409 for the one being written.
pub async fn delete(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    use crate::pipeline::record::DeleteError;
    let Some(rec) = app.recorder.clone() else { return off() };
    if !crate::pipeline::record::valid_name(&name) {
        return bad_name();
    }
    let n = name.clone();
    match tokio::task::spawn_blocking(move || rec.delete(&n)).await {
        Ok(Ok(())) => {
            log::info!("recording {name} deleted through the API");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Err(DeleteError::NotFound)) => json_error(StatusCode::NOT_FOUND, "not_found", format!("no recording {name}")),
        Ok(Err(e @ DeleteError::Recording)) => json_error(StatusCode::CONFLICT, "recording", e.to_string()),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "delete_failed", e.to_string()),
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "delete failed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;
    use axum::http::HeaderValue;

    #[test]
    fn ranges() {
        let r = |s: &str, len| parse_range(Some(&HeaderValue::from_str(s).unwrap()), len);
        assert_eq!(r("bytes=0-99", 1000), Ok(Some((0, 99))));
        assert_eq!(r("bytes=900-", 1000), Ok(Some((900, 999))));
        assert_eq!(r("bytes=-100", 1000), Ok(Some((900, 999))));
        assert_eq!(r("bytes=990-5000", 1000), Ok(Some((990, 999))));
        assert_eq!(r("bytes=1000-", 1000), Err(()));
        assert_eq!(r("bytes=5-1", 1000), Ok(None));
        assert_eq!(r("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(r("items=0-1", 1000), Ok(None));
        assert_eq!(r("bytes=-0", 1000), Ok(None));
        assert_eq!(parse_range(None, 10), Ok(None));
    }
}
