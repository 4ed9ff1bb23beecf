//! The customer tally: `add_external_contact` events counted per link between flushes,
//! and the guarded `status.customers` write of each bump.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kube::{Api, ResourceExt, runtime::reflector::ObjectRef};

use crate::{
    api::{AcquisitionLink, AcquisitionLinkStatus, CustomerCount},
    reconcile::{
        context::{Context, customer_key},
        status_apply,
    },
    wecom::event::CallbackEvent,
};

/// Customers added through a link since the last flush.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CustomerBump {
    /// The link id the customers came through: a bump for an id the object no longer
    /// holds (recreated meanwhile) is dropped.
    pub link_id: String,
    /// Who was added ([`customer_key`] of ExternalUserID and UserID) and through which
    /// channel.
    pub arrivals: Vec<(u64, String)>,
    /// The newest `CreateTime` among them (Unix seconds).
    pub last_added: Option<i64>,
}

/// Pending customer bumps, one entry per link however many events came.
#[derive(Debug, Default)]
pub struct CustomerTally {
    pending: HashMap<ObjectRef<AcquisitionLink>, CustomerBump>,
}

impl CustomerTally {
    /// An `add_external_contact` through `link` (holding `link_id`), counted under
    /// `channel` (as [`bounded_channel`](crate::metrics::bounded_channel) names it).
    pub fn add_arrival(
        &mut self,
        link: &ObjectRef<AcquisitionLink>,
        link_id: &str,
        event: &CallbackEvent,
        channel: &str,
    ) {
        let customer = customer_key(
            event.external_user_id.as_deref().unwrap_or_default(),
            event.user_id.as_deref().unwrap_or_default(),
        );
        self.add(link, link_id, customer, channel, event.created_at);
    }

    pub fn add(
        &mut self,
        link: &ObjectRef<AcquisitionLink>,
        link_id: &str,
        customer: u64,
        channel: &str,
        added_at: i64,
    ) {
        // Looked up first: the key is cloned only for a link's first arrival in a window.
        if !self.pending.contains_key(link) {
            self.pending.insert(link.clone(), CustomerBump::default());
        }
        let Some(bump) = self.pending.get_mut(link) else {
            return;
        };
        if bump.link_id != link_id {
            *bump = CustomerBump {
                link_id: link_id.to_string(),
                ..CustomerBump::default()
            };
        }
        bump.arrivals.push((customer, channel.to_string()));
        bump.last_added = Some(bump.last_added.map_or(added_at, |at| at.max(added_at)));
    }

