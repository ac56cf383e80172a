//! A minimal HTTP/1.1 client for the tests, plus a raw-bytes sender for requests a well-behaved
//! client would refuse to send.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// How the cache took part, as `X-Cache` says.
    pub fn x_cache(&self) -> &str {
        self.header("x-cache").unwrap_or("<no X-Cache>")
    }

    /// The agent version the fake upstream answered (it bumps on every write).
    pub fn version(&self) -> u64 {
        self.json()["version"].as_u64().unwrap_or_else(|| {
            panic!(
                "no version in {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

#[derive(Clone)]
pub struct Client {
    base: SocketAddr,
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn new(base: SocketAddr) -> Self {
        Self {
            base,
            inner: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A client speaking HTTP/2 in the clear (h2c, prior knowledge).
    pub fn h2(base: SocketAddr) -> Self {
        Self {
            base,
            inner: HyperClient::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.base, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .inner
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .expect("gateway answered");
        let (parts, body) = resp.into_parts();
        TestResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await.expect("whole body").to_bytes(),
        }
    }

    /// GET with `Authorization: Bearer <key>`.
    pub async fn get(&self, path: &str, key: &str) -> TestResponse {
        let auth = bearer(key);
        self.send(Method::GET, path, &[("authorization", &auth)], Bytes::new())
            .await
    }

    /// PATCH of a JSON body with `Authorization: Bearer <key>`.
    pub async fn patch(&self, path: &str, key: &str, json: &str) -> TestResponse {
        self.write(Method::PATCH, path, key, json).await
    }

    /// A write (`method`) of a JSON body with `Authorization: Bearer <key>`.
    pub async fn write(&self, method: Method, path: &str, key: &str, json: &str) -> TestResponse {
        let auth = bearer(key);
        self.send(
            method,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Bytes::from(json.to_owned()),
        )
        .await
    }
}

/// The `Authorization` value that presents `key`.
pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Sends `raw` as is and returns the status code of the answer (0 if the connection closed first).
pub async fn raw_status(addr: SocketAddr, raw: &[u8]) -> u16 {
    raw_exchange(addr, raw).await.expect("request sent")
}

/// Writes `raw` whole, then reads the answer's status (0 if none came), as a naive client does;
/// `Err` when the gateway reset the connection before taking the whole request.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> std::io::Result<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(raw).await?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}
