//! WXBizMsgCrypt, WeCom's callback encryption, exactly as WECOM-NOTES "Callbacks" describes.
//!
//! - Key: base64 of the 43-character EncodingAESKey plus `=`, decoded leniently (most real
//!   keys have trailing bits set).
//! - AES-256-CBC, IV = the first 16 key bytes, PKCS#7 padding to a multiple of 32 bytes (so a
//!   pad of 1..=32, stripped by hand: libraries that insist on pad <= 16 reject about half of
//!   real messages).
//! - Plaintext = 16 random bytes, 4-byte big-endian message length, message, receive id
//!   (the corp id for self-built apps, the suite id for third-party instruction callbacks).
//! - `msg_signature` = lowercase hex SHA1 of token, timestamp, nonce and ciphertext, sorted
//!   and concatenated, compared in constant time.
//!
//! Freshness of the timestamp and nonce reuse are the callback endpoint's business: the
//! official libraries check neither, and neither does this module.

use std::borrow::Cow;
use std::fmt;

use aes::{Aes256Dec, Aes256Enc};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit};
use rand::RngCore;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use crate::wecom::event::{push_cdata, read_root_fields};

/// Length of an EncodingAESKey as the admin console shows it.
const ENCODING_AES_KEY_LEN: usize = 43;
/// Random prefix of every plaintext.
const RANDOM_LEN: usize = 16;
/// Random prefix plus the 4-byte message length.
const HEADER_LEN: usize = RANDOM_LEN + 4;
/// WeCom pads to a multiple of 32 bytes, not the AES block size.
const PAD_BLOCK: usize = 32;
const AES_BLOCK: usize = 16;

/// Standard alphabet, padding optional, trailing bits ignored: what WeCom's keys and the
/// official (lenient) decoders need.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a callback could not be verified or decrypted. No variant carries the Token or the
/// EncodingAESKey.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "the EncodingAESKey is invalid: it must be the 43-character base64 key shown with the callback URL in the WeCom admin console"
    )]
    InvalidKey,
    #[error(
        "the callback Token is empty: set it to the Token shown with the callback URL in the WeCom admin console"
    )]
    InvalidToken,
    #[error(
        "msg_signature does not match: the callback Token is wrong, or timestamp, nonce or the ciphertext differ from what WeCom sent"
    )]
    SignatureMismatch,
    #[error(
        "the ciphertext is not valid base64: pass the Encrypt or echostr value exactly as WeCom sent it (URL-decoded)"
    )]
    InvalidBase64,
    #[error(
        "the ciphertext is not a non-zero multiple of 16 bytes: it was truncated or altered on the way"
    )]
    InvalidCiphertextLength,
    #[error(
        "the decrypted message has invalid padding: the EncodingAESKey is wrong, or the ciphertext was altered"
    )]
    InvalidPadding,
    #[error(
        "the decrypted message's length field points outside the message: the EncodingAESKey is wrong, or the ciphertext was altered"
    )]
    LengthOutOfBounds,
    #[error(
        "the message is addressed to receive id {found:?}, not {expected:?}: use the corp id for a self-built app, the suite id for third-party instruction callbacks"
    )]
    ReceiveIdMismatch { expected: String, found: String },
    #[error("the decrypted message is not UTF-8 text: the ciphertext was altered")]
    InvalidUtf8,
    #[error("the callback body is not well-formed XML: {0}")]
    MalformedXml(String),
    #[error("the callback body has no Encrypt element: it is not a WeCom callback POST")]
    MissingEncrypt,
}

/// One app's callback credentials, ready to verify, decrypt, encrypt and sign.
#[derive(Clone)]
pub struct CallbackCrypto {
    token: String,
    receive_id: String,
    /// Key schedules expanded once, cloned per message.
    decryptor: Aes256Dec,
    encryptor: Aes256Enc,
    iv: [u8; AES_BLOCK],
}

