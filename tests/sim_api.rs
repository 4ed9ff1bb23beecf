//! Drives the WeCom simulator over loopback HTTP with raw JSON, as WeCom's clients would:
//! token rules, methods, validation codes, CRUD, pagination under concurrent change,
//! statistics windows, quota, faults, the frequency limit and the admin API.

mod log_capture;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use log_capture::Captured;
use reqwest::StatusCode;
use serde_json::{Value, json};
use wecom_acq::sim::{self, OrgChart, OrgSpec, SimConfig, SimHandle};
use wecom_acq::wecom::Api;

const DAY: i64 = 86_400;

struct Sim {
    handle: SimHandle,
    http: reqwest::Client,
    base: String,
}

impl Sim {
    async fn start(config: SimConfig) -> Sim {
        let handle = sim::spawn(config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let base = handle.base_url();
        Sim {
            handle,
            http: reqwest::Client::new(),
            base,
        }
    }

    async fn default() -> Sim {
        Sim::start(SimConfig::default()).await
    }

    async fn gettoken_raw(&self, corpid: &str, secret: &str) -> Value {
        self.http
            .get(format!("{}{}", self.base, Api::GetToken.path()))
            .query(&[("corpid", corpid), ("corpsecret", secret)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn token(&self) -> String {
        let v = self.gettoken_raw("wwsimcorp", "sim-secret").await;
        assert_eq!(v["errcode"], 0, "{v}");
        v["access_token"].as_str().unwrap().to_string()
    }

    /// Calls an API with its proper method; the answer must be HTTP 200.
    async fn call(&self, api: Api, token: Option<&str>, body: Value) -> Value {
        let url = format!("{}{}", self.base, api.path());
        let req = if api.is_get() {
            self.http.get(url)
        } else {
            self.http.post(url).json(&body)
        };
        let req = match token {
            Some(t) => req.query(&[("access_token", t)]),
            None => req,
        };
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    async fn ok(&self, api: Api, token: &str, body: Value) -> Value {
        let v = self.call(api, Some(token), body).await;
        assert_eq!(v["errcode"], 0, "{api}: {v}");
        assert_eq!(v["errmsg"], "ok");
        v
    }

    async fn create(&self, token: &str, name: &str, users: &[&str]) -> String {
        let v = self
            .ok(
                Api::CreateLink,
                token,
                json!({"link_name": name, "range": {"user_list": users}}),
            )
            .await;
        v["link"]["link_id"].as_str().unwrap().to_string()
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    async fn admin_ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.admin(method, path, body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
        v
    }

    async fn state(&self) -> Value {
        self.admin_ok(reqwest::Method::GET, "/_sim/state", None)
            .await
    }

    async fn advance(&self, secs: i64) -> i64 {
        let v = self
            .admin_ok(
                reqwest::Method::POST,
                "/_sim/clock",
                Some(json!({ "advance_secs": secs })),
            )
            .await;
        v["now"].as_i64().unwrap()
    }

    async fn list_all(&self, token: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let v = self
                .ok(
                    Api::ListLink,
                    token,
                    json!({"limit": 100, "cursor": cursor}),
                )
                .await;
            out.extend(strings(&v["link_id_list"]));
            cursor = v["next_cursor"].as_str().unwrap().to_string();
            if cursor.is_empty() {
                return out;
            }
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn assert_code(v: &Value, code: i64) {
    assert_eq!(v["errcode"], code, "{v}");
    assert!(v["errmsg"].as_str().unwrap().contains("hint: ["), "{v}");
}

use reqwest::Method as M;

#[tokio::test]
async fn token_errors_follow_wecom_codes() {
    let sim = Sim::default().await;
    let wrong_corp = sim.gettoken_raw("wwother", "sim-secret").await;
    assert_code(&wrong_corp, 40013);
    let wrong_secret = sim.gettoken_raw("wwsimcorp", "not-the-secret").await;
    assert_code(&wrong_secret, 40001);
    assert!(!wrong_secret.to_string().contains("not-the-secret"));
    assert!(!wrong_secret.to_string().contains("sim-secret"));

    let missing = sim.call(Api::GetLink, None, json!({"link_id": "x"})).await;
    assert_code(&missing, 41001);
    let unknown = sim
        .call(Api::GetLink, Some("made-up-token"), json!({"link_id": "x"}))
        .await;
    assert_code(&unknown, 40014);
    assert!(!unknown.to_string().contains("made-up-token"));

    let token = sim.token().await;
    assert_eq!(sim.token().await, token, "same token within its lifetime");
    sim.ok(Api::Quota, &token, json!({})).await;
    sim.advance(7200).await;
    let expired = sim.call(Api::Quota, Some(&token), json!({})).await;
    assert_code(&expired, 42001);
    assert!(!expired.to_string().contains(&token));
    let fresh = sim.token().await;
    assert_ne!(fresh, token);
    sim.ok(Api::Quota, &fresh, json!({})).await;
    sim.handle.shutdown().await;
}

#[tokio::test]
async fn token_ttl_is_configurable_and_tokens_can_be_expired() {
    let sim = Sim::start(SimConfig {
        token_ttl: Duration::from_secs(60),
        ..SimConfig::default()
    })
    .await;
    let v = sim.gettoken_raw("wwsimcorp", "sim-secret").await;
    assert_eq!(v["expires_in"], 60);
    let token = v["access_token"].as_str().unwrap().to_string();
    let expired = sim.admin_ok(M::POST, "/_sim/tokens/expire", None).await;
    assert_eq!(expired["expired"], 1);
    assert_code(&sim.call(Api::Quota, Some(&token), json!({})).await, 42001);
    let fresh = sim.token().await;
    assert_ne!(fresh, token);
    sim.ok(Api::Quota, &fresh, json!({})).await;
}

#[tokio::test]
async fn wrong_http_method_is_40058() {
    let sim = Sim::default().await;
    let token = sim.token().await;
    let a8_by_post: Value = sim
        .http
        .post(format!("{}{}", sim.base, Api::Quota.path()))
        .query(&[("access_token", &token)])
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_code(&a8_by_post, 40058);
    let a1_by_get: Value = sim
        .http
        .get(format!("{}{}", sim.base, Api::ListLink.path()))
        .query(&[("access_token", &token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_code(&a1_by_get, 40058);
}

#[tokio::test]
async fn malformed_json_is_a_data_format_error() {
    let sim = Sim::default().await;
    let token = sim.token().await;
    let v: Value = sim
        .http
        .post(format!("{}{}", sim.base, Api::CreateLink.path()))
        .query(&[("access_token", &token)])
        .body("{not json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_code(&v, 47001);
    // A JSON object with a wrongly typed field is an invalid parameter.
    let typed = sim
        .call(
            Api::CreateLink,
            Some(&token),
            json!({"link_name": 5, "range": {}}),
        )
        .await;
    assert_code(&typed, 40058);
}

#[tokio::test]
async fn create_validation_uses_wecom_codes() {
    let sim = Sim::default().await;
    let token = sim.token().await;
    // A corp with a department of 600 people (the built-in one stays under 500).
    let big: Vec<String> = (1..=600).map(|i| format!("b{i:04}")).collect();
    sim.admin_ok(
        M::PUT,
        "/_sim/org",
        Some(json!({"departments": [{"id": 3, "users": big}], "users": ["zhangsan", "lisi"]})),
    )
    .await;
    let create = |body: Value| {
        let sim = &sim;
        let token = token.clone();
        async move { sim.call(Api::CreateLink, Some(&token), body).await }
    };
    // 30 characters (90 bytes) is fine, 31 is not.
    let thirty = "获".repeat(30);
    let ok = create(json!({"link_name": thirty, "range": {"user_list": ["zhangsan"]}})).await;
    assert_eq!(ok["errcode"], 0, "{ok}");
    let long =
        create(json!({"link_name": "获".repeat(31), "range": {"user_list": ["zhangsan"]}})).await;
    assert_code(&long, 40058);
    assert_code(
        &create(json!({"link_name": "", "range": {"user_list": ["zhangsan"]}})).await,
        40058,
    );
    assert_code(&create(json!({"link_name": "n", "range": {}})).await, 40058);
    assert_code(&create(json!({"link_name": "n"})).await, 40058);
    assert_code(
        &create(json!({"link_name": "n", "range": {"user_list": ["ghost"]}})).await,
        60011,
    );
    assert_code(
        &create(json!({"link_name": "n", "range": {"department_list": [77]}})).await,
        60011,
    );
    // Department 3 has 600 people.
    assert_code(
        &create(json!({"link_name": "n", "range": {"department_list": [3]}})).await,
        40058,
    );
    let bad_priority = create(json!({"link_name": "n", "range": {"user_list": ["lisi"]},
        "priority_option": {"priority_type": 3}}))
    .await;
    assert_code(&bad_priority, 40058);
    let type2_without_list = create(json!({"link_name": "n", "range": {"user_list": ["lisi"]},
        "priority_option": {"priority_type": 2}}))
    .await;
    assert_code(&type2_without_list, 40058);
    let type2 = create(json!({"link_name": "n", "range": {"user_list": ["lisi"]},
        "priority_option": {"priority_type": 2, "priority_userid_list": ["lisi"]}}))
    .await;
    assert_eq!(type2["errcode"], 0, "{type2}");
    // Only the two valid links exist.
    assert_eq!(sim.state().await["links"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn five_hundred_people_limit_counts_sub_departments_once() {
    let users = |from: usize, to: usize| -> Vec<String> {
        (from..to).map(|i| format!("p{i:03}")).collect()
    };
    // Department 2 has p000..p299, its sub-department 5 has p200..p449 (overlap of 100),
    // department 6 has p450..p500 (51 people).
    let org = OrgChart::from_spec(OrgSpec {
        departments: vec![
            sim::org::DepartmentSpec {
                id: 2,
                users: users(0, 300),
                ..Default::default()
            },
            sim::org::DepartmentSpec {
                id: 5,
                parent_id: Some(2),
                users: users(200, 450),
                ..Default::default()
            },
            sim::org::DepartmentSpec {
                id: 6,
                users: users(450, 501),
                ..Default::default()
            },
        ],
        users: vec![],
    })
    .unwrap();
    let sim = Sim::start(SimConfig {
        org,
        ..SimConfig::default()
    })
    .await;
    let token = sim.token().await;
    // 2 (with 5) = 450 people; plus 50 of department 6 named directly = 500: accepted.
    let fifty: Vec<String> = users(450, 500);
    let ok = sim
        .call(
            Api::CreateLink,
            Some(&token),
            json!({"link_name": "n", "range": {"department_list": [2], "user_list": fifty}}),
        )
        .await;
    assert_eq!(ok["errcode"], 0, "{ok}");
    // Department 6 adds one more person: 501.
    let over = sim
        .call(
            Api::CreateLink,
            Some(&token),
            json!({"link_name": "n", "range": {"department_list": [2, 6], "user_list": fifty}}),
        )
        .await;
    assert_code(&over, 40058);
    assert!(over["errmsg"].as_str().unwrap().contains("501"), "{over}");
}

#[tokio::test]
async fn put_org_replaces_the_chart() {
    let sim = Sim::default().await;
    let token = sim.token().await;
    let old_link = sim.create(&token, "old", &["zhangsan"]).await;
    let v = sim
        .admin_ok(
            M::PUT,
            "/_sim/org",
            Some(json!({
            "departments": [{"id": 2, "parent_id": 1, "users": ["u1", "u2"]}],
            "users": ["extra"]})),
        )
        .await;
    assert_eq!(v["users"], 3);
    // A link whose people all left the corp cannot receive customers.
    let (status, err) = sim
        .admin(
            M::POST,
            &format!("/_sim/links/{old_link}/customers"),
            Some(json!({"count": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_code(
        &sim.call(
            Api::CreateLink,
            Some(&token),
            json!({"link_name": "n", "range": {"user_list": ["zhangsan"]}}),
        )
        .await,
        60011,
    );
    sim.create(&token, "n", &["extra", "u1"]).await;
    let (status, err) = sim
        .admin(
            M::PUT,
            "/_sim/org",
            Some(json!({"departments": [{"id": 2, "parent_id": 9}]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("parent 9"), "{err}");
}

#[tokio::test]
async fn crud_round_trip_and_update_replaces_range() {
    let sim = Sim::default().await;
    let token = sim.token().await;
    let created = sim
        .ok(
            Api::CreateLink,
            &token,
            json!({"link_name": "spring",
            "range": {"user_list": ["zhangsan", "lisi"], "department_list": [2]},
            "skip_verify": false}),
        )
        .await;
    let link = &created["link"];
    let id = link["link_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("cawcd") && id.len() == 19, "{id}");
    assert!(id[5..].chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(link["url"], format!("https://work.weixin.qq.com/ca/{id}"));
    assert!(link["create_time"].as_i64().unwrap() > 1_600_000_000);

    let got = sim.ok(Api::GetLink, &token, json!({"link_id": id})).await;
    assert_eq!(got["link"]["link_name"], "spring");
    assert_eq!(got["link"]["skip_verify"], false);
    assert_eq!(
        got["range"],
        json!({"user_list": ["zhangsan", "lisi"], "department_list": [2]})
    );

    // Only the range: the name and skip_verify stay, the range is replaced whole.
    sim.ok(
        Api::UpdateLink,
        &token,
        json!({"link_id": id, "range": {"user_list": ["wangwu"]}}),
    )
    .await;
    let got = sim.ok(Api::GetLink, &token, json!({"link_id": id})).await;
    assert_eq!(got["link"]["link_name"], "spring");
    assert_eq!(got["link"]["skip_verify"], false);
    assert_eq!(
        got["range"],
        json!({"user_list": ["wangwu"], "department_list": []})
    );

    // A refused update changes nothing.
    assert_code(
        &sim.call(
            Api::UpdateLink,
            Some(&token),
            json!({"link_id": id, "link_name": "x".repeat(31), "range": {"user_list": ["lisi"]}}),
        )
        .await,
        40058,
    );
    let got = sim.ok(Api::GetLink, &token, json!({"link_id": id})).await;
    assert_eq!(got["range"]["user_list"], json!(["wangwu"]));

    sim.ok(
        Api::UpdateLink,
        &token,
        json!({"link_id": id, "link_name": "summer", "skip_verify": true}),
    )
    .await;
    let got = sim.ok(Api::GetLink, &token, json!({"link_id": id})).await;
    assert_eq!(got["link"]["link_name"], "summer");
    assert_eq!(got["link"]["skip_verify"], true);

    sim.ok(Api::DeleteLink, &token, json!({"link_id": id}))
        .await;
    for api in [
        Api::GetLink,
        Api::UpdateLink,
        Api::DeleteLink,
        Api::Customer,
    ] {
        let v = sim.call(api, Some(&token), json!({"link_id": id})).await;
        assert_code(&v, 40058);
        assert!(
            v["errmsg"].as_str().unwrap().contains("invalid link_id"),
            "{v}"
        );
    }
    let stat = sim
        .call(
            Api::Statistic,
            Some(&token),
            json!({"link_id": id, "start_time": 1, "end_time": 2}),
        )
        .await;
    assert_code(&stat, 40058);
    assert!(sim.state().await["links"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn list_pagination_survives_inserts_and_deletes_between_pages() {
    let sim = Sim::default().await;
    let token = sim.token().await;
    let mut original = Vec::new();
    for i in 0..250 {
        original.push(sim.create(&token, &format!("l{i}"), &["zhangsan"]).await);
    }
    let page = |cursor: String| {
        let sim = &sim;
        let token = token.clone();
        async move {
            sim.ok(
                Api::ListLink,
                &token,
                json!({"limit": 100, "cursor": cursor}),
            )
            .await
        }
    };
    let p1 = page(String::new()).await;
    let mut seen = strings(&p1["link_id_list"]);
    assert_eq!(seen, original[..100]);
    let c1 = p1["next_cursor"].as_str().unwrap().to_string();
    assert!(!c1.is_empty());

    // Between pages: delete links already seen and links not yet seen, create new ones.
    let mut deleted_unseen = HashSet::new();
    for id in [&original[0], &original[50], &original[99]] {
        sim.ok(Api::DeleteLink, &token, json!({"link_id": id}))
            .await;
    }
    for id in [&original[100], &original[150], &original[249]] {
        sim.ok(Api::DeleteLink, &token, json!({"link_id": id}))
            .await;
        deleted_unseen.insert(id.clone());
    }
    let added_1 = sim.create(&token, "new-1", &["lisi"]).await;

    let p2 = page(c1).await;
    seen.extend(strings(&p2["link_id_list"]));
    let c2 = p2["next_cursor"].as_str().unwrap().to_string();
    // Console deletion between pages too.
    sim.admin_ok(M::DELETE, &format!("/_sim/links/{}", original[240]), None)
        .await;
    deleted_unseen.insert(original[240].clone());
    let added_2 = sim.create(&token, "new-2", &["lisi"]).await;
    let mut cursor = c2;
    while !cursor.is_empty() {
        let p = page(cursor).await;
        seen.extend(strings(&p["link_id_list"]));
        cursor = p["next_cursor"].as_str().unwrap().to_string();
    }

    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no link returned twice");
    for id in &original[..100] {
        assert!(unique.contains(id));
    }
    for id in &original[100..] {
        assert_eq!(unique.contains(id), !deleted_unseen.contains(id), "{id}");
    }
    assert!(unique.contains(&added_1) && unique.contains(&added_2));
    assert_eq!(seen.len(), 100 + 150 - 4 + 2);
}

#[tokio::test]
async fn list_limits_and_cursors_are_checked() {
    let sim = Sim::default().await;
    let token = sim.token().await;
    for i in 0..3 {
        sim.create(&token, &format!("l{i}"), &["zhangsan"]).await;
    }
    assert_code(
        &sim.call(Api::ListLink, Some(&token), json!({"limit": 101}))
            .await,
        40058,
    );
    assert_code(
        &sim.call(Api::ListLink, Some(&token), json!({"limit": 0}))
            .await,
        40058,
    );
    assert_code(
        &sim.call(Api::ListLink, Some(&token), json!({"cursor": "garbage"}))
            .await,
        40058,
    );
    // No limit means 100; exactly one page has an empty cursor.
    let all = sim.ok(Api::ListLink, &token, json!({})).await;
    assert_eq!(all["link_id_list"].as_array().unwrap().len(), 3);
    assert_eq!(all["next_cursor"], "");
    let two = sim.ok(Api::ListLink, &token, json!({"limit": 2})).await;
    assert_eq!(two["link_id_list"].as_array().unwrap().len(), 2);
    let rest = sim
        .ok(
            Api::ListLink,
            &token,
            json!({"limit": 2, "cursor": two["next_cursor"]}),
        )
        .await;
    assert_eq!(rest["link_id_list"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_cursor"], "");
    assert_eq!(sim.list_all(&token).await.len(), 3);
}

#[tokio::test]
async fn customer_pages_hold_every_customer_once() {
    let sim = Sim::default().await;
    let token = sim.token().await;
    sim.admin_ok(
        M::PUT,
        "/_sim/quota",
        Some(json!({"batches": [{"balance": 5000, "expire_date": 4_000_000_000i64}]})),
    )
    .await;
    let id = sim
        .create(&token, "c", &["zhangsan", "lisi", "wangwu"])
        .await;
    let path = format!("/_sim/links/{id}/customers");
    let added = sim
        .admin_ok(
            M::POST,
            &path,
            Some(json!({"count": 2000, "state": "chan-a"})),
        )
        .await;
    assert_eq!(added["added"].as_array().unwrap().len(), 2000);
    sim.admin_ok(M::POST, &path, Some(json!({"count": 500})))
        .await;

    assert_code(
        &sim.call(
            Api::Customer,
            Some(&token),
            json!({"link_id": id, "limit": 1001}),
        )
        .await,
        40058,
    );
    let mut all = Vec::new();
    let mut pages = 0;
    let mut cursor = String::new();
    loop {
        let v = sim
            .ok(
                Api::Customer,
                &token,
                json!({"link_id": id, "cursor": cursor}),
            )
            .await;
        pages += 1;
        all.extend(v["customer_list"].as_array().unwrap().clone());
        cursor = v["next_cursor"].as_str().unwrap().to_string();
        if cursor.is_empty() {
            break;
        }
        if pages == 1 {
            // Customers arriving between pages appear at the end, nothing is repeated.
            sim.admin_ok(M::POST, &path, Some(json!({"count": 10, "state": "late"})))
                .await;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(all.len(), 2510);
    let ids: HashSet<&str> = all
        .iter()
        .map(|c| c["external_userid"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2510);
    assert!(ids.iter().all(|i| i.starts_with("wm")));
    let first = &all[0];
    assert_eq!(first["chat_status"], 0);
    assert_eq!(first["state"], "chan-a");
    assert_eq!(all[2000]["state"], "");
    assert_eq!(all[2509]["state"], "late");
    // Round robin over the link's members.
    let members: Vec<&str> = all[..3]
        .iter()
        .map(|c| c["userid"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["zhangsan", "lisi", "wangwu"]);
    assert_eq!(all[3]["userid"], "zhangsan");
    // A cursor of another link is refused.
    let other = sim.create(&token, "o", &["zhangsan"]).await;
    let p = sim
        .ok(Api::Customer, &token, json!({"link_id": id, "limit": 1}))
        .await;
    assert_code(
        &sim.call(
            Api::Customer,
            Some(&token),
            json!({"link_id": other, "cursor": p["next_cursor"]}),
        )
        .await,
        40058,
    );
}

/// China-time midnight of the day holding `ts`.
fn china_midnight(ts: i64) -> i64 {
    (ts + 8 * 3600).div_euclid(DAY) * DAY - 8 * 3600
}

#[tokio::test]
async fn statistics_are_day_rounded_closed_and_bounded() {
    let sim = Sim::default().await;
    // Move to noon (China time) so that no real midnight falls inside the test.
    let now = sim.state().await["now"].as_i64().unwrap();
    let now = sim.advance(china_midnight(now) + DAY + DAY / 2 - now).await;
    let token = sim.token().await;
    let id = sim.create(&token, "s", &["zhangsan"]).await;
    let day0 = china_midnight(now);
    sim.admin_ok(
        M::POST,
        &format!("/_sim/links/{id}/customers"),
        Some(json!({"count": 2})),
    )
    .await;
    sim.admin_ok(
        M::POST,
        &format!("/_sim/links/{id}/clicks"),
        Some(json!({"count": 3})),
    )
    .await;
    let now = sim.advance(DAY).await;
    // A day later the old token has expired.
    let token = sim.token().await;
    let day1 = china_midnight(now);
    assert_eq!(day1, day0 + DAY);
    sim.admin_ok(
        M::POST,
        &format!("/_sim/links/{id}/clicks"),
        Some(json!({"count": 7})),
    )
    .await;

    let stat = |start: i64, end: i64| {
        let sim = &sim;
        let token = token.clone();
        let id = id.clone();
        async move {
            sim.call(
                Api::Statistic,
                Some(&token),
                json!({"link_id": id, "start_time": start, "end_time": end}),
            )
            .await
        }
    };
    // Day 0 alone, asked with times inside the day: customers count as clicks too.
    let d0 = stat(day0 + 3600, day0 + 7200).await;
    assert_eq!(
        (
            d0["click_link_customer_cnt"].as_u64(),
            d0["new_customer_cnt"].as_u64()
        ),
        (Some(5), Some(2)),
        "{d0}"
    );
    // The last second of day 0 to the first second of day 1: both whole days.
    let both = stat(day1 - 1, day1).await;
    assert_eq!(
        (
            both["click_link_customer_cnt"].as_u64(),
            both["new_customer_cnt"].as_u64()
        ),
        (Some(12), Some(2)),
        "{both}"
    );
    let d1 = stat(day1, day1 + DAY - 1).await;
    assert_eq!(
        (
            d1["click_link_customer_cnt"].as_u64(),
            d1["new_customer_cnt"].as_u64()
        ),
        (Some(7), Some(0)),
        "{d1}"
    );

    // 30 days apart is the most; 31 is refused; so are reversed and too old windows.
    assert_eq!(stat(day1 - 30 * DAY, day1).await["errcode"], 0);
    assert_code(&stat(day1 - 31 * DAY, day1).await, 40058);
    assert_code(&stat(day1, day1 - DAY).await, 40058);
    assert_eq!(stat(day1 - 180 * DAY, day1 - 170 * DAY).await["errcode"], 0);
    assert_code(&stat(day1 - 181 * DAY, day1 - 170 * DAY).await, 40058);
}

#[tokio::test]
async fn quota_is_consumed_earliest_batch_first_and_refuses_at_zero() {
    let sim = Sim::default().await;
    let token = sim.token().await;
    let now = sim.state().await["now"].as_i64().unwrap();
    let soon = china_midnight(now) + 10 * DAY;
    let later = china_midnight(now) + 100 * DAY;
    sim.admin_ok(
        M::PUT,
        "/_sim/quota",
        Some(json!({"batches": [
        {"balance": 3, "expire_date": later}, {"balance": 2, "expire_date": soon}]})),
    )
    .await;
    let id = sim.create(&token, "q", &["zhangsan"]).await;
    let path = format!("/_sim/links/{id}/customers");
    sim.admin_ok(M::POST, &path, Some(json!({"count": 3})))
        .await;
    let a8 = sim.ok(Api::Quota, &token, json!({})).await;
    assert_eq!(a8["total"], 3);
    assert_eq!(a8["balance"], 2);
    assert_eq!(
        a8["quota_list"],
        json!([{"expire_date": soon, "balance": 0}, {"expire_date": later, "balance": 2}])
    );

    // Asking for more than the balance adds nothing.
    let (status, err) = sim.admin(M::POST, &path, Some(json!({"count": 3}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(err["error"].as_str().unwrap().contains("balance"), "{err}");
    sim.admin_ok(M::POST, &path, Some(json!({"count": 2})))
        .await;
    let (status, _) = sim.admin(M::POST, &path, Some(json!({"count": 1}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let state = sim.state().await;
    assert_eq!(state["customers"][&id].as_array().unwrap().len(), 5);
    let a8 = sim.ok(Api::Quota, &token, json!({})).await;
    assert_eq!(
        (a8["total"].as_u64(), a8["balance"].as_u64()),
        (Some(5), Some(0))
    );

    // An expired batch no longer counts.
    sim.admin_ok(
        M::PUT,
        "/_sim/quota",
        Some(json!({"batches": [{"balance": 9, "expire_date": soon}]})),
    )
    .await;
    assert_eq!(sim.ok(Api::Quota, &token, json!({})).await["balance"], 9);
    sim.advance(11 * DAY).await;
    let a8 = sim.ok(Api::Quota, &Sim::token(&sim).await, json!({})).await;
    assert_eq!(a8["balance"], 0);
    assert_eq!(a8["quota_list"], json!([]));
}

#[tokio::test]
async fn injected_errcode_lasts_n_calls_then_normal() {
    let sim = Sim::default().await;
    let token = sim.token().await;
    sim.admin_ok(
        M::POST,
        "/_sim/faults",
        Some(json!({"api": "create_link", "errcode": -1, "times": 2})),
    )
    .await;
    let body = json!({"link_name": "f", "range": {"user_list": ["zhangsan"]}});
    // Other APIs are untouched.
    sim.ok(Api::ListLink, &token, json!({})).await;
    assert_code(
        &sim.call(Api::CreateLink, Some(&token), body.clone()).await,
        -1,
    );
    assert_code(
        &sim.call(Api::CreateLink, Some(&token), body.clone()).await,
        -1,
    );
    sim.ok(Api::CreateLink, &token, body.clone()).await;
    // Faulted calls made no link.
    assert_eq!(sim.state().await["links"].as_array().unwrap().len(), 1);

    sim.admin_ok(
        M::POST,
        "/_sim/faults",
        Some(json!({"api": "*", "errcode": 45009})),
    )
    .await;
    sim.admin_ok(
        M::POST,
        "/_sim/faults",
        Some(json!({"api": "*", "latency_ms": 1, "times": 1})),
    )
    .await;
    assert_code(&sim.call(Api::Quota, Some(&token), json!({})).await, 45009);
    assert_code(&sim.gettoken_raw("wwsimcorp", "sim-secret").await, 45009);
    assert_eq!(
        sim.state().await["faults"].as_array().unwrap().len(),
        1,
        "latency fault used up"
    );
    let cleared = sim.admin_ok(M::DELETE, "/_sim/faults", None).await;
    assert_eq!(cleared["cleared"], 1);
    sim.ok(Api::Quota, &token, json!({})).await;

    for bad in [
        json!({"api": "nope", "errcode": -1}),
        json!({"api": "*"}),
        json!({"api": "*", "errcode": 0}),
        json!({"api": "*", "errcode": -1, "times": 0}),
        json!({"api": "*", "errcode": -1, "bogus": 1}),
    ] {
        let (status, err) = sim.admin(M::POST, "/_sim/faults", Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(err["error"].is_string());
    }
}

#[tokio::test]
async fn frequency_limit_answers_45009_and_still_counts() {
    let sim = Sim::start(SimConfig {
        rate_limit_per_minute: Some(3),
        ..SimConfig::default()
    })
    .await;
    let token = sim.token().await;
    for _ in 0..3 {
        sim.ok(Api::ListLink, &token, json!({})).await;
    }
    assert_code(
        &sim.call(Api::ListLink, Some(&token), json!({})).await,
        45009,
    );
    assert_code(
        &sim.call(Api::ListLink, Some(&token), json!({})).await,
        45009,
    );
    // The limit is per API.
    sim.ok(Api::Quota, &token, json!({})).await;
    let calls = sim.admin_ok(M::GET, "/_sim/calls", None).await;
    assert_eq!(
        calls,
        json!({"gettoken": 1, "list_link": 5, "customer_acquisition_quota": 1, "total": 7})
    );
}

#[tokio::test]
async fn the_hourly_limit_blocks_one_api_for_an_hour_of_the_sim_clock() {
    let sim = Sim::start(SimConfig {
        rate_limit_per_hour: Some(4),
        ..SimConfig::default()
    })
    .await;
    let token = sim.token().await;
    for _ in 0..4 {
        sim.ok(Api::ListLink, &token, json!({})).await;
    }
    sim.advance(1800).await;
    let refused = sim.call(Api::ListLink, Some(&token), json!({})).await;
    assert_code(&refused, 45009);
    assert!(
        refused["errmsg"].as_str().unwrap().contains("in an hour"),
        "{refused}"
    );
    // Other APIs are unaffected.
    sim.ok(Api::Quota, &token, json!({})).await;
    // An hour after the first calls the sliding window alone would admit again, but the
    // block lasts one hour from the overrun.
    sim.advance(1900).await;
    assert_code(
        &sim.call(Api::ListLink, Some(&token), json!({})).await,
        45009,
    );
    sim.advance(1700).await;
    sim.ok(Api::ListLink, &token, json!({})).await;
    assert_eq!(sim.state().await["rate_limit_per_hour"], 4);
}

#[tokio::test]
async fn a_minute_overrun_blocks_the_api_until_sixty_seconds_have_passed() {
    let sim = Sim::start(SimConfig {
        rate_limit_per_minute: Some(2),
        ..SimConfig::default()
    })
    .await;
    let token = sim.token().await;
    sim.ok(Api::ListLink, &token, json!({})).await;
    sim.advance(30).await;
    sim.ok(Api::ListLink, &token, json!({})).await;
    assert_code(
        &sim.call(Api::ListLink, Some(&token), json!({})).await,
        45009,
    );
    // The first call has left the sliding minute; the block (60 s from the overrun) holds.
    sim.advance(35).await;
    assert_code(
        &sim.call(Api::ListLink, Some(&token), json!({})).await,
        45009,
    );
    sim.advance(25).await;
    sim.ok(Api::ListLink, &token, json!({})).await;
}

#[tokio::test]
async fn calls_are_counted_per_api_and_reset() {
    let sim = Sim::default().await;
    let token = sim.token().await;
    let id = sim.create(&token, "c", &["zhangsan"]).await;
    for _ in 0..3 {
        sim.ok(Api::GetLink, &token, json!({"link_id": id})).await;
    }
    // Refused calls count too.
    sim.call(Api::GetLink, None, json!({"link_id": id})).await;
    let calls = sim.admin_ok(M::GET, "/_sim/calls", None).await;
    assert_eq!(
        calls,
        json!({"gettoken": 1, "get": 4, "create_link": 1, "total": 6})
    );
    assert_eq!(
        sim.admin_ok(M::DELETE, "/_sim/calls", None).await,
        json!({"total": 0})
    );
    sim.ok(
        Api::UpdateLink,
        &token,
        json!({"link_id": id, "link_name": "d"}),
    )
    .await;
    sim.ok(Api::DeleteLink, &token, json!({"link_id": id}))
        .await;
    sim.ok(
        Api::Customer,
        &token,
        json!({"link_id": sim.create(&token, "x", &["lisi"]).await}),
    )
    .await;
    let calls = sim.admin_ok(M::GET, "/_sim/calls", None).await;
    assert_eq!(
        calls,
        json!({"update_link": 1, "delete_link": 1, "create_link": 1, "customer": 1, "total": 4})
    );
}

#[tokio::test]
async fn state_dump_has_the_documented_shape() {
    let sim = Sim::default().await;
    let token = sim.token().await;
    let id = sim.create(&token, "shape", &["zhangsan"]).await;
    sim.admin_ok(
        M::POST,
        &format!("/_sim/links/{id}/customers"),
        Some(json!({"count": 1, "state": "c"})),
    )
    .await;
    let state = sim.state().await;
    let link = &state["links"][0];
    for key in [
        "link_id",
        "link_name",
        "url",
        "range",
        "skip_verify",
        "create_time",
    ] {
        assert!(!link[key].is_null(), "links[0].{key} in {link}");
    }
    assert_eq!(
        link["range"],
        json!({"user_list": ["zhangsan"], "department_list": []})
    );
    assert_eq!(link["skip_verify"], true);
    let customers = state["customers"][&id].as_array().unwrap();
    assert_eq!(customers[0]["userid"], "zhangsan");
    assert_eq!(customers[0]["state"], "c");
    assert_eq!(state["quota"]["balance"], 999);
    assert_eq!(state["quota"]["total"], 1);
    assert!(state["quota"]["quota_list"].is_array());
    let text = state.to_string();
    assert!(
        !text.contains("sim-secret") && !text.contains(&token),
        "no credentials in the dump"
    );
}

#[tokio::test]
async fn console_edit_and_delete_change_what_the_api_sees() {
    let sim = Sim::default().await;
    let token = sim.token().await;
    let id = sim.create(&token, "drift", &["zhangsan"]).await;
    let edited = sim
        .admin_ok(M::PATCH, &format!("/_sim/links/{id}"),
            Some(json!({"link_name": "console", "range": {"department_list": [2]}, "skip_verify": false})))
        .await;
    assert_eq!(edited["link_name"], "console");
    let got = sim.ok(Api::GetLink, &token, json!({"link_id": id})).await;
    assert_eq!(
        got["range"],
        json!({"user_list": [], "department_list": [2]})
    );
    assert_eq!(got["link"]["skip_verify"], false);
    let (status, err) = sim
        .admin(
            M::PATCH,
            &format!("/_sim/links/{id}"),
            Some(json!({"range": {"user_list": []}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("40058"), "{err}");

    sim.admin_ok(M::DELETE, &format!("/_sim/links/{id}"), None)
        .await;
    assert_code(
        &sim.call(Api::GetLink, Some(&token), json!({"link_id": id}))
            .await,
        40058,
    );
    let (status, _) = sim
        .admin(M::DELETE, &format!("/_sim/links/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = sim
        .admin(
            M::POST,
            &format!("/_sim/links/{id}/clicks"),
            Some(json!({"count": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn debug_logs_name_the_call_but_never_a_secret_or_token() {
    // The test runtime is single-threaded: the simulator's tasks log on this thread.
    let (logs, _guard) = Captured::install(tracing::Level::TRACE);
    let sim = Sim::default().await;
    let token = sim.token().await;
    sim.gettoken_raw("wwsimcorp", "wrong-secret-value").await;
    let id = sim.create(&token, "logged", &["zhangsan"]).await;
    sim.call(Api::GetLink, Some(&token), json!({"link_id": id}))
        .await;
    sim.admin_ok(M::DELETE, &format!("/_sim/links/{id}"), None)
        .await;
    sim.handle.shutdown().await;
    let text = logs.text();
    assert!(
        text.contains("create_link") && text.contains("errcode=40001"),
        "{text}"
    );
    for secret in ["sim-secret", "wrong-secret-value", token.as_str()] {
        assert!(!text.contains(secret), "{secret} leaked into:\n{text}");
    }
}

#[tokio::test]
async fn bad_admin_input_is_a_json_400() {
    let sim = Sim::default().await;
    let resp = sim
        .http
        .post(format!("{}/_sim/clock", sim.base))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("/_sim/clock"), "{v}");
    let (status, _) = sim
        .admin(M::POST, "/_sim/clock", Some(json!({"advance_secs": -5})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = sim
        .admin(
            M::PUT,
            "/_sim/quota",
            Some(json!({"batches": [{"balance": "many"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, v) = sim.admin(M::GET, "/_sim/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(v["error"].is_string());
}

#[tokio::test]
async fn expanded_members_are_sorted_sets_of_known_users() {
    // A link over a department hands customers to that department's people only.
    let sim = Sim::default().await;
    let token = sim.token().await;
    let id = sim
        .ok(
            Api::CreateLink,
            &token,
            json!({"link_name": "d", "range": {"department_list": [2]}}),
        )
        .await["link"]["link_id"]
        .as_str()
        .unwrap()
        .to_string();
    let added = sim
        .admin_ok(
            M::POST,
            &format!("/_sim/links/{id}/customers"),
            Some(json!({"count": 12})),
        )
        .await;
    let members: BTreeSet<&str> = added["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["userid"].as_str().unwrap())
        .collect();
    let expected: BTreeSet<&str> =
        ["zhaoliu", "sunqi", "zhouba", "wujiu", "zhengshi", "lisi"].into();
    assert_eq!(members, expected);
}

// ---- callbacks ----

mod callbacks {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::Router;
    use axum::extract::Query;
    use axum::http::StatusCode as AxumStatus;
    use axum::routing::post;
    use serde_json::json;
    use tokio::sync::mpsc;
    use wecom_acq::sim::{SimCallback, SimConfig};
    use wecom_acq::wecom::Api;
    use wecom_acq::wecom::crypto::{CallbackCrypto, extract_encrypt};
    use wecom_acq::wecom::event::{CallbackEvent, ChangeType, Envelope, EventFamily, parse_event};

    use super::{DAY, M, Sim, china_midnight};

    const TOKEN: &str = "simCallbackToken";
    const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    /// One POST the receiver got.
    #[derive(Debug, Clone, PartialEq)]
    struct Received {
        query: HashMap<String, String>,
        body: String,
    }

    /// A tiny callback endpoint that records every POST; the first `failures` answer 500.
    struct Receiver {
        url: String,
        rx: mpsc::UnboundedReceiver<Received>,
    }

    impl Receiver {
        async fn start(failures: usize) -> Receiver {
            let (tx, rx) = mpsc::unbounded_channel();
            let failures = Arc::new(AtomicUsize::new(failures));
            let app = Router::new().route(
                "/cb",
                post(
                    move |Query(query): Query<HashMap<String, String>>, body: String| {
                        let tx = tx.clone();
                        let failures = failures.clone();
                        async move {
                            tx.send(Received { query, body }).unwrap();
                            let fail = failures
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                            if fail {
                                AxumStatus::INTERNAL_SERVER_ERROR
                            } else {
                                AxumStatus::OK
                            }
                        }
                    },
                ),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Receiver {
                url: format!("http://{addr}/cb"),
                rx,
            }
        }

        async fn next(&mut self) -> Received {
            tokio::time::timeout(Duration::from_secs(15), self.rx.recv())
                .await
                .expect("a callback within 15 s")
                .unwrap()
        }

        /// The next POST, verified, decrypted and parsed.
        async fn next_event(&mut self, receive_id: &str) -> CallbackEvent {
            open(&self.next().await, receive_id)
        }
    }

    /// Verifies the signature, decrypts and parses one POST, as the controller will.
    fn open(r: &Received, receive_id: &str) -> CallbackEvent {
        let crypto = CallbackCrypto::new(TOKEN, AES_KEY, receive_id).unwrap();
        let encrypt = extract_encrypt(&r.body).unwrap();
        let xml = crypto
            .decrypt_message(
                &r.query["msg_signature"],
                &r.query["timestamp"],
                &r.query["nonce"],
                &encrypt,
            )
            .unwrap();
        parse_event(&xml).unwrap()
    }

    async fn sim_with(receiver: &Receiver, suite: Option<&str>) -> Sim {
        Sim::start(SimConfig {
            callback: Some(SimCallback {
                url: receiver.url.clone(),
                token: TOKEN.into(),
                aes_key: AES_KEY.into(),
                third_party_suite_id: suite.map(String::from),
            }),
            ..SimConfig::default()
        })
        .await
    }

    #[tokio::test]
    async fn console_delete_pushes_a_signed_delete_link_and_api_calls_push_nothing() {
        let mut receiver = Receiver::start(0).await;
        let sim = sim_with(&receiver, None).await;
        let token = sim.token().await;
        // API calls: create, update, delete. WeCom pushes nothing for them.
        let by_api = sim.create(&token, "api", &["zhangsan"]).await;
        sim.ok(
            Api::UpdateLink,
            &token,
            json!({"link_id": by_api, "link_name": "api2"}),
        )
        .await;
        sim.ok(Api::DeleteLink, &token, json!({"link_id": by_api}))
            .await;
        let in_console = sim.create(&token, "console", &["lisi"]).await;
        sim.admin_ok(M::DELETE, &format!("/_sim/links/{in_console}"), None)
            .await;

        // Delivery is in order, so an event from the API calls would have come first.
        let got = receiver.next().await;
        let ts: i64 = got.query["timestamp"].parse().unwrap();
        assert!((real_now() - ts).abs() < 60, "timestamp is real time");
        assert!(got.body.contains("<AgentID>"), "{}", got.body);
        let event = open(&got, "wwsimcorp");
        assert_eq!(event.envelope, Envelope::SelfBuilt);
        assert_eq!(event.corp_id, "wwsimcorp");
        assert_eq!(event.family, EventFamily::CustomerAcquisition);
        assert_eq!(event.change_type, ChangeType::DeleteLink);
        assert_eq!(event.link_id.as_deref(), Some(in_console.as_str()));
        // A wrong receive id is refused: the event is bound to this corp.
        let crypto = CallbackCrypto::new(TOKEN, AES_KEY, "wwother").unwrap();
        let encrypt = extract_encrypt(&got.body).unwrap();
        assert!(
            crypto
                .decrypt_message(
                    &got.query["msg_signature"],
                    &got.query["timestamp"],
                    &got.query["nonce"],
                    &encrypt
                )
                .is_err()
        );
        sim.handle.shutdown().await;
    }

    fn real_now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[tokio::test]
    async fn customers_and_quota_thresholds_are_pushed_in_order() {
        let mut receiver = Receiver::start(0).await;
        let sim = sim_with(&receiver, None).await;
        let token = sim.token().await;
        let expiry = china_midnight(real_now()) + 100 * DAY;
        sim.admin_ok(
            M::PUT,
            "/_sim/quota",
            Some(json!({"batches": [{"balance": 21, "expire_date": expiry}]})),
        )
        .await;
        let id = sim.create(&token, "q", &["zhangsan", "lisi"]).await;
        let path = format!("/_sim/links/{id}/customers");
        let added = sim
            .admin_ok(M::POST, &path, Some(json!({"count": 2, "state": "chan-a"})))
            .await;
        for i in 0..2 {
            let e = receiver.next_event("wwsimcorp").await;
            assert_eq!(e.family, EventFamily::ChangeExternalContact);
            assert_eq!(e.change_type, ChangeType::AddExternalContact);
            assert_eq!(e.link_id.as_deref(), Some(id.as_str()));
            assert_eq!(e.state.as_deref(), Some("chan-a"));
            assert_eq!(e.user_id.as_deref(), added["added"][i]["userid"].as_str());
            assert_eq!(
                e.external_user_id.as_deref(),
                added["added"][i]["external_userid"].as_str()
            );
            assert!(e.welcome_code.is_some());
        }
        // 21 -> 19 crossed below 20.
        let low = receiver.next_event("wwsimcorp").await;
        assert_eq!(low.change_type, ChangeType::BalanceLow);
        assert_eq!(low.family, EventFamily::CustomerAcquisition);

        sim.admin_ok(M::POST, &path, Some(json!({"count": 19})))
            .await;
        for _ in 0..19 {
            let e = receiver.next_event("wwsimcorp").await;
            assert_eq!(e.change_type, ChangeType::AddExternalContact);
        }
        let exhausted = receiver.next_event("wwsimcorp").await;
        assert_eq!(exhausted.change_type, ChangeType::BalanceExhausted);

        sim.admin_ok(
            M::PUT,
            "/_sim/quota",
            Some(json!({"batches": [{"balance": 50, "expire_date": expiry}]})),
        )
        .await;
        let increased = receiver.next_event("wwsimcorp").await;
        assert_eq!(increased.change_type, ChangeType::BalanceIncreased);

        // The clock crossing 14 days before expiry pushes quota_expire_soon.
        let now = sim.state().await["now"].as_i64().unwrap();
        sim.advance(expiry - 14 * DAY - now + 1).await;
        let soon = receiver.next_event("wwsimcorp").await;
        assert_eq!(soon.change_type, ChangeType::QuotaExpireSoon);
        assert_eq!(soon.expire_time, Some(expiry));
        assert_eq!(soon.expire_quota_num, Some(50));
    }

    #[tokio::test]
    async fn third_party_envelope_uses_the_suite_id() {
        let mut receiver = Receiver::start(0).await;
        let sim = sim_with(&receiver, Some("wwsuite42")).await;
        let token = sim.token().await;
        let id = sim.create(&token, "tp", &["zhangsan"]).await;
        sim.admin_ok(M::DELETE, &format!("/_sim/links/{id}"), None)
            .await;
        let got = receiver.next().await;
        let event = open(&got, "wwsuite42");
        assert_eq!(event.envelope, Envelope::ThirdParty);
        assert_eq!(event.suite_id.as_deref(), Some("wwsuite42"));
        assert_eq!(event.corp_id, "wwsimcorp");
        assert_eq!(event.change_type, ChangeType::DeleteLink);
    }

    #[tokio::test]
    async fn a_refused_callback_is_retried() {
        let mut receiver = Receiver::start(1).await;
        let sim = sim_with(&receiver, None).await;
        let token = sim.token().await;
        let id = sim.create(&token, "r", &["zhangsan"]).await;
        sim.admin_ok(M::DELETE, &format!("/_sim/links/{id}"), None)
            .await;
        let first = receiver.next().await;
        let second = receiver.next().await;
        assert_eq!(first, second, "the same signed message is sent again");
        assert_eq!(
            open(&second, "wwsimcorp").link_id.as_deref(),
            Some(id.as_str())
        );
    }

    #[tokio::test]
    async fn a_bad_callback_key_fails_at_start_without_showing_it() {
        let err = wecom_acq::sim::spawn(
            SimConfig {
                callback: Some(SimCallback {
                    url: "http://127.0.0.1:1/cb".into(),
                    token: TOKEN.into(),
                    aes_key: "too-short-key-SECRETPART".into(),
                    third_party_suite_id: None,
                }),
                ..SimConfig::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .err()
        .unwrap();
        let text = format!("{err:#} {err:?}");
        assert!(text.contains("EncodingAESKey"), "{text}");
        assert!(!text.contains("SECRETPART"), "{text}");
    }
}
