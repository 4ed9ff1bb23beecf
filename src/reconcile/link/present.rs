//! The link exists in WeCom: record it, fix a drift with one A4 carrying the whole desired
//! link (or report it, for an observed link), and refresh the slow facts.

use kube::runtime::controller::Action;

use super::{
    Error, at_rest,
    create::record_identity,
    external::External,
    facts, is_paused,
    pass::Pass,
    report::{Happened, Outcome, report},
};
use crate::{
    api::{LinkOrigin, ManagementPolicy},
    reconcile::{
        decide::OnPresent,
        plan::{DesiredLink, FieldChange},
    },
    wecom::types::RemoteLink,
};

pub(super) async fn sync(
    pass: &mut Pass<'_>,
    ext: &External<'_>,
    remote: RemoteLink,
    changes: &[FieldChange],
    on: OnPresent,
) -> Result<Action, Error> {
    record_identity(pass, &remote.link_id, &remote.url).await?;
    note_origin(pass, &remote).await;
    let listed = changes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let link_id = remote.link_id.as_str();
    let outcome = match on {
        OnPresent::InSync => available(pass, link_id),
        OnPresent::ReportDrift => Outcome::drifted(link_id, &listed),
        OnPresent::Paused => {
            report(pass, Outcome::drift_paused(&listed)).await;
            return Ok(at_rest(pass.ctx, pass.link));
        }
        OnPresent::Correct => {
            ext.update(&DesiredLink::from_spec(&pass.link.spec), link_id)
                .await?;
            pass.tell(Happened::Updated {
                link_id,
                changes: &listed,
                spec_changed: pass.old.observed_generation != pass.generation,
            })
            .await;
            available(pass, link_id)
        }
    };
    report(pass, outcome).await;
    facts::refresh(pass, ext, link_id).await;
    Ok(at_rest(pass.ctx, pass.link))
}

fn available(pass: &Pass<'_>, link_id: &str) -> Outcome {
    let paused =
        is_paused(pass.link) && pass.link.spec.management_policy != ManagementPolicy::Observe;
    Outcome::available(link_id, paused)
}

/// The first pass that sees the link says how the object came to hold it.
async fn note_origin(pass: &mut Pass<'_>, remote: &RemoteLink) {
    if pass.new.origin.is_some() {
        return;
    }
    if pass.link.spec.link_id.is_none() {
        pass.new.origin = Some(LinkOrigin::Created);
        return;
    }
    pass.new.origin = Some(LinkOrigin::Adopted);
    pass.tell(Happened::Adopted {
        link_id: &remote.link_id,
        url: &remote.url,
        observed: pass.link.spec.management_policy == ManagementPolicy::Observe,
    })
    .await;
}
