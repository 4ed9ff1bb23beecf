//! The WeCom side: wire types, error codes, the typed client, and the redaction every
//! error passes through.

pub mod budget;
pub mod client;
pub mod error;
pub mod redact;
pub mod retry;
pub mod token;
pub mod types;

pub use client::{CallObserver, ClientConfig, ClientConfigError, Secret, WeComClient};
pub use error::{Api, ErrorClass, WeComError};
pub use retry::RetryPolicy;
