//! The demo's service-provider part: a third-party suite in the simulator, its WeComSuite
//! and Secret applied, the suite_ticket and a corp's authorisation pushed to the suite's
//! instruction callback (`/suite/{namespace}/{suite}`), and a link made under the
//! WeComApp the controller applies for the authorised corp. Nothing secret is printed:
//! the ticket and the permanent code stay in their Secrets, the tokens in the controller.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use super::{NAMESPACE, World, is_ready, link_id, render_rows, say, wait_link, within};
use crate::api::{
    AcquisitionLink, AcquisitionLinkSpec, CallbackSpec, SecretKeyRef, WeComApp, WeComSuite,
    WeComSuiteSpec, authorised_app_name, ticket_secret_name,
};
use crate::reconcile::conditions::{self, READY};

/// The demo suite's name, id and credentials (the simulator's suite is configured with the
/// same values; they are never printed).
const SUITE: &str = "acme";
const SUITE_ID: &str = "wwdemosuite01";
const SUITE_SECRET_NAME: &str = "acme-suite";
/// The credentials, exposed so the demo's test can check that none is printed.
pub const SUITE_SECRET: &str = "demo-suite-secret-4b1e";
pub const SUITE_CALLBACK_TOKEN: &str = "demoSuiteCallbackToken";
pub const SUITE_AES_KEY: &str = "suiteDemoAESKey0123456789abcdefghijklmnopqA";
/// The AcquisitionLink made under the authorised corp's app.
pub const LINK: &str = "partner";

/// The APIs of the suite's part, with their labels in the calls table.
const SUITE_APIS: [(&str, &str); 4] = [
    ("get_suite_token", "get_suite_token"),
    ("get_permanent_code", "get_permanent_code"),
    ("get_corp_token", "get_corp_token"),
    ("create_link", "A3 create link"),
];

/// Runs the suite part after the self-built app's.
pub(super) async fn script(
    world: &World,
    limit: Duration,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let corp_id = world.corp_id.clone();
    let calls_before = world.calls().await?;
    let path = format!("/suite/{NAMESPACE}/{SUITE}");
    say(
        out,
        &format!(
            "\n==> A service provider: the simulator plays the third-party suite {SUITE_ID}, with its instruction callback URL on the controller's callback endpoint ({path}); applied here: the WeComSuite {SUITE} and its Secret {SUITE_SECRET_NAME} (suite secret, callback Token and EncodingAESKey)."
        ),
    );
    apply_suite(world).await?;
    world
        .sim_call(
            reqwest::Method::PUT,
            "/_sim/suite",
            json!({
                "suite_id": SUITE_ID,
                "suite_secret": SUITE_SECRET,
                "token": SUITE_CALLBACK_TOKEN,
                "encoding_aes_key": SUITE_AES_KEY,
                "callback_url": format!("http://{}{path}", world.callback_addr),
            }),
        )
        .await?;
    let suites: Api<WeComSuite> = Api::namespaced(world.client.clone(), NAMESPACE);
    within(limit, "the suite_ticket to be stored", async {
        await_condition(suites.clone(), SUITE, |s: Option<&WeComSuite>| {
            s.and_then(|s| s.status.as_ref()).is_some_and(|st| {
                st.last_ticket_time.is_some() && conditions::is_true(&st.conditions, READY)
            })
        })
        .await
        .with_context(|| format!("watching WeComSuite {SUITE}"))
        .map(|_| ())
    })
    .await?;
    say(
        out,
        &format!(
            "WeCom pushed a suite_ticket; the controller stored it in the Secret {} (not shown) and WeComSuite {SUITE} is Ready.",
            ticket_secret_name(SUITE)
        ),
    );

    // The corp installs the suite: create_auth with an AuthCode (not shown either).
    let app_name = authorised_app_name(SUITE, &corp_id);
    say(
        out,
        &format!(
            "\n==> The corp {corp_id} authorises the suite (create_auth), and the AcquisitionLink {LINK} is applied with appRef {app_name}."
        ),
    );
    world
        .sim_call(reqwest::Method::POST, "/_sim/suite/auth", Value::Null)
        .await?;
    let links: Api<AcquisitionLink> = Api::namespaced(world.client.clone(), NAMESPACE);
    let link = AcquisitionLink::new(
        LINK,
        AcquisitionLinkSpec::new(&app_name, "Partner referrals", vec!["zhangsan".into()]),
    );
    links
        .create(&PostParams::default(), &link)
        .await
        .with_context(|| format!("creating AcquisitionLink {NAMESPACE}/{LINK}"))?;
    let apps: Api<WeComApp> = Api::namespaced(world.client.clone(), NAMESPACE);
    let app = within(
        limit,
        &format!("the WeComApp {app_name} to be Ready"),
        async {
            let found = await_condition(apps.clone(), &app_name, |a: Option<&WeComApp>| {
                a.and_then(|a| a.status.as_ref())
                    .is_some_and(|st| conditions::is_true(&st.conditions, READY))
            })
            .await
            .with_context(|| format!("watching WeComApp {app_name}"))?;
            found.ok_or_else(|| anyhow!("WeComApp {app_name} disappeared"))
        },
    )
    .await?;
    let link = wait_link(&links, LINK, limit, "Ready with a link id", is_ready).await?;
    say(
        out,
        &format!(
            "The controller exchanged the AuthCode for the corp's permanent code (get_permanent_code; kept in the Secret {app_name}, not shown), applied the WeComApp {} (corpId {}, suite {}) and made the link with the corp's token from get_corp_token:\n",
            app.name_any(),
            app.spec.corp_id,
            app.spec
                .suite
                .as_ref()
                .map(|s| s.name.as_str())
                .unwrap_or("-"),
        ),
    );
    say(out, &suite_link_table(&link));

    let calls = world.calls().await?;
    say(
        out,
        "\nWeCom calls for the suite and its corp (GET /_sim/calls, counted over this part):",
    );
    say(out, &calls_delta_table(&calls_before, &calls));
    Ok(())
}

