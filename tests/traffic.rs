//! The WeCom traffic scheduler seen from outside: apps of one corp share one budget, WeCom's
//! rate limit closes an API without a retry storm, a restart sends no burst, a new link costs
//! no call beyond its A3, the poll interval stretches to fit the budget and says so, an
//! edit made while the cache lags behind the watch is not lost, and an edit overtakes the
//! passes already queued.
//!
//! Against the WeCom simulator and kubesim (tests/support).

mod support;

use std::{sync::Arc, time::Duration};

use kube::{ResourceExt, api::PostParams};
use serde_json::json;
use support::*;
use wecom_acq::{
    metrics::Metrics,
    reconcile::{
        context::{AppClients, Cadence},
        link,
    },
    wecom::{
        AllowedApiHosts, WeComError,
        scheduler::{CorpLimits, Priority, with_priority},
    },
};

/// Nothing is due for an hour, except what a test asks for.
fn hourly() -> Cadence {
    quiet_cadence()
}

#[tokio::test]
async fn apps_of_one_corp_share_one_budget_and_other_corps_do_not() {
    let env = Env::without_controller().await;
    let secret = env
        .apply_secret("s", &[(SECRET_KEY, wecom_acq::sim::DEFAULT_SECRET)])
        .await;
    let north = env.apply_app("north", &secret.name_any()).await;
    let south = env.apply_app("south", &secret.name_any()).await;
    let mut elsewhere = env.app_object("elsewhere", &secret.name_any());
    elsewhere.spec.corp_id = "ww-other-corp".into();
    let elsewhere = env
        .apps()
        .create(&PostParams::default(), &elsewhere)
        .await
        .unwrap();
    let clients = AppClients::new(
        env.client.clone(),
        Metrics::new(),
        AllowedApiHosts::loopback(),
    )
    .with_corp_limits(CorpLimits {
        per_minute: 6,
        ..CorpLimits::default()
    });
    let (n, s, e) = (
        clients.client_for(&north).await.unwrap(),
        clients.client_for(&south).await.unwrap(),
        clients.client_for(&elsewhere).await.unwrap(),
    );
    assert!(Arc::ptr_eq(n.scheduler(), s.scheduler()));
    assert!(!Arc::ptr_eq(n.scheduler(), e.scheduler()));

    // North spends the corp's six A8 calls of the minute (its token is another API).
    for _ in 0..6 {
        with_priority(Priority::Poll, n.quota()).await.unwrap();
    }
    // South, same corp: deferred without a request; the other corp is not affected.
    let sent = env.sim_call_count("customer_acquisition_quota").await;
    let err = with_priority(Priority::Poll, s.quota()).await.unwrap_err();
    assert!(
        matches!(err, WeComError::Deferred { blocked: false, .. }),
        "{err:?}"
    );
    assert_eq!(env.sim_call_count("customer_acquisition_quota").await, sent);
    // The other corp's client reaches the simulator, which refuses its corp id: what
    // matters is that it was sent.
    let _ = with_priority(Priority::Poll, e.quota()).await;
    assert!(env.sim_call_count("gettoken").await >= 2);
}

#[tokio::test]
async fn a_frequency_limit_closes_the_api_with_no_retry_until_the_window_passes() {
    let env = Env::without_controller().await;
    env.apply_secret("s", &[(SECRET_KEY, wecom_acq::sim::DEFAULT_SECRET)])
        .await;
    let app = env.apply_app("app", "s").await;
    let metrics = Metrics::new();
    let clients = AppClients::new(
        env.client.clone(),
        metrics.clone(),
        AllowedApiHosts::loopback(),
    );
    let client = clients.client_for(&app).await.unwrap();
    env.sim_request(
        reqwest::Method::POST,
        "/_sim/faults",
        Some(json!({"api": "customer_acquisition_quota", "errcode": 45009, "times": 1})),
    )
    .await;
    let err = client.quota().await.unwrap_err();
    // The one request WeCom refused, and no retry: the breaker answers instead.
    assert_eq!(env.sim_call_count("customer_acquisition_quota").await, 1);
    let after = err
        .retry_after()
        .expect("deferred to the end of WeCom's block");
    assert!(
        after > Duration::from_secs(50) && after <= Duration::from_secs(60),
        "{err}: {after:?}"
    );
    assert_eq!(client.scheduler().blocked().len(), 1);
    // Every class is held back, and other APIs are not.
    for class in [Priority::Now, Priority::SlowFact] {
        assert!(with_priority(class, client.quota()).await.is_err());
    }
    assert_eq!(env.sim_call_count("customer_acquisition_quota").await, 1);
    client.get_link("no-such-link").await.unwrap_err();
    assert_eq!(env.sim_call_count("get").await, 1, "A2 has its own window");
    let text = metrics.render();
    assert!(
        text.contains("wecom_acq_wecom_blocked_seconds_total{corp_id=\"")
            && text.contains("api=\"customer_acquisition_quota\"} 60"),
        "{text}"
    );
}

