//! The create step, crash-safe: a `create-pending` marker (what is sent, and when) is
//! written with the object's resourceVersion before A3, so a racing writer gets a 409 and
//! nothing is created; the new id is written right after. A pass that finds the marker
//! without an id first looks for the link the interrupted pass may have made (A1 + A2,
//! matched on what the marker says was sent) and creates only when the grace has passed.

use std::{collections::BTreeSet, time::Duration};

use kube::{
    ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::{Value, json};

use super::{
    Error, at_rest, create_marker,
    external::External,
    is_paused, known_link_id, link_hash,
    pass::{Pass, apply_link_status, wrote},
    polled, present,
    report::{Happened, Outcome, report},
};
use crate::reconcile::cache;
use crate::{
    api::{
        AcquisitionLink, CREATE_PENDING_ANNOTATION, CustomerCount, LINK_FINALIZER,
        LINK_ID_ANNOTATION, LinkOrigin, LinkStatistics,
    },
    reconcile::{
        context::{Context, SlowFacts},
        decide,
        marker::{CREATE_SEND_WINDOW, CreateMarker},
        pacing::{self, LastPoll},
        plan::{self, DesiredLink},
    },
    wecom::{Api as WeComApi, types::LinkInfo, types::RemoteLink, unix_now, unix_now_ms},
};

/// Makes the link: looks for one an interrupted create made, then marker, A3, id.
/// `replacing`: the id and URL of a link WeCom deleted that this one replaces.
pub(super) async fn create(
    pass: &mut Pass<'_>,
    ext: &External<'_>,
    replacing: Option<(String, String)>,
) -> Result<Action, Error> {
    if let Some(marker) = create_marker(pass.link)
        && let Some(action) = recover(pass, ext, &marker).await?
    {
        return Ok(action);
    }
    // No marker for an A3 the budget would not send now: the pass comes back when it has
    // room (a deferral), with nothing written.
    ext.client().would_admit(WeComApi::CreateLink)?;
    let desired = DesiredLink::from_spec(&pass.link.spec);
    // A3 must leave within the send window of the marker's time, or not at all.
    let send_by = tokio::time::Instant::now() + CREATE_SEND_WINDOW;
    if !write_marker(pass, &desired).await? {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let created = send(pass, ext, &desired, send_by).await?;
    persist_identity(pass, &created).await?;
    pass.new.origin = Some(LinkOrigin::Created);
    pass.new.failures = None;
    let (link_id, url) = (created.link_id.as_str(), created.url.as_str());
    let happened = match &replacing {
        Some((old_id, old_url)) => Happened::Recreated {
            old_id,
            old_url,
            link_id,
            url,
        },
        None => Happened::Created { link_id, url },
    };
    pass.tell(happened).await;
    report(pass, Outcome::available(link_id, false)).await;
    publish_new_link(pass, link_id).await;
    Ok(at_rest(pass.ctx, pass.link))
}

/// A marker without an id: an earlier pass may have sent A3. `Some` when this pass must
/// not create: it adopted the link found, waits out the grace, or found several.
async fn recover(
    pass: &mut Pass<'_>,
    ext: &External<'_>,
    marker: &CreateMarker,
) -> Result<Option<Action>, Error> {
    let Some(since) = marker.sent_at(unix_now()) else {
        // A marker without a readable (or believable) time: how long ago A3 may have run
        // is unknown, so the grace starts now (the marker is rewritten with this pass's
        // time).
        return restart_marker_clock(pass, marker).await.map(Some);
    };
    let found = made_by_interrupted(pass.ctx, pass.link, ext, marker).await?;
    match found.as_slice() {
        [one] => adopt_interrupted(pass, ext, one.clone()).await.map(Some),
        [] => {
            // The interrupted A3 was sent within the send window of the marker and may
            // have run until the request timeout; A1 may lag behind it by the grace.
            let grace = (CREATE_SEND_WINDOW
                + crate::defaults::REQUEST_TIMEOUT
                + pass.ctx.cadence.create_grace)
                .as_secs() as i64;
            let age = unix_now().saturating_sub(since);
            if age >= grace {
                return Ok(None);
            }
            pass.checking_interrupted_create();
            Ok(Some(Action::requeue(Duration::from_secs(
                (grace - age).max(1) as u64,
            ))))
        }
        many => {
            let ids: Vec<&str> = many.iter().map(|l| l.link_id.as_str()).collect();
            report(pass, Outcome::create_incomplete(&ids)).await;
            Ok(Some(at_rest(pass.ctx, pass.link)))
        }
    }
}

/// The one link an interrupted create made becomes this object's.
async fn adopt_interrupted(
    pass: &mut Pass<'_>,
    ext: &External<'_>,
    remote: RemoteLink,
) -> Result<Action, Error> {
    record_identity(pass, &remote.link_id, &remote.url).await?;
    pass.new.origin = Some(LinkOrigin::Created);
    pass.tell(Happened::FoundInterrupted {
        link_id: &remote.link_id,
    })
    .await;
    let link = pass.link;
    let changes = plan::diff(&DesiredLink::from_spec(&link.spec), &remote);
    let on = decide::on_present(
        link.spec.management_policy,
        is_paused(link),
        !changes.is_empty(),
    );
    present::sync(pass, ext, remote, &changes, on).await
}

/// Links that an interrupted create may have made: matching what the marker says was sent,
/// created after it (with a minute of clock slack), not claimed by another AcquisitionLink.
pub(super) async fn made_by_interrupted(
    ctx: &Context,
    link: &AcquisitionLink,
    ext: &External<'_>,
    marker: &CreateMarker,
) -> Result<Vec<RemoteLink>, Error> {
    let desired = DesiredLink::from_spec(&link.spec);
    let me = link.metadata.uid.clone();
    let claimed: BTreeSet<String> = ctx
        .link_store
        .state()
        .iter()
        .filter(|other| other.metadata.uid != me)
        .filter_map(|other| known_link_id(other))
        .collect();
    Ok(ext.made_by(marker, &desired, &claimed).await?)
}

/// Rewrites a marker whose time is unknown with this pass's time, keeping what it says of
/// the request, and waits the whole grace from now before anything is created.
async fn restart_marker_clock(pass: &mut Pass<'_>, marker: &CreateMarker) -> Result<Action, Error> {
    let restarted = CreateMarker {
        at: Some(unix_now()),
        ..marker.clone()
    };
    let patch = json!({ "metadata": {
        "resourceVersion": pass.link.resource_version(),
        "annotations": { CREATE_PENDING_ANNOTATION: restarted.to_annotation() }
    }});
    merge_patch(pass, &patch).await?;
    pass.checking_interrupted_create();
    Ok(Action::requeue(Duration::from_secs(1)))
}

async fn merge_patch(pass: &Pass<'_>, patch: &Value) -> Result<(), kube::Error> {
    let written = pass
        .api
        .patch(
            &pass.link.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    wrote(pass.ctx, &written);
    Ok(())
}

/// The marker, with the resourceVersion read: `false` when someone else wrote the object
/// since (a 409: nothing is created in this pass). The finalizer comes with the marker when
/// the link has none yet (see `finalizer_comes_with_the_marker`): it is on the object
/// before A3 is sent.
async fn write_marker(pass: &Pass<'_>, desired: &DesiredLink) -> Result<bool, Error> {
    let link = pass.link;
    let mut finalizers = link.finalizers().to_vec();
    if !finalizers.iter().any(|f| f == LINK_FINALIZER) {
        finalizers.push(LINK_FINALIZER.to_string());
    }
    let marker = json!({ "metadata": {
        "resourceVersion": link.resource_version(),
        "finalizers": finalizers,
        "annotations": {
            CREATE_PENDING_ANNOTATION: CreateMarker::for_request(unix_now(), desired).to_annotation(),
            LINK_ID_ANNOTATION: Value::Null,
        }
    }});
    match merge_patch(pass, &marker).await {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// A3. A definitive WeCom answer, or a request never sent, means no link was made: the
/// marker goes. A timeout or a lost connection may have made one: it stays, and the next
/// pass looks.
async fn send(
    pass: &Pass<'_>,
    ext: &External<'_>,
    desired: &DesiredLink,
    send_by: tokio::time::Instant,
) -> Result<LinkInfo, Error> {
    match ext.create(desired, send_by).await {
        Ok(created) => Ok(created),
        Err(err) => {
            if err.certainly_not_acted_on() {
                let clear = json!({ "metadata": { "annotations": { CREATE_PENDING_ANNOTATION: Value::Null } } });
                let _ = merge_patch(pass, &clear).await;
            }
            Err(err.into())
        }
    }
}

/// Persists the new id at once, retrying within the pass: losing it would orphan the link.
async fn persist_identity(pass: &mut Pass<'_>, created: &LinkInfo) -> Result<(), Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match record_identity(pass, &created.link_id, &created.url).await {
            Ok(()) => return Ok(()),
            Err(err) if attempt < 4 => {
                tracing::warn!(%err, link_id = %created.link_id, "could not record the new link id yet; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Puts the id and URLs in status and makes sure the id annotation is there (and the
/// marker gone).
pub(super) async fn record_identity(
    pass: &mut Pass<'_>,
    link_id: &str,
    url: &str,
) -> Result<(), Error> {
    pass.new.link_id = Some(link_id.to_string());
    pass.new.url = Some(url.to_string());
    pass.new.channel_urls = plan::channel_urls(url, &pass.link.spec.channels);
    if cache::link_id_annotation(pass.link) != Some(link_id)
        || pass
            .link
            .annotations()
            .contains_key(CREATE_PENDING_ANNOTATION)
    {
        let patch = json!({ "metadata": { "annotations": {
            LINK_ID_ANNOTATION: link_id,
            CREATE_PENDING_ANNOTATION: Value::Null,
        }}});
        merge_patch(pass, &patch).await?;
    }
    Ok(())
}

/// A link just made has no customers and no clicks: known without asking WeCom, and no
/// A2, A6 or A7 before their intervals have passed. Its status is published right away,
/// before the pass ends; the annotation already holds the id, so a failure here loses
/// nothing (the pass's final write retries it).
async fn publish_new_link(pass: &mut Pass<'_>, link_id: &str) {
    let (ctx, link) = (pass.ctx, pass.link);
    let window = plan::stats_window(unix_now(), ctx.cadence.statistics_days);
    pass.new.customers = Some(CustomerCount {
        counted_at: Some(pass.now.0.to_string()),
        ..CustomerCount::default()
    });
    pass.new.statistics = Some(LinkStatistics {
        window_days: window.days,
        click_customers: 0,
        new_customers: 0,
        from: window.from,
        to: window.to,
    });
    pass.new.observed_generation = pass.generation;
    pass.new.last_sync_time = Some(pass.now.0.to_string());
    let name = link.name_any();
    match apply_link_status(&ctx.seen_versions, &pass.api, &name, &pass.old, &pass.new).await {
        Ok(_) => pass.old = pass.new.clone(),
        Err(err) => {
            tracing::warn!(%err, link = %pass.key(), "could not write the new link id to status yet")
        }
    }
    let now = unix_now_ms();
    polled(ctx, link, LastPoll::Created(now));
    let hash = link_hash(link);
    let due = |every| Some(pacing::next_poll_ms(LastPoll::Created(now), hash, every));
    let facts = SlowFacts {
        link_id: link_id.to_string(),
        customers_due: due(ctx.cadence.customers),
        statistics_due: due(ctx.cadence.statistics),
        ..Default::default()
    };
    if let Ok(mut map) = ctx.slow_facts.lock() {
        map.insert(pass.key(), facts);
    }
    ctx.metrics.set_link_facts(
        &link.namespace().unwrap_or_default(),
        &name,
        link_id,
        pass.new.customers.as_ref(),
        pass.new.statistics.as_ref(),
    );
}
