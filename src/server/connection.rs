//! One client connection: serves it with hyper (HTTP/1.1 or h2c) and holds it to the limits on
//! silent and idle clients (DESIGN, "Limits on slow, idle and too many clients").
//!
//! hyper's own HTTP/1 header timer starts only once hyper-util has read enough to pick the protocol,
//! never answers `408`, and HTTP/2 has none at all; so the connection keeps its own clock instead.
//! A connection is *quiet* while no request is in flight (from accept, and from the end of each
//! answer). Quiet for `min(request_header_timeout, idle_timeout)`, it is closed: an HTTP/2 one with
//! `GOAWAY`, anything else by failing its next read, after a `408` when an HTTP/1 head had begun.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::GatewayError;

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4): a quiet connection that began with
/// them is a half-sent preface, not an HTTP/1 request to answer `408`.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the serving side and the clock of one connection share. Updated on the request path with
/// a few atomic operations and no wake-up: the clock only reads it when its deadline comes.
pub struct Activity {
    opened: Instant,
    /// Requests whose head arrived and whose answer has not been sent whole yet.
    in_flight: AtomicUsize,
    /// When the connection last became quiet, in milliseconds since `opened`.
    quiet_since_ms: AtomicU64,
    /// When bytes last went out, in milliseconds since `opened`: an answer hyper is still
    /// flushing to a slow reader keeps the connection busy after its request is done.
    wrote_ms: AtomicU64,
    /// A write is waiting for room in the socket: nothing else may be written now.
    write_pending: AtomicBool,
    /// Bytes arrived while quiet: a request head had begun.
    begun: AtomicBool,
    /// Set when the connection's quiet time ran out: its next read fails.
    expired: AtomicBool,
    /// An HTTP/2 request was served here, so the polite close is `GOAWAY`.
    h2: AtomicBool,
    /// Whether the connection's first bytes so far match the HTTP/2 preface.
    preface: AtomicBool,
    /// The id of the `408` written to a client whose head had begun, for its audit line.
    timed_out: Mutex<Option<String>>,
    /// The connection's pending read, woken to fail when the quiet time runs out.
    reader: AtomicWaker,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            quiet_since_ms: AtomicU64::new(0),
            wrote_ms: AtomicU64::new(0),
            write_pending: AtomicBool::new(false),
            begun: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            preface: AtomicBool::new(true),
            timed_out: Mutex::new(None),
            reader: AtomicWaker::new(),
        })
    }

    /// A request head arrived: the connection is busy until the returned guard is dropped, which
    /// hyper does once the answer's body is sent whole (or the request is abandoned).
    pub fn begin(self: &Arc<Self>, version: http::Version) -> InFlight {
        if version == http::Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// The id of the `408` this connection answered a stalled head with, if it did.
    pub fn timed_out_request(&self) -> Option<String> {
        self.timed_out.lock().ok()?.take()
    }

    fn quiet_since(&self) -> Instant {
        let since = self
            .quiet_since_ms
            .load(Ordering::Acquire)
            .max(self.wrote_ms.load(Ordering::Acquire));
        self.opened + Duration::from_millis(since)
    }

    fn millis_open(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves once the connection has been quiet for `limit` without a break.
    pub async fn quiet_for(&self, limit: Duration) {
        let mut deadline = self.opened + limit;
        loop {
            tokio::time::sleep_until(deadline).await;
            if self.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: look again a whole period later (a long answer costs a few wake-ups).
                deadline = Instant::now() + limit;
                continue;
            }
            let due = self.quiet_since() + limit;
            if due > Instant::now() {
                deadline = due;
                continue;
            }
            return;
        }
    }

    /// Whether the polite close is `GOAWAY` (an HTTP/2 connection) rather than a failed read.
    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Fails the connection's next read, and wakes it so that read happens now.
    pub fn expire(&self) {
        self.expired.store(true, Ordering::Release);
        self.reader.wake();
    }
}

