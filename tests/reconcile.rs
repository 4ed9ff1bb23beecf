//! The reconcilers of both kinds against the WeCom simulator over HTTP and the kubesim
//! Kubernetes API emulator, run in-process by `controller::start`: what each pass does to
//! WeCom (read from the simulator's `/_sim/calls` and `/_sim/state`) and what it reports
//! (status, conditions, annotations, finalizers and Events).

mod support;

use std::time::Duration;

use kube::ResourceExt;
use serde_json::json;
use support::{Env, NS, fast_cadence, link_condition, link_spec, quiet_cadence, status_link_id};
use wecom_acq::api::{
    AcquisitionLink, CREATE_PENDING_ANNOTATION, LINK_FINALIZER, LINK_ID_ANNOTATION,
    PAUSED_ANNOTATION,
};

const KIND: &str = "AcquisitionLink";

/// An env with a working app named `app`.
async fn env_with_app(cadence: wecom_acq::reconcile::context::Cadence) -> Env {
    let env = Env::start(cadence).await;
    env.apply_app_with_secret("app").await;
    env.wait_app_ready("app").await;
    env
}

#[tokio::test]
async fn creates_link_and_reports_it() {
    let env = env_with_app(fast_cadence()).await;
    let mut spec = link_spec("app", "Spring sale", &["zhangsan", "lisi"]);
    spec.channels = vec!["ad-1".into(), "朋友圈".into()];
    env.apply_link("spring", spec).await;

    let link = env.wait_link_ready("spring").await;
    let status = link.status.clone().unwrap();
    let link_id = status_link_id(&link);
    let url = status.url.clone().expect("status.url");
    assert!(url.starts_with("https://"), "{url}");
    assert_eq!(
        link.annotations().get(LINK_ID_ANNOTATION),
        Some(&link_id),
        "the id is also in the annotation"
    );
    assert!(!link.annotations().contains_key(CREATE_PENDING_ANNOTATION));
    assert!(link.finalizers().contains(&LINK_FINALIZER.to_string()));
    assert_eq!(
        link_condition(&link, "Synced").map(|c| c.0),
        Some("True".into())
    );
    assert_eq!(status.channel_urls.len(), 2);
    for channel in &status.channel_urls {
        assert!(channel.url.starts_with(&url));
        assert!(channel.url.contains("customer_channel="), "{}", channel.url);
        assert!(
            channel
                .scheme_url
                .starts_with("weixin://biz/ww/profile/https%3A%2F%2F"),
            "{}",
            channel.scheme_url
        );
    }

    let remote = env.sim_link(&link_id).await.expect("link exists in WeCom");
    assert_eq!(remote["link_name"], "Spring sale");
    assert_eq!(remote["url"], url.as_str());
    assert_eq!(env.sim_links().await.len(), 1);
    assert_eq!(env.sim_call_count("create_link").await, 1);

    let created = env.wait_event(KIND, "spring", "Created").await;
    assert!(created.note.unwrap_or_default().contains(&link_id));

    // Nothing the controller publishes carries the app secret.
    let published = format!(
        "{} {} {}",
        serde_json::to_string(&env.get_link("spring").await).unwrap(),
        serde_json::to_string(&env.get_app("app").await).unwrap(),
        serde_json::to_string(&env.events_of(KIND, "spring").await).unwrap()
    );
    assert!(!published.contains(wecom_acq::sim::DEFAULT_SECRET));
    assert!(
        !env.controller()
            .metrics
            .render()
            .contains(wecom_acq::sim::DEFAULT_SECRET)
    );
}

#[tokio::test]
async fn pass_on_link_in_sync_changes_nothing() {
    let env = env_with_app(quiet_cadence()).await;
    env.apply_link("steady", link_spec("app", "Steady", &["zhangsan"]))
        .await;
    env.wait_link_ready("steady").await;
    // The echo of the requested-at annotation changes status once; do it first.
    env.request_reconcile("steady", "first").await;
    let echoed = env
        .wait_for(
            "steady",
            "requested-at echoed in status",
            |l: &AcquisitionLink| {
                l.status
                    .as_ref()
                    .and_then(|s| s.last_handled_reconcile_at.as_deref())
                    == Some("first")
            },
        )
        .await;
    let mutating = env.mutating_calls().await;
    let gets = env.sim_call_count("get").await;

    for _ in 0..3 {
        env.trigger_link_pass("steady").await;
    }
    let after = env.get_link("steady").await;
    assert_eq!(env.mutating_calls().await, mutating, "no A3/A4/A5 at rest");
    assert!(
        env.sim_call_count("get").await >= gets + 3,
        "every pass observed the link (A2)"
    );
    assert_eq!(
        after.resource_version(),
        echoed.resource_version(),
        "no status write for a pass that found nothing to do"
    );
}

#[tokio::test]
async fn drift_is_corrected_with_the_complete_range() {
    let env = env_with_app(quiet_cadence()).await;
    let mut spec = link_spec("app", "Drifting", &["zhangsan", "lisi"]);
    spec.range.department_list = vec![2];
    env.apply_link("drift", spec).await;
    let link_id = status_link_id(&env.wait_link_ready("drift").await);

    // A console edit changes the user list only; the department list still matches.
    env.sim_request(
        reqwest::Method::PATCH,
        &format!("/_sim/links/{link_id}"),
        Some(json!({ "link_name": "edited in console", "range": { "user_list": ["wangwu"], "department_list": [2] } })),
    )
    .await;
    env.trigger_link_pass("drift").await;
    let event = env.wait_event(KIND, "drift", "DriftCorrected").await;
    assert!(event.note.unwrap_or_default().contains("range"));

    let remote = env.sim_link(&link_id).await.expect("link still exists");
    assert_eq!(remote["link_name"], "Drifting");
    let mut users: Vec<String> =
        serde_json::from_value(remote["range"]["user_list"].clone()).unwrap();
    users.sort();
    assert_eq!(users, ["lisi", "zhangsan"]);
    assert_eq!(
        remote["range"]["department_list"],
        json!([2]),
        "A4 carried the whole range, not only the list that drifted"
    );
    assert_eq!(env.sim_call_count("update_link").await, 1);
    assert_eq!(env.sim_call_count("create_link").await, 1);
    let link = env.get_link("drift").await;
    assert_eq!(status_link_id(&link), link_id);
    assert_eq!(link_condition(&link, "Ready").unwrap().0, "True");
}

#[tokio::test]
async fn spec_edit_updates_the_link() {
    let env = env_with_app(quiet_cadence()).await;
    env.apply_link("edit", link_spec("app", "Before", &["zhangsan"]))
        .await;
    let link_id = status_link_id(&env.wait_link_ready("edit").await);

    env.patch_link_spec(
        "edit",
        json!({ "linkName": "After", "range": { "userList": ["zhangsan", "wangwu"] }, "skipVerify": false }),
    )
    .await;
    let link = env.wait_link_ready("edit").await;
    assert_eq!(link.metadata.generation, Some(2));
    assert_eq!(status_link_id(&link), link_id, "an edit keeps the link");
    env.wait_event(KIND, "edit", "Updated").await;

    let remote = env.sim_link(&link_id).await.unwrap();
    assert_eq!(remote["link_name"], "After");
    assert_eq!(remote["skip_verify"], false);
    let mut users: Vec<String> =
        serde_json::from_value(remote["range"]["user_list"].clone()).unwrap();
    users.sort();
    assert_eq!(users, ["wangwu", "zhangsan"]);
    assert_eq!(env.sim_call_count("update_link").await, 1);
    assert_eq!(env.sim_call_count("create_link").await, 1);
}

#[tokio::test]
async fn delete_policy_delete_removes_the_wecom_link() {
    let env = env_with_app(quiet_cadence()).await;
    env.apply_link("doomed", link_spec("app", "Doomed", &["zhangsan"]))
        .await;
    let link_id = status_link_id(&env.wait_link_ready("doomed").await);

    env.delete_link("doomed").await;
    env.wait_link_gone("doomed").await;
    assert_eq!(env.sim_call_count("delete_link").await, 1);
    assert!(env.sim_link(&link_id).await.is_none(), "A5 deleted it");
    let deleted = env.wait_event(KIND, "doomed", "Deleted").await;
    assert!(deleted.note.unwrap_or_default().contains(&link_id));
}

#[tokio::test]
async fn delete_policy_orphan_leaves_the_wecom_link() {
    let env = env_with_app(quiet_cadence()).await;
    let mut spec = link_spec("app", "Kept", &["zhangsan"]);
    spec.deletion_policy = wecom_acq::api::DeletionPolicy::Orphan;
    env.apply_link("kept", spec).await;
    let link_id = status_link_id(&env.wait_link_ready("kept").await);

    env.delete_link("kept").await;
    env.wait_link_gone("kept").await;
    assert_eq!(env.sim_call_count("delete_link").await, 0);
    assert!(
        env.sim_link(&link_id).await.is_some(),
        "the link stays in WeCom"
    );
    env.wait_event(KIND, "kept", "Orphaned").await;
}

