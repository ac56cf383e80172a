//! A simulated DialNexa API: an in-memory HTTP server that `demo` and tests put behind the gateway.
//!
//! Routes live under `/v1` because the gateway's upstream base URL is `http://<addr>/v1`.
//! `agents2` and `agents` are two names for one store, as in the real API.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Twice the gateway's default `max_body_bytes`, so the gateway's own 413 is the one people meet.
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// The organisation quota advertised in `X-RateLimit-*`; only shown, never enforced.
const RATE_LIMIT: u64 = 1000;

type Agent = Map<String, Value>;
type Reply = Response<Full<Bytes>>;

/// The simulated organisation: its key, its agents and its quota counter.
/// Built only by [`Simulator::spawn`]; shared between the server task and the [`SimHandle`].
pub struct Simulator {
    /// Never logged nor echoed.
    org_key: String,
    /// Keyed by agent id; a `BTreeMap` so listings come out in a stable order.
    agents: Mutex<BTreeMap<String, Agent>>,
    /// Authenticated requests seen so far, for `X-RateLimit-Remaining`.
    requests: AtomicU64,
}

/// A running simulator. Dropping it stops the server and closes its open connections.
pub struct SimHandle {
    pub addr: SocketAddr,
    sim: Arc<Simulator>,
    server: JoinHandle<()>,
}

impl SimHandle {
    /// How many agents the store holds right now.
    pub fn agent_count(&self) -> usize {
        self.sim.agents().len()
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.server.abort();
    }
}

// === impl Simulator ===

impl Simulator {
    /// Serves on `listener` until the returned handle is dropped or the task is aborted.
    /// Requests must carry `Authorization: Bearer <org_key>`; otherwise 401 in DialNexa's error shape.
    /// Must be called inside a Tokio runtime.
    pub fn spawn(listener: TcpListener, org_key: String) -> SimHandle {
        // A bound socket always has an address; if the OS says otherwise the accept loop
        // will fail too and log it, so an unspecified address is only a placeholder.
        let addr = listener.local_addr().unwrap_or_else(|err| {
            tracing::error!(%err, "simulator listener has no local address");
            SocketAddr::from(([0, 0, 0, 0], 0))
        });
        let sim = Arc::new(Simulator {
            org_key,
            agents: Mutex::new(seed_agents()),
            requests: AtomicU64::new(0),
        });
        let server = tokio::spawn(accept_loop(listener, Arc::clone(&sim)));
        SimHandle { addr, sim, server }
    }

