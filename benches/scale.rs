//! The scale benchmark (issue #11): the real controller process against kubesim and the
//! WeCom simulator at WeCom's published 10,000 calls per minute and API, with every link
//! created before the controller starts. Prints, per size:
//! - time to converge against WeCom's bound (N A3 at 10,000/min);
//! - edit latency under load (p50, p99 over 20 range edits spread through convergence,
//!   from the patch to `observedGeneration` + Synced in status, written after the A4);
//! - WeCom calls against the minimum (N A3 + gettoken + A8);
//! - Kubernetes writes per link (resourceVersion delta: every create, update and patch,
//!   Events included);
//! - the controller's peak RSS (VmHWM);
//! - WeCom calls per link and hour at rest (over one minute), right after converging and
//!   once every link polls (from one resync interval after the last create);
//! - remote-delete recovery without callbacks (10 links deleted in WeCom, until each
//!   object holds a new link);
//! - the calls sent in the first minute after a restart, per API, against the budget.
//!
//! `cargo bench --bench scale`; `SCALE_SIZES=1000` (comma-separated) picks the sizes;
//! `SCALE_LOG_DIR=DIR` keeps the first controller's log there.
#![cfg(unix)]

#[path = "../tests/support/mod.rs"]
mod support;

use support::process as harness;

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};
use wecom_acq::api::AcquisitionLink;
use wecom_acq::sim::SimConfig;

const PER_MINUTE: u32 = 10_000;
/// The links' resync interval (`--resync-interval`), as a flag and as a duration.
const RESYNC_FLAG: &str = "5m";
const RESYNC: Duration = Duration::from_secs(300);
const NS: &str = "scale";

fn sizes() -> Vec<usize> {
    std::env::var("SCALE_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    for n in sizes() {
        runtime.block_on(run(n));
    }
}

fn link(i: usize) -> AcquisitionLink {
    serde_json::from_value(json!({
        "apiVersion": "acquisition.wecom.dev/v1alpha1",
        "kind": "AcquisitionLink",
        "metadata": {"name": format!("l{i:05}"), "namespace": NS},
        "spec": {
            "appRef": {"name": harness::APP},
            "linkName": format!("L{i}"),
            "range": {"userList": ["zhangsan"]},
        },
    }))
    .expect("a valid link")
}

fn ready_id(link: &AcquisitionLink) -> Option<String> {
    harness::is_ready(link)
        .then(|| harness::link_id(link))
        .flatten()
}

fn peak_rss_mib(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) * p) / 100].as_secs_f64()
}

async fn sim_calls(env: &harness::Env) -> Value {
    env.admin
        .request(reqwest::Method::GET, "/_sim/calls", None)
        .await
}

/// A minute at rest: WeCom calls per link and hour, and Kubernetes writes.
async fn at_rest_minute(env: &harness::Env, n: usize, what: &str) {
    env.admin
        .request(reqwest::Method::DELETE, "/_sim/calls", None)
        .await;
    let started = Instant::now();
    let rv = store_rv(env).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = sim_calls(env).await;
    let per_link_hour = calls["total"].as_u64().unwrap_or(0) as f64 * 3600.0
        / started.elapsed().as_secs_f64()
        / n as f64;
    println!(
        "  {what}: {per_link_hour:.1} WeCom calls per link and hour, {} Kubernetes writes in a minute; by API {calls}",
        store_rv(env).await.saturating_sub(rv)
    );
}

