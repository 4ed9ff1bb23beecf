//! Issue 13.2: a panic in one reconcile pass stays with its object. The panic is injected
//! through the controller's pass hook (no input can make a pass panic once the bugs are
//! fixed), inside the same boundary a real panic would meet.

mod support;

use std::sync::Arc;

use wecom_acq::controller::{PassHook, StartOptions};
use wecom_acq::isolation::{Liveness, task};
use wecom_acq::metrics::TaskLabels;

use support::*;

/// A hook that panics in every pass on the objects named in `doomed` (kind, name).
fn panicking_on(doomed: &'static [(&'static str, &'static str)]) -> PassHook {
    Arc::new(move |kind: &str, _namespace: &str, name: &str| {
        if doomed.contains(&(kind, name)) {
            panic!("injected panic in the pass on {kind} {name}");
        }
    })
}

fn panics(env: &Env, task: &str) -> u64 {
    env.controller()
        .metrics
        .panics
        .get_or_create(&TaskLabels { task: task.into() })
        .get()
}

#[tokio::test]
async fn a_panicking_pass_is_reported_on_its_object_and_the_others_go_on() {
    let mut env = Env::without_controller().await;
    let liveness = Liveness::default();
    env.start_controller_with(
        None,
        fast_cadence(),
        StartOptions {
            liveness: liveness.clone(),
            pass_hook: Some(panicking_on(&[
                ("AcquisitionLink", "doomed"),
                ("WeComApp", "broken"),
            ])),
            allowed_api_hosts: wecom_acq::wecom::AllowedApiHosts::loopback(),
            ..Default::default()
        },
    )
    .await;
    env.apply_app_with_secret("app").await;
    env.apply_app_with_secret("broken").await;
    env.apply_link("doomed", link_spec("app", "Doomed", &["zhangsan"]))
        .await;
    env.apply_link("healthy", link_spec("app", "Healthy", &["lisi"]))
        .await;

    // The healthy app and link converge beside the panicking ones.
    env.wait_app_ready("app").await;
    env.wait_link_ready("healthy").await;
    let doomed = env
        .wait_link_condition("doomed", "Ready", "False", "InternalError")
        .await;
    let (_, _, message) = link_condition(&doomed, "Ready").unwrap_or_default();
    assert!(message.contains("internal error"), "{message}");
    assert!(
        !message.contains("injected panic"),
        "the panic text stays in the log: {message}"
    );
    env.wait_app_condition("broken", "Ready", "False", "InternalError")
        .await;
    assert!(panics(&env, task::LINK_RECONCILE) >= 1);
    assert!(panics(&env, task::APP_RECONCILE) >= 1);

    // The controller still takes edits after the panics.
    env.patch_link_spec("healthy", serde_json::json!({ "linkName": "Healthy 2" }))
        .await;
    let edited = env.wait_link_ready("healthy").await;
    let link_id = status_link_id(&edited);
    wait_until("WeCom to hold the edited name", || {
        let env = &env;
        let link_id = link_id.clone();
        async move {
            let remote = env.sim_link(&link_id).await?;
            (remote["link_name"] == "Healthy 2").then_some(())
        }
    })
    .await;
    // Nothing of WeCom's was created for the object whose passes panic.
    assert_eq!(env.sim_links().await.len(), 1);
    assert!(liveness.is_alive(), "{:?}", liveness.stopped());
    let rendered = env.controller().metrics.render();
    assert!(
        rendered.contains(r#"wecom_acq_panics_total{task="link_reconcile"}"#),
        "{rendered}"
    );
}
