//! The crash soak: the real controller binary is killed (SIGKILL) at random moments while
//! links are being created, edited and deleted, then restarted; after each restart the
//! soak waits for convergence and compares WeCom (the simulator) with the objects.
//!
//! Counted per trial: duplicate links (two WeCom links for one object), leaked links (a
//! WeCom link whose object was deleted with `deletionPolicy: Delete`, or that no object
//! accounts for), objects without their link (a Ready object whose link id WeCom does not
//! have), trials that did not converge, and how long convergence took after the restart.
//! Shared by `benches/crash_soak.rs` (1,000 trials) and a short run in `tests/e2e.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use wecom_acq::api::{AcquisitionLink, AcquisitionLinkSpec, DeletionPolicy};

use crate::support::process::{APP, ControllerProcess, Env, is_ready, link_id};

/// Members of the simulator's org chart the soak puts in ranges.
const USERS: [&str; 5] = ["zhangsan", "lisi", "wangwu", "zhaoliu", "sunqi"];
/// How long one restart may take to converge before the trial counts as not converged.
const CONVERGE_LIMIT: Duration = Duration::from_secs(60);

/// What the soak found.
#[derive(Debug, Default, Clone)]
pub struct SoakReport {
    pub trials: usize,
    pub duplicates: usize,
    pub leaks: usize,
    pub without_link: usize,
    pub not_converged: usize,
    /// Convergence time after each restart.
    pub converge: Vec<Duration>,
    /// One line per problem: trial, kind, names and ids.
    pub problems: Vec<String>,
}

#[allow(
    dead_code,
    reason = "the benchmark's; the short test reads the counts only"
)]
impl SoakReport {
    pub fn merge(&mut self, other: SoakReport) {
        self.trials += other.trials;
        self.duplicates += other.duplicates;
        self.leaks += other.leaks;
        self.without_link += other.without_link;
        self.not_converged += other.not_converged;
        self.converge.extend(other.converge);
        self.problems.extend(other.problems);
    }

    /// The `p`-th percentile (0..=100) of the convergence times.
    pub fn converge_percentile(&self, p: usize) -> Duration {
        let mut sorted = self.converge.clone();
        sorted.sort();
        match sorted.len() {
            0 => Duration::ZERO,
            n => sorted[((n - 1) * p.min(100)) / 100],
        }
    }

    pub fn is_clean(&self) -> bool {
        self.duplicates + self.leaks + self.without_link + self.not_converged == 0
    }
}

/// What the soak has asked of Kubernetes, to compare WeCom against.
#[derive(Default)]
struct Model {
    /// Live objects: name -> (policy, users).
    live: BTreeMap<String, (DeletionPolicy, Vec<String>)>,
    /// Deleted objects with `Delete`: their WeCom link must be gone.
    deleted: BTreeSet<String>,
    /// Deleted objects with `Orphan`: their WeCom link stays.
    orphaned: BTreeSet<String>,
}

fn spec(users: &[String], policy: &DeletionPolicy, link_name: &str) -> AcquisitionLinkSpec {
    serde_json::from_value(json!({
        "appRef": {"name": APP},
        "linkName": link_name,
        "range": {"userList": users},
        "deletionPolicy": policy,
    }))
    .expect("a valid AcquisitionLink spec")
}

fn random_users(rng: &mut StdRng) -> Vec<String> {
    let mut users: Vec<String> = USERS
        .iter()
        .filter(|_| rng.gen_bool(0.5))
        .map(|u| u.to_string())
        .collect();
    if users.is_empty() {
        users.push(USERS[rng.gen_range(0..USERS.len())].to_string());
    }
    users
}

/// One to three changes: create (most), edit a range, delete.
async fn mutate(env: &Env, model: &mut Model, rng: &mut StdRng, trial: usize) {
    for op in 0..rng.gen_range(1..=3) {
        // Few objects: mostly creates; many: only deletes, so every poll stays cheap.
        let choice = match model.live.len() {
            0..3 => 0,
            3..40 => rng.gen_range(0..4),
            _ => 3,
        };
        match choice {
            0 | 1 => {
                let name = format!("soak-{trial}-{op}");
                let policy = if rng.gen_bool(0.8) {
                    DeletionPolicy::Delete
                } else {
                    DeletionPolicy::Orphan
                };
                let users = random_users(rng);
                let link = AcquisitionLink::new(&name, spec(&users, &policy, &name));
                if env
                    .links()
                    .create(&PostParams::default(), &link)
                    .await
                    .is_ok()
                {
                    model.live.insert(name, (policy, users));
                }
            }
            2 => {
                let names: Vec<String> = model.live.keys().cloned().collect();
                let name = &names[rng.gen_range(0..names.len())];
                let users = random_users(rng);
                let patch = json!({"spec": {"range": {"userList": users}}});
                if env
                    .links()
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                    && let Some(entry) = model.live.get_mut(name)
                {
                    entry.1 = users;
                }
            }
            _ => {
                let names: Vec<String> = model.live.keys().cloned().collect();
                let name = names[rng.gen_range(0..names.len())].clone();
                if env
                    .links()
                    .delete(&name, &DeleteParams::default())
                    .await
                    .is_ok()
                    && let Some((policy, _)) = model.live.remove(&name)
                {
                    if policy == DeletionPolicy::Orphan {
                        model.orphaned.insert(name);
                    } else {
                        model.deleted.insert(name);
                    }
                }
            }
        }
    }
}

