//! The forward step's client: one pooled hyper-util client (rustls, HTTP/1.1 or HTTP/2 by ALPN;
//! plain http too) that sends an [`UpstreamRequest`] and streams or buffers the answer.

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::http::ProxyBody;

mod body;
mod request;
mod tls;

pub use request::{strip_hop_by_hop, Purpose, Target, UpstreamRequest};

/// Idle pooled connections are closed after this; kept below the usual 60 s upstream keep-alive so
/// the pool rarely picks a connection the server is about to close.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An upstream answer read whole (for the cache and for coalesced waiters).
#[derive(Debug)]
pub struct Buffered {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a cache fill got: the whole answer, or an answer too large to keep, already half read.
pub enum CacheFetch {
    Buffered(Buffered),
    TooLarge(Response<ProxyBody>),
}

/// The pooled upstream client.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    connect_timeout: Duration,
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let tls = tls::client_config();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Self {
            client,
            connect_timeout,
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Sends `req`, answering `502` when upstream cannot be reached and `504` past `deadline`.
    /// An idempotent read is retried once when a pooled connection turned out to be closed.
    pub async fn send(
        &self,
        req: &UpstreamRequest,
        timeout: Duration,
    ) -> Result<Response<Incoming>, GatewayError> {
        self.send_until(req, Instant::now() + timeout, timeout)
            .await
    }

    async fn send_until(
        &self,
        req: &UpstreamRequest,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Response<Incoming>, GatewayError> {
        let retryable = req.method == Method::GET || req.method == Method::HEAD;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent =
                tokio::time::timeout_at(deadline, self.client.request(req.to_request())).await;
            match sent {
                Err(_) => return Err(GatewayError::UpstreamTimeout(timeout)),
                Ok(Ok(resp)) => {
                    // The one place every upstream answer, forwarded or filling the cache, passes.
                    if let Some(org) = &req.observer {
                        org.answered(resp.status(), resp.headers());
                    }
                    return Ok(resp);
                }
                Ok(Err(e)) if retryable && attempt == 1 && closed_before_answer(&e) => continue,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, source = ?e.source(), uri = %req.uri, "upstream request failed");
                    return Err(GatewayError::UpstreamUnreachable);
                }
            }
        }
    }

    /// Sends a cache fill and reads the answer whole if it fits in `max_bytes`.
    /// `timeout` covers the whole answer, body included.
    pub async fn fetch_buffered(
        &self,
        req: &UpstreamRequest,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<CacheFetch, GatewayError> {
        let deadline = Instant::now() + timeout;
        let resp = self.send_until(req, deadline, timeout).await?;
        let (mut parts, mut incoming) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total: u64 = 0;
        loop {
            let frame = match tokio::time::timeout_at(deadline, incoming.frame()).await {
                Err(_) => return Err(GatewayError::UpstreamTimeout(timeout)),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream body failed");
                    return Err(GatewayError::UpstreamUnreachable);
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total += data.len() as u64;
            chunks.push(data);
            if total > max_bytes {
                let resp =
                    Response::from_parts(parts, body::Prefixed::boxed(chunks, incoming, timeout));
                return Ok(CacheFetch::TooLarge(resp));
            }
        }
        // The body is whole now: its length is what it is, whatever upstream declared.
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(CacheFetch::Buffered(Buffered {
            status: parts.status,
            headers: parts.headers,
            body: exact_body(&chunks, total as usize),
        }))
    }
}

/// The body in one block of exactly its size from the system allocator, for the cache to keep.
/// A slice of hyper's read buffer would pin the whole buffer; the binary's allocator (mimalloc,
/// see `main.rs`) would round a ~3 KiB block up to its size class, by as much as a tenth, which
/// broke the RSS target (100k cached agents ≤ 1.3× their body bytes: 1.33× against 1.25×).
fn exact_body(chunks: &[Bytes], total: usize) -> Bytes {
    type SystemBox = allocator_api2::boxed::Box<[u8], std::alloc::System>;
    // Copied with one `memcpy` (allocator-api2's `Vec::extend_from_slice` copies byte by byte,
    // which callgrind put at ~30k instructions for a 3 KiB body).
    let kept = match chunks {
        [one] => SystemBox::from(&one[..]),
        many => {
            let mut whole = Vec::with_capacity(total);
            many.iter().for_each(|c| whole.extend_from_slice(c));
            SystemBox::from(&whole[..])
        }
    };
    Bytes::from_owner(kept)
}

/// hyper's "connection closed before message completed": the pooled connection died under us.
fn closed_before_answer(e: &hyper_util::client::legacy::Error) -> bool {
    crate::http::find_cause::<hyper::Error>(e).is_some_and(hyper::Error::is_incomplete_message)
}

/// An upstream answer streamed to the client as is, minus hop-by-hop headers.
/// Upstream going quiet for `idle` mid-body cuts the answer off.
pub fn passthrough(resp: Response<Incoming>, idle: Duration) -> Response<ProxyBody> {
    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body::stream(incoming, idle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_body_is_its_chunks_in_order() {
        let one = [Bytes::from_static(b"{\"id\":\"a1\"}")];
        assert_eq!(exact_body(&one, 11), one[0]);
        let many = [
            Bytes::from_static(b"{\"id\""),
            Bytes::new(),
            Bytes::from_static(b":\"a1\"}"),
        ];
        assert_eq!(
            exact_body(&many, 11),
            Bytes::from_static(b"{\"id\":\"a1\"}")
        );
        assert!(exact_body(&[], 0).is_empty());
    }
}
