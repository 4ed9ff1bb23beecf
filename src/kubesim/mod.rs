//! kubesim: a small in-memory Kubernetes API server for tests and the demo, served over
//! HTTP/1.1 on a loopback port, that the real controller binary (kube-rs client,
//! watcher, Controller, events Recorder) can use instead of a cluster.
//!
//! It is meant to be honest: the end-to-end tests that run against it also run against a
//! genuine kube-apiserver (v1.21 and newer), so where a controller can observe the
//! difference it behaves like the real one.
//!
//! # What it serves
//! - Discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}`,
//!   `/apis/{group}/{version}`; `/healthz`, `/readyz`, `/livez`.
//! - core/v1 `namespaces` (with `/status`), `secrets`, `events`, `pods` (stored as given,
//!   with `/status`; nothing schedules or runs them); `events.k8s.io/v1`
//!   `events` (the same stored Events, fields renamed as the real conversion does);
//!   `coordination.k8s.io/v1` `leases`; `apiextensions.k8s.io/v1`
//!   `customresourcedefinitions`. A created CRD is marked `NamesAccepted` and
//!   `Established` by a second write (watch for it, as on a cluster) and its served
//!   versions are then served, with `/status` when the CRD declares it. CRDs are not
//!   pre-installed: create them ([`KubeSimHandle::install_crds`] does it for this
//!   project's two), as `kubectl apply -f crds/` would.
//! - Verbs: get, list, watch, create, update, patch, delete, deletecollection.
//!
//! # Semantics it keeps
//! - One global resourceVersion counter; list `resourceVersion` (`""`, `"0"`,
//!   `NotOlderThan`, `Exact` snapshots), `limit`/`continue` with consistent snapshots,
//!   410 Expired for snapshots and continue tokens older than the retained history.
//! - Watch: initial ADDED events for `resourceVersion` `""`/`"0"`, replay after N,
//!   ERROR 410 Expired (in a 200 stream, as the watch cache does) for an N older than the
//!   history window, BOOKMARKs with `allowWatchBookmarks`, `sendInitialEvents` streaming
//!   lists, selector transitions as ADDED/DELETED, `timeoutSeconds`.
//! - Server-set uid, creationTimestamp, resourceVersion, generation; 409 AlreadyExists,
//!   409 Conflict on a stale resourceVersion, 422 for a PUT without one on custom
//!   resources; a write that changes nothing keeps its resourceVersion and emits no event.
//! - Status subresource isolation both ways; generation bumps on spec changes only (for
//!   custom resources: any change outside metadata and status).
//! - deletionTimestamp plus finalizers; no new finalizers on a deleting object; removing
//!   the last finalizer deletes. Namespaces terminate after their content is gone (deleted
//!   in a new random order each time: the namespace controller promises none) and refuse
//!   new content meanwhile; `default`, `kube-system`, `kube-public` cannot be
//!   deleted. Deleting a CRD deletes its objects first.
//! - Names must be DNS subdomains (namespaces: DNS labels), label keys and values,
//!   annotation keys and finalizers are checked; events.k8s.io/v1 Events are validated.
//! - Errors are `Status` objects with the real reasons and codes.
//!
//! # Known gaps (what it does not do)
//! - No authentication, authorization or admission: no RBAC, no webhooks, no CEL
//!   (`x-kubernetes-validations`), no OpenAPI schema validation, defaulting or pruning of
//!   custom resources. A custom resource the real apiserver would reject or prune is
//!   stored as sent; test validation against a real apiserver.
//! - Server-side apply merges as the apiserver does, per list type: from the CRD's
//!   `openAPIV3Schema` (`x-kubernetes-list-type` `map` with `x-kubernetes-list-map-keys`,
//!   `set`, `atomic`, the default; `x-kubernetes-map-type: atomic`) and ObjectMeta's
//!   (`metadata.finalizers` a set, `metadata.ownerReferences` a map keyed by `uid`,
//!   labels and annotations maps). `metadata.managedFields` is kept per manager,
//!   operation and subresource in `FieldsV1`, list items named `k:{"type":"Ready"}` and
//!   `v:"x"`; the manager of a write without `fieldManager` comes from the User-Agent.
//!   Applying a value another manager owns is a 409 naming manager and field (per list
//!   item: `.status.conditions[type="Ready"].status`), unless `force=true`; what a
//!   manager stops applying is removed unless another manager owns it; an applied keyed
//!   list with an item missing its key, or a key twice, is refused. Gaps: built-in kinds
//!   other than their metadata have no schema here (their lists are atomic, e.g. a Pod's
//!   containers); a pruned object or list item goes whole, where the apiserver keeps
//!   descendants nobody owned; entry times move only when the object or the manager's
//!   fields change.
//! - Strategic merge patch on built-in kinds is a merge patch plus set-merging of
//!   `metadata.finalizers`; other patch strategies and `$patch` directives are ignored.
//!   On custom resources it is refused with 415, as on a real apiserver.
//! - No garbage collector: ownerReferences do not cascade, and `propagationPolicy` is
//!   ignored (deletion is as if Background with nothing owned).
//! - No `dryRun` (refused with 400), no `fieldValidation`, no Table or protobuf output,
//!   no aggregated discovery, no `/openapi`, no HTTP/2, no TLS.
//! - Custom resource versions share one storage and differ only in `apiVersion`
//!   (conversion strategy `None`); no conversion webhooks.
//! - Validation of built-in kinds is limited to metadata, Secret data encoding,
//!   events.k8s.io/v1 Events and CRD basics; core/v1 Events and Leases are stored as
//!   sent. Field selectors: `metadata.name`, `metadata.namespace`, plus `type` on
//!   Secrets, `status.phase` on Namespaces and the usual Event fields; others are
//!   refused with 400 as unsupported.
//! - One global change history instead of per-resource watch caches: a resumed watch
//!   gets 410 only after [`FaultControl::compact_history`] or once the history window
//!   (the last 75 s of changes, at most 102,400, as the apiserver's watch cache at its
//!   largest; [`KubeSim::history_limit`] lowers the count) has moved past it. List
//!   continuations share that window (etcd keeps 5 minutes). Watchers too slow for the
//!   live feed are closed, as the apiserver closes slow watchers.
//! - List with `resourceVersion=0` honours `limit` (older apiservers serve the whole
//!   list from the watch cache then); clients must handle both.
//! - Bookmarks come every [`KubeSim::bookmark_interval`] (default 10 s), not about
//!   once a minute; there is no bookmark just before a watch times out.
//! - Namespace `/finalize` is not served; namespace and CRD cleanup run synchronously
//!   inside the deleting request instead of in background controllers.
//! - Nothing is persisted. The `/status` of a CRD is written by the emulator at
//!   creation (NamesAccepted, Established); later status writes by clients are kept.

