//! Which hosts a WeComApp's `spec.apiBaseUrl` may name (`wecom-acq run
//! --allowed-api-hosts`), so the field is not a way into the cluster's network: the
//! controller sends the app secret and tokens to that host, and whoever can write a
//! WeComApp chooses it.
//!
//! A rule is `host` (any port) or `host:port` (that port only); IPv6 addresses in brackets
//! (`[::1]`, `[::1]:8900`). Hosts compare as the URL parser normalises them (lowercase,
//! IDNA), so `QYAPI.weixin.qq.com` in a spec is the same host as the rule.

use std::fmt;
use std::str::FromStr;

/// WeCom's official API host: the default, and the only host WeCom itself uses.
pub use crate::defaults::WECOM_API_HOST as OFFICIAL_API_HOST;

/// One `host` or `host:port` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostRule {
    /// As [`url::Host`] prints it (IPv6 in brackets).
    host: String,
    port: Option<u16>,
}

/// The hosts WeComApps may name. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedApiHosts {
    rules: Vec<HostRule>,
}

impl Default for AllowedApiHosts {
    fn default() -> Self {
        Self {
            rules: vec![HostRule {
                host: OFFICIAL_API_HOST.into(),
                port: None,
            }],
        }
    }
}

/// A base URL whose host is not allowed: `host` is `host:port` as the URL names them
/// (no path, query or credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNotAllowed {
    pub host: String,
}

impl AllowedApiHosts {
    /// `127.0.0.1` on any port: the simulator of the demo and the tests.
    pub fn loopback() -> Self {
        Self {
            rules: vec![HostRule {
                host: "127.0.0.1".into(),
                port: None,
            }],
        }
    }

    /// `Ok` when `base_url` names an allowed host. A URL that does not parse is left to
    /// the client, which refuses it with its own error (the same parser), so nothing is
    /// ever sent to it either way.
    pub fn check(&self, base_url: &str) -> Result<(), HostNotAllowed> {
        let Ok(url) = url::Url::parse(base_url.trim()) else {
            return Ok(());
        };
        let Some(host) = url.host() else {
            return Ok(());
        };
        let host = host.to_string();
        let port = url.port_or_known_default();
        let allowed = self
            .rules
            .iter()
            .any(|rule| rule.host == host && rule.port.is_none_or(|p| Some(p) == port));
        if allowed {
            return Ok(());
        }
        Err(HostNotAllowed {
            host: match port {
                Some(port) => format!("{host}:{port}"),
                None => host,
            },
        })
    }
}

impl fmt::Display for AllowedApiHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&rule.host)?;
            if let Some(port) = rule.port {
                write!(f, ":{port}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for AllowedApiHosts {
    type Err = String;

    /// A comma-separated list of `host` and `host:port`; blanks around entries are
    /// ignored; at least one entry.
    fn from_str(list: &str) -> Result<Self, String> {
        let rules = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(parse_rule)
            .collect::<Result<Vec<_>, _>>()?;
        if rules.is_empty() {
            return Err(format!(
                "no host given: list the hosts WeComApps may name, e.g. {OFFICIAL_API_HOST}"
            ));
        }
        Ok(Self { rules })
    }
}

fn parse_rule(entry: &str) -> Result<HostRule, String> {
    let invalid = |why: &str| {
        format!(
            "{entry:?} is not a host or host:port ({why}); e.g. {OFFICIAL_API_HOST}, 127.0.0.1:8900, [::1]"
        )
    };
    if entry.contains("://") || entry.contains('/') || entry.contains('@') {
        return Err(invalid("give the host only, no scheme, path or user"));
    }
    let (host, port) = match entry.strip_prefix('[') {
        // [v6] or [v6]:port
        Some(rest) => {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 address needs its closing ]"))?;
            let port = match after {
                "" => None,
                after => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| invalid("only :port may follow ]"))?,
                ),
            };
            (format!("[{inner}]"), port)
        }
        None => match entry.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (entry.to_string(), None),
        },
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| invalid("the port is a number from 0 to 65535"))
        })
        .transpose()?;
    // The URL parser normalises the host exactly as it will normalise apiBaseUrl.
    let url = url::Url::parse(&format!("http://{host}/")).map_err(|e| invalid(&e.to_string()))?;
    let host = url
        .host()
        .map(|h| h.to_string())
        .ok_or_else(|| invalid("no host"))?;
    Ok(HostRule { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &str) -> AllowedApiHosts {
        list.parse().unwrap()
    }

    #[test]
    fn the_default_allows_only_wecom() {
        let default = AllowedApiHosts::default();
        assert_eq!(default.check("https://qyapi.weixin.qq.com"), Ok(()));
        assert_eq!(default.check("https://QYAPI.weixin.qq.com:443/"), Ok(()));
        assert_eq!(
            default.check("http://10.0.0.1:8080/x?y"),
            Err(HostNotAllowed {
                host: "10.0.0.1:8080".into()
            })
        );
        assert_eq!(
            default.check("https://user:pw@qyapi.weixin.qq.com.evil.example/"),
            Err(HostNotAllowed {
                host: "qyapi.weixin.qq.com.evil.example:443".into()
            })
        );
        assert_eq!(default.to_string(), OFFICIAL_API_HOST);
    }

    #[test]
    fn a_host_allows_any_port_and_host_port_one() {
        let allowed = hosts(" 127.0.0.1 , wecom-proxy.internal:8443,[::1]:9000");
        assert_eq!(allowed.check("http://127.0.0.1:8900"), Ok(()));
        assert_eq!(allowed.check("http://127.0.0.1"), Ok(()));
        assert_eq!(
            allowed.check("https://wecom-proxy.internal:8443/api"),
            Ok(())
        );
        assert!(allowed.check("https://wecom-proxy.internal").is_err());
        assert!(allowed.check("https://wecom-proxy.internal:8444").is_err());
        assert_eq!(allowed.check("http://[::1]:9000"), Ok(()));
        assert_eq!(
            allowed.check("http://[::1]:9001"),
            Err(HostNotAllowed {
                host: "[::1]:9001".into()
            })
        );
        assert!(allowed.check("http://localhost:8900").is_err());
        assert_eq!(
            allowed.to_string(),
            "127.0.0.1,wecom-proxy.internal:8443,[::1]:9000"
        );
    }

    #[test]
    fn a_port_of_the_scheme_default_counts_as_that_port() {
        let allowed = hosts("example.test:443");
        assert_eq!(allowed.check("https://example.test"), Ok(()));
        assert!(allowed.check("http://example.test").is_err());
    }

    #[test]
    fn bad_lists_are_refused_with_an_example() {
        for bad in [
            "",
            " , ",
            "https://qyapi.weixin.qq.com",
            "host:port",
            "host:70000",
            "[::1",
            "a/b",
        ] {
            let error = bad.parse::<AllowedApiHosts>().unwrap_err();
            assert!(error.contains(OFFICIAL_API_HOST), "{bad:?}: {error}");
        }
    }
}
