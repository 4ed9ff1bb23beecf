//! The ArgoCD health fixtures come from the real controller: each test drives the
//! controllers (in-process, against the WeCom simulator and the kubesim API emulator) into
//! one state, captures the AcquisitionLink or WeComApp as the API returns it, runs the
//! chart's health.lua on it and checks the health ArgoCD would show.
//!
//! The capture, normalised (link ids, uids, resourceVersions, timestamps and the
//! simulator's address replaced by stable placeholders), must equal the committed fixture
//! `tests/fixtures/argocd/{kind}-{state}-{case}.json`, so the fixtures cannot drift from
//! what the controller writes. After a deliberate change of the controller's output,
//! regenerate them with
//!
//! ```sh
//! WECOM_ACQ_WRITE_FIXTURES=1 cargo test --test argocd_fixtures
//! ```
//!
//! Every fixture in the folder is one of [`CASES`]; a fixture that no run can produce
//! would carry `synthetic` in its name (there is none today).

mod argocd_lua;
mod support;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use regex::Regex;
use serde_json::{Value, json};

use argocd_lua::{expected_state, fixture_names, fixtures_dir, health_of};
use support::{Env, NS, link_condition, link_spec, quiet_cadence, status_link_id};
use wecom_acq::api::{
    AcquisitionLink, AcquisitionLinkSpec, CREATE_PENDING_ANNOTATION, PAUSED_ANNOTATION,
    RemoteDeletePolicy, WeComApp,
};
use wecom_acq::reconcile::plan::DesiredLink;

/// Set to 1 to write the captures as the fixtures instead of comparing them.
const WRITE_ENV: &str = "WECOM_ACQ_WRITE_FIXTURES";
const REGENERATE: &str = "WECOM_ACQ_WRITE_FIXTURES=1 cargo test --test argocd_fixtures";

const APP: &str = "sales-app";
const LINK: &str = "spring-campaign";

/// Every fixture this file captures, one test each.
const CASES: &[&str] = &[
    "app-degraded-credentials-invalid",
    "app-degraded-permission-denied",
    "app-degraded-quota-exhausted",
    "app-degraded-secret-not-found",
    "app-healthy-credentials-ready",
    "app-healthy-quota-low-expiring",
    "app-progressing-new-generation",
    "app-progressing-no-status",
    "app-progressing-retryable-error",
    "link-degraded-app-not-ready",
    "link-degraded-create-incomplete",
    "link-degraded-invalid-spec",
    "link-degraded-link-not-found",
    "link-degraded-permission-denied",
    "link-degraded-quota-exhausted",
    "link-degraded-remote-deleted-adopted",
    "link-degraded-remote-deleted-orphan",
    "link-degraded-wecom-error",
    "link-healthy-app-missing",
    "link-healthy-created",
    "link-healthy-retrying-observe",
    "link-progressing-creating-in-flight",
    "link-progressing-creating-interrupted",
    "link-progressing-deleting-paused",
    "link-progressing-deleting-retrying",
    "link-progressing-edit-retrying",
    "link-progressing-new-generation",
    "link-progressing-no-status",
    "link-progressing-resuming",
    "link-progressing-retryable-create",
    "link-progressing-retrying-after-invalid-spec",
    "link-progressing-stale-invalid-spec",
    "link-suspended-paused-before-create",
    "link-suspended-paused-in-sync",
    "link-suspended-paused-spec-edited",
];

// ---- capture, normalise, compare ------------------------------------------------------

/// The object exactly as the API serves it (no typed round trip that could add defaults
/// or drop fields).
async fn capture<K: Resource<DynamicType = ()>>(env: &Env, name: &str) -> Value {
    let resource = ApiResource::erase::<K>(&());
    let api: kube::Api<DynamicObject> =
        kube::Api::namespaced_with(env.client.clone(), NS, &resource);
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

async fn capture_link(env: &Env) -> Value {
    capture::<AcquisitionLink>(env, LINK).await
}

async fn capture_app(env: &Env) -> Value {
    capture::<WeComApp>(env, APP).await
}

static LINK_ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"cawcd[0-9a-f]{14}").unwrap());
static TIMESTAMP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})").unwrap()
});
static DATE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b\d{4}-\d{2}-\d{2}\b").unwrap());

