//! Reconcilers for AcquisitionLink and WeComApp, and the pure plan logic they share.

pub mod app;
pub mod conditions;
pub mod context;
pub mod decide;
pub mod link;
pub mod plan;
