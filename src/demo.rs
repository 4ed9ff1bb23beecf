//! `wecom-acq demo`: the product end to end in one process, in seconds, with nothing
//! installed. It starts the WeCom simulator, the Kubernetes API emulator and the real
//! controllers (the engine of `wecom-acq run`, with one-second intervals), applies the
//! examples, simulates traffic and an admin-console deletion and edit, shows what the
//! controller did about them (table, Events, the WeCom calls made), then lets a corp
//! authorise a service provider's suite and makes a link under it ([`suite`]), and stops
//! everything.
//!
//! Every step waits on a condition with a timeout; none sleeps for a fixed time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::api::{AcquisitionLink, WeComApp};
use crate::gitops::manifest::{Manifests, parse_into};
use crate::reconcile::conditions::{self, READY};
use crate::reconcile::context::Cadence;
use crate::sim::{SimCallback, SimConfig};

mod suite;

pub use suite::{LINK as SUITE_LINK, SUITE_AES_KEY, SUITE_CALLBACK_TOKEN, SUITE_SECRET};

/// The namespace the demo works in.
pub const NAMESPACE: &str = "default";

/// The examples a user copies, embedded so the demo runs from any directory.
pub const EXAMPLES: [(&str, &str); 4] = [
    (
        "examples/secret.yaml",
        include_str!("../examples/secret.yaml"),
    ),
    (
        "examples/wecomapp.yaml",
        include_str!("../examples/wecomapp.yaml"),
    ),
    (
        "examples/link-sales.yaml",
        include_str!("../examples/link-sales.yaml"),
    ),
    (
        "examples/link-support.yaml",
        include_str!("../examples/link-support.yaml"),
    ),
];

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 2m)"))
}

/// Flags of `wecom-acq demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Give up when one step takes longer than this (raise it on a very slow machine).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub step_timeout: Duration,
    /// Do not push the corp's WeCom callbacks to the controller: find changes by polling
    /// only. (The suite's instruction callbacks, suite_ticket and create_auth, still come:
    /// a suite has no other way to get them.)
    #[arg(long)]
    pub no_callbacks: bool,
}

/// How the controller hears about changes made in WeCom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeFeed {
    /// Polling only: every link is observed (A2) each second.
    Polling,
    /// The simulator also pushes signed, encrypted callbacks to the controller's callback
    /// endpoint ([`crate::callback::serve`]), as WeCom would; polling stays the backup.
    Callbacks,
}

/// Everything the demo can vary.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub step_timeout: Duration,
    pub change_feed: ChangeFeed,
}

/// `wecom-acq demo`: the narration goes to stdout.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let options = DemoOptions {
        step_timeout: args.step_timeout,
        change_feed: if args.no_callbacks {
            ChangeFeed::Polling
        } else {
            ChangeFeed::Callbacks
        },
    };
    let mut stdout = std::io::stdout();
    run_with(&options, &mut stdout).await
}

/// The short intervals that make the demo take seconds; the engine is `wecom-acq run`'s.
fn demo_cadence() -> Cadence {
    Cadence {
        resync: Duration::from_secs(1),
        customers: Duration::from_secs(1),
        statistics: Duration::from_secs(1),
        quota: Duration::from_secs(1),
        ..Cadence::default()
    }
}

/// The processes-in-a-process the demo runs, and how to stop them.
struct World {
    kube: crate::kubesim::KubeSimHandle,
    sim: crate::sim::SimHandle,
    client: kube::Client,
    http: reqwest::Client,
    stop: watch::Sender<bool>,
    controller: tokio::task::JoinHandle<()>,
    /// The callback endpoint: the app's callbacks (when on) and the suite's instructions.
    callbacks: tokio::task::JoinHandle<()>,
    callback_addr: SocketAddr,
    /// The simulated corp, which authorises the suite.
    corp_id: String,
}

