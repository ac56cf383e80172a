//! The one response body type every stage hands back: a boxed stream of bytes, so cached answers,
//! gateway errors and streamed upstream bodies travel through the same pipeline.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Streams an upstream body to the client without buffering it.
pub fn stream(body: hyper::body::Incoming) -> ProxyBody {
    body.map_err(BoxError::from).boxed_unsync()
}

/// An upstream body of which the first chunks were already read (while deciding whether the answer
/// fits in the cache): replays them, then streams the rest.
pub struct Prefixed {
    prefix: std::collections::VecDeque<Bytes>,
    rest: hyper::body::Incoming,
}

impl Prefixed {
    pub fn boxed(prefix: Vec<Bytes>, rest: hyper::body::Incoming) -> ProxyBody {
        Self {
            prefix: prefix.into(),
            rest,
        }
        .boxed_unsync()
    }
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        std::pin::Pin::new(&mut self.rest)
            .poll_frame(cx)
            .map_err(BoxError::from)
    }
}
