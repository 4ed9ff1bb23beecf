//! The WeCom client against a hostile or broken server at `apiBaseUrl`: the simulator's
//! raw faults (`POST /_sim/faults` with `raw`) answer overflowing and negative numbers,
//! wrong types, missing fields, endless cursors, 8 MiB answers and HTML pages. Each gives
//! its typed error, names the API and the field, leaks no secret, and panics nowhere.

use std::time::Duration;

use futures::TryStreamExt;
use serde_json::{Value, json};
use wecom_acq::sim::{self, SimConfig, SimHandle};
use wecom_acq::wecom::client::{CUSTOMER_PAGE_LIMIT, LIST_LINK_MAX_PAGES};
use wecom_acq::wecom::{Api, ClientConfig, RetryPolicy, WeComClient, WeComError};

/// An A1 page with a new cursor every time: a listing that never ends.
const ENDLESS_LIST: &str = r#"{"errcode":0,"link_id_list":["a{{n}}"],"next_cursor":"c{{n}}"}"#;

/// `error` ends a listing of `api` with a pagination error whose message has `needle`.
fn assert_pagination(error: &WeComError, api: Api, needle: &str) {
    assert!(
        matches!(error, WeComError::Pagination { api: got, message } if *got == api && message.contains(needle)),
        "{error:?}"
    );
    assert_eq!(error.metric_label(), "pagination");
    assert!(error.is_bad_answer() && !error.is_retryable());
}

struct World {
    sim: SimHandle,
    client: WeComClient,
    admin: reqwest::Client,
}

