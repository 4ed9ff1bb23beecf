//! `AcquisitionLink`: one WeCom customer-acquisition link (获客链接).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest `linkName` WeCom accepts, in characters.
pub const LINK_NAME_MAX_CHARS: u32 = 30;
/// Most members in `range.userList` (WeCom's limit for the whole range, 40058 beyond).
pub const USER_LIST_MAX_ITEMS: u32 = 500;
/// Most members in `priorityOption.priorityUserList`.
pub const PRIORITY_USER_LIST_MAX_ITEMS: u32 = 1000;
/// Longest customer_channel value WeCom keeps, in UTF-8 bytes (it cuts longer ones).
pub const CHANNEL_MAX_BYTES: u32 = 64;
/// Most `channels` per link. WeCom sets no limit; this one bounds the status size and the
/// cost of the CEL rule over the list.
pub const CHANNELS_MAX_ITEMS: u32 = 100;
/// Longest WeCom userid, in bytes (so also in characters).
pub const USER_ID_MAX_LEN: u32 = 64;

/// A customer-acquisition link (获客链接), kept in line with WeCom by the controller.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "acquisition.wecom.dev",
    version = "v1alpha1",
    kind = "AcquisitionLink",
    doc = "One WeCom customer-acquisition link (获客链接), created, kept in line with the spec and deleted by the controller.",
    namespaced,
    status = "AcquisitionLinkStatus",
    shortname = "acql",
    category = "wecom",
    printcolumn = r#"{"name":"Link ID","type":"string","jsonPath":".status.linkId"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.managementPolicy"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Customers","type":"integer","jsonPath":".status.customers.total"}"#,
    printcolumn = r#"{"name":"Quota","type":"integer","jsonPath":".status.quota.balance"}"#,
    printcolumn = r#"{"name":"URL","type":"string","priority":1,"jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
// Transition rule: it runs on updates only (oldSelf exists), so setting linkId later to
// adopt a link stays possible; changing or removing it does not, because the controller
// would silently start managing another WeCom link.
#[x_kube(validation = Rule::new(
    "!has(oldSelf.linkId) || (has(self.linkId) && self.linkId == oldSelf.linkId)"
).message(
    "spec.linkId is immutable once set: to manage another WeCom link, create a new AcquisitionLink"
))]
// Observe only reads a link: it needs one to read. The controller repeats the check for API
// servers without CEL (plan::validate).
#[x_kube(validation = Rule::new(
    "!has(self.managementPolicy) || self.managementPolicy != 'Observe' || has(self.linkId)"
).message(
    "managementPolicy Observe needs spec.linkId: the id of the WeCom link to observe"
))]
pub struct AcquisitionLinkSpec {
    /// The WeComApp (same namespace) whose credentials manage this link.
    pub app_ref: AppRef,
    /// The link's display name in WeCom: 1 to 30 characters (not bytes).
    #[schemars(length(min = 1, max = LINK_NAME_MAX_CHARS))]
    pub link_name: String,
    /// Members and departments customers are handed to: at least one of the two lists,
    /// at most 500 people in all. Always sent whole on update (a full replacement, never a
    /// delta).
    pub range: LinkRangeSpec,
    /// Customers add the member without verification. WeCom's default is true.
    #[serde(default = "default_true")]
    pub skip_verify: bool,
    /// Priority assignment for customers who are already a member's friend; only some
    /// business categories support it. Unset: no priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_option: Option<PriorityOptionSpec>,
    /// Mark the customer's source on the member's side. WeCom's default is true; unset
    /// leaves WeCom's value alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark_source: Option<bool>,
    /// customer_channel values to publish URLs for (`status.channelUrls`): at most 100,
    /// unique, each 1 to 64 bytes in UTF-8 (WeCom cuts longer values). Conversion
    /// callbacks only fire for visits through a URL with a channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = CHANNELS_MAX_ITEMS), inner(length(min = 1, max = CHANNEL_MAX_BYTES)))]
    #[x_kube(
        merge_strategy = ListMerge::Set,
        validation = Rule::new("self.all(c, bytes(c).size() <= 64)")
            .message("each channel must be at most 64 bytes in UTF-8 (a Chinese character takes 3)")
    )]
    pub channels: Vec<String>,
    /// What happens to the WeCom link when this object is deleted: `Delete` (default)
    /// deletes it in WeCom, `Orphan` leaves it there.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// What happens when the link is deleted in WeCom (admin console or WeCom itself):
    /// `Recreate` (default) makes a new link with new URLs, `Orphan` marks this object
    /// `Ready=False` and stops. An adopted link (`linkId`) is never recreated: its id
    /// cannot change, so it is handled as `Orphan`.
    #[serde(default)]
    pub on_remote_delete: RemoteDeletePolicy,
    /// Adopt this existing WeCom link instead of creating one. Can be set later, but never
    /// changed or removed once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub link_id: Option<String>,
    /// `Manage` (default) keeps the WeCom link in line with the spec. `Observe` only reads
    /// the link named by `linkId` (required then): status shows its URLs, customers,
    /// statistics and quota, a difference from the spec is reported as `Drifted` and never
    /// corrected, and the link is never created, updated or deleted in WeCom, whatever
    /// `deletionPolicy` and `onRemoteDelete` say.
    #[serde(default)]
    pub management_policy: ManagementPolicy,
}

