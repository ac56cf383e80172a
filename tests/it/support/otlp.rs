//! An OTLP/HTTP collector on `127.0.0.1:0`: it decodes every `ExportTraceServiceRequest` with the
//! `opentelemetry-proto` types and keeps the raw bytes too (for searching every exported byte).
//! Or one that reads requests and never answers, or an address where nothing listens.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

use super::wait_until;

/// OpenTelemetry's span kinds, as exported.
pub const INTERNAL: i32 = 1;
pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;
/// The error status code.
pub const ERROR: i32 = 2;

/// One exported span, ids in lowercase hex (empty for no parent).
#[derive(Debug, Clone)]
pub struct ExportedSpan {
    pub service: String,
    pub name: String,
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: HashMap<String, serde_json::Value>,
    /// `(trace id, span id)` of each link.
    pub links: Vec<(String, String)>,
    pub status_code: i32,
}

impl ExportedSpan {
    pub fn attr(&self, key: &str) -> Option<&serde_json::Value> {
        self.attributes.get(key)
    }

    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(|v| v.as_str())
    }
}

#[derive(Default)]
struct Received {
    bodies: Mutex<Vec<Bytes>>,
    spans: Mutex<Vec<ExportedSpan>>,
    requests: AtomicUsize,
}

pub struct OtlpCollector {
    pub addr: SocketAddr,
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpCollector {
    /// A collector that takes every export (`200`, an empty `ExportTraceServiceResponse`).
    pub async fn start() -> Self {
        Self::serve(true).await
    }

    /// A collector that reads each export and never answers it.
    pub async fn never_answering() -> Self {
        Self::serve(false).await
    }

    async fn serve(answers: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Received::default());
        let rx = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let rx = rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| take(rx.clone(), req, answers));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    /// `tracing.otlp_endpoint` for this collector.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Export requests received (answered or not).
    pub fn requests(&self) -> usize {
        self.received.requests.load(Ordering::SeqCst)
    }

    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.received.spans.lock().unwrap().clone()
    }

    /// Every byte of every export body received.
    pub fn raw(&self) -> Vec<u8> {
        self.received.bodies.lock().unwrap().concat()
    }

    /// The spans of `trace_id`, once there are at least `n` of them.
    pub async fn trace(&self, trace_id: &str, n: usize) -> Vec<ExportedSpan> {
        let of_trace = || -> Vec<ExportedSpan> {
            self.spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect()
        };
        wait_until(&format!("{n} spans of trace {trace_id}"), async || {
            of_trace().len() >= n
        })
        .await;
        of_trace()
    }
}

/// An OTLP endpoint where nothing listens: bound for a moment to learn a free port, then closed.
pub fn absent_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

async fn take(
    rx: Arc<Received>,
    req: Request<Incoming>,
    answers: bool,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path_ok = req.uri().path() == "/v1/traces";
    let protobuf = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/x-protobuf");
    let body = req.into_body().collect().await?.to_bytes();
    rx.requests.fetch_add(1, Ordering::SeqCst);
    if !answers {
        std::future::pending::<()>().await;
    }
    assert!(
        path_ok && protobuf,
        "not an OTLP/HTTP protobuf trace export"
    );
    let export = ExportTraceServiceRequest::decode(body.clone()).expect("an OTLP trace export");
    let mut spans = Vec::new();
    for resource_spans in export.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ExportedSpan {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .into_iter()
                        .map(|kv| (kv.key, json(kv.value.and_then(|v| v.value))))
                        .collect(),
                    links: span
                        .links
                        .into_iter()
                        .map(|l| (hex::encode(l.trace_id), hex::encode(l.span_id)))
                        .collect(),
                    status_code: span.status.map_or(0, |s| s.code),
                });
            }
        }
    }
    rx.bodies.lock().unwrap().push(body);
    rx.spans.lock().unwrap().extend(spans);
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(resp)
}

fn json(value: Option<Value>) -> serde_json::Value {
    match value {
        Some(Value::StringValue(s)) => s.into(),
        Some(Value::IntValue(i)) => i.into(),
        Some(Value::BoolValue(b)) => b.into(),
        Some(Value::DoubleValue(d)) => d.into(),
        Some(other) => format!("{other:?}").into(),
        None => serde_json::Value::Null,
    }
}
