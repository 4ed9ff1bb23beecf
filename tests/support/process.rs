//! The harness's subprocess mode: a WeCom simulator and a Kubernetes API emulator
//! in-process, the real `wecom-acq run` binary as a subprocess pointed at both, the
//! `examples/` YAML, and polling waits on what the controller writes.
//!
//! Nothing here waits a fixed time: every wait polls a condition ([`wait_for`]) until a
//! deadline and fails with the last thing it saw. A controller process is killed when its
//! guard is dropped, and the logs of every controller a test started are printed when the
//! test fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use wecom_acq::api::{AcquisitionLink, WeComApp};
use wecom_acq::kubesim::{self, KubeSimHandle};
use wecom_acq::sim::{self, SimCallback, SimConfig, SimHandle};

use super::{POLL, SimAdmin, wait_for};

/// How often the controller under test observes each link (`--resync-interval`).
pub const RESYNC: Duration = Duration::from_secs(2);
/// `--customers-interval`, `--statistics-interval` and `--quota-interval`.
pub const SLOW_FACTS: Duration = Duration::from_secs(5);

/// The name of the WeComApp in `examples/wecomapp.yaml`.
pub const APP: &str = "wecom";

/// A free loopback port, held (so no other server of the test process gets it) until the
/// listener is dropped just before the controller binds it.
fn reserve_port() -> (SocketAddr, std::net::TcpListener) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (listener.local_addr().unwrap(), listener)
}

/// The two loopback addresses a controller process serves on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub metrics: SocketAddr,
    pub callback: SocketAddr,
}

impl Ports {
    /// Two free loopback ports, released when the controller that uses them starts.
    pub fn free() -> Ports {
        let (metrics, metrics_hold) = reserve_port();
        let (callback, callback_hold) = reserve_port();
        lock(&RESERVED).extend([(metrics, metrics_hold), (callback, callback_hold)]);
        Ports { metrics, callback }
    }

    fn release(&self) {
        lock(&RESERVED).retain(|(addr, _)| *addr != self.metrics && *addr != self.callback);
    }
}

/// Ports handed out by [`Ports::free`] and not yet given to a controller.
static RESERVED: Mutex<Vec<(SocketAddr, std::net::TcpListener)>> = Mutex::new(Vec::new());

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Another test panicking while holding it leaves plain data behind.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads one document of `examples/` into a typed object.
pub fn example<T: DeserializeOwned>(file: &str) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    wecom_acq::yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// One value of the example Secret's `stringData`.
#[allow(dead_code, reason = "for the callback tests")]
pub fn example_secret_value(key: &str) -> String {
    let secret: Secret = example("secret.yaml");
    secret
        .string_data
        .and_then(|d| d.get(key).cloned())
        .unwrap_or_else(|| panic!("examples/secret.yaml has no stringData.{key}"))
}

/// Prints how long a scenario took when it ends (and that it failed, when it panicked).
pub struct Scenario {
    name: &'static str,
    started: Instant,
}

