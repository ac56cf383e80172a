//! Which config a replica serves and the life of its team keys (DESIGN, "Config changes without a
//! signal, and the life of a team key").

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::TeamName;

/// `config_info`, written at scrape time from the one fingerprint served, so that no scrape sees a
/// reload half done (no series, or two).
#[derive(Debug, Default)]
struct ConfigInfo(Arc<Mutex<Arc<str>>>);

impl Collector for ConfigInfo {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let fingerprint = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let info = ConstGauge::new(1i64);
        let help = "Always 1; the fingerprint of the config this replica serves in its label \
                    (replicas that read the same file and secrets show the same one)";
        let mut family =
            encoder.encode_descriptor("config_info", help, None, info.metric_type())?;
        info.encode(family.encode_family(&[("fingerprint", &*fingerprint)])?)
    }
}

/// A team key, by the first 8 hex digits of its digest (as the audit line's `key_id`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamKeyLabels {
    team: TeamName,
    key_id: String,
}

#[derive(Clone, Default)]
pub struct ConfigMetrics {
    fingerprint: Arc<Mutex<Arc<str>>>,
    loaded: Gauge,
    key_not_after: Family<TeamKeyLabels, Gauge>,
    key_last_used: Family<TeamKeyLabels, Gauge>,
}

/// When a team key was last presented, to the minute: the series' own value, written from the
/// request path without a lock or an allocation.
#[derive(Clone, Debug)]
pub struct KeyLastUsed(Gauge);

impl KeyLastUsed {
    /// Records a use at `now` (since the Unix epoch). To the minute, so all but the first request
    /// of a minute only read: a relaxed load, and a store once a minute.
    #[inline]
    pub fn stamp(&self, now: Duration) {
        let minute = i64::try_from(now.as_secs() / 60 * 60).unwrap_or(i64::MAX);
        if self.0.get() != minute {
            self.0.set(minute);
        }
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

impl ConfigMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register_collector(Box::new(ConfigInfo(self.fingerprint.clone())));
        r.register_with_unit(
            "config_loaded_timestamp",
            "When the config now served was loaded (at start or by the last successful reload)",
            Unit::Seconds,
            self.loaded.clone(),
        );
        r.register_with_unit(
            "team_key_not_after_timestamp",
            "When a team key ends (its not_after), for each key that has an end",
            Unit::Seconds,
            self.key_not_after.clone(),
        );
        r.register_with_unit(
            "team_key_last_used_timestamp",
            "When a team key was last presented to this replica, to the minute (0: not since it \
             started)",
            Unit::Seconds,
            self.key_last_used.clone(),
        );
    }

    /// A config was loaded at `at` and is now the one served.
    pub fn loaded(&self, fingerprint: &Arc<str>, at: SystemTime) {
        *self.fingerprint.lock().unwrap_or_else(|e| e.into_inner()) = fingerprint.clone();
        self.loaded.set(unix_seconds(at));
    }

    /// A key of the config being loaded: its end shown (or no longer shown), and the handle its
    /// uses are stamped on, the same one as before if the key was already known, so its last use
    /// outlives reloads.
    pub fn team_key(
        &self,
        team: &Arc<str>,
        key_id: String,
        not_after: Option<SystemTime>,
    ) -> KeyLastUsed {
        let labels = TeamKeyLabels {
            team: TeamName(team.clone()),
            key_id,
        };
        match not_after {
            Some(t) => {
                self.key_not_after
                    .get_or_create(&labels)
                    .set(unix_seconds(t));
            }
            None => {
                self.key_not_after.remove(&labels);
            }
        }
        KeyLastUsed(self.key_last_used.get_or_create(&labels).clone())
    }

    /// Drops the series of a key a reload removed, so label sets stay bounded.
    pub fn forget_key(&self, team: &Arc<str>, key_id: String) {
        let labels = TeamKeyLabels {
            team: TeamName(team.clone()),
            key_id,
        };
        self.key_not_after.remove(&labels);
        self.key_last_used.remove(&labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_use_is_stamped_to_the_minute_and_only_once_a_minute() {
        let m = ConfigMetrics::default();
        let used = m.team_key(&Arc::from("billing"), "1a2b3c4d".into(), None);
        used.stamp(Duration::from_secs(120 + 59));
        assert_eq!(used.0.get(), 120);
        used.stamp(Duration::from_secs(181));
        assert_eq!(used.0.get(), 180);
        // The same key after a reload shares the value.
        let again = m.team_key(&Arc::from("billing"), "1a2b3c4d".into(), None);
        assert_eq!(again.0.get(), 180);
        m.forget_key(&Arc::from("billing"), "1a2b3c4d".into());
        let fresh = m.team_key(&Arc::from("billing"), "1a2b3c4d".into(), None);
        assert_eq!(fresh.0.get(), 0);
    }

    #[test]
    fn times_before_the_epoch_are_negative_seconds() {
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_secs(5)), 5);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), -5);
    }
}
