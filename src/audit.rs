//! Step 6: one JSON line per request. Lines travel through a bounded channel to a writer thread, so
//! no request waits on disk I/O; when the buffer is full the response's last frame waits for room
//! instead of finishing unaudited. Shutdown drains every accepted line before the process exits.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::audit_line;
use crate::body::{BoxError, ProxyBody};
use crate::cache::CacheOutcome;
use crate::config::{AuditSettings, AuditSink};
use crate::error::Decision;
use crate::metrics::{Metrics, RouteClass};

/// After writing a burst the writer rests this long before it looks for the next one. Waking it
/// for every line cost more than the line itself (a futex wake and two context switches per
/// request on a busy core); resting lets hundreds of lines gather per wake-up under load. A line
/// thus reaches the sink at most this much later; an idle writer still wakes on the first line.
const BATCH_PAUSE: Duration = Duration::from_millis(2);

/// The sink's write buffer: one `write(2)` per this many bytes of lines (~150 lines) under load.
const SINK_BUFFER_BYTES: usize = 64 * 1024;

/// One audit line, written by [`audit_line::write`]. Field names and meanings are the contract's;
/// values never include keys, tokens or body values.
#[derive(Debug)]
pub struct AuditRecord {
    pub ts: SystemTime,
    pub request_id: String,
    pub team: Option<Arc<str>>,
    pub key_id: Option<String>,
    pub org: Option<Arc<str>>,
    pub client_ip: IpAddr,
    pub method: Cow<'static, str>,
    pub path: String,
    pub agent_id: Option<String>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub cache: Option<CacheOutcome>,
    pub decision: Decision,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub changed_fields: Option<Vec<String>>,
    pub invalidated: u64,
    /// When the request arrived, for `latency_ms`; not written.
    pub started: Instant,
    /// For the answer-time histogram; not written. `None` for lines that are not API requests
    /// (admin actions, requests the HTTP layer refused), which the histogram does not count.
    pub class: Option<RouteClass>,
}

/// The `started` of placeholder records, read once: reading the clock is a measurable part of a
/// cache hit on a VM, and a placeholder is made every time a record is moved out.
static PLACEHOLDER_START: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Default for AuditRecord {
    /// An empty record; only used as the placeholder left behind when a record is moved out.
    fn default() -> Self {
        Self::at(
            SystemTime::UNIX_EPOCH,
            *PLACEHOLDER_START,
            String::new(),
            IpAddr::from([0, 0, 0, 0]),
            &http::Method::GET,
            "",
        )
    }
}

impl AuditRecord {
    pub fn new(request_id: String, client_ip: IpAddr, method: &http::Method, path: &str) -> Self {
        Self::at(
            SystemTime::now(),
            Instant::now(),
            request_id,
            client_ip,
            method,
            path,
        )
    }

    fn at(
        ts: SystemTime,
        started: Instant,
        request_id: String,
        client_ip: IpAddr,
        method: &http::Method,
        path: &str,
    ) -> Self {
        Self {
            ts,
            request_id,
            team: None,
            key_id: None,
            org: None,
            client_ip,
            method: method_name(method),
            path: path.to_owned(),
            agent_id: None,
            status: 0,
            upstream_status: None,
            cache: None,
            decision: Decision::Allowed,
            latency_ms: 0.0,
            upstream_latency_ms: None,
            bytes_in: 0,
            bytes_out: 0,
            changed_fields: None,
            invalidated: 0,
            started,
            class: None,
        }
    }
}

impl AuditRecord {
    /// A request the HTTP layer refused before it could be parsed (a raw control byte, a head too
    /// large): it has no method or path to name, so both are empty.
    pub fn unparsed(request_id: http::HeaderValue, client_ip: IpAddr, status: u16) -> Self {
        let mut record = Self::new(
            // Minted ids are hex, so always text.
            request_id.to_str().unwrap_or_default().to_owned(),
            client_ip,
            &http::Method::GET,
            "",
        );
        record.method = Cow::Borrowed("");
        record.status = status;
        record.decision = Decision::BadRequest;
        record
    }
}

/// The standard methods without an allocation; others as sent.
fn method_name(method: &http::Method) -> Cow<'static, str> {
    use http::Method;
    Cow::Borrowed(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => return Cow::Owned(method.as_str().to_owned()),
    })
}