    /// The store's lock. Nothing panics while holding it, so a poisoned lock still holds sound data.
    fn agents(&self) -> MutexGuard<'_, BTreeMap<String, Agent>> {
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(value) = req.headers().get(AUTHORIZATION) else {
            return false;
        };
        let Some((scheme, token)) = value.as_bytes().split_first_chunk::<7>() else {
            return false;
        };
        // An empty org key must not let `Bearer ` through.
        scheme.eq_ignore_ascii_case(b"bearer ")
            && !self.org_key.is_empty()
            && token == self.org_key.as_bytes()
    }

    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let request_id = req.headers().get("x-request-id").cloned();
        let mut reply = if self.authorized(&req) {
            let mut reply = self.route(req).await;
            // Cycles 999..0 like a quota window that refills, so the header always moves.
            let used = self.requests.fetch_add(1, Ordering::Relaxed) % RATE_LIMIT;
            let headers = reply.headers_mut();
            headers.insert("x-ratelimit-limit", HeaderValue::from(RATE_LIMIT));
            headers.insert(
                "x-ratelimit-remaining",
                HeaderValue::from(RATE_LIMIT - 1 - used),
            );
            reply
        } else {
            error(StatusCode::UNAUTHORIZED, "Invalid or missing API key")
        };
        if let Some(id) = request_id {
            reply.headers_mut().insert("x-request-id", id);
        }
        reply
    }

    async fn route(&self, req: Request<Incoming>) -> Reply {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let Some(route) = Route::parse(&path) else {
            return error(StatusCode::NOT_FOUND, &format!("Cannot {method} {path}"));
        };
        match (route, method) {
            (Route::Agents, Method::GET | Method::HEAD) => self.list(),
            (Route::Agents, Method::POST) => match read_object(req).await {
                Ok(body) => self.create(body),
                Err(reply) => reply,
            },
            (Route::Agent(id), Method::GET | Method::HEAD) => self.get(id),
            (Route::Agent(id), Method::PATCH) => match read_object(req).await {
                Ok(body) => self.patch(id, body),
                Err(reply) => reply,
            },
            (Route::Agent(id), Method::DELETE) => self.delete(id),
            (Route::Calls, Method::GET | Method::HEAD) => ok(json!({"data": [], "total": 0})),
            (route, _) => {
                let mut reply = error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
                reply.headers_mut().insert(ALLOW, route.allow());
                reply
            }
        }
    }

    fn list(&self) -> Reply {
        let agents = self.agents();
        let data: Vec<Value> = agents.values().cloned().map(Value::Object).collect();
        ok(json!({"data": data, "total": agents.len()}))
    }

    fn get(&self, id: &str) -> Reply {
        match self.agents().get(id) {
            Some(agent) => ok(Value::Object(agent.clone())),
            None => not_found(id),
        }
    }

    fn create(&self, mut agent: Agent) -> Reply {
        let mut agents = self.agents();
        let id = match agent.remove("id") {
            None | Some(Value::Null) => fresh_id(&agents),
            Some(Value::String(id)) if is_agent_id(&id) => id,
            Some(_) => return bad_request("id must match [A-Za-z0-9_-]+"),
        };
        if agents.contains_key(&id) {
            return error(StatusCode::CONFLICT, &format!("Agent {id} already exists"));
        }
        let now = timestamp();
        agent.insert("id".into(), Value::String(id.clone()));
        agent.insert("version_number".into(), json!(1));
        agent.insert("created_at".into(), Value::String(now.clone()));
        agent.insert("updated_at".into(), Value::String(now));
        agents.insert(id, agent.clone());
        reply(StatusCode::CREATED, Value::Object(agent))
    }

    fn patch(&self, id: &str, mut patch: Agent) -> Reply {
        // The server owns these; a client can neither set nor (with `null`) remove them.
        for key in ["id", "version_number", "created_at", "updated_at"] {
            patch.remove(key);
        }
        let mut agents = self.agents();
        let Some(agent) = agents.get_mut(id) else {
            return not_found(id);
        };
        merge(agent, patch);
        let version = agent
            .get("version_number")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        agent.insert("version_number".into(), json!(version.saturating_add(1)));
        agent.insert("updated_at".into(), Value::String(timestamp()));
        ok(Value::Object(agent.clone()))
    }

    fn delete(&self, id: &str) -> Reply {
        match self.agents().remove(id) {
            Some(_) => ok(json!({"id": id, "deleted": true})),
            None => not_found(id),
        }
    }
}

/// Accepts until aborted. Connections live in a `JoinSet` owned by this task, so aborting
/// the task (dropping the handle) also closes every open connection.
async fn accept_loop(listener: TcpListener, sim: Arc<Simulator>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(%err, "simulator accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let sim = Arc::clone(&sim);
        connections.spawn(async move {
            let svc = service_fn(move |req| {
                let sim = Arc::clone(&sim);
                async move { Ok::<_, Infallible>(sim.handle(req).await) }
            });
            let conn = auto::Builder::new(TokioExecutor::new());
            if let Err(err) = conn.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%err, "simulator connection ended with an error");
            }
        });
    }
}

// === routing ===

#[derive(Clone, Copy)]
enum Route<'a> {
    Agents,
    Agent(&'a str),
    Calls,
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Option<Self> {
        let rest = path.strip_prefix("/v1/")?;
        let mut segments = rest.split('/');
        let route = match (segments.next(), segments.next()) {
            (Some("agents" | "agents2"), None) => Route::Agents,
            (Some("agents" | "agents2"), Some(id)) if is_agent_id(id) => Route::Agent(id),
            (Some("calls"), None) => Route::Calls,
            _ => return None,
        };
        // Sub-resources of an agent are not simulated.
        segments.next().is_none().then_some(route)
    }

    fn allow(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Route::Agents => "GET, HEAD, POST",
            Route::Agent(_) => "GET, HEAD, PATCH, DELETE",
            Route::Calls => "GET, HEAD",
        })
    }
}

/// Ids are echoed in messages and used as keys, so only plain ones are accepted.
fn is_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

// === bodies and replies ===

