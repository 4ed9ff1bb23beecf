//! Property tests (issue 13.7) of what reads input from outside the process: the callback
//! crypto and XML, event parsing, and AcquisitionLink/WeComApp validation on arbitrary
//! JSON. None may panic; each failure is a typed error; round trips hold.
//!
//! The seed is fixed, so `cargo test` runs the same cases every time (256 per property by
//! default). A longer run: `PROPTEST_CASES=20000 cargo test --release --test properties`.

use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use base64::Engine as _;
use kube::CustomResourceExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{Value, json};

use wecom_acq::api::{AcquisitionLink, AcquisitionLinkSpec, WeComApp, WeComAppSpec};
use wecom_acq::gitops::{manifest, schema};
use wecom_acq::reconcile::plan;
use wecom_acq::wecom::crypto::{CallbackCrypto, CryptoError, extract_encrypt_borrowed, post_body};
use wecom_acq::wecom::event::{EventError, parse_event};

const TOKEN: &str = "propToken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const RECEIVE_ID: &str = "wwprop0000000001";

/// Fixed seed (reproducible in CI); cases from `PROPTEST_CASES` (default 256); no
/// regression files written into the tree.
fn config() -> Config {
    Config {
        rng_seed: RngSeed::Fixed(13_000_013),
        failure_persistence: None,
        ..Config::default()
    }
}

fn crypto() -> CallbackCrypto {
    CallbackCrypto::new(TOKEN, AES_KEY, RECEIVE_ID).unwrap()
}

