//! The WeCom callback endpoint (`/callback/{namespace}/{app}`): verified, decrypted events
//! from WeCom drive remote-delete handling, conversion counters, customer counts and quota
//! conditions, while polling stays the backup (R13).
//!
//! - [`endpoint`]: the HTTP layer and its checks (signature, timestamp window, replays,
//!   body limit, bounded queue), over an abstract [`AppDirectory`] and [`EventSink`], so it
//!   is tested and benchmarked without Kubernetes.
//! - [`directory`]: callback credentials from the WeComApps and their Secrets, cached.
//! - [`worker`]: turns queued events into reconcile triggers and status writes.
//! - [`replay`]: the memory of callbacks already taken.
//!
//! [`serve`] wires them to the controller: the answer never waits on the Kubernetes API or
//! on WeCom (R12).

pub mod directory;
pub mod endpoint;
pub mod replay;
pub mod suite;
pub mod worker;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::mpsc, sync::watch, task::JoinHandle};

pub use directory::{DirectorySettings, KubeAppDirectory};
pub use endpoint::{
    AppCallback, AppDirectory, CallbackEndpoint, EndpointSettings, EventSink, InboundEvent, Lookup,
    StaticDirectory,
};
pub use worker::WorkerSettings;

pub use crate::http_server::{
    ConnectionLimits, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, serve_http1,
};

use crate::reconcile::{context::Context, triggers::Triggers};

/// Events accepted but not yet handled; beyond this the endpoint answers 503.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// Everything tunable about the callback endpoint.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    pub endpoint: EndpointSettings,
    pub directory: DirectorySettings,
    pub worker: WorkerSettings,
    pub queue_capacity: usize,
    /// A connection that does not deliver a whole request head within this is closed.
    pub header_read_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        CallbackSettings {
            endpoint: EndpointSettings::default(),
            directory: DirectorySettings::default(),
            worker: WorkerSettings::default(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl CallbackSettings {
    /// The defaults with another timestamp window (`--callback-max-skew`).
    pub fn with_max_skew(max_skew: Duration) -> Self {
        let mut settings = Self::default();
        settings.endpoint.max_skew = Some(max_skew);
        settings
    }
}

/// Binds the callback endpoint with the default settings and serves it until `stop`
/// turns true.
pub async fn serve(
    addr: SocketAddr,
    context: Arc<Context>,
    triggers: Triggers,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    serve_with(addr, context, triggers, CallbackSettings::default(), stop).await
}

/// [`serve`] with explicit settings.
pub async fn serve_with(
    addr: SocketAddr,
    context: Arc<Context>,
    triggers: Triggers,
    settings: CallbackSettings,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --callback-addr {addr}: {e}"))?;
    Ok(serve_on(listener, context, triggers, settings, stop))
}

/// Serves the callback `endpoint` on `listener` until `shutdown` completes (see
/// [`serve_http1`]: the header read timeout matters on this port, which faces the internet).
pub async fn serve_endpoint<D: AppDirectory, S: EventSink>(
    listener: TcpListener,
    endpoint: CallbackEndpoint<D, S>,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = ConnectionLimits {
        header_read_timeout,
        ..ConnectionLimits::default()
    };
    serve_endpoint_with(listener, endpoint, limits, shutdown).await
}

/// [`serve_endpoint`] with explicit connection limits (a cap on connections besides the
/// header read timeout).
pub async fn serve_endpoint_with<D: AppDirectory, S: EventSink>(
    listener: TcpListener,
    endpoint: CallbackEndpoint<D, S>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handler = move |request| {
        let endpoint = endpoint.clone();
        async move { endpoint.handle(request).await }
    };
    serve_http1(listener, handler, limits, shutdown).await
}

/// Serves the callback endpoint on a bound listener (tests bind port 0 first, to know the
/// URL before the simulator starts) until `stop` turns true. The worker then handles what
/// was queued and writes the pending customer counts before the task ends.
pub fn serve_on(
    listener: TcpListener,
    context: Arc<Context>,
    triggers: Triggers,
    settings: CallbackSettings,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let (queue, events) = mpsc::channel::<InboundEvent>(settings.queue_capacity.max(1));
    let directory = KubeAppDirectory::new(context.clone(), settings.directory);
    let liveness = context.liveness.clone();
    let stopping = {
        let stop = stop.clone();
        move || *stop.borrow()
    };
    // The refresher ends on `stop` by itself; before, it is reported (a lookup would
    // otherwise go on answering from a cache that no longer follows the apps).
    let refresher = tokio::spawn(liveness.clone().supervise(
        "the callback directory refresher",
        directory.spawn_refresher(stop.clone()),
        stopping.clone(),
    ));
    let suite_triggers = triggers.clone();
    // The worker ends only once the endpoint stopped (every sender gone): one that ends
    // before, or panics outside the per-event boundary, is reported so /healthz fails.
    let worker = tokio::spawn(liveness.clone().supervise(
        "the callback worker",
        worker::spawn(context.clone(), triggers, events, settings.worker),
        stopping.clone(),
    ));
    let limits = ConnectionLimits {
        header_read_timeout: settings.header_read_timeout,
        max_connections: settings.max_connections,
    };
    // Suite instruction callbacks (`/suite/{namespace}/{suite}`) share the port.
    let (suites, suite_events) = suite::SuiteEndpoint::new(
        context.clone(),
        Some(queue.clone()),
        settings.endpoint.max_skew,
    );
    let suite_worker = suite::spawn_worker(context.clone(), suite_triggers, suite_events);
    let endpoint = CallbackEndpoint::new(directory, queue, &context.metrics, settings.endpoint);
    let handler = move |request: http::Request<hyper::body::Incoming>| {
        let endpoint = endpoint.clone();
        let suites = suites.clone();
        async move {
            if suite::SuiteEndpoint::serves(request.uri().path()) {
                suites.handle(request).await
            } else {
                endpoint.handle(request).await
            }
        }
    };
    let mut stop = stop;
    tokio::spawn(async move {
        let served = liveness
            .supervise(
                "the callback endpoint",
                serve_http1(listener, handler, limits, async move {
                    let _ = stop.wait_for(|s| *s).await;
                }),
                stopping,
            )
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "the callback endpoint stopped serving");
        }
        refresher.abort();
        suite_worker.abort();
        let _ = worker.await;
    })
}