#[tokio::test]
async fn remote_delete_with_recreate_makes_a_new_link() {
    let env = env_with_app(quiet_cadence()).await;
    let mut spec = link_spec("app", "Phoenix", &["zhangsan"]);
    spec.channels = vec!["qr".into()];
    env.apply_link("phoenix", spec).await;
    let first = env.wait_link_ready("phoenix").await;
    let old_id = status_link_id(&first);
    let old_url = first.status.as_ref().unwrap().url.clone().unwrap();

    let versions = env.record_link_versions("phoenix");
    env.sim_request(
        reqwest::Method::DELETE,
        &format!("/_sim/links/{old_id}"),
        None,
    )
    .await;
    env.trigger_link_pass("phoenix").await;
    let link = env
        .wait_for("phoenix", "a new link id", |l: &AcquisitionLink| {
            l.status
                .as_ref()
                .and_then(|s| s.link_id.as_deref())
                .is_some_and(|id| id != old_id)
                && link_condition(l, "Ready").is_some_and(|c| c.0 == "True")
        })
        .await;
    let status = link.status.clone().unwrap();
    let new_id = status.link_id.clone().unwrap();
    let new_url = status.url.clone().unwrap();
    assert_ne!(new_url, old_url);
    assert!(
        status.channel_urls[0].url.starts_with(&new_url),
        "channel URLs follow the new link"
    );
    assert_eq!(link.annotations().get(LINK_ID_ANNOTATION), Some(&new_id));

    let recreated = env.wait_event(KIND, "phoenix", "Recreated").await;
    assert_eq!(recreated.type_.as_deref(), Some("Warning"));
    let note = recreated.note.unwrap_or_default();
    assert!(note.contains(&old_url) && note.contains(&new_url), "{note}");
    let links = env.sim_links().await;
    assert_eq!(links.len(), 1);
    assert_eq!(links[0]["link_id"], new_id.as_str());
    assert_eq!(env.sim_call_count("create_link").await, 2);
    // No version of the object named the new link with the old link's conditions.
    for version in versions.versions() {
        let status = version.status.clone().unwrap_or_default();
        if status.link_id.as_deref() == Some(new_id.as_str()) {
            let ready = link_condition(&version, "Ready").unwrap();
            assert!(
                ready.2.contains(&new_id),
                "status names {new_id} but says {ready:?}"
            );
        }
    }
}

#[tokio::test]
async fn remote_delete_with_orphan_stops() {
    let env = env_with_app(quiet_cadence()).await;
    let mut spec = link_spec("app", "Gone", &["zhangsan"]);
    spec.on_remote_delete = wecom_acq::api::RemoteDeletePolicy::Orphan;
    env.apply_link("gone", spec).await;
    let link_id = status_link_id(&env.wait_link_ready("gone").await);

    env.sim_request(
        reqwest::Method::DELETE,
        &format!("/_sim/links/{link_id}"),
        None,
    )
    .await;
    env.trigger_link_pass("gone").await;
    let link = env
        .wait_link_condition("gone", "Ready", "False", "RemoteDeleted")
        .await;
    assert_eq!(link_condition(&link, "Synced").unwrap().1, "RemoteDeleted");
    env.wait_event(KIND, "gone", "RemoteDeleted").await;
    let calls = env.sim_calls().await;
    for _ in 0..2 {
        env.trigger_link_pass("gone").await;
    }
    assert_eq!(env.sim_call_count("create_link").await, 1, "no recreate");
    assert_eq!(
        env.sim_calls().await,
        calls,
        "no WeCom call at all once RemoteDeleted"
    );
    assert!(env.sim_links().await.is_empty());
}

#[tokio::test]
async fn create_interrupted_before_the_id_is_written_adopts_the_one_link() {
    let mut env = env_with_app(quiet_cadence()).await;
    // A3 takes a while, so the Kubernetes writes can be made to fail while it runs.
    env.sim_fault(json!({ "api": "create_link", "latency_ms": 1500, "times": 1 }))
        .await;
    env.apply_link("fragile", link_spec("app", "Fragile", &["zhangsan"]))
        .await;
    env.wait_for(
        "fragile",
        "the create-pending marker",
        |l: &AcquisitionLink| l.annotations().contains_key(CREATE_PENDING_ANNOTATION),
    )
    .await;
    env.faults()
        .fail_next_writes("acquisitionlinks", 10_000, 500);
    support::wait_until("A3 to make the link", || async {
        (env.sim_links().await.len() == 1).then_some(())
    })
    .await;
    // Let the pass fail to record the id, then stop this controller: a crash.
    support::wait_until("the pass to fail", || async {
        (env.controller().passes(KIND) > 0
            && env
                .controller()
                .metrics
                .reconciles
                .get_or_create(&wecom_acq::metrics::ReconcileLabels {
                    kind: KIND.into(),
                    result: "kube".into(),
                })
                .get()
                > 0)
        .then_some(())
    })
    .await;
    env.stop_controller().await;
    env.faults().clear();

    let stranded = env.get_link("fragile").await;
    assert!(
        stranded
            .annotations()
            .contains_key(CREATE_PENDING_ANNOTATION)
    );
    assert!(!stranded.annotations().contains_key(LINK_ID_ANNOTATION));
    assert!(
        stranded
            .status
            .as_ref()
            .and_then(|s| s.link_id.as_ref())
            .is_none()
    );

    env.start_controller(quiet_cadence()).await;
    let link = env.wait_link_ready("fragile").await;
    let links = env.sim_links().await;
    assert_eq!(links.len(), 1, "exactly one link exists: {links:#?}");
    assert_eq!(links[0]["link_id"], status_link_id(&link).as_str());
    assert_eq!(env.sim_call_count("create_link").await, 1);
    assert!(!link.annotations().contains_key(CREATE_PENDING_ANNOTATION));
    assert_eq!(
        link.annotations().get(LINK_ID_ANNOTATION),
        Some(&status_link_id(&link))
    );
    env.wait_event(KIND, "fragile", "Adopted").await;
}

/// Two links in WeCom that match what an interrupted create of object `twin` (marker
/// already set) would have made, and the object. Returns the two link ids.
async fn twin_candidates(env: &Env) -> (String, String) {
    let wecom = env.wecom_client();
    let desired = wecom_acq::reconcile::plan::DesiredLink::from_spec(&link_spec(
        "app",
        "Twin",
        &["zhangsan"],
    ));
    let a = wecom.create_link(&desired.create_request()).await.unwrap();
    let b = wecom.create_link(&desired.create_request()).await.unwrap();
    let mut link = AcquisitionLink::new("twin", link_spec("app", "Twin", &["zhangsan"]));
    let since = (jiff::Timestamp::now().as_second() - 5).to_string();
    link.annotations_mut()
        .insert(CREATE_PENDING_ANNOTATION.into(), since);
    env.apply_link_object(link).await;
    (a.link_id, b.link_id)
}

#[tokio::test]
async fn several_candidates_after_an_interrupted_create_stop_all_writes() {
    let env = env_with_app(quiet_cadence()).await;
    let (a, b) = twin_candidates(&env).await;
    let link = env
        .wait_link_condition("twin", "Synced", "False", "CreateIncomplete")
        .await;
    let message = link_condition(&link, "Synced").unwrap().2;
    assert!(message.contains(&a) && message.contains(&b), "{message}");
    let event = env.wait_event(KIND, "twin", "CreateIncomplete").await;
    let note = event.note.unwrap_or_default();
    assert!(note.contains(&a) && note.contains(&b), "{note}");
    let version = link.resource_version();
    for _ in 0..2 {
        env.trigger_link_pass("twin").await;
    }
    assert_eq!(
        env.mutating_calls().await,
        2,
        "no WeCom write but the two creates made by hand, until a person decides"
    );
    assert_eq!(env.sim_links().await.len(), 2);
    let again = env.get_link("twin").await;
    assert_eq!(again.resource_version(), version, "same outcome, no write");
    let events: i32 = env
        .events_of(KIND, "twin")
        .await
        .iter()
        .filter(|e| e.reason.as_deref() == Some("CreateIncomplete"))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum();
    assert_eq!(events, 1, "one Event, not one per pass");

    // The person keeps one: the object adopts it.
    env.patch_link_spec("twin", json!({ "linkId": a })).await;
    let link = env.wait_link_ready("twin").await;
    assert_eq!(status_link_id(&link), a);
    assert!(!link.annotations().contains_key(CREATE_PENDING_ANNOTATION));
    assert_eq!(
        env.sim_call_count("create_link").await,
        2,
        "only the two made by hand"
    );
}

/// A terminal errcode on A3 is reported once and not retried until the spec changes.
async fn terminal_create_error_stops_after_one_call(errcode: i64, reason: &str) {
    let env = env_with_app(fast_cadence()).await;
    env.sim_fault(json!({ "api": "create_link", "errcode": errcode, "times": 100 }))
        .await;
    env.apply_link("refused", link_spec("app", "Refused", &["zhangsan"]))
        .await;
    let link = env
        .wait_link_condition("refused", "Ready", "False", reason)
        .await;
    assert_eq!(link_condition(&link, "Synced").unwrap().1, reason);
    let message = link_condition(&link, "Ready").unwrap().2;
    assert!(message.contains(&errcode.to_string()), "{message}");
    assert_eq!(env.sim_call_count("create_link").await, 1);
    for _ in 0..3 {
        env.trigger_link_pass("refused").await;
    }
    let again = env.get_link("refused").await;
    assert_eq!(env.sim_call_count("create_link").await, 1, "still one call");
    assert!(
        !again.annotations().contains_key(CREATE_PENDING_ANNOTATION),
        "a refused create leaves no marker"
    );
    assert_eq!(
        again.resource_version(),
        link.resource_version(),
        "same outcome, no write"
    );
    env.wait_event(KIND, "refused", reason).await;

    // A person asking for a pass gets one more try, echoed in status.
    env.request_reconcile("refused", "retry-1").await;
    env.wait_for("refused", "the request echoed", |l: &AcquisitionLink| {
        l.status
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref())
            == Some("retry-1")
    })
    .await;
    assert_eq!(env.sim_call_count("create_link").await, 2);
    env.trigger_link_pass("refused").await;
    assert_eq!(
        env.sim_call_count("create_link").await,
        2,
        "one try per request"
    );

    // So does a spec change.
    env.patch_link_spec("refused", json!({ "linkName": "Refused again" }))
        .await;
    support::wait_until("a third A3 after the spec change", || async {
        (env.sim_call_count("create_link").await == 3).then_some(())
    })
    .await;
}

#[tokio::test]
async fn invalid_parameter_40058_stops_after_one_call() {
    terminal_create_error_stops_after_one_call(40058, "InvalidSpec").await;
}

