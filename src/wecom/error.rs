//! WeCom error codes, their classification, and the one error type of the client.
//!
//! Decisions are made on `errcode`, never on `errmsg` (WECOM-NOTES "Tokens and errors").
//! No variant ever carries a secret or an access token: URLs are scrubbed by
//! [`crate::wecom::redact`] before they are stored here.

use std::fmt;

/// The WeCom APIs this project calls. `name()` is the last path segment, the key the
/// simulator's `/_sim/calls` counts under and the `api` label of metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    GetToken,
    /// A1
    ListLink,
    /// A2
    GetLink,
    /// A3
    CreateLink,
    /// A4
    UpdateLink,
    /// A5
    DeleteLink,
    /// A6
    Customer,
    /// A7
    Statistic,
    /// A8
    Quota,
    /// A third-party suite's token (`suite_access_token`), from the suite secret and ticket.
    GetSuiteToken,
    /// A suite exchanges a `create_auth` AuthCode for the corp's permanent code (v2).
    GetPermanentCode,
    /// A suite's access token for one authorised corp, from its permanent code.
    GetCorpToken,
}

impl Api {
    pub const ALL: [Api; 12] = [
        Api::GetToken,
        Api::ListLink,
        Api::GetLink,
        Api::CreateLink,
        Api::UpdateLink,
        Api::DeleteLink,
        Api::Customer,
        Api::Statistic,
        Api::Quota,
        Api::GetSuiteToken,
        Api::GetPermanentCode,
        Api::GetCorpToken,
    ];

    /// Path below the base URL, without the query string.
    pub fn path(self) -> &'static str {
        match self {
            Api::GetToken => "/cgi-bin/gettoken",
            Api::ListLink => "/cgi-bin/externalcontact/customer_acquisition/list_link",
            Api::GetLink => "/cgi-bin/externalcontact/customer_acquisition/get",
            Api::CreateLink => "/cgi-bin/externalcontact/customer_acquisition/create_link",
            Api::UpdateLink => "/cgi-bin/externalcontact/customer_acquisition/update_link",
            Api::DeleteLink => "/cgi-bin/externalcontact/customer_acquisition/delete_link",
            Api::Customer => "/cgi-bin/externalcontact/customer_acquisition/customer",
            Api::Statistic => "/cgi-bin/externalcontact/customer_acquisition/statistic",
            Api::Quota => "/cgi-bin/externalcontact/customer_acquisition_quota",
            Api::GetSuiteToken => "/cgi-bin/service/get_suite_token",
            Api::GetPermanentCode => "/cgi-bin/service/v2/get_permanent_code",
            Api::GetCorpToken => "/cgi-bin/service/get_corp_token",
        }
    }

    /// gettoken and A8 are GETs (R3, G2); everything else is a POST with a JSON body.
    pub fn is_get(self) -> bool {
        matches!(self, Api::GetToken | Api::Quota)
    }

    /// The last path segment.
    pub fn name(self) -> &'static str {
        self.path().rsplit('/').next().unwrap_or_default()
    }

    pub fn from_name(name: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|api| api.name() == name)
    }

    /// A3, A4 and A5 change WeCom; the rest only read.
    pub fn is_mutating(self) -> bool {
        matches!(self, Api::CreateLink | Api::UpdateLink | Api::DeleteLink)
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error codes the project decides on.
pub mod codes {
    pub const SYSTEM_BUSY: i64 = -1;
    pub const OK: i64 = 0;
    pub const DATA_VERSION_CONFLICT: i64 = 6000;
    pub const INVALID_CREDENTIAL: i64 = 40001;
    pub const INVALID_ACCESS_TOKEN: i64 = 40014;
    pub const INVALID_CORPID: i64 = 40013;
    pub const INVALID_PARAMETER_VALUE: i64 = 40035;
    pub const INVALID_PARAMETER: i64 = 40058;
    pub const MISSING_ACCESS_TOKEN: i64 = 41001;
    pub const ACCESS_TOKEN_EXPIRED: i64 = 42001;
    pub const FREQUENCY_LIMIT: i64 = 45009;
    pub const CONCURRENCY_LIMIT: i64 = 45033;
    pub const NO_PERMISSION: i64 = 48002;
    pub const OUTSIDE_VISIBLE_RANGE: i64 = 60011;
    pub const IP_NOT_TRUSTED: i64 = 60020;
    pub const NO_EXTERNAL_CONTACT: i64 = 84061;
    pub const INVALID_LINK_ID: i64 = 301002;
    /// A `create_auth` AuthCode that is unknown, used already or past its 10 minutes.
    pub const INVALID_AUTH_CODE: i64 = 40078;
    /// get_suite_token with a suite secret that does not match the suite id.
    pub const INVALID_SUITE_SECRET: i64 = 40080;
    /// A suite_access_token WeCom does not know (or revoked).
    pub const INVALID_SUITE_TOKEN: i64 = 40082;
    /// get_suite_token with an unknown suite id.
    pub const INVALID_SUITE_ID: i64 = 40083;
    /// A permanent code WeCom does not know: never issued, or the corp cancelled.
    pub const INVALID_PERMANENT_CODE: i64 = 40084;
    /// A suite_ticket that is not the suite's, or older than 30 minutes.
    pub const INVALID_SUITE_TICKET: i64 = 40085;
    /// A suite_access_token past its expires_in.
    pub const SUITE_TOKEN_EXPIRED: i64 = 42009;
}

/// What a caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Back off with jitter and try again (-1, 6000, 45009, 45033, timeouts, 5xx, I/O).
    Retryable,
    /// The access token was revoked or expired: drop it, refresh, retry once (40014, 42001).
    TokenInvalid,
    /// Nothing will change until the spec or the configuration does.
    Terminal,
}