/// Milliseconds with microsecond precision: cache hits take well under a millisecond.
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// The dotted paths of a JSON body's leaves, never their values. Arrays are leaves named by their
/// path. `None` when the body is not JSON.
pub fn changed_fields(body: &[u8]) -> Option<Vec<String>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(Vec::new());
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut out = Vec::new();
    if let serde_json::Value::Object(map) = &value {
        collect_leaves(map, &mut String::new(), &mut out);
    }
    Some(out)
}

fn collect_leaves(
    map: &serde_json::Map<String, serde_json::Value>,
    prefix: &mut String,
    out: &mut Vec<String>,
) {
    for (key, value) in map {
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(key);
        match value {
            serde_json::Value::Object(inner) if !inner.is_empty() => {
                collect_leaves(inner, prefix, out)
            }
            _ => out.push(prefix.clone()),
        }
        prefix.truncate(len);
    }
}

enum Msg {
    Line(Box<AuditRecord>),
    Reopen,
    Finish,
}

/// The sending side, cheap to clone into every response.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
}

/// The writer thread's handle: reopen the file, or drain and stop.
pub struct AuditWriter {
    log: AuditLog,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
#[error("audit file {path}: {source}")]
pub struct AuditOpenError {
    path: PathBuf,
    source: io::Error,
}

enum Sink {
    File { path: PathBuf, out: BufWriter<File> },
    Stdout(BufWriter<io::Stdout>),
}

impl Sink {
    fn open(settings: &AuditSink) -> Result<Self, AuditOpenError> {
        match settings {
            AuditSink::Stdout => Ok(Self::Stdout(BufWriter::with_capacity(
                SINK_BUFFER_BYTES,
                io::stdout(),
            ))),
            AuditSink::File(path) => Ok(Self::File {
                out: BufWriter::with_capacity(SINK_BUFFER_BYTES, open_append(path)?),
                path: path.clone(),
            }),
        }
    }

    fn out(&mut self) -> &mut dyn Write {
        match self {
            Self::File { out, .. } => out,
            Self::Stdout(out) => out,
        }
    }

    /// After logrotate moved the file away: flush to the old inode, start a new file at the path.
    fn reopen(&mut self) -> Result<(), AuditOpenError> {
        if let Self::File { path, out } = self {
            let _ = out.flush();
            *out = BufWriter::with_capacity(SINK_BUFFER_BYTES, open_append(path)?);
        }
        Ok(())
    }
}

fn open_append(path: &PathBuf) -> Result<File, AuditOpenError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        // Audit lines name teams and agents: readable by the gateway's user only.
        .mode(0o600)
        .open(path)
        .map_err(|source| AuditOpenError {
            path: path.clone(),
            source,
        })
}

