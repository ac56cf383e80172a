//! The OTLP exporter behind `[tracing]`: spans go in batches, over HTTP/protobuf, from a thread of
//! the SDK's own, through a bounded queue. A collector that is slow, absent or refusing costs the
//! requests nothing: what cannot be queued or delivered is dropped and counted.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, RetryPolicy, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler,
    SamplingDecision, SdkTracerProvider, ShouldSample, Span, SpanData, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;

use crate::settings::TracingSettings;

/// Spans waiting for export. At 1.0 sampling a request makes two or three spans, so this holds a
/// second or two of a busy replica's traffic: enough to ride out one slow export, small enough
/// (a few MB) that a dead collector costs little memory before spans are dropped.
const DEFAULT_QUEUE_SPANS: usize = 8192;
/// The SDK's own default batch: one OTLP request per 512 spans keeps each under a collector's
/// default 4 MiB body limit.
const DEFAULT_BATCH_SPANS: usize = 512;
/// How long spans may wait before a part-full batch goes; a trace shows up within seconds.
const DEFAULT_EXPORT_DELAY: Duration = Duration::from_secs(1);
/// One export's longest wait for the collector: a collector that never answers holds the export
/// thread this long per batch (the queue drops meanwhile), not forever.
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Spans lost on the way to the collector: the queue was full, or the export of their batch failed.
/// Registered by [`crate::metrics`] as `dialnexa_gateway_trace_spans_dropped_total`.
static DROPPED: LazyLock<Counter> = LazyLock::new(crate::metrics::trace_spans_dropped);

/// The provider's sampler, asked before any span is made (see [`samples`]).
static SAMPLER: OnceLock<Sampler> = OnceLock::new();

thread_local! {
    /// The trace id the next root span on this thread takes (see [`Handed`]).
    static HANDED: Cell<Option<TraceId>> = const { Cell::new(None) };
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start the OTLP exporter: {0}")]
pub struct ExporterError(String);

/// The provider every gateway span is made by: parent-based sampling (a client's sampled flag is
/// followed; without a parent, `sample_ratio` of the trace ids are kept).
pub(super) fn provider(settings: &TracingSettings) -> Result<SdkTracerProvider, ExporterError> {
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", settings.otlp_endpoint))
        .with_timeout(DEFAULT_EXPORT_TIMEOUT)
        // A batch the collector cannot take now is dropped and counted; retrying it would hold the
        // export thread while newer spans pile up behind it.
        .with_retry_policy(RetryPolicy::disabled())
        .build()
        .map_err(|e| ExporterError(e.to_string()))?;
    let queued = Arc::new(AtomicUsize::new(0));
    let exporter = Counted {
        inner: exporter,
        queued: Arc::clone(&queued),
    };
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(DEFAULT_QUEUE_SPANS)
        .with_max_export_batch_size(DEFAULT_BATCH_SPANS)
        .with_scheduled_delay(DEFAULT_EXPORT_DELAY)
        .build();
    let processor = Bounded {
        inner: BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build(),
        queued,
        capacity: DEFAULT_QUEUE_SPANS,
    };
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio)));
    let _ = SAMPLER.set(sampler.clone());
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_id_generator(Handed(RandomIdGenerator::default()))
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build())
}

/// Whether a request with this parent (empty without one) and trace id is traced: the provider's
/// own sampler, asked before any span exists, so that a request it drops costs no span at all.
/// `false` before the exporter is installed.
pub(super) fn samples(parent: &Context, trace_id: TraceId) -> bool {
    SAMPLER.get().is_some_and(|sampler| {
        let result = sampler.should_sample(Some(parent), trace_id, "", &SpanKind::Server, &[], &[]);
        matches!(result.decision, SamplingDecision::RecordAndSample)
    })
}

/// Has the next root span made on this thread take `trace_id`: the one [`samples`] decided on,
/// which the audit line already carries. The span is built synchronously right after this.
pub(super) fn hand_trace_id(trace_id: TraceId) {
    HANDED.set(Some(trace_id));
}

/// Drops a handed trace id no span took.
pub(super) fn clear_handed() {
    HANDED.take();
}

/// The SDK's random ids, except a root span's trace id when one was handed over: without it a
/// sampled root would get a second random id, and the ratio sampler a second, independent say.
#[derive(Debug)]
struct Handed(RandomIdGenerator);

impl IdGenerator for Handed {
    fn new_trace_id(&self) -> TraceId {
        HANDED.take().unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// The SDK's batch processor in front of which the queue is counted. The SDK drops spans it has no
/// room for but keeps the count to itself (it logs it at shutdown), so the gateway keeps its own:
/// a span is admitted while fewer than `capacity` are waiting (the SDK's own queue is as large, so
/// it never drops one of these), and leaves the count when its batch is handed to the exporter.
#[derive(Debug)]
struct Bounded<P = BatchSpanProcessor> {
    inner: P,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let admitted = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            DROPPED.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it could not deliver and releasing each batch's room in the
/// queue.
#[derive(Debug)]
struct Counted<E = SpanExporter> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Counted<E>
{
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        self.queued.fetch_sub(spans, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            DROPPED.inc_by(spans as u64);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
    use opentelemetry::InstrumentationScope;
    use opentelemetry_sdk::error::OTelSdkError;
    use opentelemetry_sdk::trace::{SpanEvents, SpanExporter as _, SpanLinks};

    use super::*;

    fn span() -> SpanData {
        SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "test".into(),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::default(),
        }
    }

    /// Keeps what it is handed, as the SDK's batch processor queues it.
    #[derive(Debug, Default)]
    struct Kept(Mutex<Vec<SpanData>>);

    impl SpanProcessor for Kept {
        fn on_start(&self, _: &mut Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    /// A collector that refuses every export.
    #[derive(Debug)]
    struct Refusing;

    impl opentelemetry_sdk::trace::SpanExporter for Refusing {
        async fn export(&self, _: Vec<SpanData>) -> OTelSdkResult {
            Err(OTelSdkError::InternalFailure("503".into()))
        }
    }

    // One test for both: the counter is the process's, and tests run at once.
    #[test]
    fn a_full_queue_and_a_failed_export_drop_and_count_their_spans() {
        let queued = Arc::new(AtomicUsize::new(0));
        let bounded = Bounded {
            inner: Kept::default(),
            queued: Arc::clone(&queued),
            capacity: 2,
        };
        let before = DROPPED.get();
        for _ in 0..5 {
            bounded.on_end(span());
        }
        assert_eq!(bounded.inner.0.lock().unwrap().len(), 2, "two admitted");
        assert_eq!(DROPPED.get() - before, 3, "three dropped, counted");

        // The batch leaves the queue as it is handed over, whether or not it is delivered.
        let exporter = Counted {
            inner: Refusing,
            queued: Arc::clone(&queued),
        };
        let batch = std::mem::take(&mut *bounded.inner.0.lock().unwrap());
        let exported = block_on(exporter.export(batch));
        assert!(exported.is_err());
        assert_eq!(queued.load(Ordering::SeqCst), 0);
        assert_eq!(DROPPED.get() - before, 5, "the refused batch counted too");
        bounded.on_end(span());
        assert_eq!(bounded.inner.0.lock().unwrap().len(), 1, "room again");
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }
}
