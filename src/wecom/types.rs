//! Wire types of the WeCom customer-acquisition API (A1-A8) and gettoken.
//!
//! Field names follow the official documentation (see `shared/reference/WECOM-NOTES.md`);
//! where the third-party skill text spells a field differently, the skill's spelling is
//! accepted as an alias. Unknown fields are ignored so a newer WeCom keeps working.
//! Fields the controller acts on are required in answers (no `serde(default)`): an answer
//! without them is a decode error naming the field, not a link with an empty name or a
//! quota of zero. Value ranges are checked in [`super::answer`].
//! These types are shared by the client and the simulator, so both speak one wire format.

use serde::{Deserialize, Serialize};

/// The `errcode`/`errmsg` pair every WeCom answer carries (HTTP 200 even on errors).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiStatus {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
}

impl ApiStatus {
    pub fn ok() -> Self {
        Self {
            errcode: 0,
            errmsg: "ok".into(),
        }
    }
    pub fn error(errcode: i64, errmsg: impl Into<String>) -> Self {
        Self {
            errcode,
            errmsg: errmsg.into(),
        }
    }
}

/// `GET /cgi-bin/gettoken?corpid=ID&corpsecret=SECRET`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub access_token: String,
    #[serde(default)]
    pub expires_in: u64,
}

impl std::fmt::Debug for TokenResponse {
    // The access token is a credential: it never reaches a log line through Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// The members and departments a link hands customers to. On update it is a full
/// replacement (G1): both lists are always sent, so an empty list really clears that side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRange {
    #[serde(default)]
    pub user_list: Vec<String>,
    #[serde(default)]
    pub department_list: Vec<u64>,
}

impl LinkRange {
    pub fn is_empty(&self) -> bool {
        self.user_list.is_empty() && self.department_list.is_empty()
    }
}

/// Priority assignment (R11: only some business categories support it).
/// `priority_type` 1: any member already the customer's friend; 2: such a member from
/// `priority_userid_list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorityOption {
    #[serde(default)]
    pub priority_type: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priority_userid_list: Vec<String>,
}

/// A1 request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListLinkRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// A1 answer: one page of link ids. An empty `next_cursor` means the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListLinkResponse {
    pub link_id_list: Vec<String>,
    #[serde(default)]
    pub next_cursor: String,
}

/// A2, A5 request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkIdRequest {
    pub link_id: String,
}

/// The `link` object of A2 and A3 answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    #[serde(default)]
    pub link_id: String,
    pub link_name: String,
    pub url: String,
    #[serde(default)]
    pub create_time: i64,
    /// Officially inside `link`; WeCom's default is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark_source: Option<bool>,
}

/// A2 answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetLinkResponse {
    pub link: LinkInfo,
    pub range: LinkRange,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_option: Option<PriorityOption>,
    /// The skill text puts `skip_verify` at the top level; accepted when `link` lacks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_verify: Option<bool>,
}

impl GetLinkResponse {
    /// The link as observed, with WeCom's defaults applied (skip_verify and mark_source
    /// default to true).
    pub fn into_remote(self, link_id: &str) -> RemoteLink {
        let skip_verify = self.link.skip_verify.or(self.skip_verify).unwrap_or(true);
        RemoteLink {
            link_id: if self.link.link_id.is_empty() {
                link_id.to_string()
            } else {
                self.link.link_id
            },
            link_name: self.link.link_name,
            url: self.link.url,
            create_time: self.link.create_time,
            skip_verify,
            mark_source: self.link.mark_source.unwrap_or(true),
            range: self.range,
            priority_option: self.priority_option.filter(|p| p.priority_type != 0),
        }
    }
}

/// A link as WeCom reports it, normalised: what the reconciler diffs against.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLink {
    pub link_id: String,
    pub link_name: String,
    pub url: String,
    pub create_time: i64,
    pub skip_verify: bool,
    pub mark_source: bool,
    pub range: LinkRange,
    pub priority_option: Option<PriorityOption>,
}

/// A3 request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateLinkRequest {
    pub link_name: String,
    pub range: LinkRange,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_option: Option<PriorityOption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark_source: Option<bool>,
}

