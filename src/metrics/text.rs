//! How `/metrics` is written: OpenMetrics, as prometheus-client renders it, or the classic
//! Prometheus text format for scrapers that do not ask for OpenMetrics.

use super::Metrics;

impl Metrics {
    /// OpenMetrics text, as prometheus-client renders it.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The classic Prometheus text format (0.0.4), for scrapers that do not ask for OpenMetrics.
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode())
    }
}

/// The two formats differ, for what is rendered here, only in how a counter is named: OpenMetrics
/// declares `# TYPE x counter` for samples named `x_total`, the classic format declares the sample
/// name itself. `# UNIT` and `# EOF` do not exist there and are dropped.
///
/// Written here because prometheus-client (0.23) encodes only OpenMetrics, as text or protobuf;
/// the `prometheus` crate writes the classic format but with its own registry and metric types,
/// so using it for these twenty lines would put a second metrics library in the binary.
fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let declared = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match declared {
            Some(renamed) => out.push_str(&renamed),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let m = Metrics::new();
        m.cache_hits.inc();
        let text = m.encode_prometheus_text();
        assert!(text.contains("# TYPE dialnexa_gateway_cache_hits_total counter\n"));
        assert!(text.contains("# HELP dialnexa_gateway_cache_hits_total "));
        assert!(text.contains("dialnexa_gateway_cache_hits_total 1\n"));
        assert!(text.contains("# TYPE dialnexa_gateway_cache_bytes gauge\n"));
        assert!(
            text.contains("# TYPE dialnexa_gateway_upstream_request_duration_seconds histogram\n")
        );
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }
}
