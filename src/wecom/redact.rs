//! Scrubbing credentials out of text that may reach a log line, an error or an Event.
//!
//! The access token travels in the query string (`?access_token=...`) and gettoken carries
//! the corp secret (`corpsecret=...`); any URL or message built from a request passes
//! through [`scrub`] before it is stored in an error.

/// Query parameters whose values are credentials.
const SECRET_PARAMS: [&str; 2] = ["access_token", "corpsecret"];

/// Replaces the value of every credential query parameter in `text` with `REDACTED`.
/// Works on whole URLs and on free text that embeds them (reqwest error messages).
pub fn scrub(text: &str) -> String {
    let mut out = text.to_string();
    for param in SECRET_PARAMS {
        let needle = format!("{param}=");
        let mut search_from = 0;
        while let Some(found) = out[search_from..].find(&needle) {
            let value_start = search_from + found + needle.len();
            let value_end = out[value_start..]
                .find(|c: char| {
                    c == '&'
                        || c == ' '
                        || c == ')'
                        || c == '"'
                        || c == '\''
                        || c == '#'
                        || c.is_whitespace()
                })
                .map_or(out.len(), |i| value_start + i);
            out.replace_range(value_start..value_end, "REDACTED");
            search_from = value_start + "REDACTED".len();
        }
    }
    out
}

/// Removes every occurrence of a known secret value from `text`, for messages that might
/// echo one back in a place [`scrub`] does not know about.
pub fn scrub_value(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "REDACTED")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_token_and_secret_in_urls_and_messages() {
        let s = scrub(
            "error sending request for url (http://h/cgi-bin/gettoken?corpid=ww1&corpsecret=S3cr3t) then \
             http://h/a?access_token=TOK123&x=1 and access_token=TOK456",
        );
        assert!(
            !s.contains("S3cr3t") && !s.contains("TOK123") && !s.contains("TOK456"),
            "{s}"
        );
        assert!(s.contains("corpid=ww1") && s.contains("&x=1"), "{s}");
    }

    #[test]
    fn scrub_value_removes_known_secret() {
        assert_eq!(scrub_value("a TOKEN b", "TOKEN"), "a REDACTED b");
        assert_eq!(scrub_value("abc", ""), "abc");
    }
}
