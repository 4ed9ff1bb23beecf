//! Turns what a WeCom API answered into a typed answer or a typed error: the size cap,
//! non-JSON answers (a proxy's HTML page), wrong types and missing fields named by their
//! path, the range of every number the controller uses, and the bounds of a listing.
//!
//! Whatever sits at a WeComApp's `apiBaseUrl` may answer anything, so nothing here trusts
//! the bytes. These are pure functions over bytes, so every decoder is fuzzed without a
//! server (tests/fuzz_wecom.rs).

use std::collections::HashSet;

use serde::de::DeserializeOwned;

use super::error::{Api, WeComError, shorten};
use super::types::{
    ApiStatus, CreateLinkResponse, Customer, CustomerResponse, GetLinkResponse, LinkInfo,
    ListLinkResponse, QuotaResponse, StatisticResponse, TokenResponse,
};

/// The largest answer read. WeCom's largest (an A6 page of 1000 customers) is about
/// 200 KiB; an answer 20 times that is not WeCom's.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// The largest count or quota figure accepted: 2^53 - 1, the largest integer every JSON
/// reader (kubectl, dashboards in JavaScript) holds exactly; far above any real count.
pub const MAX_FIGURE: u64 = (1 << 53) - 1;
/// The latest timestamp accepted: 9999-12-31T23:59:59Z, the last second RFC 3339 writes.
pub const MAX_UNIX_SECONDS: i64 = 253_402_300_799;
/// The longest token lifetime accepted. WeCom documents 7200 s; a day leaves room.
pub const MAX_EXPIRES_IN: u64 = 86_400;
/// The longest page cursor sent back. WeCom's are a few dozen bytes.
pub const MAX_CURSOR_BYTES: usize = 1024;
/// The longest access token used. WeCom asks callers to store 512 bytes; 4 times that.
pub const MAX_TOKEN_BYTES: usize = 2048;
/// The longest wrong value quoted in an error.
const MAX_PROBLEM_CHARS: usize = 160;

/// A decoded answer whose values cannot be right: `path` names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    pub message: String,
}