impl Scenario {
    pub fn start(name: &'static str) -> Self {
        Scenario {
            name,
            started: Instant::now(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let outcome = if std::thread::panicking() {
            "FAILED"
        } else {
            "ok"
        };
        eprintln!(
            "e2e scenario {:<28} {outcome} in {:.1} s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// One test's world: simulator, emulator, namespace, a scratch directory for the
/// kubeconfig and the controller logs.
pub struct Env {
    pub ns: String,
    pub sim: SimHandle,
    pub kube: KubeSimHandle,
    pub client: Client,
    pub ports: Ports,
    pub http: reqwest::Client,
    /// The simulator's admin API.
    pub admin: SimAdmin,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    logs: Mutex<Vec<PathBuf>>,
}

impl Env {
    /// Simulator without callbacks (the controller only polls).
    pub async fn start(ns: &str) -> Env {
        Env::start_with_sim(ns, |_| SimConfig::default()).await
    }

    /// Simulator that pushes callbacks to the controller's `--callback-addr`, signed with
    /// the example Secret's Token and EncodingAESKey, for the app of `examples/`.
    #[allow(dead_code, reason = "for the callback tests")]
    pub async fn start_with_callbacks(ns: &str) -> Env {
        let ns_owned = ns.to_string();
        Env::start_with_sim(ns, move |ports| SimConfig {
            callback: Some(SimCallback {
                url: callback_url(ports, &ns_owned, APP),
                token: example_secret_value("callback-token"),
                aes_key: example_secret_value("encoding-aes-key"),
                third_party_suite_id: None,
            }),
            ..SimConfig::default()
        })
        .await
    }

    /// `sim_config` gets the controller's ports first, so a simulator can push callbacks to
    /// a controller that is not started yet.
    pub async fn start_with_sim(ns: &str, sim_config: impl FnOnce(&Ports) -> SimConfig) -> Env {
        let ports = Ports::free();
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let sim = sim::spawn(sim_config(&ports), loopback).await.unwrap();
        let kube = kubesim::spawn(loopback).await.unwrap();
        kube.install_crds().await.unwrap();
        let client = kube.client().await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig).unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let admin = SimAdmin::new(sim.base_url(), http.clone());
        Env {
            ns: ns.to_string(),
            sim,
            kube,
            client,
            ports,
            http,
            admin,
            dir,
            kubeconfig,
            logs: Mutex::new(Vec::new()),
        }
    }

    /// `http://127.0.0.1:PORT/callback/{ns}/{app}` of the controller of this test.
    #[allow(dead_code, reason = "for the callback tests")]
    pub fn callback_url(&self, app: &str) -> String {
        callback_url(&self.ports, &self.ns, app)
    }

    /// Starts `wecom-acq run` with short cadences, the test's ports and the emulator's
    /// kubeconfig; `extra` flags are appended.
    pub fn spawn_controller(&self, extra: &[&str]) -> ControllerProcess {
        self.spawn_controller_on(self.ports, extra)
    }

    /// The `POD_NAME` the next spawned controller gets.
    #[allow(dead_code, reason = "for the leader-election test")]
    pub fn next_identity(&self) -> String {
        format!("e2e-controller-{}", lock(&self.logs).len() + 1)
    }

    /// Like [`Self::spawn_controller`] on other ports, for a second replica. Each process
    /// gets its own `POD_NAME` (`e2e-controller-N`), its leader-election identity.
    pub fn spawn_controller_on(&self, ports: Ports, extra: &[&str]) -> ControllerProcess {
        let mut logs = lock(&self.logs);
        let number = logs.len() + 1;
        let log = self.dir.path().join(format!("controller-{number}.log"));
        logs.push(log.clone());
        let stderr = std::fs::File::create(&log).unwrap();
        let stdout = stderr.try_clone().unwrap();
        let secs = |d: Duration| format!("{}s", d.as_secs());
        let mut command = Command::new(env!("CARGO_BIN_EXE_wecom-acq"));
        command
            .arg("run")
            .args(["--metrics-addr", &ports.metrics.to_string()])
            .args(["--callback-addr", &ports.callback.to_string()])
            .args(["--resync-interval", &secs(RESYNC)])
            .args(["--customers-interval", &secs(SLOW_FACTS)])
            .args(["--statistics-interval", &secs(SLOW_FACTS)])
            .args(["--quota-interval", &secs(SLOW_FACTS)])
            // The simulator listens on the loopback address.
            .args(["--allowed-api-hosts", "127.0.0.1"])
            .args(extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,wecom_acq=debug")
            .env("LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .env("POD_NAME", format!("e2e-controller-{number}"))
            // The flags above must win over whatever the developer's shell exports.
            .env_remove("WATCH_NAMESPACE")
            .env_remove("METRICS_ADDR")
            .env_remove("CALLBACK_ADDR")
            .env_remove("RESYNC_INTERVAL")
            .env_remove("ALLOWED_API_HOSTS")
            .env_remove("CUSTOMERS_INTERVAL")
            .env_remove("STATISTICS_INTERVAL")
            .env_remove("QUOTA_INTERVAL")
            .env_remove("LEADER_ELECT")
            .env_remove("POD_NAMESPACE")
            .env_remove("LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        ports.release();
        let child = command.spawn().unwrap();
        ControllerProcess {
            child: Some(child),
            identity: format!("e2e-controller-{number}"),
            log,
        }
    }

    pub fn links(&self) -> Api<AcquisitionLink> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn apps(&self) -> Api<WeComApp> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates the example Secret and WeComApp, the app pointed at this test's simulator.
    pub async fn apply_app(&self) {
        let mut secret: Secret = example("secret.yaml");
        secret.metadata.namespace = Some(self.ns.clone());
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let mut app: WeComApp = example("wecomapp.yaml");
        app.metadata.namespace = Some(self.ns.clone());
        app.spec.api_base_url = Some(self.sim.base_url());
        self.apps()
            .create(&PostParams::default(), &app)
            .await
            .unwrap();
    }

    /// Creates one example link (`link-sales.yaml` -> `"sales"`).
    pub async fn apply_link(&self, file: &str) -> AcquisitionLink {
        let mut link: AcquisitionLink = example(file);
        link.metadata.namespace = Some(self.ns.clone());
        self.links()
            .create(&PostParams::default(), &link)
            .await
            .unwrap()
    }

    /// Everything in `examples/` (Secret, WeComApp, both links).
    pub async fn apply_examples(&self) {
        self.apply_app().await;
        self.apply_link("link-sales.yaml").await;
        self.apply_link("link-support.yaml").await;
    }

    pub async fn link(&self, name: &str) -> AcquisitionLink {
        self.links().get(name).await.unwrap()
    }

    /// Waits until the link is Ready=True with an id for its current generation, and
    /// returns it.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> AcquisitionLink {
        let links = self.links();
        wait_for(&format!("link {name} Ready"), timeout, || async {
            let link = links.get(name).await.map_err(|e| e.to_string())?;
            if is_ready(&link) && link_id(&link).is_some() {
                Ok(link)
            } else {
                Err(format!("{:?}", link.status))
            }
        })
        .await
    }

    /// Merge-patches the spec of a link.
    pub async fn patch_link_spec(&self, name: &str, spec: Value) {
        self.links()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "spec": spec })),
            )
            .await
            .unwrap();
    }

    /// The Events (events.k8s.io/v1) about one object of this namespace.
    pub async fn events_for(&self, name: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                e.regarding
                    .as_ref()
                    .and_then(|r| r.name.as_deref())
                    .is_some_and(|n| n == name)
            })
            .collect()
    }

