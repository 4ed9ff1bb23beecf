//! `wecom-acq run`: the controllers for both kinds, the health and metrics endpoint, and
//! graceful shutdown. Wiring only; decisions live in `reconcile`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use futures::{StreamExt, TryStreamExt, future::BoxFuture};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        events::Reporter,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tokio::sync::{mpsc, watch};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::controller::Action;

use crate::reconcile::triggers::Triggers;

use crate::{
    api::{AcquisitionLink, PAUSED_ANNOTATION, RECONCILE_REQUESTED_ANNOTATION, WeComApp},
    defaults,
    isolation::{self, Liveness},
    metrics::Metrics,
    reconcile::{
        app, cache, conditions,
        context::{AppClients, Cadence, Context, filled},
        link, plan,
        recorder::Recorder,
        status_apply,
        traffic::{PassSlots, SeenVersions},
    },
    wecom::AllowedApiHosts,
};

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 5m, 1h)"))
}

/// Flags of `wecom-acq run`; each can also come from the environment (for the chart).
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch one namespace only (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "METRICS_ADDR", default_value = defaults::METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Address of the WeCom callback endpoint (/callback/{namespace}/{app}).
    #[arg(long, env = "CALLBACK_ADDR", default_value = defaults::CALLBACK_ADDR)]
    pub callback_addr: SocketAddr,
    /// Refuse callbacks whose timestamp is further than this from this host's clock;
    /// replays within it are answered without being processed again.
    #[arg(long, env = "CALLBACK_MAX_SKEW", default_value = defaults::CALLBACK_MAX_SKEW.text, value_parser = parse_duration)]
    pub callback_max_skew: Duration,
    /// Most connections the callback port serves at once; one more is answered 503 and
    /// closed (WeCom retries), so a flood of connections cannot exhaust the process.
    #[arg(long, env = "CALLBACK_MAX_CONNECTIONS", default_value_t = defaults::CALLBACK_MAX_CONNECTIONS)]
    pub callback_max_connections: usize,
    /// A callback's body must arrive whole within this once its head is in (408 after).
    #[arg(long, env = "CALLBACK_BODY_TIMEOUT", default_value = defaults::CALLBACK_BODY_TIMEOUT.text, value_parser = parse_duration)]
    pub callback_body_timeout: Duration,
    /// Observe every link (A2) at least this often; callbacks make it faster.
    #[arg(long, env = "RESYNC_INTERVAL", default_value = defaults::RESYNC_INTERVAL.text, value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// Recount customers (A6) this often.
    #[arg(long, env = "CUSTOMERS_INTERVAL", default_value = defaults::CUSTOMERS_INTERVAL.text, value_parser = parse_duration)]
    pub customers_interval: Duration,
    /// Refresh statistics (A7) this often.
    #[arg(long, env = "STATISTICS_INTERVAL", default_value = defaults::STATISTICS_INTERVAL.text, value_parser = parse_duration)]
    pub statistics_interval: Duration,
    /// Refresh each app's quota (A8) this often.
    #[arg(long, env = "QUOTA_INTERVAL", default_value = defaults::QUOTA_INTERVAL.text, value_parser = parse_duration)]
    pub quota_interval: Duration,
    /// Run only while holding a Lease (for more than one replica).
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = defaults::LEASE_NAME)]
    pub lease_name: String,
    /// Namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Hosts a WeComApp's apiBaseUrl may name, comma-separated: `host` (any port) or
    /// `host:port`. Any other app gets Ready=False, reason ApiHostNotAllowed, and no request.
    #[arg(long, env = "ALLOWED_API_HOSTS", default_value = defaults::WECOM_API_HOST)]
    pub allowed_api_hosts: AllowedApiHosts,
    /// Most AcquisitionLink passes running at once; each WeComApp gets a fair share. Passes
    /// waiting for WeCom's budget give their slot back and come back later.
    #[arg(long, env = "MAX_CONCURRENT_RECONCILES", default_value_t = defaults::MAX_CONCURRENT_RECONCILES)]
    pub max_concurrent_reconciles: usize,
}

/// Link passes running at once unless told otherwise.
pub use crate::defaults::MAX_CONCURRENT_RECONCILES as DEFAULT_CONCURRENCY;

