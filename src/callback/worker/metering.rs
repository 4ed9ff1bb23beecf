//! Event metering: the Prometheus counters of accepted callback events and conversions.

use std::collections::HashMap;
use std::hash::BuildHasher;

use prometheus_client::metrics::counter::Counter;

use super::super::endpoint::InboundEvent;
use crate::metrics::{CallbackEventLabels, ConversionLabels, Metrics};

/// The counters of accepted callback events (`wecom_acq_callback_events_total` by change
/// type, `wecom_acq_conversions_total` by app, link and channel), each label set resolved
/// once: an event then costs a hash of the borrowed labels and an increment, instead of
/// building an owned label set for the metric family every time.
#[derive(Default)]
pub struct EventMeter {
    by_change: HashMap<&'static str, Counter>,
    conversions: HashMap<u64, Vec<(ConversionLabels, Counter)>>,
    hasher: foldhash::fast::FixedState,
}

impl EventMeter {
    /// Counts `inbound` in `wecom_acq_callback_events_total`.
    pub fn event(&mut self, metrics: &Metrics, inbound: &InboundEvent) {
        let label = inbound.event.change_type.static_str().unwrap_or("unknown");
        self.by_change
            .entry(label)
            .or_insert_with(|| {
                metrics
                    .callback_events
                    .get_or_create(&CallbackEventLabels {
                        change_type: label.to_string(),
                    })
                    .clone()
            })
            .inc();
    }

