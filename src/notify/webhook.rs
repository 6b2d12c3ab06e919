//! The webhook: each configured event (`noise`, `cry` by default) is `POST`ed as the control
//! channel's JSON object to `[webhook] url` — for ntfy, Gotify or a home server. A worker task
//! with a bounded queue ([`QUEUE`]; when full the newest is dropped and logged), a timeout per
//! try, a few retries with doubling waits; it never blocks the room or the pipeline.
//!
//! HTTP/1.1 with hyper's client (already in the tree under axum); `http://` only (config says so).

use super::Backoff;
use crate::config::WebhookConfig;
use crate::rtc::events::EventLog;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub const QUEUE: usize = 32;

/// `http://host[:port]/path` split for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// `host[:port]` as the `Host:` header.
    pub authority: String,
    pub path: String,
}

/// Parses what the config accepted (`config::WebhookUrl`).
pub fn parse(url: &str) -> Option<Target> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, after) = h.split_once(']')?;
        (h.to_string(), after.strip_prefix(':').map(str::parse).transpose().ok()?.unwrap_or(80))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (authority.to_string(), 80),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(Target { host, port, authority: authority.to_string(), path: path.to_string() })
}

/// Starts the worker when `[webhook] url` is set.
pub fn start(config: &WebhookConfig, log: Arc<EventLog>) {
    let Some(target) = parse(&config.url.0) else { return };
    let wanted = config.events.clone();
    let timeout = Duration::from_secs(config.timeout_s.get() as u64);
    let retries = config.retries.get();
    log::info!("webhook: POST {} to http://{}{}", wanted.join(", "), target.authority, target.path);
    let (tx, mut rx) = mpsc::channel::<(u64, &'static str, Arc<str>)>(QUEUE);
    // The reader: from the log into the bounded queue, never waiting on the worker.
    tokio::spawn(async move {
        let mut sub = log.subscribe_internal(None);
        loop {
            match sub.live.recv().await {
                Ok(e) if wanted.iter().any(|w| w == e.name) => {
                    if tx.try_send((e.id, e.name, e.text.clone())).is_err() {
                        log::warn!("webhook: queue full; event {} ({}) not sent", e.id, e.name);
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => log::warn!("webhook: skipped {n} events"),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    tokio::spawn(async move {
        while let Some((id, name, body)) = rx.recv().await {
            let mut backoff = Backoff::new(30);
            for attempt in 0..=retries {
                match tokio::time::timeout(timeout, post(&target, id, &body)).await {
                    Ok(Ok(status)) if (200..300).contains(&status) => break,
                    Ok(Ok(status)) => log::warn!("webhook: event {id} ({name}): HTTP {status} (try {})", attempt + 1),
                    Ok(Err(e)) => log::warn!("webhook: event {id} ({name}): {e} (try {})", attempt + 1),
                    Err(_) => log::warn!("webhook: event {id} ({name}): no answer within {timeout:?} (try {})", attempt + 1),
                }
                if attempt < retries {
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    });
}

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// One `POST` with the event's id in `X-Peercam-Event-Id` (a receiver can drop the duplicates
/// of a retry); returns the status.
async fn post(t: &Target, id: u64, body: &Arc<str>) -> Result<u16, PostError> {
    let stream = tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await.map_err(PostError::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = Request::post(&t.path)
        .header(hyper::header::HOST, &t.authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("peercam/", env!("CARGO_PKG_VERSION")))
        .header("x-peercam-event-id", id.to_string())
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))?;
    let response = sender.send_request(req).await;
    conn.abort();
    Ok(response?.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            parse("http://127.0.0.1:8099/hook?x=1"),
            Some(Target { host: "127.0.0.1".into(), port: 8099, authority: "127.0.0.1:8099".into(), path: "/hook?x=1".into() })
        );
        assert_eq!(parse("http://ntfy.lan").map(|t| (t.port, t.path)), Some((80, "/".into())));
        assert_eq!(parse("http://[::1]:9/x").map(|t| (t.host, t.port)), Some(("::1".into(), 9)));
        assert_eq!(parse("http://h:notaport/"), None);
        assert_eq!(parse(""), None);
    }
}