impl fmt::Debug for CallbackCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackCrypto")
            .field("token", &"<redacted>")
            .field("encoding_aes_key", &"<redacted>")
            .field("receive_id", &self.receive_id)
            .finish()
    }
}

/// An encrypted and signed message: what WeCom puts in a callback POST and its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedMessage {
    pub encrypt: String,
    pub msg_signature: String,
    pub timestamp: String,
    pub nonce: String,
}

impl CallbackCrypto {
    /// `receive_id` is the corp id (self-built app) or the suite id (third-party
    /// instruction callbacks).
    pub fn new(token: &str, encoding_aes_key: &str, receive_id: &str) -> Result<Self, CryptoError> {
        if token.is_empty() {
            return Err(CryptoError::InvalidToken);
        }
        if encoding_aes_key.len() != ENCODING_AES_KEY_LEN {
            return Err(CryptoError::InvalidKey);
        }
        let mut key = [0u8; 32];
        // 43 characters without padding carry 258 bits: exactly 32 bytes plus 2 ignored bits.
        let written = LENIENT_BASE64
            .decode_slice(encoding_aes_key, &mut key)
            .map_err(|_| CryptoError::InvalidKey)?;
        if written != key.len() {
            return Err(CryptoError::InvalidKey);
        }
        let mut iv = [0u8; AES_BLOCK];
        iv.copy_from_slice(&key[..AES_BLOCK]);
        Ok(CallbackCrypto {
            token: token.to_string(),
            receive_id: receive_id.to_string(),
            decryptor: Aes256Dec::new(&key.into()),
            encryptor: Aes256Enc::new(&key.into()),
            iv,
        })
    }

    pub fn receive_id(&self) -> &str {
        &self.receive_id
    }

    /// `msg_signature` for these values, lowercase hex.
    pub fn signature(&self, timestamp: &str, nonce: &str, encrypted: &str) -> String {
        let hex = self.signature_hex(timestamp, nonce, encrypted);
        hex.iter().map(|&byte| char::from(byte)).collect()
    }

    fn signature_hex(&self, timestamp: &str, nonce: &str, encrypted: &str) -> [u8; 40] {
        let mut parts = [self.token.as_str(), timestamp, nonce, encrypted];
        parts.sort_unstable();
        let mut hasher = Sha1::new();
        for part in parts {
            hasher.update(part.as_bytes());
        }
        let mut hex = [0u8; 40];
        // 20 digest bytes always fill 40 hex digits.
        let _ = hex::encode_to_slice(hasher.finalize(), &mut hex);
        hex
    }

    /// Checks `msg_signature` in constant time.
    pub fn verify_signature(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypted: &str,
    ) -> Result<(), CryptoError> {
        let expected = self.signature_hex(timestamp, nonce, encrypted);
        if bool::from(expected.as_slice().ct_eq(msg_signature.as_bytes())) {
            Ok(())
        } else {
            Err(CryptoError::SignatureMismatch)
        }
    }

    /// Decrypts a base64 ciphertext and checks that it is addressed to this receive id.
    /// One allocation: the decoded buffer becomes the returned string.
    pub fn decrypt(&self, encrypted_b64: &str) -> Result<String, CryptoError> {
        let mut plain = self.decrypt_padded(encrypted_b64)?;
        let message = self.locate_message(&plain)?;
        plain.copy_within(message.clone(), 0);
        plain.truncate(message.len());
        String::from_utf8(plain).map_err(|_| CryptoError::InvalidUtf8)
    }

    /// Base64-decodes and AES-decrypts, padding still on.
    fn decrypt_padded(&self, encrypted_b64: &str) -> Result<Vec<u8>, CryptoError> {
        let mut buf = LENIENT_BASE64
            .decode(encrypted_b64)
            .map_err(|_| CryptoError::InvalidBase64)?;
        if buf.is_empty() || buf.len() % AES_BLOCK != 0 {
            return Err(CryptoError::InvalidCiphertextLength);
        }
        cbc::Decryptor::<Aes256Dec>::inner_iv_init(self.decryptor.clone(), &self.iv.into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::InvalidCiphertextLength)?;
        Ok(buf)
    }

