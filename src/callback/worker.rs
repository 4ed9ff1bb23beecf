//! The callback worker: turns verified events into Kubernetes state, off the request path.
//!
//! - `delete_link`, `link_unavailable`: the AcquisitionLink holding that link id is
//!   reconciled at once. The reconciler re-checks with A2/A1 (a callback is a hint, never
//!   proof) and applies `onRemoteDelete`.
//! - conversions (`open_profile`, `friend_request`, `customer_start_chat`,
//!   `add_external_contact`, `message_from_customer`): Prometheus counters per app, link and
//!   channel; `add_external_contact` on a known link also bumps `status.customers`, at most
//!   one status write per link per flush window, until the next full A6 recount.
//! - quota (`balance_low`, `balance_exhausted`, `balance_increased`, `quota_expire_soon`):
//!   the WeComApp's conditions are set at once, with Events, and an A8 refresh is asked
//!   for. After `balance_increased` the links waiting to be created are re-triggered once
//!   A8 has shown the new balance.
//! - anything else: counted and logged at debug level.
//!
//! The event loop itself never waits on the Kubernetes API: link triggers are channel
//! sends, status writes run in their own tasks, quota updates in their own ordered task.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::reflector::{ObjectRef, Store},
};
use prometheus_client::metrics::counter::Counter;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::endpoint::InboundEvent;
use crate::{
    api::{AcquisitionLink, CustomerCount, LINK_ID_ANNOTATION, WeComApp, WeComAppStatus},
    isolation,
    metrics::{CallbackEventLabels, ConversionLabels, Metrics, bounded_channel},
    reconcile::{
        conditions::{self, LOW_BALANCE, QUOTA_EXHAUSTED, QUOTA_EXPIRING_SOON, QUOTA_LOW, reason},
        context::{Context, customer_key},
        events::publish_transitions,
        triggers::{Triggers, trigger},
    },
    wecom::event::{CallbackEvent, ChangeType},
};

/// Timings of the worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Customer bumps are written at most once per link per this window.
    pub customers_flush: Duration,
    /// After `balance_increased`, how long to wait for the A8 refresh before re-triggering
    /// the links waiting to be created anyway.
    pub quota_follow_up: Duration,
    /// Quota notices waiting for their status write (they are rare).
    pub quota_queue: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            customers_flush: Duration::from_secs(2),
            quota_follow_up: Duration::from_secs(30),
            quota_queue: 256,
        }
    }
}

/// Most events the worker takes from the queue at once.
const EVENT_BATCH: usize = 256;

/// Starts the worker on `events`. It ends when every sender is gone (the endpoint
/// stopped), after writing the customer bumps still pending.
pub fn spawn(
    context: Arc<Context>,
    triggers: Triggers,
    mut events: mpsc::Receiver<InboundEvent>,
    settings: WorkerSettings,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (quota_tx, quota_rx) = mpsc::channel(settings.quota_queue.max(1));
        let quota_task = tokio::spawn(quota_loop(
            context.clone(),
            triggers.clone(),
            quota_rx,
            settings.quota_follow_up,
        ));
        let mut worker = Worker {
            context,
            triggers,
            index: LinkIndex::default(),
            meter: EventMeter::default(),
            tally: CustomerTally::default(),
            quota: quota_tx,
            flushing: None,
        };
        let mut flush = tokio::time::interval(settings.customers_flush);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        flush.tick().await;
        // Events are taken in batches: under a burst, one wake-up of this task drains what
        // the endpoint queued meanwhile instead of one event per wake-up.
        let mut batch = Vec::with_capacity(EVENT_BATCH);
        loop {
            tokio::select! {
                received = events.recv_many(&mut batch, EVENT_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    for event in batch.drain(..) {
                        // A panic in one event stays with that event: the worker goes
                        // on with the next (a dead worker would refuse every callback).
                        if let Err(panic) = isolation::catch_sync(|| worker.handle(&event)) {
                            worker.context.metrics.count_panic(isolation::task::CALLBACK_WORKER);
                            tracing::error!(
                                namespace = %event.namespace,
                                app = %event.app,
                                change_type = %event.event.change_type,
                                panic = %panic,
                                "handling a callback event panicked (a bug); event dropped, polling catches up"
                            );
                        }
                    }
                }
                _ = flush.tick() => worker.flush(),
            }
        }
        if let Some(previous) = worker.flushing.take() {
            let _ = previous.await;
        }
        worker.flush();
        if let Some(last) = worker.flushing.take() {
            let _ = last.await;
        }
        drop(worker);
        let _ = quota_task.await;
    })
}

