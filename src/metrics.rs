//! Prometheus metrics of the controller, served as text on `/metrics`.
//!
//! Labels never carry a secret: app and link identities and WeCom error codes only.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::wecom::{Api, client::CallObserver};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub api: String,
    pub errcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub ready: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub namespace: String,
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallbackLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallbackEventLabels {
    pub change_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConversionLabels {
    pub namespace: String,
    pub app: String,
    pub link_id: String,
    pub channel: String,
    pub change_type: String,
}

/// Every metric of the process, registered once.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    pub wecom_calls: Family<CallLabels, Counter>,
    pub token_refreshes: Family<ResultLabels, Counter>,
    pub links: Family<ReadyLabels, Gauge>,
    pub quota_balance: Family<AppLabels, Gauge>,
    pub callbacks: Family<CallbackLabels, Counter>,
    pub conversions: Family<ConversionLabels, Counter>,
    pub callback_events: Family<CallbackEventLabels, Counter>,
    /// Panics caught at a task boundary (`crate::isolation::task`).
    pub panics: Family<TaskLabels, Counter>,
    link_ready: Mutex<HashMap<String, String>>,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wecom_acq");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let wecom_calls = Family::<CallLabels, Counter>::default();
        let token_refreshes = Family::<ResultLabels, Counter>::default();
        let links = Family::<ReadyLabels, Gauge>::default();
        let quota_balance = Family::<AppLabels, Gauge>::default();
        let callbacks = Family::<CallbackLabels, Counter>::default();
        let conversions = Family::<ConversionLabels, Counter>::default();
        let callback_events = Family::<CallbackEventLabels, Counter>::default();
        let panics = Family::<TaskLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconcile passes by kind and result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            reconcile_duration.clone(),
        );
        registry.register(
            "wecom_calls",
            "WeCom API calls by API and errcode",
            wecom_calls.clone(),
        );
        registry.register(
            "token_refreshes",
            "Access-token refreshes by result",
            token_refreshes.clone(),
        );
        registry.register(
            "links",
            "AcquisitionLinks by Ready condition status",
            links.clone(),
        );
        registry.register(
            "quota_balance",
            "Remaining acquisition quota per app",
            quota_balance.clone(),
        );
        registry.register(
            "callbacks",
            "Callback requests by result",
            callbacks.clone(),
        );
        registry.register(
            "conversions",
            "Conversion callbacks per app, link, channel and change type",
            conversions.clone(),
        );
        registry.register(
            "callback_events",
            "Verified callback events handled, by change type (unknown ones as \"unknown\")",
            callback_events.clone(),
        );
        registry.register(
            "panics",
            "Panics caught at a task boundary (a bug), by task; the rest of the controller goes on",
            panics.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            wecom_calls,
            token_refreshes,
            links,
            quota_balance,
            callbacks,
            conversions,
            callback_events,
            panics,
            link_ready: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn observe_reconcile(&self, kind: &str, result: &str, elapsed: Duration) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                kind: kind.into(),
                result: result.into(),
            })
            .inc();
        self.reconcile_duration
            .get_or_create(&KindLabels { kind: kind.into() })
            .observe(elapsed.as_secs_f64());
    }

    /// Records the Ready state of one link (`None` when the link is gone) and keeps the
    /// per-state gauge in step.
    pub fn set_link_ready(&self, key: &str, ready: Option<&str>) {
        let Ok(mut states) = self.link_ready.lock() else {
            return;
        };
        match ready {
            Some(state) => {
                states.insert(key.to_string(), state.to_string());
            }
            None => {
                states.remove(key);
            }
        }
        let mut counts: HashMap<&str, i64> = [("True", 0), ("False", 0), ("Unknown", 0)]
            .into_iter()
            .collect();
        for state in states.values() {
            *counts.entry(state.as_str()).or_default() += 1;
        }
        for (state, count) in counts {
            self.links
                .get_or_create(&ReadyLabels {
                    ready: state.into(),
                })
                .set(count);
        }
    }

    /// Counts a panic caught in `task` (one of `crate::isolation::task`).
    pub fn count_panic(&self, task: &str) {
        self.panics
            .get_or_create(&TaskLabels { task: task.into() })
            .inc();
    }

    pub fn set_quota_balance(&self, namespace: &str, app: &str, balance: u64) {
        self.quota_balance
            .get_or_create(&AppLabels {
                namespace: namespace.into(),
                app: app.into(),
            })
            .set(i64::try_from(balance).unwrap_or(i64::MAX));
    }
}

impl CallObserver for Metrics {
    fn on_call(&self, api: Api, outcome: &str, _elapsed: Duration) {
        self.wecom_calls
            .get_or_create(&CallLabels {
                api: api.name().into(),
                errcode: outcome.into(),
            })
            .inc();
    }

    fn on_token_refresh(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.token_refreshes
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_calls_and_ready_gauge() {
        let m = Metrics::default();
        m.on_call(Api::CreateLink, "0", Duration::from_millis(3));
        m.set_link_ready("ns/a", Some("True"));
        m.set_link_ready("ns/b", Some("False"));
        m.set_link_ready("ns/b", None);
        let text = m.render();
        assert!(
            text.contains(r#"wecom_acq_wecom_calls_total{api="create_link",errcode="0"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"wecom_acq_links{ready="True"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"wecom_acq_links{ready="False"} 0"#),
            "{text}"
        );
    }
}
