//! Step 6, the audit trail: one JSON line per request. Lines travel through a bounded channel to a
//! writer thread, so no request waits on disk I/O; when the buffer is full the answer's last frame
//! waits for room instead of finishing unaudited. Shutdown drains every accepted line before the
//! process exits. Who writes a request's line, and when, is [`PendingLine`]'s job alone.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::settings::{AuditSettings, AuditSink};

mod line;
mod pending;
mod record;

pub use pending::{AuditedBody, PendingLine, UpstreamReport};
pub use record::{changed_fields, millis, AuditRecord};

/// After writing a burst the writer rests this long before it looks for the next one. Waking it
/// for every line cost more than the line itself (a futex wake and two context switches per
/// request on a busy core); resting lets hundreds of lines gather per wake-up under load. A line
/// thus reaches the sink at most this much later; an idle writer still wakes on the first line.
const BATCH_PAUSE: Duration = Duration::from_millis(2);

/// The sink's write buffer: one `write(2)` per this many bytes of lines (~150 lines) under load.
const SINK_BUFFER_BYTES: usize = 64 * 1024;

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
    /// Lines waiting for upstream's answer to a fill their client left (see [`PendingLine`]);
    /// cancelled at shutdown before the writer stops, each then written as it stands.
    late: Arc<Mutex<JoinSet<()>>>,
    /// Lines that found the buffer full where nobody could wait (a `Drop`), each waiting for room
    /// in a task of its own; shutdown lets them all in before the writer stops.
    sends: Arc<Mutex<JoinSet<()>>>,
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
            log: AuditLog {
                tx,
                metrics,
                late: Arc::default(),
                sends: Arc::default(),
            },
            thread,
        })
    }

    pub fn log(&self) -> AuditLog {
        self.log.clone()
    }

    pub async fn reopen(&self) {
        let _ = self.log.tx.send(Msg::Reopen).await;
    }

    /// Writes every line accepted so far, then stops. Lines still waiting for an upstream answer
    /// are written as they stand first; lines offered afterwards are counted as failed.
    pub async fn finish(self) {
        let mut late =
            std::mem::take(&mut *self.log.late.lock().unwrap_or_else(|e| e.into_inner()));
        late.abort_all();
        while late.join_next().await.is_some() {}
        // The lines still waiting for room, those of the waits just cut short among them.
        loop {
            let mut sends =
                std::mem::take(&mut *self.log.sends.lock().unwrap_or_else(|e| e.into_inner()));
            if sends.is_empty() {
                break;
            }
            while sends.join_next().await.is_some() {}
        }
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
    line::write(record, line);
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

impl AuditLog {
    /// Runs `wait` (a line waiting for upstream's answer) where shutdown can cut it short.
    fn spawn_late(&self, wait: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut late = self.late.lock().unwrap_or_else(|e| e.into_inner());
        while late.try_join_next().is_some() {}
        late.spawn(wait);
    }

    /// Queues a line from a place that cannot wait (a `Drop`): straight into the buffer if there is
    /// room, else from a task of its own that waits for room.
    pub fn submit_detached(&self, record: Box<AuditRecord>) {
        match self.tx.try_send(Msg::Line(record)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                self.metrics.audit_backpressure_waits.inc();
                match tokio::runtime::Handle::try_current() {
                    Ok(_) => {
                        let log = self.clone();
                        let mut sends = self.sends.lock().unwrap_or_else(|e| e.into_inner());
                        while sends.try_join_next().is_some() {}
                        sends.spawn(async move {
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