async fn store_rv(env: &harness::Env) -> u64 {
    env.links()
        .list_metadata(&ListParams::default().limit(1))
        .await
        .ok()
        .and_then(|l| l.metadata.resource_version)
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

async fn run(n: usize) {
    let env = harness::Env::start_with_sim(NS, |_| SimConfig {
        rate_limit_per_minute: Some(PER_MINUTE),
        ..SimConfig::default()
    })
    .await;
    env.apply_app().await;
    env.apps()
        .patch(
            harness::APP,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"requestsPerMinute": PER_MINUTE}})),
        )
        .await
        .expect("budget set");
    let links = env.links();
    futures::stream::iter(0..n)
        .map(|i| {
            let links = links.clone();
            async move { links.create(&PostParams::default(), &link(i)).await }
        })
        .buffer_unordered(32)
        .for_each(|r| async move {
            r.expect("link created");
        })
        .await;
    let rv_before = store_rv(&env).await;
    let requests_before = env.kube.faults().requests();
    let flags = [
        "--resync-interval",
        RESYNC_FLAG,
        "--customers-interval",
        "30m",
        "--statistics-interval",
        "1h",
        "--quota-interval",
        "10m",
    ];
    let started = Instant::now();
    let mut controller = env.spawn_controller(&flags);
    let pid = controller.pid().as_raw_nonzero().get();

    // Converge, with 20 edits spread over WeCom's bound. The bench watches the links (as
    // the controller does) instead of listing 10,000 objects a few times a second: a list
    // loop took a core of the machine the controller runs on, and saw an edit land only at
    // its next list.
    let (view, writer) = reflector::store();
    let watch = tokio::spawn(
        watcher(links.clone(), watcher::Config::default())
            .reflect(writer)
            .for_each(|_| std::future::ready(())),
    );
    let bound = Duration::from_secs_f64(n as f64 * 60.0 / f64::from(PER_MINUTE));
    let edit_every = bound.mul_f64(0.8) / 20;
    let mut edits: Vec<(String, i64, Instant)> = Vec::new();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut next_edit = Instant::now() + edit_every;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let converged = loop {
        tick.tick().await;
        edits.retain(|(name, generation, at)| {
            let done = view
                .get(&reflector::ObjectRef::new(name).within(NS))
                .is_some_and(|l| {
                    l.status.as_ref().and_then(|s| s.observed_generation) >= Some(*generation)
                        && harness::condition(&l, "Synced").is_some_and(|c| c.status == "True")
                });
            if done {
                latencies.push(at.elapsed());
            }
            !done
        });
        let mut ready = view.state();
        ready.retain(|l| ready_id(l).is_some());
        if latencies.len() + edits.len() < 20 && Instant::now() >= next_edit {
            let target = ready.get(latencies.len() * 37 % ready.len().max(1));
            if let Some(name) = target.and_then(|l| l.metadata.name.clone()) {
                let sent = Instant::now();
                let patched = links
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"range": {"userList": ["lisi"]}}})),
                    )
                    .await
                    .expect("edit");
                edits.push((name, patched.metadata.generation.unwrap_or(0), sent));
            }
            next_edit += edit_every;
        }
        if ready.len() == n && edits.is_empty() && latencies.len() >= 20.min(n) {
            break started.elapsed();
        }
        if started.elapsed() > bound * 10 + Duration::from_secs(120) {
            println!("N={n}: not converged: {} of {n} ready", ready.len());
            break started.elapsed();
        }
    };
    watch.abort();
    drop(view);
    let calls = sim_calls(&env).await;
    let rv_after = store_rv(&env).await;
    latencies.sort();
    let minimum = n as u64 + 2;
    let total = calls["total"].as_u64().unwrap_or(0);
    let edit_calls = calls["update_link"].as_u64().unwrap_or(0) + 20;
    println!("N={n} at {PER_MINUTE}/min per API");
    println!(
        "  converged in {:.1} s; WeCom's bound {:.1} s ({:.2}x)",
        converged.as_secs_f64(),
        bound.as_secs_f64(),
        converged.as_secs_f64() / bound.as_secs_f64().max(1e-9)
    );
    println!(
        "  edit latency under load: p50 {:.2} s, p99 {:.2} s ({} edits)",
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        latencies.len()
    );
    println!(
        "  WeCom calls {total} (minimum {minimum}, plus {edit_calls} for the 20 edits' A2+A4): {:.3}x; by API {calls}",
        (total.saturating_sub(edit_calls)) as f64 / minimum as f64
    );
    let requests: Vec<String> = env
        .kube
        .faults()
        .requests()
        .into_iter()
        .filter_map(|(key, count)| {
            let before = requests_before.get(&key).copied().unwrap_or(0);
            (count > before).then(|| format!("{} {}: {}", key.0, key.1, count - before))
        })
        .collect();
    println!(
        "  Kubernetes requests by verb and code: {}",
        requests.join(", ")
    );
    println!(
        "  Kubernetes writes {} ({:.2} per link, Events included)",
        rv_after.saturating_sub(rv_before),
        rv_after.saturating_sub(rv_before) as f64 / n as f64
    );

    at_rest_minute(&env, n, "at rest").await;

    // Ten links deleted in WeCom, no callbacks.
    let list = links.list(&ListParams::default()).await.expect("list");
    let victims: Vec<(String, String)> = list
        .items
        .iter()
        .step_by((n / 10).max(1))
        .take(10)
        .filter_map(|l| Some((l.metadata.name.clone()?, harness::link_id(l)?)))
        .collect();
    let deleted_at = Instant::now();
    for (_, id) in &victims {
        env.admin
            .request(reqwest::Method::DELETE, &format!("/_sim/links/{id}"), None)
            .await;
    }
    let mut recovered = Vec::new();
    while recovered.len() < victims.len() && deleted_at.elapsed() < Duration::from_secs(900) {
        for (name, old) in &victims {
            if recovered.iter().any(|(n, _)| n == name) {
                continue;
            }
            if let Ok(l) = links.get(name).await
                && ready_id(&l).is_some_and(|id| &id != old)
            {
                recovered.push((name.clone(), deleted_at.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let slowest = recovered.iter().map(|(_, d)| *d).max().unwrap_or_default();
    println!(
        "  remote delete: {} of {} recreated, the last after {:.1} s",
        recovered.len(),
        victims.len(),
        slowest.as_secs_f64()
    );

    // Restart: the first minute's calls against the budget.
    let rss = peak_rss_mib(pid);
    if let Ok(dir) = std::env::var("SCALE_LOG_DIR") {
        let _ = std::fs::write(format!("{dir}/scale-{n}-controller.log"), controller.log());
    }
    controller.sigkill();
    env.admin
        .request(reqwest::Method::DELETE, "/_sim/calls", None)
        .await;
    let restarted = env.spawn_controller(&flags);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let first_minute = sim_calls(&env).await;
    let busiest = first_minute
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "total")
                .map(|(_, v)| v.as_u64().unwrap_or(0))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    println!(
        "  first minute after a restart: busiest API {busiest} calls (budget {PER_MINUTE}); by API {first_minute}"
    );

    // At rest in the steady state: from one resync interval after the last create, every
    // link polls (A2) once an interval at its phase. The first minute at rest above falls
    // inside that interval, when links just created need no A2.
    let steady_from = started + converged + RESYNC + Duration::from_secs(1);
    tokio::time::sleep_until(steady_from.into()).await;
    at_rest_minute(
        &env,
        n,
        "at rest, every link polling (from one resync interval after the last create)",
    )
    .await;
    println!(
        "  controller peak RSS {rss:.1} MiB (first process), {:.1} MiB (after restart)",
        peak_rss_mib(restarted.pid().as_raw_nonzero().get())
    );
}
