//! `WeComApp`: one WeCom app's credentials and the state its links share (quota).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// `spec.apiBaseUrl` must start with `http://` or `https://` and name a host.
pub const API_BASE_URL_PATTERN: &str = "^https?://[^/?#]+";
/// Highest `spec.requestsPerMinute`: WeCom's published per-API limit per corp.
pub const REQUESTS_PER_MINUTE_MAX: u32 = 10_000;

/// One WeCom app (self-built app in the 可调用应用 list, or an authorised third-party app)
/// whose credentials the links in this namespace use.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "acquisition.wecom.dev",
    version = "v1alpha1",
    kind = "WeComApp",
    doc = "One WeCom app's credentials and the state its AcquisitionLinks share (quota).",
    namespaced,
    status = "WeComAppStatus",
    shortname = "wxapp",
    category = "wecom",
    printcolumn = r#"{"name":"Corp ID","type":"string","jsonPath":".spec.corpId"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Quota","type":"integer","jsonPath":".status.quota.balance"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WeComAppSpec {
    /// The corp id (企业ID), `ww...`. Also the receive id checked on callbacks of a
    /// self-built app.
    #[schemars(length(min = 1))]
    pub corp_id: String,
    /// The Secret key holding the app secret. Must be the secret of a self-built app in the
    /// 可调用应用 list (or an authorised third-party app); the 客户联系 system-app secret is
    /// refused by WeCom (48002).
    pub secret_ref: SecretKeyRef,
    /// Callback settings: where the callback Token and EncodingAESKey live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackSpec>,
    /// Base URL of the WeCom API, `http://` or `https://`. Defaults to
    /// https://qyapi.weixin.qq.com; point it at `wecom-acq simulate` to try the controller
    /// without a WeCom account. The app secret is sent there: use plain http only for the
    /// simulator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // A pattern rather than a CEL rule: enforced by every apiserver version, not only
    // those with CEL validation (v1.25+).
    #[schemars(pattern(API_BASE_URL_PATTERN))]
    pub api_base_url: Option<String>,
    /// Request budget for this app, in requests per minute (1 to 10000), shared by all its
    /// links. Defaults to 600, well under WeCom's published 10,000 per minute per API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = REQUESTS_PER_MINUTE_MAX))]
    pub requests_per_minute: Option<u32>,
    /// Set for a corp that authorised a third-party suite: `corpId` is the authorised
    /// corp, `secretRef` the Secret key of its permanent code, and tokens come from the
    /// suite's get_corp_token instead of gettoken. The controller makes such apps itself
    /// on `create_auth`. A custom-developed (代开发) app needs no suite: its permanent
    /// code is its secret, with gettoken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<super::SuiteAppRef>,
}

/// Callback (指令回调) settings of an app.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallbackSpec {
    /// Secret key holding the callback Token (letters and digits, at most 32).
    pub token_ref: SecretKeyRef,
    /// Secret key holding the EncodingAESKey (exactly 43 characters).
    pub aes_key_ref: SecretKeyRef,
    /// Receive id to check on callbacks. Defaults to `corpId` (self-built apps); set it to
    /// the suite id for third-party instruction callbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub receive_id: Option<String>,
}

/// Observed state of a WeComApp.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WeComAppStatus {
    /// The quota as A8 last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<AppQuota>,
    /// `Ready`, `QuotaLow`, `QuotaExhausted`, `QuotaExpiringSoon`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::link::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How often the app's links are polled, within its request budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling: Option<AppPolling>,
}

/// The polling the app's request budget allows.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppPolling {
    /// Each link is polled (A2) this often, in seconds: the controller's resync interval,
    /// or longer when that many links at that interval would not fit the budget.
    pub interval_seconds: u64,
    /// The links the interval was computed for.
    pub links: u64,
    /// True when the interval is longer than the resync interval asked for.
    pub stretched: bool,
}

/// The customer-acquisition quota of the corp.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppQuota {
    /// Cumulative quota used so far (WeCom's `total`).
    pub total: u64,
    /// Remaining quota.
    pub balance: u64,
    /// Per-batch remaining quota and expiry (R10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<QuotaBatchStatus>,
    /// When A8 was last asked (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<String>,
}

/// One quota batch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaBatchStatus {
    /// Expiry (RFC 3339; midnight of the expiry day, China time).
    pub expire_date: String,
    /// Remaining quota of the batch.
    pub balance: u64,
}
