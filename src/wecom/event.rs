//! Typed WeCom callback events: parsing a decrypted callback XML into a [`CallbackEvent`],
//! and rendering one back (the simulator sends what the controller parses).
//!
//! Both envelopes of WECOM-NOTES "Callbacks" are read: the self-built one
//! (`ToUserName`, `CreateTime`, `Event`, `ChangeType`, ...) and the third-party one
//! (`SuiteId`, `AuthCorpId`, `InfoType`, `TimeStamp`, `ChangeType`, ...). Every extra element
//! is optional, unknown elements are ignored, values may be CDATA or plain text. Parsing is one
//! pass of a small scanner made for WeCom's flat documents (`read_root_fields`) and
//! borrows from the input until the final struct is built: it sits on the hot path of the
//! callback endpoint.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::str::FromStr;

/// Which of WeCom's two callback envelopes an event came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Envelope {
    /// A self-built app: `ToUserName`, `FromUserName`, `CreateTime`, `MsgType`, `Event`.
    SelfBuilt,
    /// A third-party app's instruction callback: `SuiteId`, `AuthCorpId`, `InfoType`,
    /// `TimeStamp`.
    ThirdParty,
}

/// The value of `Event` (self-built) or `InfoType` (third-party). G4: `add_external_contact`
/// comes as `change_external_contact`, every other acquisition event as
/// `customer_acquisition`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventFamily {
    CustomerAcquisition,
    ChangeExternalContact,
    Other(String),
}

impl EventFamily {
    pub fn as_str(&self) -> &str {
        match self {
            EventFamily::CustomerAcquisition => "customer_acquisition",
            EventFamily::ChangeExternalContact => "change_external_contact",
            EventFamily::Other(other) => other,
        }
    }
}

impl FromStr for EventFamily {
    type Err = Infallible;

    fn from_str(value: &str) -> Result<Self, Infallible> {
        Ok(match value {
            "customer_acquisition" => EventFamily::CustomerAcquisition,
            "change_external_contact" => EventFamily::ChangeExternalContact,
            other => EventFamily::Other(other.to_string()),
        })
    }
}

impl fmt::Display for EventFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value of `ChangeType`: CB1-CB9 of the skill text plus the two the notes add.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChangeType {
    /// CB1
    OpenProfile,
    /// CB2
    FriendRequest,
    /// CB3
    CustomerStartChat,
    /// CB4 (family `change_external_contact`)
    AddExternalContact,
    /// CB5
    BalanceIncreased,
    /// CB6
    BalanceLow,
    /// CB7
    BalanceExhausted,
    /// CB8, with `ExpireTime` and `ExpireQuotaNum`
    QuotaExpireSoon,
    /// CB9
    DeleteLink,
    /// A link became unusable (WECOM-NOTES), with `LinkId`.
    LinkUnavailable,
    /// With `LinkId` and `ChatKey` (WECOM-NOTES).
    MessageFromCustomer,
    Other(String),
}

impl ChangeType {
    pub fn as_str(&self) -> &str {
        match self {
            ChangeType::OpenProfile => "open_profile",
            ChangeType::FriendRequest => "friend_request",
            ChangeType::CustomerStartChat => "customer_start_chat",
            ChangeType::AddExternalContact => "add_external_contact",
            ChangeType::BalanceIncreased => "balance_increased",
            ChangeType::BalanceLow => "balance_low",
            ChangeType::BalanceExhausted => "balance_exhausted",
            ChangeType::QuotaExpireSoon => "quota_expire_soon",
            ChangeType::DeleteLink => "delete_link",
            ChangeType::LinkUnavailable => "link_unavailable",
            ChangeType::MessageFromCustomer => "message_from_customer",
            ChangeType::Other(other) => other,
        }
    }
}

impl FromStr for ChangeType {
    type Err = Infallible;

    fn from_str(value: &str) -> Result<Self, Infallible> {
        Ok(match value {
            "open_profile" => ChangeType::OpenProfile,
            "friend_request" => ChangeType::FriendRequest,
            "customer_start_chat" => ChangeType::CustomerStartChat,
            "add_external_contact" => ChangeType::AddExternalContact,
            "balance_increased" => ChangeType::BalanceIncreased,
            "balance_low" => ChangeType::BalanceLow,
            "balance_exhausted" => ChangeType::BalanceExhausted,
            "quota_expire_soon" => ChangeType::QuotaExpireSoon,
            "delete_link" => ChangeType::DeleteLink,
            "link_unavailable" => ChangeType::LinkUnavailable,
            "message_from_customer" => ChangeType::MessageFromCustomer,
            other => ChangeType::Other(other.to_string()),
        })
    }
}

impl fmt::Display for ChangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decrypted callback. Optional fields are `None` when the element is absent or empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackEvent {
    pub envelope: Envelope,
    /// `ToUserName` (self-built) or `AuthCorpId` (third-party).
    pub corp_id: String,
    /// `SuiteId`, sent by third-party apps.
    pub suite_id: Option<String>,
    pub family: EventFamily,
    pub change_type: ChangeType,
    /// `CreateTime` (self-built) or `TimeStamp` (third-party), Unix seconds.
    pub created_at: i64,
    pub link_id: Option<String>,
    /// The `customer_channel` the customer came through.
    pub state: Option<String>,
    pub user_id: Option<String>,
    pub external_user_id: Option<String>,
    /// Unix seconds; `quota_expire_soon` only.
    pub expire_time: Option<i64>,
    /// `quota_expire_soon` only.
    pub expire_quota_num: Option<u64>,
    pub welcome_code: Option<String>,
    pub chat_key: Option<String>,
}