const PLACEHOLDER_TIME: &str = "2025-01-01T00:00:00Z";
const PLACEHOLDER_DATE: &str = "2025-01-01";
const PLACEHOLDER_UNIX: &str = "1735689600";
const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";
const PLACEHOLDER_RESOURCE_VERSION: &str = "1";
const PLACEHOLDER_SIM_URL: &str = "http://wecom-simulator.test";

/// Replaces what changes from run to run by stable placeholders. Link ids become
/// `cawcd00000000000001`, `...2` in the order they first appear, so a fixture still shows
/// which fields name the same link.
struct Normaliser {
    sim_url: String,
    link_ids: BTreeMap<String, String>,
}

impl Normaliser {
    fn new(env: &Env) -> Self {
        Normaliser {
            sim_url: env.sim.base_url().trim_end_matches('/').to_string(),
            link_ids: BTreeMap::new(),
        }
    }

    fn normalise(mut self, mut object: Value) -> Value {
        let metadata = &mut object["metadata"];
        metadata["uid"] = PLACEHOLDER_UID.into();
        metadata["resourceVersion"] = PLACEHOLDER_RESOURCE_VERSION.into();
        // Who wrote which field says nothing about health, and varies with timing.
        if let Some(meta) = metadata.as_object_mut() {
            meta.remove("managedFields");
        }
        if let Some(pending) = metadata
            .get_mut("annotations")
            .and_then(|a| a.get_mut(CREATE_PENDING_ANNOTATION))
        {
            *pending = PLACEHOLDER_UNIX.into();
        }
        self.walk(&mut object);
        object
    }