impl RunArgs {
    /// The callback port's settings from the flags.
    pub fn callback_settings(&self) -> crate::callback::CallbackSettings {
        let mut settings = crate::callback::CallbackSettings::with_max_skew(self.callback_max_skew);
        settings.max_connections = self.callback_max_connections.max(1);
        settings.endpoint.body_read_timeout = self.callback_body_timeout;
        settings
    }

    pub fn cadence(&self) -> Cadence {
        Cadence {
            resync: self.resync_interval,
            customers: self.customers_interval,
            statistics: self.statistics_interval,
            quota: self.quota_interval,
            ..Cadence::default()
        }
    }
}

/// What triggers a link pass besides its own changes: the fields of an app that links
/// depend on (generation, credentials Ready, QuotaExhausted).
fn app_predicate(app: &WeComApp) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    app.metadata.generation.hash(&mut h);
    if let Some(status) = &app.status {
        for type_ in [conditions::READY, conditions::QUOTA_EXHAUSTED] {
            conditions::find(&status.conditions, type_)
                .map(|c| c.status.clone())
                .hash(&mut h);
        }
    }
    Some(h.finish())
}

/// The app controller's own trigger: spec changes and deletion (both bump the generation)
/// and its finalizers (the in-use finalizer it adds must lead to the first real pass).
fn app_lifecycle_predicate(app: &WeComApp) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    app.metadata.generation.hash(&mut h);
    app.metadata.finalizers.hash(&mut h);
    Some(h.finish())
}

/// A link pass runs on spec changes and on the annotations and deletion that steer it, not
/// on its own writes: neither status nor the create-pending marker and link-id annotation
/// the controller writes around A3 (a pass triggered by them would start a retry at once,
/// skipping the back-off of a failed create).
fn link_predicate(link: &AcquisitionLink) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    link.metadata.generation.hash(&mut h);
    let annotations = link.annotations();
    for key in [PAUSED_ANNOTATION, RECONCILE_REQUESTED_ANNOTATION] {
        annotations.get(key).hash(&mut h);
    }
    link.metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut h);
    // The controller's own finalizer comes with its own writes, in the pass that needs it:
    // adding it is no reason for another pass (a create that failed would be retried at
    // once instead of after its back-off). Other finalizers are.
    link.finalizers()
        .iter()
        .filter(|f| f.as_str() != crate::api::LINK_FINALIZER)
        .for_each(|f| f.hash(&mut h));
    Some(h.finish())
}

