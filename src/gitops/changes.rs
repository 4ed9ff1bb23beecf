//! What `plan` finds and `apply` does: for each AcquisitionLink read from the files, the
//! WeCom link it stands for and the one call (A3 create, A4 update, or none) that makes
//! WeCom match it - the decisions of the controller's reconcile pass, without a cluster.
//!
//! Without a cluster there is no status to remember link ids, so a document names its link
//! by `spec.linkId`, or else by its exact `linkName` among the app's links (A1 + A2). That
//! match is also what makes `apply` safe to repeat: a link it created is found by name
//! next time. Two WeCom links with one name are an error, never a guess.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::TryStreamExt;
use kube::ResourceExt;

use super::manifest::{Loaded, Manifests, ObjectKey, Origin};
use crate::api::{AcquisitionLink, ChannelUrl, ManagementPolicy, WeComApp};
use crate::defaults::{REQUESTS_PER_MINUTE, WECOM_API_BASE_URL};
use crate::reconcile::plan::{self, DesiredLink, FieldChange};
use crate::wecom::client::{ClientConfig, Secret, WeComClient};
use crate::wecom::retry::RetryPolicy;
use crate::wecom::types::{CreateLinkRequest, RemoteLink, UpdateLinkRequest};

/// What one link needs.
#[derive(Debug, Clone)]
pub enum LinkAction {
    /// No WeCom link matches: A3 with this body.
    Create { request: CreateLinkRequest },
    /// The matched link differs: A4 with the complete desired link.
    Update {
        remote: RemoteLink,
        changes: Vec<FieldChange>,
        request: UpdateLinkRequest,
    },
    /// The matched link equals the spec.
    NoChange { remote: RemoteLink },
    /// `managementPolicy: Observe`: never written; `changes` is the drift, only reported.
    Observe {
        remote: RemoteLink,
        changes: Vec<FieldChange>,
    },
    /// The link cannot be planned; the message says why and what to do.
    Error { message: String },
}

/// The plan of one AcquisitionLink document.
#[derive(Debug, Clone)]
pub struct LinkPlan {
    pub key: ObjectKey,
    pub origin: Origin,
    /// Namespace and name of the WeComApp.
    pub app: (String, String),
    pub channels: Vec<String>,
    pub action: LinkAction,
}

/// One app as WeCom showed it.
#[derive(Debug, Clone)]
pub struct AppSummary {
    pub key: ObjectKey,
    pub base_url: String,
    /// Links in WeCom that no document names; `plan` never touches them.
    pub unmanaged: Vec<RemoteLink>,
}

/// The whole plan: per link, in file order.
pub struct Plan {
    pub links: Vec<LinkPlan>,
    pub apps: Vec<AppSummary>,
    clients: BTreeMap<(String, String), WeComClient>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub create: usize,
    pub update: usize,
    pub unchanged: usize,
    pub observed: usize,
    pub errors: usize,
}

impl Plan {
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for link in &self.links {
            match link.action {
                LinkAction::Create { .. } => counts.create += 1,
                LinkAction::Update { .. } => counts.update += 1,
                LinkAction::NoChange { .. } => counts.unchanged += 1,
                LinkAction::Observe { .. } => counts.observed += 1,
                LinkAction::Error { .. } => counts.errors += 1,
            }
        }
        counts
    }
}

/// How `plan` (and `import`, `export`) reach WeCom.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Replaces every app's `spec.apiBaseUrl` (the simulator's URL).
    pub api_base_url: Option<String>,
    /// The retries of every call. `export` waits out frequency limits longer than `plan`.
    pub retry: RetryPolicy,
}

/// The app of a link, its client and its links in WeCom, or why there is none.
type AppView = Result<(WeComClient, Vec<RemoteLink>, String), String>;

