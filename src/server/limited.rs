//! What every listener of this binary holds its clients to (DESIGN, "Limits on slow, idle and too
//! many clients"): at most `max_connections` served at once, the rest left in the kernel's
//! backlog; accept failures (out of descriptors) backed off, never fatal; and each connection
//! served by hyper under the quiet-time clock of [`super::connection`]. The gateway's two
//! listeners and the simulated DialNexa all serve through here.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::connection::{Activity, Tracked, Watched};
use crate::settings::ConnectionLimits;

pub use super::connection::{raw_408, TimeoutAnswer};

/// Hands out accepted connections, each with one of `max_connections` permits.
pub struct Acceptor {
    permits: Arc<Semaphore>,
    errors: AcceptErrors,
}

/// An accepted client; its permit goes back when this (or the permit taken from it) is dropped.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

impl Acceptor {
    /// `max_connections` is read once: the permits are the listener's, so changing it needs a
    /// restart.
    pub fn new(limits: &ConnectionLimits) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.max_connections.get())),
            errors: AcceptErrors::default(),
        }
    }

    /// The next client, or `None` once `stopping` changes (or its sender is gone).
    pub async fn accept(
        &mut self,
        listener: &TcpListener,
        stopping: &mut watch::Receiver<bool>,
    ) -> Option<Accepted> {
        loop {
            // Beyond `max_connections`, new clients wait in the kernel's backlog, not in memory here.
            let permit = tokio::select! {
                permit = self.permits.clone().acquire_owned() => permit.ok()?,
                _ = stopping.changed() => return None,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopping.changed() => return None,
            };
            match accepted {
                Ok((stream, peer)) => {
                    self.errors.recovered();
                    let _ = stream.set_nodelay(true);
                    return Some(Accepted {
                        stream,
                        peer,
                        permit,
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: established clients keep being served
                    // while the listener backs off, and a burst of failures is one log line, not
                    // thousands.
                    let pause = self.errors.failed(&e);
                    drop(permit);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopping.changed() => return None,
                    }
                }
            }
        }
    }
}

/// Failed accepts in a row: logged once when a burst starts and once when it ends, with a pause
/// that doubles up to a second so a listener out of descriptors does not spin.
#[derive(Default)]
struct AcceptErrors {
    in_a_row: u64,
}

impl AcceptErrors {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_secs(1);

    fn failed(&mut self, e: &std::io::Error) -> Duration {
        if self.in_a_row == 0 {
            tracing::warn!(error = %e, "accept failed; backing off until connections can be accepted again");
        }
        self.in_a_row += 1;
        let doublings = u32::try_from(self.in_a_row.min(8)).unwrap_or(8) - 1;
        (Self::FIRST_PAUSE * 2u32.pow(doublings)).min(Self::MAX_PAUSE)
    }

    fn recovered(&mut self) {
        if self.in_a_row > 0 {
            tracing::warn!(failed = self.in_a_row, "accepting connections again");
            self.in_a_row = 0;
        }
    }
}

/// How a connection ended.
pub struct Ended {
    /// The request id of the `408` written to a client whose head stalled, if one was.
    pub timed_out_request: Option<String>,
    /// What hyper reported, if the connection ended on an error.
    pub error: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Serves one connection (HTTP/1.1 or h2c) with `handler` until the client closes it, it stays
/// quiet for `min(header_timeout, idle_timeout)`, or `stop` changes (in-flight requests finish
/// first). A quiet HTTP/2 connection is sent `GOAWAY`; a quiet HTTP/1 one is closed, after
/// `answer_408` where a request head had begun.
pub async fn serve_connection<H, Fut, B>(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    limits: &ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    answer_408: TimeoutAnswer,
    handler: H,
) -> Ended
where
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let quiet_limit = limits.header_timeout.min(limits.idle_timeout);
    let activity = Activity::new();
    let seen = activity.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let in_flight = seen.begin(req.version());
        let answer = handler(req);
        async move {
            let resp = answer.await;
            Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, in_flight)))
        }
    });
    let conn =
        builder.serve_connection(Watched::new(stream, activity.clone(), answer_408), service);
    tokio::pin!(conn);
    let mut closing = false;
    // Set once an idle HTTP/2 connection was sent GOAWAY: h2 closes only after the client
    // acknowledges it, which a client may never do, so it gets one more quiet period.
    let mut hard_stop: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            _ = stop.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = activity.quiet_for(quiet_limit), if !closing => {
                closing = true;
                if activity.is_h2() {
                    // GOAWAY: the client learns no stream was lost and reconnects when it needs to.
                    conn.as_mut().graceful_shutdown();
                    hard_stop = Some(Box::pin(tokio::time::sleep(quiet_limit)));
                } else {
                    activity.expire();
                }
            }
            _ = async {
                match hard_stop.as_mut() {
                    Some(deadline) => deadline.await,
                    None => std::future::pending().await,
                }
            } => {
                // Dropping the connection closes the socket.
                break Ok(());
            }
        }
    };
    Ended {
        timed_out_request: activity.timed_out_request(),
        error: result.err(),
    }
}
