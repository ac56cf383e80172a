//! The standard `process_*` figures, read at scrape time (never on the request path).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// The standard process figures (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_start_time_seconds`), read at scrape time:
/// nothing on the request path pays for them. A figure the platform cannot give is left out.
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = metrics_process::collector::collect();
        let (seconds, bytes) = (Some(&Unit::Seconds), Some(&Unit::Bytes));
        if let Some(v) = p.cpu_seconds_total {
            let help = "Total user and system CPU time spent in seconds";
            put(
                &mut encoder,
                "process_cpu",
                help,
                seconds,
                ConstCounter::new(v),
            )?;
        }
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size in bytes",
                bytes,
                p.resident_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                None,
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (soft limit; 0 if unlimited)",
                None,
                p.max_fds,
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds",
                seconds,
                p.start_time_seconds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(v) = value {
                put(&mut encoder, name, help, unit, ConstGauge::new(v))?;
            }
        }
        Ok(())
    }
}

pub(super) fn put(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}
