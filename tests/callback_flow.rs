//! Callbacks end to end, in one process: the Kubernetes API emulator (kubesim), the WeCom
//! simulator pushing signed, encrypted callbacks to the controller's callback endpoint,
//! both controllers (`controller::start`) and the endpoint (`callback::serve_on`).
//!
//! Every cadence is an hour, so nothing but a callback can explain a fast reaction: the
//! links are observed once at creation and then not again within the test.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tokio::sync::watch;
use wecom_acq::api::{CallbackSpec, RemoteDeletePolicy, SecretKeyRef};
use wecom_acq::callback::{AppCallback, AppDirectory, DirectorySettings, KubeAppDirectory, Lookup};
use wecom_acq::reconcile::conditions;
use wecom_acq::reconcile::context::Cadence;
use wecom_acq::sim;
use wecom_acq::wecom::crypto::CallbackCrypto;

use support::{Env, NS, link_spec, wait_until};

const APP: &str = "wecom";
const TOKEN: &str = "flowCallbackToken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const HOUR: Duration = Duration::from_secs(3600);

/// kubesim, the WeCom simulator pushing callbacks, the controllers (this namespace only)
/// and the callback endpoint, with the app's Secret and WeComApp applied.
async fn start() -> Env {
    let mut env = Env::with_callbacks(APP, TOKEN, AES_KEY).await;
    env.secrets()
        .create(&PostParams::default(), &secret_with_token(TOKEN))
        .await
        .unwrap();
    let key = |key: &str| SecretKeyRef {
        name: "wecom-credentials".into(),
        key: key.into(),
    };
    let mut app = env.app_object(APP, "wecom-credentials");
    app.spec.callback = Some(CallbackSpec {
        token_ref: key("token"),
        aes_key_ref: key("aesKey"),
        receive_id: None,
    });
    env.apps()
        .create(&PostParams::default(), &app)
        .await
        .unwrap();
    let cadence = Cadence {
        resync: HOUR,
        customers: HOUR,
        statistics: HOUR,
        quota: HOUR,
        ..Cadence::default()
    };
    env.start_controller_in(Some(NS), cadence).await;
    env
}

async fn create_link(env: &Env, name: &str, on_remote_delete: RemoteDeletePolicy) {
    let mut spec = link_spec(APP, name, &["zhangsan"]);
    spec.channels = vec!["chan-a".into()];
    spec.on_remote_delete = on_remote_delete;
    env.apply_link(name, spec).await;
}

/// The link once it is Ready with a link id: (id, url).
async fn ready_link(env: &Env, name: &str) -> (String, String) {
    wait_until(&format!("{name} Ready with a link id"), || async {
        let link = env.links().get(name).await.ok()?;
        let status = link.status?;
        conditions::is_true(&status.conditions, conditions::READY).then_some(())?;
        Some((status.link_id?, status.url?))
    })
    .await
}

