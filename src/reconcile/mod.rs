//! Reconcilers for AcquisitionLink and WeComApp, and the pure plan logic they share.

pub mod plan;
