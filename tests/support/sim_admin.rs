//! The one client of the WeCom simulator's admin API (`/_sim/...`): what a test reads of
//! WeCom's state and the faults and quota it sets.

use serde_json::{Value, json};

/// The admin API of one simulator.
#[derive(Clone)]
pub struct SimAdmin {
    base_url: String,
    http: reqwest::Client,
}

impl SimAdmin {
    pub fn new(base_url: String, http: reqwest::Client) -> Self {
        SimAdmin { base_url, http }
    }

    /// Calls the admin API and returns the JSON answer (`null` when the body is not JSON);
    /// a non-2xx answer fails the test.
    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base_url);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("reach the simulator");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// `GET /_sim/calls`: calls per API name plus `total`.
    pub async fn calls(&self) -> Value {
        self.request(reqwest::Method::GET, "/_sim/calls", None)
            .await
    }

    /// Calls of one API (`create_link`, `get`, ...) so far.
    pub async fn call_count(&self, api: &str) -> u64 {
        self.calls().await[api].as_u64().unwrap_or(0)
    }

    /// A3 + A4 + A5 calls so far.
    pub async fn mutating_calls(&self) -> u64 {
        let calls = self.calls().await;
        ["create_link", "update_link", "delete_link"]
            .iter()
            .map(|api| calls[*api].as_u64().unwrap_or(0))
            .sum()
    }

    /// `GET /_sim/state`.
    pub async fn state(&self) -> Value {
        self.request(reqwest::Method::GET, "/_sim/state", None)
            .await
    }

    /// The links the simulator holds (`link_id`, `link_name`, `url`, `range`, ...).
    pub async fn links(&self) -> Vec<Value> {
        self.state().await["links"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// One link of the simulator by id.
    pub async fn link(&self, link_id: &str) -> Option<Value> {
        self.links()
            .await
            .into_iter()
            .find(|l| l["link_id"] == link_id)
    }

    /// The simulator's links with this link_name.
    pub async fn links_named(&self, link_name: &str) -> Vec<Value> {
        sim_links_named(&self.state().await, link_name)
    }

    /// `POST /_sim/faults` with `spec`.
    pub async fn fault(&self, spec: Value) {
        self.request(reqwest::Method::POST, "/_sim/faults", Some(spec))
            .await;
    }

    /// `PUT /_sim/quota` with one batch of `balance` expiring in a year.
    pub async fn set_quota(&self, balance: u64) {
        let now = self.state().await["now"].as_i64().unwrap_or_default();
        let batches = if balance == 0 {
            json!([])
        } else {
            json!([{ "balance": balance, "expire_date": now + 365 * 86_400 }])
        };
        self.request(
            reqwest::Method::PUT,
            "/_sim/quota",
            Some(json!({ "batches": batches })),
        )
        .await;
    }
}

/// The simulator's links with this link_name, from a `/_sim/state` dump.
pub fn sim_links_named(state: &Value, link_name: &str) -> Vec<Value> {
    state["links"]
        .as_array()
        .map(|links| {
            links
                .iter()
                .filter(|l| l["link_name"] == link_name)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}