    fn walk(&mut self, value: &mut Value) {
        match value {
            Value::String(text) => *text = self.string(text),
            Value::Array(items) => items.iter_mut().for_each(|v| self.walk(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.walk(v)),
            _ => {}
        }
    }

    fn string(&mut self, text: &str) -> String {
        let text = text.replace(&self.sim_url, PLACEHOLDER_SIM_URL);
        let text = LINK_ID.replace_all(&text, |found: &regex::Captures| {
            let next = self.link_ids.len() + 1;
            self.link_ids
                .entry(found[0].to_string())
                .or_insert_with(|| format!("cawcd{next:014}"))
                .clone()
        });
        let text = TIMESTAMP.replace_all(&text, PLACEHOLDER_TIME);
        DATE.replace_all(&text, PLACEHOLDER_DATE).into_owned()
    }
}

/// Where two JSON values differ, one line per leaf.
fn differences(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = e.keys().chain(a.keys()).collect();
            for key in keys {
                let at = format!("{path}.{key}");
                match (e.get(key), a.get(key)) {
                    (Some(e), Some(a)) => differences(&at, e, a, out),
                    (Some(e), None) => out.push(format!("{at}: missing (fixture has {e})")),
                    (None, Some(a)) => out.push(format!("{at}: unexpected {a}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            for i in 0..e.len().max(a.len()) {
                let at = format!("{path}[{i}]");
                match (e.get(i), a.get(i)) {
                    (Some(e), Some(a)) => differences(&at, e, a, out),
                    (Some(e), None) => out.push(format!("{at}: missing (fixture has {e})")),
                    (None, Some(a)) => out.push(format!("{at}: unexpected {a}")),
                    (None, None) => {}
                }
            }
        }
        (e, a) if e != a => out.push(format!("{path}: fixture has {e}, the capture has {a}")),
        _ => {}
    }
}

/// Runs health.lua on the capture, checks the state its fixture name promises (and a
/// part of the message, which shows the branch taken), then writes or compares the
/// fixture.
async fn check(env: &Env, fixture: &str, object: Value, message_contains: &str) {
    assert!(CASES.contains(&fixture), "{fixture} is not listed in CASES");
    let health = health_of(&object);
    assert_eq!(
        health.status,
        expected_state(fixture),
        "{fixture}: {health:?} for the captured object {object:#}"
    );
    assert!(
        health.message.contains(message_contains),
        "{fixture}: message {:?} lacks {message_contains:?}",
        health.message
    );

    let normalised = Normaliser::new(env).normalise(object);
    assert_eq!(
        health_of(&normalised).status,
        health.status,
        "{fixture}: normalising changed the health"
    );
    let path = fixtures_dir().join(format!("{fixture}.json"));
    if std::env::var(WRITE_ENV).as_deref() == Ok("1") {
        let text = serde_json::to_string_pretty(&normalised).unwrap() + "\n";
        std::fs::create_dir_all(fixtures_dir()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let committed: Value = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).unwrap(),
        Err(e) => panic!(
            "{}: {e}; write the fixtures from the controller with `{REGENERATE}`",
            path.display()
        ),
    };
    let mut diff = Vec::new();
    differences("", &committed, &normalised, &mut diff);
    assert!(
        diff.is_empty(),
        "{} differs from what the controller wrote:\n  {}\nIf the controller's output changed on purpose, regenerate the fixtures with `{REGENERATE}` and review the diff.",
        path.display(),
        diff.join("\n  ")
    );
}

// ---- steering helpers ------------------------------------------------------------------

fn campaign_spec() -> AcquisitionLinkSpec {
    let mut spec = link_spec(APP, "Spring campaign", &["zhangsan", "lisi"]);
    spec.range.department_list = vec![2];
    spec.channels = vec!["poster".into()];
    spec
}

/// Simulator, emulator, controllers (nothing due for an hour, so the captured state holds)
/// and a Ready WeComApp.
async fn env_with_app() -> Env {
    let env = Env::start(quiet_cadence()).await;
    env.apply_app_with_secret(APP).await;
    env.wait_app_ready(APP).await;
    env
}

fn is_settled_ready(link: &AcquisitionLink) -> bool {
    let status = link.status.as_ref();
    link_condition(link, "Ready").is_some_and(|(s, _, _)| s == "True")
        && status.and_then(|s| s.observed_generation) == link.metadata.generation
        && status.is_some_and(|s| s.customers.is_some() && s.statistics.is_some())
}

/// Applies `spec` as link [`LINK`] and waits until it is Ready with its customers and
/// statistics (the pass's last write).
async fn ready_link_with(env: &Env, spec: AcquisitionLinkSpec) -> AcquisitionLink {
    env.apply_link(LINK, spec).await;
    env.wait_for(
        LINK,
        "Ready with customers and statistics",
        is_settled_ready,
    )
    .await
}

async fn ready_link(env: &Env) -> AcquisitionLink {
    ready_link_with(env, campaign_spec()).await
}

async fn wait_link_synced(env: &Env, reason: &str, generation: i64) -> AcquisitionLink {
    env.wait_for(
        LINK,
        &format!("Synced=False ({reason}) at generation {generation}"),
        |l: &AcquisitionLink| {
            // The Synced condition carries the generation it describes; status-level
            // observedGeneration stays behind while a retryable failure keeps the new
            // generation from being applied.
            l.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Synced"
                        && c.status == "False"
                        && c.reason == reason
                        && c.observed_generation == Some(generation)
                })
            })
        },
    )
    .await
}

async fn rename_link(env: &Env) {
    env.patch_link_spec(LINK, json!({ "linkName": "Summer campaign" }))
        .await;
}

async fn pause_link(env: &Env) {
    env.annotate_link(LINK, PAUSED_ANNOTATION, Some("true"))
        .await;
}

async fn delete_in_wecom(env: &Env, link_id: &str) {
    env.sim_request(
        reqwest::Method::DELETE,
        &format!("/_sim/links/{link_id}"),
        None,
    )
    .await;
}

// ---- AcquisitionLink: Healthy ----------------------------------------------------------

#[tokio::test]
async fn link_healthy_created() {
    let mut env = env_with_app().await;
    ready_link(&env).await;
    env.stop_controller().await;
    check(
        &env,
        "link-healthy-created",
        capture_link(&env).await,
        "Available: link",
    )
    .await;
}

/// A2 fails retryably on a link that is in sync: Ready stays True, Synced says retrying.
#[tokio::test]
async fn link_healthy_while_observing_is_retried() {
    let mut env = env_with_app().await;
    ready_link(&env).await;
    env.sim_fault(json!({ "api": "get", "errcode": -1, "times": 1000 }))
        .await;
    env.trigger_link_pass(LINK).await;
    wait_link_synced(&env, "RetryableError", 1).await;
    env.stop_controller().await;
    check(
        &env,
        "link-healthy-retrying-observe",
        capture_link(&env).await,
        "Available",
    )
    .await;
}

