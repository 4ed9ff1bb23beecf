//! `wecom-acq simulate`: runs the WeCom simulator in the foreground until Ctrl-C or
//! SIGTERM, after printing what a user needs to point the controller at it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{DEFAULT_CORP_ID, DEFAULT_SECRET, OrgChart, OrgSpec, SimCallback, SimConfig};

/// Flags of `wecom-acq simulate`.
#[derive(Args, Clone)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8900")]
    pub listen: SocketAddr,
    /// The simulated corp id.
    #[arg(long, default_value = DEFAULT_CORP_ID)]
    pub corp_id: String,
    /// The app secret gettoken accepts [default: the demo value "sim-secret", which
    /// examples/secret.yaml uses].
    #[arg(long, env = "WECOM_SIM_SECRET", default_value = DEFAULT_SECRET, hide_default_value = true, hide_env_values = true)]
    pub secret: String,
    /// Where to push callbacks (e.g. the controller's /callback/{namespace}/{app}).
    #[arg(long, requires_all = ["callback_token", "callback_aes_key"])]
    pub callback_url: Option<String>,
    /// The callback Token.
    #[arg(long, env = "WECOM_CALLBACK_TOKEN", hide_env_values = true)]
    pub callback_token: Option<String>,
    /// The callback EncodingAESKey (43 characters).
    #[arg(long, env = "WECOM_CALLBACK_AES_KEY", hide_env_values = true)]
    pub callback_aes_key: Option<String>,
    /// Push third-party envelopes (SuiteId/InfoType) for this suite instead of self-built.
    #[arg(long, requires = "callback_url")]
    pub third_party_suite_id: Option<String>,
    /// Access token lifetime in seconds.
    #[arg(long = "token-ttl", value_name = "SECS", default_value_t = 7200)]
    pub token_ttl_secs: u64,
    /// Answer 45009 past this many calls to one API per minute (off by default).
    #[arg(long, value_name = "N")]
    pub rate_limit_per_minute: Option<u32>,
    /// Answer 45009 past this many calls to one API per hour, blocking it for an hour
    /// (off by default; WeCom's limit is 150,000).
    #[arg(long, value_name = "N")]
    pub rate_limit_per_hour: Option<u32>,
    /// Replace the built-in org chart with a JSON file shaped like the body of
    /// PUT /_sim/org: {"departments":[{"id":2,"parent_id":1,"users":["u1"]}],"users":["x"]}.
    #[arg(long, value_name = "PATH")]
    pub org_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for SimulateArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulateArgs")
            .field("listen", &self.listen)
            .field("corp_id", &self.corp_id)
            .field("callback_url", &self.callback_url)
            .field("third_party_suite_id", &self.third_party_suite_id)
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("rate_limit_per_hour", &self.rate_limit_per_hour)
            .field("org_file", &self.org_file)
            .finish_non_exhaustive()
    }
}

impl SimulateArgs {
    /// The simulator configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<SimConfig> {
        if self.token_ttl_secs == 0 {
            anyhow::bail!("--token-ttl must be at least 1 second");
        }
        let callback = match &self.callback_url {
            None => None,
            Some(url) => Some(SimCallback {
                url: url.clone(),
                token: self
                    .callback_token
                    .clone()
                    .context("--callback-url needs --callback-token")?,
                aes_key: self
                    .callback_aes_key
                    .clone()
                    .context("--callback-url needs --callback-aes-key")?,
                third_party_suite_id: self.third_party_suite_id.clone(),
            }),
        };
        let org = match &self.org_file {
            None => OrgChart::builtin(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the org chart {}", path.display()))?;
                let spec: OrgSpec = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{} is not an org chart like the body of PUT /_sim/org",
                        path.display()
                    )
                })?;
                OrgChart::from_spec(spec).map_err(|e| {
                    anyhow::anyhow!("the org chart {} is invalid: {e}", path.display())
                })?
            }
        };
        Ok(SimConfig {
            org,
            corp_id: self.corp_id.clone(),
            secret: self.secret.clone(),
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            rate_limit_per_minute: self.rate_limit_per_minute,
            rate_limit_per_hour: self.rate_limit_per_hour,
            callback,
            ..SimConfig::default()
        })
    }
}

/// Runs the simulator until Ctrl-C or SIGTERM.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let banner = banner(&config, &args);
    let handle = super::spawn(config, args.listen).await?;
    eprintln!("WeCom simulator listening on {}", handle.base_url());
    eprint!("{banner}");
    wait_for_stop().await?;
    eprintln!("stopping the WeCom simulator");
    handle.shutdown().await;
    Ok(())
}