struct Worker {
    context: Arc<Context>,
    triggers: Triggers,
    index: LinkIndex,
    meter: EventMeter,
    tally: CustomerTally,
    quota: mpsc::Sender<QuotaNotice>,
    /// The flush still writing, if any: the next one waits for the window after it.
    flushing: Option<JoinHandle<()>>,
}

impl Worker {
    fn handle(&mut self, inbound: &InboundEvent) {
        self.meter.event(&self.context.metrics, inbound);
        let change = &inbound.event.change_type;
        match change {
            ChangeType::DeleteLink | ChangeType::LinkUnavailable => self.link_gone(inbound),
            ChangeType::OpenProfile
            | ChangeType::FriendRequest
            | ChangeType::CustomerStartChat
            | ChangeType::AddExternalContact
            | ChangeType::MessageFromCustomer => self.conversion(inbound),
            ChangeType::BalanceLow
            | ChangeType::BalanceExhausted
            | ChangeType::BalanceIncreased
            | ChangeType::QuotaExpireSoon => self.quota(inbound),
            ChangeType::Other(name) => tracing::debug!(
                namespace = %inbound.namespace,
                app = %inbound.app,
                family = %inbound.event.family,
                change_type = %name,
                "callback event of a kind this controller does not handle; ignored"
            ),
        }
    }

    fn link_gone(&mut self, inbound: &InboundEvent) {
        let change = inbound.event.change_type.as_str();
        match self.index.find_for(&self.context.link_store, inbound) {
            Some((link, link_id)) => {
                tracing::info!(
                    namespace = %inbound.namespace,
                    link = %link.name,
                    %link_id,
                    change,
                    "WeCom reports the link gone; reconciling it now"
                );
                // Someone is waiting for this pass: it goes before polling and slow facts.
                self.context
                    .urgent
                    .mark(&format!("{}/{}", inbound.namespace, link.name));
                trigger(&self.triggers.links, link);
            }
            None => tracing::debug!(
                namespace = %inbound.namespace,
                app = %inbound.app,
                link_id = ?inbound.event.link_id,
                change,
                "no AcquisitionLink manages this link id; ignored"
            ),
        }
    }

    fn conversion(&mut self, inbound: &InboundEvent) {
        let event = &inbound.event;
        let link = self.index.find_for(&self.context.link_store, inbound);
        let object = link
            .as_ref()
            .and_then(|(link, _)| self.context.link_store.get(link));
        let channels = object.as_ref().map_or(&[][..], |o| &o.spec.channels[..]);
        let channel = bounded_channel(channels, event.state.as_deref().unwrap_or_default());
        self.meter
            .conversion(&self.context.metrics, inbound, channel);
        if event.change_type != ChangeType::AddExternalContact {
            return;
        }
        if let Some((link, link_id)) = &link {
            self.tally.add_arrival(link, link_id, event, channel);
        }
    }

    fn quota(&mut self, inbound: &InboundEvent) {
        let notice = QuotaNotice {
            namespace: inbound.namespace.clone(),
            app: inbound.app.clone(),
            change: inbound.event.change_type.clone(),
            expire_time: inbound.event.expire_time,
            expire_quota_num: inbound.event.expire_quota_num,
        };
        if let Err(err) = self.quota.try_send(notice) {
            // Only under a storm of quota events; the periodic A8 check still catches up.
            tracing::warn!(
                namespace = %inbound.namespace,
                app = %inbound.app,
                error = %err,
                "quota callback dropped: too many pending; the next A8 check reports the quota"
            );
        }
    }

    /// Writes the pending customer bumps, unless the previous flush is still writing (then
    /// they wait for the next window, so a link never gets more than one write per window).
    fn flush(&mut self) {
        if self.flushing.as_ref().is_some_and(|f| !f.is_finished()) || self.tally.is_empty() {
            return;
        }
        let bumps = self.tally.take();
        let context = self.context.clone();
        self.flushing = Some(tokio::spawn(async move {
            futures::stream::iter(bumps)
                .for_each_concurrent(8, |(link, bump)| {
                    let context = context.clone();
                    async move {
                        let written =
                            isolation::catch(write_customer_bump(&context, &link, &bump)).await;
                        if let Err(panic) = written {
                            context
                                .metrics
                                .count_panic(isolation::task::CALLBACK_WORKER);
                            tracing::error!(namespace = ?link.namespace, link = %link.name, panic = %panic, "writing a customer count panicked (a bug); the next A6 recount corrects it");
                        }
                    }
                })
                .await;
        }));
    }
}

