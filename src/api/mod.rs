//! The custom resources of group `acquisition.wecom.dev`, version `v1alpha1`: types only,
//! no logic. `crds/` is generated from them by `wecom-acq crd`.

pub mod app;
pub mod crdgen;
pub mod link;
pub mod suite;

pub use app::*;
pub use crdgen::{
    CrdFile, CrdGenError, crd_files, crd_yaml, crd_yaml_without_cel, crds_without_cel,
    write_crd_files,
};
pub use link::*;
pub use suite::*;

pub const GROUP: &str = "acquisition.wecom.dev";

/// Annotation holding the WeCom link id, so it survives a lost status.
pub const LINK_ID_ANNOTATION: &str = "acquisition.wecom.dev/link-id";
/// Annotation set before A3 (create): a pass that finds it without a link id first looks
/// for the link it may already have made.
pub const CREATE_PENDING_ANNOTATION: &str = "acquisition.wecom.dev/create-pending";
/// `"true"` stops all writes to WeCom.
pub const PAUSED_ANNOTATION: &str = "acquisition.wecom.dev/paused";
/// Any new value forces a pass; the value is echoed in status.
pub const RECONCILE_REQUESTED_ANNOTATION: &str = "acquisition.wecom.dev/reconcile-requested-at";
/// Finalizer guarding the remote link.
pub const LINK_FINALIZER: &str = "acquisition.wecom.dev/link";
/// Finalizer keeping a WeComApp (and so its credentials) until no AcquisitionLink refers to
/// it, so deleting a namespace or an app with its links still deletes their WeCom links.
pub const APP_IN_USE_FINALIZER: &str = "acquisition.wecom.dev/app-in-use";
/// Field manager for status writes.
pub const FIELD_MANAGER: &str = "wecom-acq";

/// A reference to one key of a Secret in the same namespace as the referring object.
#[derive(
    serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}