#[tokio::test]
async fn a_new_link_costs_its_a3_and_nothing_else_until_its_intervals() {
    let mut env = Env::start(hourly()).await;
    env.apply_app_with_secret("app").await;
    env.wait_app_condition("app", "Ready", "True", "CredentialsReady")
        .await;
    env.sim_request(reqwest::Method::DELETE, "/_sim/calls", None)
        .await;
    for i in 0..5 {
        env.apply_link(
            &format!("l{i}"),
            link_spec("app", &format!("L{i}"), &["zhangsan"]),
        )
        .await;
    }
    for i in 0..5 {
        env.wait_link_condition(&format!("l{i}"), "Ready", "True", "Available")
            .await;
    }
    let calls = env.sim_calls().await;
    assert_eq!(calls["create_link"], 5, "{calls}");
    for api in ["get", "customer", "statistic", "list_link"] {
        assert_eq!(calls[api].as_u64().unwrap_or(0), 0, "{api}: {calls}");
    }
    env.stop_controller().await;
}

#[tokio::test]
async fn a_restart_waits_for_each_links_phase_instead_of_polling_all_at_once() {
    let mut env = Env::start(hourly()).await;
    env.apply_app_with_secret("app").await;
    for i in 0..12 {
        env.apply_link(
            &format!("l{i}"),
            link_spec("app", &format!("L{i}"), &["zhangsan"]),
        )
        .await;
    }
    for i in 0..12 {
        env.wait_link_condition(&format!("l{i}"), "Ready", "True", "Available")
            .await;
    }
    env.stop_controller().await;
    env.sim_request(reqwest::Method::DELETE, "/_sim/calls", None)
        .await;

    // The new process's first pass over every link: no A2, A6 or A7 (each is due at its
    // phase within the hour), only the app's own check.
    env.start_controller(hourly()).await;
    wait_until("a first pass over every link", || async {
        (env.controller().passes("AcquisitionLink") >= 12).then_some(())
    })
    .await;
    let calls = env.sim_calls().await;
    for api in ["get", "customer", "statistic", "create_link"] {
        assert_eq!(calls[api].as_u64().unwrap_or(0), 0, "{api}: {calls}");
    }
    // The app's one A1 sweep (100 ids a page) stands in for the 12 A2.
    assert!(calls["list_link"].as_u64().unwrap_or(0) <= 1, "{calls}");
    env.stop_controller().await;
}

#[tokio::test]
async fn the_poll_interval_stretches_to_the_budget_and_says_so() {
    let cadence = Cadence {
        resync: Duration::from_secs(10),
        ..hourly()
    };
    let mut env = Env::start(cadence).await;
    env.apply_secret("s", &[(SECRET_KEY, wecom_acq::sim::DEFAULT_SECRET)])
        .await;
    let mut app = env.app_object("app", "s");
    // 12 calls a minute, half of it for polls: 5 links every 10 s would need 30/min.
    app.spec.requests_per_minute = Some(12);
    env.apps()
        .create(&PostParams::default(), &app)
        .await
        .unwrap();
    for i in 0..5 {
        env.apply_link(
            &format!("l{i}"),
            link_spec("app", &format!("L{i}"), &["zhangsan"]),
        )
        .await;
    }
    let store = env.controller().running.context.link_store.clone();
    wait_until("the five links in the controller's cache", || async {
        (store.state().len() == 5).then_some(())
    })
    .await;
    env.refresh_app_quota("app").await;
    let app = env
        .wait_for::<wecom_acq::api::WeComApp>("app", "polling reported", |a| {
            a.status
                .as_ref()
                .and_then(|s| s.polling.as_ref())
                .is_some_and(|p| p.links == 5)
        })
        .await;
    let polling = app.status.and_then(|s| s.polling).unwrap();
    // 6/min for polls, less the slow facts (5 links x 2/hour): 5 links every ~51 s.
    assert!(polling.stretched, "{polling:?}");
    assert_eq!(polling.interval_seconds, 51, "{polling:?}");
    let text = env.controller().metrics.render();
    assert!(
        text.contains("wecom_acq_effective_resync_seconds{namespace=\"default\",app=\"app\"} 51.4"),
        "{text}"
    );
    env.stop_controller().await;
}

#[tokio::test]
async fn an_edit_the_cache_has_not_caught_up_with_is_acted_on() {
    let mut env = Env::start(hourly()).await;
    env.apply_app_with_secret("app").await;
    env.apply_link("l", link_spec("app", "L", &["zhangsan"]))
        .await;
    let stale = env
        .wait_link_condition("l", "Ready", "True", "Available")
        .await;
    let ctx = env.controller().running.context.clone();
    // The controller stops; its cache keeps generation 1, as the reflector's store does
    // during a relist while the watch has already delivered generation 2.
    env.stop_controller().await;
    let edited = env
        .patch_link_spec("l", json!({"range": {"userList": ["lisi"]}}))
        .await;
    let generation = edited.metadata.generation.unwrap();
    assert_eq!(stale.metadata.generation, Some(generation - 1));
    // What the watch delivered: the edited object.
    ctx.seen_versions.note(
        stale.metadata.uid.as_deref().unwrap(),
        edited.metadata.resource_version.as_deref().unwrap(),
    );

    link::reconcile(Arc::new(stale.clone()), ctx).await.unwrap();

    let after = env.get_link("l").await;
    assert_eq!(
        after.status.as_ref().and_then(|s| s.observed_generation),
        Some(generation),
        "the pass acted on the newest generation"
    );
    let link_id = after.status.and_then(|s| s.link_id).unwrap();
    let remote = env.sim_link(&link_id).await.unwrap_or_default();
    assert_eq!(remote["range"]["user_list"], json!(["lisi"]), "{remote}");
}