impl AcquisitionLinkSpec {
    /// A spec with the defaults of everything but the app, the name and the members.
    pub fn new(app: &str, link_name: &str, users: Vec<String>) -> Self {
        AcquisitionLinkSpec {
            app_ref: AppRef { name: app.into() },
            link_name: link_name.into(),
            range: LinkRangeSpec {
                user_list: users,
                department_list: vec![],
            },
            skip_verify: true,
            priority_option: None,
            mark_source: None,
            channels: vec![],
            deletion_policy: Default::default(),
            on_remote_delete: Default::default(),
            management_policy: Default::default(),
            link_id: None,
        }
    }
}

/// Whether the controller may write the WeCom link or only read it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ManagementPolicy {
    /// Create, update and delete the link as the spec says.
    #[default]
    Manage,
    /// Read only: report the link and its drift from the spec, never write it.
    Observe,
}

pub(crate) fn default_true() -> bool {
    true
}

/// Reference to a WeComApp in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRef {
    /// Name of the WeComApp.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Who receives the customers of a link: at most 500 people after department expansion.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.userList) && size(self.userList) > 0) || (has(self.departmentList) && size(self.departmentList) > 0)"
).message("range needs at least one member in userList or one department in departmentList"))]
pub struct LinkRangeSpec {
    /// Member userids: at most 500, unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = USER_LIST_MAX_ITEMS), inner(length(min = 1, max = USER_ID_MAX_LEN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub user_list: Vec<String>,
    /// Department ids, positive and unique (their members and sub-departments count
    /// toward the 500 people).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub department_list: Vec<u64>,
}

/// Priority assignment for customers who are already a member's friend.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "self.priorityType != 2 || (has(self.priorityUserList) && size(self.priorityUserList) > 0)"
).message("priorityType 2 needs a non-empty priorityUserList"))]
pub struct PriorityOptionSpec {
    /// 1: prefer any member who is already the customer's friend; 2: prefer such a member
    /// from `priorityUserList`.
    #[schemars(range(min = 1, max = 2))]
    pub priority_type: u32,
    /// Members preferred with type 2 (required then): at most 1000, unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = PRIORITY_USER_LIST_MAX_ITEMS),
        inner(length(min = 1, max = USER_ID_MAX_LEN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub priority_user_list: Vec<String>,
}

/// What happens to the WeCom link when the AcquisitionLink is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the WeCom link (A5).
    #[default]
    Delete,
    /// Leave the WeCom link as it is.
    Orphan,
}

/// What happens when WeCom says the link was deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RemoteDeletePolicy {
    /// Create a new link and publish its new URLs (shared QR codes change).
    #[default]
    Recreate,
    /// Mark the link `Ready=False, RemoteDeleted` and stop.
    Orphan,
}

/// How the controller came to manage the link.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LinkOrigin {
    /// The controller created it.
    Created,
    /// It existed and was adopted (`spec.linkId`, or found after an interrupted create).
    Adopted,
}

/// Observed state of an AcquisitionLink.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcquisitionLinkStatus {
    /// The WeCom link id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_id: Option<String>,
    /// The link URL (https://work.weixin.qq.com/ca/...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Whether the controller created or adopted the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<LinkOrigin>,
    /// One entry per `spec.channels` value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel_urls: Vec<ChannelUrl>,
    /// Customers added through the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customers: Option<CustomerCount>,
    /// Clicks and new customers over the statistics window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics: Option<LinkStatistics>,
    /// The app's quota, as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSummary>,
    /// `Ready` (the link exists and matches the spec) and `Synced` (the last pass
    /// succeeded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When a pass that observed WeCom last changed this status (RFC 3339). A pass that
    /// finds nothing new writes nothing, so an in-sync link keeps an older time: it is not
    /// a heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// Consecutive failed passes; drives the back-off and survives restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// The last `acquisition.wecom.dev/reconcile-requested-at` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// Not part of the resource (never serialized): the controller's cache dropped the
    /// object's `acquisition.wecom.dev/link-id` annotation because it held `linkId`, to
    /// keep 10,000 cached links small. The annotation is still on the server.
    #[serde(skip)]
    pub link_id_annotated: bool,
}