impl World {
    fn sim_url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn sim_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let response = self
            .http
            .request(method.clone(), self.sim_url(path))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("calling the simulator's {method} {path}"))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("the simulator answered {status} to {method} {path}: {value}");
        }
        Ok(value)
    }

    /// The simulator's count of WeCom calls per API (`GET /_sim/calls`).
    async fn calls(&self) -> anyhow::Result<Value> {
        self.sim_call(reqwest::Method::GET, "/_sim/calls", Value::Null)
            .await
    }

    async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.controller).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.callbacks).await;
        self.sim.shutdown().await;
        self.kube.shutdown().await;
    }
}

/// A free loopback port for a server started later (the callback endpoint binds it itself).
fn reserve_loopback_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("finding a free loopback port for the callback endpoint")?;
    listener
        .local_addr()
        .context("reading the reserved callback port")
}

/// The embedded examples, checked as `wecom-acq plan` checks files.
pub fn example_manifests() -> anyhow::Result<Manifests> {
    let mut manifests = Manifests::default();
    let mut errors = Vec::new();
    for (file, text) in EXAMPLES {
        parse_into(file, text, NAMESPACE, &mut manifests, &mut errors);
    }
    if let Some(first) = errors.first() {
        bail!("the embedded examples are invalid: {first}");
    }
    Ok(manifests)
}

/// Runs the demo, narrating to `out`.
pub async fn run_with(options: &DemoOptions, out: &mut impl Write) -> anyhow::Result<()> {
    let manifests = example_manifests()?;
    let world = start(options, &manifests).await?;
    let result = script(options, &world, &manifests, out).await;
    say(
        out,
        "\n==> Stopping the controller, the simulator and the emulator.",
    );
    world.shutdown().await;
    if result.is_ok() {
        say(out, "Done: nothing is left running.");
    }
    result
}

