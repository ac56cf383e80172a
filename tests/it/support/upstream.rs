//! A fake DialNexa on `127.0.0.1:0` that records every request it receives and answers from an
//! in-memory agent store (versions bump on writes), with per-method delays and failures.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;

/// One request as upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// HTTP/1.1 or HTTP/2 (over TLS, as ALPN chose).
    pub version: Version,
    /// Path and query, as sent.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }
}

/// How upstream answers. `reset` drops the connection without an answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
    pub reset: bool,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(body.to_string()),
            delay: Duration::ZERO,
            reset: false,
        }
    }

    pub fn reset() -> Self {
        Self {
            reset: true,
            ..Self::json(200, json!({}))
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

async fn serve_connection<IO>(st: Arc<State>, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(st.clone(), req));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

type Override = Arc<dyn Fn(&Recorded) -> Option<Reply> + Send + Sync>;

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    /// Off for long runs (the soak), where keeping every request would grow memory by itself.
    not_recording: std::sync::atomic::AtomicBool,
    /// Agent versions: a GET answers the version current when the request *arrived*.
    versions: Mutex<HashMap<String, u64>>,
    delays: Mutex<HashMap<Method, Duration>>,
    failures: Mutex<HashMap<Method, Reply>>,
    overrides: Mutex<Option<Override>>,
    /// The next request of a method waits, after its answer was decided, for this to fire.
    holds: Mutex<HashMap<Method, tokio::sync::oneshot::Receiver<()>>>,
}

/// Lets the request [`FakeUpstream::hold_next`] held answer (also when dropped).
pub struct Held(tokio::sync::oneshot::Sender<()>);

impl Held {
    pub fn release(self) {
        let _ = self.0.send(());
    }
}

#[derive(Clone)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl FakeUpstream {
    pub async fn start() -> Self {
        Self::serve(None).await
    }

    /// The same fake over TLS with `tls`, whose ALPN list decides HTTP/2 or HTTP/1.1.
    pub async fn start_tls(tls: rustls::ServerConfig) -> Self {
        Self::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, tls) = (st.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        // A failed handshake (an untrusted certificate) simply ends the connection.
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                serve_connection(st, stream).await;
                            }
                        }
                        None => serve_connection(st, stream).await,
                    }
                });
            }
        });
        Self { addr, state }
    }

    /// `upstream.base_url` for a fake started with [`start_tls`](Self::start_tls), by host name.
    pub fn https_base_url(&self) -> String {
        format!("https://localhost:{}/v1", self.addr.port())
    }

    /// What the gateway's `upstream.base_url` should be.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The recorded request that carried this `X-Request-Id`.
    pub fn request_with_id(&self, request_id: &str) -> Option<Recorded> {
        self.requests().into_iter().find(|r| {
            r.headers
                .get("x-request-id")
                .is_some_and(|v| v == request_id)
        })
    }

    /// Requests with this method whose path (without query) starts with `path_prefix`.
    pub fn count(&self, method: &Method, path_prefix: &str) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == method && r.path().starts_with(path_prefix))
            .count()
    }

    pub fn total(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Stops keeping requests (`requests()`, `count()` and `total()` stay where they are).
    pub fn stop_recording(&self) {
        self.state
            .not_recording
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Delays every answer to `method` (after the answer's content was decided).
    pub fn set_delay(&self, method: Method, delay: Duration) {
        self.state.delays.lock().unwrap().insert(method, delay);
    }

    /// Answers every `method` request with `reply` instead of the agent store.
    pub fn fail(&self, method: Method, reply: Reply) {
        self.state.failures.lock().unwrap().insert(method, reply);
    }

    /// Holds the answer to the next `method` request (decided as it arrives) until the returned
    /// handle is released: the test, not a delay, decides when that answer leaves.
    pub fn hold_next(&self, method: Method) -> Held {
        let (release, held) = tokio::sync::oneshot::channel();
        self.state.holds.lock().unwrap().insert(method, held);
        Held(release)
    }

    pub fn heal(&self) {
        self.state.failures.lock().unwrap().clear();
        self.state.delays.lock().unwrap().clear();
    }

    /// Answers requests for which `f` returns `Some` with that reply.
    pub fn set_override(&self, f: impl Fn(&Recorded) -> Option<Reply> + Send + Sync + 'static) {
        *self.state.overrides.lock().unwrap() = Some(Arc::new(f));
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let rec = Recorded {
        method: parts.method.clone(),
        version: parts.version,
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body,
    };
    if !state
        .not_recording
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        state.requests.lock().unwrap().push(rec.clone());
    }
    let custom = state
        .overrides
        .lock()
        .unwrap()
        .clone()
        .and_then(|f| f(&rec));
    let failure = state.failures.lock().unwrap().get(&rec.method).cloned();
    let mut reply = custom
        .or(failure)
        .unwrap_or_else(|| agent_store(&state, &rec));
    let held = state.holds.lock().unwrap().remove(&rec.method);
    if let Some(held) = held {
        let _ = held.await;
    }
    if let Some(d) = state.delays.lock().unwrap().get(&rec.method) {
        reply.delay = reply.delay.max(*d);
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if reply.reset {
        // Returning an error makes hyper drop the connection without an answer.
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
    }
    let mut resp = Response::new(Full::new(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (k, v) in reply.headers {
        resp.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(&v).unwrap(),
        );
    }
    Ok(resp)
}

/// `/v1/{agents2|agents}/{id}`: GET answers `{"id","version","query"}`; writes bump the version.
/// Anything else answers `{"method","path"}`. The id is percent-decoded, as DialNexa's router
/// decodes its parameters: `a%3Ab` and `a:b` are one agent.
fn agent_store(state: &State, rec: &Recorded) -> Reply {
    let segments: Vec<&str> = rec.path().trim_start_matches('/').split('/').collect();
    let agent = match segments.as_slice() {
        ["v1", "agents2" | "agents", id, ..] if !id.is_empty() => Some(
            percent_encoding::percent_decode_str(id)
                .decode_utf8_lossy()
                .into_owned(),
        ),
        _ => None,
    };
    let Some(agent) = agent else {
        return Reply::json(
            200,
            json!({"method": rec.method.as_str(), "path": rec.path()}),
        )
        .with_header("x-ratelimit-remaining", "998");
    };
    let mut versions = state.versions.lock().unwrap();
    let version = versions.entry(agent.clone()).or_insert(1);
    if rec.method != Method::GET && rec.method != Method::HEAD {
        *version += 1;
    }
    let query = rec.uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    Reply::json(
        200,
        json!({"id": agent, "version": *version, "query": query, "padding": "x".repeat(64)}),
    )
    .with_header("x-ratelimit-remaining", "998")
}
