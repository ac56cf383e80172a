//! The one reader of `/metrics`: a scrape in the Prometheus text format (or OpenMetrics, which
//! writes samples the same way), asked for one sample by name and labels.

use std::collections::BTreeSet;
use std::fmt;

use super::Client;

/// Scrapes `/metrics` from an admin listener.
pub async fn scrape(admin: &Client) -> Metrics {
    scrape_with(admin, &[]).await
}

/// [`scrape`], asking for the format `accept` names (content negotiation, as Prometheus does).
pub async fn scrape_accepting(admin: &Client, accept: &str) -> Metrics {
    scrape_with(admin, &[("accept", accept)]).await
}

async fn scrape_with(admin: &Client, headers: &[(&str, &str)]) -> Metrics {
    let r = admin.send(http::Method::GET, "/metrics", headers, "").await;
    assert_eq!(r.status, 200, "/metrics answered {}", r.status);
    Metrics(String::from_utf8(r.body.to_vec()).expect("/metrics is UTF-8"))
}

/// One scrape. Its `Display` is the text as exposed, for assertion messages.
pub struct Metrics(String);

impl Metrics {
    /// The value of the sample `name{labels}` (labels in any order, all of them), if exposed.
    pub fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples()
            .find(|(series, _)| series.name == name && same_labels(&series.labels, labels))
            .map(|(_, value)| value)
    }

    /// [`sample`](Self::sample), which must be exposed.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sample(name, labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} not in /metrics:\n{self}"))
    }

    /// The values `label` takes across the samples of `name`, in the order exposed.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        self.samples()
            .filter(|(series, _)| series.name == name)
            .filter_map(|(series, _)| {
                let (_, value) = series.labels.into_iter().find(|(k, _)| k == label)?;
                Some(value)
            })
            .collect()
    }

    /// The sum of every sample of `name`, whatever its labels.
    pub fn total(&self, name: &str) -> f64 {
        self.samples()
            .filter(|(series, _)| series.name == name)
            .map(|(_, value)| value)
            .sum()
    }

    /// The names of the samples exposed.
    pub fn names(&self) -> BTreeSet<String> {
        self.samples().map(|(series, _)| series.name).collect()
    }

    fn samples(&self) -> impl Iterator<Item = (Series, f64)> + '_ {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(parse_sample)
    }

    /// [`sample`](Self::sample), or 0 for a counter not created yet.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sample(name, labels).unwrap_or(0.0)
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

struct Series {
    name: String,
    labels: Vec<(String, String)>,
}

fn same_labels(have: &[(String, String)], want: &[(&str, &str)]) -> bool {
    have.len() == want.len()
        && want
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}

/// `name{k="v",…} value [timestamp]` → the series and its value.
fn parse_sample(line: &str) -> Option<(Series, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        let mut s = inside;
        loop {
            s = s.trim_start_matches([',', ' ']);
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = s.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i + 1,
                    (_, '\\') => value.push(match chars.next()?.1 {
                        'n' => '\n',
                        c => c,
                    }),
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.trim().to_owned(), value));
            s = &after[end..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = value
        .parse()
        .unwrap_or_else(|_| panic!("{name} has a non-numeric value {value:?}"));
    Some((Series { name, labels }, value))
}