/// Everything `run` builds, so the demo and the tests can drive the same controllers.
pub struct Running {
    pub context: Arc<Context>,
    pub triggers: Triggers,
    pub ready: watch::Receiver<bool>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts both controllers on `client`. They stop when `shutdown` resolves.
pub fn start(
    client: Client,
    namespace: Option<&str>,
    cadence: Cadence,
    metrics: Arc<Metrics>,
    allowed_api_hosts: AllowedApiHosts,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Running {
    start_with(
        client,
        namespace,
        cadence,
        metrics,
        StartOptions {
            allowed_api_hosts,
            ..StartOptions::default()
        },
        shutdown,
    )
}

/// Runs at the start of every reconcile pass, inside the pass's panic boundary, with the
/// kind ("AcquisitionLink" or "WeComApp"), namespace and name of the object. For tests
/// that need a pass to fail in a way no input can cause (a panic).
pub type PassHook = Arc<dyn Fn(&str, &str, &str) + Send + Sync>;

/// What [`start_with`] takes besides the client and the cadence.
#[derive(Clone, Default)]
pub struct StartOptions {
    /// Where a controller loop that ends on its own is reported (`/healthz` reads it).
    pub liveness: Liveness,
    pub pass_hook: Option<PassHook>,
    /// The hosts a WeComApp's `apiBaseUrl` may name (`--allowed-api-hosts`).
    pub allowed_api_hosts: AllowedApiHosts,
    /// Most link passes at once (`--max-concurrent-reconciles`); 0 for the default.
    pub concurrency: usize,
    /// Limits per corp and API other than WeCom's (a simulator with lower limits).
    pub corp_limits: Option<crate::wecom::scheduler::CorpLimits>,
}

impl StartOptions {
    fn concurrency(&self) -> usize {
        match self.concurrency {
            0 => DEFAULT_CONCURRENCY,
            n => n.min(usize::from(u16::MAX)),
        }
    }
}

/// [`start`] with a liveness shared with the health endpoint, and an optional pass hook.
pub fn start_with(
    client: Client,
    namespace: Option<&str>,
    cadence: Cadence,
    metrics: Arc<Metrics>,
    options: StartOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Running {
    let (links_api, apps_api): (Api<AcquisitionLink>, Api<WeComApp>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (link_reader, link_writer) = reflector::store();
    let (app_reader, app_writer) = reflector::store();
    let seen_versions = Arc::new(SeenVersions::default());
    let (urgent_tx, urgent_rx) = mpsc::channel::<ObjectRef<AcquisitionLink>>(URGENT_QUEUE);
    let (gone_tx, gone_rx) = mpsc::unbounded_channel::<(String, Option<String>)>();
    let link_stream = watcher(links_api, watcher::Config::default())
        .default_backoff()
        .modify(cache::trim_link)
        .reflect(link_writer)
        .inspect_ok({
            let seen = seen_versions.clone();
            let cached = link_reader.clone();
            move |event| match event {
                watcher::Event::Delete(link) => {
                    let key = format!(
                        "{}/{}",
                        link.namespace().unwrap_or_default(),
                        link.name_any()
                    );
                    let _ = gone_tx.send((key, link.metadata.uid.clone()));
                }
                // The store holds this version already.
                watcher::Event::Apply(link) => seen.settle_with(link),
                // A relist: the store swaps in the new objects at its end.
                watcher::Event::InitApply(link) => seen.note_from(link),
                watcher::Event::InitDone => {
                    for link in cached.state() {
                        seen.settle_with(&*link);
                    }
                }
                watcher::Event::Init => {}
            }
        })
        .applied_objects()
        .inspect_ok({
            let urgent = urgent_tx.clone();
            move |link: &AcquisitionLink| {
                if link::wants_urgent_pass(link) {
                    // Full: the controller's own queue still has the pass.
                    let _ = urgent.try_send(ObjectRef::from_obj(link));
                }
            }
        })
        .predicate_filter(link_predicate, Default::default());
    let app_stream = watcher(apps_api, watcher::Config::default())
        .default_backoff()
        .modify(cache::trim::<WeComApp>)
        .reflect(app_writer)
        .applied_objects();
    // One shared app stream feeds the app controller (all changes) and the link
    // controller (only the changes links depend on).
    let (app_tx_all, app_rx_all) = mpsc::channel::<Arc<WeComApp>>(1024);
    let (app_tx_links, app_rx_links) = mpsc::channel::<WeComApp>(1024);
    let pump = tokio::spawn(async move {
        let mut stream = std::pin::pin!(app_stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(app) => {
                    let _ = app_tx_links.send(app.clone()).await;
                    let _ = app_tx_all.send(Arc::new(app)).await;
                }
                Err(err) => tracing::warn!(%err, "WeComApp watch failed; retrying"),
            }
        }
    });
    let (link_trigger_tx, link_trigger_rx) = mpsc::channel(1024);
    let (app_trigger_tx, app_trigger_rx) = mpsc::channel(1024);
    let reporter = Reporter {
        controller: "wecom-acquisition-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let context = Arc::new(Context {
        kube: client.clone(),
        apps: AppClients::new(
            client.clone(),
            metrics.clone(),
            options.allowed_api_hosts.clone(),
        )
        .with_corp_limits(options.corp_limits.unwrap_or_default()),
        recorder: Recorder::new(
            client.clone(),
            &reporter.controller,
            reporter.instance.clone(),
        ),
        metrics,
        cadence,
        app_store: app_reader.clone(),
        link_store: link_reader.clone(),
        slow_facts: Default::default(),
        quota_checks: Default::default(),
        pass_failures: Default::default(),
        app_failures: Default::default(),
        app_deletions: Default::default(),
        liveness: options.liveness.clone(),
        polls: Default::default(),
        urgent: Default::default(),
        seen_versions: seen_versions.clone(),
        pass_locks: Default::default(),
        held_off: Default::default(),
        deleted_links: Default::default(),
        slots: Arc::new(PassSlots::new(options.concurrency())),
        sweeps: Default::default(),
        poll_intervals: Default::default(),
        started_ms: crate::wecom::unix_now_ms(),
        link_trigger: link_trigger_tx.clone(),
    });
    let guard = PassGuard {
        hook: options.pass_hook.clone(),
        panics: Default::default(),
    };
    let forgetter = tokio::spawn(forget_deleted(gone_rx, context.clone()));
    let lane = tokio::spawn(urgent_lane(
        urgent_rx,
        link_reader.clone(),
        context.clone(),
        guard.clone(),
    ));
    let (ready_tx, ready_rx) = watch::channel(false);
    let shutdown: BoxFuture<'static, ()> = Box::pin(shutdown);
    let shutdown = futures::future::FutureExt::shared(shutdown);

    // WeCom's rate limit closed an API of a corp: its WeComApps report Throttled.
    let (block_tx, mut block_rx) = mpsc::unbounded_channel::<String>();
    context.apps.notify_blocks(block_tx);
    let block_relay = {
        let apps = app_reader.clone();
        let app_triggers = app_trigger_tx.clone();
        tokio::spawn(async move {
            while let Some(corp_id) = block_rx.recv().await {
                for app in apps.state().iter().filter(|a| a.spec.corp_id == corp_id) {
                    let _ = app_triggers.try_send(ObjectRef::from_obj(&**app));
                }
            }
        })
    };
    let mapper_store = link_reader.clone();
    let link_config = kube::runtime::controller::Config::default()
        .concurrency(u16::try_from(options.concurrency()).unwrap_or(u16::MAX));
    let link_controller = Controller::for_stream(link_stream, link_reader.clone())
        .with_config(link_config)
        .watches_stream(
            tokio_stream_from(app_rx_links)
                .map(Ok::<_, watcher::Error>)
                .predicate_filter(app_predicate, Default::default()),
            move |app: WeComApp| {
                let namespace = app.namespace();
                let name = app.name_any();
                mapper_store
                    .state()
                    .into_iter()
                    .filter(|l| l.namespace() == namespace && l.spec.app_ref.name == name)
                    .map(|l| ObjectRef::from_obj(&*l))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_on(tokio_stream_from(link_trigger_rx).inspect({
            // A pass a callback asked for (a link deleted in WeCom) is urgent too; other
            // triggers (links waiting for quota, sweeps) keep their place in the queue.
            let context = context.clone();
            move |link: &ObjectRef<AcquisitionLink>| {
                let key = format!(
                    "{}/{}",
                    link.namespace.as_deref().unwrap_or_default(),
                    link.name
                );
                if context.urgent.is_marked(&key) {
                    let _ = urgent_tx.try_send(link.clone());
                }
            }
        }))
        .graceful_shutdown_on(shutdown.clone())
        .run(
            {
                let guard = guard.clone();
                move |link, ctx| {
                    let guard = guard.clone();
                    async move { guard.pass(&LINKS, link, ctx, link::reconcile).await }
                }
            },
            {
                let guard = guard.clone();
                move |link, error, ctx| {
                    guard.error_policy(&LINKS, link, error, ctx, link::error_policy)
                }
            },
            context.clone(),
        )
        .for_each(|_| async {});
    // The app controller runs on spec changes (and on its triggers and requeues), not on
    // its own status writes: each quota reading rewrites status.quota.observedAt.
    let app_controller = Controller::for_stream(
        tokio_stream_from(app_rx_all)
            .map(|a| Ok::<_, watcher::Error>((*a).clone()))
            .predicate_filter(app_lifecycle_predicate, Default::default()),
        app_reader.clone(),
    )
    .reconcile_on(tokio_stream_from(app_trigger_rx))
    .graceful_shutdown_on(shutdown.clone())
    .run(
        {
            let guard = guard.clone();
            move |app, ctx| {
                let guard = guard.clone();
                async move { guard.pass(&APPS, app, ctx, app::reconcile).await }
            }
        },
        move |app, error, ctx| guard.error_policy(&APPS, app, error, ctx, app::error_policy),
        context.clone(),
    )
    .for_each(|_| async {});
    let readiness = {
        let (links, apps) = (link_reader.clone(), app_reader.clone());
        async move {
            filled(&links).await;
            filled(&apps).await;
            let _ = ready_tx.send(true);
            futures::future::pending::<()>().await;
        }
    };
    // A controller loop ends only on shutdown; one that ends (or panics) before is
    // reported, so /healthz fails and Kubernetes restarts the pod.
    let shutting_down = {
        let shutdown = shutdown.clone();
        move || futures::FutureExt::now_or_never(shutdown.clone()).is_some()
    };
    let liveness = options.liveness;
    let link_controller = liveness.clone().supervise(
        "the AcquisitionLink controller",
        isolation::catch(link_controller),
        shutting_down.clone(),
    );
    let app_controller = liveness.supervise(
        "the WeComApp controller",
        isolation::catch(app_controller),
        shutting_down,
    );
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = futures::future::join(link_controller, app_controller) => {}
            _ = readiness => {}
        }
        pump.abort();
        block_relay.abort();
        lane.abort();
        forgetter.abort();
    });
    Running {
        context,
        triggers: Triggers {
            links: link_trigger_tx,
            apps: app_trigger_tx,
        },
        ready: ready_rx,
        task,
    }
}

/// Forgets each link the watch reports deleted (see [`Context::forget_link`]).
async fn forget_deleted(
    mut gone: mpsc::UnboundedReceiver<(String, Option<String>)>,
    ctx: Arc<Context>,
) {
    while let Some((key, uid)) = gone.recv().await {
        ctx.forget_link(&key, uid.as_deref());
    }
}

/// How many objects may wait for the urgent lane; more go through the controller's queue.
const URGENT_QUEUE: usize = 1024;
/// How many urgent passes run at once, beside the controller's own.
const URGENT_PASSES: usize = 16;

/// The urgent lane: passes a person is waiting for (an edit, a deletion, a requested pass,
/// a pause toggled, a callback's report) run here as soon as the watch shows them, instead
/// of behind every pass already in the controller's queue (thousands while a large set of
/// links converges: kube's queue is first come, first served). The controller still runs
/// its own pass for the same change later; `PassLocks` keeps the two apart, and that
/// second pass finds the work done and asks WeCom nothing. A failed urgent pass is left to
/// the controller's, with its back-off. Each app gets a fair share of the lane's passes.
async fn urgent_lane(
    mut requests: mpsc::Receiver<ObjectRef<AcquisitionLink>>,
    store: reflector::Store<AcquisitionLink>,
    ctx: Arc<Context>,
    guard: PassGuard,
) {
    // Nothing before both caches hold what the API server holds: a pass that cannot see
    // its app yet would take it for deleted.
    filled(&store).await;
    filled(&ctx.app_store).await;
    let permits = Arc::new(tokio::sync::Semaphore::new(URGENT_PASSES));
    // Shared out between apps like the controller's own slots: passes of an app whose API
    // hangs hold at most its share, and the rest of its urgent passes go through the queue.
    let shares = Arc::new(PassSlots::new(URGENT_PASSES));
    let waiting: Arc<std::sync::Mutex<std::collections::HashSet<ObjectRef<AcquisitionLink>>>> =
        Default::default();
    fn lock<T>(set: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        set.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    tracing::debug!("urgent lane ready");
    while let Some(object) = requests.recv().await {
        if !lock(&waiting).insert(object.clone()) {
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (store, ctx, guard, waiting, shares) = (
            store.clone(),
            ctx.clone(),
            guard.clone(),
            waiting.clone(),
            shares.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            // A change that comes during this pass queues another (it waits for this one).
            lock(&waiting).remove(&object);
            let key = format!(
                "{}/{}",
                object.namespace.as_deref().unwrap_or_default(),
                object.name
            );
            let Some(link) = store.get(&object) else {
                return;
            };
            if !link::wants_urgent_pass(&link) && !ctx.urgent.is_marked(&key) {
                return;
            }
            let app = format!(
                "{}/{}",
                object.namespace.as_deref().unwrap_or_default(),
                link.spec.app_ref.name
            );
            let Some(_share) = shares.enter(&app, ctx.app_store.state().len()) else {
                return;
            };
            if let Err(err) = guard.pass(&LINKS, link, ctx, link::reconcile_urgent).await {
                tracing::debug!(link = %key, %err, "urgent pass failed; the controller's pass retries it");
            }
        });
    }
}

/// The kind a guarded pass works on: its names and where its status is.
struct GuardedKind<K> {
    kind: &'static str,
    task: &'static str,
    conditions: fn(&K) -> &[Condition],
}

const LINKS: GuardedKind<AcquisitionLink> = GuardedKind {
    kind: "AcquisitionLink",
    task: isolation::task::LINK_RECONCILE,
    conditions: |link| link.status.as_ref().map_or(&[], |s| &s.conditions),
};

const APPS: GuardedKind<WeComApp> = GuardedKind {
    kind: "WeComApp",
    task: isolation::task::APP_RECONCILE,
    conditions: |app| app.status.as_ref().map_or(&[], |s| &s.conditions),
};

/// The error of a guarded pass: the reconciler's own, or a panic caught at the pass's
/// boundary.
#[derive(Debug, thiserror::Error)]
pub enum PassError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Failed(E),
    #[error("internal error (a panic, caught): {0}")]
    Panicked(String),
}

/// The short, stable message of `Ready=False InternalError`. The panic's own text goes to
/// the log only: it is a bug's text, not written for users, and could quote anything.
const INTERNAL_ERROR_MESSAGE: &str = "the controller hit an internal error (a bug) on this object and retries with back-off; the controller log has the details (wecom_acq_panics_total counts them)";

/// Keeps a panic in one reconcile pass inside that pass: caught, counted, logged once,
/// reported on the object, and retried with back-off, while every other object goes on.
#[derive(Clone)]
struct PassGuard {
    hook: Option<PassHook>,
    /// Consecutive panicked passes per object, for the back-off.
    panics: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
}

impl PassGuard {
    async fn pass<K, E, F, Fut>(
        &self,
        of: &GuardedKind<K>,
        object: Arc<K>,
        ctx: Arc<Context>,
        reconcile: F,
    ) -> Result<Action, PassError<E>>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        E: std::error::Error + 'static,
        F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
        Fut: std::future::Future<Output = Result<Action, E>>,
    {
        let namespace = object.namespace().unwrap_or_default();
        let name = object.name_any();
        let key = format!("{}/{namespace}/{name}", of.kind);
        let hook = self.hook.clone();
        let caught = isolation::catch(async {
            if let Some(hook) = hook {
                hook(of.kind, &namespace, &name);
            }
            reconcile(object.clone(), ctx.clone()).await
        })
        .await;
        let message = match caught {
            Ok(result) => {
                if let Ok(mut panics) = self.panics.lock() {
                    panics.remove(&key);
                }
                return result.map_err(PassError::Failed);
            }
            Err(message) => message,
        };
        if let Ok(mut panics) = self.panics.lock() {
            *panics.entry(key).or_default() += 1;
        }
        ctx.metrics.count_panic(of.task);
        ctx.metrics
            .observe_reconcile(of.kind, "panic", Duration::ZERO);
        tracing::error!(
            kind = of.kind,
            %namespace,
            name = %name,
            panic = %message,
            "reconcile pass panicked (a bug); reported on the object as Ready=False InternalError and retried with back-off"
        );
        report_internal_error(&ctx, of, &object, &namespace, &name).await;
        Err(PassError::Panicked(message))
    }