impl Invalid {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// An answer type of one API: decoded from JSON, then range-checked.
pub trait Answer: DeserializeOwned {
    /// The first value out of range, if any.
    fn check(&self) -> Result<(), Invalid> {
        Ok(())
    }
}

fn figure(path: &str, value: u64) -> Result<(), Invalid> {
    if value > MAX_FIGURE {
        return Err(Invalid::new(
            path,
            format!("{value} is out of range (at most {MAX_FIGURE})"),
        ));
    }
    Ok(())
}

fn timestamp(path: &str, value: i64) -> Result<(), Invalid> {
    if !(0..=MAX_UNIX_SECONDS).contains(&value) {
        return Err(Invalid::new(
            path,
            format!("{value} is not a Unix time between 1970 and 9999"),
        ));
    }
    Ok(())
}

impl Answer for ApiStatus {}

impl Answer for TokenResponse {
    fn check(&self) -> Result<(), Invalid> {
        if self.access_token.is_empty() {
            return Err(Invalid::new(
                "access_token",
                "errcode 0 without an access_token",
            ));
        }
        if self.access_token.len() > MAX_TOKEN_BYTES {
            return Err(Invalid::new(
                "access_token",
                format!(
                    "a token of {} bytes (at most {MAX_TOKEN_BYTES})",
                    self.access_token.len()
                ),
            ));
        }
        if self.expires_in > MAX_EXPIRES_IN {
            return Err(Invalid::new(
                "expires_in",
                format!(
                    "{} seconds is out of range (WeCom's tokens live 7200 s; at most {MAX_EXPIRES_IN})",
                    self.expires_in
                ),
            ));
        }
        Ok(())
    }
}

fn check_link(path: &str, link: &LinkInfo) -> Result<(), Invalid> {
    timestamp(&format!("{path}.create_time"), link.create_time)
}

impl Answer for ListLinkResponse {
    fn check(&self) -> Result<(), Invalid> {
        check_cursor(&self.next_cursor)
    }
}

impl Answer for GetLinkResponse {
    fn check(&self) -> Result<(), Invalid> {
        check_link("link", &self.link)
    }
}

impl Answer for CreateLinkResponse {
    fn check(&self) -> Result<(), Invalid> {
        if self.link.link_id.is_empty() {
            return Err(Invalid::new(
                "link.link_id",
                "success without a link_id; list the app's links (A1) to find the link before creating again",
            ));
        }
        check_link("link", &self.link)
    }
}

impl Answer for CustomerResponse {
    fn check(&self) -> Result<(), Invalid> {
        for (i, customer) in self.customer_list.iter().enumerate() {
            check_customer(i, customer)?;
        }
        check_cursor(&self.next_cursor)
    }
}

fn check_customer(i: usize, customer: &Customer) -> Result<(), Invalid> {
    match customer.add_time {
        Some(at) => timestamp(&format!("customer_list[{i}].add_time"), at),
        None => Ok(()),
    }
}

impl Answer for StatisticResponse {
    fn check(&self) -> Result<(), Invalid> {
        figure("click_link_customer_cnt", self.click_link_customer_cnt)?;
        figure("new_customer_cnt", self.new_customer_cnt)
    }
}

impl Answer for QuotaResponse {
    fn check(&self) -> Result<(), Invalid> {
        figure("total", self.total)?;
        figure("balance", self.balance)?;
        let mut sum: u64 = 0;
        for (i, batch) in self.quota_list.iter().enumerate() {
            timestamp(&format!("quota_list[{i}].expire_date"), batch.expire_date)?;
            figure(&format!("quota_list[{i}].balance"), batch.balance)?;
            // Each is below 2^53, so the sum cannot overflow before it is checked.
            sum = sum.saturating_add(batch.balance);
            figure("quota_list[].balance (sum)", sum)?;
        }
        Ok(())
    }
}

fn check_cursor(cursor: &str) -> Result<(), Invalid> {
    if cursor.len() > MAX_CURSOR_BYTES {
        return Err(Invalid::new(
            "next_cursor",
            format!(
                "a cursor of {} bytes (at most {MAX_CURSOR_BYTES})",
                cursor.len()
            ),
        ));
    }
    Ok(())
}

/// The `Content-Type` of `response` as it goes into an error.
pub fn response_content_type(response: &reqwest::Response) -> String {
    shown_content_type(
        response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
    )
}

/// The answer's `Content-Type` as it goes into an error: printable ASCII, shortened.
pub fn shown_content_type(header: Option<&[u8]>) -> String {
    match header {
        None => "no content type".into(),
        Some(raw) => {
            let text: String = raw
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        char::from(b)
                    } else {
                        '?'
                    }
                })
                .collect();
            format!("content type {:?}", shorten(&text, 64))
        }
    }
}

/// Decodes the body of an HTTP 200 answer of `api`: errcode first (a non-zero errcode is
/// [`WeComError::Api`], errmsg as sent: the caller scrubs it), then the answer `R` with
/// its range checks. `content_type` is [`shown_content_type`]'s text.
pub fn decode<R: Answer>(
    api: Api,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> Result<R, WeComError> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err(WeComError::TooLarge {
            api,
            limit: MAX_ANSWER_BYTES,
        });
    }
    // Every WeCom answer is a JSON object; anything else (HTML, text, nothing) is a
    // different server speaking.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(WeComError::NotJson {
            api,
            status,
            content_type: content_type.to_string(),
        });
    }
    let status_fields: ApiStatus = from_json(api, body)?;
    if status_fields.errcode != 0 {
        return Err(WeComError::Api {
            api,
            errcode: status_fields.errcode,
            errmsg: shorten(&status_fields.errmsg, 500),
        });
    }
    let answer: R = from_json(api, body)?;
    answer.check().map_err(|invalid| WeComError::Decode {
        api,
        path: invalid.path,
        message: invalid.message,
    })?;
    Ok(answer)
}

/// Deserialises `body`, naming the field that failed.
fn from_json<R: DeserializeOwned>(api: Api, body: &[u8]) -> Result<R, WeComError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let result: Result<R, _> = serde_path_to_error::deserialize(&mut deserializer);
    let answer = result.map_err(|e| WeComError::Decode {
        api,
        path: e.path().to_string(),
        message: problem(e.inner()),
    })?;
    deserializer.end().map_err(|e| WeComError::Decode {
        api,
        path: ".".into(),
        message: problem(&e),
    })?;
    Ok(answer)
}

