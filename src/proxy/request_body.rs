//! Request bodies: read whole up to `server.max_body_bytes` (`413` past it) with at most
//! `server.request_body_timeout_ms` between two reads (`408` past it), or, for a refused request,
//! read and thrown away so the client can finish sending and read its answer.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderMap};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::GatewayError;

/// A refused request's body is still read (and thrown away) up to this much, so the client is not
/// cut off mid-send and can read its answer, as NGINX does; beyond it the connection is simply closed.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How much of a body the gateway reads, and how long it waits for each part of it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: u64,
    /// The longest wait between two reads (`server.request_body_timeout_ms`).
    pub idle: Duration,
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The most memory reserved for a body before its bytes arrive (typical agent PATCHes are a few KiB).
const PREALLOCATE_AT_MOST: u64 = 64 * 1024;

/// Reads the request body whole, refusing it past `limit` whether it declared its length or not.
/// Bodies are small JSON documents bounded by `limit`; holding them lets the gateway refuse an
/// oversized one before anything reaches upstream and name the changed fields in the audit line.
/// `seen` counts the bytes received, refused ones included.
pub async fn read(
    mut incoming: Incoming,
    parts: &Parts,
    limits: BodyLimits,
    seen: &mut u64,
) -> Result<Bytes, GatewayError> {
    let limit = limits.max_bytes;
    if http_body::Body::is_end_stream(&incoming) {
        // No body (nearly every read): no buffer, no clock read.
        return Ok(Bytes::new());
    }
    let declared = content_length(&parts.headers);
    if declared.is_some_and(|len| len > limit) {
        discard(incoming, parts, seen).await;
        return Err(GatewayError::BodyTooLarge { limit });
    }
    // Room for what was declared, up to a bound: a declared length is a promise, not bytes, and a
    // client announcing a large body it never sends must not make the gateway hold that memory.
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(PREALLOCATE_AT_MOST) as usize);
    loop {
        // A client that stops sending mid-body is answered `408` rather than holding the request
        // (and its connection) open; nothing has been forwarded yet.
        let frame = match tokio::time::timeout(limits.idle, incoming.frame()).await {
            Err(_) => return Err(GatewayError::BodyTimeout(limits.idle)),
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(|_| GatewayError::BodyUnreadable)?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        *seen += data.len() as u64;
        if *seen > limit {
            discard(incoming, parts, seen).await;
            return Err(GatewayError::BodyTooLarge { limit });
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// Reads and throws away the rest of a body the gateway refused (`400`, `401`, `403`, `429`,
/// `413`), so the client can finish sending and read its answer. On HTTP/1 a connection closed
/// with request bytes unread is reset by the kernel, and the client usually loses the answer with
/// it; on HTTP/2 the stream is reset instead, which clients such as curl also report as a failure.
/// NGINX discards such bodies too. Bounded by `DRAIN_LIMIT` bytes in all and `DRAIN_TIMEOUT`; past
/// either the connection or stream is simply closed. A client waiting on `Expect: 100-continue`
/// has sent nothing yet and is told by the answer itself not to.
pub async fn discard(mut incoming: Incoming, parts: &Parts, seen: &mut u64) {
    let waits_to_send = *seen == 0
        && parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if http_body::Body::is_end_stream(&incoming)
        || waits_to_send
        || content_length(&parts.headers).is_some_and(|len| len > DRAIN_LIMIT)
    {
        return;
    }
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while *seen <= DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, incoming.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    *seen += data.len() as u64;
                }
            }
            // Ended, broke off, or too slow: nothing more to wait for.
            _ => return,
        }
    }
}