mod faults;
mod fields;
mod managed;
mod patch;
mod resources;
mod schema;
mod selector;
mod server;
mod status;
mod store;
mod validation;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use faults::FaultControl;

/// Builder for an emulator; [`spawn`] starts one with the defaults.
#[derive(Debug, Clone)]
pub struct KubeSim {
    history_limit: usize,
    bookmark_interval: Duration,
}

impl Default for KubeSim {
    fn default() -> Self {
        Self {
            history_limit: 102_400,
            bookmark_interval: Duration::from_secs(10),
        }
    }
}

impl KubeSim {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many changes are kept for watches to resume from and list snapshots to roll
    /// back through; older resourceVersions get 410 Expired.
    pub fn history_limit(mut self, changes: usize) -> Self {
        self.history_limit = changes.max(1);
        self
    }

    /// How often a watch that asked for bookmarks gets one (a real apiserver: about a
    /// minute).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Binds `addr` (port 0 picks a free port) and serves until the handle is shut down
    /// or dropped.
    pub async fn spawn(self, addr: SocketAddr) -> anyhow::Result<KubeSimHandle> {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("kubesim could not listen on {addr}; pick another address or port 0")
        })?;
        let addr = listener
            .local_addr()
            .context("kubesim could not read the address it listens on")?;
        let store = Arc::new(Mutex::new(store::Store::new(self.history_limit)));
        let faults = Arc::new(faults::Faults::new(store.clone()));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = server::AppState {
            store,
            faults: faults.clone(),
            addr,
            bookmark_interval: self.bookmark_interval,
            shutdown: shutdown_rx.clone(),
        };
        let app = server::router(state);
        let mut stop = shutdown_rx;
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "kubesim stopped serving");
            }
        });
        tracing::info!(%addr, "kubesim serving the Kubernetes API");
        Ok(KubeSimHandle {
            addr,
            faults: FaultControl { inner: faults },
            shutdown: shutdown_tx,
            task: Some(task),
        })
    }
}

