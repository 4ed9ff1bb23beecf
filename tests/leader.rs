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

/// A TCP relay to kubesim that can be cut: the replica behind it is partitioned from the
/// API server (its connections close, new ones are refused) while others still reach it.
struct Relay {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

async fn relay(to: std::net::SocketAddr) -> Relay {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, cut_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut cut_rx = cut_rx.clone();
            if *cut_rx.borrow() {
                continue;
            }
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut_rx.wait_for(|cut| *cut) => {}
                }
            });
        }
    });
    Relay { addr, cut }
}

fn client_at(addr: std::net::SocketAddr) -> kube::Client {
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(addr.to_string())
        .path_and_query("/")
        .build()
        .unwrap();
    kube::Client::try_from(kube::Config::new(uri)).unwrap()
}

/// Why leader election is our own and not `kube-lease-manager` (0.13, the maintained crate
/// for kube 5 the lifecycle issue points to). The same partition for both: replica A leads
/// through a relay, the relay is cut, replica B (ours, reaching the API server) waits for
/// the lease to expire and takes it.
/// - `kube-lease-manager`: its renewal errors are logged and retried with back-off while
///   its `watch()` channel keeps saying `true`; it has no renew deadline. When B holds the
///   lease, A still believes it leads: two leaders, both writing to WeCom.
/// - ours: A gives up at its renew deadline, before the lease expires, so before B can
///   take it.
#[tokio::test]
async fn kube_lease_manager_keeps_leading_after_its_lease_was_taken() {
    let sim = kubesim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let lease_seconds = 3;
    let b_timing = LeaseTiming {
        lease: Duration::from_secs(lease_seconds),
        ..TIMING
    };

    // kube-lease-manager as replica A.
    let to_a = relay(sim.addr()).await;
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client_at(to_a.addr), "crate-lock")
        .with_namespace("default")
        .with_identity("replica-a")
        .with_duration(lease_seconds)
        .with_grace(1)
        .build()
        .await
        .expect("kube-lease-manager against kubesim");
    let (mut a_leads, _task) = manager.watch().await;
    tokio::time::timeout(Duration::from_secs(20), a_leads.wait_for(|leads| *leads))
        .await
        .expect("A leads")
        .expect("A's channel open");
    to_a.cut.send_replace(true);
    let _b = acquire_with(
        sim.client().await,
        "default",
        "crate-lock",
        "replica-b".into(),
        b_timing,
        |_| {},
    )
    .await
    .expect("B takes the expired lease");
    let leases: Api<Lease> = Api::namespaced(sim.client().await, "default");
    let holder = leases
        .get("crate-lock")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(holder.as_deref(), Some("replica-b"));
    assert!(
        *a_leads.borrow(),
        "kube-lease-manager's replica A says it still leads while B holds the lease"
    );

    // Ours as replica A, the same partition.
    let to_a = relay(sim.addr()).await;
    let (a_lost_tx, a_lost) = oneshot::channel();
    let _a = acquire_with(
        client_at(to_a.addr),
        "default",
        "our-lock",
        "replica-a".into(),
        b_timing,
        move |lost| {
            let _ = a_lost_tx.send((lost, Instant::now()));
        },
    )
    .await
    .expect("A leads");
    to_a.cut.send_replace(true);
    let _b = acquire_with(
        sim.client().await,
        "default",
        "our-lock",
        "replica-b".into(),
        b_timing,
        |_| {},
    )
    .await
    .expect("B takes the expired lease");
    let b_took_at = Instant::now();
    let (why, a_stopped_at) = tokio::time::timeout(Duration::from_secs(1), a_lost)
        .await
        .expect("A had already stopped")
        .expect("told");
    assert_eq!(why, LeadershipLost::RenewDeadline(b_timing.renew_deadline));
    assert!(a_stopped_at < b_took_at, "A stopped before B took over");
}