/// AES-256-CBC of `plain` (a multiple of 16 bytes) under the test key, base64: what a
/// sender holding the key could put in `Encrypt`, whatever the bytes inside.
fn encrypt_raw(plain: &[u8]) -> String {
    // The 43-character key has trailing bits, as WeCom's do.
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let key = lenient.decode(format!("{AES_KEY}=")).unwrap();
    let iv: [u8; 16] = key[..16].try_into().unwrap();
    let encrypted = cbc::Encryptor::<aes::Aes256>::new(key.as_slice().into(), &iv.into())
        .encrypt_padded_vec_mut::<NoPadding>(plain);
    base64::engine::general_purpose::STANDARD.encode(encrypted)
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for a field: mostly of a plausible type, sometimes anything at all.
fn field_value(plausible: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![3 => plausible, 1 => any_json()].boxed()
}

fn strings(max: usize) -> BoxedStrategy<Value> {
    prop::collection::vec(".{0,24}", 0..max)
        .prop_map(Value::from)
        .boxed()
}

/// An object with any subset of `fields`, each holding its strategy's value.
fn object_of(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let parts: Vec<_> = fields
        .into_iter()
        .map(|(name, value)| prop::option::of(field_value(value)).prop_map(move |v| (name, v)))
        .collect();
    parts
        .prop_map(|fields| {
            Value::Object(
                fields
                    .into_iter()
                    .filter_map(|(name, value)| Some((name.to_string(), value?)))
                    .collect(),
            )
        })
        .boxed()
}

/// One of `values`, or a short string that is none of them.
fn one_of_or_any(values: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop_oneof![
        prop::sample::select(values).prop_map(String::from),
        ".{0,8}"
    ]
    .prop_map(Value::from)
    .boxed()
}

fn link_spec_json() -> BoxedStrategy<Value> {
    let range = object_of(vec![
        ("userList", strings(6)),
        (
            "departmentList",
            prop::collection::vec(any::<i64>(), 0..4)
                .prop_map(Value::from)
                .boxed(),
        ),
    ]);
    let priority = object_of(vec![
        ("priorityType", any::<i64>().prop_map(Value::from).boxed()),
        ("priorityUserList", strings(4)),
    ]);
    object_of(vec![
        (
            "appRef",
            object_of(vec![("name", ".{0,20}".prop_map(Value::from).boxed())]),
        ),
        ("linkName", ".{0,40}".prop_map(Value::from).boxed()),
        ("range", range),
        ("skipVerify", any::<bool>().prop_map(Value::from).boxed()),
        ("priorityOption", priority),
        ("markSource", any::<bool>().prop_map(Value::from).boxed()),
        ("channels", strings(5)),
        ("deletionPolicy", one_of_or_any(&["Delete", "Orphan"])),
        ("onRemoteDelete", one_of_or_any(&["Recreate", "Orphan"])),
        ("linkId", ".{0,20}".prop_map(Value::from).boxed()),
    ])
}

fn app_spec_json() -> BoxedStrategy<Value> {
    let key_ref = || {
        object_of(vec![
            ("name", ".{0,20}".prop_map(Value::from).boxed()),
            ("key", ".{0,20}".prop_map(Value::from).boxed()),
        ])
    };
    object_of(vec![
        ("corpId", ".{0,24}".prop_map(Value::from).boxed()),
        ("secretRef", key_ref()),
        (
            "callback",
            object_of(vec![
                ("tokenRef", key_ref()),
                ("aesKeyRef", key_ref()),
                ("receiveId", ".{0,20}".prop_map(Value::from).boxed()),
            ]),
        ),
        ("apiBaseUrl", ".{0,40}".prop_map(Value::from).boxed()),
        (
            "requestsPerMinute",
            any::<i64>().prop_map(Value::from).boxed(),
        ),
    ])
}

/// A manifest of `kind` named `name` with `spec`, as YAML.
fn manifest_yaml(kind: &str, name: &Value, spec: &Value) -> String {
    let object = json!({
        "apiVersion": "acquisition.wecom.dev/v1alpha1",
        "kind": kind,
        "metadata": { "name": name, "namespace": "default" },
        "spec": spec,
    });
    wecom_acq::yaml::to_string(&object).unwrap()
}

/// Reads `text` as the file `props.yaml`: no panic, every error names the file.
fn load_manifest(text: &str) -> (manifest::Manifests, Vec<manifest::ManifestError>) {
    let mut manifests = manifest::Manifests::default();
    let mut errors = Vec::new();
    manifest::parse_into("props.yaml", text, "default", &mut manifests, &mut errors);
    for error in &errors {
        let shown = error.to_string();
        assert!(shown.starts_with("props.yaml"), "{shown}");
        assert!(!error.message.is_empty(), "{shown}");
    }
    (manifests, errors)
}

/// The elements `parse_event` reads.
const EVENT_ELEMENTS: [&str; 16] = [
    "ToUserName",
    "CreateTime",
    "Event",
    "SuiteId",
    "AuthCorpId",
    "InfoType",
    "TimeStamp",
    "ChangeType",
    "LinkId",
    "State",
    "UserID",
    "ExternalUserID",
    "ExpireTime",
    "ExpireQuotaNum",
    "WelcomeCode",
    "ChatKey",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sealed_messages_verify_and_decrypt_to_what_was_sealed(
        msg in ".{0,600}",
        random in any::<[u8; 16]>(),
        timestamp in "[0-9]{0,12}",
        nonce in "[A-Za-z0-9]{0,16}",
    ) {
        let crypto = crypto();
        let encrypted = crypto.encrypt_with_random(&msg, random);
        let signature = crypto.signature(&timestamp, &nonce, &encrypted);
        prop_assert_eq!(crypto.verify_signature(&signature, &timestamp, &nonce, &encrypted), Ok(()));
        prop_assert_eq!(crypto.decrypt(&encrypted), Ok(msg));
        // The body WeCom would post carries the same ciphertext.
        let body = post_body(RECEIVE_ID, "1000002", &encrypted);
        prop_assert_eq!(extract_encrypt_borrowed(&body).map(|e| e.into_owned()), Ok(encrypted));
    }

    #[test]
    fn any_text_as_ciphertext_is_a_typed_error_or_a_message(text in ".{0,300}") {
        match crypto().decrypt(&text) {
            Ok(_) => {}
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }

    #[test]
    fn any_bytes_as_ciphertext_are_a_typed_error(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let decrypted = crypto().decrypt(&text);
        if bytes.is_empty() || bytes.len() % 16 != 0 {
            prop_assert_eq!(decrypted, Err(CryptoError::InvalidCiphertextLength));
        }
    }

    /// Plaintexts a sender with the key could craft: any padding byte, any length field,
    /// any receive id. Decryption answers with a message or a typed error, never panics,
    /// and a message is only returned for this receive id.
    #[test]
    fn crafted_plaintexts_under_the_key_never_panic(
        mut plain in prop::collection::vec(any::<u8>(), 1..20).prop_map(|blocks| {
            blocks.into_iter().flat_map(|b| [b; 16]).collect::<Vec<u8>>()
        }),
        noise in prop::collection::vec(any::<u8>(), 0..320),
        length in any::<u32>(),
        pad in 0u8..=40,
    ) {
        for (byte, n) in plain.iter_mut().zip(noise) {
            *byte = n;
        }
        if plain.len() >= 20 {
            plain[16..20].copy_from_slice(&length.to_be_bytes());
        }
        if let Some(last) = plain.last_mut() {
            *last = pad;
        }
        let result = crypto().decrypt(&encrypt_raw(&plain));
        if let Err(err) = &result {
            prop_assert!(!err.to_string().contains(AES_KEY));
        }
    }

    #[test]
    fn any_signature_is_checked_without_panic(
        signature in ".{0,60}",
        timestamp in ".{0,20}",
        nonce in ".{0,20}",
        content in ".{0,200}",
    ) {
        let crypto = crypto();
        let expected = crypto.signature(&timestamp, &nonce, &content);
        let verified = crypto.verify_signature(&signature, &timestamp, &nonce, &content);
        if signature == expected {
            prop_assert_eq!(verified, Ok(()));
        } else {
            prop_assert_eq!(verified, Err(CryptoError::SignatureMismatch));
        }
    }

    #[test]
    fn any_text_as_a_callback_body_is_an_encrypt_value_or_a_typed_error(body in ".{0,400}") {
        match extract_encrypt_borrowed(&body) {
            Ok(_) => {}
            Err(err) => prop_assert!(
                matches!(err, CryptoError::MalformedXml(_) | CryptoError::MissingEncrypt),
                "{err:?}"
            ),
        }
    }

    #[test]
    fn any_text_as_an_event_is_an_event_or_a_typed_error(xml in ".{0,400}") {
        let _ = parse_event(&xml);
    }

    /// Event-shaped XML: the elements the parser reads, in any order, with any text
    /// (CDATA or escaped), nested or repeated.
    #[test]
    fn event_shaped_xml_is_an_event_or_a_typed_error(
        elements in prop::collection::vec(
            (
                prop_oneof![
                    prop::sample::select(EVENT_ELEMENTS.to_vec()).prop_map(String::from),
                    "[A-Za-z]{1,8}",
                ],
                ".{0,30}",
                any::<bool>(),
            ),
            0..16,
        ),
    ) {
        let mut xml = String::from("<xml>");
        for (name, text, cdata) in &elements {
            if *cdata {
                xml.push_str(&format!("<{name}><![CDATA[{text}]]></{name}>"));
            } else {
                let escaped = text.replace('&', "&amp;").replace('<', "&lt;");
                xml.push_str(&format!("<{name}>{escaped}</{name}>"));
            }
        }
        xml.push_str("</xml>");
        match parse_event(&xml) {
            Ok(event) => prop_assert!(!event.corp_id.is_empty()),
            Err(EventError::MalformedXml(why)) => prop_assert!(!why.is_empty()),
            Err(EventError::MissingField(field)) => prop_assert!(!field.is_empty()),
            Err(EventError::InvalidNumber { field, .. }) => prop_assert!(!field.is_empty()),
        }
    }

    /// A link spec from arbitrary JSON: a typed decode error, or a spec that `validate`
    /// accepts or refuses with a message naming a field; the same through the files of
    /// `wecom-acq plan`, and the CRD schema check.
    #[test]
    fn link_specs_from_arbitrary_json_are_validated_without_panic(
        spec in link_spec_json(),
        name in any_json(),
    ) {
        if let Ok(decoded) = serde_json::from_value::<AcquisitionLinkSpec>(spec.clone())
            && let Err(message) = plan::validate(&decoded)
        {
            prop_assert!(message.contains("spec."), "{message}");
        }
        let (manifests, errors) = load_manifest(&manifest_yaml("AcquisitionLink", &name, &spec));
        prop_assert!(manifests.links.len() + errors.len() >= 1);
        let crd = schema::open_api_schema(&AcquisitionLink::crd());
        let _ = schema::check(&crd, &json!({ "spec": spec }));
    }

    #[test]
    fn app_specs_from_arbitrary_json_are_validated_without_panic(
        spec in app_spec_json(),
        name in any_json(),
    ) {
        let _ = serde_json::from_value::<WeComAppSpec>(spec.clone());
        let (manifests, errors) = load_manifest(&manifest_yaml("WeComApp", &name, &spec));
        prop_assert!(manifests.apps.len() + errors.len() >= 1);
        let crd = schema::open_api_schema(&WeComApp::crd());
        let _ = schema::check(&crd, &json!({ "spec": spec }));
    }

    /// Any text as a manifest file: YAML errors and the like, each naming the file.
    #[test]
    fn any_text_as_a_manifest_file_is_read_or_refused_without_panic(text in ".{0,300}") {
        let _ = load_manifest(&text);
    }
}
