//! The pure decisions of a reconcile pass: what the link should look like, how it differs
//! from what WeCom reports, and which single call (if any) brings them together.
//!
//! Nothing here does I/O, so every decision is unit-tested without WeCom or Kubernetes.

use std::collections::BTreeSet;

use crate::api::{AcquisitionLinkSpec, ChannelUrl, ManagementPolicy};
use crate::wecom::types::{
    CreateLinkRequest, LinkRange, PriorityOption, RemoteLink, UpdateLinkRequest,
};

/// WeCom's limits (WECOM-NOTES "Limits").
pub const MAX_LINK_NAME_CHARS: usize = 30;
pub const MAX_RANGE_USERS: usize = 500;
pub const MAX_PRIORITY_USERS: usize = 1000;
pub const MAX_CHANNEL_BYTES: usize = 64;

/// The link as the spec wants it, normalised so that order and duplicates in the YAML do
/// not count as differences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredLink {
    pub link_name: String,
    pub range: LinkRange,
    pub skip_verify: bool,
    /// `None`: not managed (WeCom's value is left alone).
    pub priority_option: Option<PriorityOption>,
    /// `None`: not managed.
    pub mark_source: Option<bool>,
}

pub(crate) fn normalised_range(range: &LinkRange) -> LinkRange {
    let users: BTreeSet<&String> = range.user_list.iter().collect();
    let departments: BTreeSet<u64> = range.department_list.iter().copied().collect();
    LinkRange {
        user_list: users.into_iter().cloned().collect(),
        department_list: departments.into_iter().collect(),
    }
}

fn normalised_priority(option: &PriorityOption) -> PriorityOption {
    let users: BTreeSet<&String> = option.priority_userid_list.iter().collect();
    PriorityOption {
        priority_type: option.priority_type,
        priority_userid_list: users.into_iter().cloned().collect(),
    }
}

impl DesiredLink {
    pub fn from_spec(spec: &AcquisitionLinkSpec) -> Self {
        DesiredLink {
            link_name: spec.link_name.clone(),
            range: normalised_range(&LinkRange {
                user_list: spec.range.user_list.clone(),
                department_list: spec.range.department_list.clone(),
            }),
            skip_verify: spec.skip_verify,
            priority_option: spec.priority_option.as_ref().map(|p| {
                normalised_priority(&PriorityOption {
                    priority_type: p.priority_type,
                    priority_userid_list: p.priority_user_list.clone(),
                })
            }),
            mark_source: spec.mark_source,
        }
    }

    /// A3 body.
    pub fn create_request(&self) -> CreateLinkRequest {
        CreateLinkRequest {
            link_name: self.link_name.clone(),
            range: self.range.clone(),
            skip_verify: Some(self.skip_verify),
            priority_option: self.priority_option.clone(),
            mark_source: self.mark_source,
        }
    }

    /// A4 body. Always the complete desired link, range included (G1, R1): an update never
    /// sends a delta, so a concurrent console edit cannot survive half-applied.
    pub fn update_request(&self, link_id: &str) -> UpdateLinkRequest {
        UpdateLinkRequest {
            link_id: link_id.to_string(),
            link_name: Some(self.link_name.clone()),
            range: Some(self.range.clone()),
            skip_verify: Some(self.skip_verify),
            priority_option: self.priority_option.clone(),
            mark_source: self.mark_source,
        }
    }

    /// Whether a remote link is the one an interrupted create may have made.
    pub fn matches_identity(&self, remote: &RemoteLink) -> bool {
        remote.link_name == self.link_name && normalised_range(&remote.range) == self.range
    }
}

/// One field that differs between the spec and WeCom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldChange {
    LinkName {
        from: String,
        to: String,
    },
    Range {
        from: LinkRange,
        to: LinkRange,
    },
    SkipVerify {
        from: bool,
        to: bool,
    },
    PriorityOption {
        from: Option<PriorityOption>,
        to: Option<PriorityOption>,
    },
    MarkSource {
        from: bool,
        to: bool,
    },
}

impl FieldChange {
    pub fn field(&self) -> &'static str {
        match self {
            FieldChange::LinkName { .. } => "linkName",
            FieldChange::Range { .. } => "range",
            FieldChange::SkipVerify { .. } => "skipVerify",
            FieldChange::PriorityOption { .. } => "priorityOption",
            FieldChange::MarkSource { .. } => "markSource",
        }
    }
}

