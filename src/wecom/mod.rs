//! The WeCom side: wire types, error codes, and the redaction every error passes through.

pub mod budget;
pub mod client;
pub mod crypto;
pub mod crypto_cli;
pub mod error;
pub mod event;
pub mod redact;
pub mod retry;
pub mod token;
pub mod types;

pub use client::{CallObserver, ClientConfig, ClientConfigError, Secret, WeComClient};
pub use error::{Api, ErrorClass, WeComError};
pub use retry::RetryPolicy;
