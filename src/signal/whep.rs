//! WHEP (draft-ietf-wish-whep; RFC 9725 is its sibling WHIP): `POST /whep` with an SDP offer →
//! `201 Created`, `Location` of the session, SDP answer with the device's candidates (gathering
//! complete, so clients need not trickle); `DELETE <Location>` ends it; `PATCH` (trickle) answers
//! 405 as the draft allows. The contract: docs/interfaces.md, "WHEP".

use super::Owner;
use crate::rtc::session::{SessionError, Sessions};
use std::sync::Arc;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

pub const SDP: &str = "application/sdp";

/// What the WHEP handlers need, built by the layer that mounts them (axum `FromRef`).
#[derive(Clone)]
pub struct WhepState {
    pub sessions: Arc<Sessions>,
    pub max_body_bytes: usize,
    /// Called when a session was opened by a request that carried an [`Owner`], so that the
    /// session ends with that login (the mounting layer knows how logins and sessions meet).
    pub on_owned: Arc<dyn Fn(&str, Owner) + Send + Sync>,
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    m.push('\n');
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], m).into_response()
}

/// `POST /whep?sync=0` is a peercam extension: video and audio are not lip-synced (lower video
/// latency; see `rtc::session::Purpose::Watch`). Plain WHEP clients get synced streams.
pub async fn post(
    State(app): State<WhepState>,
    owner: Option<Extension<Owner>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let lip_sync = !query.as_deref().unwrap_or("").split('&').any(|kv| kv == "sync=0" || kv == "sync=off");
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case(SDP) {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("WHEP offers must be sent as Content-Type: {SDP} (got {content_type:?})"),
        );
    }
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the offer is larger than the limit of {} bytes", app.max_body_bytes)
            } else {
                format!("cannot read the offer: {rejection}")
            };
            return text(status, msg);
        }
    };
    let Ok(offer) = String::from_utf8(body.to_vec()) else {
        return text(StatusCode::BAD_REQUEST, "the offer is not valid SDP: not UTF-8 text");
    };
    match app.sessions.answer_whep(offer, lip_sync).await {
        Ok((id, answer)) => {
            // A token minted for a browser login: the session ends when that login does.
            if let Some(Extension(owner)) = owner {
                (app.on_owned)(&id, owner);
            }
            let location = format!("/whep/{id}");
            (
                StatusCode::CREATED,
                [
                    (header::CONTENT_TYPE, SDP.to_string()),
                    (header::LOCATION, location),
                ],
                answer,
            )
                .into_response()
        }
        Err(e) => {
            let status = match &e {
                SessionError::Offer(crate::rtc::offer::OfferError::Malformed(_)) => StatusCode::BAD_REQUEST,
                SessionError::Offer(_) => StatusCode::NOT_ACCEPTABLE,
                SessionError::Negotiation(_) => StatusCode::BAD_REQUEST,
                SessionError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
                SessionError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            log::info!("WHEP offer refused ({status}): {e}");
            text(status, e.to_string())
        }
    }
}

pub async fn delete(State(app): State<WhepState>, Path(id): Path<String>) -> Response {
    if app.sessions.remove(&id, "WHEP DELETE").await {
        StatusCode::OK.into_response()
    } else {
        text(StatusCode::NOT_FOUND, format!("no WHEP session {id:?} (it may have ended already)"))
    }
}

pub async fn patch() -> Response {
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "trickle ICE is not needed: the answer already carries all of the device's candidates",
    );
    r.headers_mut().insert(header::ALLOW, "DELETE".parse().expect("static header"));
    r
}