impl std::fmt::Display for FieldChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldChange::LinkName { from, to } => write!(f, "linkName: {from:?} -> {to:?}"),
            FieldChange::Range { from, to } => write!(
                f,
                "range: users {:?} departments {:?} -> users {:?} departments {:?}",
                from.user_list, from.department_list, to.user_list, to.department_list
            ),
            FieldChange::SkipVerify { from, to } => write!(f, "skipVerify: {from} -> {to}"),
            FieldChange::PriorityOption { from, to } => {
                write!(f, "priorityOption: {from:?} -> {to:?}")
            }
            FieldChange::MarkSource { from, to } => write!(f, "markSource: {from} -> {to}"),
        }
    }
}

/// Every field where WeCom differs from the spec. Ranges compare as sets.
pub fn diff(desired: &DesiredLink, remote: &RemoteLink) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    if remote.link_name != desired.link_name {
        changes.push(FieldChange::LinkName {
            from: remote.link_name.clone(),
            to: desired.link_name.clone(),
        });
    }
    let remote_range = normalised_range(&remote.range);
    if remote_range != desired.range {
        changes.push(FieldChange::Range {
            from: remote_range,
            to: desired.range.clone(),
        });
    }
    if remote.skip_verify != desired.skip_verify {
        changes.push(FieldChange::SkipVerify {
            from: remote.skip_verify,
            to: desired.skip_verify,
        });
    }
    if let Some(want) = &desired.priority_option {
        let have = remote.priority_option.as_ref().map(normalised_priority);
        if have.as_ref() != Some(want) {
            changes.push(FieldChange::PriorityOption {
                from: have,
                to: Some(want.clone()),
            });
        }
    }
    if let Some(want) = desired.mark_source
        && remote.mark_source != want
    {
        changes.push(FieldChange::MarkSource {
            from: remote.mark_source,
            to: want,
        });
    }
    changes
}

