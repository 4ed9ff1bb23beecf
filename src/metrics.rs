//! Prometheus metrics of the controller, served as text on `/metrics`.
//!
//! Labels never carry a secret: app and link identities and WeCom error codes only.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::Counter,
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::{
    api::{CustomerCount, LinkStatistics},
    wecom::{Api, client::CallObserver, types::QuotaResponse},
};

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
pub struct CorpApiLabels {
    pub corp_id: String,
    pub api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeferLabels {
    pub api: String,
    pub reason: String,
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

/// The channel a customer or event is counted under in metrics and
/// `status.customers.byChannel`: one of the link's `spec.channels`, the link's own URL
/// (`""`, no channel), or `other`. Channel values are free text anyone can append to a
/// public URL; bucketing the rest keeps both Prometheus series and status bounded.
pub fn bounded_channel<'a>(channels: &'a [String], state: &'a str) -> &'a str {
    if state.is_empty() || channels.iter().any(|c| c == state) {
        state
    } else {
        OTHER_CHANNEL
    }
}

/// The bucket of every channel not named in `spec.channels`.
pub const OTHER_CHANNEL: &str = "other";

/// The values of `wecom_acq_links{ready}`; anything else counts as the last.
const READY_STATES: [&str; 3] = ["True", "False", "Unknown"];

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
    pub quota_used: Family<AppLabels, Gauge>,
    pub quota_next_expiry: Family<AppLabels, Gauge>,
    /// Seconds a corp's API was closed by WeCom's rate limit (45009, 45033).
    pub wecom_blocked_seconds: Family<CorpApiLabels, Counter<f64, AtomicU64>>,
    /// Requests the scheduler did not send now (budget or breaker).
    pub wecom_deferred: Family<DeferLabels, Counter>,
    /// The A2 polling interval each app's links actually get (the resync interval,
    /// stretched when the budget cannot cover it).
    pub effective_resync: Family<AppLabels, Gauge<f64, AtomicU64>>,
    /// Each link's Ready state (an index into [`READY_STATES`]) and how many links are in each.
    link_ready: Mutex<(HashMap<String, u8>, [i64; 3])>,
    /// The business gauges of every link, written out at each scrape.
    link_facts: LinkFacts,
}

/// Every link's business gauges (`link_customers`, `link_clicks`, `link_new_customers`),
/// one compact entry per link (`namespace/name`), written out at scrape time. As `Family`
/// series they took ~600 bytes a link (three copies of the labels per series, plus the
/// record of what was exported): 6 MB of a controller with 10,000 links.
#[derive(Debug, Default, Clone)]
struct LinkFacts(Arc<Mutex<BTreeMap<String, LinkFactsEntry>>>);

#[derive(Debug, Default)]
struct LinkFactsEntry {
    link_id: String,
    /// Customers per bounded channel.
    customers: Vec<(String, i64)>,
    /// Clicks and new customers over the statistics window.
    statistics: Option<(i64, i64)>,
}

const LINK_CUSTOMERS_HELP: &str = "Customers of a link per channel (A6 count plus callbacks; channels outside spec.channels as \"other\")";
const LINK_CLICKS_HELP: &str = "Customers who clicked the link over the statistics window (A7)";
const LINK_NEW_CUSTOMERS_HELP: &str =
    "New customers through the link over the statistics window (A7)";

impl Collector for LinkFacts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let all = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let labelled = |key: &str| -> (String, String) {
            let (namespace, name) = key.split_once('/').unwrap_or(("", key));
            (namespace.to_string(), name.to_string())
        };
        {
            let mut family = encoder.encode_descriptor(
                "link_customers",
                LINK_CUSTOMERS_HELP,
                None,
                MetricType::Gauge,
            )?;
            for (key, entry) in all.iter() {
                let (namespace, name) = labelled(key);
                for (channel, n) in &entry.customers {
                    let labels = [
                        ("namespace", namespace.as_str()),
                        ("name", name.as_str()),
                        ("link_id", entry.link_id.as_str()),
                        ("channel", channel.as_str()),
                    ];
                    ConstGauge::new(*n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        type Figure = fn((i64, i64)) -> i64;
        let figures: [(&str, &str, Figure); 2] = [
            ("link_clicks", LINK_CLICKS_HELP, |(clicks, _)| clicks),
            ("link_new_customers", LINK_NEW_CUSTOMERS_HELP, |(_, new)| {
                new
            }),
        ];
        for (metric, help, figure) in figures {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            for (key, entry) in all.iter() {
                let Some(statistics) = entry.statistics else {
                    continue;
                };
                let (namespace, name) = labelled(key);
                let labels = [
                    ("namespace", namespace.as_str()),
                    ("name", name.as_str()),
                    ("link_id", entry.link_id.as_str()),
                ];
                ConstGauge::new(figure(statistics)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
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
        let quota_used = Family::<AppLabels, Gauge>::default();
        let quota_next_expiry = Family::<AppLabels, Gauge>::default();
        let wecom_blocked_seconds = Family::<CorpApiLabels, Counter<f64, AtomicU64>>::default();
        let wecom_deferred = Family::<DeferLabels, Counter>::default();
        let effective_resync = Family::<AppLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "wecom_blocked_seconds",
            "Seconds a corp's WeCom API was closed after WeCom's rate limit (45009, 45033)",
            wecom_blocked_seconds.clone(),
        );
        registry.register(
            "wecom_deferred",
            "WeCom requests the corp's scheduler put off (reason budget or blocked), by API",
            wecom_deferred.clone(),
        );
        registry.register(
            "effective_resync_seconds",
            "The interval at which each app's links are polled (A2); longer than the resync interval when the request budget cannot cover it",
            effective_resync.clone(),
        );
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
        registry.register(
            "quota_used",
            "Cumulative acquisition quota used per app (A8 total)",
            quota_used.clone(),
        );
        registry.register(
            "quota_next_expiry_timestamp_seconds",
            "Expiry (Unix seconds) of the app's nearest quota batch with a balance left",
            quota_next_expiry.clone(),
        );
        let link_facts = LinkFacts::default();
        registry.register_collector(Box::new(link_facts.clone()));
        Metrics {
            registry,
            quota_used,
            quota_next_expiry,
            link_facts,
            wecom_blocked_seconds,
            wecom_deferred,
            effective_resync,
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
            link_ready: Mutex::new((HashMap::new(), [0; 3])),
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
    /// per-state gauge in step, in constant time (called on every pass of every link).
    pub fn set_link_ready(&self, key: &str, ready: Option<&str>) {
        let Ok(mut guard) = self.link_ready.lock() else {
            return;
        };
        let (states, counts) = &mut *guard;
        let state = ready.map(|r| {
            READY_STATES
                .iter()
                .position(|s| *s == r)
                .unwrap_or(READY_STATES.len() - 1) as u8
        });
        let before = match state {
            Some(state) => match states.get_mut(key) {
                Some(held) => Some(std::mem::replace(held, state)),
                None => {
                    states.insert(key.to_string(), state);
                    None
                }
            },
            None => states.remove(key),
        };
        if before == state {
            return;
        }
        if let Some(before) = before {
            counts[usize::from(before)] -= 1;
        }
        if let Some(state) = state {
            counts[usize::from(state)] += 1;
        }
        for (name, count) in READY_STATES.iter().zip(counts.iter()) {
            self.links
                .get_or_create(&ReadyLabels {
                    ready: (*name).into(),
                })
                .set(*count);
        }
    }

    /// Counts a panic caught in `task` (one of `crate::isolation::task`).
    pub fn count_panic(&self, task: &str) {
        self.panics
            .get_or_create(&TaskLabels { task: task.into() })
            .inc();
    }

    /// The app's quota gauges from an A8 reading: balance, total and the nearest expiry
    /// of a batch that still has a balance (the series is dropped when none has).
    pub fn set_quota(&self, namespace: &str, app: &str, quota: &QuotaResponse) {
        let labels = AppLabels {
            namespace: namespace.into(),
            app: app.into(),
        };
        self.quota_balance
            .get_or_create(&labels)
            .set(gauge_value(quota.balance));
        self.quota_used
            .get_or_create(&labels)
            .set(gauge_value(quota.total));
        match nearest_expiry(quota) {
            Some(at) => {
                self.quota_next_expiry.get_or_create(&labels).set(at);
            }
            None => {
                self.quota_next_expiry.remove(&labels);
            }
        }
    }

    /// The link's business gauges from its status: customers per (bounded) channel and
    /// the A7 window figures. `None` leaves that part as it is.
    pub fn set_link_facts(
        &self,
        namespace: &str,
        name: &str,
        link_id: &str,
        customers: Option<&CustomerCount>,
        statistics: Option<&LinkStatistics>,
    ) {
        let Ok(mut all) = self.link_facts.0.lock() else {
            return;
        };
        let key = format!("{namespace}/{name}");
        let entry = all.entry(key).or_default();
        if entry.link_id != link_id {
            link_id.clone_into(&mut entry.link_id);
        }
        if let Some(count) = customers {
            entry.customers = count
                .by_channel
                .iter()
                .map(|(channel, n)| (channel.clone(), gauge_value(*n)))
                .collect();
        }
        if let Some(stats) = statistics {
            entry.statistics = Some((
                gauge_value(stats.click_customers),
                gauge_value(stats.new_customers),
            ));
        }
    }

    /// Drops every business series of a deleted link.
    pub fn forget_link(&self, namespace: &str, name: &str) {
        if let Ok(mut all) = self.link_facts.0.lock() {
            all.remove(&format!("{namespace}/{name}"));
        }
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Expiry (Unix seconds) of the nearest batch that still has quota.
fn nearest_expiry(quota: &QuotaResponse) -> Option<i64> {
    quota
        .quota_list
        .iter()
        .filter(|batch| batch.balance > 0)
        .map(|batch| batch.expire_date)
        .min()
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

    fn on_deferred(&self, api: Api, blocked: bool) {
        let reason = if blocked { "blocked" } else { "budget" };
        self.wecom_deferred
            .get_or_create(&DeferLabels {
                api: api.name().into(),
                reason: reason.into(),
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

impl crate::wecom::scheduler::BlockObserver for Metrics {
    fn on_blocked(&self, corp_id: &str, api: Api, _errcode: i64, for_: Duration) {
        self.wecom_blocked_seconds
            .get_or_create(&CorpApiLabels {
                corp_id: corp_id.into(),
                api: api.name().into(),
            })
            .inc_by(for_.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_channel_keeps_named_channels_and_the_plain_url() {
        let channels = vec!["poster".to_string(), "chat".to_string()];
        assert_eq!(bounded_channel(&channels, "poster"), "poster");
        assert_eq!(bounded_channel(&channels, ""), "");
        assert_eq!(bounded_channel(&channels, "Poster"), OTHER_CHANNEL);
        assert_eq!(bounded_channel(&[], "poster"), OTHER_CHANNEL);
    }

    #[test]
    fn business_gauges_follow_the_link_and_the_quota() {
        let m = Metrics::default();
        let count = CustomerCount {
            total: 3,
            by_channel: [("".to_string(), 1), ("poster".to_string(), 2)].into(),
            ..Default::default()
        };
        let stats = LinkStatistics {
            window_days: 30,
            click_customers: 9,
            new_customers: 4,
            from: String::new(),
            to: String::new(),
        };
        m.set_link_facts("ns", "a", "L1", Some(&count), Some(&stats));
        let text = m.render();
        for line in [
            r#"wecom_acq_link_customers{namespace="ns",name="a",link_id="L1",channel="poster"} 2"#,
            r#"wecom_acq_link_customers{namespace="ns",name="a",link_id="L1",channel=""} 1"#,
            r#"wecom_acq_link_clicks{namespace="ns",name="a",link_id="L1"} 9"#,
            r#"wecom_acq_link_new_customers{namespace="ns",name="a",link_id="L1"} 4"#,
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        // A recreated link (new id) leaves no series of the old one.
        m.set_link_facts("ns", "a", "L2", Some(&count), Some(&stats));
        let text = m.render();
        assert!(!text.contains(r#"link_id="L1""#), "{text}");
        m.forget_link("ns", "a");
        let text = m.render();
        assert!(!text.contains("link_id="), "{text}");

        let quota = QuotaResponse {
            total: 50,
            balance: 7,
            quota_list: vec![
                crate::wecom::types::QuotaBatch {
                    expire_date: 1_700_000_000,
                    balance: 0,
                },
                crate::wecom::types::QuotaBatch {
                    expire_date: 1_800_000_000,
                    balance: 7,
                },
            ],
        };
        m.set_quota("ns", "app", &quota);
        let text = m.render();
        for line in [
            r#"wecom_acq_quota_balance{namespace="ns",app="app"} 7"#,
            r#"wecom_acq_quota_used{namespace="ns",app="app"} 50"#,
            r#"wecom_acq_quota_next_expiry_timestamp_seconds{namespace="ns",app="app"} 1800000000"#,
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }

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
