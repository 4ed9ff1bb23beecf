//! `wecom-acq import` and `wecom-acq export` run as a user would, against the WeCom
//! simulator: links made directly through WeCom's API are imported and `plan` then sees no
//! change; exports hold every customer exactly once, quote awkward values, split statistics
//! windows; every error path names what failed. Every run is checked for secrets.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use wecom_acq::sim::{SimConfig, SimHandle};
use wecom_acq::wecom::client::{ClientConfig, WeComClient};
use wecom_acq::wecom::types::{CreateLinkRequest, LinkRange, PriorityOption, QuotaBatch};

const SECRETS: [&str; 3] = [
    "sim-secret",
    "simCallbackToken",
    "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
];

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// The Secret and the WeComApp of the examples.
fn app_files() -> Vec<PathBuf> {
    vec![example("secret.yaml"), example("wecomapp.yaml")]
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `wecom-acq ARGS -f FILES --api-base-url URL` and checks that no secret was printed.
async fn wecom_acq(args: &[&str], files: &[PathBuf], base_url: &str) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wecom-acq"));
    command.args(args);
    for file in files {
        command.arg("-f").arg(file);
    }
    command
        .args(["--api-base-url", base_url])
        .env("RUST_LOG", "wecom_acq=debug")
        .env("NO_COLOR", "1");
    let output = command.output().await.unwrap();
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    for secret in SECRETS {
        assert!(
            !run.all().contains(secret),
            "{args:?} printed a secret:\n{}",
            run.all()
        );
    }
    run
}

/// `wecom-acq ARGS` over the example Secret and WeComApp, against the simulator.
async fn on_sim(sim: &SimHandle, args: &[&str]) -> Run {
    wecom_acq(args, &app_files(), &sim.base_url()).await
}

/// The run failed (exit 1) and said `what` on stderr.
fn assert_failed(run: &Run, what: &str) {
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains(what), "{}", run.stderr);
}

