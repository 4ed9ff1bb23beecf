//! The test harness: a WeCom simulator, the kubesim Kubernetes API emulator with this
//! project's CRDs, and the controllers against both, in one of two modes:
//!
//! - in-process ([`Env`], this module): `controller::start_with` in the test's runtime,
//!   optionally with the callback endpoint ([`Env::with_callbacks`]);
//! - subprocess ([`process::Env`]): the real `wecom-acq run` binary, for the end-to-end
//!   tests.
//!
//! Both wait with [`wait_for`]/[`wait_until`] (polling, never sleeping for timing) and read
//! the simulator through one [`SimAdmin`]. Each test builds its own environment, so tests
//! run in parallel without sharing state.
#![allow(dead_code)]

#[cfg(unix)]
pub mod process;
pub mod sim_admin;
pub mod wait;

// Not every test crate uses every helper.
#[allow(unused_imports)]
pub use sim_admin::{SimAdmin, sim_links_named};
#[allow(unused_imports)]
pub use wait::{POLL, WAIT, wait_for, wait_until};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

use wecom_acq::api::{
    AcquisitionLink, AcquisitionLinkSpec, RECONCILE_REQUESTED_ANNOTATION, SecretKeyRef, WeComApp,
    WeComAppSpec,
};
use wecom_acq::controller::{self, Running};
use wecom_acq::kubesim::{self, FaultControl, KubeSimHandle};
use wecom_acq::metrics::{Metrics, ReconcileLabels};
use wecom_acq::reconcile::context::Cadence;
use wecom_acq::sim::{self, SimConfig, SimHandle};
use wecom_acq::wecom::AllowedApiHosts;

/// The namespace every helper works in.
pub const NS: &str = "default";
/// The key of the app secret in the Secrets the helpers make.
pub const SECRET_KEY: &str = "secret";

/// The results `reconcile` can report to the metrics (`link::Error::metric_label` and "ok").
const RESULTS: [&str; 6] = [
    "ok",
    "kube",
    "wecom",
    "app",
    "deletion_blocked",
    "finalizer",
];

/// Cadence for tests that watch the controller work: passes and slow facts come quickly.
pub fn fast_cadence() -> Cadence {
    Cadence {
        resync: Duration::from_secs(1),
        customers: Duration::ZERO,
        statistics: Duration::ZERO,
        quota: Duration::from_secs(1),
        create_grace: Duration::from_secs(1),
        statistics_days: 30,
    }
}

/// Cadence for tests that must prove a pass happens only when something asks for it:
/// nothing is due for an hour.
pub fn quiet_cadence() -> Cadence {
    Cadence {
        resync: Duration::from_secs(3600),
        customers: Duration::from_secs(3600),
        statistics: Duration::from_secs(3600),
        quota: Duration::from_secs(3600),
        create_grace: Duration::from_secs(1),
        statistics_days: 30,
    }
}

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=wecom_acq=debug`).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The status of condition `type_` in a condition list, as (status, reason, message).
pub fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// A link condition as (status, reason, message).
pub fn link_condition(link: &AcquisitionLink, type_: &str) -> Option<(String, String, String)> {
    link.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, type_))
}

/// An app condition as (status, reason, message).
pub fn app_condition(app: &WeComApp, type_: &str) -> Option<(String, String, String)> {
    app.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, type_))
}

/// An AcquisitionLink spec with the defaults of the CRD.
pub fn link_spec(app: &str, link_name: &str, users: &[&str]) -> AcquisitionLinkSpec {
    AcquisitionLinkSpec::new(
        app,
        link_name,
        users.iter().map(|u| u.to_string()).collect(),
    )
}

/// The controllers of one `controller::start`, and the way to stop them.
pub struct ControllerRun {
    pub running: Running,
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    /// The callback endpoint serving with these controllers, if the Env has one.
    callbacks: Option<ServedCallbacks>,
}

/// The callback endpoint (`callback::serve_on`) of a running controller.
struct ServedCallbacks {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ControllerRun {
    /// Reconcile passes of `kind` ("AcquisitionLink" or "WeComApp") so far, whatever their
    /// result.
    pub fn passes(&self, kind: &str) -> u64 {
        RESULTS
            .iter()
            .map(|result| {
                self.metrics
                    .reconciles
                    .get_or_create(&ReconcileLabels {
                        kind: kind.into(),
                        result: (*result).into(),
                    })
                    .get()
            })
            .sum()
    }
}

/// A WeCom simulator, a Kubernetes API emulator and, when started, the controllers.
pub struct Env {
    pub sim: SimHandle,
    pub kube: KubeSimHandle,
    pub client: Client,
    /// The simulator's admin API.
    pub admin: SimAdmin,
    controller: Option<ControllerRun>,
    /// The callback port, bound before the simulator starts (it needs the URL); served
    /// once the controllers start.
    callback_port: Option<CallbackPort>,
}

struct CallbackPort {
    /// `http://ADDR/callback`
    base: String,
    listener: Option<tokio::net::TcpListener>,
}