/// Which AcquisitionLink holds a WeCom link id: by `status.linkId`, the
/// `acquisition.wecom.dev/link-id` annotation (status lost) or `spec.linkId` (adopted).
/// Rebuilt from the controller's store when older than a few seconds, or on a miss.
#[derive(Default)]
pub struct LinkIndex {
    /// namespace -> link id -> holder (nested, so a lookup borrows instead of allocating)
    by_id: HashMap<String, HashMap<String, LinkHolder>>,
    built_at: Option<Instant>,
}

struct LinkHolder {
    link: ObjectRef<AcquisitionLink>,
    app: String,
}

const INDEX_MAX_AGE: Duration = Duration::from_secs(5);
const INDEX_MIN_AGE_FOR_MISS: Duration = Duration::from_millis(200);

impl LinkIndex {
    pub fn rebuild(&mut self, links: &[Arc<AcquisitionLink>]) {
        self.by_id.clear();
        for link in links {
            let namespace = link.namespace().unwrap_or_default();
            let ids = [
                link.status.as_ref().and_then(|s| s.link_id.clone()),
                link.annotations().get(LINK_ID_ANNOTATION).cloned(),
                link.spec.link_id.clone(),
            ];
            for id in ids.into_iter().flatten().filter(|id| !id.is_empty()) {
                self.by_id.entry(namespace.clone()).or_default().insert(
                    id,
                    LinkHolder {
                        link: ObjectRef::from_obj(&**link),
                        app: link.spec.app_ref.name.clone(),
                    },
                );
            }
        }
        self.built_at = Some(Instant::now());
    }

    /// The AcquisitionLink in `namespace`, using `app`, that holds `link_id`.
    pub fn find(
        &mut self,
        store: &Store<AcquisitionLink>,
        namespace: &str,
        app: &str,
        link_id: &str,
    ) -> Option<&ObjectRef<AcquisitionLink>> {
        let age = self.built_at.map(|at| at.elapsed());
        if age.is_none_or(|age| age >= INDEX_MAX_AGE)
            || (self.lookup(namespace, app, link_id).is_none()
                && self
                    .built_at
                    .is_some_and(|at| at.elapsed() >= INDEX_MIN_AGE_FOR_MISS))
        {
            self.rebuild(&store.state());
        }
        self.lookup(namespace, app, link_id)
    }

    /// The AcquisitionLink an event names (by its link id), and that id.
    pub fn find_for<'a>(
        &mut self,
        store: &Store<AcquisitionLink>,
        inbound: &'a InboundEvent,
    ) -> Option<(ObjectRef<AcquisitionLink>, &'a str)> {
        let link_id = inbound.event.link_id.as_deref()?;
        let found = self.find(store, &inbound.namespace, &inbound.app, link_id)?;
        Some((found.clone(), link_id))
    }

    /// The AcquisitionLink holding `link_id`, from the index as last built.
    pub fn lookup(
        &self,
        namespace: &str,
        app: &str,
        link_id: &str,
    ) -> Option<&ObjectRef<AcquisitionLink>> {
        self.by_id
            .get(namespace)?
            .get(link_id)
            .filter(|holder| holder.app == app)
            .map(|holder| &holder.link)
    }
}

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
    /// `channel` is the event's channel as [`bounded_channel`] names it.
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
    /// `channel` (as [`bounded_channel`] names it).
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
async fn write_customer_bump(
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
            .map(|facts| facts.counted)
            .unwrap_or_default();
        let Some(next) = bumped(count, bump, &counted) else {
            return;
        };
        let by_channel: serde_json::Map<String, serde_json::Value> = bump
            .arrivals
            .iter()
            .map(|(_, channel)| (channel.clone(), json!(next.by_channel.get(channel))))
            .collect();
        let patch = json!({
            "metadata": { "resourceVersion": object.resource_version() },
            "status": { "customers": {
                "total": next.total,
                "byChannel": by_channel,
                "lastAddTime": next.last_add_time,
            } },
        });
        match api
            .patch_status(&link.name, &PatchParams::default(), &Patch::Merge(&patch))
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

/// A quota callback for one app.
#[derive(Debug, Clone)]
struct QuotaNotice {
    namespace: String,
    app: String,
    change: ChangeType,
    expire_time: Option<i64>,
    expire_quota_num: Option<u64>,
}

/// Sets the quota conditions a quota callback implies. `false` for other change types.
/// The messages are stable (no timestamps), and name the callback, so an operator can tell
/// them from an A8 reading (which replaces them at the next check).
pub fn apply_quota_callback(
    status: &mut WeComAppStatus,
    change: &ChangeType,
    expire_time: Option<i64>,
    expire_quota_num: Option<u64>,
    generation: Option<i64>,
    now: &Time,
) -> bool {
    let c = &mut status.conditions;
    match change {
        ChangeType::BalanceLow => conditions::set(
            c,
            QUOTA_LOW,
            true,
            reason::BALANCE_LOW,
            format!(
                "WeCom reports fewer than {LOW_BALANCE} quota left (balance_low callback): buy more quota"
            ),
            generation,
            now,
        ),
        ChangeType::BalanceExhausted => {
            conditions::set(
                c,
                QUOTA_EXHAUSTED,
                true,
                reason::BALANCE_EXHAUSTED,
                "the acquisition quota is used up (balance_exhausted callback): no new link is created until quota is added",
                generation,
                now,
            );
            conditions::set(
                c,
                QUOTA_LOW,
                true,
                reason::BALANCE_LOW,
                "the acquisition quota is used up (balance_exhausted callback): buy more quota",
                generation,
                now,
            );
        }
        ChangeType::BalanceIncreased => conditions::set(
            c,
            QUOTA_EXHAUSTED,
            false,
            reason::BALANCE_OK,
            "quota was added (balance_increased callback); links are created again",
            generation,
            now,
        ),
        ChangeType::QuotaExpireSoon => {
            let amount = expire_quota_num
                .map(|n| n.to_string())
                .unwrap_or_else(|| "some".to_string());
            let when = expire_time
                .and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t).ok())
                .map(|t| t.to_string())
                .unwrap_or_else(|| "soon".to_string());
            conditions::set(
                c,
                QUOTA_EXPIRING_SOON,
                true,
                reason::BATCH_EXPIRING,
                format!(
                    "{amount} quota expire at {when} (quota_expire_soon callback): use or renew it"
                ),
                generation,
                now,
            );
        }
        _ => return false,
    }
    true
}

