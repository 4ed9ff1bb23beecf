//! `wecom-acq export customers` against a sequential reference client, on the same
//! simulator data (50 links x 200 customers) with 30 ms of injected latency on every call
//! and the same requests-per-minute cap for both. Prints both times and the ratio.
//!
//! The reference is what a hand-written client does: A1 pages, then per link A2 (the name)
//! and its A6 pages, one call after another. Both write the same rows (checked).
//!
//! Run: `cargo bench --bench export` (LINKS, CUSTOMERS, LATENCY_MS, RPM override the
//! defaults; RPM=600 shows the case where the rate cap, not latency, is the bottleneck).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use serde_json::json;
use wecom_acq::sim::{SimConfig, SimHandle};
use wecom_acq::wecom::client::{ClientConfig, LIST_LINK_PAGE_LIMIT, WeComClient};
use wecom_acq::wecom::types::{CreateLinkRequest, LinkRange, QuotaBatch};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn client(sim: &SimHandle, requests_per_minute: u32) -> WeComClient {
    let mut config = ClientConfig::new("wwsimcorp", "sim-secret");
    config.base_url = sim.base_url();
    config.requests_per_minute = requests_per_minute;
    WeComClient::new(config).expect("client")
}

async fn admin(sim: &SimHandle, path: &str, body: serde_json::Value) {
    let answer = reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .expect("admin call");
    assert!(answer.status().is_success(), "{path}: {}", answer.status());
}

/// The rows of the reference: A1 pages, then per link A2 and the A6 pages, in sequence.
async fn sequential_reference(client: &WeComClient) -> BTreeSet<(String, String)> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = client
            .list_links_page(cursor.as_deref(), LIST_LINK_PAGE_LIMIT)
            .await
            .expect("A1");
        ids.extend(page.link_id_list);
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = Some(page.next_cursor);
    }
    let mut rows = BTreeSet::new();
    let mut out = csv::Writer::from_writer(std::io::sink());
    for id in ids {
        let link = client.get_link(&id).await.expect("A2");
        let customers: Vec<_> = client.customers(&id).try_collect().await.expect("A6");
        for c in customers {
            out.write_record([
                &id,
                &link.link_name,
                &c.external_userid,
                &c.userid,
                &c.chat_status.to_string(),
                &c.state,
            ])
            .expect("write");
            rows.insert((id.clone(), c.external_userid));
        }
    }
    rows
}

async fn export_command(sim: &SimHandle, files: &[std::path::PathBuf], out: &std::path::Path) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wecom-acq"));
    command.args(["export", "customers", "--api-base-url", &sim.base_url()]);
    for file in files {
        command.arg("-f").arg(file);
    }
    command.arg("--out").arg(out);
    let output = command.output().await.expect("wecom-acq export");
    assert!(
        output.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn rows_of(csv_path: &std::path::Path) -> BTreeSet<(String, String)> {
    let mut reader = csv::Reader::from_path(csv_path).expect("export output");
    reader
        .records()
        .map(|r| {
            let r = r.expect("CSV record");
            (r[0].to_string(), r[2].to_string())
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let links = env_or("LINKS", 50);
    let customers = env_or("CUSTOMERS", 200);
    let latency_ms = env_or("LATENCY_MS", 30);
    let rpm = u32::try_from(env_or("RPM", 10_000)).unwrap_or(10_000);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let sim = wecom_acq::sim::spawn(
        SimConfig {
            quota: vec![QuotaBatch {
                expire_date: now + 365 * 86_400,
                balance: links * customers + 1,
            }],
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().expect("address"),
    )
    .await
    .expect("simulator");
    let setup = client(&sim, 100_000);
    for i in 0..links {
        let id = setup
            .create_link(&CreateLinkRequest {
                link_name: format!("Campaign {i}"),
                range: LinkRange {
                    user_list: vec!["zhangsan".into(), "lisi".into()],
                    department_list: vec![],
                },
                skip_verify: Some(true),
                priority_option: None,
                mark_source: None,
            })
            .await
            .expect("A3")
            .link_id;
        admin(
            &sim,
            &format!("/_sim/links/{id}/customers"),
            json!({"count": customers, "state": format!("channel-{}", i % 5)}),
        )
        .await;
    }
    admin(
        &sim,
        "/_sim/faults",
        json!({"api": "*", "latency_ms": latency_ms}),
    )
    .await;

    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret.yaml");
    let app = dir.path().join("app.yaml");
    std::fs::write(
        &secret,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: wecom-app\nstringData:\n  corp-secret: sim-secret\n",
    )
    .expect("write");
    std::fs::write(
        &app,
        format!(
            "apiVersion: acquisition.wecom.dev/v1alpha1\nkind: WeComApp\nmetadata:\n  name: wecom\n\
             spec:\n  corpId: wwsimcorp\n  secretRef:\n    name: wecom-app\n    key: corp-secret\n\
             \x20 requestsPerMinute: {rpm}\n"
        ),
    )
    .expect("write");
    let out = dir.path().join("customers.csv");

    println!(
        "export customers: {links} links x {customers} customers, {latency_ms} ms per call, \
         {rpm} requests/minute for both"
    );
    let started = Instant::now();
    let reference_rows = sequential_reference(&client(&sim, rpm)).await;
    let sequential = started.elapsed();

    let started = Instant::now();
    export_command(&sim, &[secret, app], &out).await;
    let concurrent = started.elapsed();

    let exported = rows_of(&out);
    assert_eq!(
        exported, reference_rows,
        "export and reference disagree on the rows"
    );
    assert_eq!(exported.len() as u64, links * customers);
    let ratio = sequential.as_secs_f64() / concurrent.as_secs_f64().max(f64::EPSILON);
    println!("  sequential reference: {:>8.0} ms", ms(sequential));
    println!(
        "  wecom-acq export:     {:>8.0} ms (process start included)",
        ms(concurrent)
    );
    println!("  ratio:                {ratio:>8.1}x");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