/// Why a decrypted callback could not be read as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error(
        "callback event is not well-formed XML ({0}): the sender is not WeCom or the body was cut"
    )]
    MalformedXml(String),
    #[error(
        "callback event has no {0} element: it is not a WeCom customer-acquisition event, or WeCom changed its format"
    )]
    MissingField(&'static str),
    #[error("callback event element {field} should hold an integer, found {value:?}")]
    InvalidNumber { field: &'static str, value: String },
}

/// The elements [`parse_event`] reads; anything else is skipped.
#[derive(Debug, Clone, Copy)]
enum Field {
    ToUserName,
    CreateTime,
    Event,
    SuiteId,
    AuthCorpId,
    InfoType,
    TimeStamp,
    ChangeType,
    LinkId,
    State,
    UserId,
    ExternalUserId,
    ExpireTime,
    ExpireQuotaNum,
    WelcomeCode,
    ChatKey,
}

impl Field {
    fn from_name(name: &[u8]) -> Option<Field> {
        Some(match name {
            b"ToUserName" => Field::ToUserName,
            b"CreateTime" => Field::CreateTime,
            b"Event" => Field::Event,
            b"SuiteId" => Field::SuiteId,
            b"AuthCorpId" => Field::AuthCorpId,
            b"InfoType" => Field::InfoType,
            b"TimeStamp" => Field::TimeStamp,
            b"ChangeType" => Field::ChangeType,
            b"LinkId" => Field::LinkId,
            b"State" => Field::State,
            b"UserID" => Field::UserId,
            b"ExternalUserID" => Field::ExternalUserId,
            b"ExpireTime" => Field::ExpireTime,
            b"ExpireQuotaNum" => Field::ExpireQuotaNum,
            b"WelcomeCode" => Field::WelcomeCode,
            b"ChatKey" => Field::ChatKey,
            _ => return None,
        })
    }
}

/// Raw element texts, borrowed from the input where possible.
#[derive(Default)]
struct RawFields<'a> {
    to_user_name: Option<Cow<'a, str>>,
    create_time: Option<Cow<'a, str>>,
    event: Option<Cow<'a, str>>,
    suite_id: Option<Cow<'a, str>>,
    auth_corp_id: Option<Cow<'a, str>>,
    info_type: Option<Cow<'a, str>>,
    time_stamp: Option<Cow<'a, str>>,
    change_type: Option<Cow<'a, str>>,
    link_id: Option<Cow<'a, str>>,
    state: Option<Cow<'a, str>>,
    user_id: Option<Cow<'a, str>>,
    external_user_id: Option<Cow<'a, str>>,
    expire_time: Option<Cow<'a, str>>,
    expire_quota_num: Option<Cow<'a, str>>,
    welcome_code: Option<Cow<'a, str>>,
    chat_key: Option<Cow<'a, str>>,
}

impl<'a> RawFields<'a> {
    fn slot(&mut self, field: Field) -> &mut Option<Cow<'a, str>> {
        match field {
            Field::ToUserName => &mut self.to_user_name,
            Field::CreateTime => &mut self.create_time,
            Field::Event => &mut self.event,
            Field::SuiteId => &mut self.suite_id,
            Field::AuthCorpId => &mut self.auth_corp_id,
            Field::InfoType => &mut self.info_type,
            Field::TimeStamp => &mut self.time_stamp,
            Field::ChangeType => &mut self.change_type,
            Field::LinkId => &mut self.link_id,
            Field::State => &mut self.state,
            Field::UserId => &mut self.user_id,
            Field::ExternalUserId => &mut self.external_user_id,
            Field::ExpireTime => &mut self.expire_time,
            Field::ExpireQuotaNum => &mut self.expire_quota_num,
            Field::WelcomeCode => &mut self.welcome_code,
            Field::ChatKey => &mut self.chat_key,
        }
    }
}

