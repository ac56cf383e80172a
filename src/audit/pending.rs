//! The one owner of "exactly one audit line per request". A request's line is a [`PendingLine`]
//! from the moment the request arrives; it ends in exactly one of three ways:
//! - attached to the answer's body ([`PendingLine::attach`]): queued when the last frame is sent,
//!   or, if the client goes away mid-body, as the body is dropped;
//! - dropped before an answer existed (the client left; hyper dropped the request future): written
//!   with status 499, at once, or once the cache fill the request started has its upstream answer
//!   ([`PendingLine::awaiting_fill`]), so the line says what upstream did;
//! - given up by a write whose client left before its answer ([`AuditedBody::abandon`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{mpsc, oneshot};

use super::{millis, AuditLog, AuditRecord, Msg};
use crate::cache::CacheOutcome;
use crate::http::{BoxError, ProxyBody};

/// HTTP status NGINX logs for a client that closed the connection before it was answered.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// What upstream answered the cache fill a request started.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamReport {
    /// `None` when upstream could not be reached or timed out.
    pub status: Option<u16>,
    pub took: Duration,
}

/// A request's audit line before it is written. See the module doc.
pub struct PendingLine {
    record: Option<Box<AuditRecord>>,
    log: AuditLog,
    fill: Option<oneshot::Receiver<UpstreamReport>>,
}

impl PendingLine {
    pub fn new(record: AuditRecord, log: AuditLog) -> Self {
        Self {
            record: Some(Box::new(record)),
            log,
            fill: None,
        }
    }

    pub fn record(&mut self) -> &mut AuditRecord {
        // Only `attach` and `drop` take the record, and both consume the line.
        self.record
            .as_mut()
            .expect("a pending line holds its record until it is attached or dropped")
    }

    /// The request's cache fill is fetching: should the client leave now, the line waits for the
    /// fill's upstream answer (the fill runs on without it) instead of being written at once.
    pub fn awaiting_fill(&mut self) -> oneshot::Sender<UpstreamReport> {
        let (tx, rx) = oneshot::channel();
        self.fill = Some(rx);
        tx
    }

    /// The fill is back and its answer is in the record.
    pub fn fill_done(&mut self) {
        self.fill = None;
    }

    /// Hands the line to the answer's body, with the answer's `status`.
    pub fn attach(mut self, status: u16, body: ProxyBody) -> AuditedBody {
        let mut record = self.record.take();
        if let Some(record) = record.as_mut() {
            record.status = status;
        }
        AuditedBody {
            inner: body,
            pending: record.map(|r| (r, self.log.clone())),
            reserving: None,
            last: None,
        }
    }
}

impl Drop for PendingLine {
    fn drop(&mut self) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        record.status = CLIENT_CLOSED_REQUEST;
        seal(&mut record);
        match self.fill.take() {
            // The runtime is there whenever a request future is dropped; outside one, write now.
            Some(fill) if tokio::runtime::Handle::try_current().is_ok() => {
                let late = LateLine {
                    record: Some(record),
                    log: self.log.clone(),
                };
                self.log.spawn_late(late.after(fill));
            }
            _ => self.log.submit_detached(record),
        }
    }
}

/// A dropped line waiting for its fill's upstream answer; written when that arrives, or as it
/// stands if shutdown cancels the wait.
struct LateLine {
    record: Option<Box<AuditRecord>>,
    log: AuditLog,
}

impl LateLine {
    async fn after(mut self, fill: oneshot::Receiver<UpstreamReport>) {
        if let (Ok(report), Some(record)) = (fill.await, self.record.as_mut()) {
            record.upstream_status = report.status;
            record.upstream_latency_ms = Some(millis(report.took));
        }
    }
}

impl Drop for LateLine {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            self.log.submit_detached(record);
        }
    }
}

fn seal(record: &mut AuditRecord) {
    record.latency_ms = millis(record.started.elapsed());
}

/// [`seal`] for a line whose answer existed: the answer time also goes into the histogram, once
/// per line, here where the last byte has been handed over (or the client left mid-body).
fn seal_answered(record: &mut AuditRecord, log: &AuditLog) {
    let took = record.started.elapsed();
    record.latency_ms = millis(took);
    if let Some(class) = record.class {
        log.metrics
            .answered(class, record.cache.map(CacheOutcome::as_str), took);
    }
}

type Reserve = Pin<
    Box<dyn Future<Output = Result<mpsc::OwnedPermit<Msg>, mpsc::error::SendError<()>>> + Send>,
>;

/// A response body that queues the request's audit line when its last frame has been sent
/// (so `bytes_out` and `latency_ms` are final), waiting for room if the buffer is full.
pub struct AuditedBody {
    inner: ProxyBody,
    pending: Option<(Box<AuditRecord>, AuditLog)>,
    reserving: Option<Reserve>,
    /// The body's last frame, held back until the line is queued.
    last: Option<Frame<Bytes>>,
}

impl AuditedBody {
    /// A body with no audit line (health probes, metrics).
    pub fn unaudited(inner: ProxyBody) -> Self {
        Self {
            inner,
            pending: None,
            reserving: None,
            last: None,
        }
    }

    /// The answer will never be sent: its client went away while the request ran on (a write
    /// runs to upstream's answer). The line is written now, as 499, keeping what upstream did.
    pub fn abandon(mut self) {
        if let Some((mut record, log)) = self.pending.take() {
            record.status = CLIENT_CLOSED_REQUEST;
            seal_answered(&mut record, &log);
            log.submit_detached(record);
        }
    }

    /// Queues the line; `Pending` while the buffer is full.
    fn poll_queue(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(reserve) = self.reserving.as_mut() {
                let permit = std::task::ready!(reserve.as_mut().poll(cx));
                self.reserving = None;
                if let Some((record, log)) = self.pending.take() {
                    match permit {
                        Ok(permit) => {
                            permit.send(Msg::Line(record));
                        }
                        Err(_) => {
                            log.metrics.audit_failed.inc();
                        }
                    }
                }
                return Poll::Ready(());
            }
            let Some((mut record, log)) = self.pending.take() else {
                return Poll::Ready(());
            };
            seal_answered(&mut record, &log);
            match log.tx.try_send(Msg::Line(record)) {
                Ok(()) => return Poll::Ready(()),
                Err(mpsc::error::TrySendError::Full(Msg::Line(record))) => {
                    log.metrics.audit_backpressure_waits.inc();
                    self.reserving = Some(Box::pin(log.tx.clone().reserve_owned()));
                    self.pending = Some((record, log));
                }
                Err(_) => {
                    log.metrics.audit_failed.inc();
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl Body for AuditedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.reserving.is_none() && this.last.is_none() {
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let (Some(data), Some((record, _))) =
                        (frame.data_ref(), this.pending.as_mut())
                    {
                        record.bytes_out += data.len() as u64;
                    }
                    if this.pending.is_none() || !this.inner.is_end_stream() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    // The last frame: hyper drops a body whose `Content-Length` has been written
                    // without polling it again, so the line is queued (waiting for room if need
                    // be) before this frame is let go, or a full buffer would not hold anyone up.
                    this.last = Some(frame);
                }
                // The line is still queued, by Drop, when the connection gives up on this body.
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {}
            }
        }
        std::task::ready!(this.poll_queue(cx));
        Poll::Ready(this.last.take().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        // Not over until the line is queued: hyper must poll once more so it can be.
        self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AuditedBody {
    /// The client went away before the body ended: the line is still written.
    fn drop(&mut self) {
        if let Some((mut record, log)) = self.pending.take() {
            seal_answered(&mut record, &log);
            log.submit_detached(record);
        }
    }
}