/// Checks the spec against WeCom's rules. The CRD's CEL rules refuse the same things at
/// admission; this repeats them for API servers without CEL (before v1.25) and for files
/// read by `plan`/`apply`. The message names the field and the rule.
pub fn validate(spec: &AcquisitionLinkSpec) -> Result<(), String> {
    let name_chars = spec.link_name.chars().count();
    if name_chars == 0 || name_chars > MAX_LINK_NAME_CHARS {
        return Err(format!(
            "spec.linkName must be 1 to {MAX_LINK_NAME_CHARS} characters, it has {name_chars}"
        ));
    }
    if spec.management_policy == ManagementPolicy::Observe
        && spec.link_id.as_deref().is_none_or(str::is_empty)
    {
        return Err(
            "spec.managementPolicy Observe needs spec.linkId: set it to the id of the WeCom link to observe"
                .into(),
        );
    }
    if spec.app_ref.name.is_empty() {
        return Err("spec.appRef.name must name a WeComApp in the same namespace".into());
    }
    if spec.range.user_list.is_empty() && spec.range.department_list.is_empty() {
        return Err("spec.range needs at least one of userList and departmentList".into());
    }
    let users: BTreeSet<&String> = spec.range.user_list.iter().collect();
    if users.len() != spec.range.user_list.len() {
        return Err("spec.range.userList has duplicate entries".into());
    }
    if users.len() > MAX_RANGE_USERS {
        return Err(format!(
            "spec.range.userList has {} members; a link covers at most {MAX_RANGE_USERS} people",
            users.len()
        ));
    }
    if let Some(priority) = &spec.priority_option {
        match priority.priority_type {
            1 => {}
            2 if priority.priority_user_list.is_empty() => {
                return Err("spec.priorityOption.priorityType 2 needs priorityUserList".into());
            }
            2 if priority.priority_user_list.len() > MAX_PRIORITY_USERS => {
                return Err(format!(
                    "spec.priorityOption.priorityUserList has more than {MAX_PRIORITY_USERS} members"
                ));
            }
            2 => {}
            other => {
                return Err(format!(
                    "spec.priorityOption.priorityType must be 1 or 2, not {other}"
                ));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for channel in &spec.channels {
        if channel.is_empty() || channel.len() > MAX_CHANNEL_BYTES {
            return Err(format!(
                "spec.channels entry {channel:?} must be 1 to {MAX_CHANNEL_BYTES} bytes (WeCom cuts longer values)"
            ));
        }
        if !seen.insert(channel) {
            return Err(format!("spec.channels lists {channel:?} twice"));
        }
    }
    Ok(())
}

/// encodeURIComponent's set: everything but ASCII letters, digits and `-_.!~*'()`.
const URI_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The URLs to publish for each customer_channel (G3, R6): the https form with
/// `customer_channel`, and the `weixin://` scheme form that opens WeChat directly.
pub fn channel_urls(url: &str, channels: &[String]) -> Vec<ChannelUrl> {
    channels
        .iter()
        .map(|channel| {
            let separator = if url.contains('?') { '&' } else { '?' };
            let encoded = percent_encoding::utf8_percent_encode(channel, URI_COMPONENT);
            let with_channel = format!("{url}{separator}customer_channel={encoded}");
            let scheme_url = format!(
                "weixin://biz/ww/profile/{}",
                percent_encoding::utf8_percent_encode(&with_channel, URI_COMPONENT)
            );
            ChannelUrl {
                channel: channel.clone(),
                url: with_channel,
                scheme_url,
            }
        })
        .collect()
}

/// China Standard Time, the zone WeCom rounds statistics days in.
pub const CHINA_OFFSET_SECS: i64 = 8 * 3600;
const DAY_SECS: i64 = 86_400;

/// A statistics window of whole China-time days ending today (R5: at most 30 days).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsWindow {
    pub start_time: i64,
    pub end_time: i64,
    pub days: u32,
    pub from: String,
    pub to: String,
}

/// The window of `days` (clamped to 1..=30) whole days ending with today, China time.
pub fn stats_window(now_unix: i64, days: u32) -> StatsWindow {
    let days = days.clamp(1, 30);
    let local_day = (now_unix + CHINA_OFFSET_SECS).div_euclid(DAY_SECS);
    let first_day = local_day - i64::from(days) + 1;
    StatsWindow {
        start_time: first_day * DAY_SECS - CHINA_OFFSET_SECS,
        end_time: (local_day + 1) * DAY_SECS - CHINA_OFFSET_SECS - 1,
        days,
        from: civil_date(first_day),
        to: civil_date(local_day),
    }
}

/// YYYY-MM-DD of a day number since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Back-off before the next attempt after `failures` consecutive failed passes:
/// 5 s doubling to at most 10 minutes, scaled by `jitter` in [0.5, 1.0] so that many
/// links failing together do not retry together.
pub fn retry_delay(failures: u32, jitter: f64) -> std::time::Duration {
    let exponent = failures.saturating_sub(1).min(7);
    let base = (5u64 << exponent).min(600) as f64;
    std::time::Duration::from_secs_f64(base * jitter.clamp(0.5, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LinkRangeSpec, PriorityOptionSpec};

    fn spec() -> AcquisitionLinkSpec {
        let mut spec =
            AcquisitionLinkSpec::new("app", "Sales", vec!["lisi".into(), "zhangsan".into()]);
        spec.range.department_list = vec![2];
        spec
    }

    fn remote_matching(desired: &DesiredLink) -> RemoteLink {
        RemoteLink {
            link_id: "cawcd1".into(),
            link_name: desired.link_name.clone(),
            url: "https://work.weixin.qq.com/ca/cawcd1".into(),
            create_time: 1,
            skip_verify: desired.skip_verify,
            mark_source: true,
            range: LinkRange {
                user_list: desired.range.user_list.iter().rev().cloned().collect(),
                department_list: desired.range.department_list.clone(),
            },
            priority_option: None,
        }
    }

    #[test]
    fn in_sync_link_has_no_changes_even_when_wecom_reorders_the_range() {
        let desired = DesiredLink::from_spec(&spec());
        assert!(diff(&desired, &remote_matching(&desired)).is_empty());
    }

    #[test]
    fn drift_in_range_is_reported_and_the_update_carries_the_complete_range() {
        let desired = DesiredLink::from_spec(&spec());
        let mut remote = remote_matching(&desired);
        remote.range.user_list = vec!["wangwu".into()];
        let changes = diff(&desired, &remote);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].field(), "range");
        let update = desired.update_request(&remote.link_id);
        let range = update.range.unwrap();
        assert_eq!(
            range.user_list,
            vec!["lisi".to_string(), "zhangsan".to_string()]
        );
        assert_eq!(range.department_list, vec![2]);
        assert_eq!(update.link_name.as_deref(), Some("Sales"));
    }

    #[test]
    fn unmanaged_mark_source_and_priority_are_left_alone() {
        let desired = DesiredLink::from_spec(&spec());
        let mut remote = remote_matching(&desired);
        remote.mark_source = false;
        remote.priority_option = Some(PriorityOption {
            priority_type: 1,
            priority_userid_list: vec![],
        });
        assert!(diff(&desired, &remote).is_empty());
        let mut managed = spec();
        managed.mark_source = Some(true);
        managed.priority_option = Some(PriorityOptionSpec {
            priority_type: 1,
            priority_user_list: vec![],
        });
        let desired = DesiredLink::from_spec(&managed);
        let fields: Vec<_> = diff(&desired, &remote)
            .iter()
            .map(FieldChange::field)
            .collect();
        assert_eq!(fields, vec!["markSource"]);
    }

    #[test]
    fn name_and_skip_verify_drift_are_detected() {
        let desired = DesiredLink::from_spec(&spec());
        let mut remote = remote_matching(&desired);
        remote.link_name = "console edit".into();
        remote.skip_verify = false;
        let fields: Vec<_> = diff(&desired, &remote)
            .iter()
            .map(FieldChange::field)
            .collect();
        assert_eq!(fields, vec!["linkName", "skipVerify"]);
    }

    #[test]
    fn validation_names_the_field_and_rule() {
        let mut s = spec();
        s.link_name = "一".repeat(31);
        assert!(validate(&s).unwrap_err().contains("linkName"));
        s.link_name = "一".repeat(30);
        assert!(validate(&s).is_ok(), "30 CJK characters are allowed");
        s.range = LinkRangeSpec::default();
        assert!(validate(&s).unwrap_err().contains("range"));
        s.range.user_list = (0..501).map(|i| format!("u{i}")).collect();
        assert!(validate(&s).unwrap_err().contains("500"));
        s.range.user_list = vec!["a".into(), "a".into()];
        assert!(validate(&s).unwrap_err().contains("duplicate"));
        s.range.user_list = vec!["a".into()];
        s.priority_option = Some(PriorityOptionSpec {
            priority_type: 2,
            priority_user_list: vec![],
        });
        assert!(validate(&s).unwrap_err().contains("priorityUserList"));
        s.priority_option = None;
        s.channels = vec!["x".repeat(65)];
        assert!(validate(&s).unwrap_err().contains("64 bytes"));
        s.channels = vec!["a".into(), "a".into()];
        assert!(validate(&s).unwrap_err().contains("twice"));
    }

    #[test]
    fn observe_needs_a_link_id() {
        let mut s = spec();
        s.management_policy = ManagementPolicy::Observe;
        assert!(validate(&s).unwrap_err().contains("spec.linkId"));
        s.link_id = Some(String::new());
        assert!(validate(&s).is_err(), "an empty id names no link");
        s.link_id = Some("cawcd1".into());
        assert!(validate(&s).is_ok());
    }

    #[test]
    fn channel_urls_have_https_and_scheme_forms() {
        let urls = channel_urls(
            "https://work.weixin.qq.com/ca/cawcd1",
            &["ad campaign".into()],
        );
        assert_eq!(
            urls[0].url,
            "https://work.weixin.qq.com/ca/cawcd1?customer_channel=ad%20campaign"
        );
        assert_eq!(
            urls[0].scheme_url,
            "weixin://biz/ww/profile/https%3A%2F%2Fwork.weixin.qq.com%2Fca%2Fcawcd1%3Fcustomer_channel%3Dad%2520campaign"
        );
    }

    #[test]
    fn stats_window_is_whole_china_days_at_most_30() {
        // 2026-11-24 01:00 China time = 2026-11-23 17:00 UTC.
        let now = 1_795_453_200 + 17 * 3600 - 1_795_453_200 % 86_400;
        let w = stats_window(now, 30);
        assert_eq!(w.to, "2026-11-24");
        assert_eq!(w.from, "2026-10-26");
        assert!(w.end_time - w.start_time < 30 * 86_400);
        assert_eq!((w.start_time + CHINA_OFFSET_SECS) % 86_400, 0);
        assert_eq!(stats_window(now, 90).days, 30);
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay(1, 1.0).as_secs(), 5);
        assert_eq!(retry_delay(2, 1.0).as_secs(), 10);
        assert_eq!(retry_delay(20, 1.0).as_secs(), 600);
        assert_eq!(retry_delay(20, 0.1).as_secs(), 300);
    }
}
