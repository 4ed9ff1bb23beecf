//! Property tests of the WeCom answer decoders and the pagination guard: arbitrary bytes,
//! arbitrary JSON shaped like WeCom's answers, and well-formed answers with a few values
//! replaced by hostile ones (numbers at every edge, wrong types) or removed, into every
//! answer type never panic, always give a typed result for the right API, and whatever
//! decodes is within the ranges the controller relies on.
//!
//! Deterministic in `cargo test`: a fixed seed and proptest's default 256 cases per
//! property. A longer run with another seed (see README, "Fuzzing"):
//! `PROPTEST_CASES=100000 PROPTEST_RNG_SEED=7 cargo test --release --test fuzz_wecom`.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{Map, Value};
use wecom_acq::wecom::answer::{
    self, Answer, MAX_EXPIRES_IN, MAX_FIGURE, MAX_UNIX_SECONDS, PageGuard, PageLimits,
};
use wecom_acq::wecom::error::SUMMARY_MAX_CHARS;
use wecom_acq::wecom::types::{
    ApiStatus, CreateLinkResponse, CustomerResponse, GetLinkResponse, ListLinkResponse,
    QuotaResponse, StatisticResponse, TokenResponse,
};
use wecom_acq::wecom::{Api, WeComError};

/// The seed of the run inside `cargo test`; `PROPTEST_RNG_SEED` picks another.
const SEED: u64 = 0x5EC0_4E55;

fn config() -> Config {
    let base = Config::default();
    Config {
        rng_seed: match base.rng_seed {
            RngSeed::Random => RngSeed::Fixed(SEED),
            fixed => fixed,
        },
        // Nothing is written into the source tree; a failure prints its input.
        failure_persistence: None,
        ..base
    }
}

/// Every field name of every answer, so generated objects hit real fields.
const FIELDS: &[&str] = &[
    "errcode",
    "errmsg",
    "access_token",
    "expires_in",
    "link",
    "link_id",
    "link_name",
    "url",
    "create_time",
    "skip_verify",
    "mark_source",
    "range",
    "user_list",
    "department_list",
    "priority_option",
    "priority_type",
    "priority_userid_list",
    "link_id_list",
    "next_cursor",
    "customer_list",
    "external_userid",
    "userid",
    "customer_userid",
    "chat_status",
    "state",
    "add_time",
    "click_link_customer_cnt",
    "new_customer_cnt",
    "total",
    "balance",
    "quota_list",
    "expire_date",
];

/// Numbers at and around every edge the decoders care about.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            0i128,
            -1,
            1,
            7200,
            i128::from(MAX_EXPIRES_IN) + 1,
            i128::from(MAX_FIGURE),
            i128::from(MAX_FIGURE) + 1,
            i128::from(MAX_UNIX_SECONDS),
            i128::from(MAX_UNIX_SECONDS) + 1,
            i128::from(i64::MAX),
            i128::from(i64::MIN),
            i128::from(u64::MAX),
        ])
        .prop_map(|n| serde_json::from_str(&n.to_string()).unwrap_or(Value::Null)),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        number(),
        ".{0,12}".prop_map(Value::from),
    ]
}

/// JSON shaped like WeCom's answers: objects keyed by real field names, errcode mostly 0.
fn wecom_like() -> impl Strategy<Value = Value> {
    let value = leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..8).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    });
    (
        prop::collection::vec((prop::sample::select(FIELDS), value), 0..10),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(pairs, ok)| {
            let mut object: Map<String, Value> =
                pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            if ok {
                object.insert("errcode".into(), Value::from(0));
            }
            Value::Object(object)
        })
}

/// A well-formed answer of each API, the starting point of [`mutated_answer`].
fn templates() -> Vec<Value> {
    vec![
        serde_json::json!({"errcode": 0, "errmsg": "ok", "access_token": "t", "expires_in": 7200}),
        serde_json::json!({"errcode": 0, "link_id_list": ["a", "b"], "next_cursor": "c"}),
        serde_json::json!({"errcode": 0, "link": {"link_id": "l", "link_name": "n", "url": "u",
            "create_time": 1_700_000_000, "skip_verify": true, "mark_source": false},
            "range": {"user_list": ["u"], "department_list": [1]},
            "priority_option": {"priority_type": 2, "priority_userid_list": ["u"]}}),
        serde_json::json!({"errcode": 0, "customer_list": [{"external_userid": "wm",
            "userid": "u", "chat_status": 1, "state": "s", "add_time": 1_700_000_000}],
            "next_cursor": ""}),
        serde_json::json!({"errcode": 0, "click_link_customer_cnt": 7, "new_customer_cnt": 3}),
        serde_json::json!({"errcode": 0, "total": 10, "balance": 990,
            "quota_list": [{"expire_date": 1_767_196_800, "balance": 990}]}),
    ]
}

/// Every path to a value inside `value` (object keys and array indexes).
fn paths(value: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                prefix.push(PathStep::Key(k.clone()));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(PathStep::Index(i));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

/// Replaces (or, with `remove`, drops) the value at `path`.
fn edit(value: &mut Value, path: &[PathStep], new: Value, remove: bool) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = value;
    for step in parents {
        let next = match (step, at) {
            (PathStep::Key(k), Value::Object(map)) => map.get_mut(k),
            (PathStep::Index(i), Value::Array(items)) => items.get_mut(*i),
            _ => None,
        };
        match next {
            Some(next) => at = next,
            None => return,
        }
    }
    match (last, at) {
        (PathStep::Key(k), Value::Object(map)) if remove => {
            map.remove(k);
        }
        (PathStep::Key(k), Value::Object(map)) => {
            map.insert(k.clone(), new);
        }
        (PathStep::Index(i), Value::Array(items)) if *i < items.len() => {
            if remove {
                items.remove(*i);
            } else {
                items[*i] = new;
            }
        }
        _ => {}
    }
}

