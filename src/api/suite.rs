//! `WeComSuite`: a third-party suite (第三方应用) or a custom-developed app template
//! (代开发应用模板) of a service provider, whose authorised corps become WeComApps.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::app::API_BASE_URL_PATTERN;
use super::{CallbackSpec, SecretKeyRef};

/// Key of the ticket Secret that holds the latest suite_ticket.
pub const SUITE_TICKET_KEY: &str = "suiteTicket";
/// Key of an authorised corp's Secret that holds its permanent code.
pub const PERMANENT_CODE_KEY: &str = "permanentCode";
/// Key set in an authorised corp's Secret (instead of the permanent code) once the corp
/// cancelled the authorisation: the Unix time of the `cancel_auth`.
pub const AUTH_CANCELLED_KEY: &str = "authCancelledAt";
/// Label on the Secrets and WeComApps the controller makes for a suite: the suite's name.
pub const SUITE_LABEL: &str = "acquisition.wecom.dev/suite";

/// A third-party suite: its id, the Secret keys of its secret and of its instruction
/// callback's Token and EncodingAESKey. WeCom pushes `suite_ticket`, `create_auth`,
/// `change_auth` and `cancel_auth` to `/suite/{namespace}/{name}` on the callback port.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "acquisition.wecom.dev",
    version = "v1alpha1",
    kind = "WeComSuite",
    doc = "A WeCom third-party suite (or custom-developed app template) whose authorised corps become WeComApps.",
    namespaced,
    status = "WeComSuiteStatus",
    shortname = "wxsuite",
    category = "wecom",
    printcolumn = r#"{"name":"Suite ID","type":"string","jsonPath":".spec.suiteId"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WeComSuiteSpec {
    /// The suite id (`ww...`, `wx...`, or `dk...` for a custom-developed template); also
    /// the receive id of the suite's callbacks.
    #[schemars(length(min = 1, max = 64))]
    pub suite_id: String,
    /// The Secret key holding the suite secret.
    pub secret_ref: SecretKeyRef,
    /// The Secret keys of the instruction callback's Token and EncodingAESKey
    /// (`receiveId` is ignored: it is always the suite id).
    pub callback: CallbackSpec,
    /// Base URL of the WeCom API (default https://qyapi.weixin.qq.com); the same rules as
    /// a WeComApp's, and the WeComApps made for authorised corps get it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(API_BASE_URL_PATTERN))]
    pub api_base_url: Option<String>,
    /// Request budget (requests per minute) of each WeComApp made for an authorised corp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = super::app::REQUESTS_PER_MINUTE_MAX))]
    pub requests_per_minute: Option<u32>,
}

/// Observed state of a WeComSuite. Never holds a ticket, a code or a token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WeComSuiteStatus {
    /// `Ready`: a suite_ticket was received and stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::link::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// When the latest suite_ticket arrived (RFC 3339; the ticket is in its Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ticket_time: Option<String>,
    /// The corps that authorised the suite, and their WeComApps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corps: Vec<AuthorisedCorp>,
}

/// One corp that authorised the suite.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorisedCorp {
    /// The corp id (auth_corpid).
    pub corp_id: String,
    /// The corp's short name, as WeCom gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corp_name: Option<String>,
    /// The WeComApp of the corp (same namespace).
    pub app: String,
    /// `Authorised` or `Cancelled`.
    pub state: String,
    /// When the state last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// The suite a WeComApp's corp authorised (its tokens come from get_corp_token).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuiteAppRef {
    /// Name of the WeComSuite, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The name of the WeComApp (and of the Secret holding the permanent code) the controller
/// makes when `corp_id` authorises suite `suite`: `{suite}-{corp id in lower case}`, cut
/// to a valid object name.
pub fn authorised_app_name(suite: &str, corp_id: &str) -> String {
    let corp: String = corp_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("{suite}-{corp}");
    name.truncate(253);
    name.trim_end_matches('-').to_string()
}

/// The Secret holding the latest suite_ticket of suite `suite`.
pub fn ticket_secret_name(suite: &str) -> String {
    let mut name = format!("{suite}-suite-ticket");
    name.truncate(253);
    name
}