/// Parses a decrypted callback message. The envelope is third-party when `InfoType` is
/// present, self-built otherwise.
pub fn parse_event(xml: &str) -> Result<CallbackEvent, EventError> {
    let mut raw = RawFields::default();
    read_root_fields(xml, Field::from_name, |field, text| {
        // An empty element reads as absent, so `Some` always carries a value.
        *raw.slot(field) = (!text.is_empty()).then_some(text);
    })
    .map_err(EventError::MalformedXml)?;

    let (envelope, corp_id, family, created_at) = match raw.info_type.take() {
        Some(info_type) => (
            Envelope::ThirdParty,
            required(raw.auth_corp_id.take(), "AuthCorpId")?,
            info_type,
            raw.time_stamp.take().or(raw.create_time.take()),
        ),
        None => (
            Envelope::SelfBuilt,
            required(raw.to_user_name.take(), "ToUserName")?,
            required(raw.event.take(), "Event or InfoType")?,
            raw.create_time.take().or(raw.time_stamp.take()),
        ),
    };
    let created_at = required(created_at, "CreateTime or TimeStamp")?;
    let change_type = required(raw.change_type.take(), "ChangeType")?;

    Ok(CallbackEvent {
        envelope,
        corp_id: corp_id.into_owned(),
        suite_id: owned(raw.suite_id),
        family: match family.parse() {
            Ok(family) => family,
            Err(never) => match never {},
        },
        change_type: match change_type.parse() {
            Ok(change_type) => change_type,
            Err(never) => match never {},
        },
        created_at: number(&created_at, "CreateTime")?,
        link_id: owned(raw.link_id),
        state: owned(raw.state),
        user_id: owned(raw.user_id),
        external_user_id: owned(raw.external_user_id),
        expire_time: raw
            .expire_time
            .map(|text| number(&text, "ExpireTime"))
            .transpose()?,
        expire_quota_num: raw
            .expire_quota_num
            .map(|text| number(&text, "ExpireQuotaNum"))
            .transpose()?,
        welcome_code: owned(raw.welcome_code),
        chat_key: owned(raw.chat_key),
    })
}

fn required<'a>(
    value: Option<Cow<'a, str>>,
    field: &'static str,
) -> Result<Cow<'a, str>, EventError> {
    value.ok_or(EventError::MissingField(field))
}

fn owned(value: Option<Cow<'_, str>>) -> Option<String> {
    value.map(Cow::into_owned)
}

fn number<T: FromStr>(text: &str, field: &'static str) -> Result<T, EventError> {
    text.trim().parse().map_err(|_| EventError::InvalidNumber {
        field,
        value: text.chars().take(32).collect(),
    })
}

/// Renders `event` as WeCom sends it in `event.envelope`'s shape; `parse_event` reads it back
/// to an equal event. Strings go in CDATA, numbers as text, absent fields are left out.
pub fn render_event(event: &CallbackEvent) -> String {
    let mut xml = String::with_capacity(512);
    xml.push_str("<xml>");
    match event.envelope {
        Envelope::SelfBuilt => {
            push_cdata(&mut xml, "ToUserName", &event.corp_id);
            push_cdata(&mut xml, "FromUserName", "sys");
            push_number(&mut xml, "CreateTime", event.created_at);
            push_cdata(&mut xml, "MsgType", "event");
            push_cdata(&mut xml, "Event", event.family.as_str());
            if let Some(suite_id) = &event.suite_id {
                push_cdata(&mut xml, "SuiteId", suite_id);
            }
        }
        Envelope::ThirdParty => {
            if let Some(suite_id) = &event.suite_id {
                push_cdata(&mut xml, "SuiteId", suite_id);
            }
            push_cdata(&mut xml, "AuthCorpId", &event.corp_id);
            push_cdata(&mut xml, "InfoType", event.family.as_str());
            push_number(&mut xml, "TimeStamp", event.created_at);
        }
    }
    push_cdata(&mut xml, "ChangeType", event.change_type.as_str());
    let optional_texts = [
        ("LinkId", &event.link_id),
        ("State", &event.state),
        ("UserID", &event.user_id),
        ("ExternalUserID", &event.external_user_id),
    ];
    for (name, value) in optional_texts {
        if let Some(value) = value {
            push_cdata(&mut xml, name, value);
        }
    }
    if let Some(expire_time) = event.expire_time {
        push_number(&mut xml, "ExpireTime", expire_time);
    }
    if let Some(expire_quota_num) = event.expire_quota_num {
        push_number(&mut xml, "ExpireQuotaNum", expire_quota_num);
    }
    for (name, value) in [
        ("WelcomeCode", &event.welcome_code),
        ("ChatKey", &event.chat_key),
    ] {
        if let Some(value) = value {
            push_cdata(&mut xml, name, value);
        }
    }
    xml.push_str("</xml>");
    xml
}

/// Appends `<name><![CDATA[value]]></name>`; a `]]>` inside the value is split across two
/// CDATA sections so it cannot end the section early.
pub(crate) fn push_cdata(xml: &mut String, name: &str, value: &str) {
    xml.push('<');
    xml.push_str(name);
    xml.push_str("><![CDATA[");
    xml.push_str(&value.replace("]]>", "]]]]><![CDATA[>"));
    xml.push_str("]]></");
    xml.push_str(name);
    xml.push('>');
}

fn push_number(xml: &mut String, name: &str, value: impl fmt::Display) {
    // Writing to a String cannot fail.
    let _ = write!(xml, "<{name}>{value}</{name}>");
}

