//! The crash soak (issue #12): kills the real controller at random moments while links
//! are created, edited and deleted, restarts it, and checks WeCom (the simulator) against
//! the objects after each restart. Prints trials, duplicate links, leaked links, objects
//! without their link, trials that did not converge, and convergence times.
//!
//! `cargo bench --bench crash_soak` runs 1,000 trials in 4 lanes (each lane its own
//! simulator, Kubernetes API emulator and controller process); `SOAK_TRIALS`,
//! `SOAK_LANES` and `SOAK_SEED` change that. Exits 1 when anything was found.
#![cfg(unix)]

#[path = "../tests/support/mod.rs"]
mod support;

use support::process as harness;
#[path = "../tests/e2e/soak.rs"]
mod soak;

use std::time::Instant;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> std::process::ExitCode {
    let trials = setting("SOAK_TRIALS", 1000) as usize;
    let lanes = setting("SOAK_LANES", 4).max(1) as usize;
    let seed = setting("SOAK_SEED", 20261204);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let started = Instant::now();
    let report = runtime.block_on(async {
        let runs = (0..lanes).map(|lane| {
            let share = trials / lanes + usize::from(lane < trials % lanes);
            async move {
                let env = harness::Env::start(&format!("soak-{lane}")).await;
                soak::run(&env, share, seed + lane as u64, &[]).await
            }
        });
        let mut total = soak::SoakReport::default();
        for report in futures::future::join_all(runs).await {
            total.merge(report);
        }
        total
    });
    println!(
        "crash soak: {} trials in {lanes} lanes, seed {seed}, {:.0} s",
        report.trials,
        started.elapsed().as_secs_f64()
    );
    println!("  duplicate links          {}", report.duplicates);
    println!("  leaked links             {}", report.leaks);
    println!("  objects without a link   {}", report.without_link);
    println!("  trials not converged     {}", report.not_converged);
    println!(
        "  convergence after restart: p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s",
        report.converge_percentile(50).as_secs_f64(),
        report.converge_percentile(90).as_secs_f64(),
        report.converge_percentile(99).as_secs_f64(),
        report.converge_percentile(100).as_secs_f64()
    );
    for problem in report.problems.iter().take(50) {
        println!("  {problem}");
    }
    if report.is_clean() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