/// Starts an emulator with the defaults on `addr` (use `127.0.0.1:0` for a free port).
pub async fn spawn(addr: SocketAddr) -> anyhow::Result<KubeSimHandle> {
    KubeSim::default().spawn(addr).await
}

/// A running emulator. Dropping it stops the server.
#[derive(Debug)]
pub struct KubeSimHandle {
    addr: SocketAddr,
    faults: FaultControl,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl KubeSimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this emulator: plain HTTP, no credentials, `namespace` as the
    /// context's default namespace.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: kubesim
  cluster:
    server: {server}
contexts:
- name: kubesim
  context:
    cluster: kubesim
    user: kubesim
    namespace: {namespace}
current-context: kubesim
preferences: {{}}
users:
- name: kubesim
  user: {{}}
",
            server = self.base_url(),
            namespace = serde_json::Value::String(namespace.to_string()),
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] (namespace `default`) to `path`, for a
    /// subprocess's `KUBECONFIG`.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml("default"))
    }

    /// A kube client for this emulator, default namespace `default`.
    pub async fn client(&self) -> kube::Client {
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(self.addr.to_string())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        let config = kube::Config::new(uri);
        match kube::Client::try_from(config) {
            Ok(client) => client,
            // Plain HTTP needs no TLS setup, the only way try_from can fail.
            Err(e) => unreachable_client(&e),
        }
    }

    /// Creates this project's CRDs (WeComApp, AcquisitionLink) through the API, as
    /// `kubectl apply -f crds/` does, and waits until they are Established. CRDs that
    /// already exist are left as they are.
    pub async fn install_crds(&self) -> anyhow::Result<()> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        use kube::CustomResourceExt as _;
        let client = self.client().await;
        let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client);
        for crd in [
            crate::api::WeComApp::crd(),
            crate::api::AcquisitionLink::crd(),
            crate::api::WeComSuite::crd(),
        ] {
            let name = crd.metadata.name.clone().unwrap_or_default();
            match api.create(&kube::api::PostParams::default(), &crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_already_exists() => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating CRD {name} in kubesim failed"));
                }
            }
            let established = kube::runtime::wait::await_condition(
                api.clone(),
                &name,
                kube::runtime::wait::conditions::is_crd_established(),
            );
            tokio::time::timeout(Duration::from_secs(10), established)
                .await
                .with_context(|| format!("CRD {name} was not Established within 10s"))?
                .with_context(|| format!("watching CRD {name} failed"))?;
        }
        Ok(())
    }

    /// Fault hooks for this emulator.
    pub fn faults(&self) -> FaultControl {
        self.faults.clone()
    }

    /// Ends every watch, stops accepting requests, and waits (at most 5 s) for the
    /// server to finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for KubeSimHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cold]
fn unreachable_client(error: &kube::Error) -> ! {
    panic!("building a plain-HTTP kube client for kubesim failed: {error}")
}