#[tokio::test]
async fn exhausted_quota_blocks_creation_until_it_returns() {
    let env = Env::start(quiet_cadence()).await;
    env.sim_set_quota(0).await;
    env.apply_app_with_secret("app").await;
    env.wait_app_condition("app", "QuotaExhausted", "True", "BalanceExhausted")
        .await;
    env.wait_event("WeComApp", "app", "QuotaExhausted").await;
    // The controller decides on its cache: wait until it has seen the exhausted quota too.
    support::wait_until("the controller's cache to see QuotaExhausted", || async {
        env.controller()
            .running
            .context
            .app(NS, "app")
            .and_then(|a| a.status.clone())
            .is_some_and(|s| s.quota.is_some_and(|q| q.balance == 0))
            .then_some(())
    })
    .await;

    env.apply_link("waiting", link_spec("app", "Waiting", &["zhangsan"]))
        .await;
    env.wait_link_condition("waiting", "Ready", "False", "QuotaExhausted")
        .await;
    env.wait_event(KIND, "waiting", "QuotaExhausted").await;
    env.trigger_link_pass("waiting").await;
    assert_eq!(env.sim_call_count("create_link").await, 0);

    env.sim_set_quota(100).await;
    env.refresh_app_quota("app").await;
    let link = env.wait_link_ready("waiting").await;
    assert_eq!(link.status.unwrap().quota.map(|q| q.balance), Some(100));
    assert_eq!(env.sim_call_count("create_link").await, 1);
    env.wait_event("WeComApp", "app", "QuotaRestored").await;
}

#[tokio::test]
async fn paused_link_is_not_created() {
    let env = env_with_app(fast_cadence()).await;
    let mut link = AcquisitionLink::new("held", link_spec("app", "Held", &["zhangsan"]));
    link.annotations_mut()
        .insert(PAUSED_ANNOTATION.into(), "true".into());
    env.apply_link_object(link).await;
    env.wait_link_condition("held", "Synced", "False", "Paused")
        .await;
    env.trigger_link_pass("held").await;
    assert_eq!(env.mutating_calls().await, 0);
    assert!(env.sim_links().await.is_empty());

    env.annotate_link("held", PAUSED_ANNOTATION, None).await;
    env.wait_link_ready("held").await;
    assert_eq!(env.sim_call_count("create_link").await, 1);
}

#[tokio::test]
async fn paused_link_is_not_updated() {
    let env = env_with_app(fast_cadence()).await;
    env.apply_link("frozen", link_spec("app", "Frozen", &["zhangsan"]))
        .await;
    let link_id = status_link_id(&env.wait_link_ready("frozen").await);
    env.annotate_link("frozen", PAUSED_ANNOTATION, Some("true"))
        .await;
    env.wait_link_condition("frozen", "Synced", "False", "Paused")
        .await;

    env.patch_link_spec("frozen", json!({ "linkName": "Thawed" }))
        .await;
    env.sim_request(
        reqwest::Method::PATCH,
        &format!("/_sim/links/{link_id}"),
        Some(json!({ "skip_verify": false })),
    )
    .await;
    env.trigger_link_pass("frozen").await;
    let link = env
        .wait_link_condition("frozen", "Ready", "False", "Paused")
        .await;
    assert_eq!(link.status.unwrap().observed_generation, Some(2));
    assert_eq!(env.mutating_calls().await, 1, "only the first A3");
    assert_eq!(env.sim_link(&link_id).await.unwrap()["link_name"], "Frozen");

    env.annotate_link("frozen", PAUSED_ANNOTATION, None).await;
    env.wait_link_ready("frozen").await;
    let remote = env.sim_link(&link_id).await.unwrap();
    assert_eq!(remote["link_name"], "Thawed");
    assert_eq!(remote["skip_verify"], true);
    assert_eq!(env.sim_call_count("update_link").await, 1);
}

#[tokio::test]
async fn paused_link_is_not_deleted_in_wecom() {
    let env = env_with_app(fast_cadence()).await;
    env.apply_link("stuck", link_spec("app", "Stuck", &["zhangsan"]))
        .await;
    let link_id = status_link_id(&env.wait_link_ready("stuck").await);
    env.annotate_link("stuck", PAUSED_ANNOTATION, Some("true"))
        .await;
    env.wait_link_condition("stuck", "Synced", "False", "Paused")
        .await;

    env.delete_link("stuck").await;
    env.wait_for("stuck", "deletion to start", |l: &AcquisitionLink| {
        l.metadata.deletion_timestamp.is_some()
    })
    .await;
    env.trigger_link_pass("stuck").await;
    env.trigger_link_pass("stuck").await;
    assert_eq!(env.sim_call_count("delete_link").await, 0);
    assert!(env.sim_link(&link_id).await.is_some());
    assert!(
        env.get_link("stuck")
            .await
            .finalizers()
            .contains(&LINK_FINALIZER.to_string()),
        "the finalizer holds the object"
    );

    env.annotate_link("stuck", PAUSED_ANNOTATION, None).await;
    env.wait_link_gone("stuck").await;
    assert_eq!(env.sim_call_count("delete_link").await, 1);
    assert!(env.sim_link(&link_id).await.is_none());
}

#[tokio::test]
async fn customers_and_statistics_reach_the_status() {
    let env = env_with_app(fast_cadence()).await;
    let mut spec = link_spec("app", "Counted", &["zhangsan"]);
    spec.channels = vec!["ad-1".into()];
    env.apply_link("counted", spec).await;
    let link_id = status_link_id(&env.wait_link_ready("counted").await);

    let path = format!("/_sim/links/{link_id}");
    env.sim_request(
        reqwest::Method::POST,
        &format!("{path}/customers"),
        Some(json!({ "count": 3, "state": "ad-1" })),
    )
    .await;
    env.sim_request(
        reqwest::Method::POST,
        &format!("{path}/customers"),
        Some(json!({ "count": 1 })),
    )
    .await;
    // Channels outside spec.channels (free text on a public URL) count as one `other`.
    for junk in 0..20 {
        env.sim_request(
            reqwest::Method::POST,
            &format!("{path}/customers"),
            Some(json!({ "count": 1, "state": format!("junk-{junk}") })),
        )
        .await;
    }
    env.sim_request(
        reqwest::Method::POST,
        &format!("{path}/clicks"),
        Some(json!({ "count": 5 })),
    )
    .await;
    env.trigger_link_pass("counted").await;
    let link = env
        .wait_for(
            "counted",
            "customers and statistics",
            |l: &AcquisitionLink| {
                l.status.as_ref().is_some_and(|s| {
                    s.customers.as_ref().is_some_and(|c| c.total == 24)
                        && s.statistics
                            .as_ref()
                            .is_some_and(|st| st.new_customers == 24)
                })
            },
        )
        .await;
    // Status by server-side apply: each writer owns its part (issue #12).
    let owned = status_fields_by_manager(&link.metadata);
    assert!(
        owned["wecom-acq-link"].contains("f:conditions")
            && !owned["wecom-acq-link"].contains("f:customers"),
        "{owned:?}"
    );
    assert!(
        owned["wecom-acq-link-facts"].contains("f:customers"),
        "{owned:?}"
    );
    let app = env.get_app("app").await;
    let app_owned = status_fields_by_manager(&app.metadata);
    assert!(
        app_owned["wecom-acq-app-quota"].contains("f:quota")
            && !app_owned["wecom-acq-app"].contains("f:quota"),
        "{app_owned:?}"
    );
    let status = link.status.unwrap();
    let customers = status.customers.unwrap();
    assert_eq!(
        customers.by_channel,
        [("".into(), 1), ("ad-1".into(), 3), ("other".into(), 20)].into()
    );
    assert!(customers.counted_at.is_some());
    let statistics = status.statistics.unwrap();
    assert_eq!(
        statistics.click_customers, 29,
        "24 who added and 5 who only looked"
    );
    assert_eq!(statistics.window_days, 30);
    assert!(statistics.from < statistics.to);

    let scrape = env.controller().metrics.render();
    let series = |name: &str, channel: Option<&str>, value: u64| {
        let channel = channel
            .map(|c| format!(",channel=\"{c}\""))
            .unwrap_or_default();
        format!(
            "wecom_acq_{name}{{namespace=\"{}\",name=\"counted\",link_id=\"{link_id}\"{channel}}} {value}",
            NS
        )
    };
    for line in [
        series("link_customers", Some("ad-1"), 3),
        series("link_customers", Some(""), 1),
        series("link_customers", Some("other"), 20),
        series("link_clicks", None, 29),
        series("link_new_customers", None, 24),
    ] {
        assert!(scrape.contains(&line), "{line} missing from {scrape}");
    }
    assert!(!scrape.contains("junk-"), "{scrape}");
    every_dashboard_metric_is_exported(&scrape);
    // `.ci/run` checks this scrape with `promtool check metrics`.
    if let Some(path) = std::env::var_os("WECOM_ACQ_SCRAPE_OUT") {
        std::fs::write(path, &scrape).unwrap();
    }
    env.delete_link("counted").await;
    env.wait_link_gone("counted").await;
    let scrape = env.controller().metrics.render();
    assert!(!scrape.contains("name=\"counted\""), "{scrape}");
}

#[tokio::test]
async fn app_reports_quota_and_conditions() {
    let env = env_with_app(quiet_cadence()).await;
    let app = env
        .wait_app_condition("app", "Ready", "True", "CredentialsReady")
        .await;
    let status = app.status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    let quota = status.quota.expect("status.quota");
    assert_eq!(quota.balance, 1000);
    assert_eq!(quota.batches.len(), 1);
    assert_eq!(quota.batches[0].balance, 1000);
    assert!(quota.observed_at.is_some());
    for (type_, reason) in [
        ("QuotaExhausted", "BalanceOk"),
        ("QuotaLow", "BalanceOk"),
        ("QuotaExpiringSoon", "NoBatchExpiring"),
    ] {
        let (s, r, _) =
            support::condition(&status.conditions, type_).unwrap_or_else(|| panic!("{type_}"));
        assert_eq!((s.as_str(), r.as_str()), ("False", reason), "{type_}");
    }
    assert_eq!(env.sim_call_count("customer_acquisition_quota").await, 1);

    // Links show the app's quota.
    env.apply_link("q", link_spec("app", "Q", &["zhangsan"]))
        .await;
    let link = env.wait_link_ready("q").await;
    let summary = link.status.unwrap().quota.expect("link status.quota");
    assert_eq!(summary.balance, 1000);
}