async fn quota_loop(
    context: Arc<Context>,
    triggers: Triggers,
    mut notices: mpsc::Receiver<QuotaNotice>,
    follow_up: Duration,
) {
    while let Some(notice) = notices.recv().await {
        let applied =
            isolation::catch(apply_quota_notice(&context, &triggers, &notice, follow_up)).await;
        if let Err(panic) = applied {
            context
                .metrics
                .count_panic(isolation::task::CALLBACK_WORKER);
            tracing::error!(
                namespace = %notice.namespace,
                app = %notice.app,
                panic = %panic,
                "applying a quota callback panicked (a bug); the next A8 check reports the quota"
            );
        }
    }
}

/// Writes the conditions (guarded by resourceVersion), publishes the transitions, and asks
/// for an A8 refresh.
async fn apply_quota_notice(
    context: &Arc<Context>,
    triggers: &Triggers,
    notice: &QuotaNotice,
    follow_up: Duration,
) {
    let (namespace, name) = (notice.namespace.as_str(), notice.app.as_str());
    let api: Api<WeComApp> = Api::namespaced(context.kube.clone(), namespace);
    let mut current = context.app(namespace, name);
    let observed_before = quota_observed_at(current.as_deref());
    for _ in 0..3 {
        let Some(app) = current.take() else {
            tracing::debug!(
                namespace,
                app = name,
                "quota callback for a WeComApp that is gone"
            );
            return;
        };
        let old = app.status.clone().unwrap_or_default();
        let mut new = old.clone();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        apply_quota_callback(
            &mut new,
            &notice.change,
            notice.expire_time,
            notice.expire_quota_num,
            app.metadata.generation,
            &now,
        );
        if new.conditions == old.conditions {
            break;
        }
        let patch = json!({
            "metadata": { "resourceVersion": app.resource_version() },
            "status": { "conditions": new.conditions },
        });
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(namespace, app = name, change = %notice.change, "quota conditions updated from a callback");
                publish_transitions(context, &app, &old, &new).await;
                break;
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                current = api.get_status(name).await.ok().map(Arc::new);
            }
            Err(err) => {
                tracing::warn!(namespace, app = name, error = %err, "could not write the quota conditions; the A8 refresh reports the quota");
                break;
            }
        }
    }
    context.expire_quota_check(namespace, name);
    trigger(&triggers.apps, ObjectRef::new(name).within(namespace));
    if notice.change == ChangeType::BalanceIncreased {
        tokio::spawn(retrigger_waiting_links(
            context.clone(),
            triggers.clone(),
            namespace.to_string(),
            name.to_string(),
            observed_before,
            follow_up,
        ));
    }
}

