//! Throughput of the callback hot path: verify the signature, decrypt, and parse the event of
//! a sealed `delete_link` callback, as the callback endpoint does for every POST. Plain
//! `std::time`, about 2 s per measurement; run with `cargo bench --bench callback_crypto`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use wecom_acq::wecom::crypto::{CallbackCrypto, extract_encrypt, post_body};
use wecom_acq::wecom::event::{
    CallbackEvent, ChangeType, Envelope, EventFamily, parse_event, render_event,
};

const BATCH: u64 = 1_000;
const RUN_FOR: Duration = Duration::from_secs(2);

/// Runs `one_event` in batches until `RUN_FOR` has passed and prints the rate.
fn measure(name: &str, mut one_event: impl FnMut()) {
    // Warm caches and the branch predictor before timing.
    for _ in 0..BATCH {
        one_event();
    }
    let start = Instant::now();
    let mut events = 0u64;
    while start.elapsed() < RUN_FOR {
        for _ in 0..BATCH {
            one_event();
        }
        events += BATCH;
    }
    let elapsed = start.elapsed();
    let per_second = events as f64 / elapsed.as_secs_f64();
    let ns_per_event = elapsed.as_nanos() as f64 / events as f64;
    println!("{name}: {per_second:.0} events/s, {ns_per_event:.0} ns/event ({events} events)");
}

fn main() {
    let crypto = CallbackCrypto::new(
        "QDG6eK",
        "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
        "ww1234567890abcdef",
    )
    .expect("the benchmark's own callback settings are valid");
    let event = CallbackEvent {
        envelope: Envelope::SelfBuilt,
        corp_id: "ww1234567890abcdef".to_string(),
        suite_id: None,
        family: EventFamily::CustomerAcquisition,
        change_type: ChangeType::DeleteLink,
        created_at: 1_700_000_000,
        link_id: Some("cawcde5a2f8d1c3b7e".to_string()),
        state: None,
        user_id: None,
        external_user_id: None,
        expire_time: None,
        expire_quota_num: None,
        welcome_code: None,
        chat_key: None,
    };
    let xml = render_event(&event);
    let sealed = crypto.seal(&xml, "1700000000", "1372623149");
    let body = post_body("ww1234567890abcdef", "1000002", &sealed.encrypt);
    println!(
        "delete_link event: {} bytes of XML, {} bytes of base64 ciphertext",
        xml.len(),
        sealed.encrypt.len()
    );

    measure("verify+decrypt+parse_event", || {
        let plaintext = crypto
            .decrypt_message(
                black_box(&sealed.msg_signature),
                black_box(&sealed.timestamp),
                black_box(&sealed.nonce),
                black_box(&sealed.encrypt),
            )
            .expect("the sealed event verifies");
        let parsed = parse_event(&plaintext).expect("the sealed event parses");
        black_box(parsed);
    });
    measure(
        "extract_encrypt+verify+decrypt+parse_event (whole POST)",
        || {
            let encrypt = extract_encrypt(black_box(&body)).expect("the body has Encrypt");
            let plaintext = crypto
                .decrypt_message(
                    &sealed.msg_signature,
                    &sealed.timestamp,
                    &sealed.nonce,
                    &encrypt,
                )
                .expect("the sealed event verifies");
            black_box(parse_event(&plaintext).expect("the sealed event parses"));
        },
    );
}