#[tokio::test]
async fn app_naming_an_api_host_not_allowed_is_refused_without_a_call() {
    let mut env = Env::without_controller().await;
    // Only WeCom's own host: the simulator's 127.0.0.1 is not allowed.
    env.start_controller_allowing(
        None,
        quiet_cadence(),
        wecom_acq::wecom::AllowedApiHosts::default(),
    )
    .await;
    env.apply_app_with_secret("app").await;
    let app = env
        .wait_app_condition("app", "Ready", "False", "ApiHostNotAllowed")
        .await;
    let message = support::app_condition(&app, "Ready").unwrap().2;
    let host = format!("127.0.0.1:{}", env.sim.addr().port());
    assert!(
        message.contains(&host) && message.contains("--allowed-api-hosts"),
        "{message}"
    );

    env.apply_link("far", link_spec("app", "Far", &["zhangsan"]))
        .await;
    let link = env
        .wait_link_condition("far", "Ready", "False", "AppNotReady")
        .await;
    let message = link_condition(&link, "Ready").unwrap().2;
    assert!(message.contains(&host), "{message}");
    assert_eq!(
        env.sim_calls().await["total"],
        0,
        "no request to a host that is not allowed"
    );
}

#[tokio::test]
async fn app_with_missing_secret_is_not_ready_and_its_links_wait() {
    let env = Env::start(quiet_cadence()).await;
    env.apply_app("app", "no-such-secret").await;
    let app = env
        .wait_app_condition("app", "Ready", "False", "SecretNotFound")
        .await;
    let message = support::app_condition(&app, "Ready").unwrap().2;
    assert!(message.contains("no-such-secret"), "{message}");
    env.wait_event("WeComApp", "app", "SecretNotFound").await;

    env.apply_link("lonely", link_spec("app", "Lonely", &["zhangsan"]))
        .await;
    let link = env
        .wait_link_condition("lonely", "Ready", "False", "AppNotReady")
        .await;
    assert_eq!(link_condition(&link, "Synced").unwrap().1, "AppNotReady");
    assert_eq!(
        env.sim_calls().await["total"],
        0,
        "no WeCom call without credentials"
    );
}

/// A link that never got the finalizer (it never reached WeCom) leaves the metrics when it
/// is deleted: the watch's deletion drops what the process held about it. The Ready gauge
/// used to count it for as long as the process ran.
#[tokio::test]
async fn a_deleted_link_leaves_the_ready_gauge() {
    let env = Env::start(quiet_cadence()).await;
    env.apply_app("app", "no-such-secret").await;
    env.apply_link("lonely", link_spec("app", "Lonely", &["zhangsan"]))
        .await;
    env.wait_link_condition("lonely", "Ready", "False", "AppNotReady")
        .await;
    let not_ready = r#"wecom_acq_links{ready="False"} 1"#;
    let scrape = env.controller().metrics.render();
    assert!(scrape.contains(not_ready), "{scrape}");
    env.delete_link("lonely").await;
    support::wait_until("the deleted link out of the Ready gauge", || async {
        env.controller()
            .metrics
            .render()
            .contains(r#"wecom_acq_links{ready="False"} 0"#)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn retryable_error_backs_off_and_recovers() {
    let env = env_with_app(quiet_cadence()).await;
    env.apply_link("busy", link_spec("app", "Busy", &["zhangsan"]))
        .await;
    env.wait_link_ready("busy").await;
    // One pass's worth of "system busy" (the client tries 4 times per call).
    env.sim_fault(json!({ "api": "get", "errcode": -1, "times": 4 }))
        .await;
    env.trigger_link_pass("busy").await;
    let failed = env
        .wait_link_condition("busy", "Synced", "False", "RetryableError")
        .await;
    assert_eq!(failed.status.as_ref().unwrap().failures, Some(1));
    assert_eq!(
        link_condition(&failed, "Ready").unwrap().0,
        "True",
        "a busy WeCom says nothing about the link"
    );
    // The back-off requeue retries on its own.
    let recovered = env
        .wait_link_condition("busy", "Synced", "True", "InSync")
        .await;
    assert_eq!(recovered.status.unwrap().failures, None);
    assert_eq!(env.mutating_calls().await, 1);
}

#[tokio::test]
async fn link_waits_for_its_app_then_is_created() {
    let env = Env::start(quiet_cadence()).await;
    env.apply_link("early", link_spec("app", "Early", &["zhangsan"]))
        .await;
    let link = env
        .wait_link_condition("early", "Ready", "False", "AppNotReady")
        .await;
    assert!(link_condition(&link, "Ready").unwrap().2.contains("app"));
    env.apply_app_with_secret("app").await;
    env.wait_link_ready("early").await;
    assert_eq!(env.sim_call_count("create_link").await, 1);
}

#[tokio::test]
async fn deleting_a_link_already_gone_in_wecom_succeeds() {
    let env = env_with_app(quiet_cadence()).await;
    let mut spec = link_spec("app", "Ghost", &["zhangsan"]);
    spec.on_remote_delete = wecom_acq::api::RemoteDeletePolicy::Orphan;
    env.apply_link("ghost", spec).await;
    let link_id = status_link_id(&env.wait_link_ready("ghost").await);
    env.sim_request(
        reqwest::Method::DELETE,
        &format!("/_sim/links/{link_id}"),
        None,
    )
    .await;
    env.trigger_link_pass("ghost").await;
    env.wait_link_condition("ghost", "Ready", "False", "RemoteDeleted")
        .await;

    env.delete_link("ghost").await;
    env.wait_link_gone("ghost").await;
    assert_eq!(env.sim_call_count("create_link").await, 1);
}

#[tokio::test]
async fn create_pending_marker_without_a_link_creates_after_the_grace_period() {
    let env = env_with_app(quiet_cadence()).await;
    // A process died after writing the marker and before A3.
    let mut link = AcquisitionLink::new("late", link_spec("app", "Late", &["zhangsan"]));
    let since = jiff::Timestamp::now().as_second();
    link.annotations_mut()
        .insert(CREATE_PENDING_ANNOTATION.into(), since.to_string());
    env.apply_link_object(link).await;
    let link = env.wait_link_ready("late").await;
    let links = env.sim_links().await;
    assert_eq!(links.len(), 1);
    // The dead process's A3 may have been answered up to the request timeout after the
    // marker; the new create waits that long plus the grace (1 s here) for A1 to show it.
    let timeout = wecom_acq::defaults::REQUEST_TIMEOUT.as_secs() as i64;
    let grace = quiet_cadence().create_grace.as_secs() as i64;
    assert!(
        links[0]["create_time"].as_i64().unwrap() >= since + timeout + grace,
        "created at {} for a marker of {since}",
        links[0]["create_time"]
    );
    assert_eq!(env.sim_call_count("create_link").await, 1);
    assert!(!link.annotations().contains_key(CREATE_PENDING_ANNOTATION));
    assert!(
        env.sim_call_count("list_link").await >= 1,
        "it looked for a link the dead process may have made"
    );
}

#[tokio::test]
async fn refused_update_is_reported_once_and_waits_for_a_spec_change() {
    let env = env_with_app(fast_cadence()).await;
    env.apply_link("upd", link_spec("app", "Upd", &["zhangsan"]))
        .await;
    env.wait_link_ready("upd").await;
    // "nobody" is not in the org chart: WeCom answers 60011.
    env.patch_link_spec(
        "upd",
        json!({ "range": { "userList": ["zhangsan", "nobody"] } }),
    )
    .await;
    let link = env
        .wait_link_condition("upd", "Ready", "False", "InvalidSpec")
        .await;
    assert!(link_condition(&link, "Ready").unwrap().2.contains("60011"));
    let calls = env.sim_calls().await;
    assert_eq!(calls["update_link"], 1);
    for _ in 0..3 {
        env.trigger_link_pass("upd").await;
    }
    assert_eq!(
        env.sim_calls().await,
        calls,
        "no WeCom call until the spec changes"
    );
    assert_eq!(
        env.get_link("upd").await.resource_version(),
        link.resource_version()
    );

    env.patch_link_spec(
        "upd",
        json!({ "range": { "userList": ["zhangsan", "wangwu"] } }),
    )
    .await;
    env.wait_link_ready("upd").await;
    assert_eq!(env.sim_call_count("update_link").await, 2);
}

#[tokio::test]
async fn link_named_by_spec_link_id_is_adopted_and_corrected() {
    let env = env_with_app(quiet_cadence()).await;
    let wecom = env.wecom_client();
    let existing = wecom
        .create_link(&wecom_acq::wecom::types::CreateLinkRequest {
            link_name: "Made by hand".into(),
            range: wecom_acq::wecom::types::LinkRange {
                user_list: vec!["wangwu".into()],
                department_list: vec![2],
            },
            skip_verify: Some(true),
            priority_option: None,
            mark_source: None,
        })
        .await
        .unwrap();
    let mut spec = link_spec("app", "Adopted", &["zhangsan"]);
    spec.range.department_list = vec![2];
    spec.link_id = Some(existing.link_id.clone());
    env.apply_link("adopted", spec).await;

    let link = env.wait_link_ready("adopted").await;
    assert_eq!(status_link_id(&link), existing.link_id);
    assert_eq!(
        link.status.as_ref().unwrap().origin,
        Some(wecom_acq::api::LinkOrigin::Adopted)
    );
    env.wait_event(KIND, "adopted", "Adopted").await;
    let remote = env.sim_link(&existing.link_id).await.unwrap();
    assert_eq!(remote["link_name"], "Adopted");
    assert_eq!(remote["range"]["user_list"], json!(["zhangsan"]));
    assert_eq!(remote["range"]["department_list"], json!([2]));
    assert_eq!(
        env.sim_call_count("create_link").await,
        1,
        "only the one made by hand"
    );
    assert_eq!(env.sim_call_count("update_link").await, 1);

    // Changing the adopted id (which the CEL rule refuses on v1.25+ API servers; the
    // emulator has no admission) is refused by the controller too, touching nothing.
    env.patch_link_spec("adopted", json!({ "linkId": "cawcdnotthesame0001" }))
        .await;
    let link = env
        .wait_link_condition("adopted", "Ready", "False", "InvalidSpec")
        .await;
    let ready = link
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(ready.message.contains("immutable"), "{}", ready.message);
    assert_eq!(env.sim_call_count("update_link").await, 1);
    assert_eq!(env.sim_call_count("create_link").await, 1);
}

#[tokio::test]
async fn a_link_id_this_corp_does_not_have_is_reported_not_found_and_nothing_is_created() {
    let env = env_with_app(quiet_cadence()).await;
    let mut spec = link_spec("app", "Typo", &["zhangsan"]);
    spec.link_id = Some("cawcdnosuchlink0001".into());
    env.apply_link("typo", spec).await;
    let link = env
        .wait_link_condition("typo", "Ready", "False", "LinkNotFound")
        .await;
    let (_, _, message) = link_condition(&link, "Ready").unwrap();
    assert!(
        message.contains("cawcdnosuchlink0001") && !message.contains("deleted"),
        "{message}"
    );
    assert_eq!(link_condition(&link, "Synced").unwrap().1, "LinkNotFound");
    env.wait_event(KIND, "typo", "LinkNotFound").await;
    assert_eq!(link.status.as_ref().unwrap().origin, None);
    assert_eq!(env.sim_call_count("create_link").await, 0);
    assert_eq!(env.sim_call_count("update_link").await, 0);
}

#[tokio::test]
async fn failing_statistics_do_not_stop_the_link() {
    let env = env_with_app(fast_cadence()).await;
    env.sim_fault(json!({ "api": "statistic", "errcode": 40058, "times": 1000 }))
        .await;
    env.apply_link("stats", link_spec("app", "Stats", &["zhangsan"]))
        .await;
    let link = env.wait_link_ready("stats").await;
    let link_id = status_link_id(&link);
    assert_eq!(link_condition(&link, "Synced").unwrap().0, "True");
    // The link is still kept in line with the spec.
    env.sim_request(
        reqwest::Method::PATCH,
        &format!("/_sim/links/{link_id}"),
        Some(json!({ "link_name": "edited in console" })),
    )
    .await;
    env.trigger_link_pass("stats").await;
    env.wait_event(KIND, "stats", "DriftCorrected").await;
    assert_eq!(env.sim_link(&link_id).await.unwrap()["link_name"], "Stats");
    let link = env.get_link("stats").await;
    assert_eq!(link_condition(&link, "Ready").unwrap().0, "True");
    assert!(
        link.status.unwrap().customers.is_some(),
        "customers are still counted"
    );
    let failures: Vec<_> = env
        .events_of(KIND, "stats")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("StatisticsFailed"))
        .collect();
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].series.is_none(),
        "one Event per run of failures, not one per pass"
    );
    assert!(
        failures[0]
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("40058")
    );
}

