//! The callbacks the simulator pushes, before rendering: what happened, with the fields
//! WeCom puts in the event. [`super::push`] turns them into signed, encrypted XML.

use serde::Serialize;

/// The ChangeTypes the simulator pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SimChange {
    /// A link deleted in the admin console (`Event`/`InfoType` customer_acquisition).
    DeleteLink,
    /// A customer added through a link (`Event`/`InfoType` change_external_contact).
    AddExternalContact,
    BalanceLow,
    BalanceExhausted,
    BalanceIncreased,
    QuotaExpireSoon,
}

impl SimChange {
    /// The ChangeType element.
    pub fn change_type(self) -> &'static str {
        match self {
            SimChange::DeleteLink => "delete_link",
            SimChange::AddExternalContact => "add_external_contact",
            SimChange::BalanceLow => "balance_low",
            SimChange::BalanceExhausted => "balance_exhausted",
            SimChange::BalanceIncreased => "balance_increased",
            SimChange::QuotaExpireSoon => "quota_expire_soon",
        }
    }

    /// The Event (self-built) or InfoType (third-party) element: CB4 differs (G4).
    pub fn family(self) -> &'static str {
        match self {
            SimChange::AddExternalContact => "change_external_contact",
            _ => "customer_acquisition",
        }
    }
}

/// One event to push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimEvent {
    pub change: SimChange,
    /// Sim-clock time of the event (`CreateTime` / `TimeStamp`).
    pub create_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_quota_num: Option<u64>,
}

impl SimEvent {
    pub fn new(change: SimChange, create_time: i64) -> SimEvent {
        SimEvent {
            change,
            create_time,
            link_id: None,
            state: None,
            user_id: None,
            external_user_id: None,
            expire_time: None,
            expire_quota_num: None,
        }
    }
}
