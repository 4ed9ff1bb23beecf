//! The link reconciler's external client (Crossplane's shape): the WeCom verbs a pass uses
//! (observe, create, update, delete) and the slow facts it reports, over one app's
//! [`WeComClient`]. None touches Kubernetes; the pass around them writes what they learn.
//! Delete is idempotent (a link already gone is success); create is made safe by the
//! marker protocol of the create step, which asks [`External::made_by`] first.

use std::collections::{BTreeSet, HashSet};

use futures::TryStreamExt;

use crate::{
    api::{AcquisitionLink, CustomerCount},
    reconcile::{
        context::Context,
        marker::CreateMarker,
        plan::{DesiredLink, StatsWindow},
    },
    wecom::{
        ErrorClass, WeComError,
        client::WeComClient,
        types::{LinkInfo, RemoteLink, StatisticResponse},
    },
};

/// What WeCom says of a link id.
pub(super) enum Observed {
    Exists(RemoteLink),
    Gone,
}

pub(super) struct External<'a> {
    ctx: &'a Context,
    client: &'a WeComClient,
    /// The app's key (`namespace/name`), for its shared A1 listing.
    app: String,
}

impl<'a> External<'a> {
    /// The client for `link`'s passes: its app's WeCom client and its app's A1 listing.
    pub(super) fn for_link(
        ctx: &'a Context,
        client: &'a WeComClient,
        link: &AcquisitionLink,
    ) -> Self {
        External {
            ctx,
            client,
            app: super::app_key(link),
        }
    }

    pub(super) fn client(&self) -> &WeComClient {
        self.client
    }

    /// A2 by id. An error on A2 for a known id is only a hint: the link is gone only when A1
    /// no longer lists it (WECOM-NOTES: the code for a deleted link is undocumented). The A1
    /// listing is the app's shared one (see [`crate::reconcile::traffic::Sweeps`]), taken
    /// after this A2 was sent: links whose A2 failed meanwhile share it, and it cannot
    /// predate a deletion the A2 saw.
    pub(super) async fn observe(&self, link_id: &str) -> Result<Observed, WeComError> {
        let asked = tokio::time::Instant::now();
        match self.client.get_link(link_id).await {
            Ok(remote) => Ok(Observed::Exists(remote)),
            Err(err) if err.class() == ErrorClass::Retryable => Err(err),
            Err(err) if self.listed(link_id, asked).await? => Err(err),
            Err(_) => Ok(Observed::Gone),
        }
    }

    /// Whether the app's A1 listing, taken after `asked`, has the id.
    async fn listed(&self, link_id: &str, asked: tokio::time::Instant) -> Result<bool, WeComError> {
        let listing = self
            .ctx
            .sweeps
            .listing(&self.app, self.client, asked)
            .await?;
        Ok(listing.ids.contains(link_id))
    }

    /// The links an interrupted create may have made (A1, then A2 for each id no other
    /// object claims): the ones that match what the marker says was sent.
    pub(super) async fn made_by(
        &self,
        marker: &CreateMarker,
        desired: &DesiredLink,
        claimed: &BTreeSet<String>,
    ) -> Result<Vec<RemoteLink>, WeComError> {
        let ids: Vec<String> = self.client.list_links().try_collect().await?;
        let mut found = Vec::new();
        for id in ids.into_iter().filter(|id| !claimed.contains(id)) {
            match self.client.get_link(&id).await {
                Ok(remote) if marker.matches(&remote, desired) => found.push(remote),
                Ok(_) => {}
                Err(err) if err.is_retryable() => return Err(err),
                Err(_) => {}
            }
        }
        Ok(found)
    }

    /// A3, sent before `send_by` or not at all.
    pub(super) async fn create(
        &self,
        desired: &DesiredLink,
        send_by: tokio::time::Instant,
    ) -> Result<LinkInfo, WeComError> {
        self.client
            .create_link_sent_by(&desired.create_request(), send_by)
            .await
    }

    /// A4 with the whole desired link (WeCom replaces the range, G1).
    pub(super) async fn update(
        &self,
        desired: &DesiredLink,
        link_id: &str,
    ) -> Result<(), WeComError> {
        self.client
            .update_link(&desired.update_request(link_id))
            .await
    }

    /// A5. A terminal answer for a link A1 no longer lists means it is already gone:
    /// success.
    pub(super) async fn delete(&self, link_id: &str) -> Result<(), WeComError> {
        let asked = tokio::time::Instant::now();
        match self.client.delete_link(link_id).await {
            Ok(()) => Ok(()),
            Err(err) if err.errcode().is_some() && err.class() == ErrorClass::Terminal => {
                if self.listed(link_id, asked).await? {
                    Err(err)
                } else {
                    Ok(())
                }
            }
            Err(err) => Err(err),
        }
    }

    /// All customers of a link (A6, every page), counted per customer_channel, and who they
    /// are (see [`crate::reconcile::context::SlowFacts::counted`]).
    pub(super) async fn customers(
        &self,
        link_id: &str,
        channels: &[String],
    ) -> Result<(CustomerCount, HashSet<u64>), WeComError> {
        let mut count = CustomerCount::default();
        let mut seen = HashSet::new();
        let mut customers = std::pin::pin!(self.client.customers(link_id));
        while let Some(customer) = customers.try_next().await? {
            count.total += 1;
            seen.insert(crate::reconcile::context::customer_key(
                &customer.external_userid,
                &customer.userid,
            ));
            let channel = crate::metrics::bounded_channel(channels, &customer.state);
            *count.by_channel.entry(channel.to_string()).or_default() += 1;
            if let Some(added) = customer.add_time {
                count.note_added_at(added);
            }
        }
        Ok((count, seen))
    }

    /// A7 over the window.
    pub(super) async fn statistics(
        &self,
        link_id: &str,
        window: &StatsWindow,
    ) -> Result<StatisticResponse, WeComError> {
        self.client
            .statistic(link_id, window.start_time, window.end_time)
            .await
    }
}