    pub fn take(&mut self) -> Vec<(ObjectRef<AcquisitionLink>, CustomerBump)> {
        self.pending.drain().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// The count after `bump`, or `None` when every arrival is already in it and the newest
/// add time is not newer than the one in status.
///
/// Customers the last full A6 count already saw (`counted`) are skipped: their callback
/// can arrive after that count, and adding them again would count them twice; their add
/// time still counts (A6 does not give it). `countedAt` stays the time of the last full
/// count.
pub fn bumped(
    current: &CustomerCount,
    bump: &CustomerBump,
    counted: &HashSet<u64>,
) -> Option<CustomerCount> {
    let mut next = current.clone();
    let mut added = 0u64;
    for (customer, channel) in &bump.arrivals {
        if counted.contains(customer) {
            continue;
        }
        added += 1;
        let count = next.by_channel.entry(channel.clone()).or_default();
        *count = count.saturating_add(1);
    }
    let later = bump
        .last_added
        .is_some_and(|added_at| next.note_added_at(added_at));
    if added == 0 && !later {
        return None;
    }
    next.total = next.total.saturating_add(added);
    Some(next)
}

/// One merge patch of `status.customers`, guarded by the resourceVersion it was computed
/// from (a conflict re-reads and tries again).
pub(super) async fn write_customer_bump(
    context: &Context,
    link: &ObjectRef<AcquisitionLink>,
    bump: &CustomerBump,
) {
    let namespace = link.namespace.clone().unwrap_or_default();
    let api: Api<AcquisitionLink> = Api::namespaced(context.kube.clone(), &namespace);
    let mut current = context.link_store.get(link);
    for _ in 0..3 {
        let Some(object) = current.take() else {
            return;
        };
        let status = object.status.clone().unwrap_or_default();
        if status.link_id.as_deref() != Some(bump.link_id.as_str()) {
            tracing::debug!(namespace = %namespace, link = %link.name, link_id = %bump.link_id, "link changed since the customers were added; the next A6 count has them");
            return;
        }
        let Some(count) = &status.customers else {
            tracing::debug!(namespace = %namespace, link = %link.name, "customers not counted yet; the first A6 count has them");
            return;
        };
        let counted = context
            .slow_facts
            .lock()
            .ok()
            .and_then(|facts| facts.get(&format!("{namespace}/{}", link.name)).cloned())
            .filter(|facts| facts.link_id == bump.link_id)
            .and_then(|facts| facts.counted)
            .unwrap_or_default();
        let Some(next) = bumped(count, bump, &counted) else {
            return;
        };
        // The whole customer count, applied as the callback worker's: it holds every
        // field this manager keeps, and the resourceVersion read makes it fail with 409
        // rather than write over a newer count.
        let counted_status = AcquisitionLinkStatus {
            customers: Some(next.clone()),
            ..Default::default()
        };
        match status_apply::apply_status(
            &api,
            &link.name,
            status_apply::CALLBACK_MANAGER,
            status_apply::link_customers(&counted_status),
            object.resource_version().as_deref(),
        )
        .await
        {
            Ok(_) => {
                let metrics = &context.metrics;
                metrics.set_link_facts(&namespace, &link.name, &bump.link_id, Some(&next), None);
                return;
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                current = api.get_status(&link.name).await.ok().map(Arc::new);
            }
            Err(err) => {
                tracing::warn!(namespace = %namespace, link = %link.name, error = %err, "could not write the customer count; the next A6 count corrects it");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    #[test]
    fn tally_keeps_one_bump_per_link_and_restarts_for_a_new_link_id() {
        let mut tally = CustomerTally::default();
        let a = ObjectRef::new("a").within("ns");
        let b = ObjectRef::new("b").within("ns");
        for (channel, at) in [
            ("x", 1_700_000_005),
            ("x", 1_700_000_009),
            ("y", 1_700_000_001),
        ] {
            tally.add(&a, "L1", 10, channel, at);
        }
        tally.add(&b, "L2", 10, "", 1_700_000_000);
        let mut taken = tally.take();
        taken.sort_by(|l, r| l.0.name.cmp(&r.0.name));
        assert!(tally.is_empty());
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].1.arrivals.len(), 3);
        assert_eq!(
            taken[0].1.last_added,
            Some(1_700_000_009),
            "the newest, not the last"
        );
        assert_eq!(taken[1].1.arrivals, vec![(10, String::new())]);

        tally.add(&a, "L1", 11, "x", 1_700_000_100);
        tally.add(&a, "L9", 12, "z", 1_700_000_050);
        let taken = tally.take();
        assert_eq!(taken[0].1.link_id, "L9");
        assert_eq!(taken[0].1.arrivals, vec![(12, "z".to_string())]);
        assert_eq!(
            taken[0].1.last_added,
            Some(1_700_000_050),
            "only the new link's"
        );
    }

    #[test]
    fn bumped_adds_only_customers_the_last_count_did_not_see() {
        let current = CustomerCount {
            total: 5,
            by_channel: BTreeMap::from([("x".into(), 5)]),
            counted_at: Some("2025-01-01T00:00:00Z".into()),
            last_add_time: Some("2024-12-31T23:00:00Z".into()),
        };
        let seen = customer_key("wm-old", "zhangsan");
        let bump = CustomerBump {
            link_id: "L1".into(),
            arrivals: vec![
                (seen, "x".into()), // already in the count
                (customer_key("wm-1", "zhangsan"), "x".into()),
                (customer_key("wm-2", "lisi"), "y".into()),
                (customer_key("wm-3", "lisi"), "y".into()),
            ],
            // 2025-01-01T00:00:10Z
            last_added: Some(1_735_689_610),
        };
        let counted = HashSet::from([seen]);
        let next = bumped(&current, &bump, &counted).unwrap();
        assert_eq!(next.total, 8);
        assert_eq!(
            next.by_channel,
            BTreeMap::from([("x".into(), 6), ("y".into(), 2)])
        );
        assert_eq!(next.counted_at, current.counted_at);
        assert_eq!(next.last_add_time.as_deref(), Some("2025-01-01T00:00:10Z"));
        let stale = CustomerBump {
            link_id: "L1".into(),
            arrivals: vec![(seen, "x".into())],
            last_added: Some(1_735_686_000), // 2024-12-31T23:00:00Z, as in status
        };
        assert_eq!(bumped(&current, &stale, &counted), None, "nothing new");
        // A customer the count already has, added later than status says: only the time
        // moves (A6 does not give it).
        let later = CustomerBump {
            last_added: Some(1_735_689_600),
            ..stale
        };
        let next = bumped(&current, &later, &counted).unwrap();
        assert_eq!(next.total, 5);
        assert_eq!(next.last_add_time.as_deref(), Some("2025-01-01T00:00:00Z"));
    }
}
