//! `wecom-acq run`: the controllers for both kinds, the health and metrics endpoint, and
//! graceful shutdown. Wiring only; decisions live in `reconcile`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use futures::{StreamExt, future::BoxFuture};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        events::{Recorder, Reporter},
        predicates,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tokio::sync::{mpsc, watch};

use crate::{
    api::{AcquisitionLink, PAUSED_ANNOTATION, RECONCILE_REQUESTED_ANNOTATION, WeComApp},
    metrics::Metrics,
    reconcile::{
        app, conditions,
        context::{AppClients, Cadence, Context},
        link,
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
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Address of the WeCom callback endpoint (/callback/{namespace}/{app}).
    #[arg(long, env = "CALLBACK_ADDR", default_value = "0.0.0.0:8081")]
    pub callback_addr: SocketAddr,
    /// Refuse callbacks whose timestamp is further than this from this host's clock;
    /// replays within it are answered without being processed again.
    #[arg(long, env = "CALLBACK_MAX_SKEW", default_value = "5m", value_parser = parse_duration)]
    pub callback_max_skew: Duration,
    /// Observe every link (A2) at least this often; callbacks make it faster.
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// Recount customers (A6) this often.
    #[arg(long, env = "CUSTOMERS_INTERVAL", default_value = "30m", value_parser = parse_duration)]
    pub customers_interval: Duration,
    /// Refresh statistics (A7) this often.
    #[arg(long, env = "STATISTICS_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub statistics_interval: Duration,
    /// Refresh each app's quota (A8) this often.
    #[arg(long, env = "QUOTA_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub quota_interval: Duration,
    /// Run only while holding a Lease (for more than one replica).
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "LEASE_NAME",
        default_value = "wecom-acquisition-controller"
    )]
    pub lease_name: String,
    /// Namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Hosts a WeComApp's apiBaseUrl may name, comma-separated: `host` (any port) or
    /// `host:port`. Any other app gets Ready=False, reason ApiHostNotAllowed, and no request.
    #[arg(long, env = "ALLOWED_API_HOSTS", default_value = crate::wecom::allowed_hosts::OFFICIAL_API_HOST)]
    pub allowed_api_hosts: AllowedApiHosts,
}

impl RunArgs {
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
    link.metadata.finalizers.hash(&mut h);
    Some(h.finish())
}

/// Handles other parts of the process use to steer the controllers (the callback endpoint).
#[derive(Clone)]
pub struct Triggers {
    pub links: mpsc::Sender<ObjectRef<AcquisitionLink>>,
    pub apps: mpsc::Sender<ObjectRef<WeComApp>>,
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
    let (links_api, apps_api): (Api<AcquisitionLink>, Api<WeComApp>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (link_reader, link_writer) = reflector::store();
    let (app_reader, app_writer) = reflector::store();
    let link_stream = watcher(links_api, watcher::Config::default())
        .default_backoff()
        .reflect(link_writer)
        .applied_objects()
        .predicate_filter(link_predicate, Default::default());
    let app_stream = watcher(apps_api, watcher::Config::default())
        .default_backoff()
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
        apps: AppClients::new(client.clone(), metrics.clone(), allowed_api_hosts),
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        cadence,
        app_store: app_reader.clone(),
        link_store: link_reader.clone(),
        slow_facts: Default::default(),
        quota_checks: Default::default(),
        pass_failures: Default::default(),
    });
    let (ready_tx, ready_rx) = watch::channel(false);
    let shutdown: BoxFuture<'static, ()> = Box::pin(shutdown);
    let shutdown = futures::future::FutureExt::shared(shutdown);

    let mapper_store = link_reader.clone();
    let link_controller = Controller::for_stream(link_stream, link_reader.clone())
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
        .reconcile_on(tokio_stream_from(link_trigger_rx))
        .graceful_shutdown_on(shutdown.clone())
        .run(link::reconcile, link::error_policy, context.clone())
        .for_each(|_| async {});
    // The app controller runs on spec changes (and on its triggers and requeues), not on
    // its own status writes: each quota reading rewrites status.quota.observedAt.
    let app_controller = Controller::for_stream(
        tokio_stream_from(app_rx_all)
            .map(|a| Ok::<_, watcher::Error>((*a).clone()))
            .predicate_filter(predicates::generation, Default::default()),
        app_reader.clone(),
    )
    .reconcile_on(tokio_stream_from(app_trigger_rx))
    .graceful_shutdown_on(shutdown.clone())
    .run(app::reconcile, app::error_policy, context.clone())
    .for_each(|_| async {});
    let readiness = {
        let (links, apps) = (link_reader.clone(), app_reader.clone());
        async move {
            let _ = links.wait_until_ready().await;
            let _ = apps.wait_until_ready().await;
            let _ = ready_tx.send(true);
            futures::future::pending::<()>().await;
        }
    };
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = futures::future::join(link_controller, app_controller) => {}
            _ = readiness => {}
        }
        pump.abort();
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

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[derive(Clone)]
struct Health {
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
}

/// /healthz, /readyz (ready once both caches are synced) and /metrics.
pub fn health_router(metrics: Arc<Metrics>, ready: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
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
        .with_state(Health { metrics, ready })
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
    let router = health_router(metrics.clone(), ready_rx);
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
            crate::http_server::DEFAULT_HEADER_READ_TIMEOUT,
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
    let running = start(
        client.clone(),
        args.namespace.as_deref(),
        args.cadence(),
        metrics.clone(),
        args.allowed_api_hosts.clone(),
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
        crate::callback::CallbackSettings::with_max_skew(args.callback_max_skew),
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