/// Reads the apps' links from WeCom (A1 + A2) and plans every link document.
pub async fn plan(manifests: &Manifests, connection: &Connection) -> Plan {
    let mut views: BTreeMap<(String, String), AppView> = BTreeMap::new();
    for link in &manifests.links {
        let app_key = app_key(&link.object);
        if let std::collections::btree_map::Entry::Vacant(slot) = views.entry(app_key) {
            let view = observe_app(manifests, slot.key(), link, connection).await;
            slot.insert(view);
        }
    }
    let conflicts = name_conflicts(&manifests.links);
    let mut links = Vec::new();
    let mut claimed: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for link in &manifests.links {
        let app_key = app_key(&link.object);
        let action = match (&views[&app_key], conflicts.get(&link.key)) {
            (_, Some(message)) => LinkAction::Error {
                message: message.clone(),
            },
            (Err(message), None) => LinkAction::Error {
                message: message.clone(),
            },
            (Ok((client, remotes, _)), None) => {
                let chosen = plan_link(link, client, remotes, &manifests.links, &app_key).await;
                if let LinkAction::Update { remote, .. }
                | LinkAction::NoChange { remote }
                | LinkAction::Observe { remote, .. } = &chosen
                {
                    claimed
                        .entry(app_key.clone())
                        .or_default()
                        .insert(remote.link_id.clone());
                }
                chosen
            }
        };
        links.push(LinkPlan {
            key: link.key.clone(),
            origin: link.origin.clone(),
            app: app_key.clone(),
            channels: link.object.spec.channels.clone(),
            action,
        });
    }
    let mut apps = Vec::new();
    let mut clients = BTreeMap::new();
    for (key, view) in views {
        if let Ok((client, remotes, base_url)) = view {
            let mine = claimed.remove(&key).unwrap_or_default();
            apps.push(AppSummary {
                key: ObjectKey {
                    kind: "WeComApp".into(),
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                },
                base_url,
                unmanaged: remotes
                    .into_iter()
                    .filter(|r| !mine.contains(&r.link_id))
                    .collect(),
            });
            clients.insert(key, client);
        }
    }
    Plan {
        links,
        apps,
        clients,
    }
}

fn app_key(link: &AcquisitionLink) -> (String, String) {
    (
        link.namespace().unwrap_or_default(),
        link.spec.app_ref.name.clone(),
    )
}

/// Documents of one app that would claim the same WeCom link: the same `linkName` without
/// a `linkId`, or the same `linkId`.
fn name_conflicts(links: &[Loaded<AcquisitionLink>]) -> BTreeMap<ObjectKey, String> {
    let mut groups: BTreeMap<(String, String, String), Vec<&Loaded<AcquisitionLink>>> =
        BTreeMap::new();
    for link in links {
        let (namespace, app) = app_key(&link.object);
        let identity = match &link.object.spec.link_id {
            Some(id) => format!("linkId {id:?}"),
            None => format!("linkName {:?}", link.object.spec.link_name),
        };
        groups
            .entry((namespace, app, identity))
            .or_default()
            .push(link);
    }
    let mut conflicts = BTreeMap::new();
    for ((namespace, app, identity), group) in groups {
        if group.len() < 2 {
            continue;
        }
        let names: Vec<String> = group
            .iter()
            .map(|l| format!("{} ({})", l.key, l.origin))
            .collect();
        let message = format!(
            "{} all have {identity} for WeComApp {namespace}/{app}; without a cluster a link is \
             found by its name, so give each a unique linkName or its own spec.linkId",
            names.join(", ")
        );
        for link in group {
            conflicts.insert(link.key.clone(), message.clone());
        }
    }
    conflicts
}

/// Builds the app's client from the files and lists its links (A1, then A2 for each).
async fn observe_app(
    manifests: &Manifests,
    (namespace, name): &(String, String),
    first_link: &Loaded<AcquisitionLink>,
    connection: &Connection,
) -> AppView {
    let Some(app) = manifests.apps.get(&(namespace.clone(), name.clone())) else {
        return Err(format!(
            "WeComApp {namespace}/{name} (spec.appRef of {}) is not in the files: add its YAML with -f",
            first_link.key
        ));
    };
    let (client, base_url) = client_for(manifests, app, connection)?;
    let remotes = remote_links(&client, &app.key, &base_url).await?;
    Ok((client, remotes, base_url))
}

/// Every link the app sees (A1, then A2 for each). A link deleted between the two calls is
/// left out. The error names the app and what to check.
pub(crate) async fn remote_links(
    client: &WeComClient,
    app: &ObjectKey,
    base_url: &str,
) -> Result<Vec<RemoteLink>, String> {
    let ids: Vec<String> = client.list_links().try_collect().await.map_err(|e| {
        format!(
            "listing the links of {app} at {base_url} failed: {e}; check the app's corpId, \
             Secret and apiBaseUrl"
        )
    })?;
    let mut remotes = Vec::with_capacity(ids.len());
    for id in ids {
        match client.get_link(&id).await {
            Ok(remote) => remotes.push(remote),
            // Deleted between A1 and A2: it is simply not there any more.
            Err(e) if e.errcode().is_some() && !e.is_retryable() => {}
            Err(e) => {
                return Err(format!(
                    "reading link {id} of {app} failed: {e}; run the command again"
                ));
            }
        }
    }
    Ok(remotes)
}