/// The WeComApp is deleted after the link was made: the link still works in WeCom (Ready
/// stays True); Synced says the controller cannot reach it.
#[tokio::test]
async fn link_healthy_when_its_app_is_gone() {
    let mut env = env_with_app().await;
    ready_link(&env).await;
    env.apps()
        .delete(APP, &DeleteParams::default())
        .await
        .unwrap();
    // The app's in-use finalizer keeps it while the link exists; a person removes it to
    // leave the link without its app.
    env.apps()
        .patch(
            APP,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    support::wait_until("the controller's cache to lose the app", || async {
        env.controller()
            .running
            .context
            .app(NS, APP)
            .is_none()
            .then_some(())
    })
    .await;
    env.trigger_link_pass(LINK).await;
    wait_link_synced(&env, "AppNotReady", 1).await;
    env.stop_controller().await;
    check(
        &env,
        "link-healthy-app-missing",
        capture_link(&env).await,
        "Available",
    )
    .await;
}

// ---- AcquisitionLink: Progressing ------------------------------------------------------

/// Right after `kubectl apply`, before any controller pass.
#[tokio::test]
async fn link_progressing_without_status() {
    let env = Env::without_controller().await;
    env.apply_link(LINK, campaign_spec()).await;
    check(
        &env,
        "link-progressing-no-status",
        capture_link(&env).await,
        "Waiting for the controller to report status",
    )
    .await;
}

/// A3 is on its way: the create-pending marker is written, status not yet.
#[tokio::test]
async fn link_progressing_while_the_create_is_in_flight() {
    let env = env_with_app().await;
    env.sim_fault(json!({ "api": "create_link", "latency_ms": 5000, "times": 1 }))
        .await;
    env.apply_link(LINK, campaign_spec()).await;
    env.wait_for(LINK, "the create-pending marker", |l: &AcquisitionLink| {
        l.annotations().contains_key(CREATE_PENDING_ANNOTATION)
    })
    .await;
    check(
        &env,
        "link-progressing-creating-in-flight",
        capture_link(&env).await,
        "Waiting for the controller to report status",
    )
    .await;
}

/// A create was interrupted (the marker is there, no id): the controller waits out the
/// grace period for the link the interrupted A3 may have made.
#[tokio::test]
async fn link_progressing_after_an_interrupted_create() {
    let mut env = env_with_app().await;
    let mut link = AcquisitionLink::new(LINK, campaign_spec());
    let now = jiff::Timestamp::now().as_second().to_string();
    link.annotations_mut()
        .insert(CREATE_PENDING_ANNOTATION.into(), now);
    env.apply_link_object(link).await;
    env.wait_link_condition(LINK, "Ready", "False", "Creating")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "link-progressing-creating-interrupted",
        capture_link(&env).await,
        "Creating: checking whether an interrupted create made the link",
    )
    .await;
}

/// The spec was edited; the controller has not seen the new generation yet.
#[tokio::test]
async fn link_progressing_after_a_spec_edit() {
    let mut env = env_with_app().await;
    ready_link(&env).await;
    env.stop_controller().await;
    rename_link(&env).await;
    check(
        &env,
        "link-progressing-new-generation",
        capture_link(&env).await,
        "observe generation 2",
    )
    .await;
}

/// InvalidSpec for generation 1, and the user fixed the spec: generation 2 is unobserved.
#[tokio::test]
async fn link_progressing_after_fixing_an_invalid_spec() {
    let mut env = env_with_app().await;
    env.sim_fault(json!({ "api": "create_link", "errcode": 40058, "times": 1 }))
        .await;
    env.apply_link(LINK, campaign_spec()).await;
    env.wait_link_condition(LINK, "Ready", "False", "InvalidSpec")
        .await;
    env.stop_controller().await;
    rename_link(&env).await;
    check(
        &env,
        "link-progressing-stale-invalid-spec",
        capture_link(&env).await,
        "observe generation 2",
    )
    .await;
}

/// The first A3 failed retryably: Synced says so, Ready is not reported yet.
#[tokio::test]
async fn link_progressing_while_a_create_is_retried() {
    let mut env = env_with_app().await;
    env.sim_fault(json!({ "api": "create_link", "errcode": -1, "times": 1000 }))
        .await;
    env.apply_link(LINK, campaign_spec()).await;
    wait_link_synced(&env, "RetryableError", 1).await;
    env.stop_controller().await;
    check(
        &env,
        "link-progressing-retryable-create",
        capture_link(&env).await,
        "RetryableError",
    )
    .await;
}