/// The suite's Secret and the WeComSuite, pointed at the simulator.
async fn apply_suite(world: &World) -> anyhow::Result<()> {
    let secrets: Api<KubeSecret> = Api::namespaced(world.client.clone(), NAMESPACE);
    let secret = KubeSecret {
        metadata: ObjectMeta {
            name: Some(SUITE_SECRET_NAME.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        string_data: Some(
            [
                ("suiteSecret", SUITE_SECRET),
                ("token", SUITE_CALLBACK_TOKEN),
                ("encodingAESKey", SUITE_AES_KEY),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| format!("creating Secret {NAMESPACE}/{SUITE_SECRET_NAME}"))?;
    let key = |key: &str| SecretKeyRef {
        name: SUITE_SECRET_NAME.into(),
        key: key.into(),
    };
    let suite = WeComSuite::new(
        SUITE,
        WeComSuiteSpec {
            suite_id: SUITE_ID.into(),
            secret_ref: key("suiteSecret"),
            callback: CallbackSpec {
                token_ref: key("token"),
                aes_key_ref: key("encodingAESKey"),
                receive_id: None,
            },
            api_base_url: Some(world.sim.base_url()),
            requests_per_minute: None,
        },
    );
    Api::<WeComSuite>::namespaced(world.client.clone(), NAMESPACE)
        .create(&PostParams::default(), &suite)
        .await
        .with_context(|| format!("creating WeComSuite {NAMESPACE}/{SUITE}"))?;
    Ok(())
}

/// The suite-backed link: NAME, APP, LINK ID, READY, URL.
fn suite_link_table(link: &AcquisitionLink) -> String {
    let status = link.status.clone().unwrap_or_default();
    let row = vec![
        link.name_any(),
        link.spec.app_ref.name.clone(),
        link_id(link),
        conditions::find(&status.conditions, READY)
            .map(|c| c.status.clone())
            .unwrap_or_default(),
        status.url.unwrap_or_default(),
    ];
    render_rows(&["NAME", "APP", "LINK ID", "READY", "URL"], &[row])
}

/// The suite's APIs, called between two readings of `GET /_sim/calls`.
fn calls_delta_table(before: &Value, after: &Value) -> String {
    let count = |calls: &Value, key: &str| calls.get(key).and_then(Value::as_u64).unwrap_or(0);
    let rows: Vec<Vec<String>> = SUITE_APIS
        .iter()
        .map(|(key, label)| {
            let made = count(after, key).saturating_sub(count(before, key));
            vec![label.to_string(), made.to_string()]
        })
        .collect();
    render_rows(&["API", "CALLS"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calls_table_counts_only_this_part() {
        let before = json!({"create_link": 3, "get": 40, "total": 43});
        let after = json!({"create_link": 4, "get": 60, "get_suite_token": 1,
            "get_permanent_code": 1, "get_corp_token": 1, "total": 67});
        let table = calls_delta_table(&before, &after);
        let lines: Vec<Vec<&str>> = table.lines().map(|l| l.rsplitn(2, ' ').collect()).collect();
        assert_eq!(lines.len(), 5, "{table}");
        for line in &lines[1..] {
            assert_eq!(line[0], "1", "{table}");
        }
    }

    #[test]
    fn the_demo_aes_key_is_usable() {
        assert!(
            crate::wecom::crypto::CallbackCrypto::new(
                SUITE_CALLBACK_TOKEN,
                SUITE_AES_KEY,
                SUITE_ID
            )
            .is_ok()
        );
    }
}