/// Walks the children of the root element of a flat WeCom XML document (`<xml>...</xml>`)
/// and calls `on_field` with the text of every child that `classify` recognises. Text and
/// CDATA pieces of one child are joined, entities unescaped, surrounding whitespace of plain
/// text trimmed; grandchildren are skipped. A later duplicate element overrides an earlier
/// one. The error is a one-line description of the syntax problem.
///
/// A small scanner rather than a general XML parser: WeCom's documents are flat, a few
/// hundred bytes, and this sits on the hot path of every callback. It still checks what a
/// parser would for such documents (one root, matching end tags, terminated CDATA, comments
/// and tags, known entities) and refuses declarations (`<!DOCTYPE`), which WeCom never sends.
pub(crate) fn read_root_fields<'a, K>(
    xml: &'a str,
    classify: impl Fn(&[u8]) -> Option<K>,
    mut on_field: impl FnMut(K, Cow<'a, str>),
) -> Result<(), String> {
    let mut scanner = Scanner { xml, pos: 0 };
    let mut open = OpenTags::new();
    let mut root_seen = false;
    let mut current: Option<K> = None;
    let mut text: Option<Cow<'a, str>> = None;
    loop {
        let at = scanner.pos;
        match scanner.next_token()? {
            Token::Eof => {
                return match (root_seen, open.len()) {
                    (false, _) => Err("no root element".to_string()),
                    (true, 0) => Ok(()),
                    (true, depth) => {
                        Err(format!("input ends inside an element ({depth} left open)"))
                    }
                };
            }
            Token::Text(raw) => match open.len() {
                0 if !trim_xml_space(raw).is_empty() => {
                    return Err(format!("text outside the root element at byte {at}"));
                }
                2 if current.is_some() => {
                    let trimmed = trim_xml_space(raw);
                    if !trimmed.is_empty() {
                        append(&mut text, unescape(trimmed)?);
                    }
                }
                _ => {}
            },
            Token::CData(raw) => match open.len() {
                0 => return Err(format!("CDATA outside the root element at byte {at}")),
                2 if current.is_some() => append(&mut text, Cow::Borrowed(raw)),
                _ => {}
            },
            Token::Start { name, empty } => {
                if open.is_empty() {
                    if root_seen {
                        return Err(format!("a second root element <{name}> at byte {at}"));
                    }
                    root_seen = true;
                }
                if empty {
                    if open.len() == 1
                        && let Some(field) = classify(local_name(name))
                    {
                        on_field(field, Cow::Borrowed(""));
                    }
                } else {
                    open.push(name);
                    if open.len() == 2 {
                        current = classify(local_name(name));
                        text = None;
                    }
                }
            }
            Token::End { name } => {
                match open.last() {
                    Some(expected) if expected == name => {}
                    Some(expected) => {
                        return Err(format!(
                            "end tag </{name}> at byte {at} does not close <{expected}>"
                        ));
                    }
                    None => {
                        return Err(format!("end tag </{name}> at byte {at} closes nothing"));
                    }
                }
                if open.len() == 2
                    && let Some(field) = current.take()
                {
                    on_field(field, text.take().unwrap_or(Cow::Borrowed("")));
                }
                open.pop();
            }
            Token::Skipped => {}
        }
    }
}

/// One piece of an XML document, borrowed from it.
enum Token<'a> {
    /// Character data between two pieces of markup, still escaped.
    Text(&'a str),
    /// The content of a `<![CDATA[...]]>` section.
    CData(&'a str),
    Start {
        name: &'a str,
        /// `<name/>`
        empty: bool,
    },
    End {
        name: &'a str,
    },
    /// A comment or a processing instruction (`<?xml ...?>`).
    Skipped,
    Eof,
}

struct Scanner<'a> {
    xml: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    /// The next token. Searches use `memchr` (vectorised), so the cost is a few passes
    /// over the markup, not a branch per byte of the `Encrypt` text.
    fn next_token(&mut self) -> Result<Token<'a>, String> {
        let bytes = self.xml.as_bytes();
        let start = self.pos;
        let Some(&first) = bytes.get(start) else {
            return Ok(Token::Eof);
        };
        if first != b'<' {
            let end = find_byte(bytes, b'<', start).unwrap_or(bytes.len());
            self.pos = end;
            return Ok(Token::Text(&self.xml[start..end]));
        }
        match bytes.get(start + 1) {
            Some(b'!') => {
                let rest = &bytes[start..];
                if rest.starts_with(b"<![CDATA[") {
                    let body = start + 9;
                    let end = find(bytes, b"]]>", body).ok_or_else(|| {
                        format!("CDATA section at byte {start} is not terminated")
                    })?;
                    self.pos = end + 3;
                    Ok(Token::CData(&self.xml[body..end]))
                } else if rest.starts_with(b"<!--") {
                    let end = find(bytes, b"-->", start + 4)
                        .ok_or_else(|| format!("comment at byte {start} is not terminated"))?;
                    self.pos = end + 3;
                    Ok(Token::Skipped)
                } else {
                    Err(format!(
                        "declaration at byte {start} (DOCTYPE or similar) is not accepted"
                    ))
                }
            }
            Some(b'?') => {
                let end = find(bytes, b"?>", start + 2).ok_or_else(|| {
                    format!("processing instruction at byte {start} is not terminated")
                })?;
                self.pos = end + 2;
                Ok(Token::Skipped)
            }
            Some(b'/') => {
                let gt = find_byte(bytes, b'>', start + 2)
                    .ok_or_else(|| format!("end tag at byte {start} is not terminated"))?;
                let name = trim_xml_space(&self.xml[start + 2..gt]);
                if name.bytes().any(is_xml_space) {
                    return Err(format!("end tag at byte {start} is malformed"));
                }
                let name = tag_name(name, start)?;
                self.pos = gt + 1;
                Ok(Token::End { name })
            }
            _ => self.start_tag(start),
        }
    }

    /// `<name attributes...>` or `<name .../>` at `start`.
    fn start_tag(&mut self, start: usize) -> Result<Token<'a>, String> {
        let bytes = self.xml.as_bytes();
        let unterminated = || format!("tag at byte {start} is not terminated");
        let mut gt = find_byte(bytes, b'>', start + 1).ok_or_else(unterminated)?;
        let inner = &bytes[start + 1..gt];
        if memchr::memchr2(b'"', b'\'', inner).is_some() {
            // Quoted attribute values may hold a `>`: find the one outside quotes.
            let mut quote: Option<u8> = None;
            let mut i = start + 1;
            gt = loop {
                let &b = bytes.get(i).ok_or_else(unterminated)?;
                match quote {
                    _ if b == b'<' => return Err(unterminated()),
                    Some(q) if b == q => quote = None,
                    Some(_) => {}
                    None if b == b'"' || b == b'\'' => quote = Some(b),
                    None if b == b'>' => break i,
                    None => {}
                }
                i += 1;
            };
        } else if memchr::memchr(b'<', inner).is_some() {
            return Err(unterminated());
        }
        let inner = &self.xml[start + 1..gt];
        let name_len = inner
            .bytes()
            .position(|b| is_xml_space(b) || b == b'/')
            .unwrap_or(inner.len());
        let name = tag_name(&inner[..name_len], start)?;
        self.pos = gt + 1;
        Ok(Token::Start {
            name,
            empty: inner.ends_with('/'),
        })
    }
}

fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim_xml_space(text: &str) -> &str {
    text.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
}

/// Checks a tag name found at byte `at`.
fn tag_name(name: &str, at: usize) -> Result<&str, String> {
    let valid = name
        .bytes()
        .next()
        .is_some_and(|b| !matches!(b, b'-' | b'.' | b'0'..=b'9'))
        && !name
            .bytes()
            .any(|b| matches!(b, b'<' | b'&' | b'"' | b'\'' | b'=' | b'!' | b'?'));
    if valid {
        Ok(name)
    } else {
        Err(format!("invalid tag name at byte {at}"))
    }
}

/// The name without its namespace prefix.
fn local_name(name: &str) -> &[u8] {
    let bytes = name.as_bytes();
    match memchr::memrchr(b':', bytes) {
        Some(colon) => &bytes[colon + 1..],
        None => bytes,
    }
}

fn find_byte(bytes: &[u8], needle: u8, from: usize) -> Option<usize> {
    memchr::memchr(needle, bytes.get(from..)?).map(|i| from + i)
}

fn find(bytes: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(bytes.get(from..)?, needle).map(|i| from + i)
}

/// The open elements, innermost last. Four fit inline (WeCom's documents have two
/// levels), so a parse does not allocate for it.
struct OpenTags<'a> {
    inline: [&'a str; 4],
    len: usize,
    deeper: Vec<&'a str>,
}

impl<'a> OpenTags<'a> {
    fn new() -> Self {
        OpenTags {
            inline: [""; 4],
            len: 0,
            deeper: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, name: &'a str) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = name,
            None => self.deeper.push(name),
        }
        self.len += 1;
    }

    fn last(&self) -> Option<&'a str> {
        let top = self.len.checked_sub(1)?;
        match self.inline.get(top) {
            Some(name) => Some(*name),
            None => self.deeper.last().copied(),
        }
    }

    fn pop(&mut self) {
        if self.len > self.inline.len() {
            self.deeper.pop();
        }
        self.len = self.len.saturating_sub(1);
    }
}

/// Replaces the five predefined entities and character references.
fn unescape(text: &str) -> Result<Cow<'_, str>, String> {
    if memchr::memchr(b'&', text.as_bytes()).is_none() {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp + 1..];
        let shown = || rest.chars().take(12).collect::<String>();
        let semicolon = rest
            .find(';')
            .filter(|&i| i <= 12)
            .ok_or_else(|| format!("unterminated entity &{}", shown()))?;
        let entity = &rest[..semicolon];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(decimal) = entity.strip_prefix('#') {
                    decimal.parse::<u32>().ok()
                } else {
                    None
                };
                code.filter(|&c| c != 0)
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown entity &{entity};"))?
            }
        };
        out.push(c);
        rest = &rest[semicolon + 1..];
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