impl AuditWriter {
    /// Opens the sink (failing start-up if it cannot) and starts the writer thread.
    pub fn start(settings: &AuditSettings, metrics: Arc<Metrics>) -> Result<Self, AuditOpenError> {
        let sink = Sink::open(&settings.sink)?;
        let (tx, rx) = mpsc::channel(settings.buffer_lines.get());
        let writer_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(sink, rx, &writer_metrics))
            .map_err(|source| AuditOpenError {
                path: PathBuf::from("<audit writer thread>"),
                source,
            })?;
        Ok(Self {
            log: AuditLog { tx, metrics },
            thread,
        })
    }

    pub fn log(&self) -> AuditLog {
        self.log.clone()
    }

    pub async fn reopen(&self) {
        let _ = self.log.tx.send(Msg::Reopen).await;
    }

    /// Writes every line accepted so far, then stops. Lines offered afterwards are counted as failed.
    pub async fn finish(self) {
        let _ = self.log.tx.send(Msg::Finish).await;
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

fn write_loop(mut sink: Sink, mut rx: mpsc::Receiver<Msg>, metrics: &Metrics) {
    let mut finishing = false;
    let mut line = Vec::with_capacity(1024);
    while let Some(msg) = rx.blocking_recv() {
        let mut next = Some(msg);
        // Write everything already queued, then flush once: one syscall per burst, not per line.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(record) => write_line(&mut sink, &mut line, &record, metrics),
                Msg::Reopen => {
                    if let Err(e) = sink.reopen() {
                        tracing::error!(error = %e, "cannot reopen the audit file; still writing to the old one");
                    }
                }
                Msg::Finish if !finishing => {
                    finishing = true;
                    // No new lines from here on; the ones already queued are still delivered.
                    rx.close();
                }
                Msg::Finish => {}
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = sink.out().flush() {
            tracing::error!(error = %e, "audit sink flush failed");
        }
        if !finishing {
            // Let the next burst gather: see BATCH_PAUSE.
            std::thread::sleep(BATCH_PAUSE);
        }
    }
}

/// Writes into `line` first, then hands the whole line to the sink in one write: a record is
/// dozens of fragments, and each through `BufWriter` cost more than into a `Vec`.
fn write_line(sink: &mut Sink, line: &mut Vec<u8>, record: &AuditRecord, metrics: &Metrics) {
    line.clear();
    audit_line::write(record, line);
    line.push(b'\n');
    let result = sink.out().write_all(line);
    match result {
        Ok(()) => {
            metrics.audit_written.inc();
        }
        Err(e) => {
            metrics.audit_failed.inc();
            tracing::error!(error = %e, "audit line could not be written");
        }
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
    pub fn new(inner: ProxyBody, record: AuditRecord, log: AuditLog) -> Self {
        Self {
            inner,
            pending: Some((Box::new(record), log)),
            reserving: None,
            last: None,
        }
    }

    /// A body with no audit line (health probes, metrics).
    pub fn unaudited(inner: ProxyBody) -> Self {
        Self {
            inner,
            pending: None,
            reserving: None,
            last: None,
        }
    }

    /// The response will never be sent: its client went away while the request ran on (a write
    /// runs to upstream's answer). The line is written now, with `status`, keeping what upstream did.
    pub fn client_gone(mut self, status: u16) {
        if let Some((mut record, log)) = self.pending.take() {
            record.status = status;
            Self::seal(&mut record, &log.metrics);
            log.submit_detached(record);
        }
    }

    /// Fixes the answer time, once per line: here, where the last byte has been handed over, the
    /// line gets its `latency_ms` and the histogram its observation.
    fn seal(record: &mut AuditRecord, metrics: &Metrics) {
        let took = record.started.elapsed();
        record.latency_ms = millis(took);
        if let Some(class) = record.class {
            metrics.answered(class, record.cache, took);
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
            Self::seal(&mut record, &log.metrics);
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
            Self::seal(&mut record, &log.metrics);
            log.submit_detached(record);
        }
    }
}

impl AuditLog {
    /// Queues a line from a place that cannot wait (a `Drop`): straight into the buffer if there is
    /// room, else from a task of its own that waits for room.
    pub fn submit_detached(&self, record: Box<AuditRecord>) {
        match self.tx.try_send(Msg::Line(record)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                self.metrics.audit_backpressure_waits.inc();
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        let log = self.clone();
                        rt.spawn(async move {
                            if log.tx.send(msg).await.is_err() {
                                log.metrics.audit_failed.inc();
                            }
                        });
                    }
                    Err(_) => {
                        self.metrics.audit_failed.inc();
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.audit_failed.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_leaves_become_dotted_paths_without_values() {
        let f = changed_fields(br#"{"llm":{"settings":{"temperature":0.3,"model":"x"}},"functions":[{"a":1}],"name":"sk-secret"}"#).unwrap();
        assert_eq!(
            f,
            vec![
                "functions",
                "llm.settings.model",
                "llm.settings.temperature",
                "name"
            ]
        );
        assert!(!f.iter().any(|p| p.contains("secret")));
    }

    #[test]
    fn empty_objects_are_leaves_and_non_json_is_none() {
        assert_eq!(changed_fields(br#"{"a":{}}"#).unwrap(), vec!["a"]);
        assert_eq!(changed_fields(b"").unwrap(), Vec::<String>::new());
        assert_eq!(changed_fields(b"[1,2]").unwrap(), Vec::<String>::new());
        assert_eq!(changed_fields(b"not json {"), None);
    }

    #[test]
    fn record_serializes_every_contract_field() {
        let r = AuditRecord::new(
            "rid".into(),
            "127.0.0.1".parse().unwrap(),
            &http::Method::GET,
            "/v1/x",
        );
        let mut line = Vec::new();
        audit_line::write(&r, &mut line);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        for field in [
            "ts",
            "request_id",
            "team",
            "key_id",
            "org",
            "client_ip",
            "method",
            "path",
            "agent_id",
            "status",
            "upstream_status",
            "cache",
            "decision",
            "latency_ms",
            "upstream_latency_ms",
            "bytes_in",
            "bytes_out",
            "changed_fields",
            "invalidated",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["decision"], "allowed");
        assert!(v.get("started").is_none());
    }
}