impl Env {
    /// Simulator (default config) and emulator with the CRDs installed; no controller.
    pub async fn without_controller() -> Env {
        Self::with_sim_config(SimConfig::default()).await
    }

    /// Like [`Env::without_controller`], with a simulator configured by the test.
    pub async fn with_sim_config(config: SimConfig) -> Env {
        init_tracing();
        let addr = "127.0.0.1:0".parse().expect("loopback address");
        let sim = sim::spawn(config, addr).await.expect("start the simulator");
        let kube = kubesim::spawn(addr).await.expect("start kubesim");
        kube.install_crds().await.expect("install the CRDs");
        let client = kube.client().await;
        let admin = SimAdmin::new(sim.base_url(), reqwest::Client::new());
        Env {
            sim,
            kube,
            client,
            admin,
            controller: None,
            callback_port: None,
        }
    }

    /// Like [`Env::with_sim_config`], with a callback endpoint on a loopback port that the
    /// simulator pushes the callbacks of app `app` in [`NS`] to, signed with `token` and
    /// `aes_key`. The endpoint serves once the controllers start.
    pub async fn with_callbacks(app: &str, token: &str, aes_key: &str) -> Env {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the callback port");
        let base = format!(
            "http://{}/callback",
            listener.local_addr().expect("callback port address")
        );
        let mut env = Self::with_sim_config(SimConfig {
            callback: Some(sim::SimCallback {
                url: format!("{base}/{NS}/{app}"),
                token: token.into(),
                aes_key: aes_key.into(),
                third_party_suite_id: None,
            }),
            ..SimConfig::default()
        })
        .await;
        env.callback_port = Some(CallbackPort {
            base,
            listener: Some(listener),
        });
        env
    }

    /// `http://ADDR/callback` of the callback endpoint ([`Env::with_callbacks`]).
    pub fn callback_base(&self) -> &str {
        &self
            .callback_port
            .as_ref()
            .expect("an Env with callbacks")
            .base
    }

    /// Simulator, emulator and the controllers with `cadence`.
    pub async fn start(cadence: Cadence) -> Env {
        let mut env = Self::without_controller().await;
        env.start_controller(cadence).await;
        env
    }

    /// Starts the controllers (all namespaces) and waits until their caches are synced.
    pub async fn start_controller(&mut self, cadence: Cadence) {
        self.start_controller_in(None, cadence).await;
    }

    /// Starts the controllers watching `namespace` only (`None`: all) and waits until their
    /// caches are synced.
    pub async fn start_controller_in(&mut self, namespace: Option<&str>, cadence: Cadence) {
        // The simulator listens on the loopback address.
        self.start_controller_allowing(namespace, cadence, AllowedApiHosts::loopback())
            .await;
    }