/// URLs of one customer_channel.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelUrl {
    /// The customer_channel value.
    pub channel: String,
    /// `URL?customer_channel=CHANNEL`.
    pub url: String,
    /// `weixin://biz/ww/profile/{urlencode(URL?customer_channel=CHANNEL)}`, which opens
    /// WeChat directly on mobile.
    pub scheme_url: String,
}

/// Customers added through the link (A6, and add_external_contact callbacks in between).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomerCount {
    /// All customers.
    pub total: u64,
    /// Customers per customer_channel (`""` for none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_channel: BTreeMap<String, u64>,
    /// When A6 was last counted in full (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_at: Option<String>,
    /// When the newest customer was added (RFC 3339), from the `CreateTime` of
    /// add_external_contact callbacks; A6 does not say when a customer was added (an
    /// `add_time` in its answer is read all the same). Kept across full counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_add_time: Option<String>,
}

impl CustomerCount {
    /// `last_add_time` in Unix seconds.
    pub fn last_added_at(&self) -> Option<i64> {
        let at = self.last_add_time.as_deref()?;
        at.parse::<k8s_openapi::jiff::Timestamp>()
            .ok()
            .map(|t| t.as_second())
    }

    /// Moves `last_add_time` to `unix_seconds` when that is later; true when it moved.
    pub fn note_added_at(&mut self, unix_seconds: i64) -> bool {
        if self
            .last_added_at()
            .is_some_and(|current| current >= unix_seconds)
        {
            return false;
        }
        let Ok(at) = k8s_openapi::jiff::Timestamp::from_second(unix_seconds) else {
            return false;
        };
        self.last_add_time = Some(at.to_string());
        true
    }
}

/// A7 statistics over a window of whole days (at most 30).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatistics {
    /// Length of the window in days.
    pub window_days: u32,
    /// Distinct customers who clicked the link.
    pub click_customers: u64,
    /// New customers through the link.
    pub new_customers: u64,
    /// First day of the window (YYYY-MM-DD, China time).
    pub from: String,
    /// Last day of the window, included (YYYY-MM-DD, China time).
    pub to: String,
}

/// The quota of the link's app.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSummary {
    /// Remaining quota.
    pub balance: u64,
    /// Cumulative quota used.
    pub total: u64,
}

/// Schema of a standard `metav1.Condition` list, keyed by type.
pub(crate) fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    serde_json::from_value(serde_json::json!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "description": "One aspect of the object's state (metav1.Condition).",
            "type": "object",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": {
                    "description": "When the status last changed (RFC 3339).",
                    "type": "string",
                    "format": "date-time"
                },
                "message": {
                    "description": "Human-readable detail; stable between passes (no timestamps).",
                    "type": "string"
                },
                "observedGeneration": {
                    "description": "The metadata.generation this condition was set from.",
                    "type": "integer",
                    "format": "int64"
                },
                "reason": {
                    "description": "Machine-readable CamelCase reason for the status.",
                    "type": "string"
                },
                "status": {
                    "description": "True, False or Unknown.",
                    "type": "string"
                },
                "type": {
                    "description": "The condition type, unique in the list.",
                    "type": "string"
                }
            }
        }
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    /// status.conditions of a CRD's first version's schema.
    fn conditions_of(crd: CustomResourceDefinition) -> Value {
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .map(serde_json::to_value)
            .and_then(Result::ok)
            .unwrap_or_default();
        schema["properties"]["status"]["properties"]["conditions"].clone()
    }

    #[test]
    fn conditions_are_a_list_map_keyed_by_a_required_type() {
        for (kind, conditions) in [
            (
                "AcquisitionLink",
                conditions_of(super::AcquisitionLink::crd()),
            ),
            ("WeComApp", conditions_of(crate::api::WeComApp::crd())),
        ] {
            assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}");
            assert_eq!(
                conditions["x-kubernetes-list-map-keys"],
                json!(["type"]),
                "{kind}"
            );
            // A v1.26 apiserver refuses a list-map key that is neither required nor defaulted.
            let required = conditions["items"]["required"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(required.contains(&json!("type")), "{kind}: {required:?}");
        }
    }
}