/// Reads the request body (bounded) as a JSON object, or the error reply to send instead.
async fn read_object(req: Request<Incoming>) -> Result<Agent, Reply> {
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await;
    let bytes = match body {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            let message = format!("Request body is larger than {MAX_BODY_BYTES} bytes");
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, &message));
        }
        Err(_) => return Err(bad_request("Could not read request body")),
    };
    // serde_json rejects invalid UTF-8 and nesting deeper than 128, which also bounds `merge`'s recursion.
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(bad_request("Request body must be a JSON object")),
        Err(_) => Err(bad_request("Request body is not valid JSON")),
    }
}

/// JSON merge patch (RFC 7396): objects merge key by key, `null` removes, anything else replaces.
fn merge(target: &mut Agent, patch: Agent) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(&key);
            }
            Value::Object(inner) => {
                let slot = target.entry(key).or_insert(Value::Null);
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(existing) = slot {
                    merge(existing, inner);
                }
            }
            other => {
                target.insert(key, other);
            }
        }
    }
}

fn ok(body: Value) -> Reply {
    reply(StatusCode::OK, body)
}

fn bad_request(message: &str) -> Reply {
    error(StatusCode::BAD_REQUEST, message)
}

fn not_found(id: &str) -> Reply {
    error(StatusCode::NOT_FOUND, &format!("Agent {id} not found"))
}

/// DialNexa's error shape; `error` is the status's canonical reason phrase.
fn error(status: StatusCode, message: &str) -> Reply {
    let reason = status.canonical_reason().unwrap_or("Unknown");
    reply(
        status,
        json!({"statusCode": status.as_u16(), "message": message, "error": reason}),
    )
}