/// InvalidSpec for generation 1; generation 2's create fails retryably. Ready still names
/// generation 1's terminal reason, which no longer holds.
#[tokio::test]
async fn link_progressing_while_a_fixed_spec_is_retried() {
    let mut env = env_with_app().await;
    env.sim_fault(json!({ "api": "create_link", "errcode": 40058, "times": 1 }))
        .await;
    env.apply_link(LINK, campaign_spec()).await;
    env.wait_link_condition(LINK, "Ready", "False", "InvalidSpec")
        .await;
    env.sim_fault(json!({ "api": "create_link", "errcode": -1, "times": 1000 }))
        .await;
    rename_link(&env).await;
    wait_link_synced(&env, "RetryableError", 2).await;
    env.stop_controller().await;
    check(
        &env,
        "link-progressing-retrying-after-invalid-spec",
        capture_link(&env).await,
        "RetryableError",
    )
    .await;
}

/// The spec was edited and the pass that saw it could not reach WeCom: status observed
/// generation 2, but Ready=True still describes generation 1.
#[tokio::test]
async fn link_progressing_while_an_edit_is_retried() {
    let mut env = env_with_app().await;
    ready_link(&env).await;
    env.sim_fault(json!({ "api": "get", "errcode": -1, "times": 1000 }))
        .await;
    rename_link(&env).await;
    wait_link_synced(&env, "RetryableError", 2).await;
    env.stop_controller().await;
    check(
        &env,
        "link-progressing-edit-retrying",
        capture_link(&env).await,
        "Waiting for the controller to apply generation 2; RetryableError",
    )
    .await;
}

/// The pause annotation was removed; the controller has not passed since.
#[tokio::test]
async fn link_progressing_when_the_pause_ends() {
    let mut env = env_with_app().await;
    let mut link = AcquisitionLink::new(LINK, campaign_spec());
    link.annotations_mut()
        .insert(PAUSED_ANNOTATION.into(), "true".into());
    env.apply_link_object(link).await;
    env.wait_link_condition(LINK, "Ready", "False", "Paused")
        .await;
    env.stop_controller().await;
    env.annotate_link(LINK, PAUSED_ANNOTATION, None).await;
    check(
        &env,
        "link-progressing-resuming",
        capture_link(&env).await,
        "Resuming",
    )
    .await;
}

/// `kubectl delete` on a paused link: the finalizer holds it until the pause ends.
#[tokio::test]
async fn link_progressing_while_a_pause_blocks_deletion() {
    let mut env = env_with_app().await;
    ready_link(&env).await;
    pause_link(&env).await;
    wait_link_synced(&env, "Paused", 1).await;
    env.delete_link(LINK).await;
    env.wait_for(LINK, "deletion to start", |l: &AcquisitionLink| {
        l.metadata.deletion_timestamp.is_some()
    })
    .await;
    env.trigger_link_pass(LINK).await;
    env.stop_controller().await;
    check(
        &env,
        "link-progressing-deleting-paused",
        capture_link(&env).await,
        "Deleting: blocked by annotation acquisition.wecom.dev/paused",
    )
    .await;
}

/// `kubectl delete` while A5 fails retryably: the finalizer holds the object.
#[tokio::test]
async fn link_progressing_while_deletion_is_retried() {
    let mut env = env_with_app().await;
    ready_link(&env).await;
    env.sim_fault(json!({ "api": "delete_link", "errcode": -1, "times": 1000 }))
        .await;
    env.delete_link(LINK).await;
    support::wait_until("an A5 attempt", || async {
        (env.sim_call_count("delete_link").await > 0).then_some(())
    })
    .await;
    // The refused A5 is reported in status after the call: wait for that write, not only
    // for the call, or a busy machine captures the object before it.
    env.wait_link_condition(LINK, "Ready", "False", "Deleting")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "link-progressing-deleting-retrying",
        capture_link(&env).await,
        "Deleting: waiting for the controller",
    )
    .await;
}

// ---- AcquisitionLink: Degraded ---------------------------------------------------------