fn sim_users(link: &Value) -> Vec<String> {
    let mut users: Vec<String> = link["range"]["user_list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(str::to_string))
        .collect();
    users.sort();
    users
}

/// None when converged; else what is still off.
async fn unconverged(env: &Env, model: &Model) -> Option<String> {
    let objects = match env.links().list(&Default::default()).await {
        Ok(list) => list.items,
        Err(err) => return Some(format!("list failed: {err}")),
    };
    let by_name: BTreeMap<String, &AcquisitionLink> =
        objects.iter().map(|l| (l.name_any(), l)).collect();
    let state = env.sim_state().await;
    let sim_links: BTreeMap<&str, &Value> = state["links"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| (l["link_id"].as_str().unwrap_or_default(), l))
        .collect();
    for (name, (_, users)) in &model.live {
        let Some(link) = by_name.get(name) else {
            return Some(format!("{name}: object missing"));
        };
        let current =
            link.status.as_ref().and_then(|s| s.observed_generation) == link.metadata.generation;
        if !is_ready(link) || !current {
            return Some(format!("{name}: not Ready for its generation"));
        }
        let Some(id) = link_id(link) else {
            return Some(format!("{name}: no link id"));
        };
        let Some(remote) = sim_links.get(id.as_str()) else {
            return Some(format!("{name}: link {id} not in WeCom yet"));
        };
        let mut want = users.clone();
        want.sort();
        if sim_users(remote) != want {
            return Some(format!("{name}: range not yet {want:?}"));
        }
    }
    for name in model.deleted.iter().chain(&model.orphaned) {
        if by_name.contains_key(name) {
            return Some(format!("{name}: deleted object still there"));
        }
    }
    None
}

/// Counts duplicates, leaks and objects without their link into `report`.
async fn check(env: &Env, model: &Model, trial: usize, report: &mut SoakReport) {
    let state = env.sim_state().await;
    let sim_links = state["links"].as_array().cloned().unwrap_or_default();
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for link in &sim_links {
        by_name
            .entry(link["link_name"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(link["link_id"].as_str().unwrap_or_default().to_string());
    }
    for (name, ids) in &by_name {
        if ids.len() > 1 {
            report.duplicates += ids.len() - 1;
            report.problems.push(format!(
                "trial {trial}: {name} has {} links: {ids:?}",
                ids.len()
            ));
        }
        let accounted = model.live.contains_key(name) || model.orphaned.contains(name);
        if !accounted {
            report.leaks += ids.len();
            report
                .problems
                .push(format!("trial {trial}: leaked {ids:?} of {name}"));
        }
    }
    if let Ok(list) = env.links().list(&Default::default()).await {
        for link in list.items {
            if let Some(id) = link_id(&link)
                && is_ready(&link)
                && !sim_links.iter().any(|l| l["link_id"] == id.as_str())
            {
                report.without_link += 1;
                report.problems.push(format!(
                    "trial {trial}: {} is Ready with link {id}, which WeCom does not have",
                    link.name_any()
                ));
            }
        }
    }
}

/// Runs `trials` kill-restart trials in `env` (app applied here) with a seeded RNG.
pub async fn run(env: &Env, trials: usize, seed: u64, extra_flags: &[&str]) -> SoakReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = SoakReport::default();
    let mut model = Model::default();
    env.apply_app().await;
    // Slow mutating calls widen the windows a kill can fall into.
    env.admin
        .request(
            reqwest::Method::POST,
            "/_sim/faults",
            Some(json!({"api": "create_link", "latency_ms": 40})),
        )
        .await;
    let mut controller: ControllerProcess = env.spawn_controller(extra_flags);
    for trial in 0..trials {
        mutate(env, &mut model, &mut rng, trial).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..500))).await;
        controller.sigkill();
        controller = env.spawn_controller(extra_flags);
        let restarted = Instant::now();
        loop {
            let Some(last) = unconverged(env, &model).await else {
                report.converge.push(restarted.elapsed());
                break;
            };
            if restarted.elapsed() > CONVERGE_LIMIT {
                report.not_converged += 1;
                report.problems.push(format!(
                    "trial {trial}: not converged in {CONVERGE_LIMIT:?}: {last}"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        check(env, &model, trial, &mut report).await;
        report.trials += 1;
        if report.trials % 50 == 0 {
            // Progress for long runs (the benchmark): what was found so far.
            eprintln!(
                "soak {}: {} trials, {} duplicates, {} leaks, {} without link, {} not converged",
                env.ns,
                report.trials,
                report.duplicates,
                report.leaks,
                report.without_link,
                report.not_converged
            );
        }
    }
    drop(controller);
    report
}