    /// The reconciler's own policy for its errors; back-off by consecutive panics for a
    /// panic. A panic in the policy itself is caught too.
    fn error_policy<K, E>(
        &self,
        of: &GuardedKind<K>,
        object: Arc<K>,
        error: &PassError<E>,
        ctx: Arc<Context>,
        policy: fn(Arc<K>, &E, Arc<Context>) -> Action,
    ) -> Action
    where
        K: kube::Resource<DynamicType = ()>,
        E: std::error::Error + 'static,
    {
        let key = format!(
            "{}/{}/{}",
            of.kind,
            object.namespace().unwrap_or_default(),
            object.name_any()
        );
        let panicked = match error {
            PassError::Failed(error) => {
                let metrics = ctx.metrics.clone();
                match isolation::catch_sync(|| policy(object, error, ctx)) {
                    Ok(action) => return action,
                    Err(message) => {
                        metrics.count_panic(of.task);
                        tracing::error!(kind = of.kind, object = %key, panic = %message, "error policy panicked (a bug); retrying with back-off");
                        1
                    }
                }
            }
            PassError::Panicked(_) => self
                .panics
                .lock()
                .ok()
                .and_then(|p| p.get(&key).copied())
                .unwrap_or(1),
        };
        Action::requeue(plan::retry_delay(
            panicked,
            0.5 + rand::random::<f64>() * 0.5,
        ))
    }
}

/// Writes `Ready=False InternalError` on the object (a status apply of that condition), unless it already says so. A failure to write is logged, never fatal.
async fn report_internal_error<K>(
    ctx: &Context,
    of: &GuardedKind<K>,
    object: &K,
    namespace: &str,
    name: &str,
) where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let Some(conditions) = internal_error_conditions(
        (of.conditions)(object),
        object.meta().generation,
        &Time(k8s_openapi::jiff::Timestamp::now()),
    ) else {
        return;
    };
    let api: Api<K> = Api::namespaced(ctx.kube.clone(), namespace);
    // Only the Ready condition, as the guard's own field manager: the other conditions
    // stay their writers'; the reconciler's next apply takes Ready back.
    let ready: Vec<&Condition> = conditions
        .iter()
        .filter(|c| c.type_ == conditions::READY)
        .collect();
    let status = serde_json::json!({ "conditions": ready });
    if let Err(err) =
        status_apply::apply_status(&api, name, status_apply::GUARD_MANAGER, status, None).await
    {
        tracing::warn!(kind = of.kind, %namespace, %name, error = %err, "cannot write Ready=False InternalError");
    }
}