fn append<'a>(text: &mut Option<Cow<'a, str>>, piece: Cow<'a, str>) {
    match text {
        None => *text = Some(piece),
        Some(existing) => existing.to_mut().push_str(&piece),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CB1 as printed in the skill text (third-party envelope).
    const CB1_OPEN_PROFILE: &str = "<xml>
<SuiteId><![CDATA[ww4asffe99e54c0f4c]]></SuiteId>
<AuthCorpId><![CDATA[wxf8b4f85f3a794e77]]></AuthCorpId>
<InfoType><![CDATA[customer_acquisition]]></InfoType>
<TimeStamp>1689171577</TimeStamp>
<ChangeType><![CDATA[open_profile]]></ChangeType>
<LinkId><![CDATA[cawcdea7783d7330c6]]></LinkId>
<State><![CDATA[STATE]]></State>
</xml>";

    fn self_built(change_type: ChangeType) -> CallbackEvent {
        CallbackEvent {
            envelope: Envelope::SelfBuilt,
            corp_id: "ww1234567890abcdef".to_string(),
            suite_id: None,
            family: EventFamily::CustomerAcquisition,
            change_type,
            created_at: 1_700_000_000,
            link_id: None,
            state: None,
            user_id: None,
            external_user_id: None,
            expire_time: None,
            expire_quota_num: None,
            welcome_code: None,
            chat_key: None,
        }
    }

    #[test]
    fn parses_cb1_sample_of_the_skill_text() {
        let event = parse_event(CB1_OPEN_PROFILE).unwrap();
        assert_eq!(
            event,
            CallbackEvent {
                envelope: Envelope::ThirdParty,
                corp_id: "wxf8b4f85f3a794e77".to_string(),
                suite_id: Some("ww4asffe99e54c0f4c".to_string()),
                family: EventFamily::CustomerAcquisition,
                change_type: ChangeType::OpenProfile,
                created_at: 1_689_171_577,
                link_id: Some("cawcdea7783d7330c6".to_string()),
                state: Some("STATE".to_string()),
                ..self_built(ChangeType::OpenProfile)
            }
        );
    }

    #[test]
    fn parses_self_built_delete_link() {
        let xml = "<xml><ToUserName><![CDATA[ww1234567890abcdef]]></ToUserName>\
            <FromUserName><![CDATA[sys]]></FromUserName><CreateTime>1700000000</CreateTime>\
            <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[customer_acquisition]]></Event>\
            <ChangeType><![CDATA[delete_link]]></ChangeType><LinkId><![CDATA[cawcde1]]></LinkId></xml>";
        let event = parse_event(xml).unwrap();
        assert_eq!(
            event,
            CallbackEvent {
                link_id: Some("cawcde1".to_string()),
                ..self_built(ChangeType::DeleteLink)
            }
        );
    }

    #[test]
    fn parses_add_external_contact_in_the_change_external_contact_family() {
        // G4: CB4 comes as Event change_external_contact, in plain text without CDATA here.
        let xml = "<xml>
            <ToUserName>ww1234567890abcdef</ToUserName>
            <FromUserName>sys</FromUserName>
            <CreateTime>1700000000</CreateTime>
            <MsgType>event</MsgType>
            <Event>change_external_contact</Event>
            <ChangeType>add_external_contact</ChangeType>
            <UserID>zhangsan</UserID>
            <ExternalUserID>wmEAlECwAAHrbWYDOK5u3Af13xlYDDNQ</ExternalUserID>
            <State>chan-a</State>
            <WelcomeCode><![CDATA[WELCOMECODE]]></WelcomeCode>
        </xml>";
        let event = parse_event(xml).unwrap();
        assert_eq!(event.family, EventFamily::ChangeExternalContact);
        assert_eq!(event.change_type, ChangeType::AddExternalContact);
        assert_eq!(event.user_id.as_deref(), Some("zhangsan"));
        assert_eq!(
            event.external_user_id.as_deref(),
            Some("wmEAlECwAAHrbWYDOK5u3Af13xlYDDNQ")
        );
        assert_eq!(event.state.as_deref(), Some("chan-a"));
        assert_eq!(event.welcome_code.as_deref(), Some("WELCOMECODE"));
        assert_eq!(event.link_id, None);
    }

    #[test]
    fn parses_quota_expire_soon_with_expiry_fields() {
        let xml = "<xml><ChangeType><![CDATA[quota_expire_soon]]></ChangeType>\
            <ExpireQuotaNum>150</ExpireQuotaNum><ExpireTime>1767196800</ExpireTime>\
            <Event><![CDATA[customer_acquisition]]></Event><CreateTime>1700000000</CreateTime>\
            <ToUserName><![CDATA[ww1234567890abcdef]]></ToUserName></xml>";
        let event = parse_event(xml).unwrap();
        assert_eq!(event.change_type, ChangeType::QuotaExpireSoon);
        assert_eq!(event.expire_time, Some(1_767_196_800));
        assert_eq!(event.expire_quota_num, Some(150));
    }

    #[test]
    fn keeps_unknown_change_type_and_family_and_ignores_unknown_elements() {
        let xml = "<xml><ToUserName>ww1</ToUserName><CreateTime>1</CreateTime>\
            <Event>brand_new_family</Event><ChangeType>brand_new_change</ChangeType>\
            <Unknown><Nested>x</Nested></Unknown><LinkId>L1</LinkId></xml>";
        let event = parse_event(xml).unwrap();
        assert_eq!(
            event.family,
            EventFamily::Other("brand_new_family".to_string())
        );
        assert_eq!(
            event.change_type,
            ChangeType::Other("brand_new_change".to_string())
        );
        assert_eq!(event.link_id.as_deref(), Some("L1"));
    }

    #[test]
    fn unescapes_entities_and_treats_empty_elements_as_absent() {
        let xml = "<xml><ToUserName>ww1</ToUserName><CreateTime> 7 </CreateTime>\
            <Event>customer_acquisition</Event><ChangeType>friend_request</ChangeType>\
            <State>a&amp;b</State><LinkId/><UserID></UserID></xml>";
        let event = parse_event(xml).unwrap();
        assert_eq!(event.state.as_deref(), Some("a&b"));
        assert_eq!(event.created_at, 7);
        assert_eq!(event.link_id, None);
        assert_eq!(event.user_id, None);
    }

    #[test]
    fn names_the_missing_or_invalid_element() {
        let no_change = "<xml><ToUserName>ww1</ToUserName><CreateTime>1</CreateTime>\
            <Event>customer_acquisition</Event></xml>";
        assert_eq!(
            parse_event(no_change),
            Err(EventError::MissingField("ChangeType"))
        );
        let third_party_without_corp = "<xml><InfoType>customer_acquisition</InfoType>\
            <TimeStamp>1</TimeStamp><ChangeType>delete_link</ChangeType></xml>";
        assert_eq!(
            parse_event(third_party_without_corp),
            Err(EventError::MissingField("AuthCorpId"))
        );
        let bad_number = "<xml><ToUserName>ww1</ToUserName><CreateTime>soon</CreateTime>\
            <Event>customer_acquisition</Event><ChangeType>delete_link</ChangeType></xml>";
        assert_eq!(
            parse_event(bad_number),
            Err(EventError::InvalidNumber {
                field: "CreateTime",
                value: "soon".to_string()
            })
        );
    }

    #[test]
    fn rejects_garbage_and_truncated_xml_without_panicking() {
        let full = render_event(&CallbackEvent {
            link_id: Some("cawcde1".to_string()),
            ..self_built(ChangeType::DeleteLink)
        });
        for cut in 0..full.len() {
            assert!(
                parse_event(&full[..cut]).is_err(),
                "prefix of {cut} bytes parsed"
            );
        }
        for garbage in [
            "",
            "hello",
            "<<<>>>",
            "<xml><a></b></xml>",
            "<xml><![CDATA[",
            "<xml><ToUserName>&bogus;</ToUserName></xml>",
            "\u{0}\u{1}<\u{ff}",
        ] {
            assert!(parse_event(garbage).is_err(), "{garbage:?} parsed");
        }
        assert!(matches!(
            parse_event("<xml><ToUserName>ww1"),
            Err(EventError::MalformedXml(_))
        ));
    }

    #[test]
    fn render_then_parse_round_trips_both_envelopes() {
        let full = CallbackEvent {
            link_id: Some("cawcde1".to_string()),
            state: Some("chan]]>a".to_string()),
            user_id: Some("zhangsan".to_string()),
            external_user_id: Some("wm1".to_string()),
            expire_time: Some(1_767_196_800),
            expire_quota_num: Some(3),
            welcome_code: Some("W<&>".to_string()),
            chat_key: Some("ck".to_string()),
            ..self_built(ChangeType::MessageFromCustomer)
        };
        let third_party = CallbackEvent {
            envelope: Envelope::ThirdParty,
            suite_id: Some("ww4asffe99e54c0f4c".to_string()),
            family: EventFamily::ChangeExternalContact,
            change_type: ChangeType::AddExternalContact,
            ..full.clone()
        };
        let minimal = self_built(ChangeType::BalanceExhausted);
        let unknown = CallbackEvent {
            family: EventFamily::Other("x".to_string()),
            change_type: ChangeType::Other("y".to_string()),
            ..minimal.clone()
        };
        for event in [full, third_party, minimal, unknown] {
            let xml = render_event(&event);
            assert_eq!(parse_event(&xml).unwrap(), event, "{xml}");
        }
    }

    #[test]
    fn change_type_names_round_trip() {
        for change_type in [
            ChangeType::OpenProfile,
            ChangeType::FriendRequest,
            ChangeType::CustomerStartChat,
            ChangeType::AddExternalContact,
            ChangeType::BalanceIncreased,
            ChangeType::BalanceLow,
            ChangeType::BalanceExhausted,
            ChangeType::QuotaExpireSoon,
            ChangeType::DeleteLink,
            ChangeType::LinkUnavailable,
            ChangeType::MessageFromCustomer,
        ] {
            assert_eq!(change_type.as_str().parse(), Ok(change_type.clone()));
            assert!(!matches!(change_type, ChangeType::Other(_)));
        }
    }

    #[test]
    fn scanner_accepts_prolog_comments_attributes_prefixes_and_split_cdata() {
        let xml = "\u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- pushed by WeCom -->\n\
            <xml a=\"1 > 0\" b='x'>\
            <ToUserName><![CDATA[ww]]><!-- split --><![CDATA[1]]></ToUserName>\
            <wx:CreateTime>\t12\r\n</wx:CreateTime>\
            <Event attr=\"v\">customer_acquisition</Event>\
            <Nested><ChangeType>wrong</ChangeType><![CDATA[ignored]]></Nested>\
            <ChangeType>delete_link</ChangeType>\
            <LinkId>&#x4E00;&#19968;&lt;&gt;&quot;&apos;</LinkId>\
            <State></State >\
            </xml>\n<!-- trailing -->\n";
        let xml = xml.trim_start_matches('\u{feff}');
        let event = parse_event(xml).unwrap();
        assert_eq!(event.corp_id, "ww1");
        assert_eq!(event.created_at, 12);
        assert_eq!(event.change_type, ChangeType::DeleteLink);
        assert_eq!(event.link_id.as_deref(), Some("一一<>\"'"));
        assert_eq!(event.state, None);
    }

    #[test]
    fn scanner_refuses_what_is_not_one_well_formed_root() {
        for bad in [
            "<!DOCTYPE xml [<!ENTITY x \"y\">]><xml></xml>",
            "<xml></xml><xml></xml>",
            "<xml></xml>trailing",
            "leading<xml></xml>",
            "<xml><![CDATA[x]]></xml><![CDATA[y]]>",
            "<xml><!-- open </xml>",
            "<xml><?pi </xml>",
            "<xml><ToUserName a=\"unclosed></ToUserName></xml>",
            "<xml><1a>x</1a></xml>",
            "<xml></>",
            "</xml>",
            "<xml><State>&amp</State></xml>",
            "<xml><State>&#0;</State></xml>",
            "<xml><State>&#xD800;</State></xml>",
            "<xml><Nested><Deep></Nested></Deep></xml>",
        ] {
            let mut fields = 0;
            let result = read_root_fields(bad, |_| Some(()), |(), _| fields += 1);
            assert!(result.is_err(), "{bad:?} accepted");
            let err = result.unwrap_err();
            assert!(!err.contains('\n'), "{err}");
        }
        assert_eq!(read_root_fields("<xml/>", |_| Some(()), |(), _| {}), Ok(()));
    }

    #[test]
    fn scanner_checks_end_tags_beyond_the_inline_depth() {
        let deep = "<xml><a><b><c><d><e>x</e></d></c></b></a><LinkId>L</LinkId></xml>";
        let mut seen = Vec::new();
        read_root_fields(
            deep,
            |n| Some(String::from_utf8_lossy(n).into_owned()),
            |n, t| seen.push((n, t.into_owned())),
        )
        .unwrap();
        assert_eq!(
            seen,
            [
                ("a".to_string(), String::new()),
                ("LinkId".into(), "L".into())
            ]
        );
        let crossed = "<xml><a><b><c><d><e>x</d></e></c></b></a></xml>";
        assert!(read_root_fields(crossed, |_| Some(()), |(), _| {}).is_err());
    }

    /// The quick-xml walker this scanner replaced, kept as the reference it must agree with.
    fn quick_xml_fields(xml: &str) -> Result<Vec<(String, String)>, String> {
        use quick_xml::Reader;
        use quick_xml::events::Event;
        let mut reader = Reader::from_str(xml);
        reader.config_mut().trim_text(true);
        let (mut depth, mut out) = (0usize, Vec::new());
        let (mut current, mut text): (Option<String>, String) = (None, String::new());
        loop {
            match reader.read_event().map_err(|e| e.to_string())? {
                Event::Start(s) => {
                    depth += 1;
                    if depth == 2 {
                        current = Some(String::from_utf8_lossy(s.local_name().as_ref()).into());
                        text.clear();
                    }
                }
                Event::Empty(s) if depth == 1 => out.push((
                    String::from_utf8_lossy(s.local_name().as_ref()).into(),
                    String::new(),
                )),
                Event::End(_) => {
                    if depth == 2
                        && let Some(name) = current.take()
                    {
                        out.push((name, std::mem::take(&mut text)));
                    }
                    depth = depth.saturating_sub(1);
                }
                Event::Text(t) if depth == 2 => {
                    text.push_str(&t.unescape().map_err(|e| e.to_string())?)
                }
                Event::CData(c) if depth == 2 => {
                    text.push_str(std::str::from_utf8(&c).map_err(|e| e.to_string())?)
                }
                Event::Eof => return Ok(out),
                _ => {}
            }
        }
    }

    #[test]
    fn scanner_agrees_with_quick_xml_on_generated_wecom_documents() {
        use rand::{Rng, SeedableRng, seq::SliceRandom};
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let values = [
            "",
            "a",
            "ww1",
            "a&b",
            "<x>",
            "]]>",
            "获客 链接",
            " spaced ",
            "q\"'",
            "1700000000",
        ];
        let names = [
            "ToUserName",
            "CreateTime",
            "Event",
            "ChangeType",
            "LinkId",
            "State",
            "UserID",
            "Unknown",
        ];
        for _ in 0..3000 {
            let mut children: Vec<String> = Vec::new();
            for _ in 0..rng.gen_range(0..8) {
                let name = names.choose(&mut rng).unwrap();
                let value = values.choose(&mut rng).unwrap();
                let mut child = String::new();
                match rng.gen_range(0..4) {
                    0 => push_cdata(&mut child, name, value),
                    1 => child = format!("<{name}>{}</{name}>", quick_xml::escape::escape(*value)),
                    2 => {
                        child = format!(
                            "<{name}>\n  {}<!-- c -->\n</{name}>",
                            quick_xml::escape::escape(*value)
                        )
                    }
                    _ => child = format!("<{name}/>"),
                }
                children.push(child);
            }
            let xml = format!("<xml>\n{}\n</xml>", children.join("\n"));
            let mut ours = Vec::new();
            read_root_fields(
                &xml,
                |n| Some(String::from_utf8_lossy(n).into_owned()),
                |name, text| ours.push((name, text.into_owned())),
            )
            .unwrap();
            assert_eq!(Ok(ours), quick_xml_fields(&xml), "{xml}");
        }
    }
}
