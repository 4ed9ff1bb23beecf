//! Leader election against the kubesim API emulator: a leader whose renewals fail or hang
//! gives up before its Lease can be taken over, and one whose Lease another replica took
//! says so.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use tokio::sync::oneshot;
use wecom_acq::kubesim;
use wecom_acq::leader::{LeadershipLost, LeaseTiming, acquire_with};

/// Short enough for a test; the ratios are the production ones (deadline < lease).
const TIMING: LeaseTiming = LeaseTiming {
    lease: Duration::from_secs(4),
    renew_every: Duration::from_millis(300),
    retry: Duration::from_millis(100),
    renew_deadline: Duration::from_millis(1500),
};

async fn leader(
    client: kube::Client,
) -> (
    wecom_acq::leader::Leadership,
    oneshot::Receiver<(LeadershipLost, Instant)>,
) {
    let (tx, rx) = oneshot::channel();
    let held = acquire_with(
        client,
        "default",
        "lock",
        "replica-a".into(),
        TIMING,
        move |lost| {
            let _ = tx.send((lost, Instant::now()));
        },
    )
    .await
    .expect("leadership");
    (held, rx)
}

/// The leader's last successful renewal was at most `renew_every` before `fault`; it
/// must have stopped before `lease` had passed since then.
fn assert_gave_up_in_time(fault: Instant, lost_at: Instant) {
    let since_last_renewal_at_most = lost_at.duration_since(fault) + TIMING.renew_every;
    assert!(
        since_last_renewal_at_most < TIMING.lease,
        "gave up {since_last_renewal_at_most:?} after its last renewal; the lease lasts {:?}",
        TIMING.lease
    );
}

#[tokio::test]
async fn a_leader_whose_renewals_fail_gives_up_before_its_lease_expires() {
    let sim = kubesim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (_held, lost) = leader(sim.client().await).await;
    let fault = Instant::now();
    sim.faults()
        .fail_all_requests_for(Duration::from_secs(30), 503);
    let (why, at) = tokio::time::timeout(Duration::from_secs(20), lost)
        .await
        .expect("leadership ends")
        .expect("told");
    assert_eq!(why, LeadershipLost::RenewDeadline(TIMING.renew_deadline));
    assert_gave_up_in_time(fault, at);
}

#[tokio::test]
async fn a_leader_whose_renewals_hang_gives_up_before_its_lease_expires() {
    let sim = kubesim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (_held, lost) = leader(sim.client().await).await;
    let fault = Instant::now();
    sim.faults().delay_responses(Duration::from_secs(60));
    let (why, at) = tokio::time::timeout(Duration::from_secs(20), lost)
        .await
        .expect("leadership ends")
        .expect("told");
    assert_eq!(why, LeadershipLost::RenewDeadline(TIMING.renew_deadline));
    assert_gave_up_in_time(fault, at);
}

#[tokio::test]
async fn a_leader_sees_its_lease_taken_over() {
    let sim = kubesim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = sim.client().await;
    let (_held, lost) = leader(client.clone()).await;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let mut lease = leases.get("lock").await.unwrap();
    lease.spec.as_mut().unwrap().holder_identity = Some("replica-b".into());
    leases
        .replace("lock", &PostParams::default(), &lease)
        .await
        .unwrap();
    let (why, _) = tokio::time::timeout(Duration::from_secs(20), lost)
        .await
        .expect("leadership ends")
        .expect("told");
    assert_eq!(why, LeadershipLost::TakenOver);
}
