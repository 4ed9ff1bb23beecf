//! A service provider's suite end to end: the simulator plays WeCom for a third-party
//! suite (tickets, an authorising corp, the service APIs), the controller runs with its
//! callback endpoint, and a link is managed under the WeComApp the authorisation made.
//! A controller restart loses nothing (the ticket and the permanent code come back from
//! their Secrets); `cancel_auth` stops every write and says so in status; and no suite
//! secret, ticket, AuthCode, permanent code, callback key or token is ever logged or
//! shown in an object, an Event or a metric.

mod log_capture;
mod support;

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use log_capture::Captured;
use support::*;
use wecom_acq::api::{
    AUTH_CANCELLED_KEY, CallbackSpec, PERMANENT_CODE_KEY, SUITE_TICKET_KEY, SecretKeyRef, WeComApp,
    WeComSuite, WeComSuiteSpec, authorised_app_name, ticket_secret_name,
};
use wecom_acq::callback::{self, CallbackSettings};
use wecom_acq::metrics::CallbackEventLabels;
use wecom_acq::sim::{SimCallback, SimConfig};

const SUITE: &str = "acme";
const SUITE_ID: &str = "wwacmesuite01";
/// A custom-developed (代开发) app template's id.
const TEMPLATE_ID: &str = "dkacmetemplate01";
const SUITE_SECRET: &str = "acme-suite-secret-value-7f3a";
const CALLBACK_TOKEN: &str = "AcmeCallbackToken42";
const AES_KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
const LINK: &str = "spring";

/// The callback endpoint of one controller run.
struct Endpoint {
    stop: watch::Sender<bool>,
    served: JoinHandle<()>,
}

async fn serve_callbacks(env: &Env, addr: SocketAddr) -> Endpoint {
    let listener = TcpListener::bind(addr)
        .await
        .expect("bind the callback port");
    let (stop, stopped) = watch::channel(false);
    let run = &env.controller().running;
    let served = callback::serve_on(
        listener,
        run.context.clone(),
        run.triggers.clone(),
        CallbackSettings::default(),
        stopped,
    );
    Endpoint { stop, served }
}

impl Endpoint {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(WAIT, self.served).await;
    }
}

async fn secret_value(env: &Env, name: &str, key: &str) -> Option<String> {
    let secret: Secret = env.secrets().get_opt(name).await.ok()??;
    let bytes = secret.data?.remove(key)?;
    Some(String::from_utf8(bytes.0).expect("utf-8 secret"))
}

async fn wait_secret_value(env: &Env, name: &str, key: &str) -> String {
    wait_until(&format!("Secret {name} key {key}"), || {
        secret_value(env, name, key)
    })
    .await
}

/// Writes the suite, its Secrets, the app and the link as the cluster holds them into
/// files (spec and data only) and runs `wecom-acq plan` on them; stdout and stderr.
async fn plan_from_cluster(env: &Env, app: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let clean = |kind: &str, api_version: &str, name: &str, body: (&str, Value)| {
        let mut object = json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": { "name": name, "namespace": NS },
        });
        object[body.0] = body.1;
        wecom_acq::yaml::to_string(&object).unwrap()
    };
    let mut docs = Vec::new();
    for name in [
        "acme-suite".to_string(),
        ticket_secret_name(SUITE),
        app.to_string(),
    ] {
        let secret = env.secrets().get(&name).await.unwrap();
        docs.push(clean("Secret", "v1", &name, ("data", json!(secret.data))));
    }
    let api = "acquisition.wecom.dev/v1alpha1";
    let suites: Api<WeComSuite> = Api::namespaced(env.client.clone(), NS);
    let suite = suites.get(SUITE).await.unwrap();
    docs.push(clean("WeComSuite", api, SUITE, ("spec", json!(suite.spec))));
    docs.push(clean(
        "WeComApp",
        api,
        app,
        ("spec", json!(env.get_app(app).await.spec)),
    ));
    docs.push(clean(
        "AcquisitionLink",
        api,
        LINK,
        ("spec", json!(env.get_link(LINK).await.spec)),
    ));
    let file = dir.path().join("all.yaml");
    std::fs::write(&file, docs.join("---\n")).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wecom-acq"))
        .arg("plan")
        .arg("-f")
        .arg(&file)
        .env("RUST_LOG", "wecom_acq=debug")
        .output()
        .await
        .unwrap();
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `PUT /_sim/suite`: the simulator's suite, its callbacks sent to `callback_url`.
async fn configure_sim_suite(env: &Env, suite_id: &str, callback_url: &str) {
    env.sim_request(
        Method::PUT,
        "/_sim/suite",
        Some(json!({
            "suite_id": suite_id,
            "suite_secret": SUITE_SECRET,
            "token": CALLBACK_TOKEN,
            "encoding_aes_key": AES_KEY,
            "callback_url": callback_url,
        })),
    )
    .await;
}