/// The client of one WeComApp from the files: its Secret resolved, the base URL chosen
/// (the flag, else `spec.apiBaseUrl`, else WeCom), its `requestsPerMinute` as the rate cap.
pub(crate) fn client_for(
    manifests: &Manifests,
    app: &Loaded<WeComApp>,
    connection: &Connection,
) -> Result<(WeComClient, String), String> {
    let namespace = app.key.namespace.clone();
    let what = format!("spec.secretRef of {}", app.key);
    let value = secret_in_files(manifests, &namespace, &app.object.spec.secret_ref, &what)?;
    let base_url = connection
        .api_base_url
        .clone()
        .or_else(|| app.object.spec.api_base_url.clone())
        .unwrap_or_else(|| WECOM_API_BASE_URL.to_string());
    let token_source = match &app.object.spec.suite {
        Some(suite) => Some(suite_tokens(manifests, app, &suite.name, &base_url)?),
        None => None,
    };
    let client = WeComClient::with_token_source(
        ClientConfig {
            base_url: base_url.clone(),
            corp_id: app.object.spec.corp_id.clone(),
            secret: value.clone(),
            requests_per_minute: app
                .object
                .spec
                .requests_per_minute
                .unwrap_or(REQUESTS_PER_MINUTE),
            retry: connection.retry.clone(),
            request_timeout: Duration::from_secs(10),
            observer: None,
            scheduler: None,
            app_key: app.key.to_string(),
            limits: Default::default(),
        },
        token_source,
    )
    .map_err(|e| format!("{} ({}): {e}", app.key, app.origin))?;
    Ok((client, base_url))
}

/// One key of a Secret in the files; `what` says who names it.
fn secret_in_files(
    manifests: &Manifests,
    namespace: &str,
    reference: &crate::api::SecretKeyRef,
    what: &str,
) -> Result<Secret, String> {
    let secret = manifests
        .secrets
        .get(&(namespace.to_string(), reference.name.clone()))
        .ok_or_else(|| {
            format!(
                "Secret {namespace}/{} ({what}) is not in the files: add it with -f",
                reference.name
            )
        })?;
    secret
        .object
        .values
        .get(&reference.key)
        .cloned()
        .ok_or_else(|| {
            format!(
                "Secret {namespace}/{} ({}) has no key {:?}, which {what} names",
                reference.name, secret.origin, reference.key
            )
        })
}

/// The corp tokens of a suite-backed app from the files: the WeComSuite, its Secret, and
/// the suite's ticket Secret (`{suite}-suite-ticket`, as the controller keeps it; a ticket
/// is good for 30 minutes). Costs one get_suite_token and one get_corp_token per run.
fn suite_tokens(
    manifests: &Manifests,
    app: &Loaded<WeComApp>,
    suite: &str,
    base_url: &str,
) -> Result<std::sync::Arc<dyn crate::wecom::CorpTokenSource>, String> {
    let namespace = app.key.namespace.clone();
    let found = manifests
        .suites
        .get(&(namespace.clone(), suite.to_string()))
        .ok_or_else(|| {
            format!(
                "WeComSuite {namespace}/{suite} (spec.suite of {}) is not in the files: add it with -f",
                app.key
            )
        })?;
    let what = format!("spec.secretRef of WeComSuite {namespace}/{suite}");
    let suite_secret =
        secret_in_files(manifests, &namespace, &found.object.spec.secret_ref, &what)?;
    let ticket_ref = crate::api::SecretKeyRef {
        name: crate::api::ticket_secret_name(suite),
        key: crate::api::SUITE_TICKET_KEY.into(),
    };
    let ticket = secret_in_files(
        manifests,
        &namespace,
        &ticket_ref,
        "the suite ticket the controller stores; export it with kubectl get secret -o yaml",
    )?;
    let tickets = std::sync::Arc::new(crate::wecom::suite::MemoryTicket::default());
    tickets.set(ticket);
    let client = crate::wecom::suite::SuiteClient::new(
        crate::wecom::suite::SuiteConfig {
            base_url: base_url.to_string(),
            suite_id: found.object.spec.suite_id.clone(),
            suite_secret,
            request_timeout: Duration::from_secs(10),
        },
        tickets,
    )
    .map_err(|e| format!("WeComSuite {namespace}/{suite} ({}): {e}", found.origin))?;
    Ok(std::sync::Arc::new(crate::wecom::suite::SuiteCorpTokens(
        std::sync::Arc::new(client),
    )))
}