fn say(out: &mut impl Write, text: &str) {
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

async fn start(options: &DemoOptions, manifests: &Manifests) -> anyhow::Result<World> {
    let kube = crate::kubesim::spawn(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    kube.install_crds().await?;
    let client = kube.client().await;
    let (stop, stopped) = watch::channel(false);
    let shutdown = {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let running = crate::controller::start(
        client.clone(),
        Some(NAMESPACE),
        demo_cadence(),
        crate::metrics::Metrics::new(),
        // The demo's WeCom is the simulator on the loopback address.
        crate::wecom::AllowedApiHosts::loopback(),
        shutdown,
    );
    // Served in both modes: the suite's instruction callbacks have no polling backup.
    let callback_addr = reserve_loopback_port()?;
    let callbacks = crate::callback::serve(
        callback_addr,
        running.context.clone(),
        running.triggers.clone(),
        stopped.clone(),
    )
    .await?;
    let sim_callback = match options.change_feed {
        ChangeFeed::Polling => None,
        ChangeFeed::Callbacks => Some(sim_callback_for(manifests, callback_addr)?),
    };
    let sim_config = SimConfig {
        callback: sim_callback,
        ..SimConfig::default()
    };
    let corp_id = sim_config.corp_id.clone();
    let sim = crate::sim::spawn(sim_config, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let mut ready = running.ready.clone();
    within(
        options.step_timeout,
        "the controller's caches to sync",
        async {
            ready
                .wait_for(|r| *r)
                .await
                .map(|_| ())
                .map_err(|_| anyhow!("the controller stopped"))
        },
    )
    .await?;
    Ok(World {
        kube,
        sim,
        client,
        http: reqwest::Client::new(),
        stop,
        controller: running.task,
        callbacks,
        callback_addr,
        corp_id,
    })
}

/// The simulator's callback settings for the example app: its endpoint URL and the Token
/// and EncodingAESKey from the example Secret.
fn sim_callback_for(manifests: &Manifests, addr: SocketAddr) -> anyhow::Result<SimCallback> {
    let (app_key, app) = manifests
        .apps
        .iter()
        .next()
        .ok_or_else(|| anyhow!("the examples hold no WeComApp"))?;
    let callback = app
        .object
        .spec
        .callback
        .as_ref()
        .ok_or_else(|| anyhow!("the example WeComApp has no callback settings"))?;
    let value = |reference: &crate::api::SecretKeyRef| {
        manifests
            .secrets
            .get(&(app_key.0.clone(), reference.name.clone()))
            .and_then(|s| s.object.values.get(&reference.key))
            .map(|v| v.expose().to_string())
            .ok_or_else(|| anyhow!("the example Secret lacks key {}", reference.key))
    };
    Ok(SimCallback {
        url: format!("http://{addr}/callback/{}/{}", app_key.0, app_key.1),
        token: value(&callback.token_ref)?,
        aes_key: value(&callback.aes_key_ref)?,
        third_party_suite_id: None,
    })
}

async fn within<T>(
    limit: Duration,
    what: &str,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| anyhow!("timed out after {limit:?} waiting for {what}"))?
}

/// Waits until `check` holds for the named link.
async fn wait_link(
    links: &Api<AcquisitionLink>,
    name: &str,
    limit: Duration,
    what: &str,
    check: impl Fn(&AcquisitionLink) -> bool,
) -> anyhow::Result<AcquisitionLink> {
    let condition = move |link: Option<&AcquisitionLink>| link.is_some_and(&check);
    within(limit, &format!("{what} ({name})"), async {
        let found = await_condition(links.clone(), name, condition)
            .await
            .with_context(|| format!("watching AcquisitionLink {name}"))?;
        found.ok_or_else(|| anyhow!("AcquisitionLink {name} disappeared"))
    })
    .await
}

fn is_ready(link: &AcquisitionLink) -> bool {
    link.status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, READY) && s.link_id.is_some())
}

fn link_id(link: &AcquisitionLink) -> String {
    link.status
        .as_ref()
        .and_then(|s| s.link_id.clone())
        .unwrap_or_default()
}

fn customers(link: &AcquisitionLink) -> Option<u64> {
    link.status.as_ref()?.customers.as_ref().map(|c| c.total)
}

fn quota(link: &AcquisitionLink) -> Option<u64> {
    link.status.as_ref()?.quota.as_ref().map(|q| q.balance)
}

async fn script(
    options: &DemoOptions,
    world: &World,
    manifests: &Manifests,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let limit = options.step_timeout;
    say(
        out,
        &format!(
            "==> Started in this process: the WeCom simulator ({}), a Kubernetes API emulator ({}) and the controller (resync every second{}).",
            world.sim.base_url(),
            world.kube.base_url(),
            if options.change_feed == ChangeFeed::Callbacks {
                ", WeCom callbacks on"
            } else {
                "; callbacks off, so changes in WeCom are found by polling"
            }
        ),
    );
    let names = apply_examples(world, manifests).await?;
    say(
        out,
        &format!(
            "\n==> Applied examples/ (Secret, WeComApp, AcquisitionLinks {}); the WeComApp's apiBaseUrl now points at the simulator.",
            names.join(", ")
        ),
    );
    let links: Api<AcquisitionLink> = Api::namespaced(world.client.clone(), NAMESPACE);
    let mut first_ids = BTreeMap::new();
    for name in &names {
        let link = wait_link(&links, name, limit, "Ready with a link id", |l| {
            is_ready(l) && customers(l).is_some() && quota(l).is_some()
        })
        .await?;
        first_ids.insert(name.clone(), link_id(&link));
    }
    say(
        out,
        "The controller created one WeCom link per AcquisitionLink:\n",
    );
    say(
        out,
        &table(&links.list(&ListParams::default()).await?.items),
    );
    if let Some(sales) = links.get_opt("sales").await?
        && let Some(status) = &sales.status
    {
        say(
            out,
            "sales publishes one URL per campaign channel (status.channelUrls):",
        );
        for channel in &status.channel_urls {
            say(out, &format!("  {}: {}", channel.channel, channel.url));
        }
    }

    // Traffic: visitors, and customers who add a member through a channel URL.
    let sales_id = first_ids.get("sales").cloned().unwrap_or_default();
    let support_id = first_ids.get("support").cloned().unwrap_or_default();
    say(
        out,
        "\n==> Traffic: 25 visitors open the sales link; 3 customers add a member through wechat-moments and 1 through 官网首页; 2 add through the support link.",
    );
    let post = reqwest::Method::POST;
    world
        .sim_call(
            post.clone(),
            &format!("/_sim/links/{sales_id}/clicks"),
            json!({"count": 25}),
        )
        .await?;
    for (id, count, state) in [
        (&sales_id, 3, "wechat-moments"),
        (&sales_id, 1, "官网首页"),
        (&support_id, 2, ""),
    ] {
        world
            .sim_call(
                post.clone(),
                &format!("/_sim/links/{id}/customers"),
                json!({"count": count, "state": state}),
            )
            .await?;
    }
    let balance = app_quota_balance(world).await?;
    for (name, total) in [("sales", 4), ("support", 2)] {
        wait_link(&links, name, limit, "customers counted", |l| {
            customers(l) == Some(total) && quota(l) == Some(balance)
        })
        .await?;
    }
    say(
        out,
        "The controller counted them (A6) and refreshed the quota (A8):\n",
    );
    say(
        out,
        &table(&links.list(&ListParams::default()).await?.items),
    );

    // The admin console: a deletion and an edit behind the controller's back.
    say(
        out,
        &format!(
            "\n==> In the WeCom admin console, someone deletes the sales link ({sales_id}) and edits the support link ({support_id}): range set to wangwu only, verification off."
        ),
    );
    world
        .sim_call(
            reqwest::Method::DELETE,
            &format!("/_sim/links/{sales_id}"),
            Value::Null,
        )
        .await?;
    world
        .sim_call(
            reqwest::Method::PATCH,
            &format!("/_sim/links/{support_id}"),
            json!({"range": {"user_list": ["wangwu"], "department_list": []}, "skip_verify": true}),
        )
        .await?;
    let events: Api<Event> = Api::namespaced(world.client.clone(), NAMESPACE);
    wait_link(&links, "sales", limit, "a new link", |l| {
        is_ready(l) && link_id(l) != sales_id && customers(l).is_some()
    })
    .await?;
    within(limit, "the support link's drift to be corrected", async {
        let mut every = tokio::time::interval(Duration::from_millis(200));
        loop {
            every.tick().await;
            if link_events(&events, "support")
                .await?
                .iter()
                .any(|e| e.reason.as_deref() == Some("DriftCorrected"))
            {
                return Ok(());
            }
        }
    })
    .await?;
    say(
        out,
        "The controller recreated sales (onRemoteDelete: Recreate: a new id and URL, no customers yet) and put support back as the spec says (A4 with the whole range):\n",
    );
    say(
        out,
        &table(&links.list(&ListParams::default()).await?.items),
    );

    for name in &names {
        say(
            out,
            &format!("\nEvents of AcquisitionLink {NAMESPACE}/{name} (kubectl describe):"),
        );
        say(out, &events_table(&link_events(&events, name).await?));
    }

    let calls = world.calls().await?;
    say(
        out,
        "\n==> WeCom calls the controller made (the simulator's GET /_sim/calls):",
    );
    say(out, &calls_table(&calls));

    suite::script(world, limit, out).await?;
    say(
        out,
        "\nNext: run `wecom-acq simulate` in one terminal and `wecom-acq plan -f examples/*.yaml` (then `apply`) in another for the same decisions on files without a cluster; `wecom-acq run` is the controller for a cluster.",
    );
    Ok(())
}

/// Creates the example objects, as `kubectl apply -f examples/` would, with the WeComApp
/// pointed at the simulator. Returns the link names.
async fn apply_examples(world: &World, manifests: &Manifests) -> anyhow::Result<Vec<String>> {
    let post = PostParams::default();
    let secrets: Api<KubeSecret> = Api::namespaced(world.client.clone(), NAMESPACE);
    for ((_, name), secret) in &manifests.secrets {
        let object = KubeSecret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            },
            string_data: Some(
                secret
                    .object
                    .values
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        secrets
            .create(&post, &object)
            .await
            .with_context(|| format!("creating Secret {name}"))?;
    }
    let apps: Api<WeComApp> = Api::namespaced(world.client.clone(), NAMESPACE);
    for app in manifests.apps.values() {
        let mut object = app.object.clone();
        object.spec.api_base_url = Some(world.sim.base_url());
        apps.create(&post, &object)
            .await
            .with_context(|| format!("creating {}", app.key))?;
    }
    let links: Api<AcquisitionLink> = Api::namespaced(world.client.clone(), NAMESPACE);
    let mut names = Vec::new();
    for link in &manifests.links {
        links
            .create(&post, &link.object)
            .await
            .with_context(|| format!("creating {}", link.key))?;
        names.push(link.object.name_any());
    }
    Ok(names)
}

/// The quota balance the simulator reports now.
async fn app_quota_balance(world: &World) -> anyhow::Result<u64> {
    let state = world
        .sim_call(reqwest::Method::GET, "/_sim/state", Value::Null)
        .await?;
    state
        .pointer("/quota/balance")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("the simulator's state has no quota balance"))
}

