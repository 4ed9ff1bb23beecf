//! Conditions as Kubernetes API conventions want them: one per type, `lastTransitionTime`
//! moving only when the status flips, stable messages (no timestamps) so that an unchanged
//! outcome writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const SYNCED: &str = "Synced";
pub const QUOTA_LOW: &str = "QuotaLow";
pub const QUOTA_EXHAUSTED: &str = "QuotaExhausted";
pub const QUOTA_EXPIRING_SOON: &str = "QuotaExpiringSoon";
/// WeCom's rate limit closed one of the corp's APIs (45009, 45033).
pub const THROTTLED: &str = "Throttled";

/// Balance under which `QuotaLow` is set (WeCom's balance_low threshold).
pub const LOW_BALANCE: u64 = 20;
/// A batch expiring within this many days sets `QuotaExpiringSoon` (WeCom warns from 14).
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Reasons, shared with the ArgoCD health script and the docs.
pub mod reason {
    /// Throttled=True: WeCom answered 45009 or 45033.
    pub const RATE_LIMITED: &str = "RateLimited";
    /// Throttled=False: every API of the corp is open again.
    pub const WITHIN_LIMITS: &str = "WithinLimits";
    pub const AVAILABLE: &str = "Available";
    pub const IN_SYNC: &str = "InSync";
    pub const CREATING: &str = "Creating";
    pub const DELETING: &str = "Deleting";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PERMISSION_DENIED: &str = "PermissionDenied";
    pub const WECOM_ERROR: &str = "WeComError";
    pub const REMOTE_DELETED: &str = "RemoteDeleted";
    /// `spec.linkId` names a link this app's corp does not have, and never had here.
    pub const LINK_NOT_FOUND: &str = "LinkNotFound";
    pub const CREATE_INCOMPLETE: &str = "CreateIncomplete";
    pub const QUOTA_EXHAUSTED: &str = "QuotaExhausted";
    pub const PAUSED: &str = "Paused";
    /// An observed link (managementPolicy Observe) differs from the spec; never corrected.
    pub const DRIFTED: &str = "Drifted";
    /// Another AcquisitionLink claimed the same WeCom link first.
    pub const LINK_ID_CONFLICT: &str = "LinkIdConflict";
    pub const RETRYABLE_ERROR: &str = "RetryableError";
    pub const APP_NOT_READY: &str = "AppNotReady";
    pub const CREDENTIALS_READY: &str = "CredentialsReady";
    pub const CREDENTIALS_INVALID: &str = "CredentialsInvalid";
    /// WeCom refuses calls from the controller's IP (60020): the app's trusted IPs.
    pub const IP_NOT_ALLOWED: &str = "IpNotAllowed";
    /// The server at apiBaseUrl answered what WeCom never sends (malformed, oversized or
    /// non-JSON answers, listings that do not end).
    pub const BAD_ANSWER: &str = "BadAnswer";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// The app's apiBaseUrl names a host not in `--allowed-api-hosts`.
    pub const API_HOST_NOT_ALLOWED: &str = "ApiHostNotAllowed";
    /// The corp cancelled its authorisation of the app's suite (cancel_auth).
    pub const AUTHORIZATION_CANCELLED: &str = "AuthorizationCancelled";
    pub const BALANCE_OK: &str = "BalanceOk";
    pub const BALANCE_LOW: &str = "BalanceLow";
    pub const BALANCE_EXHAUSTED: &str = "BalanceExhausted";
    pub const NO_BATCH_EXPIRING: &str = "NoBatchExpiring";
    pub const BATCH_EXPIRING: &str = "BatchExpiring";
    /// A pass on this object hit a bug in the controller (a panic, caught): retried with
    /// back-off; the controller log has the details.
    pub const INTERNAL_ERROR: &str = "InternalError";
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// A pass that sets conditions, each stamped with the generation it acted on and its time.
pub trait Stamped {
    /// The conditions being built, the generation and the time of the pass.
    fn parts(&mut self) -> (&mut Vec<Condition>, Option<i64>, &Time);

    fn set(&mut self, type_: &str, status: bool, reason: &str, message: impl Into<String>) {
        let (conditions, generation, now) = self.parts();
        set(conditions, type_, status, reason, message, generation, now);
    }
}

/// Sets one condition, keeping `lastTransitionTime` when the status does not change.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != status {
            existing.last_transition_time = now.clone();
        }
        existing.status = status;
        existing.reason = reason.to_string();
        existing.message = message;
        existing.observed_generation = generation;
    } else {
        conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut c = Vec::new();
        set(
            &mut c,
            READY,
            false,
            reason::CREATING,
            "creating",
            Some(1),
            &at(10),
        );
        set(
            &mut c,
            READY,
            false,
            reason::RETRYABLE_ERROR,
            "busy",
            Some(1),
            &at(20),
        );
        assert_eq!(c[0].last_transition_time, at(10));
        assert_eq!(c[0].reason, reason::RETRYABLE_ERROR);
        set(
            &mut c,
            READY,
            true,
            reason::AVAILABLE,
            "ok",
            Some(2),
            &at(30),
        );
        assert_eq!(c[0].last_transition_time, at(30));
        assert_eq!(c.len(), 1);
        assert!(is_true(&c, READY));
    }
}