#[tokio::test]
async fn remote_delete_while_paused_is_reported_once() {
    let env = env_with_app(fast_cadence()).await;
    env.apply_link("napping", link_spec("app", "Napping", &["zhangsan"]))
        .await;
    let link_id = status_link_id(&env.wait_link_ready("napping").await);
    env.annotate_link("napping", PAUSED_ANNOTATION, Some("true"))
        .await;
    env.wait_link_condition("napping", "Synced", "False", "Paused")
        .await;
    env.sim_request(
        reqwest::Method::DELETE,
        &format!("/_sim/links/{link_id}"),
        None,
    )
    .await;
    env.wait_event(KIND, "napping", "RemoteDeleted").await;
    for _ in 0..3 {
        env.trigger_link_pass("napping").await;
    }
    let remote_deleted = env
        .events_of(KIND, "napping")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RemoteDeleted"))
        .map(|e| e.series.map(|s| s.count).unwrap_or(1))
        .sum::<i32>();
    assert_eq!(
        remote_deleted, 1,
        "one RemoteDeleted event, not one per pass"
    );
    assert_eq!(env.mutating_calls().await, 1, "paused: no recreate");

    env.annotate_link("napping", PAUSED_ANNOTATION, None).await;
    let link = env
        .wait_for("napping", "a new link, Ready", |l: &AcquisitionLink| {
            l.status
                .as_ref()
                .and_then(|s| s.link_id.as_deref())
                .is_some_and(|id| id != link_id)
                && link_condition(l, "Ready").is_some_and(|c| c.0 == "True")
        })
        .await;
    assert_eq!(env.sim_links().await.len(), 1);
    assert_eq!(
        env.sim_link(&status_link_id(&link)).await.unwrap()["link_name"],
        "Napping"
    );
    let recreated = env.wait_event(KIND, "napping", "Recreated").await;
    assert!(recreated.note.unwrap_or_default().contains(&link_id));
}

#[tokio::test]
async fn links_resume_when_the_app_secret_is_fixed() {
    let env = Env::start(quiet_cadence()).await;
    env.apply_secret("app-secret", &[(support::SECRET_KEY, "wrong-secret")])
        .await;
    env.apply_app("app", "app-secret").await;
    let app = env
        .wait_app_condition("app", "Ready", "False", "CredentialsInvalid")
        .await;
    let message = support::app_condition(&app, "Ready").unwrap().2;
    assert!(message.contains("40001"), "{message}");
    assert!(!message.contains("wrong-secret"));
    env.apply_link("patient", link_spec("app", "Patient", &["zhangsan"]))
        .await;
    let link = env
        .wait_link_condition("patient", "Ready", "False", "AppNotReady")
        .await;
    assert!(
        !serde_json::to_string(&link)
            .unwrap()
            .contains("wrong-secret")
    );
    assert_eq!(env.mutating_calls().await, 0);

    // Fix the Secret, then touch the app so its client is rebuilt now rather than after
    // the secret cache expires.
    let fixed =
        json!({ "data": { support::SECRET_KEY: base64_of(wecom_acq::sim::DEFAULT_SECRET) } });
    env.secrets()
        .patch(
            "app-secret",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&fixed),
        )
        .await
        .unwrap();
    env.apps()
        .patch(
            "app",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({ "spec": { "requestsPerMinute": 300 } })),
        )
        .await
        .unwrap();
    env.wait_app_condition("app", "Ready", "True", "CredentialsReady")
        .await;
    env.wait_link_ready("patient").await;
    assert_eq!(env.sim_call_count("create_link").await, 1);
}

fn base64_of(value: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(value)
}

#[tokio::test]
async fn app_status_write_does_not_trigger_another_app_pass() {
    let env = env_with_app(quiet_cadence()).await;
    let app = env
        .wait_app_condition("app", "Ready", "True", "CredentialsReady")
        .await;
    // Wait until the controller has seen its own status write, then give it the time a
    // whole link creation takes to react to it.
    support::wait_until(
        "the controller's cache to hold the app's status",
        || async {
            (env.controller()
                .running
                .context
                .app(NS, "app")?
                .resource_version()
                == app.resource_version())
            .then_some(())
        },
    )
    .await;
    // Two passes so far: the first adds the app's in-use finalizer, the second checks it.
    let passes = env.controller().passes("WeComApp");
    assert_eq!(passes, 2);
    env.apply_link("l", link_spec("app", "L", &["zhangsan"]))
        .await;
    env.wait_link_ready("l").await;
    assert_eq!(env.controller().passes("WeComApp"), passes);
    assert_eq!(env.sim_call_count("customer_acquisition_quota").await, 1);
}

#[tokio::test]
async fn deleting_during_an_interrupted_create_deletes_the_link_it_made() {
    let mut env = Env::without_controller().await;
    env.apply_app_with_secret("app").await;
    let since = jiff::Timestamp::now().as_second() - 5;
    // The link the dead process made, and an unrelated one that must survive.
    let wecom = env.wecom_client();
    let spec = link_spec("app", "Half made", &["zhangsan"]);
    let made = wecom
        .create_link(&wecom_acq::reconcile::plan::DesiredLink::from_spec(&spec).create_request())
        .await
        .unwrap();
    let other = wecom
        .create_link(
            &wecom_acq::reconcile::plan::DesiredLink::from_spec(&link_spec(
                "app",
                "Other",
                &["zhangsan"],
            ))
            .create_request(),
        )
        .await
        .unwrap();
    let mut link = AcquisitionLink::new("half", spec);
    link.annotations_mut()
        .insert(CREATE_PENDING_ANNOTATION.into(), since.to_string());
    link.metadata.finalizers = Some(vec![LINK_FINALIZER.into()]);
    env.apply_link_object(link).await;
    env.delete_link("half").await;

    env.start_controller(quiet_cadence()).await;
    env.wait_link_gone("half").await;
    assert!(
        env.sim_link(&made.link_id).await.is_none(),
        "the half-made link is deleted"
    );
    assert!(env.sim_link(&other.link_id).await.is_some());
    assert_eq!(env.sim_call_count("delete_link").await, 1);
}

