//! One source for the defaults a user can change: the WeCom client's, the reconcilers'
//! cadence and the `wecom-acq run` flags (their `--help` shows these values). The chart's
//! `values.yaml` restates them for Helm; `tests/chart.rs` checks it against this module.

use std::time::Duration;

/// A duration default, with the text the CLI shows in `--help` and parses like a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationDefault {
    pub value: Duration,
    /// The same duration as `humantime` reads it (`5m`, `1h`): a unit test checks both agree.
    pub text: &'static str,
}

impl DurationDefault {
    const fn secs(secs: u64, text: &'static str) -> Self {
        DurationDefault {
            value: Duration::from_secs(secs),
            text,
        }
    }
}

// The WeCom client.

/// WeCom's official API host: the default of `--allowed-api-hosts`, and the only host
/// WeCom itself uses.
pub const WECOM_API_HOST: &str = "qyapi.weixin.qq.com";
/// WeCom's public API endpoint (a WeComApp without `apiBaseUrl`).
pub const WECOM_API_BASE_URL: &str = "https://qyapi.weixin.qq.com";
/// Requests per minute of a WeComApp without a budget: well under the published 10,000
/// calls per minute and corp, leaving room for other systems of the same corp.
pub const REQUESTS_PER_MINUTE: u32 = 600;
/// The limit of one WeCom request. An A3 that was interrupted may have been acted on up to
/// this long after its create-pending marker was written.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

// The reconcilers' cadence (`wecom-acq run` flags and the chart's `intervals`).

/// Observe every link (A2) at least this often (`--resync-interval`).
pub const RESYNC_INTERVAL: DurationDefault = DurationDefault::secs(300, "5m");
/// Recount customers (A6) this often (`--customers-interval`).
pub const CUSTOMERS_INTERVAL: DurationDefault = DurationDefault::secs(1800, "30m");
/// Refresh statistics (A7) this often (`--statistics-interval`).
pub const STATISTICS_INTERVAL: DurationDefault = DurationDefault::secs(3600, "1h");
/// Refresh each app's quota (A8) this often (`--quota-interval`).
pub const QUOTA_INTERVAL: DurationDefault = DurationDefault::secs(600, "10m");
/// After an interrupted create found nothing, wait this long before creating again.
pub const CREATE_GRACE: Duration = Duration::from_secs(5);
/// Statistics window in days (WeCom's most is 30).
pub const STATISTICS_DAYS: u32 = 30;

// `wecom-acq run`.

/// Log level or filter (`--log-level`).
pub const LOG_LEVEL: &str = "info";
/// Address of /healthz, /readyz and /metrics (`--metrics-addr`; the chart's `metrics.port`).
pub const METRICS_ADDR: &str = "0.0.0.0:8080";
/// Address of the callback endpoint (`--callback-addr`; the chart's `callback.port`).
pub const CALLBACK_ADDR: &str = "0.0.0.0:8081";
/// Name of the leader-election Lease (`--lease-name`).
pub const LEASE_NAME: &str = "wecom-acquisition-controller";
/// Link passes running at once (`--max-concurrent-reconciles`).
pub const MAX_CONCURRENT_RECONCILES: usize = 64;
/// Window for the `timestamp` of a callback (`--callback-max-skew`).
pub const CALLBACK_MAX_SKEW: DurationDefault = DurationDefault::secs(300, "5m");
/// How long a callback's body may take to arrive once its head is in
/// (`--callback-body-timeout`): a callback's 2 KiB arrive in one packet.
pub const CALLBACK_BODY_TIMEOUT: DurationDefault = DurationDefault::secs(10, "10s");
/// Cap on the connections one port serves at once (`--callback-max-connections`).
/// WeCom delivers callbacks over a handful of connections; each open connection costs a
/// task and a few KiB, so a thousand is far above need and far below harm.
pub const CALLBACK_MAX_CONNECTIONS: usize = 1024;

/// Every duration default, by the flag that takes it.
pub const DURATIONS: [(&str, DurationDefault); 6] = [
    ("--resync-interval", RESYNC_INTERVAL),
    ("--customers-interval", CUSTOMERS_INTERVAL),
    ("--statistics-interval", STATISTICS_INTERVAL),
    ("--quota-interval", QUOTA_INTERVAL),
    ("--callback-max-skew", CALLBACK_MAX_SKEW),
    ("--callback-body-timeout", CALLBACK_BODY_TIMEOUT),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_of_each_duration_default_reads_as_its_value() {
        for (flag, default) in DURATIONS {
            assert_eq!(
                humantime::parse_duration(default.text).ok(),
                Some(default.value),
                "{flag}"
            );
        }
    }

    #[test]
    fn the_base_url_names_the_official_host_and_the_addresses_parse() {
        assert_eq!(WECOM_API_BASE_URL, format!("https://{WECOM_API_HOST}"));
        for addr in [METRICS_ADDR, CALLBACK_ADDR] {
            assert!(addr.parse::<std::net::SocketAddr>().is_ok(), "{addr}");
        }
    }
}