fn banner(config: &SimConfig, args: &SimulateArgs) -> String {
    let mut out = String::new();
    let secret_note = if args.secret == DEFAULT_SECRET {
        "configured (the default demo value, not shown; see --help)"
    } else {
        "configured (not shown)"
    };
    out.push_str(&format!(
        "  corp id: {}\n  secret: {secret_note}\n  token TTL: {} s\n",
        config.corp_id,
        config.token_ttl.as_secs()
    ));
    match config.rate_limit_per_minute {
        Some(n) => out.push_str(&format!(
            "  frequency limit: {n} calls per API per minute\n"
        )),
        None => out.push_str("  frequency limit: off\n"),
    }
    if let Some(n) = config.rate_limit_per_hour {
        out.push_str(&format!("  hourly limit: {n} calls per API per hour\n"));
    }
    match &config.callback {
        Some(cb) => out.push_str(&format!(
            "  callbacks: {} ({} envelope)\n",
            crate::wecom::redact::scrub(&cb.url),
            if cb.third_party_suite_id.is_some() {
                "third-party"
            } else {
                "self-built"
            }
        )),
        None => out.push_str("  callbacks: off (--callback-url to enable)\n"),
    }
    out.push_str(&org_summary(&config.org));
    out.push_str("  quota:\n");
    for b in &config.quota {
        out.push_str(&format!(
            "    {} left, expires {}\n",
            b.balance,
            jiff::Timestamp::from_second(b.expire_date)
                .map(|t| t
                    .to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(8)))
                    .strftime("%Y-%m-%d %H:%M China time")
                    .to_string())
                .unwrap_or_else(|_| b.expire_date.to_string())
        ));
    }
    out.push_str("  admin API: /_sim/state, /_sim/calls, /_sim/org, /_sim/quota, /_sim/links/{id}/customers, /_sim/faults, /_sim/clock\n");
    out
}

fn org_summary(org: &OrgChart) -> String {
    let mut out = String::from("  org chart (userids for a link's range):\n");
    for d in org.departments() {
        let shown: Vec<&str> = d.users.iter().take(6).map(String::as_str).collect();
        let more = d.users.len().saturating_sub(shown.len());
        out.push_str(&format!(
            "    department {} {:?} (parent {}): {}{}\n",
            d.id,
            d.name,
            d.parent_id,
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    out
}

async fn wait_for_stop() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: SimulateArgs,
    }

    #[test]
    fn defaults_match_the_documentation() {
        let w = Wrap::try_parse_from(["x"]).unwrap();
        let c = w.args.config().unwrap();
        assert_eq!(w.args.listen.to_string(), "127.0.0.1:8900");
        assert_eq!(c.corp_id, "wwsimcorp");
        assert_eq!(c.token_ttl, Duration::from_secs(7200));
        assert!(c.callback.is_none());
    }

    #[test]
    fn banner_never_shows_a_custom_secret() {
        let w = Wrap::try_parse_from(["x", "--secret", "TOPSECRET123"]).unwrap();
        let c = w.args.config().unwrap();
        let text = banner(&c, &w.args);
        assert!(!text.contains("TOPSECRET123"), "{text}");
        assert!(text.contains("zhangsan"));
        assert!(!format!("{:?} {:?}", w.args, c).contains("TOPSECRET123"));
    }

    #[test]
    fn org_file_replaces_the_chart_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("org.json");
        std::fs::write(
            &good,
            r#"{"departments":[{"id":2,"users":["a","b"]}],"users":["c"]}"#,
        )
        .unwrap();
        let w = Wrap::try_parse_from(["x", "--org-file", good.to_str().unwrap()]).unwrap();
        let org = w.args.config().unwrap().org;
        assert_eq!(org.user_count(), 3);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"departments":[{"id":2,"parent_id":7}]}"#).unwrap();
        let w = Wrap::try_parse_from(["x", "--org-file", bad.to_str().unwrap()]).unwrap();
        let err = format!("{:#}", w.args.config().unwrap_err());
        assert!(
            err.contains("bad.json") && err.contains("parent 7"),
            "{err}"
        );
    }

    #[test]
    fn callback_url_requires_token_and_key() {
        assert!(Wrap::try_parse_from(["x", "--callback-url", "http://h/cb"]).is_err());
    }
}
