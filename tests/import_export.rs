//! `wecom-acq import` and `wecom-acq export` run as a user would, against the WeCom
//! simulator: links made directly through WeCom's API are imported and `plan` then sees no
//! change; exports hold every customer exactly once, quote awkward values, split statistics
//! windows; every error path names what failed. Every run is checked for secrets.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use wecom_acq::sim::{SimConfig, SimHandle};
use wecom_acq::wecom::client::{ClientConfig, WeComClient};
use wecom_acq::wecom::types::{CreateLinkRequest, LinkRange, PriorityOption};

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
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
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
    let run = wecom_acq(&["import", "--manage"], &app_files(), &sim.base_url()).await;
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
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("bad.yaml"), "{}", run.stderr);
    assert!(run.stderr.contains("invalid YAML"), "{}", run.stderr);

    // The Secret missing.
    let run = wecom_acq(
        &["import", "--out", out_arg],
        &[example("wecomapp.yaml")],
        &sim.base_url(),
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stderr
            .contains("Secret default/wecom-app (spec.secretRef of WeComApp default/wecom) is not in the files"),
        "{}",
        run.stderr
    );

    // No app at all.
    let run = wecom_acq(
        &["import", "--out", out_arg],
        &[example("secret.yaml")],
        &sim.base_url(),
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("no WeComApp"), "{}", run.stderr);

    // WeCom unreachable.
    let url = unreachable_url();
    let run = wecom_acq(&["import", "--out", out_arg], &app_files(), &url).await;
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stderr.contains(&format!(
            "listing the links of WeComApp default/wecom at {url} failed"
        )),
        "{}",
        run.stderr
    );
    assert!(!out.exists(), "an error wrote {:?}", files_in(&out));

    // A file with other content is never overwritten.
    let run = wecom_acq(&["import", "--out", out_arg], &app_files(), &sim.base_url()).await;
    assert_eq!(run.code, Some(0), "{}", run.all());
    let victim = out.join(files_in(&out).into_iter().next().unwrap());
    std::fs::write(&victim, "# edited by hand\n").unwrap();
    let run = wecom_acq(&["import", "--out", out_arg], &app_files(), &sim.base_url()).await;
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stderr.contains("would be overwritten"),
        "{}",
        run.stderr
    );
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
