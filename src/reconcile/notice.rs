//! A Kubernetes Event as a value: its type, reason, action and message. Every Event the
//! controller publishes is one of these, and [`Context::publish`](super::context::Context::publish)
//! is the one function that sends it (deduplicated into series by the recorder). The link
//! reconciler composes its messages in one place (`link::report::Happened`), the app
//! reconciler and the callback worker from the conditions they set, so the message of an
//! Event is the message of the condition it reports.

use std::borrow::Cow;

use kube::runtime::events::EventType;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub type_: EventType,
    pub reason: Cow<'static, str>,
    /// What the controller was doing (`Reconcile`, `Delete`, `QuotaCheck`...).
    pub action: &'static str,
    pub message: String,
}

/// Event messages are cut to this many characters (the API server refuses longer notes).
pub const MAX_MESSAGE_CHARS: usize = 1000;

impl Notice {
    pub fn normal(
        reason: impl Into<Cow<'static, str>>,
        action: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::new(EventType::Normal, reason, action, message)
    }

    pub fn warning(
        reason: impl Into<Cow<'static, str>>,
        action: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::new(EventType::Warning, reason, action, message)
    }

    pub fn new(
        type_: EventType,
        reason: impl Into<Cow<'static, str>>,
        action: &'static str,
        message: impl Into<String>,
    ) -> Self {
        let message: String = message.into();
        Notice {
            type_,
            reason: reason.into(),
            action,
            message: message.chars().take(MAX_MESSAGE_CHARS).collect(),
        }
    }
}