/// Classifies a WeCom errcode. Unknown codes are terminal: hammering WeCom with a request
/// it refuses for a reason we do not know only gets the caller's IP blocked.
pub fn classify(errcode: i64) -> ErrorClass {
    use codes::*;
    match errcode {
        SYSTEM_BUSY | DATA_VERSION_CONFLICT | FREQUENCY_LIMIT | CONCURRENCY_LIMIT => {
            ErrorClass::Retryable
        }
        INVALID_ACCESS_TOKEN | ACCESS_TOKEN_EXPIRED => ErrorClass::TokenInvalid,
        _ => ErrorClass::Terminal,
    }
}

/// A short, stable, human reason for an errcode: the text users see in conditions.
pub fn describe(errcode: i64) -> &'static str {
    use codes::*;
    match errcode {
        SYSTEM_BUSY => "WeCom is busy",
        DATA_VERSION_CONFLICT => "data version conflict",
        INVALID_CREDENTIAL => "the app secret was refused (check secretRef and corpId)",
        INVALID_CORPID => "invalid corpId",
        INVALID_ACCESS_TOKEN => "access token invalid",
        INVALID_PARAMETER_VALUE => "invalid parameter value",
        INVALID_PARAMETER => {
            "invalid parameter (link name 1-30 characters, range not empty and at most 500 people, statistics window at most 30 days)"
        }
        41000..=41999 => "a required parameter is missing",
        ACCESS_TOKEN_EXPIRED => "access token expired",
        FREQUENCY_LIMIT => "API frequency limit reached",
        CONCURRENCY_LIMIT => "API concurrency limit reached",
        NO_PERMISSION => {
            "no permission: grant the app the customer-acquisition (获客助手) permission; the 客户联系 system-app secret is not accepted"
        }
        OUTSIDE_VISIBLE_RANGE => "a member or department is outside the app's visible range",
        IP_NOT_TRUSTED => "the caller's IP is not in the app's trusted IP list",
        NO_EXTERNAL_CONTACT => "no external-contact relationship",
        INVALID_LINK_ID => "invalid or unknown link id",
        INVALID_AUTH_CODE => "the AuthCode is unknown, used already or older than 10 minutes",
        INVALID_SUITE_SECRET => "the suite secret was refused (check the WeComSuite's Secret)",
        INVALID_SUITE_TOKEN => "suite access token invalid",
        INVALID_SUITE_ID => "unknown suite id",
        INVALID_PERMANENT_CODE => {
            "the permanent code was refused: the corp cancelled the authorisation, or the code was reset"
        }
        INVALID_SUITE_TICKET => {
            "the suite ticket was refused (older than 30 minutes, or another suite's): wait for WeCom's next push, or refresh the ticket in the WeCom admin console"
        }
        SUITE_TOKEN_EXPIRED => "suite access token expired",
        _ => "unrecognised WeCom error",
    }
}