    /// Counts a conversion event in `wecom_acq_conversions_total`.
    /// `channel` is the event's channel as [`bounded_channel`](crate::metrics::bounded_channel) names it.
    pub fn conversion(&mut self, metrics: &Metrics, inbound: &InboundEvent, channel: &str) {
        let event = &inbound.event;
        let labels = [
            inbound.namespace.as_str(),
            inbound.app.as_str(),
            event.link_id.as_deref().unwrap_or_default(),
            channel,
            event.change_type.as_str(),
        ];
        let key = self.hasher.hash_one(labels);
        let same = |known: &ConversionLabels| {
            [
                known.namespace.as_str(),
                known.app.as_str(),
                known.link_id.as_str(),
                known.channel.as_str(),
                known.change_type.as_str(),
            ] == labels
        };
        let entries = self.conversions.entry(key).or_default();
        if let Some((_, counter)) = entries.iter().find(|(known, _)| same(known)) {
            counter.inc();
            return;
        }
        let [namespace, app, link_id, channel, change_type] = labels.map(str::to_string);
        let labels = ConversionLabels {
            namespace,
            app,
            link_id,
            channel,
            change_type,
        };
        let counter = metrics.conversions.get_or_create(&labels).clone();
        counter.inc();
        entries.push((labels, counter));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tally::{CustomerTally, bumped};
    use super::*;
    use crate::api::CustomerCount;
    use crate::metrics::bounded_channel;
    use crate::wecom::event::{CallbackEvent, ChangeType};
    use kube::runtime::reflector::ObjectRef;
    use std::collections::{BTreeMap, HashSet};
    use std::time::Instant;
    fn inbound(namespace: &str, change_type: ChangeType, link: &str, state: &str) -> InboundEvent {
        InboundEvent {
            namespace: namespace.into(),
            app: "app".into(),
            event: CallbackEvent {
                envelope: crate::wecom::event::Envelope::SelfBuilt,
                corp_id: "ww1".into(),
                suite_id: None,
                family: crate::wecom::event::EventFamily::ChangeExternalContact,
                change_type,
                created_at: 1,
                link_id: Some(link.into()),
                state: (!state.is_empty()).then(|| state.into()),
                user_id: Some("zhangsan".into()),
                external_user_id: Some("wm1".into()),
                expire_time: None,
                expire_quota_num: None,
                welcome_code: None,
                chat_key: None,
            },
            received_at: Instant::now(),
        }
    }

    /// `name{labels} value` lines of `family` in the exposition, sorted.
    fn series(metrics: &Metrics, family: &str) -> Vec<String> {
        let mut lines: Vec<String> = metrics
            .render()
            .lines()
            .filter(|line| line.starts_with(family) && line.contains('{'))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn the_meter_counts_each_label_set_in_its_own_series() {
        let metrics = Metrics::new();
        let mut meter = EventMeter::default();
        let add = ChangeType::AddExternalContact;
        let events = [
            inbound("ns", add.clone(), "L1", "x"),
            inbound("ns", add.clone(), "L1", "x"),
            inbound("ns", add.clone(), "L1", "y"),
            inbound("ns", add.clone(), "L1", ""),
            inbound("ns2", add.clone(), "L1", "x"),
            inbound("ns", ChangeType::OpenProfile, "L1", "x"),
            inbound("ns", ChangeType::Other("brand_new".into()), "L1", "x"),
        ];
        for event in &events {
            meter.event(&metrics, event);
            let channel = event.event.state.as_deref().unwrap_or_default();
            meter.conversion(&metrics, event, channel);
        }
        let conversion = |ns: &str, channel: &str, change: &str, n: u32| {
            format!(
                "wecom_acq_conversions_total{{namespace=\"{ns}\",app=\"app\",link_id=\"L1\",channel=\"{channel}\",change_type=\"{change}\"}} {n}"
            )
        };
        let mut expected = vec![
            conversion("ns", "x", "add_external_contact", 2),
            conversion("ns", "y", "add_external_contact", 1),
            conversion("ns", "", "add_external_contact", 1),
            conversion("ns2", "x", "add_external_contact", 1),
            conversion("ns", "x", "open_profile", 1),
            conversion("ns", "x", "brand_new", 1),
        ];
        expected.sort();
        assert_eq!(series(&metrics, "wecom_acq_conversions_total"), expected);
        let mut expected = vec![
            "wecom_acq_callback_events_total{change_type=\"add_external_contact\"} 5".to_string(),
            "wecom_acq_callback_events_total{change_type=\"open_profile\"} 1".to_string(),
            "wecom_acq_callback_events_total{change_type=\"unknown\"} 1".to_string(),
        ];
        expected.sort();
        assert_eq!(
            series(&metrics, "wecom_acq_callback_events_total"),
            expected
        );
    }

    /// Channel values are free text on a public URL: 1,000 distinct junk channels end as
    /// one `other` entry in status and one `other` series per metric.
    #[test]
    fn junk_channels_are_counted_as_one_other_entry_in_status_and_metrics() {
        let metrics = Metrics::new();
        let mut meter = EventMeter::default();
        let mut tally = CustomerTally::default();
        let object = ObjectRef::new("a").within("ns");
        let channels = vec!["poster".to_string()];
        let mut states: Vec<String> = (0..1000).map(|i| format!("junk-{i}")).collect();
        states.push("poster".into());
        for (i, state) in states.iter().enumerate() {
            let event = inbound("ns", ChangeType::AddExternalContact, "L1", state);
            let channel = bounded_channel(&channels, state);
            meter.conversion(&metrics, &event, channel);
            tally.add(&object, "L1", i as u64, channel, 1_700_000_000);
        }
        let (_, bump) = tally.take().pop().unwrap();
        let next = bumped(&CustomerCount::default(), &bump, &HashSet::new()).unwrap();
        assert_eq!(next.total, 1001);
        assert_eq!(
            next.by_channel,
            BTreeMap::from([("other".into(), 1000), ("poster".into(), 1)])
        );
        metrics.set_link_facts("ns", "a", "L1", Some(&next), None);
        let conversion = |channel: &str, n: u32| {
            format!(
                "wecom_acq_conversions_total{{namespace=\"ns\",app=\"app\",link_id=\"L1\",channel=\"{channel}\",change_type=\"add_external_contact\"}} {n}"
            )
        };
        assert_eq!(
            series(&metrics, "wecom_acq_conversions_total"),
            vec![conversion("other", 1000), conversion("poster", 1)]
        );
        assert_eq!(
            series(&metrics, "wecom_acq_link_customers"),
            vec![
                "wecom_acq_link_customers{namespace=\"ns\",name=\"a\",link_id=\"L1\",channel=\"other\"} 1000".to_string(),
                "wecom_acq_link_customers{namespace=\"ns\",name=\"a\",link_id=\"L1\",channel=\"poster\"} 1".to_string(),
            ]
        );
        metrics.forget_link("ns", "a");
        assert!(series(&metrics, "wecom_acq_link_customers").is_empty());
    }
}