/// A well-formed answer with a few values replaced by hostile ones or removed.
fn mutated_answer() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(templates()),
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                leaf(),
                prop::bool::weighted(0.2),
            ),
            1..4,
        ),
    )
        .prop_map(|(mut answer, edits)| {
            for (index, new, remove) in edits {
                let mut all = Vec::new();
                paths(&answer, &mut Vec::new(), &mut all);
                if all.is_empty() {
                    break;
                }
                let path = index.get(&all).clone();
                edit(&mut answer, &path, new, remove);
            }
            answer
        })
}

/// Runs `body` through the decoder of `api`'s answer type and checks the result.
fn decode_all(body: &[u8]) {
    check::<TokenResponse>(Api::GetToken, body, |t| {
        assert!(!t.access_token.is_empty() && t.expires_in <= MAX_EXPIRES_IN);
        assert!(t.access_token.len() <= answer::MAX_TOKEN_BYTES);
    });
    check::<ListLinkResponse>(Api::ListLink, body, |_| {});
    check::<GetLinkResponse>(Api::GetLink, body, |a| {
        assert!((0..=MAX_UNIX_SECONDS).contains(&a.link.create_time));
    });
    check::<CreateLinkResponse>(Api::CreateLink, body, |a| {
        assert!(!a.link.link_id.is_empty());
    });
    check::<ApiStatus>(Api::UpdateLink, body, |s| assert_eq!(s.errcode, 0));
    check::<CustomerResponse>(Api::Customer, body, |a| {
        for c in &a.customer_list {
            assert!(
                c.add_time
                    .is_none_or(|t| (0..=MAX_UNIX_SECONDS).contains(&t))
            );
        }
    });
    check::<StatisticResponse>(Api::Statistic, body, |a| {
        assert!(a.click_link_customer_cnt <= MAX_FIGURE && a.new_customer_cnt <= MAX_FIGURE);
    });
    check::<QuotaResponse>(Api::Quota, body, |a| {
        assert!(a.total <= MAX_FIGURE && a.balance <= MAX_FIGURE);
        let sum = a
            .quota_list
            .iter()
            .try_fold(0u64, |sum, b| sum.checked_add(b.balance));
        assert!(sum.is_some_and(|s| s <= MAX_FIGURE));
        for b in &a.quota_list {
            assert!((0..=MAX_UNIX_SECONDS).contains(&b.expire_date));
        }
    });
}

fn check<R: Answer>(api: Api, body: &[u8], ok: impl Fn(&R)) {
    match answer::decode::<R>(api, 200, "content type \"application/json\"", body) {
        Ok(answer) => ok(&answer),
        Err(error) => {
            assert_eq!(error.api(), api, "{error:?}");
            assert!(
                error.errcode().is_some() || !error.is_retryable(),
                "{error:?}"
            );
            let summary = error.summary();
            assert!(
                summary.chars().count() <= SUMMARY_MAX_CHARS + 3,
                "{summary}"
            );
            assert!(summary.contains(api.name()), "{summary}");
            match &error {
                WeComError::Api { errcode, .. } => assert_ne!(*errcode, 0),
                WeComError::Decode { .. } | WeComError::NotJson { .. } => {}
                other => panic!("unexpected error kind {other:?}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(body in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&body);
    }

    #[test]
    fn json_like_bytes_never_panic_a_decoder(text in r#"[{}\[\]",:0-9a-z_ .eE+-]{0,200}"#) {
        decode_all(text.as_bytes());
    }

    #[test]
    fn wecom_shaped_json_decodes_in_range_or_names_its_problem(value in wecom_like()) {
        decode_all(value.to_string().as_bytes());
    }

    #[test]
    fn mutated_answers_decode_in_range_or_name_their_problem(value in mutated_answer()) {
        decode_all(value.to_string().as_bytes());
    }

    #[test]
    fn a_listing_ends_within_its_page_cap(
        pages in prop::collection::vec((0usize..6, prop::sample::select(vec!["", "a", "b", "c", "d", "e", "f"])), 1..40),
        per_page in 1u32..5,
        max_pages in 1u32..8,
    ) {
        let mut guard = PageGuard::new(Api::ListLink, PageLimits { per_page, max_pages });
        let mut seen = std::collections::HashSet::new();
        let mut fetched = 0u32;
        for (items, cursor) in pages {
            fetched += 1;
            prop_assert!(fetched <= max_pages, "fetched a page past the cap");
            match guard.after_page(items, cursor) {
                Ok(None) => {
                    prop_assert!(cursor.is_empty() && items <= per_page as usize);
                    break;
                }
                Ok(Some(next)) => {
                    prop_assert_eq!(next.as_str(), cursor);
                    prop_assert!(seen.insert(cursor), "a repeated cursor was followed");
                }
                Err(error) => {
                    let is_pagination =
                        matches!(error, WeComError::Pagination { api: Api::ListLink, .. });
                    prop_assert!(is_pagination, "{:?}", error);
                    break;
                }
            }
        }
    }
}
