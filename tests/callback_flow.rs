//! Callbacks end to end, in one process: the Kubernetes API emulator (kubesim), the WeCom
//! simulator pushing signed, encrypted callbacks to the controller's callback endpoint,
//! both controllers (`controller::start`) and the endpoint (`callback::serve_on`).
//!
//! Every cadence is an hour, so nothing but a callback can explain a fast reaction: the
//! links are observed once at creation and then not again within the test.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::watch;
use wecom_acq::api::{
    AcquisitionLink, AcquisitionLinkSpec, AppRef, CallbackSpec, LinkRangeSpec, RemoteDeletePolicy,
    SecretKeyRef, WeComApp, WeComAppSpec,
};
use wecom_acq::callback::{
    self, AppCallback, AppDirectory, CallbackSettings, DirectorySettings, KubeAppDirectory, Lookup,
};
use wecom_acq::controller::{self, Running};
use wecom_acq::kubesim::{self, KubeSimHandle};
use wecom_acq::metrics::Metrics;
use wecom_acq::reconcile::conditions;
use wecom_acq::reconcile::context::Cadence;
use wecom_acq::sim::{self, SimCallback, SimConfig, SimHandle};
use wecom_acq::wecom::crypto::CallbackCrypto;

const NS: &str = "default";
const APP: &str = "wecom";
const TOKEN: &str = "flowCallbackToken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const WAIT: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);

/// kubesim, the WeCom simulator, the controllers and the callback endpoint.
struct World {
    _kube: KubeSimHandle,
    wecom: SimHandle,
    client: Client,
    running: Running,
    stop: watch::Sender<bool>,
    served: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
    /// `http://ADDR/callback`
    callback_base: String,
}

