//! The audit record: the contract's fields for one request, and the two values derived from the
//! request itself (the method's name, the dotted paths a write's body changes, never its values).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::cache::CacheOutcome;
use crate::error::Decision;

/// One audit line, written by [`super::line::write`]. Field names and meanings are the contract's;
/// values never include keys, tokens or body values.
#[derive(Debug)]
pub struct AuditRecord {
    pub ts: SystemTime,
    pub request_id: String,
    pub team: Option<Arc<str>>,
    pub key_id: Option<String>,
    pub org: Option<Arc<str>>,
    pub client_ip: IpAddr,
    pub method: Cow<'static, str>,
    pub path: String,
    pub agent_id: Option<String>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub cache: Option<CacheOutcome>,
    pub decision: Decision,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub changed_fields: Option<Vec<String>>,
    pub invalidated: u64,
    /// When the request arrived, for `latency_ms`; not written.
    pub started: Instant,
}

impl AuditRecord {
    pub fn new(request_id: String, client_ip: IpAddr, method: &http::Method, path: &str) -> Self {
        Self::at(
            SystemTime::now(),
            Instant::now(),
            request_id,
            client_ip,
            method,
            path,
        )
    }

    fn at(
        ts: SystemTime,
        started: Instant,
        request_id: String,
        client_ip: IpAddr,
        method: &http::Method,
        path: &str,
    ) -> Self {
        Self {
            ts,
            request_id,
            team: None,
            key_id: None,
            org: None,
            client_ip,
            method: crate::http::method_name(method),
            path: path.to_owned(),
            agent_id: None,
            status: 0,
            upstream_status: None,
            cache: None,
            decision: Decision::Allowed,
            latency_ms: 0.0,
            upstream_latency_ms: None,
            bytes_in: 0,
            bytes_out: 0,
            changed_fields: None,
            invalidated: 0,
            started,
        }
    }
}

impl AuditRecord {
    /// A request the HTTP layer refused before it could be parsed (a raw control byte, a head too
    /// large): it has no method or path to name, so both are empty.
    pub fn unparsed(request_id: String, client_ip: IpAddr, status: u16) -> Self {
        let mut record = Self::new(request_id, client_ip, &http::Method::GET, "");
        record.method = Cow::Borrowed("");
        record.status = status;
        record.decision = Decision::BadRequest;
        record
    }
}

/// Milliseconds with microsecond precision: cache hits take well under a millisecond.
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// The dotted paths of a JSON body's leaves, never their values. Arrays are leaves named by their
/// path. `None` when the body is not JSON.
pub fn changed_fields(body: &[u8]) -> Option<Vec<String>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(Vec::new());
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut out = Vec::new();
    if let serde_json::Value::Object(map) = &value {
        collect_leaves(map, &mut String::new(), &mut out);
    }
    Some(out)
}

fn collect_leaves(
    map: &serde_json::Map<String, serde_json::Value>,
    prefix: &mut String,
    out: &mut Vec<String>,
) {
    for (key, value) in map {
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(key);
        match value {
            serde_json::Value::Object(inner) if !inner.is_empty() => {
                collect_leaves(inner, prefix, out)
            }
            _ => out.push(prefix.clone()),
        }
        prefix.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_leaves_become_dotted_paths_without_values() {
        let f = changed_fields(br#"{"llm":{"settings":{"temperature":0.3,"model":"x"}},"functions":[{"a":1}],"name":"sk-secret"}"#).unwrap();
        assert_eq!(
            f,
            vec![
                "functions",
                "llm.settings.model",
                "llm.settings.temperature",
                "name"
            ]
        );
        assert!(!f.iter().any(|p| p.contains("secret")));
    }

    #[test]
    fn empty_objects_are_leaves_and_non_json_is_none() {
        assert_eq!(changed_fields(br#"{"a":{}}"#).unwrap(), vec!["a"]);
        assert_eq!(changed_fields(b"").unwrap(), Vec::<String>::new());
        assert_eq!(changed_fields(b"[1,2]").unwrap(), Vec::<String>::new());
        assert_eq!(changed_fields(b"not json {"), None);
    }
}