/// serde_json's message without its position (" at line 1 column 57"), so one bad answer
/// always reads the same, and shortened: a wrong value is quoted, and it is not ours.
fn problem(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => &text,
    };
    shorten(text, MAX_PROBLEM_CHARS)
}

/// The bounds of one listing (A1 or A6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    /// The page size asked for; a longer page is an error.
    pub per_page: u32,
    /// More pages than this is an error, not an endless loop.
    pub max_pages: u32,
}

/// Where a listing is: the cursors seen so far, so a cursor sent twice (a loop of any
/// length) ends it with an error.
#[derive(Debug, Clone)]
pub struct PageGuard {
    api: Api,
    limits: PageLimits,
    pages: u32,
    seen: HashSet<String>,
}

impl PageGuard {
    pub fn new(api: Api, limits: PageLimits) -> Self {
        Self {
            api,
            limits,
            pages: 0,
            seen: HashSet::new(),
        }
    }

    /// After a page of `items` with `next_cursor`: `None` at the end, the cursor of the
    /// next page, or the error that stops the listing.
    pub fn after_page(
        &mut self,
        items: usize,
        next_cursor: &str,
    ) -> Result<Option<String>, WeComError> {
        self.pages = self.pages.saturating_add(1);
        let PageLimits {
            per_page,
            max_pages,
        } = self.limits;
        let error = |message: String| WeComError::Pagination {
            api: self.api,
            message,
        };
        if items > per_page as usize {
            return Err(error(format!(
                "a page of {items} items, more than the {per_page} asked for"
            )));
        }
        if next_cursor.is_empty() {
            return Ok(None);
        }
        if self.pages >= max_pages {
            return Err(error(format!(
                "more than {max_pages} pages of {per_page}, more than the data can have"
            )));
        }
        if !self.seen.insert(next_cursor.to_string()) {
            return Err(error(
                "a page cursor came back a second time; stopped to avoid an endless loop".into(),
            ));
        }
        Ok(Some(next_cursor.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_as<R: Answer>(api: Api, body: &str) -> Result<R, WeComError> {
        decode(
            api,
            200,
            "content type \"application/json\"",
            body.as_bytes(),
        )
    }

    #[test]
    fn an_overflowing_expires_in_is_refused_naming_the_field() {
        let error = decode_as::<TokenResponse>(
            Api::GetToken,
            r#"{"errcode":0,"access_token":"t","expires_in":18446744073709551615}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&error, WeComError::Decode { api: Api::GetToken, path, .. } if path == "expires_in"),
            "{error:?}"
        );
        let error = decode_as::<TokenResponse>(
            Api::GetToken,
            r#"{"errcode":0,"access_token":"t","expires_in":-1}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&error, WeComError::Decode { path, .. } if path == "expires_in"),
            "{error:?}"
        );
        let long = format!(
            r#"{{"errcode":0,"access_token":"{}","expires_in":7200}}"#,
            "t".repeat(MAX_TOKEN_BYTES + 1)
        );
        let error = decode_as::<TokenResponse>(Api::GetToken, &long).unwrap_err();
        assert!(
            matches!(&error, WeComError::Decode { path, message, .. }
                if path == "access_token" && !message.contains("ttt")),
            "{error:?}"
        );
    }

    #[test]
    fn wrong_types_name_the_api_and_the_path() {
        let error = decode_as::<GetLinkResponse>(
            Api::GetLink,
            r#"{"errcode":0,"link":{"link_name":"n","create_time":"yesterday"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            error,
            WeComError::Decode {
                api: Api::GetLink,
                path: "link.create_time".into(),
                message: "invalid type: string \"yesterday\", expected i64".into(),
            }
        );
        assert_eq!(
            error.to_string(),
            "WeCom get answer is malformed at link.create_time: invalid type: string \"yesterday\", expected i64"
        );
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        let cases: [(Api, &str, &str); 5] = [
            (
                Api::Quota,
                r#"{"total":1,"balance":9007199254740992}"#,
                "balance",
            ),
            (
                Api::Quota,
                r#"{"total":1,"balance":1,"quota_list":[{"expire_date":-5,"balance":1}]}"#,
                "quota_list[0].expire_date",
            ),
            (
                Api::Quota,
                r#"{"total":1,"balance":1,"quota_list":[{"expire_date":1,"balance":9007199254740991},{"expire_date":1,"balance":1}]}"#,
                "quota_list[].balance (sum)",
            ),
            (
                Api::Statistic,
                r#"{"click_link_customer_cnt":18446744073709551615,"new_customer_cnt":1}"#,
                "click_link_customer_cnt",
            ),
            (
                Api::Customer,
                r#"{"customer_list":[{"external_userid":"wm","add_time":9223372036854775807}]}"#,
                "customer_list[0].add_time",
            ),
        ];
        for (api, body, want) in cases {
            let error = match api {
                Api::Quota => decode_as::<QuotaResponse>(api, body).map(|_| ()),
                Api::Statistic => decode_as::<StatisticResponse>(api, body).map(|_| ()),
                _ => decode_as::<CustomerResponse>(api, body).map(|_| ()),
            }
            .unwrap_err();
            assert!(
                matches!(&error, WeComError::Decode { path, .. } if path == want),
                "{body}: {error:?}"
            );
        }
        let created = decode_as::<GetLinkResponse>(
            Api::GetLink,
            r#"{"link":{"link_name":"n","url":"u","create_time":-1},"range":{}}"#,
        );
        assert!(
            matches!(created, Err(WeComError::Decode { path, .. }) if path == "link.create_time")
        );
    }

    #[test]
    fn an_html_page_is_not_json_whatever_the_status() {
        let error = decode::<ApiStatus>(
            Api::Quota,
            200,
            &shown_content_type(Some(b"text/html; charset=utf-8")),
            b"\n<html><body>Proxy login</body></html>",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "WeCom customer_acquisition_quota answered HTTP 200 with content type \"text/html; charset=utf-8\", not JSON (a proxy in the way, or apiBaseUrl is not WeCom's API?)"
        );
        assert_eq!(error.metric_label(), "not_json");
        for body in [&b""[..], b"[1,2]", b"null", b"\xff\xfe"] {
            assert!(matches!(
                decode::<ApiStatus>(Api::Quota, 200, "x", body),
                Err(WeComError::NotJson { .. })
            ));
        }
    }

    #[test]
    fn trailing_garbage_and_truncation_are_decode_errors() {
        for body in [r#"{"errcode":0} <html>"#, r#"{"errcode":0,"#] {
            assert!(
                matches!(
                    decode_as::<ApiStatus>(Api::Quota, body),
                    Err(WeComError::Decode { .. })
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn an_errcode_comes_back_as_the_api_error() {
        assert_eq!(
            decode_as::<QuotaResponse>(Api::Quota, r#"{"errcode":45009,"errmsg":"busy"}"#),
            Err(WeComError::Api {
                api: Api::Quota,
                errcode: 45009,
                errmsg: "busy".into()
            })
        );
    }

    #[test]
    fn the_page_guard_stops_loops_long_listings_and_long_pages() {
        let limits = PageLimits {
            per_page: 2,
            max_pages: 3,
        };
        let mut guard = PageGuard::new(Api::ListLink, limits);
        assert_eq!(guard.after_page(2, "a").unwrap().as_deref(), Some("a"));
        assert_eq!(guard.after_page(2, "b").unwrap().as_deref(), Some("b"));
        assert!(matches!(
            guard.after_page(2, "c"),
            Err(WeComError::Pagination { .. })
        ));
        let mut guard = PageGuard::new(Api::ListLink, limits);
        guard.after_page(2, "a").unwrap();
        assert!(matches!(
            guard.after_page(2, "a"),
            Err(WeComError::Pagination { .. })
        ));
        let mut guard = PageGuard::new(Api::Customer, limits);
        assert!(matches!(
            guard.after_page(3, ""),
            Err(WeComError::Pagination { .. })
        ));
        let mut guard = PageGuard::new(Api::Customer, limits);
        assert_eq!(guard.after_page(1, "").unwrap(), None);
    }
}