    /// Like [`Self::start_controller_in`], allowing WeComApps only the API hosts `allowed`.
    pub async fn start_controller_allowing(
        &mut self,
        namespace: Option<&str>,
        cadence: Cadence,
        allowed: AllowedApiHosts,
    ) {
        let options = controller::StartOptions {
            allowed_api_hosts: allowed,
            ..Default::default()
        };
        self.start_controller_with(namespace, cadence, options)
            .await;
    }

    /// [`Env::start_controller_in`] with explicit options (a liveness to read, a pass hook).
    pub async fn start_controller_with(
        &mut self,
        namespace: Option<&str>,
        cadence: Cadence,
        options: controller::StartOptions,
    ) {
        assert!(self.controller.is_none(), "a controller is already running");
        let metrics = Metrics::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let running = controller::start_with(
            self.client.clone(),
            namespace,
            cadence,
            metrics.clone(),
            options,
            async {
                let _ = stopped.await;
            },
        );
        let callbacks = self
            .callback_port
            .as_mut()
            .and_then(|port| port.listener.take())
            .map(|listener| {
                let (stop, stopped) = watch::channel(false);
                let task = wecom_acq::callback::serve_on(
                    listener,
                    running.context.clone(),
                    running.triggers.clone(),
                    wecom_acq::callback::CallbackSettings::default(),
                    stopped,
                );
                ServedCallbacks { stop, task }
            });
        let mut ready = running.ready.clone();
        tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
            .await
            .expect("controller caches synced in time")
            .expect("controller readiness channel open");
        self.controller = Some(ControllerRun {
            running,
            metrics,
            stop: Some(stop),
            callbacks,
        });
    }

    /// Stops the controllers gracefully (running passes finish) and waits for them.
    pub async fn stop_controller(&mut self) {
        let Some(mut run) = self.controller.take() else {
            return;
        };
        if let Some(stop) = run.stop.take() {
            let _ = stop.send(());
        }
        if let Some(callbacks) = run.callbacks.take() {
            let _ = callbacks.stop.send(true);
            let _ = tokio::time::timeout(WAIT, callbacks.task).await;
        }
        tokio::time::timeout(WAIT, &mut run.running.task)
            .await
            .expect("controller stopped in time")
            .expect("controller task ended cleanly");
    }

    /// The running controllers.
    pub fn controller(&self) -> &ControllerRun {
        self.controller.as_ref().expect("controller started")
    }

    pub fn faults(&self) -> FaultControl {
        self.kube.faults()
    }

