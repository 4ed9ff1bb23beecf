//! Status by server-side apply: one field manager per writer, each applying only the
//! fields it decides, so no writer undoes another's.
//!
//! | manager | writes |
//! |---|---|
//! | `wecom-acq-link` | an AcquisitionLink's status but its customers and statistics |
//! | `wecom-acq-link-facts` | customers and statistics, when A6/A7 (or a create) gave them |
//! | `wecom-acq-app` | a WeComApp's status but its quota and quota conditions |
//! | `wecom-acq-app-quota` | quota and the quota conditions, when A8 gave them |
//! | `wecom-acq-callbacks` | customer bumps and quota conditions from WeCom's callbacks |
//! | `wecom-acq-guard` | `Ready=False InternalError` after a reconciler panicked |
//!
//! A writer whose cache is stale therefore never writes back an old value of a field it
//! did not decide in this pass: the link reconciler does not carry customers a callback
//! bumped, the app reconciler does not carry quota conditions a callback set. Fields two
//! writers decide (customers, quota conditions) are applied with `force`, so the newest
//! decision takes them over; the callback worker's applies carry the resourceVersion it
//! read, so it never writes over a newer object. Each apply holds everything its manager
//! keeps (a field it stops applying is removed), which is why every writer sends its
//! whole part, never a delta.

use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::api::{AcquisitionLinkStatus, WeComAppStatus};

use super::conditions::{QUOTA_EXHAUSTED, QUOTA_EXPIRING_SOON, QUOTA_LOW};

pub const LINK_MANAGER: &str = "wecom-acq-link";
pub const LINK_FACTS_MANAGER: &str = "wecom-acq-link-facts";
pub const APP_MANAGER: &str = "wecom-acq-app";
pub const APP_QUOTA_MANAGER: &str = "wecom-acq-app-quota";
pub const CALLBACK_MANAGER: &str = "wecom-acq-callbacks";
pub const GUARD_MANAGER: &str = "wecom-acq-guard";

/// Applies `status` to the status of `name` as `manager`, taking over fields another
/// manager held. With `resource_version`, the apply fails with 409 when the object has
/// changed since it was read.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    manager: &str,
    status: Value,
    resource_version: Option<&str>,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut metadata = json!({ "name": name });
    if let Some(version) = resource_version {
        metadata["resourceVersion"] = version.into();
    }
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&body),
    )
    .await
}

/// A status as a JSON object (empty when it cannot be serialised, which cannot happen for
/// these types).
fn object<T: serde::Serialize>(status: &T) -> Map<String, Value> {
    match serde_json::to_value(status) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// Moves `keys` of `from` into a new object.
fn take(from: &mut Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    keys.iter()
        .filter_map(|key| from.remove(*key).map(|v| (key.to_string(), v)))
        .collect()
}

const LINK_FACTS: [&str; 2] = ["customers", "statistics"];

/// A link's status as the two parts its reconciler applies: everything but the facts,
/// and the facts (customers and statistics).
pub fn link_parts(status: &AcquisitionLinkStatus) -> (Value, Value) {
    let mut main = object(status);
    let facts = take(&mut main, &LINK_FACTS);
    (Value::Object(main), Value::Object(facts))
}

/// The customer count as the callback worker applies it: the whole `customers` object.
pub fn link_customers(status: &AcquisitionLinkStatus) -> Value {
    let mut all = object(status);
    Value::Object(take(&mut all, &["customers"]))
}

fn is_quota_condition(condition: &Value) -> bool {
    matches!(
        condition["type"].as_str(),
        Some(QUOTA_LOW | QUOTA_EXHAUSTED | QUOTA_EXPIRING_SOON)
    )
}

/// An app's status as the two parts its reconciler applies: everything but the quota, and
/// the quota with the quota conditions.
pub fn app_parts(status: &WeComAppStatus) -> (Value, Value) {
    let mut main = object(status);
    let mut quota = take(&mut main, &["quota"]);
    if let Some(Value::Array(conditions)) = main.remove("conditions") {
        let (of_quota, others): (Vec<Value>, Vec<Value>) =
            conditions.into_iter().partition(is_quota_condition);
        if !others.is_empty() {
            main.insert("conditions".into(), Value::Array(others));
        }
        if !of_quota.is_empty() {
            quota.insert("conditions".into(), Value::Array(of_quota));
        }
    }
    (Value::Object(main), Value::Object(quota))
}

/// The quota conditions of an app's status, as the callback worker applies them.
pub fn app_quota_conditions(status: &WeComAppStatus) -> Value {
    let (_, mut quota) = app_parts(status);
    if let Some(quota) = quota.as_object_mut() {
        quota.remove("quota");
    }
    quota
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AppQuota, CustomerCount};
    use crate::reconcile::conditions::{self, READY};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::now())
    }

    #[test]
    fn the_link_reconciler_never_carries_customers_in_its_main_part() {
        let status = AcquisitionLinkStatus {
            link_id: Some("cawcde".into()),
            customers: Some(CustomerCount {
                total: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (main, facts) = link_parts(&status);
        assert_eq!(main["linkId"], "cawcde");
        assert!(main.get("customers").is_none());
        assert_eq!(facts["customers"]["total"], 3);
        assert!(facts.get("linkId").is_none());
        assert_eq!(link_customers(&status), json!({"customers": {"total": 3}}));
    }

    #[test]
    fn quota_conditions_go_with_the_quota() {
        let mut status = WeComAppStatus {
            quota: Some(AppQuota::default()),
            ..Default::default()
        };
        let now = now();
        conditions::set(&mut status.conditions, READY, true, "Ok", "", None, &now);
        conditions::set(
            &mut status.conditions,
            QUOTA_LOW,
            false,
            "Ok",
            "",
            None,
            &now,
        );
        let (main, quota) = app_parts(&status);
        let types = |v: &Value| -> Vec<String> {
            v["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["type"].as_str().map(String::from))
                .collect()
        };
        assert_eq!(types(&main), vec![READY]);
        assert_eq!(types(&quota), vec![QUOTA_LOW]);
        assert!(main.get("quota").is_none() && quota.get("quota").is_some());
        let from_callback = app_quota_conditions(&status);
        assert_eq!(types(&from_callback), vec![QUOTA_LOW]);
        assert!(from_callback.get("quota").is_none());
    }
}
