//! Deletion of an AcquisitionLink: A5 for `deletionPolicy: Delete` (a link already gone is
//! success), nothing for `Orphan`, for an observed link, or for a link another object
//! keeps. The finalizer stays until the WeCom link is gone, and status says why it waits.

use kube::{ResourceExt, runtime::controller::Action};

use super::{
    Error,
    create::made_by_interrupted,
    create_marker,
    external::External,
    is_paused, known_link_id, link_owned_by_another, object_key,
    pass::Pass,
    report::{Happened, Orphaned, deletion_blocked_message, tell},
    stable_message,
};
use crate::{
    api::{AcquisitionLink, ManagementPolicy, PAUSED_ANNOTATION, WeComApp},
    reconcile::{
        conditions::{READY, SYNCED, Stamped, reason},
        context::{AppError, Context},
        decide,
    },
    wecom::client::WeComClient,
};

pub(super) async fn cleanup(link: &AcquisitionLink, ctx: &Context) -> Result<Action, Error> {
    let result = cleanup_remote(link, ctx).await;
    if let Err(err) = &result {
        report_blocked(link, ctx, err).await;
    }
    result
}

/// Says in status why the object is still there (the finalizer stays until the WeCom link
/// is gone), so `kubectl describe` and ArgoCD show it, not only the logs.
async fn report_blocked(link: &AcquisitionLink, ctx: &Context, err: &Error) {
    let message = match err {
        Error::WeCom(e) if e.errcode().is_some() => stable_message(e),
        other => crate::wecom::redact::scrub(&other.to_string()),
    };
    let mut pass = Pass::new(link, ctx);
    pass.set(
        READY,
        false,
        reason::DELETING,
        format!("deleting: {message}"),
    );
    pass.set(
        SYNCED,
        false,
        reason::DELETING,
        format!("deletion waits: {message}"),
    );
    if let Err(write) = pass.write_status().await {
        tracing::debug!(%write, "could not report the blocked deletion in status");
    }
    ctx.metrics.set_link_ready(&object_key(link), None);
}

/// Deletes (or leaves) the WeCom link of an object being deleted.
async fn cleanup_remote(link: &AcquisitionLink, ctx: &Context) -> Result<Action, Error> {
    ctx.forget_link_reports(&object_key(link));
    let link_id = known_link_id(link);
    let orphaned = |why| async move {
        if let Some(id) = known_link_id(link) {
            tell(ctx, link, Happened::Orphaned { link_id: &id, why }).await;
        }
        Ok(Action::await_change())
    };
    if let Some((_, owner)) = link_owned_by_another(link, ctx) {
        return orphaned(Orphaned::OwnedBy(&owner)).await;
    }
    if !decide::delete_on_cleanup(link.spec.management_policy, link.spec.deletion_policy) {
        return orphaned(Orphaned::Policy(match link.spec.management_policy {
            ManagementPolicy::Observe => "managementPolicy: Observe",
            ManagementPolicy::Manage => "deletionPolicy: Orphan",
        }))
        .await;
    }
    if link_id.is_none() && create_marker(link).is_none() {
        return Ok(Action::await_change());
    }
    // An app missing from a cache still being filled is not a deleted app.
    super::super::context::filled(&ctx.app_store).await;
    let Some(app) = ctx.app(
        &link.namespace().unwrap_or_default(),
        &link.spec.app_ref.name,
    ) else {
        let id = link_id.as_deref().unwrap_or("(unknown)");
        let why = Orphaned::AppGone(&link.spec.app_ref.name);
        tell(ctx, link, Happened::Orphaned { link_id: id, why }).await;
        return Ok(Action::await_change());
    };
    if is_paused(link) {
        return Err(Error::DeletionBlocked(
            object_key(link),
            format!(
                "remove annotation {PAUSED_ANNOTATION} to let the controller delete the WeCom link"
            ),
        ));
    }
    let client = cleanup_client(link, ctx, &app, link_id.as_deref()).await?;
    let ext = External::for_link(ctx, &client, link);
    let targets: Vec<String> = match link_id {
        Some(id) => vec![id],
        None => {
            let marker = create_marker(link).unwrap_or_default();
            let made = made_by_interrupted(ctx, link, &ext, &marker).await?;
            made.into_iter().map(|l| l.link_id).collect()
        }
    };
    for id in targets {
        if ctx.deleted_links.contains(&id) {
            continue;
        }
        ext.delete(&id).await?;
        ctx.deleted_links.insert(&id);
        tell(ctx, link, Happened::Deleted { link_id: &id }).await;
    }
    Ok(Action::await_change())
}

/// The client that deletes a link in WeCom: the app's, or, when the app's Secret is
/// already gone, the one the controller still holds. Holding none blocks the deletion with
/// a message (status, Event and log line) that says what to do.
async fn cleanup_client(
    link: &AcquisitionLink,
    ctx: &Context,
    app: &WeComApp,
    link_id: Option<&str>,
) -> Result<WeComClient, Error> {
    let err = match ctx.apps.client_for(app).await {
        Ok(client) => return Ok(client),
        Err(err @ (AppError::SecretNotFound { .. } | AppError::SecretKeyMissing { .. })) => err,
        Err(err) => return Err(err.into()),
    };
    if let Some(client) = ctx.apps.held(app) {
        tracing::info!(link = %link.name_any(), %err, "deleting with the credentials the controller still holds");
        return Ok(client);
    }
    let message = deletion_blocked_message(&err.to_string(), link_id);
    // A terminating namespace refuses Events: the log line and status still say it.
    tracing::warn!(link = %link.name_any(), namespace = ?link.namespace(), %message, "deletion blocked");
    tell(ctx, link, Happened::DeletionBlocked { message: &message }).await;
    Err(Error::DeletionBlocked(object_key(link), message))
}
