//! `wecom-acq callback ...`: operator tools for debugging a live callback URL. They replay
//! what the callback endpoint does with a request WeCom sent (signature check, decryption,
//! receive id check) and print the plaintext, or one line saying what is wrong.
//!
//! The Token and EncodingAESKey are better passed through the environment than as flags
//! (flags show up in `ps` and shell history); `--help` never prints their values.

use std::fmt;
use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use percent_encoding::percent_decode_str;

use crate::wecom::crypto::{CallbackCrypto, CryptoError};

/// The `callback` subcommands.
#[derive(Subcommand, Debug)]
pub enum CallbackCommand {
    /// Check a URL-verification request (the GET WeCom sends when the callback URL is saved)
    /// and print the echostr to answer with.
    VerifyUrl(VerifyUrlArgs),
    /// Check and decrypt the Encrypt value of an event POST and print the message XML.
    Decrypt(DecryptArgs),
}

/// The app's callback settings, as configured next to the callback URL in the admin console.
#[derive(Args)]
pub struct CallbackSettings {
    /// The callback Token (prefer the environment variable: flags are visible in `ps`).
    #[arg(long, env = "WECOM_CALLBACK_TOKEN", hide_env_values = true)]
    token: String,
    /// The 43-character EncodingAESKey (prefer the environment variable).
    #[arg(
        long = "aes-key",
        env = "WECOM_CALLBACK_AES_KEY",
        hide_env_values = true
    )]
    aes_key: String,
    /// The corp id (self-built app) or suite id (third-party instruction callbacks).
    #[arg(long, env = "WECOM_RECEIVE_ID", hide_env_values = true)]
    receive_id: String,
}

impl fmt::Debug for CallbackSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackSettings")
            .field("token", &"<redacted>")
            .field("aes_key", &"<redacted>")
            .field("receive_id", &self.receive_id)
            .finish()
    }
}

/// The signed query parameters of a callback request.
#[derive(Args, Debug)]
pub struct SignedQuery {
    /// The `msg_signature` query parameter.
    #[arg(long)]
    msg_signature: String,
    /// The `timestamp` query parameter.
    #[arg(long)]
    timestamp: String,
    /// The `nonce` query parameter.
    #[arg(long)]
    nonce: String,
}

#[derive(Args, Debug)]
pub struct VerifyUrlArgs {
    #[command(flatten)]
    settings: CallbackSettings,
    #[command(flatten)]
    query: SignedQuery,
    /// The `echostr` query parameter, URL-encoded as in the request line or already decoded.
    #[arg(long)]
    echostr: String,
}

#[derive(Args, Debug)]
pub struct DecryptArgs {
    #[command(flatten)]
    settings: CallbackSettings,
    #[command(flatten)]
    query: SignedQuery,
    /// The text of the <Encrypt> element of the POST body (base64).
    #[arg(long)]
    encrypt: String,
}

/// Runs a `callback` subcommand: the plaintext on stdout and exit code 0, or one line on
/// stderr and exit code 1.
pub fn run(command: CallbackCommand) -> ExitCode {
    let (name, result) = match command {
        CallbackCommand::VerifyUrl(args) => ("verify-url", verify_url(&args)),
        CallbackCommand::Decrypt(args) => ("decrypt", decrypt(&args)),
    };
    let failure = match result {
        Ok(plaintext) => match writeln!(std::io::stdout().lock(), "{plaintext}") {
            Ok(()) => return ExitCode::SUCCESS,
            Err(err) => format!("cannot write the result to stdout: {err}"),
        },
        Err(err) => err.to_string(),
    };
    eprintln!("error: callback {name}: {failure}");
    ExitCode::FAILURE
}

fn crypto(settings: &CallbackSettings) -> Result<CallbackCrypto, CryptoError> {
    CallbackCrypto::new(&settings.token, &settings.aes_key, &settings.receive_id)
}

fn verify_url(args: &VerifyUrlArgs) -> Result<String, CryptoError> {
    // Base64 never contains `%`, so decoding is a no-op on an already decoded echostr.
    let echostr = percent_decode_str(&args.echostr)
        .decode_utf8()
        .map_err(|_| CryptoError::InvalidBase64)?;
    crypto(&args.settings)?.verify_url(
        &args.query.msg_signature,
        &args.query.timestamp,
        &args.query.nonce,
        &echostr,
    )
}

fn decrypt(args: &DecryptArgs) -> Result<String, CryptoError> {
    crypto(&args.settings)?.decrypt_message(
        &args.query.msg_signature,
        &args.query.timestamp,
        &args.query.nonce,
        &args.encrypt,
    )
}
