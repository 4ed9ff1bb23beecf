//! `wecom-acq plan` and `apply` run as a CI job would, against the WeCom simulator: exit
//! codes, what they print, and what they did (read from the simulator's state and call
//! counts). Every run is also checked for secrets in its output.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};
use wecom_acq::sim::{SimConfig, SimHandle};
use wecom_acq::wecom::client::{ClientConfig, WeComClient};
use wecom_acq::wecom::types::{CreateLinkRequest, LinkRange};

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

/// The four example files, as a user would pass them.
fn examples() -> Vec<PathBuf> {
    [
        "secret.yaml",
        "wecomapp.yaml",
        "link-sales.yaml",
        "link-support.yaml",
    ]
    .map(example)
    .to_vec()
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

/// Runs `wecom-acq VERB -f ... --api-base-url SIM` and checks that no secret was printed.
async fn wecom_acq(sim: &SimHandle, verb: &str, files: &[PathBuf]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wecom-acq"));
    command.arg(verb);
    for file in files {
        command.arg("-f").arg(file);
    }
    command
        .args(["--api-base-url", &sim.base_url()])
        .env("RUST_LOG", "wecom_acq=debug")
        .env("NO_COLOR", "1");
    let output: Output = command.output().await.unwrap();
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    for secret in SECRETS {
        assert!(
            !run.all().contains(secret),
            "{verb} printed a secret:\n{}",
            run.all()
        );
    }
    run
}

async fn start_sim() -> SimHandle {
    wecom_acq::sim::spawn(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn sim_get(sim: &SimHandle, path: &str) -> Value {
    reqwest::get(format!("{}{path}", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn sim_links(sim: &SimHandle) -> Vec<Value> {
    sim_get(sim, "/_sim/state").await["links"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn link_named<'a>(links: &'a [Value], name: &str) -> &'a Value {
    links
        .iter()
        .find(|l| l["link_name"] == name)
        .unwrap_or_else(|| panic!("no link named {name} in {links:?}"))
}

fn calls_of(calls: &Value, api: &str) -> u64 {
    calls[api].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn plan_apply_plan_goes_from_two_creates_to_no_changes() {
    let sim = start_sim().await;
    let files = examples();

    let plan = wecom_acq(&sim, "plan", &files).await;
    assert_eq!(plan.code, Some(2), "{}", plan.all());
    assert!(
        plan.stdout
            .contains("+ AcquisitionLink default/sales will be created"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("link_name             = \"销售咨询\""));
    assert!(
        plan.stdout
            .contains("range.user_list       = [\"lisi\", \"zhangsan\"]")
    );
    assert!(plan.stdout.contains("range.department_list = [1]"));
    assert!(
        plan.stdout
            .trim_end()
            .ends_with("Plan: 2 to create, 0 to update, 0 unchanged."),
        "{}",
        plan.stdout
    );
    assert_eq!(
        calls_of(&sim_get(&sim, "/_sim/calls").await, "create_link"),
        0
    );
    assert!(
        sim_links(&sim).await.is_empty(),
        "plan must not change WeCom"
    );

    let apply = wecom_acq(&sim, "apply", &files).await;
    assert_eq!(apply.code, Some(0), "{}", apply.all());
    let links = sim_links(&sim).await;
    assert_eq!(links.len(), 2);
    let sales = link_named(&links, "销售咨询");
    let support = link_named(&links, "After-sales support");
    assert_eq!(support["range"]["department_list"], json!([1]));
    assert_eq!(support["skip_verify"], json!(false));
    let sales_id = sales["link_id"].as_str().unwrap();
    assert!(apply.stdout.contains(&format!(
        "AcquisitionLink default/sales: created link {sales_id}"
    )));
    assert!(apply.stdout.contains(&format!(
        "channel wechat-moments: https://work.weixin.qq.com/ca/{sales_id}?customer_channel=wechat-moments"
    )));
    assert!(
        apply
            .stdout
            .contains("Apply complete: 2 created, 0 updated, 0 unchanged.")
    );

    let again = wecom_acq(&sim, "plan", &files).await;
    assert_eq!(again.code, Some(0), "{}", again.all());
    assert!(again.stdout.contains("No changes"), "{}", again.stdout);
    assert!(again.stdout.contains(&format!(
        "AcquisitionLink default/sales: no change (link {sales_id})"
    )));
    assert!(
        again
            .stdout
            .contains("Plan: 0 to create, 0 to update, 2 unchanged.")
    );

    // Applying an unchanged plan makes no write.
    let before = sim_get(&sim, "/_sim/calls").await;
    let noop = wecom_acq(&sim, "apply", &files).await;
    assert_eq!(noop.code, Some(0), "{}", noop.all());
    let after = sim_get(&sim, "/_sim/calls").await;
    for api in ["create_link", "update_link", "delete_link"] {
        assert_eq!(calls_of(&before, api), calls_of(&after, api), "{api}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn console_edit_is_planned_as_a_field_diff_with_the_whole_range_and_applied() {
    let sim = start_sim().await;
    let files = examples();
    assert_eq!(wecom_acq(&sim, "apply", &files).await.code, Some(0));
    let links = sim_links(&sim).await;
    let support_id = link_named(&links, "After-sales support")["link_id"]
        .as_str()
        .unwrap()
        .to_string();
    let edit = reqwest::Client::new()
        .patch(format!("{}/_sim/links/{support_id}", sim.base_url()))
        .json(&json!({"range": {"user_list": ["wangwu"], "department_list": [2]}, "skip_verify": true}))
        .send()
        .await
        .unwrap();
    assert!(edit.status().is_success());

    let plan = wecom_acq(&sim, "plan", &files).await;
    assert_eq!(plan.code, Some(2), "{}", plan.all());
    let expected = format!(
        "  ~ AcquisitionLink default/support will be updated in place  ({}, document 1)\n      \
         link {support_id}: update_link (A4) sends the whole link, the range in full\n        \
         ~ range (replaced whole)\n            \
         - user_list = [\"wangwu\"], department_list = [2]\n            \
         + user_list = [], department_list = [1]\n        \
         ~ skip_verify     = true -> false\n",
        example("link-support.yaml").display()
    );
    assert!(plan.stdout.contains(&expected), "{}", plan.stdout);
    assert!(
        plan.stdout
            .contains("Plan: 0 to create, 1 to update, 1 unchanged.")
    );

    let apply = wecom_acq(&sim, "apply", &files).await;
    assert_eq!(apply.code, Some(0), "{}", apply.all());
    assert!(apply.stdout.contains(&format!(
        "AcquisitionLink default/support: updated link {support_id}"
    )));
    let support = sim_links(&sim).await;
    let support = link_named(&support, "After-sales support");
    assert_eq!(
        support["range"],
        json!({"user_list": [], "department_list": [1]})
    );
    assert_eq!(support["skip_verify"], json!(false));
    assert_eq!(
        calls_of(&sim_get(&sim, "/_sim/calls").await, "update_link"),
        1
    );
    sim.shutdown().await;
}

const BAD_LINKS: &str = "\
apiVersion: acquisition.wecom.dev/v1alpha1
kind: AcquisitionLink
metadata:
  name: fine
spec:
  appRef: {name: wecom}
  linkName: A fine link
  range: {userList: [wangwu]}
---
apiVersion: acquisition.wecom.dev/v1alpha1
kind: AcquisitionLink
metadata:
  name: too-long
spec:
  appRef: {name: wecom}
  linkName: 一二三四五六七八九十一二三四五六七八九十一二三四五六七八九十一
  range: {userList: [wangwu]}
---
apiVersion: acquisition.wecom.dev/v1alpha1
kind: AcquisitionLink
metadata:
  name: nobody
spec:
  appRef: {name: wecom}
  linkName: Nobody
  range: {}
";

#[tokio::test]
async fn invalid_documents_are_named_by_file_document_and_field_and_nothing_is_applied() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-links.yaml");
    std::fs::write(&bad, BAD_LINKS).unwrap();
    let broken = dir.path().join("broken.yml");
    std::fs::write(&broken, "kind: AcquisitionLink\nspec: [unclosed\n").unwrap();
    let mut files = examples();
    files.push(dir.path().to_path_buf());

    for verb in ["plan", "apply"] {
        let run = wecom_acq(&sim, verb, &files).await;
        assert_eq!(run.code, Some(1), "{verb}: {}", run.all());
        let bad = bad.display().to_string();
        for expected in [
            format!(
                "{bad}, document 2 (AcquisitionLink default/too-long), field spec.linkName: must be at most 30 characters, it has 31"
            ),
            format!(
                "{bad}, document 3 (AcquisitionLink default/nobody), field spec.range: needs at least one of userList and departmentList"
            ),
            format!(
                "{}, document 1: invalid YAML: unclosed bracket '[' at line 2, column 7",
                broken.display()
            ),
        ] {
            assert!(
                run.stderr.contains(&expected),
                "{verb}: missing {expected:?} in\n{}",
                run.stderr
            );
        }
        assert!(
            !run.stderr
                .contains("document 1 (AcquisitionLink default/fine)")
        );
        assert!(
            run.stderr
                .contains("3 problems in the files; nothing was sent to WeCom")
        );
    }
    let calls = sim_get(&sim, "/_sim/calls").await;
    assert_eq!(calls_of(&calls, "create_link"), 0, "{calls}");
    assert_eq!(
        calls_of(&calls, "total"),
        0,
        "nothing may reach WeCom: {calls}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn two_wecom_links_with_one_name_are_an_error_naming_both() {
    let sim = start_sim().await;
    let mut config = ClientConfig::new("wwsimcorp", "sim-secret");
    config.base_url = sim.base_url();
    let client = WeComClient::new(config).unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let created = client
            .create_link(&CreateLinkRequest {
                link_name: "销售咨询".into(),
                range: LinkRange {
                    user_list: vec!["zhangsan".into()],
                    department_list: vec![],
                },
                ..Default::default()
            })
            .await
            .unwrap();
        ids.push(created.link_id);
    }

    for verb in ["plan", "apply"] {
        let run = wecom_acq(&sim, verb, &examples()).await;
        assert_eq!(run.code, Some(1), "{verb}: {}", run.all());
        let expected = format!(
            "WeCom has 2 links named \"销售咨询\" in WeComApp default/wecom: {} and {}",
            ids[0], ids[1]
        );
        assert!(run.stdout.contains(&expected), "{verb}: {}", run.stdout);
        assert!(run.stdout.contains("! AcquisitionLink default/sales"));
    }
    // apply refused the whole plan: not even the unrelated support link was created.
    let calls = sim_get(&sim, "/_sim/calls").await;
    assert_eq!(calls_of(&calls, "create_link"), 2, "{calls}");
    sim.shutdown().await;
}

#[tokio::test]
async fn link_id_pins_the_link_whatever_its_name() {
    let sim = start_sim().await;
    assert_eq!(wecom_acq(&sim, "apply", &examples()).await.code, Some(0));
    let links = sim_links(&sim).await;
    let sales_id = link_named(&links, "销售咨询")["link_id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let renamed = dir.path().join("sales.yaml");
    let text = std::fs::read_to_string(example("link-sales.yaml"))
        .unwrap()
        .replace(
            "linkName: 销售咨询",
            &format!("linkName: Sales desk\n  linkId: {sales_id}"),
        );
    std::fs::write(&renamed, text).unwrap();
    let files = vec![
        example("secret.yaml"),
        example("wecomapp.yaml"),
        renamed.clone(),
    ];

    let plan = wecom_acq(&sim, "plan", &files).await;
    assert_eq!(plan.code, Some(2), "{}", plan.all());
    assert!(
        plan.stdout
            .contains("~ link_name       = \"销售咨询\" -> \"Sales desk\""),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("1 other link in WeCom, not in the files, left alone"),
        "{}",
        plan.stdout
    );

    std::fs::write(
        &renamed,
        std::fs::read_to_string(&renamed)
            .unwrap()
            .replace(&sales_id, "cawcdnonexistent"),
    )
    .unwrap();
    let missing = wecom_acq(&sim, "plan", &files).await;
    assert_eq!(missing.code, Some(1), "{}", missing.all());
    assert!(
        missing
            .stdout
            .contains("spec.linkId cawcdnonexistent is not a link of WeComApp default/wecom"),
        "{}",
        missing.stdout
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_missing_app_or_secret_is_named_and_base64_data_is_read() {
    let sim = start_sim().await;
    let links_only = vec![example("link-sales.yaml")];
    let run = wecom_acq(&sim, "plan", &links_only).await;
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stdout.contains(
        "WeComApp default/wecom (spec.appRef of AcquisitionLink default/sales) is not in the files"
    ), "{}", run.stdout);

    let no_secret = vec![example("wecomapp.yaml"), example("link-sales.yaml")];
    let run = wecom_acq(&sim, "plan", &no_secret).await;
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stdout.contains(
        "Secret default/wecom-app (spec.secretRef of WeComApp default/wecom) is not in the files"
    ), "{}", run.stdout);

    // The same Secret with base64 `data` instead of `stringData` works.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.yaml");
    std::fs::write(
        &secret,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: wecom-app}\ndata:\n  corp-secret: c2ltLXNlY3JldA==\n",
    )
    .unwrap();
    let run = wecom_acq(
        &sim,
        "plan",
        &[secret, example("wecomapp.yaml"), example("link-sales.yaml")],
    )
    .await;
    assert_eq!(run.code, Some(2), "{}", run.all());
    assert!(
        run.stdout
            .contains("Plan: 1 to create, 0 to update, 0 unchanged.")
    );
    sim.shutdown().await;
}
