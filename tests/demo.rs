//! `wecom-acq demo` as a newcomer runs it: it exits 0 on its own, shows both example links
//! Ready with their WeCom ids, and the link deleted in the console comes back with a new id;
//! then a corp authorises a service provider's suite and a link under it is Ready.

use std::time::Duration;

use wecom_acq::demo::{
    ChangeFeed, DemoOptions, SUITE_AES_KEY, SUITE_CALLBACK_TOKEN, SUITE_LINK, SUITE_SECRET,
};

/// Generous: the demo takes a few seconds; this only guards against a hang.
const GUARD: Duration = Duration::from_secs(180);

/// `(name, link id, ready)` of every table row, in the order printed.
fn rows(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            match cells.as_slice() {
                [name @ ("sales" | "support"), id, ready, ..] if id.starts_with("caw") => {
                    Some((name.to_string(), id.to_string(), ready.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

/// `(name, customers)` of every table row, in the order printed.
fn customers(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            match cells.as_slice() {
                [name @ ("sales" | "support"), id, _ready, customers, ..]
                    if id.starts_with("caw") =>
                {
                    Some((name.to_string(), customers.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

/// `(app, link id, ready, url)` of every row of the suite-backed link's table.
fn suite_rows(text: &str) -> Vec<(String, String, String, String)> {
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            match cells.as_slice() {
                [name, app, id, ready, url] if *name == SUITE_LINK => Some((
                    app.to_string(),
                    id.to_string(),
                    ready.to_string(),
                    url.to_string(),
                )),
                _ => None,
            }
        })
        .collect()
}

/// The count printed for `api` in the suite part's calls table.
fn suite_calls(text: &str, api: &str) -> Option<u64> {
    let part = text.split("WeCom calls for the suite").nth(1)?;
    part.lines().find_map(|line| {
        let cells: Vec<&str> = line.split_whitespace().collect();
        match cells.as_slice() {
            [name, count] if *name == api => count.parse().ok(),
            _ => None,
        }
    })
}

fn ids_of<'a>(rows: &'a [(String, String, String)], name: &str) -> Vec<&'a str> {
    rows.iter()
        .filter(|r| r.0 == name)
        .map(|r| r.1.as_str())
        .collect()
}

#[tokio::test]
async fn demo_runs_from_nothing_recreates_the_deleted_link_and_exits_zero() {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wecom-acq"))
        .arg("demo")
        // Any directory: the examples are embedded.
        .current_dir(std::env::temp_dir())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(GUARD, child.wait_with_output())
        .await
        .expect("the demo did not finish")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");

    let rows = rows(&stdout);
    // Three tables: after create, after traffic, after the console changes.
    assert_eq!(rows.len(), 6, "{stdout}");
    assert!(rows.iter().all(|r| r.2 == "True"), "{rows:?}");
    let sales = ids_of(&rows, "sales");
    let support = ids_of(&rows, "support");
    assert_eq!(sales[0], sales[1], "{stdout}");
    assert_ne!(
        sales[1], sales[2],
        "the deleted link must get a new id:\n{stdout}"
    );
    assert!(
        support.iter().all(|id| *id == support[0]),
        "the edited link keeps its id:\n{stdout}"
    );
    // 4 customers through sales and 2 through support, counted once each although both
    // the A6 count and the add_external_contact callbacks report them.
    let expected: Vec<(String, String)> = [
        ("sales", "0"),
        ("support", "0"),
        ("sales", "4"),
        ("support", "2"),
        ("sales", "0"),
        ("support", "2"),
    ]
    .iter()
    .map(|(n, c)| (n.to_string(), c.to_string()))
    .collect();
    assert_eq!(customers(&stdout), expected, "{stdout}");
    assert!(stdout.contains("DriftCorrected"), "{stdout}");
    assert!(stdout.contains("Recreated"), "{stdout}");
    assert!(stdout.contains("A3 create link   3"), "{stdout}");
    assert!(
        stdout.contains("Done: nothing is left running."),
        "{stdout}"
    );
    for secret in [
        "sim-secret",
        "simCallbackToken",
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "secret printed"
        );
    }

    // A service provider's suite: the corp it authorised got a WeComApp and a Ready link.
    let suite = suite_rows(&stdout);
    assert_eq!(suite.len(), 1, "{stdout}");
    let (app, id, ready, url) = &suite[0];
    assert_eq!(app, "acme-wwsimcorp", "{stdout}");
    assert!(
        id.starts_with("caw") && url.ends_with(id.as_str()),
        "{stdout}"
    );
    assert_eq!(ready, "True", "{stdout}");
    for api in ["get_suite_token", "get_permanent_code", "get_corp_token"] {
        assert_eq!(suite_calls(&stdout, api), Some(1), "{api}:\n{stdout}");
    }
    for secret in [SUITE_SECRET, SUITE_CALLBACK_TOKEN, SUITE_AES_KEY] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a suite credential printed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_callbacks_configured_still_converges() {
    let options = DemoOptions {
        step_timeout: Duration::from_secs(60),
        change_feed: ChangeFeed::Callbacks,
    };
    let mut out = Vec::new();
    tokio::time::timeout(GUARD, wecom_acq::demo::run_with(&options, &mut out))
        .await
        .expect("the demo did not finish")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("WeCom callbacks on"), "{text}");
    let rows = rows(&text);
    let sales = ids_of(&rows, "sales");
    assert_eq!(sales.len(), 3, "{text}");
    assert_ne!(sales[1], sales[2], "{text}");
}