/// Events about `name` (of `kind`) with `reason`, their notes.
async fn notes(env: &Env, kind: &str, name: &str, reason: &str) -> Vec<String> {
    env.events_of(kind, name)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

fn condition(
    status: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String)> {
    conditions::find(status, type_).map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_delete_reaches_the_controller_by_callback_and_the_link_is_recreated_or_orphaned()
{
    let mut world = start().await;
    create_link(&world, "spring", RemoteDeletePolicy::Recreate).await;
    create_link(&world, "summer", RemoteDeletePolicy::Orphan).await;
    let (old_id, old_url) = ready_link(&world, "spring").await;
    let (orphan_id, _) = ready_link(&world, "summer").await;
    world.wait_link_cached("spring").await;
    world.wait_link_cached("summer").await;

    // Recreate: the console delete pushes delete_link; the reconcile re-checks (A2/A1)
    // and makes a new link.
    let deleted_at = Instant::now();
    world
        .sim_request(
            reqwest::Method::DELETE,
            &format!("/_sim/links/{old_id}"),
            None,
        )
        .await;
    let (new_id, new_url) = wait_until("spring recreated with a new link id", || async {
        let status = world.links().get("spring").await.ok()?.status?;
        let id = status.link_id.filter(|id| *id != old_id)?;
        conditions::is_true(&status.conditions, conditions::READY).then_some(())?;
        Some((id, status.url?))
    })
    .await;
    let took = deleted_at.elapsed();
    println!(
        "console delete -> recreated link in status: {} ms (resync is 1 h)",
        took.as_millis()
    );
    assert_ne!(new_url, old_url);
    let spring = world.links().get("spring").await.unwrap();
    let status = spring.status.unwrap();
    assert!(
        status
            .channel_urls
            .iter()
            .all(|c| c.url.starts_with(&new_url)),
        "{:?}",
        status.channel_urls
    );
    let recreated = wait_until("a Recreated Event", || async {
        let notes = notes(&world, "AcquisitionLink", "spring", "Recreated").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert!(
        recreated[0].contains(&old_url)
            && recreated[0].contains(&new_url)
            && recreated[0].contains(&new_id),
        "{recreated:?} remote-deleted: {:?}",
        notes(&world, "AcquisitionLink", "spring", "RemoteDeleted").await
    );
    assert!(world.callbacks_counted("accepted") >= 1);
    assert!(
        world
            .controller()
            .running
            .context
            .metrics
            .render()
            .contains("wecom_acq_callback_events_total{change_type=\"delete_link\"} 1"),
        "the delete_link callback was not handled"
    );

    // Orphan: the same callback path ends in Ready=False RemoteDeleted.
    world
        .sim_request(
            reqwest::Method::DELETE,
            &format!("/_sim/links/{orphan_id}"),
            None,
        )
        .await;
    wait_until("summer Ready=False RemoteDeleted", || async {
        let status = world.links().get("summer").await.ok()?.status?;
        (condition(&status.conditions, conditions::READY)
            == Some(("False".into(), conditions::reason::REMOTE_DELETED.into())))
        .then_some(())
    })
    .await;
    let summer = world.links().get("summer").await.unwrap();
    assert_eq!(
        summer.status.unwrap().link_id.as_deref(),
        Some(orphan_id.as_str())
    );
    assert!(
        !notes(&world, "AcquisitionLink", "summer", "RemoteDeleted")
            .await
            .is_empty()
    );
    world.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_quota_stops_link_creation_until_quota_returns() {
    let mut world = start().await;
    create_link(&world, "first", RemoteDeletePolicy::Recreate).await;
    let (first_id, _) = ready_link(&world, "first").await;
    let counted = wait_until("first's customers counted by A6", || async {
        world.links().get("first").await.ok()?.status?.customers
    })
    .await;
    assert_eq!(counted.last_add_time, None, "A6 does not say when");

    // Three quota left, then three customers use them up: the simulator pushes
    // balance_low, three add_external_contact and balance_exhausted.
    world.sim_set_quota(3).await;
    let before_adding = wecom_acq::wecom::unix_now();
    world
        .sim_request(
            reqwest::Method::POST,
            &format!("/_sim/links/{first_id}/customers"),
            Some(json!({"count": 3, "state": "chan-a"})),
        )
        .await;
    wait_until("WeComApp QuotaExhausted=True", || async {
        let status = world.apps().get(APP).await.ok()?.status?;
        conditions::is_true(&status.conditions, conditions::QUOTA_EXHAUSTED).then_some(())
    })
    .await;
    // The controller's own cache must have it before a new link arrives.
    wait_until(
        "the controller's app cache shows QuotaExhausted",
        || async {
            let app = world.controller().running.context.app(NS, APP)?;
            conditions::is_true(
                &app.status.as_ref()?.conditions,
                conditions::QUOTA_EXHAUSTED,
            )
            .then_some(())
        },
    )
    .await;
    assert!(
        !notes(&world, "WeComApp", APP, "QuotaExhausted")
            .await
            .is_empty()
    );

    // The add_external_contact callbacks bumped the count between A6 recounts.
    let bumped = wait_until("first's customers bumped to 3 on chan-a", || async {
        let customers = world.links().get("first").await.ok()?.status?.customers?;
        (customers.total == 3 && customers.by_channel.get("chan-a") == Some(&3))
            .then_some(customers)
    })
    .await;
    // ... and took the time of the newest from their CreateTime.
    let last_added: jiff::Timestamp = bumped
        .last_add_time
        .as_deref()
        .expect("lastAddTime set by the callbacks")
        .parse()
        .unwrap();
    assert!(
        (before_adding..=wecom_acq::wecom::unix_now()).contains(&last_added.as_second()),
        "{last_added} is not the time the customers were added"
    );

    let creates_before = world.sim_call_count("create_link").await;
    create_link(&world, "late", RemoteDeletePolicy::Recreate).await;
    wait_until("late refused with QuotaExhausted", || async {
        let status = world.links().get("late").await.ok()?.status?;
        (condition(&status.conditions, conditions::READY)
            == Some(("False".into(), conditions::reason::QUOTA_EXHAUSTED.into())))
        .then_some(())
    })
    .await;
    assert_eq!(
        world.sim_call_count("create_link").await,
        creates_before,
        "a link was created without quota"
    );
    assert_eq!(
        world
            .links()
            .get("late")
            .await
            .unwrap()
            .status
            .unwrap()
            .link_id,
        None
    );

    // Quota returns: balance_increased, the A8 refresh, and the waiting link is created.
    let restored_at = Instant::now();
    world.sim_set_quota(100).await;
    let (late_id, _) = ready_link(&world, "late").await;
    println!(
        "quota restored -> waiting link created: {} ms (quota cadence is 1 h)",
        restored_at.elapsed().as_millis()
    );
    assert_ne!(late_id, first_id);
    assert_eq!(
        world.sim_call_count("create_link").await,
        creates_before + 1
    );
    let app = world.apps().get(APP).await.unwrap();
    let status = app.status.unwrap();
    assert!(!conditions::is_true(
        &status.conditions,
        conditions::QUOTA_EXHAUSTED
    ));
    assert_eq!(status.quota.map(|q| q.balance), Some(100));
    assert!(
        !notes(&world, "WeComApp", APP, "QuotaRestored")
            .await
            .is_empty()
    );
    world.stop_controller().await;
}

fn secret_with_token(token: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("wecom-credentials".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("secret".to_string(), ByteString(sim::DEFAULT_SECRET.into())),
            ("token".to_string(), ByteString(token.into())),
            ("aesKey".to_string(), ByteString(AES_KEY.into())),
        ])),
        ..Default::default()
    }
}

/// Whether `callback` verifies a signature made with `token`.
fn signs_with(callback: &AppCallback, token: &str) -> bool {
    let reference = CallbackCrypto::new(token, AES_KEY, sim::DEFAULT_CORP_ID).unwrap();
    let signature = reference.signature("1700000000", "42", "QUJD");
    callback
        .crypto
        .verify_signature(&signature, "1700000000", "42", "QUJD")
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_credentials_follow_the_app_and_its_secrets() {
    let mut world = start().await;
    wait_until("the controller's store has the app", || async {
        world.controller().running.context.app(NS, APP).map(|_| ())
    })
    .await;

    // A freshly seen app is loaded by its first request: URL verification over HTTP.
    let crypto = CallbackCrypto::new(TOKEN, AES_KEY, sim::DEFAULT_CORP_ID).unwrap();
    let now = jiff::Timestamp::now().as_second().to_string();
    let echostr = crypto.encrypt("echo-4711");
    let signature = crypto.signature(&now, "9", &echostr);
    let resp = reqwest::Client::new()
        .get(format!("{}/{NS}/{APP}", world.callback_base()))
        .query(&[
            ("msg_signature", signature.as_str()),
            ("timestamp", now.as_str()),
            ("nonce", "9"),
            ("echostr", echostr.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "echo-4711");

    // A directory of its own with short timings, on the same controller.
    let settings = DirectorySettings {
        scan_interval: Duration::from_millis(50),
        secret_recheck: Duration::from_millis(200),
        load_timeout: Duration::from_secs(2),
    };
    let directory = KubeAppDirectory::new(world.controller().running.context.clone(), settings);
    let (stop_refresher, stopped) = watch::channel(false);
    let refresher = directory.spawn_refresher(stopped);
    let found = |lookup: Lookup| match lookup {
        Lookup::Found(callback) => Some(callback),
        _ => None,
    };
    let callback = found(directory.lookup(NS, APP).await).expect("the app's credentials");
    assert!(signs_with(&callback, TOKEN));
    assert_eq!(callback.crypto.receive_id(), sim::DEFAULT_CORP_ID);
    assert!(!callback.third_party);
    assert!(matches!(
        directory.lookup(NS, "no-such-app").await,
        Lookup::Unknown
    ));
    assert!(matches!(
        directory.lookup("elsewhere", APP).await,
        Lookup::Unknown
    ));

    // A rotated Token is picked up without a restart.
    let secrets: Api<Secret> = Api::namespaced(world.client.clone(), NS);
    secrets
        .replace("wecom-credentials", &PostParams::default(), &{
            let mut rotated = secrets.get("wecom-credentials").await.unwrap();
            rotated.data = secret_with_token("rotatedToken01").data;
            rotated
        })
        .await
        .unwrap();
    wait_until("the rotated Token in use", || async {
        let callback = found(directory.lookup(NS, APP).await)?;
        signs_with(&callback, "rotatedToken01").then_some(())
    })
    .await;

    // Without its Token the app answers like an unknown one, and recovers when it is back.
    secrets
        .replace("wecom-credentials", &PostParams::default(), &{
            let mut broken = secrets.get("wecom-credentials").await.unwrap();
            broken.data.as_mut().unwrap().remove("token");
            broken
        })
        .await
        .unwrap();
    wait_until("the app unknown without its Token", || async {
        matches!(directory.lookup(NS, APP).await, Lookup::Unknown).then_some(())
    })
    .await;
    secrets
        .replace("wecom-credentials", &PostParams::default(), &{
            let mut fixed = secrets.get("wecom-credentials").await.unwrap();
            fixed.data = secret_with_token(TOKEN).data;
            fixed
        })
        .await
        .unwrap();
    wait_until("the app known again", || async {
        found(directory.lookup(NS, APP).await).map(|_| ())
    })
    .await;

    // A suite id makes it a third-party receiver answered `success`.
    let apps = world.apps();
    let mut app = apps.get(APP).await.unwrap();
    if let Some(callback) = app.spec.callback.as_mut() {
        callback.receive_id = Some("wwsuite01".into());
    }
    apps.replace(APP, &PostParams::default(), &app)
        .await
        .unwrap();
    wait_until("the suite id as receive id", || async {
        let callback = found(directory.lookup(NS, APP).await)?;
        (callback.third_party && callback.crypto.receive_id() == "wwsuite01").then_some(())
    })
    .await;

    // An app without callback settings has no endpoint.
    let mut plain = apps.get(APP).await.unwrap();
    plain.spec.callback = None;
    apps.replace(APP, &PostParams::default(), &plain)
        .await
        .unwrap();
    wait_until("the app without callbacks unknown", || async {
        matches!(directory.lookup(NS, APP).await, Lookup::Unknown).then_some(())
    })
    .await;

    let _ = stop_refresher.send(true);
    let _ = refresher.await;
    world.stop_controller().await;
}