fn reply(status: StatusCode, body: Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn fresh_id(agents: &BTreeMap<String, Agent>) -> String {
    loop {
        // 48 random bits = 12 hex chars; the loop only guards the astronomically rare collision.
        let id = format!("agt_{:012x}", rand::random::<u64>() >> 16);
        if !agents.contains_key(&id) {
            return id;
        }
    }
}

// === seed data ===

fn seed_agents() -> BTreeMap<String, Agent> {
    let seeds = json!([
        {
            "id": "agt_demo_support",
            "name": "Acme Support Line",
            "voice": {"provider": "elevenlabs", "voice_id": "21m00Tcm4TlvDq8ikWAM", "speed": 1.0},
            "llm": {"provider": "openai", "model": "gpt-4o-mini",
                    "settings": {"temperature": 0.4, "max_tokens": 400}},
            "prompt": "You are the first-line support agent for Acme's customers. Greet the caller, \
                ask for their account number and confirm it back digit by digit. Listen to the problem \
                before proposing anything, keep each answer under three sentences, and never read out \
                payment details. If the caller asks for a refund over 100 euros, or is upset after two \
                attempts to help, offer a transfer to a human and use the transfer function. Close every \
                call by summarising what was agreed and asking whether there is anything else.",
            "functions": [
                {"name": "lookup_account", "description": "Fetch an account by number",
                 "parameters": {"type": "object", "required": ["account_number"],
                                "properties": {"account_number": {"type": "string"}}}},
                {"name": "transfer_to_human", "description": "Warm-transfer the call to support",
                 "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}}}
            ],
            "language": "en-US"
        },
        {
            "id": "agt_demo_sales",
            "name": "Acme Outbound Sales",
            "voice": {"provider": "cartesia", "voice_id": "a0e99841-438c-4a64-b679-ae501e7d6091",
                      "speed": 1.1},
            "llm": {"provider": "anthropic", "model": "claude-3-5-haiku",
                    "settings": {"temperature": 0.7, "max_tokens": 300}},
            "prompt": "You call leads who asked for a demo of Acme's scheduling product. Introduce \
                yourself and the company in one sentence, confirm the lead still wants a demo, and find \
                a 30-minute slot in the next five working days that suits them. Respect a no at once \
                and thank them for their time. Do not discuss pricing beyond saying that plans start at \
                the published rate; offer to send the price list by email instead. Book the slot with \
                the booking function and read the date and time back in the lead's time zone.",
            "functions": [
                {"name": "find_slots", "description": "List free demo slots between two dates",
                 "parameters": {"type": "object",
                                "properties": {"from": {"type": "string"}, "to": {"type": "string"}}}},
                {"name": "book_demo", "description": "Book a demo slot for the lead",
                 "parameters": {"type": "object", "required": ["slot_id"],
                                "properties": {"slot_id": {"type": "string"}, "email": {"type": "string"}}}}
            ],
            "language": "en-GB"
        }
    ]);
    let now = timestamp();
    let Value::Array(seeds) = seeds else {
        return BTreeMap::new();
    };
    let mut agents = BTreeMap::new();
    for seed in seeds {
        let Value::Object(mut agent) = seed else {
            continue;
        };
        let id = agent
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        agent.insert("version_number".into(), json!(1));
        agent.insert("created_at".into(), Value::String(now.clone()));
        agent.insert("updated_at".into(), Value::String(now.clone()));
        agents.insert(id, agent);
    }
    agents
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::HeaderMap;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;

    const KEY: &str = "org-secret";

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Value,
    }

    async fn start() -> SimHandle {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Simulator::spawn(listener, KEY.to_owned())
    }

    async fn send(req: hyper::http::request::Builder, body: Bytes) -> Answer {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let res = client
            .request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(parts.headers[CONTENT_TYPE], "application/json");
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).unwrap(),
        }
    }

    fn request(sim: &SimHandle, method: Method, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", sim.addr))
            .header(AUTHORIZATION, format!("Bearer {KEY}"))
    }

    async fn call(sim: &SimHandle, method: Method, path: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        send(request(sim, method, path), body).await
    }

    #[tokio::test]
    async fn missing_or_wrong_key_is_401_in_dialnexa_shape() {
        let sim = start().await;
        let uri = format!("http://{}/v1/agents2/agt_demo_support", sim.addr);
        let none = send(Request::get(&uri), Bytes::new()).await;
        let wrong = Request::get(&uri).header(AUTHORIZATION, "Bearer nope");
        let wrong = send(wrong, Bytes::new()).await;
        for answer in [none, wrong] {
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
            let expected = json!({"statusCode": 401, "message": "Invalid or missing API key",
                                  "error": "Unauthorized"});
            assert_eq!(answer.body, expected);
            assert!(!answer.body.to_string().contains("nope"));
        }
    }

    #[tokio::test]
    async fn seeded_agent_is_served_with_quota_and_request_id_headers() {
        let sim = start().await;
        let req = request(
            &sim,
            Method::GET,
            "/v1/agents2/agt_demo_support?version_number=1",
        )
        .header("x-request-id", "req-42");
        let first = send(req, Bytes::new()).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.body["id"], "agt_demo_support");
        assert_eq!(first.body["llm"]["model"], "gpt-4o-mini");
        assert_eq!(first.body["functions"].as_array().unwrap().len(), 2);
        let size = first.body.to_string().len();
        assert!((1024..=3072).contains(&size), "seed agent is {size} bytes");
        assert_eq!(first.headers["x-request-id"], "req-42");
        assert_eq!(first.headers["x-ratelimit-limit"], "1000");
        assert_eq!(first.headers["x-ratelimit-remaining"], "999");
        let second = call(&sim, Method::GET, "/v1/agents/agt_demo_sales", None).await;
        assert_eq!(second.status, StatusCode::OK);
        assert_eq!(second.headers["x-ratelimit-remaining"], "998");
        assert!(!second.headers.contains_key("x-request-id"));
    }

    #[tokio::test]
    async fn patch_deep_merges_bumps_version_and_both_families_see_it() {
        let sim = start().await;
        let patch = json!({"llm": {"settings": {"temperature": 0.3}}, "language": null});
        let patched = call(
            &sim,
            Method::PATCH,
            "/v1/agents2/agt_demo_support",
            Some(patch),
        )
        .await;
        assert_eq!(patched.status, StatusCode::OK);
        for path in [
            "/v1/agents2/agt_demo_support",
            "/v1/agents/agt_demo_support",
        ] {
            let agent = call(&sim, Method::GET, path, None).await.body;
            assert_eq!(agent, patched.body);
            assert_eq!(agent["llm"]["model"], "gpt-4o-mini");
            assert_eq!(agent["llm"]["settings"]["temperature"], 0.3);
            assert_eq!(agent["llm"]["settings"]["max_tokens"], 400);
            assert_eq!(agent["version_number"], 2);
            assert!(agent.get("language").is_none());
        }
    }

    #[tokio::test]
    async fn patch_cannot_touch_server_owned_fields() {
        let sim = start().await;
        let patch = json!({"id": null, "version_number": 99, "created_at": null});
        let agent = call(
            &sim,
            Method::PATCH,
            "/v1/agents/agt_demo_sales",
            Some(patch),
        )
        .await
        .body;
        assert_eq!(agent["id"], "agt_demo_sales");
        assert_eq!(agent["version_number"], 2);
        assert!(agent["created_at"].is_string());
    }

    #[tokio::test]
    async fn delete_then_get_is_404_in_both_families() {
        let sim = start().await;
        let deleted = call(&sim, Method::DELETE, "/v1/agents/agt_demo_sales", None).await;
        assert_eq!(deleted.status, StatusCode::OK);
        assert_eq!(
            deleted.body,
            json!({"id": "agt_demo_sales", "deleted": true})
        );
        assert_eq!(sim.agent_count(), 1);
        for path in ["/v1/agents2/agt_demo_sales", "/v1/agents/agt_demo_sales"] {
            let gone = call(&sim, Method::GET, path, None).await;
            assert_eq!(gone.status, StatusCode::NOT_FOUND);
            let expected = json!({"statusCode": 404, "message": "Agent agt_demo_sales not found",
                                  "error": "Not Found"});
            assert_eq!(gone.body, expected);
        }
        let again = call(&sim, Method::DELETE, "/v1/agents2/agt_demo_sales", None).await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn created_agent_gets_an_id_and_appears_in_the_list() {
        let sim = start().await;
        let body = json!({"name": "New", "version_number": 7});
        let created = call(&sim, Method::POST, "/v1/agents2", Some(body)).await;
        assert_eq!(created.status, StatusCode::CREATED);
        let id = created.body["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("agt_") && id.len() == 16, "{id}");
        assert_eq!(created.body["version_number"], 1);
        assert!(created.body["created_at"].is_string());
        let list = call(&sim, Method::GET, "/v1/agents", None).await.body;
        assert_eq!(list["total"], 3);
        assert!(list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == id.as_str()));
        assert_eq!(sim.agent_count(), 3);
        let named = json!({"id": "agt_mine"});
        let named = call(&sim, Method::POST, "/v1/agents", Some(named)).await;
        assert_eq!(named.body["id"], "agt_mine");
        let dup = call(
            &sim,
            Method::POST,
            "/v1/agents",
            Some(json!({"id": "agt_mine"})),
        )
        .await;
        assert_eq!(dup.status, StatusCode::CONFLICT);
    }

    #[tokio::test]
    async fn bad_bodies_are_400_and_oversized_ones_413() {
        let sim = start().await;
        let path = "/v1/agents2/agt_demo_support";
        for body in [&b"not json"[..], b"[1,2]", b"\xff\xfe{}", b""] {
            let req = request(&sim, Method::PATCH, path);
            let answer = send(req, Bytes::copy_from_slice(body)).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST);
            assert_eq!(answer.body["error"], "Bad Request");
        }
        let huge = Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]);
        let answer = send(request(&sim, Method::POST, "/v1/agents"), huge).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(answer.body["statusCode"], 413);
        assert_eq!(sim.agent_count(), 2);
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_wrong_methods_405() {
        let sim = start().await;
        for path in [
            "/v2/agents",
            "/agents2",
            "/v1/agents2/a/b",
            "/v1/agents2/%2e%2e",
            "/v1/",
        ] {
            let answer = call(&sim, Method::GET, path, None).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        }
        let calls = call(&sim, Method::GET, "/v1/calls", None).await;
        assert_eq!(calls.body, json!({"data": [], "total": 0}));
        let wrong = call(&sim, Method::PUT, "/v1/agents2/agt_demo_support", None).await;
        assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(wrong.headers[ALLOW], "GET, HEAD, PATCH, DELETE");
        assert_eq!(wrong.body["error"], "Method Not Allowed");
    }

    #[test]
    fn merge_recurses_into_objects_and_replaces_arrays() {
        let mut target = json!({"voice": {"speed": 1}, "functions": [1], "prompt": "p"});
        let patch = json!({"voice": {"provider": "x"}, "functions": [], "prompt": {"k": null}});
        let (Value::Object(target_map), Value::Object(patch)) = (&mut target, patch) else {
            unreachable!()
        };
        merge(target_map, patch);
        let expected =
            json!({"voice": {"speed": 1, "provider": "x"}, "functions": [], "prompt": {}});
        assert_eq!(target, expected);
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_server() {
        let sim = start().await;
        let addr = sim.addr;
        drop(sim);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("simulator still accepting after its handle was dropped");
    }
}