/// The error of every WeCom call. Display says which API failed and why; none of the
/// variants holds a secret, a token or an unscrubbed URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeComError {
    /// WeCom answered with a non-zero errcode.
    #[error("WeCom {api} failed: errcode {errcode} ({}): {errmsg}", describe(*errcode))]
    Api {
        api: Api,
        errcode: i64,
        errmsg: String,
    },
    /// HTTP status other than 200; the body is not read. `content_type` as in
    /// [`WeComError::NotJson`] (`content type "text/html"` says a proxy answered).
    #[error("WeCom {api} answered HTTP {status} with {content_type}")]
    Http {
        api: Api,
        status: u16,
        content_type: String,
    },
    /// Connection refused, reset, DNS, TLS...
    #[error("WeCom {api} request failed: {message}")]
    Transport { api: Api, message: String },
    /// No answer within the request timeout.
    #[error("WeCom {api} timed out")]
    Timeout { api: Api },
    /// The answer was JSON but not what WeCom documents: a wrong type, a missing field, or
    /// a number out of range. `path` names the field (`link.create_time`, `.` for the
    /// whole answer); `message` says what was wrong, without a position in the text, so
    /// the same bad answer always gives the same message.
    #[error("WeCom {api} answer is malformed at {path}: {message}")]
    Decode {
        api: Api,
        path: String,
        message: String,
    },
    /// The answer was longer than the client reads (`limit` bytes); reading stopped there.
    #[error(
        "WeCom {api} answer is larger than {} MiB; stopped reading it (is apiBaseUrl WeCom's API?)",
        limit / (1024 * 1024)
    )]
    TooLarge { api: Api, limit: usize },
    /// The answer was not JSON at all: an HTML page from a proxy, a login portal, plain text.
    #[error(
        "WeCom {api} answered HTTP {status} with {content_type}, not JSON (a proxy in the way, or apiBaseUrl is not WeCom's API?)"
    )]
    NotJson {
        api: Api,
        status: u16,
        /// The Content-Type header as sent (printable ASCII, shortened), or `no content type`.
        content_type: String,
    },
    /// A listing (A1, A6) that does not end: a cursor sent twice, more pages than the
    /// data can have, or a page longer than asked for.
    #[error("WeCom {api} listing stopped: {message}")]
    Pagination { api: Api, message: String },
    /// The request was never sent: the request budget had no room for it before the
    /// deadline its caller set (a create must reach WeCom soon after its marker).
    #[error("WeCom {api} was not sent: the request budget had no room before its deadline")]
    NotSent { api: Api },
    /// The request was not sent: the corp's scheduler has no room for it in its class now
    /// (or WeCom's rate-limit breaker for the API is open, `blocked`); come back after
    /// `retry_after_ms`.
    #[error("{}", deferred_message(*api, *retry_after_ms, *blocked))]
    Deferred {
        api: Api,
        retry_after_ms: u64,
        blocked: bool,
    },
    /// A suite's token cannot be asked for: no suite_ticket has arrived on the suite's
    /// callback yet (WeCom pushes one every 10 minutes).
    #[error(
        "WeCom {api} was not sent: suite {suite_id} has received no suite_ticket yet; WeCom pushes one every 10 minutes to the suite's callback URL (or refresh it in the WeCom admin console)"
    )]
    NoSuiteTicket { api: Api, suite_id: String },
    /// Retries ran out on a retryable error; `last` is the final one.
    #[error("WeCom {api} still failing after {attempts} attempts: {last}")]
    RetriesExhausted {
        api: Api,
        attempts: u32,
        last: Box<WeComError>,
    },
}

fn deferred_message(api: Api, retry_after_ms: u64, blocked: bool) -> String {
    let secs = retry_after_ms.div_ceil(1000);
    if blocked {
        format!(
            "WeCom {api} was not sent: WeCom's rate limit for this API was reached, so no call goes out for {secs} s"
        )
    } else {
        format!("WeCom {api} was not sent yet: the corp's request budget has room in {secs} s")
    }
}