/// A3 refused with `errcode`; the controller waits for a spec change (or, for an error
/// about the app such as 48002, asks again with a back-off).
async fn refused_create(errcode: i64, reason: &str, fixture: &str) {
    let mut env = env_with_app().await;
    env.sim_fault(json!({ "api": "create_link", "errcode": errcode, "times": 1000 }))
        .await;
    env.apply_link(LINK, campaign_spec()).await;
    env.wait_link_condition(LINK, "Ready", "False", reason)
        .await;
    env.stop_controller().await;
    check(&env, fixture, capture_link(&env).await, reason).await;
}

#[tokio::test]
async fn link_degraded_by_invalid_parameter_40058() {
    refused_create(40058, "InvalidSpec", "link-degraded-invalid-spec").await;
}

#[tokio::test]
async fn link_degraded_by_no_permission_48002() {
    refused_create(48002, "AppNotReady", "link-degraded-permission-denied").await;
}

/// An errcode the controller does not know (47001): terminal, reported as WeComError.
#[tokio::test]
async fn link_degraded_by_an_unknown_errcode() {
    refused_create(47001, "WeComError", "link-degraded-wecom-error").await;
}

#[tokio::test]
async fn link_degraded_when_deleted_in_wecom_with_orphan() {
    let mut env = env_with_app().await;
    let mut spec = campaign_spec();
    spec.on_remote_delete = RemoteDeletePolicy::Orphan;
    let link = ready_link_with(&env, spec).await;
    delete_in_wecom(&env, &status_link_id(&link)).await;
    env.trigger_link_pass(LINK).await;
    env.wait_link_condition(LINK, "Ready", "False", "RemoteDeleted")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "link-degraded-remote-deleted-orphan",
        capture_link(&env).await,
        "onRemoteDelete is Orphan",
    )
    .await;
}

/// An adopted link (spec.linkId) is never recreated, whatever onRemoteDelete says (here
/// the default, Recreate).
#[tokio::test]
async fn link_degraded_when_an_adopted_link_is_deleted_in_wecom() {
    let mut env = env_with_app().await;
    let made_by_hand = env
        .wecom_client()
        .create_link(&DesiredLink::from_spec(&campaign_spec()).create_request())
        .await
        .unwrap();
    let mut spec = campaign_spec();
    spec.link_id = Some(made_by_hand.link_id.clone());
    assert_eq!(spec.on_remote_delete, RemoteDeletePolicy::Recreate);
    ready_link_with(&env, spec).await;
    delete_in_wecom(&env, &made_by_hand.link_id).await;
    env.trigger_link_pass(LINK).await;
    env.wait_link_condition(LINK, "Ready", "False", "RemoteDeleted")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "link-degraded-remote-deleted-adopted",
        capture_link(&env).await,
        "the link was adopted",
    )
    .await;
}

/// spec.linkId names a link the app's corp does not have: nothing to adopt, nothing is
/// created.
#[tokio::test]
async fn link_degraded_when_spec_link_id_is_not_the_apps() {
    let mut env = env_with_app().await;
    let mut spec = campaign_spec();
    spec.link_id = Some("cawcdnosuchlink0001".into());
    env.apply_link(LINK, spec).await;
    env.wait_link_condition(LINK, "Ready", "False", "LinkNotFound")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "link-degraded-link-not-found",
        capture_link(&env).await,
        "is not a link of WeComApp",
    )
    .await;
}

/// An interrupted create (marker, no id) and two links in WeCom that it may have made.
#[tokio::test]
async fn link_degraded_with_two_candidates_after_an_interrupted_create() {
    let mut env = env_with_app().await;
    let wecom = env.wecom_client();
    let request = DesiredLink::from_spec(&campaign_spec()).create_request();
    wecom.create_link(&request).await.unwrap();
    wecom.create_link(&request).await.unwrap();
    let mut link = AcquisitionLink::new(LINK, campaign_spec());
    let since = (jiff::Timestamp::now().as_second() - 5).to_string();
    link.annotations_mut()
        .insert(CREATE_PENDING_ANNOTATION.into(), since);
    env.apply_link_object(link).await;
    env.wait_link_condition(LINK, "Ready", "False", "CreateIncomplete")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "link-degraded-create-incomplete",
        capture_link(&env).await,
        "several candidate links",
    )
    .await;
}