impl World {
    async fn start() -> Self {
        let sim = sim::spawn(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let client = WeComClient::new(ClientConfig {
            base_url: sim.base_url(),
            requests_per_minute: 60_000,
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(20),
                max_elapsed: Duration::from_secs(10),
            },
            request_timeout: Duration::from_secs(10),
            ..ClientConfig::new(sim::DEFAULT_CORP_ID, sim::DEFAULT_SECRET)
        })
        .unwrap();
        Self {
            sim,
            client,
            admin: reqwest::Client::new(),
        }
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self
            .admin
            .request(method, format!("{}/_sim/{path}", self.sim.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "/_sim/{path}: {response:?}");
        response.json().await.unwrap_or(Value::Null)
    }

    /// The next `times` answers of `api` (omitted: all) are `raw` (status, contentType,
    /// body, padTo).
    async fn raw(&self, api: Api, raw: Value, times: Option<u32>) {
        let mut fault = json!({"api": api.name(), "raw": raw});
        if let Some(times) = times {
            fault["times"] = json!(times);
        }
        self.admin(reqwest::Method::POST, "faults", fault).await;
    }

    /// The next answer of `api` is `body` as JSON with HTTP 200.
    async fn answer(&self, api: Api, body: Value) {
        self.raw(
            api,
            json!({"contentType": "application/json", "body": body.to_string()}),
            Some(1),
        )
        .await;
    }

    /// The error that ends listing the app's links (A1).
    async fn list_error(&self) -> WeComError {
        let listed: Result<Vec<_>, _> = self.client.list_links().try_collect().await;
        listed.expect_err("the listing fails")
    }

    /// The error that ends listing a link's customers (A6).
    async fn customers_error(&self, link_id: &str) -> WeComError {
        let listed: Result<Vec<_>, _> = self.client.customers(link_id).try_collect().await;
        listed.expect_err("the listing fails")
    }

    async fn calls(&self, api: Api) -> u64 {
        let calls = self.admin(reqwest::Method::GET, "calls", Value::Null).await;
        calls[api.name()].as_u64().unwrap_or(0)
    }

    async fn create(&self) -> String {
        let request = wecom_acq::wecom::types::CreateLinkRequest {
            link_name: "hostile".into(),
            range: wecom_acq::wecom::types::LinkRange {
                user_list: vec!["zhangsan".into()],
                department_list: vec![],
            },
            ..Default::default()
        };
        self.client.create_link(&request).await.unwrap().link_id
    }
}

/// `error` is a decode error of `api` at `path`, without the app secret in any text.
fn assert_decode(error: &WeComError, api: Api, path: &str) {
    match error {
        WeComError::Decode {
            api: got, path: p, ..
        } => {
            assert_eq!((*got, p.as_str()), (api, path), "{error}");
        }
        other => panic!("expected a decode error of {api} at {path}, got {other:?}"),
    }
    assert_eq!(error.metric_label(), "decode");
    assert!(error.is_bad_answer() && !error.is_retryable(), "{error:?}");
    for text in [error.to_string(), format!("{error:?}"), error.summary()] {
        assert!(!text.contains(sim::DEFAULT_SECRET), "secret leaked: {text}");
    }
}

#[tokio::test]
async fn an_overflowing_or_negative_expires_in_is_a_decode_error_not_a_panic() {
    let world = World::start().await;
    world
        .answer(
            Api::GetToken,
            json!({"errcode": 0, "access_token": "tok", "expires_in": u64::MAX}),
        )
        .await;
    let error = world.client.quota().await.unwrap_err();
    assert_decode(&error, Api::GetToken, "expires_in");
    assert!(
        error.to_string().contains("18446744073709551615"),
        "{error}"
    );

    world
        .raw(
            Api::GetToken,
            json!({"body": r#"{"errcode":0,"access_token":"tok","expires_in":-7200}"#}),
            Some(1),
        )
        .await;
    let error = world.client.quota().await.unwrap_err();
    assert_decode(&error, Api::GetToken, "expires_in");

    // The next, well-formed answer works: nothing was poisoned.
    world.client.quota().await.unwrap();
}

#[tokio::test]
async fn out_of_range_numbers_name_the_field() {
    let world = World::start().await;
    let link_id = world.create().await;

    world
        .answer(Api::Quota, json!({"errcode": 0, "total": -1, "balance": 5}))
        .await;
    assert_decode(
        &world.client.quota().await.unwrap_err(),
        Api::Quota,
        "total",
    );

    world
        .answer(
            Api::Quota,
            json!({"errcode": 0, "total": 1, "balance": 5,
                   "quota_list": [{"expire_date": i64::MAX, "balance": 5}]}),
        )
        .await;
    assert_decode(
        &world.client.quota().await.unwrap_err(),
        Api::Quota,
        "quota_list[0].expire_date",
    );

    world
        .answer(
            Api::Statistic,
            json!({"errcode": 0, "click_link_customer_cnt": u64::MAX, "new_customer_cnt": 1}),
        )
        .await;
    assert_decode(
        &world.client.statistic(&link_id, 0, 1).await.unwrap_err(),
        Api::Statistic,
        "click_link_customer_cnt",
    );

    world
        .answer(
            Api::GetLink,
            json!({"errcode": 0, "link": {"link_name": "n", "url": "u", "create_time": -5},
                   "range": {"user_list": ["zhangsan"]}}),
        )
        .await;
    assert_decode(
        &world.client.get_link(&link_id).await.unwrap_err(),
        Api::GetLink,
        "link.create_time",
    );
}

#[tokio::test]
async fn wrong_types_and_missing_fields_name_the_field() {
    let world = World::start().await;
    let link_id = world.create().await;

    world
        .answer(
            Api::GetLink,
            json!({"errcode": 0, "link": "cawcde", "range": {}}),
        )
        .await;
    assert_decode(
        &world.client.get_link(&link_id).await.unwrap_err(),
        Api::GetLink,
        "link",
    );

    // A wrong value that happens to be the secret is quoted, then scrubbed.
    world
        .answer(
            Api::GetLink,
            json!({"errcode": 0, "link": {"link_name": "n", "url": "u",
                   "create_time": sim::DEFAULT_SECRET}, "range": {}}),
        )
        .await;
    assert_decode(
        &world.client.get_link(&link_id).await.unwrap_err(),
        Api::GetLink,
        "link.create_time",
    );

    world
        .answer(
            Api::Customer,
            json!({"errcode": 0, "customer_list": [{"external_userid": 5}], "next_cursor": ""}),
        )
        .await;
    let error = world.customers_error(&link_id).await;
    assert_decode(&error, Api::Customer, "customer_list[0].external_userid");

    world.answer(Api::Quota, json!({"errcode": 0})).await;
    let error = world.client.quota().await.unwrap_err();
    assert_decode(&error, Api::Quota, ".");
    assert!(
        error.to_string().contains("missing field `total`"),
        "{error}"
    );

    world
        .answer(Api::GetLink, json!({"errcode": 0, "range": {}}))
        .await;
    let error = world.client.get_link(&link_id).await.unwrap_err();
    assert_decode(&error, Api::GetLink, ".");
    assert!(
        error.to_string().contains("missing field `link`"),
        "{error}"
    );

    world
        .answer(
            Api::ListLink,
            json!({"errcode": "zero", "link_id_list": []}),
        )
        .await;
    let error = world.list_error().await;
    assert_decode(&error, Api::ListLink, "errcode");
}

#[tokio::test]
async fn an_html_page_is_not_json_naming_status_and_content_type() {
    let world = World::start().await;
    world
        .raw(
            Api::GetToken,
            json!({"status": 200, "contentType": "text/html; charset=utf-8",
                   "body": "<html><body>Please log in to the proxy</body></html>"}),
            Some(1),
        )
        .await;
    let error = world.client.quota().await.unwrap_err();
    assert!(
        matches!(
            &error,
            WeComError::NotJson { api: Api::GetToken, status: 200, content_type }
                if content_type.contains("text/html")
        ),
        "{error:?}"
    );
    assert_eq!(error.metric_label(), "not_json");
    assert_eq!(world.calls(Api::GetToken).await, 1, "not retried");
    let summary = error.summary();
    assert!(
        summary.contains("HTTP 200")
            && summary.contains("text/html")
            && !summary.contains("corpsecret"),
        "{summary}"
    );

    // Without a content type, and with a non-JSON error page on a 4xx.
    world
        .raw(Api::Quota, json!({"status": 200, "body": "OK"}), Some(1))
        .await;
    let error = world.client.quota().await.unwrap_err();
    assert!(
        matches!(&error, WeComError::NotJson { content_type, .. } if content_type == "no content type"),
        "{error:?}"
    );
    world
        .raw(
            Api::Quota,
            json!({"status": 403, "contentType": "text/html", "body": "<html>denied</html>"}),
            Some(1),
        )
        .await;
    assert_eq!(
        world.client.quota().await.unwrap_err(),
        WeComError::Http {
            api: Api::Quota,
            status: 403,
            content_type: "content type \"text/html\"".into(),
        }
    );

    // A gateway's 502 page is retried as a 5xx, and still says what answered.
    world
        .raw(
            Api::Quota,
            json!({"status": 502, "contentType": "text/html", "body": "<html>Bad Gateway</html>"}),
            Some(3),
        )
        .await;
    let error = world.client.quota().await.unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("answered HTTP 502 with content type \"text/html\""),
        "{error}"
    );
    assert!(matches!(
        error,
        WeComError::RetriesExhausted { attempts: 3, .. }
    ));
}

#[tokio::test]
async fn an_8_mib_answer_is_refused_without_buffering_it() {
    let world = World::start().await;
    world
        .raw(
            Api::Quota,
            json!({"contentType": "application/json",
                   "body": r#"{"errcode":0,"total":1,"balance":1}"#, "padTo": 8 * 1024 * 1024}),
            Some(1),
        )
        .await;
    let error = world.client.quota().await.unwrap_err();
    assert_eq!(
        error,
        WeComError::TooLarge {
            api: Api::Quota,
            limit: 4 * 1024 * 1024
        }
    );
    assert_eq!(error.metric_label(), "too_large");
    assert!(error.to_string().contains("4 MiB"), "{error}");
    assert_eq!(world.calls(Api::Quota).await, 1, "not retried");

    // Just under the cap is read and decoded.
    world
        .raw(
            Api::Quota,
            json!({"contentType": "application/json",
                   "body": r#"{"errcode":0,"total":1,"balance":1}"#, "padTo": 4 * 1024 * 1024 - 1}),
            Some(1),
        )
        .await;
    assert_eq!(world.client.quota().await.unwrap().balance, 1);
}

#[tokio::test]
async fn a_cursor_that_comes_back_ends_the_listing() {
    let world = World::start().await;
    world
        .raw(Api::ListLink, json!({"body": ENDLESS_LIST}), Some(2))
        .await;
    world
        .answer(
            Api::ListLink,
            json!({"errcode": 0, "link_id_list": ["a3"], "next_cursor": "c1"}),
        )
        .await;
    let error = world.list_error().await;
    assert_pagination(&error, Api::ListLink, "second time");
    assert_eq!(world.calls(Api::ListLink).await, 3);
}

#[tokio::test]
async fn an_endless_listing_stops_at_the_page_cap() {
    let world = World::start().await;
    world
        .raw(Api::ListLink, json!({"body": ENDLESS_LIST}), None)
        .await;
    let error = world.list_error().await;
    assert_pagination(&error, Api::ListLink, "pages");
    assert_eq!(
        world.calls(Api::ListLink).await,
        u64::from(LIST_LINK_MAX_PAGES)
    );
}

#[tokio::test]
async fn a_page_longer_than_asked_for_is_refused() {
    let world = World::start().await;
    let link_id = world.create().await;
    let customers: Vec<Value> = (0..=CUSTOMER_PAGE_LIMIT)
        .map(|i| json!({"external_userid": format!("wm{i}")}))
        .collect();
    world
        .answer(
            Api::Customer,
            json!({"errcode": 0, "customer_list": customers, "next_cursor": ""}),
        )
        .await;
    let error = world.customers_error(&link_id).await;
    assert_pagination(&error, Api::Customer, "1001 items");
}

#[tokio::test]
async fn raw_faults_are_checked_when_added() {
    let world = World::start().await;
    for bad in [
        json!({"api": "gettoken", "raw": {"status": 42}}),
        json!({"api": "gettoken", "raw": {"padTo": 1u64 << 40}}),
        json!({"api": "gettoken", "errcode": -1, "raw": {}}),
        json!({"api": "gettoken", "raw": {"contentType": "a\nb"}}),
    ] {
        let response = world
            .admin
            .post(format!("{}/_sim/faults", world.sim.base_url()))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
}
