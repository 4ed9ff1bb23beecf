//! The WeCom side: wire types, error codes, and the redaction every error passes through.

pub mod allowed_hosts;
pub mod answer;
pub mod client;
pub mod crypto;
pub mod crypto_cli;
pub mod error;
pub mod event;
pub mod redact;
pub mod retry;
pub mod scheduler;
pub mod suite;
pub mod suite_event;
pub mod token;
pub mod types;

pub use allowed_hosts::AllowedApiHosts;
pub use client::{
    CallObserver, ClientConfig, ClientConfigError, CorpTokenSource, Secret, WeComClient,
};
pub use error::{Api, ErrorClass, WeComError};
pub use retry::RetryPolicy;

/// The local clock in Unix seconds, the unit of WeCom's timestamps; 0 if the clock is
/// before 1970.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The local clock in Unix milliseconds; 0 if the clock is before 1970.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