#[tokio::test]
async fn link_degraded_when_the_quota_is_exhausted() {
    let mut env = Env::start(quiet_cadence()).await;
    env.sim_set_quota(0).await;
    env.apply_app_with_secret(APP).await;
    env.wait_app_condition(APP, "QuotaExhausted", "True", "BalanceExhausted")
        .await;
    support::wait_until("the controller's cache to see QuotaExhausted", || async {
        env.controller()
            .running
            .context
            .app(NS, APP)
            .and_then(|a| a.status.clone())
            .is_some_and(|s| s.quota.is_some_and(|q| q.balance == 0))
            .then_some(())
    })
    .await;
    env.apply_link(LINK, campaign_spec()).await;
    env.wait_link_condition(LINK, "Ready", "False", "QuotaExhausted")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "link-degraded-quota-exhausted",
        capture_link(&env).await,
        "QuotaExhausted",
    )
    .await;
}

/// No link yet and the WeComApp does not exist (a typo in spec.appRef, or the app not
/// applied): nothing in the link gets it further.
#[tokio::test]
async fn link_degraded_when_its_app_is_missing() {
    let mut env = Env::start(quiet_cadence()).await;
    env.apply_link(LINK, campaign_spec()).await;
    env.wait_link_condition(LINK, "Ready", "False", "AppNotReady")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "link-degraded-app-not-ready",
        capture_link(&env).await,
        "AppNotReady: WeComApp default/sales-app not found",
    )
    .await;
}

// ---- AcquisitionLink: Suspended --------------------------------------------------------

#[tokio::test]
async fn link_suspended_before_it_is_created() {
    let mut env = env_with_app().await;
    let mut link = AcquisitionLink::new(LINK, campaign_spec());
    link.annotations_mut()
        .insert(PAUSED_ANNOTATION.into(), "true".into());
    env.apply_link_object(link).await;
    env.wait_link_condition(LINK, "Ready", "False", "Paused")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "link-suspended-paused-before-create",
        capture_link(&env).await,
        "Paused by annotation",
    )
    .await;
}

#[tokio::test]
async fn link_suspended_in_sync() {
    let mut env = env_with_app().await;
    ready_link(&env).await;
    pause_link(&env).await;
    wait_link_synced(&env, "Paused", 1).await;
    env.stop_controller().await;
    check(
        &env,
        "link-suspended-paused-in-sync",
        capture_link(&env).await,
        "Paused by annotation",
    )
    .await;
}

/// Paused, then edited: the difference is reported and not written to WeCom.
#[tokio::test]
async fn link_suspended_with_a_spec_edit_held_back() {
    let mut env = env_with_app().await;
    ready_link(&env).await;
    pause_link(&env).await;
    wait_link_synced(&env, "Paused", 1).await;
    rename_link(&env).await;
    env.wait_for(LINK, "Ready=False (Paused) at generation 2", |l| {
        link_condition(l, "Ready").is_some_and(|(s, r, _)| s == "False" && r == "Paused")
            && l.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
    })
    .await;
    env.stop_controller().await;
    check(
        &env,
        "link-suspended-paused-spec-edited",
        capture_link(&env).await,
        "Paused by annotation",
    )
    .await;
}

// ---- WeComApp --------------------------------------------------------------------------

#[tokio::test]
async fn app_healthy() {
    let mut env = env_with_app().await;
    env.stop_controller().await;
    check(
        &env,
        "app-healthy-credentials-ready",
        capture_app(&env).await,
        "CredentialsReady",
    )
    .await;
}