/// A request in flight on a connection; see [`Activity::begin`].
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.quiet_since_ms.store(a.millis_open(), Ordering::Release);
        a.begun.store(false, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that keeps its request [`InFlight`] until hyper has sent it and dropped it.
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The raw HTTP/1.1 `408` (closing the connection) written to a client whose request head
/// stalled, given the request id it is written under: each server answers in its own error shape.
pub type TimeoutAnswer = fn(request_id: &str) -> Vec<u8>;

/// The client's socket, as hyper reads and writes it, watched by the connection's [`Activity`].
pub struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// How many of the connection's first bytes were compared with the HTTP/2 preface.
    compared: usize,
    answer_408: TimeoutAnswer,
}

impl Watched {
    pub fn new(
        stream: TcpStream,
        activity: Arc<Activity>,
        answer_408: TimeoutAnswer,
    ) -> TokioIo<Self> {
        TokioIo::new(Self {
            stream,
            activity,
            compared: 0,
            answer_408,
        })
    }

    fn note_written(&self, written: &Poll<io::Result<usize>>) {
        let a = &self.activity;
        match written {
            Poll::Ready(Ok(n)) if *n > 0 => {
                a.write_pending.store(false, Ordering::Release);
                a.wrote_ms.store(a.millis_open(), Ordering::Release);
            }
            Poll::Pending => a.write_pending.store(true, Ordering::Release),
            _ => {}
        }
    }

    fn note_arrived(&mut self, bytes: &[u8]) {
        let a = &self.activity;
        if a.in_flight.load(Ordering::Relaxed) == 0 {
            a.begun.store(true, Ordering::Relaxed);
        }
        if self.compared < H2_PREFACE.len() {
            let n = bytes.len().min(H2_PREFACE.len() - self.compared);
            if bytes[..n] != H2_PREFACE[self.compared..self.compared + n] {
                a.preface.store(false, Ordering::Relaxed);
            }
            self.compared += n;
        }
    }

    /// The connection's quiet time ran out: a client in the middle of an HTTP/1 head is told so
    /// with a `408` (best effort: the socket has room, nothing else is being written), then the
    /// read fails and hyper closes the connection.
    fn time_out(&mut self) -> io::Error {
        let a = &self.activity;
        // Never into the middle of another answer: only when nothing waits to be written.
        let mid_http1_head = a.begun.load(Ordering::Relaxed)
            && !a.preface.load(Ordering::Relaxed)
            && !a.write_pending.load(Ordering::Acquire);
        if mid_http1_head {
            let id = crate::request_id::generate();
            let id = crate::request_id::as_text(&id).to_owned();
            let answer = (self.answer_408)(&id);
            // Small enough for any socket buffer; written whole or (and audited) not at all.
            if matches!(self.stream.try_write(&answer), Ok(n) if n == answer.len()) {
                if let Ok(mut slot) = a.timed_out.lock() {
                    *slot = Some(id);
                }
            }
        }
        io::Error::new(io::ErrorKind::TimedOut, "no complete request in time")
    }
}

/// `408` in the gateway's error shape, as raw HTTP/1.1 (hyper's connection is being failed, so it
/// cannot write it), closing the connection.
pub fn request_timeout_answer(request_id: &str) -> Vec<u8> {
    raw_408(
        request_id,
        &GatewayError::HeaderTimeout.body_json(request_id),
    )
}

/// A raw HTTP/1.1 `408` with a JSON `body`, closing the connection.
pub fn raw_408(request_id: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.activity.expired.load(Ordering::Acquire) {
            return Poll::Ready(Err(self.time_out()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let arrived = &buf.filled()[before..];
                if !arrived.is_empty() {
                    self.note_arrived(arrived);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                self.activity.reader.register(cx.waker());
                // Expired between the check above and the registration: read again now.
                if self.activity.expired.load(Ordering::Acquire) {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.note_written(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note_written(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