    /// Waits for an Event with this reason about `name`, and returns its note.
    pub async fn wait_event(&self, name: &str, reason: &str, timeout: Duration) -> String {
        wait_for(
            &format!("a {reason} Event about {name}"),
            timeout,
            || async {
                let events = self.events_for(name).await;
                events
                    .iter()
                    .find(|e| e.reason.as_deref() == Some(reason))
                    .map(|e| e.note.clone().unwrap_or_default())
                    .ok_or_else(|| {
                        let reasons: Vec<_> =
                            events.iter().filter_map(|e| e.reason.clone()).collect();
                        format!("reasons {reasons:?}")
                    })
            },
        )
        .await
    }

    /// `GET /_sim/state` of the simulator.
    pub async fn sim_state(&self) -> Value {
        self.admin.state().await
    }

    /// The simulator's links with this link_name.
    pub async fn sim_links_named(&self, link_name: &str) -> Vec<Value> {
        self.admin.links_named(link_name).await
    }

    /// How many calls of one API the simulator has answered (`create_link`, ...).
    pub async fn sim_calls(&self, api: &str) -> u64 {
        self.admin.call_count(api).await
    }

    /// GET on the controller's health/metrics listener: (status, body), or an error text.
    pub async fn controller_get(&self, path: &str) -> Result<(u16, String), String> {
        self.get_on(self.ports.metrics, path).await
    }

    /// GET on any controller's health/metrics listener.
    pub async fn get_on(&self, metrics: SocketAddr, path: &str) -> Result<(u16, String), String> {
        let url = format!("http://{metrics}{path}");
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// Waits until the controller's /readyz answers 200 (both caches synced).
    pub async fn wait_controller_ready(&self, timeout: Duration) {
        wait_for("controller /readyz 200", timeout, || async {
            match self.controller_get("/readyz").await {
                Ok((200, _)) => Ok(()),
                Ok((status, body)) => Err(format!("{status} {body}")),
                Err(e) => Err(e),
            }
        })
        .await
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // The controller guards were dropped first (declared after the Env), so the logs
        // are complete.
        for log in lock(&self.logs).clone() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!(
                "===== {} ({} bytes) =====\n{text}===== end of {} =====",
                log.display(),
                text.len(),
                log.display()
            );
        }
    }
}

#[allow(dead_code, reason = "for the callback tests")]
fn callback_url(ports: &Ports, ns: &str, app: &str) -> String {
    format!("http://{}/callback/{ns}/{app}", ports.callback)
}

pub fn condition<'a>(link: &'a AcquisitionLink, type_: &str) -> Option<&'a Condition> {
    link.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

pub fn is_ready(link: &AcquisitionLink) -> bool {
    condition(link, "Ready")
        .is_some_and(|c| c.status == "True" && c.observed_generation == link.metadata.generation)
}

pub fn link_id(link: &AcquisitionLink) -> Option<String> {
    link.status.as_ref()?.link_id.clone()
}

pub fn annotation(link: &AcquisitionLink, key: &str) -> Option<String> {
    link.annotations().get(key).cloned()
}

/// The real binary, running. Dropping the guard kills it (SIGKILL) and reaps it.
pub struct ControllerProcess {
    child: Option<Child>,
    /// Its `POD_NAME`: the holder identity it writes into a leader-election Lease.
    pub identity: String,
    log: PathBuf,
}

impl ControllerProcess {
    pub fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_child(self.child.as_ref().expect("controller still owned"))
    }

    /// What the process has logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM (what the kubelet sends on pod deletion).
    pub fn sigterm(&self) {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::TERM).unwrap();
    }

    /// SIGKILL, then reaps the process: nothing of it runs after this returns.
    pub fn sigkill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("controller still owned");
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        child.wait().unwrap()
    }

    /// Polls for the exit status until `timeout`; `None` while it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