/// The Events about one link, oldest first.
async fn link_events(events: &Api<Event>, name: &str) -> anyhow::Result<Vec<Event>> {
    let mut found: Vec<Event> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("AcquisitionLink") && r.name.as_deref() == Some(name)
            })
        })
        .collect();
    found.sort_by_key(|e| {
        (
            e.event_time.as_ref().map(|t| t.0),
            e.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok()),
        )
    });
    Ok(found)
}

fn render_rows(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count() + 3;
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for row in rows {
        line(row);
    }
    out.trim_end().to_string()
}

/// `kubectl get acql -o wide`, in short.
pub fn table(links: &[AcquisitionLink]) -> String {
    let rows: Vec<Vec<String>> = links
        .iter()
        .map(|l| {
            let status = l.status.clone().unwrap_or_default();
            vec![
                l.name_any(),
                status.link_id.clone().unwrap_or_default(),
                conditions::find(&status.conditions, READY)
                    .map(|c| c.status.clone())
                    .unwrap_or_default(),
                customers(l).map(|c| c.to_string()).unwrap_or_default(),
                quota(l).map(|q| q.to_string()).unwrap_or_default(),
                status.url.clone().unwrap_or_default(),
            ]
        })
        .collect();
    render_rows(
        &["NAME", "LINK ID", "READY", "CUSTOMERS", "QUOTA", "URL"],
        &rows,
    )
}

fn events_table(events: &[Event]) -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let age = e
                .event_time
                .as_ref()
                .map(|t| format!("{}s", (now.as_second() - t.0.as_second()).max(0)))
                .unwrap_or_default();
            let count = e.series.as_ref().map(|s| s.count).unwrap_or(1);
            let age = if count > 1 {
                format!("{age} (x{count})")
            } else {
                age
            };
            vec![
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                age,
                e.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    render_rows(&["TYPE", "REASON", "AGE", "MESSAGE"], &rows)
}

fn calls_table(calls: &Value) -> String {
    let apis = [
        ("gettoken", "gettoken"),
        ("list_link", "A1 list links"),
        ("get", "A2 get link"),
        ("create_link", "A3 create link"),
        ("update_link", "A4 update link"),
        ("delete_link", "A5 delete link"),
        ("customer", "A6 customers"),
        ("statistic", "A7 statistics"),
        ("customer_acquisition_quota", "A8 quota"),
        ("total", "total"),
    ];
    let rows: Vec<Vec<String>> = apis
        .iter()
        .map(|(key, label)| {
            vec![
                label.to_string(),
                calls
                    .get(key)
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
                    .to_string(),
            ]
        })
        .collect();
    render_rows(&["API", "CALLS"], &rows)
}
