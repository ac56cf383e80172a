//! What the simulator answers with: JSON bodies, DialNexa's error shape (NestJS's:
//! `statusCode`, `message`, `error`), request bodies read within a bound, and query parameters.

use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};

use super::agents::AgentError;
use super::patch::Invalid;
use crate::error::GatewayError;
use crate::proxy::request_body::{self, BodyLimits};

pub(super) type Reply = Response<Full<Bytes>>;

/// Twice the gateway's default `max_body_bytes`, so the gateway's own 413 is the one people meet.
pub(super) const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

pub(super) fn json(status: StatusCode, body: &impl Serialize) -> Reply {
    // Serializing maps of JSON values and plain structs cannot fail; an empty body would
    // still be answered with the status rather than a panic.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut reply = Response::new(Full::new(Bytes::from(bytes)));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

pub(super) fn ok(body: &impl Serialize) -> Reply {
    json(StatusCode::OK, body)
}

/// DialNexa's error body, its fields in DialNexa's order.
#[derive(Serialize)]
struct ErrorBody {
    #[serde(rename = "statusCode")]
    status_code: u16,
    message: Value,
    error: &'static str,
}

/// DialNexa's error shape; `error` is the status's reason phrase. `message` is a string, or for
/// validation failures an array with one message per field.
pub(super) fn error(status: StatusCode, message: impl Into<Value>) -> Reply {
    let body = ErrorBody {
        status_code: status.as_u16(),
        message: message.into(),
        error: status.canonical_reason().unwrap_or("Unknown"),
    };
    json(status, &body)
}

/// A listing: `{"data": [...], "total": n}`, and `page` / `limit` when it is paged.
#[derive(Serialize)]
pub(super) struct Listing<T> {
    pub data: Vec<T>,
    pub total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

impl<T> Listing<T> {
    pub fn whole(data: Vec<T>) -> Self {
        let total = data.len();
        Self {
            data,
            total,
            page: None,
            limit: None,
        }
    }
}

/// Express's answer for a route that does not exist.
pub(super) fn no_route(method: &hyper::Method, path: &str) -> Reply {
    error(StatusCode::NOT_FOUND, format!("Cannot {method} {path}"))
}

/// Why a request was refused: the one place such a reason becomes DialNexa's answer is
/// `From<Refusal> for Reply` below.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error("Request body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    BadBody(&'static str),
    #[error("Request body not received in time")]
    BodyTimeout,
    /// Fields (or query parameters) that break the rules, one message each.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    NotFound(String),
}

impl From<AgentError> for Refusal {
    fn from(err: AgentError) -> Self {
        match err {
            AgentError::Invalid(invalid) => Self::Invalid(invalid),
            err @ (AgentError::AgentNotFound(_) | AgentError::VersionNotFound { .. }) => {
                Self::NotFound(err.to_string())
            }
        }
    }
}

impl From<Refusal> for Reply {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::TooLarge => error(StatusCode::PAYLOAD_TOO_LARGE, refusal.to_string()),
            Refusal::BadBody(message) => error(StatusCode::BAD_REQUEST, message),
            Refusal::BodyTimeout => error(StatusCode::REQUEST_TIMEOUT, refusal.to_string()),
            Refusal::Invalid(Invalid(problems)) => error(StatusCode::BAD_REQUEST, problems),
            Refusal::NotFound(message) => error(StatusCode::NOT_FOUND, message),
        }
    }
}

/// Reads the request body with the gateway's own reader: refused at once when it declares more
/// than [`MAX_BODY_BYTES`], `413` past it, `408` when it stalls for `idle` between two reads.
pub(super) async fn read_body(
    parts: &Parts,
    body: Incoming,
    idle: Duration,
) -> Result<Bytes, Refusal> {
    let limits = BodyLimits {
        max_bytes: MAX_BODY_BYTES as u64,
        idle,
    };
    let mut seen = 0;
    request_body::read(body, parts, limits, &mut seen)
        .await
        .map_err(|e| match e {
            GatewayError::BodyTooLarge { .. } => Refusal::TooLarge,
            GatewayError::BodyTimeout(_) => Refusal::BodyTimeout,
            _ => Refusal::BadBody("Could not read request body"),
        })
}

/// The `408` written to a client whose request head stalled, in DialNexa's error shape.
pub(super) fn request_timeout(request_id: &str) -> Vec<u8> {
    let body = ErrorBody {
        status_code: StatusCode::REQUEST_TIMEOUT.as_u16(),
        message: Value::from("Request headers not received in time"),
        error: "Request Timeout",
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    crate::server::limited::raw_408(request_id, &body)
}

/// The body as a JSON object.
pub(super) fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, Refusal> {
    // serde_json rejects invalid UTF-8 and nesting deeper than 128, which also bounds `merge`.
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(Refusal::BadBody("Request body must be a JSON object")),
        Err(_) => Err(Refusal::BadBody("Request body is not valid JSON")),
    }
}

/// The first value of query parameter `name`, percent-decoded (`+` is a space, as in forms).
pub(super) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A positive whole-number query parameter (`version_number`, `page`, `limit`): `Ok(None)` when
/// absent, the problem naming it when it is not one.
pub(super) fn positive_param(query: Option<&str>, name: &str) -> Result<Option<u64>, Invalid> {
    match query_param(query, name) {
        None => Ok(None),
        Some(text) => match text.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(Invalid(vec![format!(
                "{name} must be a positive integer number"
            )])),
        },
    }
}