/// The conditions with `Ready=False InternalError`, or `None` when they say so already.
fn internal_error_conditions(
    current: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Option<Vec<Condition>> {
    let ready = conditions::find(current, conditions::READY);
    if ready.is_some_and(|c| {
        c.status == "False"
            && c.reason == conditions::reason::INTERNAL_ERROR
            && c.observed_generation == generation
    }) {
        return None;
    }
    let mut next = current.to_vec();
    conditions::set(
        &mut next,
        conditions::READY,
        false,
        conditions::reason::INTERNAL_ERROR,
        INTERNAL_ERROR_MESSAGE,
        generation,
        now,
    );
    Some(next)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[derive(Clone)]
struct Health {
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    liveness: Liveness,
}

/// /healthz (fails once a controller loop or worker stopped on its own), /readyz (ready
/// once both caches are synced) and /metrics.
pub fn health_router(
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    liveness: Liveness,
) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|State(h): State<Health>| async move {
                let stopped = h.liveness.stopped();
                if stopped.is_empty() {
                    (StatusCode::OK, "ok".to_string())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("stopped: {}", stopped.join(", ")),
                    )
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                if *h.ready.borrow() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    h.metrics.render(),
                )
                    .into_response()
            }),
        )
        .with_state(Health {
            metrics,
            ready,
            liveness,
        })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The longest startup and shutdown wait for the callback leader label of this Pod.
