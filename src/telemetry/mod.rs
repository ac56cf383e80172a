//! Diagnostics and traces. Diagnostics (not the audit trail): `tracing` to stderr, JSON or
//! human-readable, filtered by `RUST_LOG` (default `info`). Traces (`[tracing]`): the pipeline's
//! spans ([`span`]) exported over OTLP ([`export`]); without `[tracing]` no span is even made.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::ValueEnum;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::settings::TracingSettings;

pub mod export;
pub mod span;

pub use export::ExporterError;
pub use span::{Answered, RequestTrace, TraceId};

/// `in_span!(span, future)`: awaits the future inside `span`, or, without one (tracing off, or a
/// request the sampler left out), as it is. A macro rather than a function so that the future is
/// built where it is awaited: passed to a function it would be moved, a copy of its whole state,
/// on every request.
macro_rules! in_span {
    ($span:expr, $fut:expr) => {{
        let span: ::tracing::Span = $span;
        if span.is_none() {
            $fut.await
        } else {
            ::tracing::Instrument::instrument($fut, span).await
        }
    }};
}
pub(crate) use in_span;

/// The `tracing` target of the pipeline's spans: exported, never written to the log.
pub(crate) const SPAN_TARGET: &str = "dnxgw_span";

/// Set once the exporter is installed; every span helper is a no-op without it.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are made and exported (`[tracing]` present at start).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The exporter's handle, for the flush at shutdown; empty without `[tracing]`.
#[must_use = "spans still queued are lost unless `shutdown` is called"]
pub struct Tracing(Option<SdkTracerProvider>);

impl Tracing {
    /// Exports what is queued, waiting at most `within` (the rest of the shutdown grace): a
    /// collector that does not answer costs the exit no more than that.
    pub fn shutdown(self, within: Duration) {
        if let Some(provider) = self.0 {
            if let Err(e) = provider.shutdown_with_timeout(within) {
                tracing::warn!(error = %e, "spans still queued at shutdown were not all exported");
            }
        }
    }
}

/// Installs the global subscriber: the log on stderr, and with `tracing` the span exporter.
pub fn init(
    format: LogFormat,
    tracing: Option<&TracingSettings>,
) -> Result<Tracing, ExporterError> {
    let provider = tracing.map(export::provider).transpose()?;
    let log_filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info"))
            // The pipeline's spans are for the exporter: formatting their fields for the log would
            // cost every request and change no line.
            .add_directive(
                format!("{SPAN_TARGET}=off")
                    .parse()
                    .expect("a valid directive"),
            )
    };
    let log = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
            .boxed(),
    };
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("dialnexa-gateway"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            // Only the pipeline's spans: other spans and every log event (which may name anything)
            // stay out of the traces.
            .with_filter(Targets::new().with_target(SPAN_TARGET, tracing::Level::TRACE))
    });
    // A second init (tests) keeps the first subscriber, and its exporter.
    let installed = Registry::default().with(log).with(spans).try_init().is_ok();
    if installed && provider.is_some() {
        ENABLED.store(true, Ordering::Relaxed);
    }
    Ok(Tracing(provider.filter(|_| installed)))
}
