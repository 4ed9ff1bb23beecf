//! Reconcilers for AcquisitionLink and WeComApp, and the pure plan logic they share.

pub mod app;
pub mod app_usage;
pub mod cache;
pub mod conditions;
pub mod context;
pub mod decide;
pub mod events;
pub mod link;
pub mod marker;
pub mod notice;
pub mod pacing;
pub mod plan;
pub mod recorder;
pub mod status_apply;
pub mod traffic;
pub mod triggers;
