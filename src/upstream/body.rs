//! Upstream bodies on their way to the client: streamed without buffering, with a read timeout, and
//! replayed after a look at their first chunks.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::time::Sleep;

use crate::http::{BoxError, ProxyBody};

/// Streams an upstream body to the client without buffering it, giving up if upstream sends
/// nothing for `idle` (see [`StreamedBody`]).
pub fn stream(body: hyper::body::Incoming, idle: Duration) -> ProxyBody {
    StreamedBody::new(body, idle).boxed_unsync()
}

/// An upstream body of which the first chunks were already read (while deciding whether the answer
/// fits in the cache): replays them, then streams the rest.
pub struct Prefixed {
    prefix: std::collections::VecDeque<Bytes>,
    rest: StreamedBody,
}

impl Prefixed {
    pub fn boxed(prefix: Vec<Bytes>, rest: hyper::body::Incoming, idle: Duration) -> ProxyBody {
        Self {
            prefix: prefix.into(),
            rest: StreamedBody::new(rest, idle),
        }
        .boxed_unsync()
    }
}

/// An upstream body being streamed, with a read timeout as NGINX's `proxy_read_timeout`: the
/// status line is long gone to the client, so a `504` is no longer possible, but an upstream
/// that stalls mid-body must not hold the client (and a connection) forever. The answer is cut off
/// instead, which the client sees as an incomplete response.
pub struct StreamedBody {
    body: hyper::body::Incoming,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?} in the middle of its answer")]
pub struct UpstreamStalled(Duration);

impl StreamedBody {
    fn new(body: hyper::body::Incoming, idle: Duration) -> Self {
        Self {
            body,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl http_body::Body for StreamedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => {
                std::task::ready!(this.deadline.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(UpstreamStalled(this.idle)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}