impl WeComError {
    /// The error with `scrub` applied to every text the server chose (an errmsg, a quoted
    /// wrong value, a content type), so no credential it echoed can reach a log or status.
    pub fn scrub_server_text(self, scrub: impl Fn(&str) -> String) -> WeComError {
        match self {
            WeComError::Api {
                api,
                errcode,
                errmsg,
            } => WeComError::Api {
                api,
                errcode,
                errmsg: scrub(&errmsg),
            },
            WeComError::Decode { api, path, message } => WeComError::Decode {
                api,
                path: scrub(&path),
                message: scrub(&message),
            },
            WeComError::NotJson {
                api,
                status,
                content_type,
            } => WeComError::NotJson {
                api,
                status,
                content_type: scrub(&content_type),
            },
            other => other,
        }
    }

    /// A request the corp's scheduler did not send now.
    pub fn deferred(api: Api, deferral: super::scheduler::Deferral) -> Self {
        WeComError::Deferred {
            api,
            retry_after_ms: u64::try_from(deferral.retry_after.as_millis()).unwrap_or(u64::MAX),
            blocked: deferral.blocked,
        }
    }

    /// When a deferred request may be sent (`None` for every other error).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            WeComError::Deferred { retry_after_ms, .. } => {
                Some(std::time::Duration::from_millis(*retry_after_ms))
            }
            WeComError::RetriesExhausted { last, .. } => last.retry_after(),
            _ => None,
        }
    }

    pub fn api(&self) -> Api {
        match self {
            WeComError::Api { api, .. }
            | WeComError::Http { api, .. }
            | WeComError::Transport { api, .. }
            | WeComError::Timeout { api }
            | WeComError::Decode { api, .. }
            | WeComError::TooLarge { api, .. }
            | WeComError::NotJson { api, .. }
            | WeComError::Pagination { api, .. }
            | WeComError::NotSent { api }
            | WeComError::Deferred { api, .. }
            | WeComError::NoSuiteTicket { api, .. }
            | WeComError::RetriesExhausted { api, .. } => *api,
        }
    }

    /// The WeCom errcode when WeCom gave one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            WeComError::Api { errcode, .. } => Some(*errcode),
            WeComError::RetriesExhausted { last, .. } => last.errcode(),
            _ => None,
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            WeComError::Api { errcode, .. } => classify(*errcode),
            WeComError::Http { status, .. } if *status >= 500 || *status == 429 => {
                ErrorClass::Retryable
            }
            WeComError::Http { .. } => ErrorClass::Terminal,
            WeComError::Transport { .. } | WeComError::Timeout { .. } => ErrorClass::Retryable,
            // Nothing reached WeCom; a later pass sends it when the budget has room.
            WeComError::NotSent { .. } | WeComError::Deferred { .. } => ErrorClass::Retryable,
            // Comes with the next push; asking again at once would find none either.
            WeComError::NoSuiteTicket { .. } => ErrorClass::Terminal,
            // The server at apiBaseUrl misbehaves: asking again at once would get the same
            // answer. Terminal here; the reconcilers come back on their own cadence.
            WeComError::Decode { .. }
            | WeComError::TooLarge { .. }
            | WeComError::NotJson { .. }
            | WeComError::Pagination { .. } => ErrorClass::Terminal,
            // The retry loop gave up; the caller may still back off and try on a later pass.
            WeComError::RetriesExhausted { .. } => ErrorClass::Retryable,
        }
    }

    /// True when WeCom certainly did not act on the request: it answered with an errcode,
    /// or the request was never sent.
    pub fn certainly_not_acted_on(&self) -> bool {
        match self {
            WeComError::NotSent { .. }
            | WeComError::Deferred { .. }
            | WeComError::NoSuiteTicket { .. } => true,
            WeComError::RetriesExhausted { last, .. } => last.certainly_not_acted_on(),
            other => other.errcode().is_some(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// True when the server at apiBaseUrl answered something WeCom never sends (a
    /// malformed, oversized or non-JSON answer, or a listing that does not end): the
    /// configuration or the network path is wrong, not the request.
    pub fn is_bad_answer(&self) -> bool {
        match self {
            WeComError::Decode { .. }
            | WeComError::TooLarge { .. }
            | WeComError::NotJson { .. }
            | WeComError::Pagination { .. } => true,
            WeComError::RetriesExhausted { last, .. } => last.is_bad_answer(),
            _ => false,
        }
    }

    /// A message that stays the same from one failure to the next: the API, the errcode
    /// and our description of it, never WeCom's errmsg (it carries request ids that change
    /// on every call, so a status condition built from it would be rewritten each time).
    /// At most [`SUMMARY_MAX_CHARS`] characters: a hostile answer cannot flood a condition.
    pub fn summary(&self) -> String {
        let text = match self.errcode() {
            Some(code) => format!(
                "WeCom {} failed: errcode {code} ({})",
                self.api(),
                describe(code)
            ),
            None => crate::wecom::redact::scrub(&self.to_string()),
        };
        shorten(&text, SUMMARY_MAX_CHARS)
    }

    /// A label for metrics: the errcode, or the kind of failure.
    pub fn metric_label(&self) -> String {
        match self {
            WeComError::Api { errcode, .. } => errcode.to_string(),
            WeComError::Http { status, .. } => format!("http_{status}"),
            WeComError::Transport { .. } => "transport".into(),
            WeComError::Timeout { .. } => "timeout".into(),
            WeComError::Decode { .. } => "decode".into(),
            WeComError::TooLarge { .. } => "too_large".into(),
            WeComError::NotJson { .. } => "not_json".into(),
            WeComError::Pagination { .. } => "pagination".into(),
            WeComError::NotSent { .. } => "not_sent".into(),
            WeComError::Deferred { blocked: true, .. } => "blocked".into(),
            WeComError::Deferred { .. } => "deferred".into(),
            WeComError::NoSuiteTicket { .. } => "no_suite_ticket".into(),
            WeComError::RetriesExhausted { last, .. } => last.metric_label(),
        }
    }
}

/// The longest [`WeComError::summary`], in characters.
pub const SUMMARY_MAX_CHARS: usize = 300;

/// `text` cut to `max` characters, with `...` when cut.
pub fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_notes() {
        for code in [-1, 6000, 45009, 45033] {
            assert_eq!(classify(code), ErrorClass::Retryable, "{code}");
        }
        for code in [40014, 42001] {
            assert_eq!(classify(code), ErrorClass::TokenInvalid, "{code}");
        }
        for code in [
            40058, 40035, 41001, 41017, 48002, 60011, 60020, 84061, 301002, 40001, 99999,
        ] {
            assert_eq!(classify(code), ErrorClass::Terminal, "{code}");
        }
    }

    #[test]
    fn http_and_transport_errors_are_classified() {
        let api = Api::GetLink;
        let http = |status| WeComError::Http {
            api,
            status,
            content_type: "no content type".into(),
        };
        assert!(http(502).is_retryable());
        assert!(http(429).is_retryable());
        assert!(!http(404).is_retryable());
        assert!(WeComError::Timeout { api }.is_retryable());
        assert!(
            WeComError::Transport {
                api,
                message: "reset".into()
            }
            .is_retryable()
        );
    }

    #[test]
    fn api_names_are_the_last_path_segment() {
        assert_eq!(Api::Quota.name(), "customer_acquisition_quota");
        assert_eq!(Api::GetLink.name(), "get");
        assert_eq!(Api::from_name("create_link"), Some(Api::CreateLink));
        assert!(Api::Quota.is_get() && Api::GetToken.is_get() && !Api::ListLink.is_get());
    }

    #[test]
    fn summary_is_stable_and_leaves_errmsg_out() {
        let e = |errmsg: &str| WeComError::Api {
            api: Api::Quota,
            errcode: 45009,
            errmsg: errmsg.into(),
        };
        assert_eq!(e("hint: [1]").summary(), e("hint: [2]").summary());
        assert_eq!(
            e("x").summary(),
            "WeCom customer_acquisition_quota failed: errcode 45009 (API frequency limit reached)"
        );
    }

    #[test]
    fn display_names_api_and_code() {
        let e = WeComError::Api {
            api: Api::CreateLink,
            errcode: 40058,
            errmsg: "invalid".into(),
        };
        let s = e.to_string();
        assert!(s.contains("create_link") && s.contains("40058"), "{s}");
    }
}