/// The decision for one link: match by `spec.linkId`, else by name, then diff.
async fn plan_link(
    link: &Loaded<AcquisitionLink>,
    client: &WeComClient,
    remotes: &[RemoteLink],
    all: &[Loaded<AcquisitionLink>],
    app_key: &(String, String),
) -> LinkAction {
    let spec = &link.object.spec;
    let desired = DesiredLink::from_spec(spec);
    let matched = match &spec.link_id {
        Some(id) => match remotes.iter().find(|r| &r.link_id == id) {
            Some(remote) => remote.clone(),
            // Not listed by this app: ask for it directly before calling it missing.
            None => match client.get_link(id).await {
                Ok(remote) => remote,
                Err(e) => {
                    return LinkAction::Error {
                        message: format!(
                            "spec.linkId {id} is not a link of WeComApp {}/{} ({e}): fix \
                             spec.linkId, or remove it to create a new link",
                            app_key.0, app_key.1
                        ),
                    };
                }
            },
        },
        None => {
            // Links other documents claim by id are not candidates for a name match.
            let named_by_id: BTreeSet<&str> = all
                .iter()
                .filter(|other| app_key_of(other) == *app_key)
                .filter_map(|other| other.object.spec.link_id.as_deref())
                .collect();
            let candidates: Vec<&RemoteLink> = remotes
                .iter()
                .filter(|r| {
                    r.link_name == spec.link_name && !named_by_id.contains(r.link_id.as_str())
                })
                .collect();
            match candidates.as_slice() {
                [] => {
                    return LinkAction::Create {
                        request: desired.create_request(),
                    };
                }
                [one] => (*one).clone(),
                many => {
                    let ids: Vec<&str> = many.iter().map(|r| r.link_id.as_str()).collect();
                    return LinkAction::Error {
                        message: format!(
                            "WeCom has {} links named {:?} in WeComApp {}/{}: {}; set spec.linkId \
                             to the one this document manages, or delete the others in WeCom",
                            many.len(),
                            spec.link_name,
                            app_key.0,
                            app_key.1,
                            ids.join(" and ")
                        ),
                    };
                }
            }
        }
    };
    let changes = plan::diff(&desired, &matched);
    if spec.management_policy == ManagementPolicy::Observe {
        LinkAction::Observe {
            remote: matched,
            changes,
        }
    } else if changes.is_empty() {
        LinkAction::NoChange { remote: matched }
    } else {
        LinkAction::Update {
            request: desired.update_request(&matched.link_id),
            remote: matched,
            changes,
        }
    }
}

fn app_key_of(link: &Loaded<AcquisitionLink>) -> (String, String) {
    app_key(&link.object)
}

/// What `apply` did for one link.
#[derive(Debug, Clone)]
pub struct Applied {
    pub key: ObjectKey,
    pub outcome: Result<AppliedLink, String>,
}

/// A link as it is after `apply`.
#[derive(Debug, Clone)]
pub struct AppliedLink {
    /// `created`, `updated`, `unchanged` or `observed` (never written).
    pub verb: &'static str,
    pub link_id: String,
    pub url: String,
    pub channel_urls: Vec<ChannelUrl>,
}

/// Makes the planned calls, once each. Call only on a plan without errors. A failed call
/// does not stop the others: each link's outcome is reported.
pub async fn apply(plan: &Plan) -> Vec<Applied> {
    let mut results = Vec::new();
    for link in &plan.links {
        let client = plan
            .clients
            .get(&link.app)
            .ok_or_else(|| format!("no WeCom client for WeComApp {}/{}", link.app.0, link.app.1));
        let outcome = match (&link.action, client) {
            (LinkAction::Error { message }, _) => Err(message.clone()),
            (_, Err(message)) => Err(message),
            (LinkAction::Observe { remote, .. }, Ok(_)) => Ok(applied(
                "observed",
                remote.link_id.clone(),
                remote.url.clone(),
                &link.channels,
            )),
            (LinkAction::NoChange { remote }, Ok(_)) => Ok(applied(
                "unchanged",
                remote.link_id.clone(),
                remote.url.clone(),
                &link.channels,
            )),
            (
                LinkAction::Update {
                    remote, request, ..
                },
                Ok(client),
            ) => client
                .update_link(request)
                .await
                .map(|()| {
                    applied(
                        "updated",
                        remote.link_id.clone(),
                        remote.url.clone(),
                        &link.channels,
                    )
                })
                .map_err(|e| {
                    format!(
                        "updating link {} failed: {e}; run plan again to see what WeCom has",
                        remote.link_id
                    )
                }),
            (LinkAction::Create { request }, Ok(client)) => match client.create_link(request).await
            {
                Ok(created) => Ok(applied(
                    "created",
                    created.link_id,
                    created.url,
                    &link.channels,
                )),
                Err(e) if e.errcode().is_some() => Err(format!("creating the link failed: {e}")),
                Err(e) => Err(format!(
                    "creating the link failed: {e}; WeCom may have made it anyway: run plan \
                     again, it finds the link by name"
                )),
            },
        };
        results.push(Applied {
            key: link.key.clone(),
            outcome,
        });
    }
    results
}

fn applied(verb: &'static str, link_id: String, url: String, channels: &[String]) -> AppliedLink {
    AppliedLink {
        verb,
        channel_urls: plan::channel_urls(&url, channels),
        link_id,
        url,
    }
}