async fn start_sim(config: SimConfig) -> SimHandle {
    wecom_acq::sim::spawn(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A client as a hand-written script would use it: the simulator's credentials.
fn client(sim: &SimHandle) -> WeComClient {
    let mut config = ClientConfig::new("wwsimcorp", "sim-secret");
    config.base_url = sim.base_url();
    WeComClient::new(config).unwrap()
}

async fn create(
    client: &WeComClient,
    name: &str,
    users: &[&str],
    departments: &[u64],
    skip_verify: bool,
    priority: Option<PriorityOption>,
) -> String {
    client
        .create_link(&CreateLinkRequest {
            link_name: name.into(),
            range: LinkRange {
                user_list: users.iter().map(|u| u.to_string()).collect(),
                department_list: departments.to_vec(),
            },
            skip_verify: Some(skip_verify),
            priority_option: priority,
            mark_source: None,
        })
        .await
        .unwrap()
        .link_id
}

async fn admin(sim: &SimHandle, method: reqwest::Method, path: &str, body: Value) -> Value {
    let answer = reqwest::Client::new()
        .request(method, format!("{}{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{path}: {}", answer.status());
    answer.json().await.unwrap()
}

/// A base URL where nothing listens.
fn unreachable_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `metadata.name` and `spec.linkId` of each document of a YAML stream.
fn names_and_ids(yaml: &str) -> Vec<(String, String)> {
    wecom_acq::yaml::from_multiple::<serde_json::Value>(yaml)
        .unwrap()
        .into_iter()
        .map(|v| {
            (
                v["metadata"]["name"].as_str().unwrap().to_string(),
                v["spec"]["linkId"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

// ---- import ----

/// Links as people make them in the console or by script: a duplicate name, a Chinese
/// name, awkward characters, departments and a priority option; one of them is already
/// managed by the example's `link-sales.yaml` (matched by name, as plan does).
async fn console_links(sim: &SimHandle) -> Vec<String> {
    let c = client(sim);
    vec![
        create(&c, "Sales", &["zhangsan"], &[], true, None).await,
        create(&c, "Sales", &["lisi"], &[2], false, None).await,
        create(
            &c,
            "Big: \"SALE\" #1, 50%",
            &["wangwu", "zhangsan"],
            &[4, 2],
            false,
            Some(PriorityOption {
                priority_type: 2,
                priority_userid_list: vec!["zhangsan".into()],
            }),
        )
        .await,
        create(&c, "售后服务", &[], &[3], true, None).await,
        // The example's `sales` document names this link by its linkName.
        create(&c, "销售咨询", &["zhangsan", "lisi"], &[], true, None).await,
    ]
}

#[tokio::test]
async fn imported_links_plan_without_changes_and_names_are_stable() {
    let sim = start_sim(SimConfig::default()).await;
    let ids = console_links(&sim).await;
    let mut files = app_files();
    files.push(example("link-sales.yaml"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported");
    let out_arg = out.to_str().unwrap();

    let run = wecom_acq(&["import", "--out", out_arg], &files, &sim.base_url()).await;
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert!(run.stdout.is_empty(), "{}", run.all());
    assert!(
        run.stderr
            .contains("5 links in WeCom, 4 to import, 1 already managed"),
        "{}",
        run.stderr
    );
    let written = files_in(&out);
    assert_eq!(written.len(), 4, "{written:?}");
    for file in &written {
        let name = file.strip_suffix(".yaml").unwrap();
        assert!(is_dns_label(name), "{name}");
    }

    // Without --out: the same objects, with the same names, as one YAML stream.
    let stream = wecom_acq(&["import"], &files, &sim.base_url()).await;
    assert_eq!(stream.code, Some(0), "{}", stream.all());
    let docs = names_and_ids(&stream.stdout);
    let names: BTreeSet<String> = docs.iter().map(|(n, _)| format!("{n}.yaml")).collect();
    assert_eq!(names, written);
    let imported_ids: BTreeSet<&str> = docs.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(imported_ids, ids[..4].iter().map(String::as_str).collect());
    assert!(stream.stdout.contains("managementPolicy: Observe"));
    assert!(stream.stdout.contains("deletionPolicy: Orphan"));
    assert!(!stream.stdout.contains("managementPolicy: Manage"));

    // plan over the app, the managed document and the imported files: nothing to do.
    let mut with_imported = files.clone();
    with_imported.push(out.clone());
    let plan = wecom_acq(&["plan"], &with_imported, &sim.base_url()).await;
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    assert!(plan.stdout.contains("4 observed"), "{}", plan.stdout);
    assert!(!plan.stdout.contains("drift"), "{}", plan.stdout);
    assert!(!plan.stdout.contains("other link"), "{}", plan.stdout);

    // A re-run finds nothing new; one more link later gets its own file, the others keep
    // their names and content.
    let before: Vec<String> = written
        .iter()
        .map(|f| std::fs::read_to_string(out.join(f)).unwrap())
        .collect();
    let again = wecom_acq(&["import"], &with_imported, &sim.base_url()).await;
    assert_eq!(again.code, Some(0), "{}", again.all());
    assert!(again.stdout.is_empty(), "{}", again.stdout);
    create(&client(&sim), "Sales", &["wangwu"], &[], true, None).await;
    let later = wecom_acq(&["import", "--out", out_arg], &files, &sim.base_url()).await;
    assert_eq!(later.code, Some(0), "{}", later.all());
    let after = files_in(&out);
    assert_eq!(after.len(), 5);
    assert!(written.is_subset(&after));
    for (file, text) in written.iter().zip(&before) {
        assert_eq!(&std::fs::read_to_string(out.join(file)).unwrap(), text);
    }
}

#[tokio::test]
async fn import_manage_gives_manage_and_orphan_and_plan_sees_no_change() {
    let sim = start_sim(SimConfig::default()).await;
    console_links(&sim).await;
    let run = on_sim(&sim, &["import", "--manage"]).await;
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert_eq!(names_and_ids(&run.stdout).len(), 5);
    assert!(run.stdout.contains("managementPolicy: Manage"));
    assert!(!run.stdout.contains("managementPolicy: Observe"));
    assert!(run.stdout.contains("deletionPolicy: Orphan"));
    let dir = tempfile::tempdir().unwrap();
    let imported = dir.path().join("imported.yaml");
    std::fs::write(&imported, &run.stdout).unwrap();
    let mut files = app_files();
    files.push(imported);
    let plan = wecom_acq(&["plan"], &files, &sim.base_url()).await;
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    assert!(plan.stdout.contains("5 unchanged"), "{}", plan.stdout);
}

#[tokio::test]
async fn import_errors_name_what_failed_and_write_nothing() {
    let sim = start_sim(SimConfig::default()).await;
    console_links(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out_arg = out.to_str().unwrap();

    // A bad file.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: [unclosed\n").unwrap();
    let mut files = app_files();
    files.push(bad.clone());
    let run = wecom_acq(&["import", "--out", out_arg], &files, &sim.base_url()).await;
    assert_failed(&run, "bad.yaml");
    assert!(run.stderr.contains("invalid YAML"), "{}", run.stderr);

    // The Secret missing.
    let run = wecom_acq(
        &["import", "--out", out_arg],
        &[example("wecomapp.yaml")],
        &sim.base_url(),
    )
    .await;
    assert_failed(
        &run,
        "Secret default/wecom-app (spec.secretRef of WeComApp default/wecom) is not in the files",
    );

    // No app at all.
    let run = wecom_acq(
        &["import", "--out", out_arg],
        &[example("secret.yaml")],
        &sim.base_url(),
    )
    .await;
    assert_failed(&run, "no WeComApp");

    // WeCom unreachable.
    let url = unreachable_url();
    let run = wecom_acq(&["import", "--out", out_arg], &app_files(), &url).await;
    assert_failed(
        &run,
        &format!("listing the links of WeComApp default/wecom at {url} failed"),
    );
    assert!(!out.exists(), "an error wrote {:?}", files_in(&out));

    // A file with other content is never overwritten.
    let run = on_sim(&sim, &["import", "--out", out_arg]).await;
    assert_eq!(run.code, Some(0), "{}", run.all());
    let victim = out.join(files_in(&out).into_iter().next().unwrap());
    std::fs::write(&victim, "# edited by hand\n").unwrap();
    let run = on_sim(&sim, &["import", "--out", out_arg]).await;
    assert_failed(&run, "would be overwritten");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "# edited by hand\n"
    );
}

#[test]
fn import_help_says_which_apps_see_which_links() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wecom-acq"))
        .args(["import", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("third-party apps only see the links they created"),
        "{help}"
    );
    assert!(help.contains("links made in the admin console"), "{help}");
}

// ---- export ----

/// A simulator with quota for many customers.
async fn rich_sim(rate_limit_per_minute: Option<u32>) -> SimHandle {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    start_sim(SimConfig {
        quota: vec![QuotaBatch {
            expire_date: now + 365 * 86_400,
            balance: 100_000,
        }],
        rate_limit_per_minute,
        ..SimConfig::default()
    })
    .await
}

async fn add_customers(sim: &SimHandle, link_id: &str, count: u64, state: &str) {
    admin(
        sim,
        reqwest::Method::POST,
        &format!("/_sim/links/{link_id}/customers"),
        json!({"count": count, "state": state}),
    )
    .await;
}

/// Every customer the simulator holds, as (link_id, external_userid, userid, state).
async fn sim_customers(sim: &SimHandle) -> BTreeSet<(String, String, String, String)> {
    let state = admin(sim, reqwest::Method::GET, "/_sim/state", json!({})).await;
    let mut all = BTreeSet::new();
    for (link_id, customers) in state["customers"].as_object().unwrap() {
        for c in customers.as_array().unwrap() {
            all.insert((
                link_id.clone(),
                c["external_userid"].as_str().unwrap().to_string(),
                c["userid"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
            ));
        }
    }
    all
}

/// The CSV's records, header first, read back by an independent reader.
fn csv_records(text: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

/// Link ids of the rows in order, each link's rows in one run: panics otherwise.
fn assert_contiguous(link_ids: &[String]) {
    let mut seen = BTreeSet::new();
    let mut last: Option<&String> = None;
    for id in link_ids {
        if last != Some(id) {
            assert!(
                seen.insert(id.clone()),
                "rows of {id} are split: {link_ids:?}"
            );
            last = Some(id);
        }
    }
}

const AWKWARD_NAME: &str = "Big, \"SALE\" 50%";
const AWKWARD_STATE: &str = "官网首页,\"poster\"";

/// Links with 2,500 customers (three A6 pages), none, and a few with awkward values.
async fn customer_links(sim: &SimHandle) -> Vec<String> {
    let c = client(sim);
    let big = create(&c, "Sales", &["zhangsan"], &[], true, None).await;
    let empty = create(&c, "Empty", &["lisi"], &[], true, None).await;
    let awkward = create(&c, AWKWARD_NAME, &["wangwu"], &[], true, None).await;
    let mut ids = vec![big.clone(), empty, awkward.clone()];
    add_customers(sim, &big, 2_500, "").await;
    add_customers(sim, &awkward, 3, AWKWARD_STATE).await;
    for i in 0..4 {
        let id = create(
            &c,
            &format!("Campaign {i}"),
            &["zhangsan", "lisi"],
            &[],
            true,
            None,
        )
        .await;
        add_customers(sim, &id, 40, &format!("channel-{i}")).await;
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn export_customers_holds_every_customer_exactly_once() {
    let sim = rich_sim(None).await;
    let ids = customer_links(&sim).await;
    let expected = sim_customers(&sim).await;
    assert_eq!(expected.len(), 2_500 + 3 + 4 * 40);

    let run = on_sim(&sim, &["export", "customers", "--concurrency", "3"]).await;
    assert_eq!(run.code, Some(0), "{}", run.all());
    let records = csv_records(&run.stdout);
    assert_eq!(
        records[0],
        [
            "link_id",
            "link_name",
            "external_userid",
            "userid",
            "chat_status",
            "state"
        ]
    );
    let rows = &records[1..];
    let got: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| (r[0].clone(), r[2].clone(), r[3].clone(), r[5].clone()))
        .collect();
    assert_eq!(got.len(), expected.len(), "a customer is missing or twice");
    assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_contiguous(&rows.iter().map(|r| r[0].clone()).collect::<Vec<_>>());
    // Awkward values survive the round trip through CSV quoting.
    let awkward: Vec<&Vec<String>> = rows.iter().filter(|r| r[0] == ids[2]).collect();
    assert_eq!(awkward.len(), 3);
    assert!(
        awkward
            .iter()
            .all(|r| r[1] == AWKWARD_NAME && r[5] == AWKWARD_STATE)
    );
    assert!(
        run.stdout.contains("\"Big, \"\"SALE\"\" 50%\""),
        "{}",
        run.stdout
    );
    assert!(rows.iter().all(|r| r[4] == "0"));
    // No progress bar when stderr is not a terminal.
    assert!(!run.stderr.contains("links"), "{}", run.stderr);

    // JSON lines to a file, one link: the same keys, that link's customers only.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("customers.jsonl");
    let run = wecom_acq(
        &[
            "export",
            "customers",
            "--format",
            "jsonl",
            "--link",
            &ids[2],
            "--out",
            out.to_str().unwrap(),
        ],
        &app_files(),
        &sim.base_url(),
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert!(run.stdout.is_empty());
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        let keys: BTreeSet<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "chat_status",
                "external_userid",
                "link_id",
                "link_name",
                "state",
                "userid"
            ]
            .into()
        );
        assert_eq!(line["state"], AWKWARD_STATE);
        assert_eq!(line["link_name"], AWKWARD_NAME);
    }
}

/// The simulator's own answer to the first A6 page of a link, as raw JSON.
async fn first_customer_page(sim: &SimHandle, link_id: &str) -> String {
    let http = reqwest::Client::new();
    let token: Value = http
        .get(format!(
            "{}/cgi-bin/gettoken?corpid=wwsimcorp&corpsecret=sim-secret",
            sim.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    http.post(format!(
        "{}/cgi-bin/externalcontact/customer_acquisition/customer?access_token={}",
        sim.base_url(),
        token["access_token"].as_str().unwrap()
    ))
    .json(&json!({"link_id": link_id, "limit": 1000}))
    .send()
    .await
    .unwrap()
    .text()
    .await
    .unwrap()
}

#[tokio::test]
async fn frequency_limit_mid_link_resumes_at_the_same_page() {
    let sim = rich_sim(None).await;
    let c = client(&sim);
    let id = create(&c, "Sales", &["zhangsan"], &[], true, None).await;
    add_customers(&sim, &id, 2_500, "").await;
    let expected = sim_customers(&sim).await;
    // The first A6 page is answered as the simulator would (a raw fault with its own
    // answer), then the next A6 call - the second page, mid-link - gets 45009. WeCom then
    // blocks the API for a minute: the export waits that out (no call meanwhile) and asks
    // for the same page again.
    let page = first_customer_page(&sim, &id).await;
    assert!(page.contains("\"next_cursor\":\""), "{page}");
    admin(
        &sim,
        reqwest::Method::POST,
        "/_sim/faults",
        json!({"api": "customer", "raw": {"contentType": "application/json", "body": page}, "times": 1}),
    )
    .await;
    admin(
        &sim,
        reqwest::Method::POST,
        "/_sim/faults",
        json!({"api": "customer", "errcode": 45009, "times": 1}),
    )
    .await;

    let run = on_sim(&sim, &["export", "customers"]).await;
    assert_eq!(run.code, Some(0), "{}", run.all());
    let records = csv_records(&run.stdout);
    let got: Vec<(String, String, String, String)> = records[1..]
        .iter()
        .map(|r| (r[0].clone(), r[2].clone(), r[3].clone(), r[5].clone()))
        .collect();
    assert_eq!(got.len(), 2_500, "rows lost or written twice");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
    // Both faults were used up: the 45009s did hit the second page.
    let state = admin(&sim, reqwest::Method::GET, "/_sim/state", json!({})).await;
    assert_eq!(state["faults"], json!([]), "{}", state["faults"]);
    // The test's own first page, then the export's 3 pages and the one refused attempt.
    assert_eq!(state["calls"]["customer"], 1 + 3 + 1, "{}", state["calls"]);
}

#[tokio::test]
async fn export_statistics_splits_the_span_into_windows_of_30_days() {
    let sim = rich_sim(None).await;
    let c = client(&sim);
    let busy = create(&c, "Busy", &["zhangsan"], &[], true, None).await;
    let quiet = create(&c, "Quiet", &["lisi"], &[], true, None).await;
    add_customers(&sim, &busy, 7, "x").await;
    admin(
        &sim,
        reqwest::Method::POST,
        &format!("/_sim/links/{busy}/clicks"),
        json!({"count": 5}),
    )
    .await;

    let run = on_sim(&sim, &["export", "statistics", "--days", "75"]).await;
    assert_eq!(run.code, Some(0), "{}", run.all());
    let records = csv_records(&run.stdout);
    assert_eq!(
        records[0],
        [
            "link_id",
            "link_name",
            "from",
            "to",
            "clicks",
            "new_customers"
        ]
    );
    let rows = &records[1..];
    assert_eq!(rows.len(), 2 * 3, "{rows:?}");
    assert_contiguous(&rows.iter().map(|r| r[0].clone()).collect::<Vec<_>>());
    for link in [&busy, &quiet] {
        let mine: Vec<&Vec<String>> = rows.iter().filter(|r| &r[0] == link).collect();
        assert_eq!(mine.len(), 3);
        // Oldest first, contiguous, at most 30 days each, 75 in all.
        let day = |d: &str| {
            let date: jiff::civil::Date = d.parse().unwrap();
            date
        };
        let mut total = 0;
        for (i, row) in mine.iter().enumerate() {
            let days = (day(&row[3]) - day(&row[2])).get_days() + 1;
            assert!((1..=30).contains(&days), "{row:?}");
            total += days;
            if i > 0 {
                assert_eq!(day(&mine[i - 1][3]).tomorrow().unwrap(), day(&row[2]));
            }
        }
        assert_eq!(total, 75);
    }
    let newest = |link: &str| rows.iter().rfind(|r| r[0] == link).unwrap().clone();
    assert_eq!(newest(&busy)[4..], ["12", "7"]);
    assert_eq!(newest(&quiet)[4..], ["0", "0"]);
    assert!(
        rows.iter()
            .filter(|r| r[0] == busy)
            .take(2)
            .all(|r| r[4] == "0")
    );

    // More than WeCom keeps is refused before any call.
    let run = on_sim(&sim, &["export", "statistics", "--days", "181"]).await;
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stderr.contains("--days 181 is out of range") && run.stderr.contains("180 days"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
    let run = on_sim(&sim, &["export", "statistics", "--days", "180"]).await;
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert_eq!(csv_records(&run.stdout).len(), 1 + 2 * 6);
}

#[tokio::test]
async fn export_errors_name_what_failed() {
    let sim = rich_sim(None).await;
    let ids = customer_links(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("customers.csv");
    let out_arg = out.to_str().unwrap();

    // WeCom unreachable: no file, a message naming the app and the URL.
    let url = unreachable_url();
    let run = wecom_acq(
        &["export", "customers", "--retry-for", "1s", "--out", out_arg],
        &app_files(),
        &url,
    )
    .await;
    assert_failed(
        &run,
        &format!("listing the links of WeComApp default/wecom at {url} failed"),
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a partial file was left"
    );

    // A listed link that cannot be read any more (deleted between A1 and A2): a note
    // naming it, the other links exported.
    admin(
        &sim,
        reqwest::Method::POST,
        "/_sim/faults",
        json!({"api": "get", "errcode": 40058, "times": 1}),
    )
    .await;
    let run = on_sim(&sim, &["export", "customers", "--concurrency", "1"]).await;
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert!(
        run.stderr.contains(&format!(
            "note: link {} of WeComApp default/wecom was listed but cannot be read any more",
            ids[0]
        )),
        "{}",
        run.stderr
    );
    let exported: BTreeSet<String> = csv_records(&run.stdout)[1..]
        .iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(exported, ids[2..].iter().cloned().collect());

    // A link WeCom does not know.
    let run = wecom_acq(
        &[
            "export",
            "customers",
            "--link",
            &ids[0],
            "--link",
            "nosuchlink",
        ],
        &app_files(),
        &sim.base_url(),
    )
    .await;
    assert_failed(&run, "--link nosuchlink");

    // A bad file, a missing Secret, --days for customers.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: [unclosed\n").unwrap();
    let mut files = app_files();
    files.push(bad);
    let run = wecom_acq(&["export", "customers"], &files, &sim.base_url()).await;
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stderr.contains("bad.yaml") && run.stderr.contains("invalid YAML"),
        "{}",
        run.stderr
    );
    let run = wecom_acq(
        &["export", "customers"],
        &[example("wecomapp.yaml")],
        &sim.base_url(),
    )
    .await;
    assert_failed(&run, "Secret default/wecom-app");
    let run = on_sim(&sim, &["export", "customers", "--days", "7"]).await;
    assert_failed(&run, "--days applies to `export statistics` only");
}
