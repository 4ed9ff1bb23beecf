//! `wecom-acq callback verify-url|decrypt` run as an operator would, against the classic
//! WXBizMsgCrypt vector of the official samples (WECOM-NOTES).

use std::process::{Command, Output};

const TOKEN: &str = "QDG6eK";
const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const RECEIVE_ID: &str = "wx5823bf96d3bd56c7";
const URL_SIGNATURE: &str = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3";
const ECHOSTR: &str =
    "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";
const MESSAGE_SIGNATURE: &str = "477715d11cdb4164915debcba66cb864d751f3e6";
const ENCRYPT: &str = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==";

/// The binary with a clean environment: no callback settings inherited from the caller.
fn wecom_acq() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wecom-acq"));
    command
        .env_remove("WECOM_CALLBACK_TOKEN")
        .env_remove("WECOM_CALLBACK_AES_KEY")
        .env_remove("WECOM_RECEIVE_ID")
        .env_remove("RUST_LOG");
    command
}

fn settings_flags(token: &str, aes_key: &str) -> Vec<String> {
    [
        "--token",
        token,
        "--aes-key",
        aes_key,
        "--receive-id",
        RECEIVE_ID,
    ]
    .map(String::from)
    .to_vec()
}

fn verify_url(signature: &str, echostr: &str, token: &str, aes_key: &str) -> Output {
    wecom_acq()
        .args(["callback", "verify-url"])
        .args(settings_flags(token, aes_key))
        .args(["--msg-signature", signature])
        .args(["--timestamp", "1409659589", "--nonce", "263014780"])
        .args(["--echostr", echostr])
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_fails_with_one_line_without_secrets(output: &Output, expected: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout: {}", text(&output.stdout));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
    assert!(
        !stderr.contains(TOKEN) && !stderr.contains(AES_KEY),
        "{stderr}"
    );
}

#[test]
fn verify_url_prints_the_decrypted_echostr() {
    let output = verify_url(URL_SIGNATURE, ECHOSTR, TOKEN, AES_KEY);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "1616140317555161061\n");
}

#[test]
fn verify_url_accepts_the_echostr_still_url_encoded() {
    let encoded = ECHOSTR
        .replace('/', "%2F")
        .replace('+', "%2B")
        .replace('=', "%3D");
    let output = verify_url(URL_SIGNATURE, &encoded, TOKEN, AES_KEY);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "1616140317555161061\n");
}

#[test]
fn decrypt_takes_settings_from_the_environment_and_prints_the_message() {
    let output = wecom_acq()
        .env("WECOM_CALLBACK_TOKEN", TOKEN)
        .env("WECOM_CALLBACK_AES_KEY", AES_KEY)
        .env("WECOM_RECEIVE_ID", RECEIVE_ID)
        .args(["callback", "decrypt", "--msg-signature", MESSAGE_SIGNATURE])
        .args(["--timestamp", "1409659813", "--nonce", "1372623149"])
        .args(["--encrypt", ENCRYPT])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("<xml>"), "{stdout}");
    assert!(
        stdout.contains("<Content><![CDATA[hello]]></Content>"),
        "{stdout}"
    );
    assert!(stdout.contains("<AgentID>218</AgentID>"), "{stdout}");
}

#[test]
fn bad_signature_exits_non_zero_without_printing_secrets() {
    let output = verify_url(
        "0000000000000000000000000000000000000000",
        ECHOSTR,
        TOKEN,
        AES_KEY,
    );
    assert_fails_with_one_line_without_secrets(&output, "msg_signature does not match");
}

#[test]
fn wrong_aes_key_exits_non_zero_without_printing_secrets() {
    let other_key = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
    let output = verify_url(URL_SIGNATURE, ECHOSTR, TOKEN, other_key);
    assert_fails_with_one_line_without_secrets(&output, "EncodingAESKey is wrong");
    assert!(!text(&output.stderr).contains(other_key));

    let malformed_key = &AES_KEY[..42];
    let output = verify_url(URL_SIGNATURE, ECHOSTR, TOKEN, malformed_key);
    assert_fails_with_one_line_without_secrets(&output, "EncodingAESKey is invalid");
    assert!(!text(&output.stderr).contains(malformed_key));
}

#[test]
fn help_never_prints_the_environment_values() {
    let output = wecom_acq()
        .env("WECOM_CALLBACK_TOKEN", TOKEN)
        .env("WECOM_CALLBACK_AES_KEY", AES_KEY)
        .args(["callback", "decrypt", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = text(&output.stdout);
    assert!(help.contains("WECOM_CALLBACK_AES_KEY"), "{help}");
    assert!(!help.contains(TOKEN) && !help.contains(AES_KEY), "{help}");
}
