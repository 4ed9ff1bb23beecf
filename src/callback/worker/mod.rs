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
//!
//! - [`index`]: which AcquisitionLink holds a link id.
//! - [`metering`]: the callback event and conversion counters.
//! - [`tally`]: customer bumps per link and their `status.customers` writes.
//! - [`quota`]: the quota loop (conditions, Events, A8 refresh, waiting links).

pub mod index;
pub mod metering;
pub mod quota;
pub mod tally;

pub use index::LinkIndex;
pub use metering::EventMeter;
pub use quota::apply_quota_callback;
pub use tally::{CustomerBump, CustomerTally, bumped};

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::endpoint::InboundEvent;
use crate::{
    isolation,
    metrics::bounded_channel,
    reconcile::{
        context::Context,
        triggers::{Triggers, trigger},
    },
    wecom::event::ChangeType,
};
use quota::{QuotaNotice, quota_loop};
use tally::write_customer_bump;

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
