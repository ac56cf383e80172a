//! The audit record: the contract's fields for one request, and the two values derived from the
//! request itself (the method's name, the dotted paths a write's body changes, never its values).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::admission::LimitedBy;
use crate::cache::CacheOutcome;
use crate::error::Decision;
use crate::metrics::RouteClass;
use crate::telemetry::TraceId;

/// One audit line, written by `audit::line::write`. Field names and meanings are the contract's;
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
    /// What refused a `rate_limited` request; `None` on every other line.
    pub limited_by: Option<LimitedBy>,
    /// The W3C trace id: the client's `traceparent`'s, the request's span's, or one made here.
    pub trace_id: TraceId,
    pub changed_fields: Option<Vec<String>>,
    pub invalidated: u64,
    /// When the request arrived, for `latency_ms`; not written.
    pub started: Instant,
    /// For the answer-time histogram; not written. `None` for lines that are not API requests
    /// (admin actions, requests the HTTP layer refused), which the histogram does not count.
    pub class: Option<RouteClass>,
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
            limited_by: None,
            trace_id: crate::telemetry::span::random_trace_id(),
            changed_fields: None,
            invalidated: 0,
            started,
            class: None,
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

#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::*;

    /// JSON whose keys (`[a-z]{1,6}`) share no text with its values: strings start `VAL_`, numbers
    /// are above 10^6, so any value text in a returned path is a leak.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            "VAL_[A-Za-z0-9 .\"\\\\\n\u{e9}]{0,8}".prop_map(Value::String),
            (1_000_001u64..u64::MAX).prop_map(Value::from),
            (1.0e6f64..1.0e300).prop_map(|f| Value::from(f + 0.5)),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    /// Every string and number in `value`, as text.
    fn value_texts(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) => out.push(s.clone()),
            Value::Number(n) => out.push(n.to_string()),
            Value::Array(items) => items.iter().for_each(|v| value_texts(v, out)),
            Value::Object(map) => map.values().for_each(|v| value_texts(v, out)),
            Value::Null | Value::Bool(_) => {}
        }
    }

    /// The leaves `changed_fields` promises: non-empty objects are walked, all else is a leaf.
    fn leaf_count(map: &Map<String, Value>) -> usize {
        map.values()
            .map(|v| match v {
                Value::Object(inner) if !inner.is_empty() => leaf_count(inner),
                _ => 1,
            })
            .sum()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn changed_fields_never_name_a_value(body in json()) {
            let bytes = serde_json::to_vec(&body).unwrap();
            let fields = changed_fields(&bytes);
            prop_assert!(fields.is_some(), "JSON read as not JSON: {body}");
            let fields = fields.unwrap();
            let mut texts = Vec::new();
            value_texts(&body, &mut texts);
            for field in &fields {
                prop_assert!(!field.contains("VAL_"), "{field:?} holds a value of {body}");
                for text in &texts {
                    prop_assert!(!field.contains(text.as_str()), "{field:?} holds {text:?}");
                }
                prop_assert!(!field.chars().any(|c| c.is_ascii_digit()), "{field:?} holds a number");
            }
        }

        #[test]
        fn changed_fields_are_the_paths_of_the_leaves(body in json()) {
            let fields = changed_fields(&serde_json::to_vec(&body).unwrap()).unwrap();
            let Value::Object(map) = &body else {
                prop_assert!(fields.is_empty(), "{body} is no object but gave {fields:?}");
                return Ok(());
            };
            prop_assert_eq!(fields.len(), leaf_count(map), "{}: {:?}", body, fields);
            for field in &fields {
                let mut at = &body;
                for key in field.split('.') {
                    let next = at.get(key);
                    prop_assert!(next.is_some(), "{field:?} is not a path of {body}");
                    at = next.unwrap();
                }
                prop_assert!(
                    !matches!(at, Value::Object(m) if !m.is_empty()),
                    "{field:?} names a non-empty object of {body}"
                );
            }
        }

        #[test]
        fn changed_fields_take_any_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let fields = changed_fields(&body);
            let blank = body.iter().all(u8::is_ascii_whitespace);
            if serde_json::from_slice::<Value>(&body).is_err() && !blank {
                prop_assert_eq!(fields, None);
            } else {
                prop_assert!(fields.is_some(), "JSON or blank read as not JSON: {:?}", body);
            }
        }

        /// Text near JSON (most of it not quite): the fields of what parses, `None` for the rest.
        #[test]
        fn changed_fields_take_any_text(body in "[{}\\[\\]\":,a-z0-9 .\\\\-]{0,64}") {
            let fields = changed_fields(body.as_bytes());
            match serde_json::from_str::<Value>(&body) {
                Ok(Value::Object(map)) => {
                    prop_assert!(fields.is_some(), "{:?} read as not JSON", body);
                    let fields = fields.unwrap();
                    prop_assert_eq!(fields.len(), leaf_count(&map), "{:?}: {:?}", body, fields);
                }
                Ok(_) => prop_assert_eq!(fields, Some(Vec::new()), "{:?} is no object", body),
                Err(_) if body.bytes().all(|b| b.is_ascii_whitespace()) => {
                    prop_assert_eq!(fields, Some(Vec::new()), "{:?} is blank", body)
                }
                Err(_) => prop_assert_eq!(fields, None, "{:?} is not JSON", body),
            }
        }
    }
}