    /// Strips the 1..=32 bytes of padding, checks the length field and the receive id, and
    /// returns where the message sits in `plain`.
    fn locate_message(&self, plain: &[u8]) -> Result<std::ops::Range<usize>, CryptoError> {
        let pad = usize::from(*plain.last().ok_or(CryptoError::InvalidPadding)?);
        if pad == 0 || pad > PAD_BLOCK || pad > plain.len() {
            return Err(CryptoError::InvalidPadding);
        }
        let (content, padding) = plain.split_at(plain.len() - pad);
        if padding.iter().any(|&byte| usize::from(byte) != pad) {
            return Err(CryptoError::InvalidPadding);
        }
        let Some(length_field) = content.get(RANDOM_LEN..HEADER_LEN) else {
            return Err(CryptoError::LengthOutOfBounds);
        };
        let mut length_bytes = [0u8; 4];
        length_bytes.copy_from_slice(length_field);
        let message_len = u32::from_be_bytes(length_bytes) as usize;
        if message_len > content.len() - HEADER_LEN {
            return Err(CryptoError::LengthOutOfBounds);
        }
        let message_end = HEADER_LEN + message_len;
        let found = &content[message_end..];
        if found != self.receive_id.as_bytes() {
            return Err(CryptoError::ReceiveIdMismatch {
                expected: self.receive_id.clone(),
                // Shown to an operator: printable and short even when it is garbage.
                found: String::from_utf8_lossy(found)
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .take(64)
                    .collect(),
            });
        }
        Ok(HEADER_LEN..message_end)
    }

    /// Encrypts `msg` for this receive id with 16 fresh random bytes.
    pub fn encrypt(&self, msg: &str) -> String {
        let mut random = [0u8; RANDOM_LEN];
        rand::thread_rng().fill_bytes(&mut random);
        self.encrypt_with_random(msg, random)
    }

    /// Encrypts `msg` with a caller-chosen random prefix (reproducible output for tests).
    pub fn encrypt_with_random(&self, msg: &str, random: [u8; 16]) -> String {
        let content_len = HEADER_LEN + msg.len() + self.receive_id.len();
        let pad = PAD_BLOCK - content_len % PAD_BLOCK;
        let mut buf = Vec::with_capacity(content_len + pad);
        buf.extend_from_slice(&random);
        // WXBizMsgCrypt cannot express longer messages; callback messages are a few hundred
        // bytes.
        let message_len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        buf.extend_from_slice(&message_len.to_be_bytes());
        buf.extend_from_slice(msg.as_bytes());
        buf.extend_from_slice(self.receive_id.as_bytes());
        // pad is 1..=32, so the cast is exact.
        buf.resize(content_len + pad, pad as u8);
        let mut encryptor =
            cbc::Encryptor::<Aes256Enc>::inner_iv_init(self.encryptor.clone(), &self.iv.into());
        for block in buf.chunks_exact_mut(AES_BLOCK) {
            encryptor.encrypt_block_mut(block.into());
        }
        base64::engine::general_purpose::STANDARD.encode(&buf)
    }

    /// URL verification (the GET WeCom sends when the callback URL is saved): checks the
    /// signature over `echostr` (already URL-decoded) and returns the plaintext to answer.
    pub fn verify_url(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        echostr: &str,
    ) -> Result<String, CryptoError> {
        self.verify_signature(msg_signature, timestamp, nonce, echostr)?;
        self.decrypt(echostr)
    }