impl World {
    async fn start() -> World {
        let kube = kubesim::spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        kube.install_crds().await.unwrap();
        let client = kube.client().await;

        // The endpoint's port first: the simulator needs the callback URL at start.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let callback_base = format!("http://{}/callback", listener.local_addr().unwrap());
        let callback_url = format!("{callback_base}/{NS}/{APP}");
        let wecom = sim::spawn(
            SimConfig {
                callback: Some(SimCallback {
                    url: callback_url,
                    token: TOKEN.into(),
                    aes_key: AES_KEY.into(),
                    third_party_suite_id: None,
                }),
                ..SimConfig::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();

        let secret = secret_with_token(TOKEN);
        Api::<Secret>::namespaced(client.clone(), NS)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let key = |key: &str| SecretKeyRef {
            name: "wecom-credentials".into(),
            key: key.into(),
        };
        let app = WeComApp::new(
            APP,
            WeComAppSpec {
                corp_id: sim::DEFAULT_CORP_ID.into(),
                secret_ref: key("secret"),
                callback: Some(CallbackSpec {
                    token_ref: key("token"),
                    aes_key_ref: key("aesKey"),
                    receive_id: None,
                }),
                api_base_url: Some(wecom.base_url()),
                requests_per_minute: None,
                suite: None,
            },
        );
        Api::<WeComApp>::namespaced(client.clone(), NS)
            .create(&PostParams::default(), &app)
            .await
            .unwrap();

        let (stop, stopped) = watch::channel(false);
        let shutdown = {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let cadence = Cadence {
            resync: HOUR,
            customers: HOUR,
            statistics: HOUR,
            quota: HOUR,
            ..Cadence::default()
        };
        let running = controller::start(
            client.clone(),
            Some(NS),
            cadence,
            Metrics::new(),
            // The simulator listens on the loopback address.
            wecom_acq::wecom::AllowedApiHosts::loopback(),
            shutdown,
        );
        let served = callback::serve_on(
            listener,
            running.context.clone(),
            running.triggers.clone(),
            CallbackSettings::default(),
            stopped,
        );
        World {
            _kube: kube,
            wecom,
            client,
            running,
            stop,
            served,
            http: reqwest::Client::new(),
            callback_base,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.served).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.running.task).await;
        self.wecom.shutdown().await;
    }

    fn links(&self) -> Api<AcquisitionLink> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn apps(&self) -> Api<WeComApp> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn create_link(&self, name: &str, on_remote_delete: RemoteDeletePolicy) {
        let link = AcquisitionLink::new(
            name,
            AcquisitionLinkSpec {
                app_ref: AppRef { name: APP.into() },
                link_name: name.into(),
                range: LinkRangeSpec {
                    user_list: vec!["zhangsan".into()],
                    department_list: vec![],
                },
                skip_verify: true,
                priority_option: None,
                mark_source: None,
                channels: vec!["chan-a".into()],
                deletion_policy: Default::default(),
                on_remote_delete,
                management_policy: Default::default(),
                link_id: None,
            },
        );
        self.links()
            .create(&PostParams::default(), &link)
            .await
            .unwrap();
    }

    /// The link once it is Ready with a link id: (id, url).
    async fn ready_link(&self, name: &str) -> (String, String) {
        wait_until(&format!("{name} Ready with a link id"), || async {
            let link = self.links().get(name).await.ok()?;
            let status = link.status?;
            conditions::is_true(&status.conditions, conditions::READY).then_some(())?;
            Some((status.link_id?, status.url?))
        })
        .await
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.wecom.base_url()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request.send().await.unwrap();
        let status = resp.status();
        let value: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    async fn create_link_calls(&self) -> u64 {
        let calls = self.admin(reqwest::Method::GET, "/_sim/calls", None).await;
        calls["create_link"].as_u64().unwrap_or(0)
    }

    async fn set_quota(&self, balance: u64) {
        let expire_date = jiff::Timestamp::now().as_second() + 30 * 86_400;
        self.admin(
            reqwest::Method::PUT,
            "/_sim/quota",
            Some(json!({"batches": [{"balance": balance, "expire_date": expire_date}]})),
        )
        .await;
    }

    /// Events about `name` with `reason`, their notes.
    async fn events(&self, name: &str, reason: &str) -> Vec<String> {
        Api::<KubeEvent>::namespaced(self.client.clone(), NS)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .filter_map(|e| e.note)
            .collect()
    }

    /// Waits until the controller's cache holds the link as the API does, so a reconcile
    /// triggered now starts from its latest state (a pass on a stale copy gets a 409 on its
    /// first guarded write and retries a second later).
    async fn cache_caught_up(&self, name: &str) {
        wait_until(
            &format!("the controller's cache of {name} up to date"),
            || async {
                let latest = self.links().get(name).await.ok()?;
                let cached = self
                    .running
                    .context
                    .link_store
                    .get(&kube::runtime::reflector::ObjectRef::new(name).within(NS))?;
                (cached.metadata.resource_version == latest.metadata.resource_version).then_some(())
            },
        )
        .await;
    }

    fn callbacks_counted(&self, result: &str) -> u64 {
        let needle = format!("wecom_acq_callbacks_total{{result=\"{result}\"}} ");
        self.running
            .context
            .metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(&needle))
            .map(|n| n.trim().parse().unwrap())
            .unwrap_or(0)
    }
}

/// Polls `check` until it yields a value, failing after `WAIT`.
async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    let world = World::start().await;
    world
        .create_link("spring", RemoteDeletePolicy::Recreate)
        .await;
    world
        .create_link("summer", RemoteDeletePolicy::Orphan)
        .await;
    let (old_id, old_url) = world.ready_link("spring").await;
    let (orphan_id, _) = world.ready_link("summer").await;
    world.cache_caught_up("spring").await;
    world.cache_caught_up("summer").await;

    // Recreate: the console delete pushes delete_link; the reconcile re-checks (A2/A1)
    // and makes a new link.
    let deleted_at = Instant::now();
    world
        .admin(
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
        let notes = world.events("spring", "Recreated").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert!(
        recreated[0].contains(&old_url)
            && recreated[0].contains(&new_url)
            && recreated[0].contains(&new_id),
        "{recreated:?} remote-deleted: {:?}",
        world.events("spring", "RemoteDeleted").await
    );
    assert!(world.callbacks_counted("accepted") >= 1);
    assert!(
        world
            .running
            .context
            .metrics
            .render()
            .contains("wecom_acq_callback_events_total{change_type=\"delete_link\"} 1"),
        "the delete_link callback was not handled"
    );

    // Orphan: the same callback path ends in Ready=False RemoteDeleted.
    world
        .admin(
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
    assert!(!world.events("summer", "RemoteDeleted").await.is_empty());
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_quota_stops_link_creation_until_quota_returns() {
    let world = World::start().await;
    world
        .create_link("first", RemoteDeletePolicy::Recreate)
        .await;
    let (first_id, _) = world.ready_link("first").await;
    let counted = wait_until("first's customers counted by A6", || async {
        world.links().get("first").await.ok()?.status?.customers
    })
    .await;
    assert_eq!(counted.last_add_time, None, "A6 does not say when");

    // Three quota left, then three customers use them up: the simulator pushes
    // balance_low, three add_external_contact and balance_exhausted.
    world.set_quota(3).await;
    let before_adding = wecom_acq::wecom::unix_now();
    world
        .admin(
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
            let app = world.running.context.app(NS, APP)?;
            conditions::is_true(
                &app.status.as_ref()?.conditions,
                conditions::QUOTA_EXHAUSTED,
            )
            .then_some(())
        },
    )
    .await;
    assert!(!world.events(APP, "QuotaExhausted").await.is_empty());

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

    let creates_before = world.create_link_calls().await;
    world
        .create_link("late", RemoteDeletePolicy::Recreate)
        .await;
    wait_until("late refused with QuotaExhausted", || async {
        let status = world.links().get("late").await.ok()?.status?;
        (condition(&status.conditions, conditions::READY)
            == Some(("False".into(), conditions::reason::QUOTA_EXHAUSTED.into())))
        .then_some(())
    })
    .await;
    assert_eq!(
        world.create_link_calls().await,
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
    world.set_quota(100).await;
    let (late_id, _) = world.ready_link("late").await;
    println!(
        "quota restored -> waiting link created: {} ms (quota cadence is 1 h)",
        restored_at.elapsed().as_millis()
    );
    assert_ne!(late_id, first_id);
    assert_eq!(world.create_link_calls().await, creates_before + 1);
    let app = world.apps().get(APP).await.unwrap();
    let status = app.status.unwrap();
    assert!(!conditions::is_true(
        &status.conditions,
        conditions::QUOTA_EXHAUSTED
    ));
    assert_eq!(status.quota.map(|q| q.balance), Some(100));
    assert!(!world.events(APP, "QuotaRestored").await.is_empty());
    world.stop().await;
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
    let world = World::start().await;
    wait_until("the controller's store has the app", || async {
        world.running.context.app(NS, APP).map(|_| ())
    })
    .await;

    // A freshly seen app is loaded by its first request: URL verification over HTTP.
    let crypto = CallbackCrypto::new(TOKEN, AES_KEY, sim::DEFAULT_CORP_ID).unwrap();
    let now = jiff::Timestamp::now().as_second().to_string();
    let echostr = crypto.encrypt("echo-4711");
    let signature = crypto.signature(&now, "9", &echostr);
    let resp = world
        .http
        .get(format!("{}/{NS}/{APP}", world.callback_base))
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
    let directory = KubeAppDirectory::new(world.running.context.clone(), settings);
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
    world.stop().await;
}