/// What the controller costs WeCom at rest, from the code: per link, one A2 per pass (a pass
/// every `resync` x U(0.9, 1.0)), A6 on the first pass at least `customers` after the last
/// count (one call per 1000 customers), A7 likewise after `statistics`; per app, A8 every
/// `quota` and a gettoken every 7200 s - 300 s.
fn derived_calls_per_hour(
    cadence: &wecom_acq::reconcile::context::Cadence,
) -> [(&'static str, f64); 5] {
    let pass = cadence.resync.as_secs_f64() * 0.95;
    // Passes are 0.9-1.0 x resync apart: the first after `every` is on average pass number
    // floor(every / resync) + 1.
    let every = |d: Duration| {
        3600.0 / (((d.as_secs_f64() / cadence.resync.as_secs_f64()).floor() + 1.0) * pass)
    };
    [
        ("get (A2) per link", 3600.0 / pass),
        ("customer (A6) per link", every(cadence.customers)),
        ("statistic (A7) per link", every(cadence.statistics)),
        (
            "customer_acquisition_quota (A8) per app",
            3600.0 / cadence.quota.as_secs_f64(),
        ),
        ("gettoken per app", 3600.0 / 6900.0),
    ]
}

#[tokio::test]
async fn wecom_calls_per_link_per_hour_at_rest() {
    const SCALE: u32 = 750;
    const LINKS: u32 = 2;
    let default = wecom_acq::reconcile::context::Cadence::default();
    let derived = derived_calls_per_hour(&default);
    // The default cadence, 750 times faster: a pass every 0.4 s stands for 5 minutes.
    let scaled = wecom_acq::reconcile::context::Cadence {
        resync: default.resync / SCALE,
        customers: default.customers / SCALE,
        statistics: default.statistics / SCALE,
        quota: default.quota / SCALE,
        ..default.clone()
    };
    let sim_config = wecom_acq::sim::SimConfig {
        token_ttl: Duration::from_secs(10), // 7200 s / 750, rounded up
        ..Default::default()
    };
    let mut env = Env::with_sim_config(sim_config).await;
    env.start_controller(scaled).await;
    env.apply_app_with_secret("app").await;
    let mut versions = Vec::new();
    for i in 0..LINKS {
        let name = format!("rest-{i}");
        env.apply_link(&name, link_spec("app", &name, &["zhangsan"]))
            .await;
    }
    for i in 0..LINKS {
        let name = format!("rest-{i}");
        let link = env
            .wait_for(
                &name,
                "Ready with customers and statistics",
                |l: &AcquisitionLink| {
                    link_condition(l, "Ready").is_some_and(|c| c.0 == "True")
                        && l.status.as_ref().is_some_and(|s| {
                            s.customers.is_some() && s.statistics.is_some() && s.quota.is_some()
                        })
                },
            )
            .await;
        versions.push((name, link.resource_version()));
    }

    env.sim_request(reqwest::Method::DELETE, "/_sim/calls", None)
        .await;
    let started = std::time::Instant::now();
    let passes_before = env.controller().passes(KIND);
    // Three scaled hours: about 38 passes per link.
    let target = passes_before + u64::from(LINKS) * 36;
    support::wait_until("three scaled hours of passes", || async {
        (env.controller().passes(KIND) >= target).then_some(())
    })
    .await;
    let calls = env.sim_calls().await;
    let scaled_hours = started.elapsed().as_secs_f64() * f64::from(SCALE) / 3600.0;

    let per_hour = |api: &str, per: u32| {
        calls[api].as_u64().unwrap_or(0) as f64 / scaled_hours / f64::from(per)
    };
    let measured = [
        per_hour("get", LINKS),
        per_hour("customer", LINKS),
        per_hour("statistic", LINKS),
        per_hour("customer_acquisition_quota", 1),
        per_hour("gettoken", 1),
    ];
    println!(
        "WeCom calls per hour at rest, default cadence (resync 5m, customers 30m, statistics 1h, quota 10m):"
    );
    println!("{:<42} {:>8} {:>9}", "", "derived", "measured");
    for ((what, d), m) in derived.iter().zip(measured) {
        println!("{what:<42} {d:>8.2} {m:>9.2}");
    }
    let link_derived: f64 = derived[..3].iter().map(|(_, d)| d).sum();
    let app_derived: f64 = derived[3..].iter().map(|(_, d)| d).sum();
    let link_measured: f64 = measured[..3].iter().sum();
    let app_measured: f64 = measured[3..].iter().sum();
    println!(
        "{:<42} {link_derived:>8.2} {link_measured:>9.2}",
        "per link"
    );
    println!(
        "{:<42} {app_derived:>8.2} {app_measured:>9.2}",
        "per app (shared by its links)"
    );
    println!(
        "{:<42} {:>8.2} {:>9.2}",
        "one link alone on its app",
        link_derived + app_derived,
        link_measured + app_measured
    );
    println!("(measured over {scaled_hours:.2} scaled hours with {LINKS} links on one app)");

    assert_eq!(
        calls["create_link"].as_u64().unwrap_or(0)
            + calls["update_link"].as_u64().unwrap_or(0)
            + calls["delete_link"].as_u64().unwrap_or(0),
        0,
        "no mutating call at rest"
    );
    for (name, version) in versions {
        assert_eq!(
            env.get_link(&name).await.resource_version(),
            version,
            "no status write at rest"
        );
    }
    // Slow facts are slow, and the quota is read once per app, not per link.
    assert!(
        measured[1] < measured[0] / 3.0,
        "A6 {} vs A2 {}",
        measured[1],
        measured[0]
    );
    assert!(
        measured[2] < measured[0] / 6.0,
        "A7 {} vs A2 {}",
        measured[2],
        measured[0]
    );
    assert!(
        measured[3] * 2.0 < measured[0] * f64::from(LINKS),
        "A8 {} vs A2 {}",
        measured[3],
        measured[0]
    );
}

#[tokio::test]
async fn retryable_create_error_backs_off() {
    let env = env_with_app(quiet_cadence()).await;
    env.sim_fault(json!({ "api": "create_link", "errcode": -1, "times": 1000 }))
        .await;
    env.apply_link("backoff", link_spec("app", "Backoff", &["zhangsan"]))
        .await;
    let failures =
        |n: u32| move |l: &AcquisitionLink| l.status.as_ref().and_then(|s| s.failures) == Some(n);
    let first = env
        .wait_for("backoff", "one failed pass", failures(1))
        .await;
    let first_at = std::time::Instant::now();
    assert_eq!(
        link_condition(&first, "Synced").unwrap().1,
        "RetryableError"
    );
    assert!(
        !first.annotations().contains_key(CREATE_PENDING_ANNOTATION),
        "WeCom answered: no link was made, no marker stays"
    );
    env.wait_for("backoff", "a second failed pass", failures(2))
        .await;
    // The first back-off is 5 s scaled by a jitter in [0.5, 1]: the controller's own
    // marker writes must not start the next attempt early.
    assert!(
        first_at.elapsed() >= Duration::from_secs(2),
        "second attempt after {:?}",
        first_at.elapsed()
    );
    // The client tries each call 4 times; each pass makes one call.
    assert_eq!(env.sim_call_count("create_link").await, 8);
}

#[tokio::test]
async fn several_candidates_resolve_when_a_person_deletes_the_extra_link() {
    let env = env_with_app(quiet_cadence()).await;
    let (keep, extra) = twin_candidates(&env).await;
    env.wait_link_condition("twin", "Synced", "False", "CreateIncomplete")
        .await;
    env.sim_request(
        reqwest::Method::DELETE,
        &format!("/_sim/links/{extra}"),
        None,
    )
    .await;
    // The next pass (a resync, here forced) looks again and adopts the one left.
    env.trigger_link_pass("twin").await;
    let link = env.wait_link_ready("twin").await;
    assert_eq!(status_link_id(&link), keep);
    assert!(!link.annotations().contains_key(CREATE_PENDING_ANNOTATION));
    env.wait_event(KIND, "twin", "Adopted").await;
    assert_eq!(
        env.sim_call_count("create_link").await,
        2,
        "only the two made by hand"
    );
}

#[tokio::test]
async fn create_that_times_out_is_not_repeated_blindly() {
    let env = env_with_app(quiet_cadence()).await;
    // A3 outlives the client's 10 s timeout: WeCom may or may not have made the link.
    env.sim_fault(json!({ "api": "create_link", "latency_ms": 11_000, "times": 1 }))
        .await;
    env.apply_link("slow", link_spec("app", "Slow", &["zhangsan"]))
        .await;
    let failed = env
        .wait_link_condition("slow", "Synced", "False", "RetryableError")
        .await;
    let since: i64 = wecom_acq::reconcile::marker::CreateMarker::parse(
        failed
            .annotations()
            .get(CREATE_PENDING_ANNOTATION)
            .expect("an unanswered create keeps its marker"),
    )
    .at
    .expect("the marker's time");
    let link = env.wait_link_ready("slow").await;
    let links = env.sim_links().await;
    assert_eq!(links.len(), 1, "exactly one link: {links:#?}");
    assert_eq!(links[0]["link_id"], status_link_id(&link).as_str());
    if env.sim_call_count("create_link").await > 1 {
        // The simulator dropped the abandoned request; the second A3 waited until the
        // first could no longer have been answered, plus the grace for A1 to show it.
        let timeout = wecom_acq::defaults::REQUEST_TIMEOUT.as_secs() as i64;
        let window = wecom_acq::reconcile::marker::CREATE_SEND_WINDOW.as_secs() as i64;
        let grace = quiet_cadence().create_grace.as_secs() as i64;
        assert!(links[0]["create_time"].as_i64().unwrap() >= since + window + timeout + grace);
    } else {
        env.wait_event(KIND, "slow", "Adopted").await;
    }
}

#[tokio::test]
async fn controller_watching_one_namespace_leaves_others_alone() {
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    use kube::api::{Api, PostParams};
    let mut env = Env::without_controller().await;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let mut other = Namespace::default();
    other.metadata.name = Some("other".into());
    namespaces
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    let mut secret = Secret::default();
    secret.metadata.name = Some("app-secret".into());
    secret.string_data = Some(
        [(
            support::SECRET_KEY.to_string(),
            wecom_acq::sim::DEFAULT_SECRET.to_string(),
        )]
        .into(),
    );
    Api::<Secret>::namespaced(env.client.clone(), "other")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    Api::<wecom_acq::api::WeComApp>::namespaced(env.client.clone(), "other")
        .create(&PostParams::default(), &env.app_object("app", "app-secret"))
        .await
        .unwrap();
    let elsewhere: Api<AcquisitionLink> = Api::namespaced(env.client.clone(), "other");
    elsewhere
        .create(
            &PostParams::default(),
            &AcquisitionLink::new("foreign", link_spec("app", "Foreign", &["zhangsan"])),
        )
        .await
        .unwrap();

    env.start_controller_in(Some(NS), quiet_cadence()).await;
    env.apply_app_with_secret("app").await;
    env.apply_link("local", link_spec("app", "Local", &["zhangsan"]))
        .await;
    env.wait_link_ready("local").await;
    let foreign = elsewhere.get("foreign").await.unwrap();
    assert!(foreign.status.is_none() && foreign.finalizers().is_empty());
    assert_eq!(env.sim_links().await.len(), 1);
}

#[tokio::test]
async fn lost_status_is_rebuilt_from_the_link_id_annotation() {
    let env = env_with_app(quiet_cadence()).await;
    let spec = link_spec("app", "Remembered", &["zhangsan"]);
    let made = env
        .wecom_client()
        .create_link(&wecom_acq::reconcile::plan::DesiredLink::from_spec(&spec).create_request())
        .await
        .unwrap();
    // The object as a backup restore leaves it: annotation and finalizer, no status.
    let mut link = AcquisitionLink::new("remembered", spec);
    link.annotations_mut()
        .insert(LINK_ID_ANNOTATION.into(), made.link_id.clone());
    link.metadata.finalizers = Some(vec![LINK_FINALIZER.into()]);
    env.apply_link_object(link).await;
    let link = env.wait_link_ready("remembered").await;
    assert_eq!(status_link_id(&link), made.link_id);
    assert_eq!(
        link.status.unwrap().origin,
        Some(wecom_acq::api::LinkOrigin::Created)
    );
    assert_eq!(
        env.sim_call_count("create_link").await,
        1,
        "only the original"
    );
    assert_eq!(env.sim_links().await.len(), 1);
}

#[tokio::test]
async fn refused_quota_check_is_not_repeated_until_due() {
    let env = Env::start(quiet_cadence()).await;
    env.sim_fault(json!({ "api": "customer_acquisition_quota", "errcode": 48002, "times": 1000 }))
        .await;
    env.apply_app_with_secret("app").await;
    let app = env
        .wait_app_condition("app", "Ready", "False", "PermissionDenied")
        .await;
    assert!(
        support::app_condition(&app, "Ready")
            .unwrap()
            .2
            .contains("48002")
    );
    assert_eq!(env.sim_call_count("customer_acquisition_quota").await, 1);
    // Passes that come before the quota check is due again (a callback, a restart of the
    // watch...) do not ask again.
    for _ in 0..3 {
        let run = env.controller();
        let before = run.passes("WeComApp");
        run.running
            .triggers
            .apps
            .send(kube::runtime::reflector::ObjectRef::new("app").within(NS))
            .await
            .unwrap();
        support::wait_until("an app pass", || async {
            (run.passes("WeComApp") > before).then_some(())
        })
        .await;
    }
    assert_eq!(env.sim_call_count("customer_acquisition_quota").await, 1);
    // An explicit refresh (a quota callback) does ask.
    env.refresh_app_quota("app").await;
    assert_eq!(env.sim_call_count("customer_acquisition_quota").await, 2);
}

/// A link made by hand in the console, for the tests that name it by id.
async fn link_made_by_hand(env: &Env, name: &str) -> wecom_acq::wecom::types::LinkInfo {
    env.wecom_client()
        .create_link(&wecom_acq::wecom::types::CreateLinkRequest {
            link_name: name.into(),
            range: wecom_acq::wecom::types::LinkRange {
                user_list: vec!["wangwu".into()],
                department_list: vec![],
            },
            skip_verify: Some(true),
            priority_option: None,
            mark_source: None,
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn observed_link_is_reported_with_its_drift_and_never_written() {
    let env = env_with_app(quiet_cadence()).await;
    let existing = link_made_by_hand(&env, "Console link").await;
    let writes_before = env.mutating_calls().await;
    let mut spec = link_spec("app", "Other name", &["zhangsan"]);
    spec.link_id = Some(existing.link_id.clone());
    spec.management_policy = wecom_acq::api::ManagementPolicy::Observe;
    // Whatever the policies say, an observed link is never deleted or recreated.
    spec.deletion_policy = wecom_acq::api::DeletionPolicy::Delete;
    env.apply_link("watched", spec).await;

    let link = env
        .wait_link_condition("watched", "Synced", "False", "Drifted")
        .await;
    let (_, _, message) = link_condition(&link, "Synced").unwrap();
    assert!(
        message.contains("linkName") && message.contains("range"),
        "{message}"
    );
    assert_eq!(link_condition(&link, "Ready").unwrap().0, "True");
    assert_eq!(status_link_id(&link), existing.link_id);
    let link = env
        .wait_for::<AcquisitionLink>("watched", "customers and statistics", |l| {
            l.status
                .as_ref()
                .is_some_and(|s| s.customers.is_some() && s.statistics.is_some())
        })
        .await;
    assert!(link.status.as_ref().unwrap().url.is_some());
    env.wait_event(KIND, "watched", "Drifted").await;
    let remote = env.sim_link(&existing.link_id).await.unwrap();
    assert_eq!(
        remote["link_name"], "Console link",
        "drift is not corrected"
    );
    assert_eq!(env.mutating_calls().await, writes_before, "no WeCom write");

    env.delete_link("watched").await;
    env.wait_link_gone("watched").await;
    assert!(env.sim_link(&existing.link_id).await.is_some());
    assert_eq!(env.mutating_calls().await, writes_before, "no WeCom write");
}

#[tokio::test]
async fn created_link_keeps_its_id_and_may_be_pinned() {
    let env = env_with_app(quiet_cadence()).await;
    env.apply_link("own", link_spec("app", "Own", &["zhangsan"]))
        .await;
    let own_id = status_link_id(&env.wait_link_ready("own").await);
    let other = link_made_by_hand(&env, "Someone else's").await;
    let writes_before = env.mutating_calls().await;

    // Pinning the link's own id is accepted.
    env.patch_link_spec("own", json!({ "linkId": own_id }))
        .await;
    env.wait_for::<AcquisitionLink>("own", "the pinned generation observed", |l| {
        l.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == l.metadata.generation)
    })
    .await;
    let link = env.wait_link_ready("own").await;
    assert_eq!(status_link_id(&link), own_id);

    // Another id is refused, and neither link is touched.
    env.patch_link_spec("own", json!({ "linkId": other.link_id }))
        .await;
    let link = env
        .wait_link_condition("own", "Ready", "False", "InvalidSpec")
        .await;
    let (_, _, message) = link_condition(&link, "Ready").unwrap();
    assert!(
        message.contains(&own_id) && message.contains(&other.link_id),
        "{message}"
    );
    env.wait_event(KIND, "own", "InvalidSpec").await;
    assert_eq!(env.mutating_calls().await, writes_before, "no WeCom write");
    assert_eq!(
        env.sim_link(&other.link_id).await.unwrap()["link_name"],
        "Someone else's"
    );

    // Deleting the object deletes the link it created, never the one its spec named.
    env.delete_link("own").await;
    env.wait_link_gone("own").await;
    assert!(env.sim_link(&own_id).await.is_none());
    assert!(env.sim_link(&other.link_id).await.is_some());
}

#[tokio::test]
async fn second_claimant_of_a_link_is_refused_and_never_writes_or_deletes_it() {
    let env = env_with_app(quiet_cadence()).await;
    let shared = link_made_by_hand(&env, "Shared").await;
    let mut spec = link_spec("app", "Shared", &["wangwu"]);
    spec.link_id = Some(shared.link_id.clone());
    spec.deletion_policy = wecom_acq::api::DeletionPolicy::Orphan;
    env.apply_link("first", spec.clone()).await;
    env.wait_link_ready("first").await;
    let writes_before = env.mutating_calls().await;

    // A later object naming the same link, wanting something else of it.
    let mut rival = spec.clone();
    rival.skip_verify = false;
    rival.deletion_policy = wecom_acq::api::DeletionPolicy::Delete;
    env.apply_link("second", rival.clone()).await;
    let link = env
        .wait_link_condition("second", "Ready", "False", "LinkIdConflict")
        .await;
    assert_eq!(link_condition(&link, "Synced").unwrap().1, "LinkIdConflict");
    let event = env.wait_event(KIND, "second", "LinkIdConflict").await;
    assert!(
        event
            .note
            .unwrap_or_default()
            .contains(&format!("{}/first", support::NS)),
        "the Event names the other object"
    );
    assert_eq!(env.mutating_calls().await, writes_before, "no WeCom write");

    // Deleting it (deletionPolicy Delete) leaves the link to its owner.
    env.delete_link("second").await;
    env.wait_link_gone("second").await;
    assert!(env.sim_link(&shared.link_id).await.is_some());
    assert_eq!(env.mutating_calls().await, writes_before, "no WeCom write");
    assert_eq!(
        link_condition(&env.get_link("first").await, "Ready")
            .unwrap()
            .0,
        "True"
    );

    // When the owner goes, the next claimant takes the link over at its next pass.
    env.apply_link("third", rival).await;
    env.wait_link_condition("third", "Ready", "False", "LinkIdConflict")
        .await;
    env.delete_link("first").await;
    env.wait_link_gone("first").await;
    // The cache may still hold "first" for a moment: ask again until it does not.
    let link = support::wait_until("third takes the link over", || async {
        env.trigger_link_pass("third").await;
        let link = env.get_link("third").await;
        link_condition(&link, "Ready")
            .is_some_and(|(status, _, _)| status == "True")
            .then_some(link)
    })
    .await;
    assert_eq!(status_link_id(&link), shared.link_id);
    assert_eq!(
        env.sim_link(&shared.link_id).await.unwrap()["skip_verify"],
        false,
        "the new owner manages it"
    );
}

/// The pass that sent A3 crashed; the range was edited before the next pass. What the
/// marker recorded of the request (name and range) still finds the link it made.
#[tokio::test]
async fn an_interrupted_create_is_found_after_the_range_was_edited() {
    use wecom_acq::reconcile::{marker::CreateMarker, plan::DesiredLink};
    let env = env_with_app(quiet_cadence()).await;
    let sent = DesiredLink::from_spec(&link_spec("app", "Edited", &["zhangsan"]));
    let made = env
        .wecom_client()
        .create_link(&sent.create_request())
        .await
        .unwrap();
    let mut link = AcquisitionLink::new("edited", link_spec("app", "Edited", &["lisi"]));
    let marker = CreateMarker::for_request(jiff::Timestamp::now().as_second() - 2, &sent);
    link.annotations_mut()
        .insert(CREATE_PENDING_ANNOTATION.into(), marker.to_annotation());
    env.apply_link_object(link).await;

    let link = env.wait_link_ready("edited").await;
    assert_eq!(
        status_link_id(&link),
        made.link_id,
        "the interrupted create's link"
    );
    let links = env.sim_links().await;
    assert_eq!(links.len(), 1, "no second link: {links:#?}");
    assert_eq!(
        links[0]["range"]["user_list"],
        json!(["lisi"]),
        "then updated"
    );
    assert_eq!(
        env.sim_call_count("create_link").await,
        1,
        "only the test's own A3"
    );
    env.wait_event(KIND, "edited", "Adopted").await;
}

/// A marker whose time cannot be read says nothing of when A3 ran: the grace starts now
/// (the marker is rewritten with a time) instead of a create at once.
#[tokio::test]
async fn a_malformed_marker_waits_the_grace_instead_of_creating_at_once() {
    use wecom_acq::reconcile::marker::CreateMarker;
    let env = env_with_app(quiet_cadence()).await;
    let mut link = AcquisitionLink::new("garbled", link_spec("app", "Garbled", &["zhangsan"]));
    link.annotations_mut()
        .insert(CREATE_PENDING_ANNOTATION.into(), "not a time".into());
    env.apply_link_object(link).await;
    let before = jiff::Timestamp::now().as_second();
    let restarted = env
        .wait_for(
            "garbled",
            "the marker to get a time, or a create",
            |l: &AcquisitionLink| {
                l.annotations()
                    .get(CREATE_PENDING_ANNOTATION)
                    .is_none_or(|v| CreateMarker::parse(v).at.is_some())
            },
        )
        .await;
    let at = restarted
        .annotations()
        .get(CREATE_PENDING_ANNOTATION)
        .and_then(|v| CreateMarker::parse(v).at);
    assert!(
        at.is_some_and(|at| at >= before - 1),
        "the grace starts now: {at:?}"
    );
    assert_eq!(
        env.sim_call_count("create_link").await,
        0,
        "nothing created at once"
    );
}

/// A marker dated far in the future (another replica's clock, a hand-written annotation):
/// the pass waits the grace as for a marker written now, then creates. It used to ask for a
/// requeue of about 9e18 seconds, which overflows the controller's timer.
#[tokio::test]
async fn a_marker_from_the_future_waits_the_grace_then_creates() {
    let env = env_with_app(quiet_cadence()).await;
    let mut link = AcquisitionLink::new("future", link_spec("app", "Future", &["zhangsan"]));
    link.annotations_mut().insert(
        CREATE_PENDING_ANNOTATION.into(),
        r#"{"at":9000000000000000000}"#.into(),
    );
    env.apply_link_object(link).await;
    let ready = env.wait_link_ready("future").await;
    assert!(ready.status.and_then(|s| s.link_id).is_some());
    assert_eq!(
        env.sim_call_count("create_link").await,
        1,
        "one link, once the grace has passed"
    );
}

#[tokio::test]
async fn qr_reads_the_channel_url_of_a_link_in_the_cluster() {
    let env = env_with_app(quiet_cadence()).await;
    let mut spec = link_spec("app", "Poster", &["zhangsan"]);
    spec.channels = vec!["poster-1".into()];
    env.apply_link("poster", spec).await;
    let link = env.wait_link_ready("poster").await;
    let status = link.status.unwrap();
    let channel_url = &status.channel_urls[0].url;
    assert!(
        channel_url.ends_with("customer_channel=poster-1"),
        "{channel_url}"
    );
    let url = wecom_acq::qr::cluster_url(env.client.clone(), NS, "poster", Some("poster-1"))
        .await
        .unwrap();
    assert_eq!(&url, channel_url);
    let url = wecom_acq::qr::cluster_url(env.client.clone(), NS, "poster", None)
        .await
        .unwrap();
    assert_eq!(Some(url), status.url);
    let err = wecom_acq::qr::cluster_url(env.client.clone(), NS, "poster", Some("nope"))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("\"nope\""), "{err:#}");
    let err = wecom_acq::qr::cluster_url(env.client.clone(), NS, "missing", None)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("reading AcquisitionLink default/missing"),
        "{err:#}"
    );
}

/// Every `wecom_acq_*` metric the chart's Grafana dashboard queries has a sample in `scrape`.
fn every_dashboard_metric_is_exported(scrape: &str) {
    let dashboard =
        include_str!("../charts/wecom-acquisition-controller/dashboards/wecom-acquisition.json");
    let dashboard: serde_json::Value = serde_json::from_str(dashboard).unwrap();
    let mut queried = std::collections::BTreeSet::new();
    let exprs = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .chain(
            dashboard["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v["query"].as_str().map(str::to_string)),
        );
    for expr in exprs {
        for (start, _) in expr.match_indices("wecom_acq_") {
            let name: String = expr[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            queried.insert(name);
        }
    }
    assert!(queried.len() >= 9, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| {
            !scrape
                .lines()
                .any(|line| line.starts_with(&format!("{name}{{")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, not in the scrape:\n{scrape}"
    );
}

/// A permission missing in WeCom (48002) is the app's problem: the app says so, every link
/// of it says `AppNotReady`, the app asks again with a growing back-off (the links not at
/// all), and granting the permission heals app and links with nobody touching Kubernetes.
#[tokio::test]
async fn permission_missing_in_wecom_heals_by_itself_with_backoff() {
    let resync = Duration::from_millis(250);
    let cadence = wecom_acq::reconcile::context::Cadence {
        resync,
        quota: resync,
        customers: Duration::from_secs(3600),
        statistics: Duration::from_secs(3600),
        ..fast_cadence()
    };
    let env = env_with_app(cadence).await;
    for name in ["north", "south"] {
        env.apply_link(name, link_spec("app", name, &["zhangsan"]))
            .await;
        env.wait_link_ready(name).await;
    }
    let before: Vec<_> =
        futures::future::join_all(["north", "south"].map(|name| env.get_link(name)))
            .await
            .into_iter()
            .map(|l| l.metadata.generation)
            .collect();

    for api in ["customer_acquisition_quota", "get", "create_link"] {
        env.sim_fault(json!({ "api": api, "errcode": 48002 })).await;
    }
    let app = env
        .wait_app_condition("app", "Ready", "False", "PermissionDenied")
        .await;
    let message = support::app_condition(&app, "Ready").unwrap().2;
    assert!(message.contains("48002"), "{message}");
    for name in ["north", "south"] {
        let link = env
            .wait_link_condition(name, "Ready", "False", "AppNotReady")
            .await;
        let message = link_condition(&link, "Ready").unwrap().2;
        assert!(message.contains("48002"), "{name}: {message}");
    }

    // The outage: the app's checks come further and further apart, the links call nothing.
    let link_calls = env.sim_call_count("get").await + env.sim_call_count("create_link").await;
    let mut seen = env.sim_call_count("customer_acquisition_quota").await;
    let mut checks = vec![std::time::Instant::now()];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while checks.len() <= 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "four more quota checks within 30 s: {checks:?}"
        );
        let now = env.sim_call_count("customer_acquisition_quota").await;
        if now > seen {
            seen = now;
            checks.push(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // the polling interval
    }
    let gaps: Vec<Duration> = checks.windows(2).map(|w| w[1] - w[0]).collect();
    // The first gap started mid-wait; each later one at least doubles from the resync
    // interval (load only makes them longer).
    for (i, gap) in gaps.iter().enumerate().skip(1) {
        let least = resync * (1 << i) * 9 / 10;
        assert!(*gap >= least, "gap {i} {gap:?} < {least:?}: {gaps:?}");
    }
    assert_eq!(
        env.sim_call_count("get").await + env.sim_call_count("create_link").await,
        link_calls,
        "links do not call WeCom while their app is refused"
    );

    // The permission is granted in WeCom: all heal, no edit in Kubernetes.
    env.sim_request(reqwest::Method::DELETE, "/_sim/faults", None)
        .await;
    env.wait_app_condition("app", "Ready", "True", "CredentialsReady")
        .await;
    for (name, generation) in ["north", "south"].into_iter().zip(before) {
        let link = env
            .wait_link_condition(name, "Ready", "True", "Available")
            .await;
        assert_eq!(link.metadata.generation, generation, "no spec edit");
    }
    assert_eq!(
        env.sim_call_count("create_link").await,
        2,
        "no link recreated"
    );
}

/// The status fields each field manager owns (`fieldsV1` as text), by manager name.
fn status_fields_by_manager(
    meta: &kube::api::ObjectMeta,
) -> std::collections::BTreeMap<String, String> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.subresource.as_deref() == Some("status"))
        .filter_map(|entry| {
            Some((
                entry.manager.clone()?,
                serde_json::to_string(&entry.fields_v1.as_ref()?.0).ok()?,
            ))
        })
        .collect()
}
