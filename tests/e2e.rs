//! End to end: the real `wecom-acq run` binary, as a subprocess, against the Kubernetes API
//! emulator (kubesim) and the WeCom simulator over real HTTP, with the YAML of `examples/`.
//!
//! Each test starts its own simulator, emulator and controller (own ports, own namespace),
//! waits on status and on the simulator's state with deadlines, and prints its duration
//! (`cargo test --test e2e -- --nocapture` shows them). The controller runs with a 2 s
//! resync and 5 s customer/statistics/quota cadences so that every poll-driven repair
//! happens within seconds. The API outage lasts 12 s instead of the minute, to
//! keep CI fast; the behaviour exercised (back-off, then convergence) is the same.
//!
//! Callbacks are off here (the simulator pushes nothing), so every repair comes from
//! polling; [`process::Env::start_with_callbacks`] points the simulator at the
//! controller's `--callback-addr` for the callback tests.
#![cfg(unix)]

#[path = "e2e/soak.rs"]
mod soak;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube::api::DeleteParams;
use reqwest::Method;
use serde_json::{Value, json};
use support::process::{
    self, APP, Env, RESYNC, SLOW_FACTS, Scenario, annotation, condition, is_ready, link_id,
};
use support::{sim_links_named, wait_for};
use wecom_acq::api::{CREATE_PENDING_ANNOTATION, LINK_ID_ANNOTATION};
use wecom_acq::leader::CALLBACK_LEADER_LABEL;

/// Generous deadline for anything the controller does on its own (first Ready, a watch
/// event): the machine running CI is shared and slow.
const CONVERGE: Duration = Duration::from_secs(30);
const SALES: &str = "sales";
const SALES_NAME: &str = "销售咨询";
const SUPPORT: &str = "support";
const SUPPORT_NAME: &str = "After-sales support";

fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    items
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn numbers(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// Starts everything with the examples applied and both links Ready; `controller_flags`
/// are added to `wecom-acq run`.
async fn ready_world(ns: &str, controller_flags: &[&str]) -> (Env, process::ControllerProcess) {
    let env = Env::start(ns).await;
    let controller = env.spawn_controller(controller_flags);
    env.apply_examples().await;
    env.wait_ready(SALES, CONVERGE).await;
    env.wait_ready(SUPPORT, CONVERGE).await;
    (env, controller)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_makes_ready_links_with_urls_counts_and_quota() {
    let scenario = Scenario::start("create");
    let env = Env::start("e2e-create").await;
    let _controller = env.spawn_controller(&[]);
    env.wait_controller_ready(CONVERGE).await;
    env.apply_examples().await;

    let sales = env.wait_ready(SALES, CONVERGE).await;
    let support = env.wait_ready(SUPPORT, CONVERGE).await;
    eprintln!(
        "  both links Ready after {:.1} s",
        scenario.elapsed().as_secs_f64()
    );

    // Link id, URL and one URL per channel, all matching what WeCom holds.
    let state = env.sim_state().await;
    let remote = sim_links_named(&state, SALES_NAME);
    assert_eq!(remote.len(), 1, "one WeCom link for sales: {remote:?}");
    let status = sales.status.clone().unwrap();
    assert_eq!(status.link_id.as_deref(), remote[0]["link_id"].as_str());
    assert_eq!(status.url.as_deref(), remote[0]["url"].as_str());
    assert_eq!(
        sorted(&strings(&remote[0]["range"]["user_list"])),
        vec!["lisi".to_string(), "zhangsan".to_string()]
    );
    assert_eq!(remote[0]["skip_verify"], true);
    let url = status.url.clone().unwrap();
    let channels: Vec<&str> = status
        .channel_urls
        .iter()
        .map(|c| c.channel.as_str())
        .collect();
    assert_eq!(channels, ["wechat-moments", "offline-poster", "官网首页"]);
    for channel in &status.channel_urls {
        assert!(
            channel.url.starts_with(&format!("{url}?customer_channel=")),
            "channel URL {} is the link URL with customer_channel",
            channel.url
        );
        assert!(
            channel.scheme_url.starts_with("weixin://"),
            "{}",
            channel.scheme_url
        );
    }
    assert!(
        status.channel_urls[2]
            .url
            .ends_with("%E5%AE%98%E7%BD%91%E9%A6%96%E9%A1%B5"),
        "a Chinese channel is percent-encoded: {}",
        status.channel_urls[2].url
    );
    assert_eq!(
        annotation(&sales, LINK_ID_ANNOTATION),
        status.link_id,
        "the id is also kept in an annotation"
    );
    assert_eq!(annotation(&sales, CREATE_PENDING_ANNOTATION), None);
    let support_remote = sim_links_named(&state, SUPPORT_NAME);
    assert_eq!(support_remote.len(), 1);
    assert_eq!(
        link_id(&support).as_deref(),
        support_remote[0]["link_id"].as_str()
    );
    assert_eq!(
        numbers(&support_remote[0]["range"]["department_list"]),
        vec![1]
    );
    assert_eq!(support_remote[0]["skip_verify"], false);

    // Printer columns: customers after the first count, quota balance.
    let sales_id = status.link_id.clone().unwrap();
    let links = env.links();
    wait_for(
        "first customer count and quota on sales",
        CONVERGE,
        || async {
            let link = links.get(SALES).await.map_err(|e| e.to_string())?;
            let s = link.status.clone().unwrap_or_default();
            match (&s.customers, &s.quota) {
                (Some(c), Some(q)) if c.total == 0 && q.balance == 1000 => Ok(()),
                _ => Err(format!("customers {:?} quota {:?}", s.customers, s.quota)),
            }
        },
    )
    .await;

    // Customers join through a channel: counted per channel on the customers cadence,
    // and the app's quota (A8) goes down, seen in the link's printer column.
    env.admin
        .request(
            Method::POST,
            &format!("/_sim/links/{sales_id}/customers"),
            Some(json!({"count": 2, "state": "wechat-moments"})),
        )
        .await;
    let counted = Instant::now();
    wait_for(
        "customers 2 (wechat-moments), new customers 2 and quota 998 on sales",
        CONVERGE,
        || async {
            let link = links.get(SALES).await.map_err(|e| e.to_string())?;
            let s = link.status.clone().unwrap_or_default();
            let customers = s
                .customers
                .as_ref()
                .map(|c| (c.total, c.by_channel.get("wechat-moments").copied()));
            let quota = s.quota.as_ref().map(|q| q.balance);
            let new_customers = s.statistics.as_ref().map(|st| st.new_customers);
            if customers == Some((2, Some(2))) && quota == Some(998) && new_customers == Some(2) {
                Ok(())
            } else {
                Err(format!(
                    "customers {customers:?} quota {quota:?} new customers {new_customers:?}"
                ))
            }
        },
    )
    .await;
    eprintln!(
        "  customers and quota refreshed {:.1} s after the customers joined (cadence {SLOW_FACTS:?})",
        counted.elapsed().as_secs_f64()
    );
    let app = env.apps().get(APP).await.unwrap();
    let app_status = app.status.unwrap();
    assert_eq!(app_status.quota.as_ref().map(|q| q.balance), Some(998));
    assert!(
        app_status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "app Ready: {:?}",
        app_status.conditions
    );
    let created = env.wait_event(SALES, "Created", CONVERGE).await;
    assert!(created.contains(&sales_id), "{created}");

    // Health and metrics over HTTP.
    let (status, _) = env.controller_get("/readyz").await.unwrap();
    assert_eq!(status, 200);
    let (status, _) = env.controller_get("/healthz").await.unwrap();
    assert_eq!(status, 200);
    let (status, metrics) = env.controller_get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("wecom_acq_reconciles_total{kind=\"AcquisitionLink\",result=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wecom_acq_links{ready=\"True\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wecom_acq_wecom_calls_total{api=\"create_link\",errcode=\"0\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("sim-secret"), "no secret in metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_range_sends_the_complete_range() {
    let (env, _controller) = ready_world("e2e-edit", &[]).await;
    let scenario = Scenario::start("edit range");
    let before = env.sim_calls("update_link").await;

    env.patch_link_spec(
        SALES,
        json!({"range": {"userList": ["zhangsan", "lisi", "wangwu"], "departmentList": [2]}}),
    )
    .await;
    // A4 replaces the whole range when `range` is sent, so the simulator holding the full
    // desired range proves the call carried all of it, not just the additions.
    wait_for("the complete new range in WeCom", CONVERGE, || async {
        let links = env.sim_links_named(SALES_NAME).await;
        let range = links
            .first()
            .map(|l| l["range"].clone())
            .unwrap_or_default();
        let users = sorted(&strings(&range["user_list"]));
        let departments = numbers(&range["department_list"]);
        if users == ["lisi", "wangwu", "zhangsan"] && departments == [2] {
            Ok(())
        } else {
            Err(range.to_string())
        }
    })
    .await;
    eprintln!(
        "  range applied in WeCom after {:.1} s",
        scenario.elapsed().as_secs_f64()
    );
    let link = env.wait_ready(SALES, CONVERGE).await;
    assert_eq!(
        env.sim_calls("update_link").await,
        before + 1,
        "exactly one A4"
    );
    assert_eq!(env.sim_calls("create_link").await, 2, "no new link");
    let status = link.status.unwrap();
    assert_eq!(status.observed_generation, link.metadata.generation);
    let note = env.wait_event(SALES, "Updated", CONVERGE).await;
    assert!(note.contains("range"), "the Event names the range: {note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_edit_is_corrected_on_the_next_pass_with_an_event() {
    // This one watches its namespace only (--namespace), as a namespaced install does.
    let (env, _controller) = ready_world("e2e-drift", &["--namespace", "e2e-drift"]).await;
    let scenario = Scenario::start("console edit (drift)");
    let id = link_id(&env.link(SALES).await).unwrap();

    env.admin
        .request(
            Method::PATCH,
            &format!("/_sim/links/{id}"),
            Some(
                json!({"link_name": "renamed in console", "skip_verify": false,
                    "range": {"user_list": ["wangwu"]}}),
            ),
        )
        .await;
    let edited = Instant::now();
    // The next pass (at most one resync later) puts the spec back with A4.
    let corrected = wait_for(
        "the console edit undone in WeCom",
        RESYNC + CONVERGE,
        || async {
            let state = env.sim_state().await;
            let link = state["links"]
                .as_array()
                .and_then(|l| l.iter().find(|l| l["link_id"] == id.as_str()).cloned())
                .unwrap_or_default();
            let users = sorted(&strings(&link["range"]["user_list"]));
            if link["link_name"] == SALES_NAME
                && link["skip_verify"] == true
                && users == ["lisi", "zhangsan"]
            {
                Ok(edited.elapsed())
            } else {
                Err(link.to_string())
            }
        },
    )
    .await;
    eprintln!(
        "  drift corrected {:.1} s after the console edit (resync {RESYNC:?})",
        corrected.as_secs_f64()
    );
    let note = env.wait_event(SALES, "DriftCorrected", CONVERGE).await;
    assert!(note.contains(&id), "{note}");
    let link = env.link(SALES).await;
    assert!(is_ready(&link));
    assert_eq!(
        link_id(&link).as_deref(),
        Some(id.as_str()),
        "same link, not a new one"
    );
    assert_eq!(env.sim_calls("create_link").await, 2);
    drop(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_delete_without_callbacks_is_recreated_within_one_poll() {
    let (env, _controller) = ready_world("e2e-console-delete", &[]).await;
    let scenario = Scenario::start("console delete (polling)");
    let old_sales = link_id(&env.link(SALES).await).unwrap();
    let old_support = link_id(&env.link(SUPPORT).await).unwrap();

    env.admin
        .request(Method::DELETE, &format!("/_sim/links/{old_sales}"), None)
        .await;
    env.admin
        .request(Method::DELETE, &format!("/_sim/links/{old_support}"), None)
        .await;
    let deleted = Instant::now();

    // Recreate: a new link, its id in status, within one resync (plus the pass itself on
    // a busy machine).
    let links = env.links();
    let new_id = wait_for(
        "sales recreated with a new id",
        RESYNC + Duration::from_secs(4),
        || async {
            let link = links.get(SALES).await.map_err(|e| e.to_string())?;
            match link_id(&link) {
                Some(id) if id != old_sales && is_ready(&link) => Ok(id),
                _ => Err(format!("{:?}", link.status)),
            }
        },
    )
    .await;
    eprintln!(
        "  recreated {:.1} s after the console delete (resync {RESYNC:?})",
        deleted.elapsed().as_secs_f64()
    );
    let remote = env.sim_links_named(SALES_NAME).await;
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert_eq!(remote[0]["link_id"], new_id.as_str());
    let note = env.wait_event(SALES, "Recreated", CONVERGE).await;
    assert!(
        note.contains(&old_sales) && note.contains(&new_id),
        "{note}"
    );

    // Orphan: not recreated, reported.
    wait_for("support reported RemoteDeleted", CONVERGE, || async {
        let link = links.get(SUPPORT).await.map_err(|e| e.to_string())?;
        match condition(&link, "Ready") {
            Some(c) if c.status == "False" && c.reason == "RemoteDeleted" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        env.sim_links_named(SUPPORT_NAME).await.is_empty(),
        "Orphan is not recreated"
    );
    assert_eq!(
        env.sim_calls("create_link").await,
        3,
        "only sales was created again"
    );
    drop(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_delete_with_callbacks_is_recreated_within_seconds() {
    // A resync of an hour: only the signed delete_link callback can explain a fast answer.
    let env = Env::start_with_callbacks("e2e-callback-delete").await;
    let _controller = env.spawn_controller(&["--resync-interval", "1h"]);
    env.wait_controller_ready(CONVERGE).await;
    env.apply_examples().await;
    env.wait_ready(SALES, CONVERGE).await;
    env.wait_ready(SUPPORT, CONVERGE).await;
    let scenario = Scenario::start("console delete (callbacks)");
    let old_sales = link_id(&env.link(SALES).await).unwrap();
    let creates_before = env.sim_calls("create_link").await;

    env.admin
        .request(Method::DELETE, &format!("/_sim/links/{old_sales}"), None)
        .await;
    let deleted = Instant::now();
    let links = env.links();
    let new_id = wait_for("sales recreated after the callback", CONVERGE, || async {
        let link = links.get(SALES).await.map_err(|e| e.to_string())?;
        match link_id(&link) {
            Some(id) if id != old_sales && is_ready(&link) => Ok(id),
            _ => Err(format!("{:?}", link.status)),
        }
    })
    .await;
    let took = deleted.elapsed();
    eprintln!(
        "  recreated {:.3} s after the console delete (resync 1h: by callback)",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(60),
        "only the callback can explain a recreate well inside the 1h resync"
    );
    let remote = env.sim_links_named(SALES_NAME).await;
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert_eq!(remote[0]["link_id"], new_id.as_str());
    assert_eq!(env.sim_calls("create_link").await, creates_before + 1);
    let note = env.wait_event(SALES, "Recreated", CONVERGE).await;
    assert!(
        note.contains(&old_sales) && note.contains(&new_id),
        "{note}"
    );
    drop(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_object_deletes_or_orphans_the_remote_link() {
    let (env, _controller) = ready_world("e2e-delete", &[]).await;
    let scenario = Scenario::start("delete the CR");
    let sales_id = link_id(&env.link(SALES).await).unwrap();
    let support_id = link_id(&env.link(SUPPORT).await).unwrap();
    let links = env.links();

    // deletionPolicy: Delete -> A5, then the finalizer goes and the object with it.
    links.delete(SALES, &DeleteParams::default()).await.unwrap();
    wait_for("sales gone (404)", CONVERGE, || async {
        match links.get_opt(SALES).await {
            Ok(None) => Ok(()),
            Ok(Some(l)) => Err(format!(
                "still there, finalizers {:?}",
                l.metadata.finalizers
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let state = env.sim_state().await;
    assert!(
        sim_links_named(&state, SALES_NAME).is_empty(),
        "A5 deleted {sales_id}"
    );
    assert_eq!(state["calls"]["delete_link"], 1);

    // deletionPolicy: Orphan -> no A5, the WeCom link stays.
    links
        .delete(SUPPORT, &DeleteParams::default())
        .await
        .unwrap();
    wait_for("support gone (404)", CONVERGE, || async {
        match links.get_opt(SUPPORT).await {
            Ok(None) => Ok(()),
            Ok(Some(l)) => Err(format!(
                "still there, finalizers {:?}",
                l.metadata.finalizers
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let state = env.sim_state().await;
    let kept = sim_links_named(&state, SUPPORT_NAME);
    assert_eq!(kept.len(), 1, "Orphan keeps the WeCom link");
    assert_eq!(kept[0]["link_id"], support_id.as_str());
    assert_eq!(state["calls"]["delete_link"], 1, "no A5 for Orphan");
    let deleted = env.wait_event(SALES, "Deleted", CONVERGE).await;
    assert!(deleted.contains(&sales_id), "{deleted}");
    let orphaned = env.wait_event(SUPPORT, "Orphaned", CONVERGE).await;
    assert!(orphaned.contains(&support_id), "{orphaned}");
    drop(scenario);
}

/// Starts the world without links, with the next A3 held for 1.5 s by the simulator, and
/// creates the sales link: returns once the controller has written the create-pending
/// marker and its A3 is in flight.
async fn create_in_flight(env: &Env) {
    env.apply_app().await;
    env.admin
        .fault(json!({"api": "create_link", "latency_ms": 1500, "times": 1}))
        .await;
    env.apply_link("link-sales.yaml").await;
    let links = env.links();
    wait_for(
        "create-pending marker and A3 in flight",
        CONVERGE,
        || async {
            let link = links.get(SALES).await.map_err(|e| e.to_string())?;
            let marked = annotation(&link, CREATE_PENDING_ANNOTATION).is_some();
            let calls = env.sim_calls("create_link").await;
            if marked && calls == 1 {
                Ok(())
            } else {
                Err(format!("marker {marked}, create_link calls {calls}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_the_create_call_is_in_flight_leaves_one_link() {
    let env = Env::start("e2e-kill-in-flight").await;
    let mut first = env.spawn_controller(&[]);
    env.wait_controller_ready(CONVERGE).await;
    let scenario = Scenario::start("SIGKILL during A3");
    create_in_flight(&env).await;
    first.sigkill();

    let link = env.link(SALES).await;
    assert!(annotation(&link, CREATE_PENDING_ANNOTATION).is_some());
    assert_eq!(link_id(&link), None, "killed before the id was written");
    let _second = env.spawn_controller(&[]);
    let link = env.wait_ready(SALES, CONVERGE).await;
    let remote = env.sim_links_named(SALES_NAME).await;
    assert_eq!(remote.len(), 1, "no duplicate link: {remote:?}");
    assert_eq!(link_id(&link).as_deref(), remote[0]["link_id"].as_str());
    assert_eq!(annotation(&link, CREATE_PENDING_ANNOTATION), None);
    let adopted = env
        .events_for(SALES)
        .await
        .iter()
        .any(|e| e.reason.as_deref() == Some("Adopted"));
    eprintln!(
        "  in-flight A3 {} (create_link calls: {})",
        if adopted {
            "completed after the kill; the restarted controller adopted its link"
        } else {
            "was abandoned with the connection; the restarted controller created the link"
        },
        env.sim_calls("create_link").await
    );
    drop(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_create_before_the_id_write_adopts_the_link() {
    let env = Env::start("e2e-kill-before-id").await;
    let mut first = env.spawn_controller(&[]);
    env.wait_controller_ready(CONVERGE).await;
    let scenario = Scenario::start("SIGKILL before the id write");
    create_in_flight(&env).await;
    // While A3 is held, make every write to AcquisitionLinks fail: the link gets made in
    // WeCom but its id cannot be recorded (annotation or status).
    let faults = env.kube.faults();
    faults.fail_next_writes("acquisitionlinks", 10_000, 500);
    let made = wait_for("A3 completed in WeCom", CONVERGE, || async {
        let remote = env.sim_links_named(SALES_NAME).await;
        match remote.as_slice() {
            [one] => Ok(one["link_id"].as_str().unwrap_or_default().to_string()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    first.sigkill();
    faults.clear();

    let link = env.link(SALES).await;
    assert!(annotation(&link, CREATE_PENDING_ANNOTATION).is_some());
    assert_eq!(annotation(&link, LINK_ID_ANNOTATION), None);
    assert_eq!(link_id(&link), None, "the id was never written");
    let _second = env.spawn_controller(&[]);
    let link = env.wait_ready(SALES, CONVERGE).await;
    assert_eq!(
        link_id(&link).as_deref(),
        Some(made.as_str()),
        "adopted, not recreated"
    );
    let remote = env.sim_links_named(SALES_NAME).await;
    assert_eq!(remote.len(), 1, "no duplicate link: {remote:?}");
    assert_eq!(env.sim_calls("create_link").await, 1, "one A3 in all");
    let note = env.wait_event(SALES, "Adopted", CONVERGE).await;
    assert!(note.contains(&made), "{note}");
    drop(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_recover_and_later_spec_changes_apply() {
    let (env, controller) = ready_world("e2e-watch-drops", &[]).await;
    let scenario = Scenario::start("watch connections dropped");
    let faults = env.kube.faults();
    // Cut every watch ten times, 300 ms apart: the controller's watchers are cut while
    // they re-list and while they back off.
    let mut schedule = tokio::time::interval(Duration::from_millis(300));
    for _ in 0..10 {
        schedule.tick().await;
        faults.drop_watches();
    }
    let dropped = Instant::now();
    // The cuts reached the binary: kube-rs logs each broken watch body as "eof in poll"
    // (and re-watches from its last resourceVersion).
    let cuts = controller.log().matches("eof in poll").count();
    assert!(
        cuts >= 10,
        "the controller saw {cuts} broken watches, expected one per drop at least"
    );
    // A pass reads the object from the watch cache, so only a recovered watch brings this
    // change to WeCom.
    env.patch_link_spec(SALES, json!({"linkName": "销售咨询-二期"}))
        .await;
    wait_for("the renamed link in WeCom", CONVERGE, || async {
        let renamed = env.sim_links_named("销售咨询-二期").await;
        if renamed.len() == 1 {
            Ok(())
        } else {
            Err(format!("{renamed:?}"))
        }
    })
    .await;
    eprintln!(
        "  {cuts} watch connections cut; spec change applied {:.1} s after the last drop",
        dropped.elapsed().as_secs_f64()
    );
    env.wait_ready(SALES, CONVERGE).await;
    assert_eq!(env.sim_calls("create_link").await, 2, "no link recreated");
    drop(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outage_backs_off_and_converges_after() {
    const OUTAGE: Duration = Duration::from_secs(12);
    let (env, _controller) = ready_world("e2e-outage", &[]).await;
    let scenario = Scenario::start("API answers 500 (12 s)");
    let old_id = link_id(&env.link(SALES).await).unwrap();
    let faults = env.kube.faults();
    env.admin.request(Method::DELETE, "/_sim/calls", None).await;

    // Every request answers 500, and the open watches are cut so the controller must
    // re-list through the outage.
    faults.fail_all_requests_for(OUTAGE, 500);
    faults.drop_watches();
    let outage_started = Instant::now();
    // Meanwhile the link is deleted in the console: the controller sees it by polling
    // WeCom but cannot write the create-pending marker, so it must not create anything.
    env.admin
        .request(Method::DELETE, &format!("/_sim/links/{old_id}"), None)
        .await;
    let links = env.links();
    // Our own writes fail too until the outage ends; retrying is how we see it end.
    wait_for("the outage to end", OUTAGE + CONVERGE, || async {
        links
            .patch(
                SALES,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&json!({"spec": {"linkName": "销售咨询-恢复"}})),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    let ended = Instant::now();
    let during = env.sim_state().await;
    eprintln!(
        "  outage ended after {:.1} s; WeCom calls during it: {}",
        outage_started.elapsed().as_secs_f64(),
        during["calls"]
    );
    assert_eq!(
        during["calls"]["create_link"].as_u64().unwrap_or(0),
        0,
        "no A3 while the create-pending marker cannot be written"
    );
    // Back-off: a pass retries a Kubernetes failure after seconds, not in a hot loop.
    let total = during["calls"]["total"].as_u64().unwrap_or(0);
    assert!(
        total < 60,
        "at most a few WeCom calls per second during the outage: {total}"
    );

    // Converges: recreated under the spec written after the outage, exactly once.
    let new_id = wait_for("sales recreated under the new name", CONVERGE, || async {
        let link = links.get(SALES).await.map_err(|e| e.to_string())?;
        let remote = env.sim_links_named("销售咨询-恢复").await;
        match (link_id(&link), remote.as_slice()) {
            (Some(id), [one]) if is_ready(&link) && one["link_id"] == id.as_str() => Ok(id),
            (id, remote) => Err(format!("status id {id:?}, WeCom {remote:?}")),
        }
    })
    .await;
    eprintln!(
        "  converged {:.1} s after the outage ended",
        ended.elapsed().as_secs_f64()
    );
    assert_ne!(new_id, old_id);
    let state = env.sim_state().await;
    assert_eq!(state["calls"]["create_link"], 1, "recreated once");
    assert!(sim_links_named(&state, SALES_NAME).is_empty());
    assert!(is_ready(&env.wait_ready(SUPPORT, CONVERGE).await));
    drop(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully_with_exit_code_zero() {
    let (env, mut controller) = ready_world("e2e-sigterm", &[]).await;
    let scenario = Scenario::start("SIGTERM");
    // Catch a pass in the middle of a WeCom call: the next A2 is held for 1.5 s.
    let before = env.sim_calls("get").await;
    env.admin
        .fault(json!({"api": "get", "latency_ms": 1500, "times": 1}))
        .await;
    wait_for("an A2 in flight", CONVERGE, || async {
        let calls = env.sim_calls("get").await;
        if calls > before {
            Ok(())
        } else {
            Err(format!("get calls {calls}"))
        }
    })
    .await;
    let signalled = Instant::now();
    controller.sigterm();
    let status = controller.wait_exit(Duration::from_secs(10)).await;
    let status = status.expect("the controller exits within 10 s of SIGTERM");
    eprintln!(
        "  exited {:.1} s after SIGTERM (a 1.5 s WeCom call was in flight)",
        signalled.elapsed().as_secs_f64()
    );
    assert!(status.success(), "exit status {status}");
    assert!(
        env.controller_get("/healthz").await.is_err(),
        "the health listener is closed"
    );
    drop(scenario);
}

/// The holder of the leader-election Lease, if any.
async fn lease_holder(env: &Env) -> Option<String> {
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    leases
        .get_opt("wecom-acquisition-controller")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// Waits until a replica's /healthz and /readyz both answer 200.
async fn wait_probes_ok(env: &Env, metrics: std::net::SocketAddr) {
    wait_for("the replica's probes answer 200", CONVERGE, || async {
        let healthz = env.get_on(metrics, "/healthz").await.map(|r| r.0);
        let readyz = env.get_on(metrics, "/readyz").await.map(|r| r.0);
        match (&healthz, &readyz) {
            (Ok(200), Ok(200)) => Ok(()),
            _ => Err(format!("healthz {healthz:?}, readyz {readyz:?}")),
        }
    })
    .await;
}

fn pods(env: &Env) -> kube::Api<k8s_openapi::api::core::v1::Pod> {
    kube::Api::namespaced(env.client.clone(), &env.ns)
}

/// Creates the Pod object of the next replica (the emulator runs nothing; the controller
/// only labels its own Pod), with `labels`.
async fn create_next_pod(env: &Env, labels: Value) -> String {
    let name = env.next_identity();
    let pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "controller", "image": "wecom-acq"}]},
    }))
    .unwrap();
    pods(env)
        .create(&kube::api::PostParams::default(), &pod)
        .await
        .unwrap();
    name
}

/// The callback leader label of a replica's Pod.
async fn callback_leader_label(env: &Env, pod: &str) -> Option<String> {
    let pod = pods(env).get(pod).await.unwrap();
    pod.metadata
        .labels
        .and_then(|labels| labels.get(CALLBACK_LEADER_LABEL).cloned())
}

async fn wait_label(env: &Env, pod: &str, want: Option<&str>) {
    wait_for(
        &format!("the callback leader label of {pod} is {want:?}"),
        CONVERGE,
        || async {
            let label = callback_leader_label(env, pod).await;
            if label.as_deref() == want {
                Ok(())
            } else {
                Err(format!("{label:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_standby_answers_probes_and_takes_over() {
    let env = Env::start("e2e-leader").await;
    let scenario = Scenario::start("leader election");
    let flags = ["--leader-elect", "--lease-namespace", "e2e-leader"];
    let leader_pod = create_next_pod(&env, json!({"app": "wecom-acq"})).await;
    let mut leader = env.spawn_controller(&flags);
    assert_eq!(leader.identity, leader_pod);
    env.apply_examples().await;
    env.wait_ready(SALES, CONVERGE).await;
    assert_eq!(lease_holder(&env).await, Some(leader.identity.clone()));
    // The leader serves callbacks, so the callback Service is to select its Pod.
    wait_label(&env, &leader_pod, Some("true")).await;

    // A second replica stands by: alive and ready for the probes (the chart's liveness
    // probe would restart it otherwise, and its maxUnavailable: 0 rollout waits for it to
    // be Ready), reconciling nothing.
    // Its Pod still carries the label from an earlier life (it led, lost the Lease and
    // restarted): removed before the replica reports ready, so callbacks are not routed
    // to a port that is closed.
    let standby_pod = create_next_pod(
        &env,
        json!({"app": "wecom-acq", CALLBACK_LEADER_LABEL: "true"}),
    )
    .await;
    let standby_ports = process::Ports::free();
    let mut standby = env.spawn_controller_on(standby_ports, &flags);
    wait_probes_ok(&env, standby_ports.metrics).await;
    assert_eq!(callback_leader_label(&env, &standby_pod).await, None);
    assert_eq!(
        callback_leader_label(&env, &leader_pod).await.as_deref(),
        Some("true")
    );
    let (_, metrics) = env.get_on(standby_ports.metrics, "/metrics").await.unwrap();
    assert!(
        !metrics.contains("wecom_acq_reconciles_total{"),
        "the standby reconciles nothing: {metrics}"
    );

    // The leader dies without handing over: the standby takes the Lease once it expires
    // and picks up a change made meanwhile.
    leader.sigkill();
    let killed = Instant::now();
    env.patch_link_spec(SALES, json!({"linkName": "销售咨询-接管"}))
        .await;
    wait_for(
        "the standby applies the change",
        Duration::from_secs(45),
        || async {
            let renamed = env.sim_links_named("销售咨询-接管").await;
            if renamed.len() == 1 {
                Ok(())
            } else {
                Err(format!("lease holder {:?}", lease_holder(&env).await))
            }
        },
    )
    .await;
    eprintln!(
        "  standby took over {:.1} s after the leader was killed",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(lease_holder(&env).await, Some(standby.identity.clone()));
    wait_label(&env, &standby_pod, Some("true")).await;

    // A replica still waiting for the Lease stops cleanly on SIGTERM.
    let waiting_pod = create_next_pod(&env, json!({"app": "wecom-acq"})).await;
    let waiting_ports = process::Ports::free();
    let mut waiting = env.spawn_controller_on(waiting_ports, &flags);
    wait_probes_ok(&env, waiting_ports.metrics).await;
    waiting.sigterm();
    let status = waiting.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "a waiting replica exits 0 on SIGTERM: {status:?}"
    );
    assert_eq!(callback_leader_label(&env, &waiting_pod).await, None);
    // A leader shutting down hands callbacks over with the Lease.
    standby.sigterm();
    let status = standby.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(callback_leader_label(&env, &standby_pod).await, None);
    drop(scenario);
}

/// A few trials of the crash soak (`cargo bench --bench crash_soak` runs 1,000): the
/// controller killed at random moments while links are created, edited and deleted.
#[tokio::test]
async fn crash_soak_short() {
    let _scenario = Scenario::start("crash soak (5 trials)");
    let env = Env::start("soak").await;
    let report = soak::run(&env, 5, 7, &[]).await;
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert_eq!(report.trials, 5);
}