fn quota_observed_at(app: Option<&WeComApp>) -> Option<String> {
    app?.status.as_ref()?.quota.as_ref()?.observed_at.clone()
}

/// Once the A8 refresh has landed (or `timeout` passed), reconciles the app's links that
/// have no WeCom link yet: they were refused for lack of quota and would otherwise wait
/// for their next requeue.
async fn retrigger_waiting_links(
    context: Arc<Context>,
    triggers: Triggers,
    namespace: String,
    app: String,
    observed_before: Option<String>,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while quota_observed_at(context.app(&namespace, &app).as_deref()) == observed_before
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for link in context.link_store.state() {
        let waiting = link.status.as_ref().is_none_or(|s| s.link_id.is_none())
            && link.spec.link_id.is_none()
            && !link.annotations().contains_key(LINK_ID_ANNOTATION);
        if waiting
            && link.namespace().as_deref() == Some(namespace.as_str())
            && link.spec.app_ref.name == app
        {
            trigger(&triggers.links, ObjectRef::from_obj(&*link));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AcquisitionLinkSpec, AcquisitionLinkStatus, AppRef, LinkRangeSpec};
    use std::collections::BTreeMap;

    fn link(
        name: &str,
        app: &str,
        status_id: Option<&str>,
        annotation_id: Option<&str>,
    ) -> Arc<AcquisitionLink> {
        let mut link = AcquisitionLink::new(
            name,
            AcquisitionLinkSpec {
                app_ref: AppRef { name: app.into() },
                link_name: name.into(),
                range: LinkRangeSpec {
                    user_list: vec!["zhangsan".into()],
                    department_list: vec![],
                },
                skip_verify: true,
                priority_option: None,
                mark_source: None,
                channels: vec![],
                deletion_policy: Default::default(),
                on_remote_delete: Default::default(),
                management_policy: Default::default(),
                link_id: None,
            },
        );
        link.metadata.namespace = Some("ns".into());
        link.status = status_id.map(|id| AcquisitionLinkStatus {
            link_id: Some(id.into()),
            ..Default::default()
        });
        if let Some(id) = annotation_id {
            link.annotations_mut()
                .insert(LINK_ID_ANNOTATION.into(), id.into());
        }
        Arc::new(link)
    }

    #[test]
    fn index_finds_links_by_status_or_annotation_within_namespace_and_app() {
        let mut index = LinkIndex::default();
        index.rebuild(&[
            link("a", "app", Some("L1"), Some("L1")),
            link("b", "app", None, Some("L2")),
            link("c", "other", Some("L3"), None),
        ]);
        assert_eq!(
            index.lookup("ns", "app", "L1").map(|r| r.name.clone()),
            Some("a".into())
        );
        assert_eq!(
            index.lookup("ns", "app", "L2").map(|r| r.name.clone()),
            Some("b".into())
        );
        // Another app's link, another namespace, an unknown id: not ours.
        assert_eq!(index.lookup("ns", "app", "L3"), None);
        assert_eq!(index.lookup("other-ns", "app", "L1"), None);
        assert_eq!(index.lookup("ns", "app", "L9"), None);
    }

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

    #[test]
    fn quota_callbacks_set_the_matching_conditions() {
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_790_000_000).unwrap());
        let mut status = WeComAppStatus::default();
        assert!(apply_quota_callback(
            &mut status,
            &ChangeType::BalanceExhausted,
            None,
            None,
            Some(1),
            &now
        ));
        assert!(conditions::is_true(&status.conditions, QUOTA_EXHAUSTED));
        assert!(conditions::is_true(&status.conditions, QUOTA_LOW));
        assert!(apply_quota_callback(
            &mut status,
            &ChangeType::BalanceIncreased,
            None,
            None,
            Some(1),
            &now
        ));
        assert!(!conditions::is_true(&status.conditions, QUOTA_EXHAUSTED));
        assert!(apply_quota_callback(
            &mut status,
            &ChangeType::QuotaExpireSoon,
            Some(1_767_196_800),
            Some(150),
            Some(1),
            &now
        ));
        let expiring = conditions::find(&status.conditions, QUOTA_EXPIRING_SOON).unwrap();
        assert_eq!(expiring.status, "True");
        assert!(
            expiring.message.contains("150") && expiring.message.contains("2025-12-31T16:00:00Z"),
            "{}",
            expiring.message
        );
        let before = status.clone();
        assert!(!apply_quota_callback(
            &mut status,
            &ChangeType::DeleteLink,
            None,
            None,
            Some(1),
            &now
        ));
        assert_eq!(status, before);
    }
}