const LABEL_TIMEOUT: Duration = Duration::from_secs(5);

/// `wecom-acq run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach Kubernetes (in-cluster config or KUBECONFIG): {e}")
    })?;
    // Installs the SIGTERM handler now, so a SIGTERM at any point after this is graceful.
    let mut signal = Box::pin(shutdown_signal());
    let _ = futures::FutureExt::now_or_never(&mut signal);
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let lease_namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let own_pod = args
        .leader_elect
        .then(|| crate::leader::OwnPod::new(client.clone(), &lease_namespace));
    if let Some(own_pod) = &own_pod {
        // Before this replica reports ready: a label left from an earlier life of this
        // Pod (it lost the Lease and restarted) would route callbacks to a standby.
        own_pod.unmark(LABEL_TIMEOUT).await;
    }
    // The probes are served before the Lease is held: a replica standing by must answer
    // /healthz (or the liveness probe restarts it) and /readyz (or a rollout that waits
    // for new pods to be Ready never ends). A standby is ready; a leader once its caches
    // are synced.
    let (ready_tx, ready_rx) = watch::channel(args.leader_elect);
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot listen on --metrics-addr {}: {e}", args.metrics_addr)
        })?;
    let liveness = Liveness::default();
    let router = health_router(metrics.clone(), ready_rx, liveness.clone());
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        let handler = move |request: http::Request<hyper::body::Incoming>| {
            let router = router.clone();
            async move {
                match tower::ServiceExt::oneshot(router, request.map(axum::body::Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        };
        let stopped = async move {
            let _ = server_stop.wait_for(|s| *s).await;
        };
        let served = crate::http_server::serve_http1(
            listener,
            handler,
            crate::http_server::ConnectionLimits::default(),
            stopped,
        )
        .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "the health and metrics port stopped serving");
        }
    });
    let mut leadership = None;
    if args.leader_elect {
        tokio::select! {
            acquired = crate::leader::acquire(client.clone(), &lease_namespace, &args.lease_name) => leadership = Some(acquired?),
            _ = &mut signal => {
                tracing::info!("shutting down before holding the lease");
                let _ = stop_tx.send(true);
                let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
                return Ok(());
            }
        }
    }
    let stopped = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let running = start_with(
        client.clone(),
        args.namespace.as_deref(),
        args.cadence(),
        metrics.clone(),
        StartOptions {
            liveness,
            pass_hook: None,
            allowed_api_hosts: args.allowed_api_hosts.clone(),
            concurrency: args.max_concurrent_reconciles,
            corp_limits: None,
        },
        stopped,
    );
    let mut caches_synced = running.ready.clone();
    tokio::spawn(async move {
        loop {
            let synced = *caches_synced.borrow_and_update();
            let _ = ready_tx.send(synced);
            if caches_synced.changed().await.is_err() {
                return;
            }
        }
    });
    let callbacks = crate::callback::serve_with(
        args.callback_addr,
        running.context.clone(),
        running.triggers.clone(),
        args.callback_settings(),
        stop_rx.clone(),
    )
    .await?;
    tracing::info!(metrics = %args.metrics_addr, callback = %args.callback_addr, namespace = ?args.namespace, "controller started");
    // The callback port listens: route callbacks here.
    let labelling = own_pod.map(|own_pod| {
        let own_pod = Arc::new(own_pod);
        let marking = tokio::spawn({
            let own_pod = own_pod.clone();
            async move { own_pod.mark_leading().await }
        });
        (own_pod, marking)
    });
    signal.await;
    tracing::info!("shutting down");
    if let Some((own_pod, marking)) = labelling {
        // Callbacks go to the next leader from now on; this one still takes what is in
        // flight until it stops.
        marking.abort();
        own_pod.unmark(LABEL_TIMEOUT).await;
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(20), running.task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), callbacks).await;
    if let Some(leadership) = leadership {
        leadership.release().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn healthz(router: &Router) -> (StatusCode, String) {
        let request = http::Request::get("/healthz")
            .body(axum::body::Body::empty())
            .unwrap_or_default();
        let response = match tower::ServiceExt::oneshot(router.clone(), request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn healthz_fails_once_a_controller_loop_ended_on_its_own() {
        let liveness = Liveness::default();
        let (_ready_tx, ready) = watch::channel(true);
        let router = health_router(Metrics::new(), ready, liveness.clone());
        assert_eq!(healthz(&router).await, (StatusCode::OK, "ok".into()));
        // A loop that ends while shutting down is no failure.
        liveness
            .clone()
            .supervise("the WeComApp controller", async {}, || true)
            .await;
        assert_eq!(healthz(&router).await.0, StatusCode::OK);
        // One that ends (or whose panic was caught) while running is.
        liveness
            .clone()
            .supervise(
                "the AcquisitionLink controller",
                isolation::catch(async { panic!("stream ended") }),
                || false,
            )
            .await
            .unwrap_err();
        assert_eq!(
            healthz(&router).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "stopped: the AcquisitionLink controller".into()
            )
        );
    }

    #[test]
    fn internal_error_is_written_once_per_generation() {
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let first = internal_error_conditions(&[], Some(3), &now).unwrap_or_default();
        let ready = conditions::find(&first, conditions::READY).cloned();
        assert_eq!(
            ready.map(|c| (c.status, c.reason, c.observed_generation)),
            Some(("False".into(), "InternalError".into(), Some(3)))
        );
        assert!(internal_error_conditions(&first, Some(3), &now).is_none());
        assert!(internal_error_conditions(&first, Some(4), &now).is_some());
    }
}