    pub fn links(&self) -> Api<AcquisitionLink> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn apps(&self) -> Api<WeComApp> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), NS)
    }

    // ---- applying objects -------------------------------------------------------------

    /// Creates a Secret with string `data`.
    pub async fn apply_secret(&self, name: &str, data: &[(&str, &str)]) -> Secret {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NS.into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        };
        self.secrets()
            .create(&PostParams::default(), &secret)
            .await
            .expect("create Secret")
    }

    /// A WeComApp for the simulator's corp whose secret is key [`SECRET_KEY`] of Secret
    /// `secret_name` (which may not exist).
    pub fn app_object(&self, name: &str, secret_name: &str) -> WeComApp {
        WeComApp::new(
            name,
            WeComAppSpec {
                corp_id: sim::DEFAULT_CORP_ID.into(),
                secret_ref: SecretKeyRef {
                    name: secret_name.into(),
                    key: SECRET_KEY.into(),
                },
                callback: None,
                api_base_url: Some(self.sim.base_url()),
                requests_per_minute: None,
                suite: None,
            },
        )
    }

    /// Creates a WeComApp (see [`Env::app_object`]).
    pub async fn apply_app(&self, name: &str, secret_name: &str) -> WeComApp {
        self.apps()
            .create(&PostParams::default(), &self.app_object(name, secret_name))
            .await
            .expect("create WeComApp")
    }

    /// Creates Secret `{name}-secret` with the simulator's app secret and WeComApp `name`
    /// using it.
    pub async fn apply_app_with_secret(&self, name: &str) -> WeComApp {
        let secret_name = format!("{name}-secret");
        self.apply_secret(&secret_name, &[(SECRET_KEY, sim::DEFAULT_SECRET)])
            .await;
        self.apply_app(name, &secret_name).await
    }

    /// Creates an AcquisitionLink named `name` with `spec`.
    pub async fn apply_link(&self, name: &str, spec: AcquisitionLinkSpec) -> AcquisitionLink {
        self.apply_link_object(AcquisitionLink::new(name, spec))
            .await
    }

    /// Creates an AcquisitionLink as given (annotations included).
    pub async fn apply_link_object(&self, link: AcquisitionLink) -> AcquisitionLink {
        self.links()
            .create(&PostParams::default(), &link)
            .await
            .expect("create AcquisitionLink")
    }

    pub async fn get_link(&self, name: &str) -> AcquisitionLink {
        self.links().get(name).await.expect("get AcquisitionLink")
    }

    pub async fn get_app(&self, name: &str) -> WeComApp {
        self.apps().get(name).await.expect("get WeComApp")
    }

    /// Sets (`Some`) or removes (`None`) an annotation of a link with a merge patch.
    pub async fn annotate_link(&self, name: &str, key: &str, value: Option<&str>) {
        let patch = json!({ "metadata": { "annotations": { key: value } } });
        self.links()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate AcquisitionLink");
    }

    /// Merge-patches a link's spec (as `kubectl apply` of an edited file would).
    pub async fn patch_link_spec(&self, name: &str, spec: Value) -> AcquisitionLink {
        let patch = json!({ "spec": spec });
        self.links()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch AcquisitionLink spec")
    }

    pub async fn delete_link(&self, name: &str) {
        self.links()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete AcquisitionLink");
    }

    /// Sets annotation `reconcile-requested-at` to `token`, forcing a pass.
    pub async fn request_reconcile(&self, name: &str, token: &str) {
        self.annotate_link(name, RECONCILE_REQUESTED_ANNOTATION, Some(token))
            .await;
    }

    // ---- steering the controller --------------------------------------------------------

    /// Asks the link controller for a pass over `name` (as a callback would) and waits until
    /// at least one more link pass has finished.
    pub async fn trigger_link_pass(&self, name: &str) {
        let run = self.controller();
        let before = run.passes("AcquisitionLink");
        // What the callback worker does: the pass is one someone waits for.
        run.running.context.urgent.mark(&format!("{NS}/{name}"));
        run.running
            .triggers
            .links
            .send(ObjectRef::new(name).within(NS))
            .await
            .expect("link trigger channel open");
        wait_until(&format!("a pass over AcquisitionLink {name}"), || async {
            (run.passes("AcquisitionLink") > before).then_some(())
        })
        .await;
    }

    /// Makes the app's quota check due now and asks the app controller for a pass.
    pub async fn refresh_app_quota(&self, name: &str) {
        let run = self.controller();
        let before = run.passes("WeComApp");
        run.running.context.expire_quota_check(NS, name);
        run.running
            .triggers
            .apps
            .send(ObjectRef::new(name).within(NS))
            .await
            .expect("app trigger channel open");
        wait_until(&format!("a pass over WeComApp {name}"), || async {
            (run.passes("WeComApp") > before).then_some(())
        })
        .await;
    }

    // ---- waiting --------------------------------------------------------------------------

    /// Polls object `name` until `check` accepts it.
    pub async fn wait_for<K>(&self, name: &str, what: &str, check: impl Fn(&K) -> bool) -> K
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), NS);
        let check = &check;
        let api = &api;
        let what = format!("{} {name}: {what}", K::kind(&()));
        let last = std::sync::Mutex::new(None);
        let last = &last;
        wait_for(&what, WAIT, || async move {
            let got = api.get_opt(name).await;
            let mut last = last.lock().expect("last seen lock");
            if let Ok(Some(obj)) = got {
                if check(&obj) {
                    return Ok(obj);
                }
                *last = Some(obj);
            }
            Err(format!("{:#?}", *last))
        })
        .await
    }

    /// Waits until link `name` has condition `type_` with `status` and `reason`.
    pub async fn wait_link_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> AcquisitionLink {
        self.wait_for(name, &format!("{type_}={status} ({reason})"), |l| {
            link_condition(l, type_).is_some_and(|(s, r, _)| s == status && r == reason)
        })
        .await
    }

    /// Waits until link `name` is Ready=True and describes its current generation.
    pub async fn wait_link_ready(&self, name: &str) -> AcquisitionLink {
        self.wait_for(
            name,
            "Ready=True for the current generation",
            |l: &AcquisitionLink| {
                let status = l.status.as_ref();
                link_condition(l, "Ready").is_some_and(|(s, _, _)| s == "True")
                    && status.and_then(|s| s.observed_generation) == l.metadata.generation
            },
        )
        .await
    }

    /// Waits until app `name` has condition `type_` with `status` and `reason`.
    pub async fn wait_app_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> WeComApp {
        self.wait_for(name, &format!("{type_}={status} ({reason})"), |a| {
            app_condition(a, type_).is_some_and(|(s, r, _)| s == status && r == reason)
        })
        .await
    }

    /// Waits until app `name` is Ready=True and the controller's cache holds that version,
    /// so links applied next do not race the app's first quota check.
    pub async fn wait_app_ready(&self, name: &str) -> WeComApp {
        let app = self
            .wait_for(name, "Ready=True", |a: &WeComApp| {
                app_condition(a, "Ready").is_some_and(|(s, _, _)| s == "True")
            })
            .await;
        let run = self.controller();
        wait_until(
            &format!("the controller's cache to hold WeComApp {name} Ready"),
            || async {
                // At least the version seen Ready: the reconciler may write again at once
                // (the quota, applied apart), and the cache then moves past it.
                let cached = run.running.context.app(NS, name)?.resource_version();
                let version = |v: Option<String>| v.and_then(|v| v.parse::<u64>().ok());
                (version(cached) >= version(app.resource_version())).then_some(())
            },
        )
        .await;
        app
    }

    /// Waits until the controller's cache holds link `name` as the API does, so a reconcile
    /// triggered now starts from its latest state (a pass on a stale copy gets a 409 on its
    /// first guarded write and retries a second later).
    pub async fn wait_link_cached(&self, name: &str) {
        let run = self.controller();
        wait_until(
            &format!("the controller's cache of {name} up to date"),
            || async {
                let latest = self.links().get(name).await.ok()?;
                let cached = run
                    .running
                    .context
                    .link_store
                    .get(&ObjectRef::new(name).within(NS))?;
                (cached.metadata.resource_version == latest.metadata.resource_version).then_some(())
            },
        )
        .await;
    }

    /// `wecom_acq_callbacks_total{result}` of the running controller.
    pub fn callbacks_counted(&self, result: &str) -> u64 {
        let needle = format!("wecom_acq_callbacks_total{{result=\"{result}\"}} ");
        self.controller()
            .metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(&needle))
            .map(|n| n.trim().parse().expect("a counter value"))
            .unwrap_or(0)
    }

    /// Waits until link `name` no longer exists.
    pub async fn wait_link_gone(&self, name: &str) {
        let api = self.links();
        wait_until(&format!("AcquisitionLink {name} to be gone"), || async {
            matches!(api.get_opt(name).await, Ok(None)).then_some(())
        })
        .await;
    }

    /// Records every version of link `name` from now on (a watch), for tests about the
    /// states an object went through rather than where it ended.
    pub fn record_link_versions(&self, name: &str) -> VersionLog<AcquisitionLink> {
        VersionLog::start(self.links(), name)
    }

    // ---- Events ---------------------------------------------------------------------------

    /// The events.k8s.io/v1 Events regarding object `kind`/`name`, oldest first.
    pub async fn events_of(&self, kind: &str, name: &str) -> Vec<KubeEvent> {
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), NS);
        let mut events: Vec<KubeEvent> = api
            .list(&ListParams::default())
            .await
            .expect("list Events")
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                })
            })
            .collect();
        events.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
        events
    }

    /// The reasons of the Events regarding `kind`/`name`.
    pub async fn event_reasons(&self, kind: &str, name: &str) -> Vec<String> {
        self.events_of(kind, name)
            .await
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }

    /// Waits for an Event with `reason` regarding `kind`/`name` and returns it.
    pub async fn wait_event(&self, kind: &str, name: &str, reason: &str) -> KubeEvent {
        wait_until(&format!("Event {reason} on {kind} {name}"), || async {
            self.events_of(kind, name)
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
        })
        .await
    }

    // ---- the simulator's admin API ([`SimAdmin`]) ------------------------------------------

    /// Calls the simulator's admin API and returns the JSON answer; panics on a non-2xx.
    pub async fn sim_request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        self.admin.request(method, path, body).await
    }

    /// `GET /_sim/calls`: calls per API name plus `total`.
    pub async fn sim_calls(&self) -> Value {
        self.admin.calls().await
    }

    /// Calls of one API (`create_link`, `get`, ...) so far.
    pub async fn sim_call_count(&self, api: &str) -> u64 {
        self.admin.call_count(api).await
    }

    /// A3 + A4 + A5 calls so far.
    pub async fn mutating_calls(&self) -> u64 {
        self.admin.mutating_calls().await
    }

    /// `GET /_sim/state`.
    pub async fn sim_state(&self) -> Value {
        self.admin.state().await
    }

    /// The links the simulator holds (`link_id`, `link_name`, `url`, `range`, ...).
    pub async fn sim_links(&self) -> Vec<Value> {
        self.admin.links().await
    }

    /// One link of the simulator by id.
    pub async fn sim_link(&self, link_id: &str) -> Option<Value> {
        self.admin.link(link_id).await
    }

    /// `POST /_sim/faults` with `spec`.
    pub async fn sim_fault(&self, spec: Value) {
        self.admin.fault(spec).await
    }

    /// `PUT /_sim/quota` with one batch of `balance` expiring in a year.
    pub async fn sim_set_quota(&self, balance: u64) {
        self.admin.set_quota(balance).await
    }

    /// A WeCom client of the simulator's corp, for a test that acts as a person using
    /// WeCom directly.
    pub fn wecom_client(&self) -> wecom_acq::wecom::client::WeComClient {
        use wecom_acq::wecom::client::{ClientConfig, WeComClient};
        let mut config = ClientConfig::new(sim::DEFAULT_CORP_ID, sim::DEFAULT_SECRET);
        config.base_url = self.sim.base_url();
        WeComClient::new(config).expect("WeCom client for the simulator")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(run) = self.controller.as_mut() {
            if let Some(stop) = run.stop.take() {
                let _ = stop.send(());
            }
            if let Some(callbacks) = run.callbacks.take() {
                let _ = callbacks.stop.send(true);
                callbacks.task.abort();
            }
            run.running.task.abort();
        }
    }
}

/// Every version of one object seen by a watch since [`VersionLog::start`].
pub struct VersionLog<K> {
    seen: Arc<std::sync::Mutex<Vec<K>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<K> VersionLog<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    pub fn start(api: Api<K>, name: &str) -> Self {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(api, config).applied_objects());
            while let Some(Ok(obj)) = stream.next().await {
                sink.lock().expect("version log lock").push(obj);
            }
        });
        VersionLog { seen, task }
    }

    /// The versions seen so far, oldest first.
    pub fn versions(&self) -> Vec<K> {
        self.seen.lock().expect("version log lock").clone()
    }
}

impl<K> Drop for VersionLog<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The link id a link's status names, or a panic saying what is missing.
pub fn status_link_id(link: &AcquisitionLink) -> String {
    link.status
        .as_ref()
        .and_then(|s| s.link_id.clone())
        .unwrap_or_else(|| panic!("{} has no status.linkId: {link:#?}", link.name_any()))
}
