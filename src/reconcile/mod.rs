//! Reconcilers for AcquisitionLink and WeComApp, and the pure plan logic they share.

pub mod conditions;
pub mod context;
pub mod link;
pub mod plan;
