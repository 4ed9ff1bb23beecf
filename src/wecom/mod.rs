//! The WeCom side: wire types, error codes, and the redaction every error passes through.

pub mod crypto;
pub mod crypto_cli;
pub mod error;
pub mod event;
pub mod redact;
pub mod types;

pub use error::{Api, ErrorClass, WeComError};