    /// An event POST: checks the signature over the `Encrypt` text, then decrypts it.
    pub fn decrypt_message(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<String, CryptoError> {
        self.verify_signature(msg_signature, timestamp, nonce, encrypt)?;
        self.decrypt(encrypt)
    }

    /// Encrypts and signs `msg` as WeCom does before a callback POST (the simulator's side).
    pub fn seal(&self, msg: &str, timestamp: &str, nonce: &str) -> SealedMessage {
        let encrypt = self.encrypt(msg);
        SealedMessage {
            msg_signature: self.signature(timestamp, nonce, &encrypt),
            encrypt,
            timestamp: timestamp.to_string(),
            nonce: nonce.to_string(),
        }
    }
}

/// The body of a callback POST:
/// `<xml><ToUserName>..</ToUserName><AgentID>..</AgentID><Encrypt>..</Encrypt></xml>`.
pub fn post_body(to_user_name: &str, agent_id: &str, encrypt: &str) -> String {
    let mut xml = String::with_capacity(96 + to_user_name.len() + encrypt.len());
    xml.push_str("<xml>");
    push_cdata(&mut xml, "ToUserName", to_user_name);
    xml.push_str("<AgentID>");
    xml.push_str(&quick_xml::escape::escape(agent_id));
    xml.push_str("</AgentID>");
    push_cdata(&mut xml, "Encrypt", encrypt);
    xml.push_str("</xml>");
    xml
}

/// The `Encrypt` text of a callback POST body, whatever the order of its elements.
pub fn extract_encrypt(post_body: &str) -> Result<String, CryptoError> {
    extract_encrypt_borrowed(post_body).map(Cow::into_owned)
}

/// [`extract_encrypt`] without a copy when the text needs no unescaping (the callback
/// endpoint's hot path).
pub fn extract_encrypt_borrowed(post_body: &str) -> Result<Cow<'_, str>, CryptoError> {
    let mut encrypt = None;
    read_root_fields(
        post_body,
        |name| (name == b"Encrypt").then_some(()),
        |(), text| encrypt = Some(text),
    )
    .map_err(CryptoError::MalformedXml)?;
    match encrypt {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(CryptoError::MissingEncrypt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSIC_TOKEN: &str = "QDG6eK";
    const CLASSIC_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const CLASSIC_RECEIVE_ID: &str = "wx5823bf96d3bd56c7";
    const CLASSIC_ECHOSTR: &str =
        "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";
    const CLASSIC_ENCRYPT: &str = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==";

    fn classic() -> CallbackCrypto {
        CallbackCrypto::new(CLASSIC_TOKEN, CLASSIC_KEY, CLASSIC_RECEIVE_ID).unwrap()
    }

    #[test]
    fn classic_vector_url_verification() {
        let echo = classic()
            .verify_url(
                "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
                "1409659589",
                "263014780",
                CLASSIC_ECHOSTR,
            )
            .unwrap();
        assert_eq!(echo, "1616140317555161061");
    }

    #[test]
    fn classic_vector_message_decrypts_to_the_text_message_with_30_bytes_of_padding() {
        let crypto = classic();
        let xml = crypto
            .decrypt_message(
                "477715d11cdb4164915debcba66cb864d751f3e6",
                "1409659813",
                "1372623149",
                CLASSIC_ENCRYPT,
            )
            .unwrap();
        assert_eq!(xml.len(), 284);
        for expected in [
            "<ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>",
            "<FromUserName><![CDATA[mycreate]]></FromUserName>",
            "<Content><![CDATA[hello]]></Content>",
            "<MsgId>4561255354251345929</MsgId>",
            "<AgentID>218</AgentID>",
        ] {
            assert!(xml.contains(expected), "{expected} missing from {xml}");
        }
        let padded = crypto.decrypt_padded(CLASSIC_ENCRYPT).unwrap();
        assert_eq!(
            padded.len(),
            HEADER_LEN + 284 + CLASSIC_RECEIVE_ID.len() + 30
        );
        assert!(padded.ends_with(&[30u8; 30]));
        assert_ne!(padded[padded.len() - 31], 30);
    }

    #[test]
    fn classic_vector_signature_is_reproduced() {
        assert_eq!(
            classic().signature("1409659813", "1372623149", CLASSIC_ENCRYPT),
            "477715d11cdb4164915debcba66cb864d751f3e6"
        );
    }

    #[test]
    fn wechatpy_vector_signature_matches_and_fails_with_another_nonce() {
        let crypto = CallbackCrypto::new(
            "123456",
            "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
            "wx49f0ab532d5d035a",
        )
        .unwrap();
        let echostr = "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==";
        let signature = "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96";
        assert_eq!(
            crypto.verify_url(signature, "1411443780", "437374425", echostr),
            Ok("5927782489442352469".to_string())
        );
        assert_eq!(
            crypto.verify_url(signature, "1411443780", "437374424", echostr),
            Err(CryptoError::SignatureMismatch)
        );
    }

    /// A message of exactly `len` UTF-8 bytes mixing one- and three-byte characters.
    fn message_of_len(len: usize) -> String {
        let mut msg = String::with_capacity(len);
        for (i, c) in "<xml>获客链接</xml>".chars().cycle().enumerate() {
            let c = if i % 7 == 3 { '\u{1}' } else { c };
            if msg.len() + c.len_utf8() > len {
                break;
            }
            msg.push(c);
        }
        while msg.len() < len {
            msg.push('x');
        }
        msg
    }

    #[test]
    fn round_trips_every_message_length_and_padding_length() {
        let crypto = classic();
        let mut pads_seen = [false; PAD_BLOCK + 1];
        for len in 0..=4096 {
            let msg = message_of_len(len);
            assert_eq!(msg.len(), len);
            let random = [len as u8; 16];
            let encrypted = crypto.encrypt_with_random(&msg, random);
            let padded = crypto.decrypt_padded(&encrypted).unwrap();
            assert_eq!(padded.len() % PAD_BLOCK, 0);
            assert_eq!(&padded[..RANDOM_LEN], &random);
            pads_seen[usize::from(padded[padded.len() - 1])] = true;
            assert_eq!(crypto.decrypt(&encrypted).unwrap(), msg, "length {len}");
        }
        assert!(!pads_seen[0]);
        assert!(pads_seen[1..].iter().all(|&seen| seen), "{pads_seen:?}");
    }

    #[test]
    fn seal_signs_what_it_encrypts_and_uses_fresh_randomness() {
        let crypto = classic();
        let sealed = crypto.seal("<xml>hi</xml>", "1700000000", "nonce1");
        assert_eq!(
            crypto.decrypt_message(
                &sealed.msg_signature,
                &sealed.timestamp,
                &sealed.nonce,
                &sealed.encrypt
            ),
            Ok("<xml>hi</xml>".to_string())
        );
        assert_ne!(sealed.encrypt, crypto.encrypt("<xml>hi</xml>"));
    }

    #[test]
    fn lenient_key_decoding_accepts_trailing_bits() {
        // The classic key ends in `C`, whose two unused low bits are set: a strict decoder
        // refuses it.
        let strict = base64::engine::general_purpose::STANDARD.decode(format!("{CLASSIC_KEY}="));
        assert!(strict.is_err());
        assert!(CallbackCrypto::new("t", CLASSIC_KEY, "r").is_ok());
        let mut cleared = CLASSIC_KEY.to_string();
        cleared.replace_range(42.., "A");
        assert!(CallbackCrypto::new("t", &cleared, "r").is_ok());
    }

    #[test]
    fn rejects_bad_keys_and_tokens() {
        for key in [
            "",
            &CLASSIC_KEY[..42],
            &format!("{CLASSIC_KEY}A"),
            "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2!",
            "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2=",
            "获客获客获客获客获客获客获客=",
        ] {
            assert_eq!(
                CallbackCrypto::new("t", key, "r").unwrap_err(),
                CryptoError::InvalidKey,
                "{key}"
            );
        }
        assert_eq!(
            CallbackCrypto::new("", CLASSIC_KEY, "r").unwrap_err(),
            CryptoError::InvalidToken
        );
    }

    #[test]
    fn tampered_inputs_each_give_their_own_error() {
        let crypto = classic();
        let sig = "477715d11cdb4164915debcba66cb864d751f3e6";
        let (ts, nonce) = ("1409659813", "1372623149");

        let mut bad_sig = sig.to_string();
        bad_sig.replace_range(0..1, "6");
        assert_eq!(
            crypto.decrypt_message(&bad_sig, ts, nonce, CLASSIC_ENCRYPT),
            Err(CryptoError::SignatureMismatch)
        );
        assert_eq!(
            crypto.decrypt_message(&sig.to_uppercase(), ts, nonce, CLASSIC_ENCRYPT),
            Err(CryptoError::SignatureMismatch)
        );
        assert_eq!(
            crypto.decrypt_message(&sig[..39], ts, nonce, CLASSIC_ENCRYPT),
            Err(CryptoError::SignatureMismatch)
        );

        let other_receiver =
            CallbackCrypto::new(CLASSIC_TOKEN, CLASSIC_KEY, "ww0000000000000000").unwrap();
        assert_eq!(
            other_receiver.decrypt_message(sig, ts, nonce, CLASSIC_ENCRYPT),
            Err(CryptoError::ReceiveIdMismatch {
                expected: "ww0000000000000000".to_string(),
                found: CLASSIC_RECEIVE_ID.to_string(),
            })
        );

        // Drop the last 16-byte block but one byte: the length is no longer a block multiple.
        let raw = base64::engine::general_purpose::STANDARD
            .decode(CLASSIC_ENCRYPT)
            .unwrap();
        let truncated = base64::engine::general_purpose::STANDARD.encode(&raw[..raw.len() - 17]);
        assert_eq!(
            crypto.decrypt(&truncated),
            Err(CryptoError::InvalidCiphertextLength)
        );
        // Dropping a whole trailing block leaves ciphertext whose padding is garbage.
        let block_short = base64::engine::general_purpose::STANDARD.encode(&raw[..raw.len() - 16]);
        assert_eq!(
            crypto.decrypt(&block_short),
            Err(CryptoError::InvalidPadding)
        );
        assert_eq!(
            crypto.decrypt(""),
            Err(CryptoError::InvalidCiphertextLength)
        );

        assert_eq!(
            crypto.decrypt("not base64 at all!"),
            Err(CryptoError::InvalidBase64)
        );
        assert_eq!(
            crypto.decrypt(&CLASSIC_ENCRYPT.replace('+', "-")),
            Err(CryptoError::InvalidBase64)
        );

        let wrong_key = CallbackCrypto::new(
            CLASSIC_TOKEN,
            "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
            CLASSIC_RECEIVE_ID,
        )
        .unwrap();
        assert_eq!(
            wrong_key.decrypt_message(sig, ts, nonce, CLASSIC_ENCRYPT),
            Err(CryptoError::InvalidPadding)
        );
    }

    #[test]
    fn a_forged_length_field_is_out_of_bounds() {
        let crypto = classic();
        let encrypted = crypto.encrypt_with_random("hello", [7; 16]);
        let mut plain = crypto.decrypt_padded(&encrypted).unwrap();
        plain[RANDOM_LEN..HEADER_LEN].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(
            crypto.locate_message(&plain),
            Err(CryptoError::LengthOutOfBounds)
        );
        plain[RANDOM_LEN..HEADER_LEN].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            crypto.locate_message(&plain),
            Err(CryptoError::LengthOutOfBounds)
        );
        // Padding that claims the whole buffer leaves no room for the header.
        let short = [16u8; 16];
        assert_eq!(
            crypto.locate_message(&short),
            Err(CryptoError::LengthOutOfBounds)
        );
        assert_eq!(
            crypto.locate_message(&[0u8; 16]),
            Err(CryptoError::InvalidPadding)
        );
        assert_eq!(
            crypto.locate_message(&[33u8; 64]),
            Err(CryptoError::InvalidPadding)
        );
    }

    #[test]
    fn errors_and_debug_never_show_the_secrets() {
        let crypto = classic();
        let debug = format!("{crypto:?}");
        assert!(
            !debug.contains(CLASSIC_TOKEN) && !debug.contains(CLASSIC_KEY),
            "{debug}"
        );
        assert!(debug.contains(CLASSIC_RECEIVE_ID));
        let errors = [
            CallbackCrypto::new("", CLASSIC_KEY, "r").unwrap_err(),
            CallbackCrypto::new(CLASSIC_TOKEN, &CLASSIC_KEY[1..], "r").unwrap_err(),
            crypto
                .verify_url("0", "1", "2", CLASSIC_ECHOSTR)
                .unwrap_err(),
        ];
        for err in errors {
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(!text.contains(CLASSIC_TOKEN) && !text.contains(&CLASSIC_KEY[1..]));
                assert!(!text.contains('\n'));
            }
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let crypto = classic();
        let mut rng = rand::thread_rng();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=<>!";
        for round in 0..3000 {
            let len = (rng.next_u32() % 600) as usize;
            let mut bytes = vec![0u8; len];
            rng.fill_bytes(&mut bytes);
            // Half the rounds: valid base64 of random bytes, so decryption itself runs.
            let text = if round % 2 == 0 {
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            } else {
                bytes
                    .iter()
                    .map(|&b| char::from(alphabet[usize::from(b) % alphabet.len()]))
                    .collect()
            };
            assert!(crypto.decrypt(&text).is_err() || round % 2 == 1);
            let _ = crypto.verify_url(&text, "1", "2", &text);
            let _ = extract_encrypt(&text);
            let _ = crate::wecom::event::parse_event(&text);
            let _ = CallbackCrypto::new(&text, &text, &text);
            let lossy = String::from_utf8_lossy(&bytes);
            let _ = extract_encrypt(&lossy);
            let _ = crate::wecom::event::parse_event(&lossy);
        }
    }

    #[test]
    fn post_body_round_trips_through_extract_encrypt_in_any_order() {
        let body = post_body("ww1]]>x", "1000002", "ABC+/=");
        assert_eq!(
            body,
            "<xml><ToUserName><![CDATA[ww1]]]]><![CDATA[>x]]></ToUserName><AgentID>1000002</AgentID>\
             <Encrypt><![CDATA[ABC+/=]]></Encrypt></xml>"
        );
        assert_eq!(extract_encrypt(&body), Ok("ABC+/=".to_string()));
        let reordered = "<xml>\n  <Encrypt><![CDATA[QUJD]]></Encrypt>\n  <ToUserName><![CDATA[ww1]]></ToUserName>\n  <AgentID><![CDATA[]]></AgentID>\n</xml>";
        assert_eq!(extract_encrypt(reordered), Ok("QUJD".to_string()));
        assert_eq!(
            extract_encrypt("<xml><Encrypt>QUJD</Encrypt></xml>"),
            Ok("QUJD".to_string())
        );
    }

    #[test]
    fn extract_encrypt_reports_missing_and_malformed() {
        assert_eq!(
            extract_encrypt("<xml><ToUserName>a</ToUserName></xml>"),
            Err(CryptoError::MissingEncrypt)
        );
        assert_eq!(
            extract_encrypt("<xml><Encrypt/></xml>"),
            Err(CryptoError::MissingEncrypt)
        );
        assert_eq!(
            extract_encrypt("<xml><Inner><Encrypt>x</Encrypt></Inner></xml>"),
            Err(CryptoError::MissingEncrypt)
        );
        assert!(matches!(
            extract_encrypt("<xml><Encrypt>QUJD</Encrypt>"),
            Err(CryptoError::MalformedXml(_))
        ));
        assert!(matches!(
            extract_encrypt("<xml><Encrypt>QUJD</Encrypt></lmx>"),
            Err(CryptoError::MalformedXml(_))
        ));
    }
}
