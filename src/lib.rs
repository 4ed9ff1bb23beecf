//! A Kubernetes controller that makes WeCom customer-acquisition links (获客链接)
//! declarative, with the WeCom client, callback crypto and a WeCom simulator it is tested
//! against.
#![forbid(unsafe_code)]

pub mod api;
pub mod callback;
pub mod controller;
pub mod defaults;
pub mod demo;
pub mod export;
pub mod gitops;
pub mod http_server;
pub mod isolation;
pub mod kubesim;
pub mod leader;
pub mod metrics;
pub mod qr;
pub mod reconcile;
pub mod sim;
pub mod telemetry;
pub mod wecom;
pub mod yaml;
