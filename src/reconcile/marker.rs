//! The create-pending marker, written on the object before A3: when the create could have
//! been sent at the earliest, and what it sent (the link name and a fingerprint of the
//! range). A pass that finds the marker without a link id looks for the link an
//! interrupted create may have made, matching on what was sent, so an edit of the spec
//! made meanwhile cannot hide that link and cause a second one.
//!
//! The annotation holds JSON, `{"at":1733300000,"linkName":"...","range":"5f1c..."}`. A
//! bare number (what earlier versions wrote) is a time with nothing recorded of the
//! request; anything else is a marker whose time is unknown, never 1970.

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use super::plan::{DesiredLink, normalised_range};
use crate::wecom::types::{LinkRange, RemoteLink};

/// How long after the marker an A3 may still be sent (it waits for the request budget);
/// later, the client gives up without sending ([`crate::wecom::WeComError::NotSent`]).
pub const CREATE_SEND_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// A link made up to this long before the marker's time still counts (clock skew between
/// this host and WeCom).
const CLOCK_SKEW_SECS: i64 = 60;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMarker {
    /// Unix seconds when the marker was written; `None`: unknown (a malformed marker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
    /// The `link_name` A3 sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_name: Option<String>,
    /// [`range_fingerprint`] of the range A3 sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
}

/// A short, stable fingerprint of a range (order and duplicates do not matter).
pub fn range_fingerprint(range: &LinkRange) -> String {
    let canonical = serde_json::to_vec(&normalised_range(range)).unwrap_or_default();
    let digest = Sha1::digest(&canonical);
    hex::encode(&digest[..8])
}

impl CreateMarker {
    /// The marker for an A3 of `desired` about to be sent at `at`.
    pub fn for_request(at: i64, desired: &DesiredLink) -> Self {
        CreateMarker {
            at: Some(at),
            link_name: Some(desired.link_name.clone()),
            range: Some(range_fingerprint(&desired.range)),
        }
    }

    /// Reads the annotation's value; never fails (see the module docs).
    pub fn parse(value: &str) -> Self {
        let value = value.trim();
        if let Ok(at) = value.parse::<i64>() {
            return CreateMarker {
                at: Some(at).filter(|t| *t > 0),
                ..Default::default()
            };
        }
        serde_json::from_str::<serde_json::Value>(value)
            .ok()
            .filter(serde_json::Value::is_object)
            .and_then(|object| serde_json::from_value::<CreateMarker>(object).ok())
            .map(|mut marker| {
                marker.at = marker.at.filter(|t| *t > 0);
                marker
            })
            .unwrap_or_default()
    }

    /// When the interrupted A3 may have been sent, as seen at `now`: a time up to the clock
    /// skew ahead counts as `now`; one further ahead (a hand-written annotation, a broken
    /// clock) is unknown, like a malformed one, so the grace restarts from `now` instead of
    /// waiting until that time.
    pub fn sent_at(&self, now: i64) -> Option<i64> {
        self.at
            .filter(|at| *at <= now.saturating_add(CLOCK_SKEW_SECS))
            .map(|at| at.min(now))
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether `remote` can be the link the interrupted A3 made: the name and range it sent
    /// (the spec's when the marker does not say), made no earlier than the marker.
    pub fn matches(&self, remote: &RemoteLink, spec: &DesiredLink) -> bool {
        let name = self.link_name.as_deref().unwrap_or(&spec.link_name);
        let range = match &self.range {
            Some(fingerprint) => range_fingerprint(&remote.range) == *fingerprint,
            None => normalised_range(&remote.range) == spec.range,
        };
        let recent = self
            .at
            .is_none_or(|at| remote.create_time >= at.saturating_sub(CLOCK_SKEW_SECS));
        remote.link_name == name && range && recent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(name: &str, users: &[&str]) -> DesiredLink {
        DesiredLink {
            link_name: name.into(),
            range: normalised_range(&LinkRange {
                user_list: users.iter().map(|u| u.to_string()).collect(),
                department_list: vec![],
            }),
            skip_verify: true,
            priority_option: None,
            mark_source: None,
        }
    }

    fn remote(name: &str, users: &[&str], create_time: i64) -> RemoteLink {
        RemoteLink {
            link_id: "l".into(),
            link_name: name.into(),
            url: String::new(),
            create_time,
            skip_verify: true,
            mark_source: true,
            range: LinkRange {
                user_list: users.iter().map(|u| u.to_string()).collect(),
                department_list: vec![],
            },
            priority_option: None,
        }
    }

    #[test]
    fn markers_read_back_what_was_written() {
        let marker = CreateMarker::for_request(1_700_000_000, &desired("Sales", &["b", "a"]));
        assert_eq!(CreateMarker::parse(&marker.to_annotation()), marker);
        assert_eq!(
            CreateMarker::parse("1700000000"),
            CreateMarker {
                at: Some(1_700_000_000),
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_time_ahead_of_the_clock_is_now_or_unknown() {
        let at = |t: i64| CreateMarker {
            at: Some(t),
            ..Default::default()
        };
        let now = 1_700_000_000;
        assert_eq!(at(now - 5).sent_at(now), Some(now - 5));
        assert_eq!(
            at(now + 30).sent_at(now),
            Some(now),
            "within the clock skew"
        );
        assert_eq!(at(now + 3600).sent_at(now), None);
        assert_eq!(at(i64::MAX).sent_at(now), None);
        assert_eq!(CreateMarker::default().sent_at(now), None);
    }

    #[test]
    fn a_malformed_marker_has_no_time_rather_than_1970() {
        for value in ["", "garbage", "-5", "0", "{\"at\": \"soon\"}", "[1]"] {
            assert_eq!(CreateMarker::parse(value).at, None, "{value:?}");
        }
    }

    #[test]
    fn matching_uses_what_was_sent_not_the_edited_spec() {
        let sent = desired("Sales", &["a", "b"]);
        let marker = CreateMarker::for_request(1_700_000_000, &sent);
        let edited = desired("Sales 2", &["c"]);
        let made = remote("Sales", &["b", "a"], 1_700_000_003);
        assert!(marker.matches(&made, &edited), "found despite the edit");
        assert!(!marker.matches(&remote("Sales", &["c"], 1_700_000_003), &edited));
        assert!(!marker.matches(&remote("Other", &["a", "b"], 1_700_000_003), &edited));
        assert!(
            !marker.matches(&remote("Sales", &["a", "b"], 1_600_000_000), &edited),
            "made long before the marker"
        );
        // An old marker (time only) matches on the spec.
        let old = CreateMarker::parse("1700000000");
        assert!(old.matches(&made, &sent));
        assert!(!old.matches(&made, &edited));
        // Unknown time: any age matches.
        let unknown = CreateMarker::parse("garbage");
        assert!(unknown.matches(&remote("Sales", &["a", "b"], 1), &sent));
    }
}