/// A3 answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateLinkResponse {
    pub link: LinkInfo,
}

/// A4 request. `range` and `priority_option` are full replacements (G1, R1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateLinkRequest {
    pub link_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<LinkRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_option: Option<PriorityOption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark_source: Option<bool>,
}

/// A6 request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRequest {
    pub link_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One A6 `customer_list[]` item (official fields; the skill's `customer_userid` is an alias
/// of `userid`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub external_userid: String,
    #[serde(default, alias = "customer_userid")]
    pub userid: String,
    /// 0 not yet messaged, 1 messaged, 2 unknown.
    #[serde(default)]
    pub chat_status: u8,
    /// The customer_channel the customer came through (empty when none).
    #[serde(default)]
    pub state: String,
    /// When the customer was added (Unix seconds). The skill text lists it; WeCom's own
    /// documentation does not, so it is read when present and never required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_time: Option<i64>,
}

/// A6 answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerResponse {
    pub customer_list: Vec<Customer>,
    #[serde(default)]
    pub next_cursor: String,
}

/// A7 request: unix seconds, day granularity, closed interval, at most 30 days apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatisticRequest {
    pub link_id: String,
    pub start_time: i64,
    pub end_time: i64,
}

/// A7 answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatisticResponse {
    pub click_link_customer_cnt: u64,
    pub new_customer_cnt: u64,
}

/// One quota batch of A8.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaBatch {
    /// Unix seconds: midnight of the expiry day.
    pub expire_date: i64,
    pub balance: u64,
}

/// A8 answer. `total` is the cumulative quota used, not purchased; `balance` may exceed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaResponse {
    pub total: u64,
    pub balance: u64,
    #[serde(default)]
    pub quota_list: Vec<QuotaBatch>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a2_official_shape_parses_with_defaults() {
        let body = r#"{"errcode":0,"errmsg":"ok","link":{"link_id":"cawcde","link_name":"n",
            "url":"https://work.weixin.qq.com/ca/cawcde","create_time":1672502400,"skip_verify":false},
            "range":{"user_list":["zhangsan"],"department_list":[2]},"extra":1}"#;
        let parsed: GetLinkResponse = serde_json::from_str(body).unwrap();
        let remote = parsed.into_remote("cawcde");
        assert!(!remote.skip_verify);
        assert!(remote.mark_source);
        assert_eq!(remote.range.department_list, vec![2]);
        assert_eq!(remote.priority_option, None);
    }

    #[test]
    fn a2_skill_shape_top_level_skip_verify_is_accepted() {
        let body = r#"{"link":{"link_name":"n","url":"u","create_time":1},"skip_verify":false,
            "range":{"user_list":["a"]}}"#;
        let parsed: GetLinkResponse = serde_json::from_str(body).unwrap();
        let remote = parsed.into_remote("given");
        assert_eq!(remote.link_id, "given");
        assert!(!remote.skip_verify);
    }

    #[test]
    fn a6_accepts_official_and_skill_member_field() {
        let official: Customer = serde_json::from_str(
            r#"{"external_userid":"wm1","userid":"zhangsan","chat_status":1,"state":"c"}"#,
        )
        .unwrap();
        let skill: Customer = serde_json::from_str(
            r#"{"external_userid":"wm1","customer_userid":"zhangsan","add_time":5}"#,
        )
        .unwrap();
        assert_eq!(official.userid, skill.userid);
        assert_eq!(official.state, "c");
        assert_eq!((official.add_time, skill.add_time), (None, Some(5)));
    }

    #[test]
    fn token_debug_never_shows_the_token() {
        let t = TokenResponse {
            access_token: "SECRET-TOKEN-VALUE".into(),
            expires_in: 7200,
        };
        assert!(!format!("{t:?}").contains("SECRET-TOKEN-VALUE"));
    }

    #[test]
    fn update_request_always_carries_both_range_lists() {
        let req = UpdateLinkRequest {
            link_id: "l".into(),
            range: Some(LinkRange {
                user_list: vec!["a".into()],
                department_list: vec![],
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(json["range"]["department_list"], serde_json::json!([]));
    }
}