/// Sixty new links, made while the controller was down, queue for two reconcile slots
/// behind a slow A3 when it starts; an edit of a link made before them is a person's and
/// does not wait for them: it reaches WeCom while most of the creates are still queued
/// (kube's queue alone runs it after all of them).
#[tokio::test]
async fn an_edit_overtakes_the_passes_already_queued() {
    let options = || wecom_acq::controller::StartOptions {
        allowed_api_hosts: AllowedApiHosts::loopback(),
        concurrency: 2,
        ..Default::default()
    };
    let mut env = Env::without_controller().await;
    env.start_controller_with(None, hourly(), options()).await;
    env.apply_app_with_secret("app").await;
    env.apply_link("first", link_spec("app", "First", &["zhangsan"]))
        .await;
    env.wait_link_condition("first", "Ready", "True", "Available")
        .await;
    env.stop_controller().await;
    const QUEUED: u64 = 60;
    for i in 0..QUEUED {
        env.apply_link(
            &format!("q{i:02}"),
            link_spec("app", &format!("Q{i}"), &["zhangsan"]),
        )
        .await;
    }
    env.sim_fault(json!({ "api": "create_link", "latency_ms": 100 }))
        .await;
    env.start_controller_with(None, hourly(), options()).await;
    wait_until("the creates under way", || async {
        (env.sim_call_count("create_link").await >= 2).then_some(())
    })
    .await;
    let edited = env
        .patch_link_spec("first", json!({"range": {"userList": ["lisi"]}}))
        .await;
    let generation = edited.metadata.generation;
    env.wait_for::<wecom_acq::api::AcquisitionLink>("first", "the edit applied", |l| {
        l.status.as_ref().and_then(|s| s.observed_generation) == generation
    })
    .await;
    let created = env.sim_call_count("create_link").await.saturating_sub(1);
    assert!(
        created < QUEUED / 2,
        "the edit waited for {created} of the {QUEUED} queued creates"
    );
    let link_id = env
        .get_link("first")
        .await
        .status
        .and_then(|s| s.link_id)
        .unwrap();
    let remote = env.sim_link(&link_id).await.unwrap_or_default();
    assert_eq!(remote["range"]["user_list"], json!(["lisi"]), "{remote}");
    env.stop_controller().await;
}

/// A link deleted in WeCom while the controller was down is found by the app's first A1
/// sweep, even when that pass starts before the link cache is filled (at 10,000 links the
/// first list takes seconds): the pass waits for the cache. It used to count no links,
/// sweep nothing and look again only at its next quota check, so the deleted link waited
/// up to the quota interval (10 minutes by default) to be recreated.
#[tokio::test]
async fn the_first_sweep_after_a_restart_waits_for_the_link_cache() {
    let mut env = Env::start(hourly()).await;
    env.apply_app_with_secret("app").await;
    for i in 0..3 {
        env.apply_link(
            &format!("l{i}"),
            link_spec("app", &format!("L{i}"), &["zhangsan"]),
        )
        .await;
    }
    for i in 0..3 {
        env.wait_link_condition(&format!("l{i}"), "Ready", "True", "Available")
            .await;
    }
    let link_id =
        |l: &wecom_acq::api::AcquisitionLink| l.status.as_ref().and_then(|s| s.link_id.clone());
    let victim_id = link_id(&env.get_link("l1").await).expect("link id");
    env.stop_controller().await;
    env.sim_request(
        reqwest::Method::DELETE,
        &format!("/_sim/links/{victim_id}"),
        None,
    )
    .await;
    env.sim_request(reqwest::Method::DELETE, "/_sim/calls", None)
        .await;

    // The link list is answered late, as one of 10,000 links is: the app's first pass
    // starts before the link cache is filled.
    env.kube
        .faults()
        .delay_lists("acquisitionlinks", Duration::from_secs(2));
    env.start_controller(hourly()).await;
    env.wait_for::<wecom_acq::api::AcquisitionLink>("l1", "recreated by the sweep", |l| {
        link_id(l).is_some_and(|id| id != victim_id)
    })
    .await;
    let calls = env.sim_calls().await;
    // Found by the sweep, not by polling every link: the victim's own A2, and the listing
    // taken after it that confirms the link is gone (the sweep's predates that A2).
    assert_eq!(calls["get"].as_u64().unwrap_or(0), 1, "{calls}");
    assert_eq!(calls["list_link"].as_u64().unwrap_or(0), 2, "{calls}");
    env.stop_controller().await;
}