fn suite_object(suite_id: &str, sim_base_url: &str) -> WeComSuite {
    let key = |key: &str| SecretKeyRef {
        name: "acme-suite".into(),
        key: key.into(),
    };
    WeComSuite::new(
        SUITE,
        WeComSuiteSpec {
            suite_id: suite_id.into(),
            secret_ref: key("suiteSecret"),
            callback: CallbackSpec {
                token_ref: key("token"),
                aes_key_ref: key("encodingAESKey"),
                receive_id: None,
            },
            api_base_url: Some(sim_base_url.into()),
            requests_per_minute: None,
        },
    )
}

#[tokio::test]
async fn an_authorised_corp_gets_links_until_it_cancels() {
    authorised_corp_scenario(SUITE_ID).await;
}

/// The same for a custom-developed app template: the permanent code is the app's secret,
/// used with gettoken (no get_corp_token).
#[tokio::test]
async fn a_custom_developed_app_gets_links_until_it_cancels() {
    authorised_corp_scenario(TEMPLATE_ID).await;
}

async fn authorised_corp_scenario(suite_id: &str) {
    let third_party = !suite_id.starts_with("dk");
    // Current-thread runtime: every task of the controller logs into the capture.
    let (captured, _guard) = Captured::install(tracing::Level::TRACE);
    // A port of our own for the callbacks, kept across the restart (WeCom's URL is fixed).
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let suite_url = format!("http://{addr}/suite/{NS}/{SUITE}");
    // The corp's customer-acquisition events come to the suite's URL too.
    let mut env = Env::with_sim_config(SimConfig {
        callback: Some(SimCallback {
            url: suite_url.clone(),
            token: CALLBACK_TOKEN.into(),
            aes_key: AES_KEY.into(),
            third_party_suite_id: Some(suite_id.into()),
        }),
        ..SimConfig::default()
    })
    .await;
    env.start_controller(fast_cadence()).await;
    let endpoint = serve_callbacks(&env, addr).await;

    env.apply_secret(
        "acme-suite",
        &[
            ("suiteSecret", SUITE_SECRET),
            ("token", CALLBACK_TOKEN),
            ("encodingAESKey", AES_KEY),
        ],
    )
    .await;
    let suites: Api<WeComSuite> = Api::namespaced(env.client.clone(), NS);
    suites
        .create(
            &PostParams::default(),
            &suite_object(suite_id, &env.sim.base_url()),
        )
        .await
        .unwrap();

    // WeCom starts pushing tickets once the suite's callback URL is set.
    configure_sim_suite(&env, suite_id, &suite_url).await;
    let ticket_secret = ticket_secret_name(SUITE);
    let mut tickets = vec![wait_secret_value(&env, &ticket_secret, SUITE_TICKET_KEY).await];
    let suite = env
        .wait_for(SUITE, "Ready after the first ticket", |s: &WeComSuite| {
            s.status
                .as_ref()
                .is_some_and(|st| st.last_ticket_time.is_some())
        })
        .await;
    assert!(
        suite
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // The corp authorises the suite: create_auth, then the controller's exchange.
    let authorised = env
        .sim_request(Method::POST, "/_sim/suite/auth", None)
        .await;
    let auth_code = authorised["auth_code"].as_str().unwrap().to_string();
    let app_name = authorised_app_name(SUITE, wecom_acq::sim::DEFAULT_CORP_ID);
    let permanent_code = wait_secret_value(&env, &app_name, PERMANENT_CODE_KEY).await;
    let app = env.wait_app_ready(&app_name).await;
    assert_eq!(app.spec.corp_id, wecom_acq::sim::DEFAULT_CORP_ID);
    assert_eq!(env.sim_call_count("get_permanent_code").await, 1);
    if third_party {
        assert_eq!(
            app.spec.suite.as_ref().map(|s| s.name.as_str()),
            Some(SUITE)
        );
        assert_eq!(env.sim_call_count("gettoken").await, 0, "no app secret");
        assert!(env.sim_call_count("get_corp_token").await >= 1);
    } else {
        assert_eq!(
            app.spec.suite, None,
            "an ordinary app: the code is its secret"
        );
        assert_eq!(env.sim_call_count("get_corp_token").await, 0);
        assert!(env.sim_call_count("gettoken").await >= 1);
    }

    // A link under the authorised corp's app.
    env.apply_link(LINK, link_spec(&app_name, "春季活动", &["zhangsan"]))
        .await;
    let link = env.wait_link_ready(LINK).await;
    let link_id = link.status.unwrap().link_id.unwrap();
    assert!(env.sim_link(&link_id).await.is_some(), "made in WeCom");
    // A customer added through the link: the event reaches the app's event handling.
    env.sim_request(
        Method::POST,
        &format!("/_sim/links/{link_id}/customers"),
        Some(json!({"count": 1})),
    )
    .await;
    let added = env
        .controller()
        .metrics
        .callback_events
        .get_or_create(&CallbackEventLabels {
            change_type: "add_external_contact".into(),
        })
        .clone();
    wait_until("the corp's event handled", || async {
        (added.get() == 1).then_some(())
    })
    .await;

    // `plan` from files (the suite, its Secret, the ticket and permanent-code Secrets
    // exported from the cluster): the link is in line, through get_corp_token.
    let plan = plan_from_cluster(&env, &app_name).await;
    assert!(
        plan.contains("Plan: 0 to create, 0 to update, 1 unchanged."),
        "{plan}"
    );
    for secret in [SUITE_SECRET, permanent_code.as_str(), tickets[0].as_str()] {
        assert!(!plan.contains(secret), "plan printed a credential:\n{plan}");
    }

    // Restart: the new controller has no ticket, token or code in memory.
    endpoint.stop().await;
    env.stop_controller().await;
    // A suite asks its token with the stored ticket; a custom-developed app gettoken.
    let token_api = if third_party {
        "get_suite_token"
    } else {
        "gettoken"
    };
    let tokens_before = env.sim_call_count(token_api).await;
    env.start_controller(fast_cadence()).await;
    let endpoint = serve_callbacks(&env, addr).await;
    env.patch_link_spec(LINK, json!({"range": {"userList": ["zhangsan", "lisi"]}}))
        .await;
    env.wait_link_ready(LINK).await;
    let in_wecom = env.sim_link(&link_id).await.unwrap();
    assert_eq!(in_wecom["range"]["user_list"], json!(["lisi", "zhangsan"]));
    assert!(
        env.sim_call_count(token_api).await > tokens_before,
        "the new controller asked a token with what its Secrets hold"
    );
    assert_eq!(
        env.sim_call_count("get_permanent_code").await,
        1,
        "the permanent code came back from its Secret"
    );

    // Ten minutes later WeCom pushes the next ticket, which replaces the stored one.
    env.sim_request(
        Method::POST,
        "/_sim/clock",
        Some(json!({"advance_secs": 600})),
    )
    .await;
    let next = wait_until("the next ticket stored", || async {
        secret_value(&env, &ticket_secret, SUITE_TICKET_KEY)
            .await
            .filter(|t| t != &tickets[0])
    })
    .await;
    tickets.push(next);

    // The corp cancels: the app says so, and the link makes no write any more.
    env.sim_request(Method::DELETE, "/_sim/suite/auth", None)
        .await;
    let app = env
        .wait_app_condition(&app_name, "Ready", "False", "AuthorizationCancelled")
        .await;
    let (_, _, message) = app_condition(&app, "Ready").unwrap();
    assert!(message.contains("cancelled its authorisation"), "{message}");
    assert_eq!(
        secret_value(&env, &app_name, PERMANENT_CODE_KEY).await,
        None
    );
    assert!(
        secret_value(&env, &app_name, AUTH_CANCELLED_KEY)
            .await
            .is_some()
    );
    let link = env
        .wait_for(LINK, "Synced=False after the cancel", |l| {
            link_condition(l, "Synced")
                .is_some_and(|(s, _, m)| s == "False" && m.contains("cancelled"))
        })
        .await;
    let writes = env.mutating_calls().await;
    let edited = env
        .patch_link_spec(LINK, json!({"range": {"userList": ["wangwu"]}}))
        .await;
    env.wait_for(
        LINK,
        "a pass over the edit, refused",
        |l: &wecom_acq::api::AcquisitionLink| {
            l.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Synced"
                        && c.status == "False"
                        && c.observed_generation == edited.metadata.generation
                        && c.message.contains("cancelled")
                })
            })
        },
    )
    .await;
    assert_eq!(
        env.mutating_calls().await,
        writes,
        "no write after cancel_auth"
    );
    assert_eq!(
        env.sim_link(&link_id).await.unwrap()["range"]["user_list"],
        json!(["lisi", "zhangsan"])
    );
    let suite = suites.get(SUITE).await.unwrap();
    let corps = suite.status.unwrap().corps;
    assert_eq!(corps.len(), 1);
    assert_eq!(corps[0].state, "Cancelled");

    // Nothing secret anywhere.
    let mut shown = vec![captured.text()];
    for value in [
        serde_json::to_string(&suites.get(SUITE).await.unwrap()).unwrap(),
        serde_json::to_string(&env.get_app(&app_name).await).unwrap(),
        serde_json::to_string(&env.get_link(LINK).await).unwrap(),
        serde_json::to_string(&link).unwrap(),
        env.controller().metrics.render(),
    ] {
        shown.push(value);
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), NS);
    for event in events.list(&ListParams::default()).await.unwrap() {
        shown.push(serde_json::to_string(&event).unwrap());
    }
    let mut secrets = vec![
        SUITE_SECRET.to_string(),
        CALLBACK_TOKEN.to_string(),
        AES_KEY.to_string(),
        auth_code,
        permanent_code,
    ];
    secrets.extend(tickets);
    for text in &shown {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a credential leaked into: {}",
                &text[..text.len().min(2000)]
            );
        }
        for (at, _) in text.match_indices("access_token=") {
            let rest = &text[at + "access_token=".len()..];
            assert!(
                rest.starts_with("REDACTED") || rest.starts_with('&') || rest.is_empty(),
                "a token leaked: {}",
                &rest[..rest.len().min(80)]
            );
        }
    }
    assert!(
        shown[0].contains("suite callback accepted"),
        "the capture works"
    );
    let apps: Vec<WeComApp> = env.apps().list(&ListParams::default()).await.unwrap().items;
    assert_eq!(apps.len(), 1, "one app for one corp");
    endpoint.stop().await;
}