/// Low quota expiring soon is a warning (conditions and Events), not a failure.
#[tokio::test]
async fn app_healthy_with_low_quota_expiring_soon() {
    let mut env = Env::start(quiet_cadence()).await;
    let now = env.sim_state().await["now"].as_i64().unwrap();
    env.sim_request(
        reqwest::Method::PUT,
        "/_sim/quota",
        Some(json!({ "batches": [{ "balance": 10, "expire_date": now + 3 * 86_400 }] })),
    )
    .await;
    env.apply_app_with_secret(APP).await;
    env.wait_app_condition(APP, "QuotaExpiringSoon", "True", "BatchExpiring")
        .await;
    env.stop_controller().await;
    let app = capture_app(&env).await;
    assert!(
        app["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "QuotaLow" && c["status"] == "True"),
        "{app:#}"
    );
    check(
        &env,
        "app-healthy-quota-low-expiring",
        app,
        "CredentialsReady",
    )
    .await;
}

#[tokio::test]
async fn app_progressing_without_status() {
    let env = Env::without_controller().await;
    env.apply_app_with_secret(APP).await;
    check(
        &env,
        "app-progressing-no-status",
        capture_app(&env).await,
        "Waiting for the controller to report status",
    )
    .await;
}

#[tokio::test]
async fn app_progressing_after_a_spec_edit() {
    let mut env = env_with_app().await;
    env.stop_controller().await;
    env.apps()
        .patch(
            APP,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "requestsPerMinute": 300 } })),
        )
        .await
        .unwrap();
    check(
        &env,
        "app-progressing-new-generation",
        capture_app(&env).await,
        "observe generation 2",
    )
    .await;
}

#[tokio::test]
async fn app_progressing_while_the_quota_check_is_retried() {
    let mut env = Env::start(quiet_cadence()).await;
    env.sim_fault(json!({ "api": "customer_acquisition_quota", "errcode": -1, "times": 1000 }))
        .await;
    env.apply_app_with_secret(APP).await;
    env.wait_app_condition(APP, "Ready", "False", "RetryableError")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "app-progressing-retryable-error",
        capture_app(&env).await,
        "RetryableError",
    )
    .await;
}

#[tokio::test]
async fn app_degraded_without_its_secret() {
    let mut env = Env::start(quiet_cadence()).await;
    env.apply_app(APP, "sales-app-secret").await;
    env.wait_app_condition(APP, "Ready", "False", "SecretNotFound")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "app-degraded-secret-not-found",
        capture_app(&env).await,
        "SecretNotFound",
    )
    .await;
}

#[tokio::test]
async fn app_degraded_with_a_refused_secret() {
    let mut env = Env::start(quiet_cadence()).await;
    env.apply_secret(
        "sales-app-secret",
        &[(support::SECRET_KEY, "not-the-secret")],
    )
    .await;
    env.apply_app(APP, "sales-app-secret").await;
    env.wait_app_condition(APP, "Ready", "False", "CredentialsInvalid")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "app-degraded-credentials-invalid",
        capture_app(&env).await,
        "CredentialsInvalid",
    )
    .await;
}

/// The secret works but the app may not call the acquisition APIs (48002 on A8).
#[tokio::test]
async fn app_degraded_without_permission() {
    let mut env = Env::start(quiet_cadence()).await;
    env.sim_fault(json!({ "api": "customer_acquisition_quota", "errcode": 48002, "times": 1000 }))
        .await;
    env.apply_app_with_secret(APP).await;
    env.wait_app_condition(APP, "Ready", "False", "PermissionDenied")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "app-degraded-permission-denied",
        capture_app(&env).await,
        "PermissionDenied",
    )
    .await;
}

/// Ready (the credentials work) but no quota left: no link can be created.
#[tokio::test]
async fn app_degraded_when_the_quota_is_exhausted() {
    let mut env = env_with_app().await;
    env.sim_set_quota(0).await;
    env.refresh_app_quota(APP).await;
    env.wait_app_condition(APP, "QuotaExhausted", "True", "BalanceExhausted")
        .await;
    env.stop_controller().await;
    check(
        &env,
        "app-degraded-quota-exhausted",
        capture_app(&env).await,
        "QuotaExhausted",
    )
    .await;
}

// ---- the folder ---------------------------------------------------------------------------

/// The folder holds the captured cases and nothing else (a synthetic fixture would say so
/// in its name), so no stale hand-written fixture survives a change of the controller.
#[test]
fn fixture_folder_holds_exactly_the_captured_cases() {
    if std::env::var(WRITE_ENV).as_deref() == Ok("1") {
        return;
    }
    let on_disk: Vec<String> = fixture_names()
        .into_iter()
        .filter(|name| !name.contains("synthetic"))
        .collect();
    let mut cases: Vec<String> = CASES.iter().map(|c| c.to_string()).collect();
    cases.sort();
    assert_eq!(
        on_disk, cases,
        "tests/fixtures/argocd/ differs from the cases of tests/argocd_fixtures.rs; delete stale fixtures and run `{REGENERATE}`"
    );
}