#[tokio::test]
async fn the_simulator_refuses_what_wecom_refuses() {
    let env = Env::without_controller().await;
    // Nobody listens: the test reads the codes, not the callbacks.
    configure_sim_suite(&env, SUITE_ID, "http://127.0.0.1:9/suite/default/acme").await;
    let http = reqwest::Client::new();
    let call = |path: &str, token: Option<&str>, body: Value| {
        let mut url = format!("{}{path}", env.sim.base_url());
        if let Some(token) = token {
            url.push_str(&format!("?suite_access_token={token}"));
        }
        let request = http.post(url).json(&body);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let suite_token = |secret: &str, ticket: &str| {
        call(
            "/cgi-bin/service/get_suite_token",
            None,
            json!({"suite_id": SUITE_ID, "suite_secret": secret, "suite_ticket": ticket}),
        )
    };
    assert_eq!(suite_token("wrong", "t").await["errcode"], 40080);
    assert_eq!(
        suite_token(SUITE_SECRET, "not-a-ticket").await["errcode"],
        40085
    );
    let unknown = call(
        "/cgi-bin/service/get_suite_token",
        None,
        json!({"suite_id": "wwother", "suite_secret": SUITE_SECRET, "suite_ticket": "t"}),
    )
    .await;
    assert_eq!(unknown["errcode"], 40083);
    let code = call(
        "/cgi-bin/service/v2/get_permanent_code",
        Some("not-a-token"),
        json!({"auth_code": "x"}),
    )
    .await;
    assert_eq!(code["errcode"], 40082);
    let corp = call(
        "/cgi-bin/service/get_corp_token",
        Some("not-a-token"),
        json!({"auth_corpid": "wwsimcorp", "permanent_code": "x"}),
    )
    .await;
    assert_eq!(corp["errcode"], 40082);
}
