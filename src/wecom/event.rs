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
            ChangeType::Other(other) => other,
            known => known.static_str().unwrap_or_default(),
        }
    }

    /// The wire name of a change type this controller knows; `None` for [`ChangeType::Other`].
    pub fn static_str(&self) -> Option<&'static str> {
        Some(match self {
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
            ChangeType::Other(_) => return None,
        })
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
/// hundred bytes, and this sits on the hot path of every callback. It works on byte
/// positions, takes `<Name><![CDATA[..]]></Name>` and `<Name>text</Name>` in one step each,
/// and still checks what a parser would for such documents (one root, matching end tags,
/// terminated CDATA, comments and tags, known entities). Declarations (`<!DOCTYPE`), which
/// WeCom never sends, are refused.
pub(crate) fn read_root_fields<'a, K>(
    xml: &'a str,
    classify: impl Fn(&[u8]) -> Option<K>,
    mut on_field: impl FnMut(K, Cow<'a, str>),
) -> Result<(), String> {
    let mut scan = Scan { xml, pos: 0 };
    // Prolog: whitespace, comments, processing instructions, then the root.
    let root = loop {
        scan.skip_space();
        match scan.markup_kind() {
            None if scan.at_end() => return Err("no root element".to_string()),
            None => {
                return Err(format!(
                    "text outside the root element at byte {}",
                    scan.pos
                ));
            }
            Some(Markup::Comment | Markup::Instruction) => scan.skip_misc()?,
            Some(Markup::Start) => break scan.start_tag()?,
            Some(Markup::CData) => {
                return Err(format!(
                    "CDATA outside the root element at byte {}",
                    scan.pos
                ));
            }
            Some(Markup::End) => return Err(scan.stray_end()),
        }
    };
    if !root.empty {
        // Children of the root.
        loop {
            // Text directly inside the root is ignored.
            scan.skip_text();
            match scan.markup_kind() {
                None => return Err("input ends inside an element (1 left open)".to_string()),
                Some(Markup::End) => {
                    scan.end_tag(root.name)?;
                    break;
                }
                Some(Markup::Comment | Markup::Instruction) => scan.skip_misc()?,
                Some(Markup::CData) => {
                    scan.cdata()?;
                }
                Some(Markup::Start) => {
                    let child = scan.start_tag()?;
                    let field = classify(local_name(child.name));
                    match (field, child.empty) {
                        (Some(field), true) => on_field(field, Cow::Borrowed("")),
                        (None, true) => {}
                        (Some(field), false) => on_field(field, scan.field_text(child.name)?),
                        (None, false) => scan.skip_content(child.name)?,
                    }
                }
            }
        }
    }
    // Epilogue: only whitespace, comments and processing instructions.
    loop {
        scan.skip_space();
        match scan.markup_kind() {
            None if scan.at_end() => return Ok(()),
            Some(Markup::Comment | Markup::Instruction) => scan.skip_misc()?,
            Some(Markup::Start) => {
                return Err(format!("a second root element at byte {}", scan.pos));
            }
            _ => {
                return Err(format!(
                    "content after the root element at byte {}",
                    scan.pos
                ));
            }
        }
    }
}

/// What the `<` at the current position opens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Markup {
    Start,
    End,
    CData,
    Comment,
    Instruction,
}

struct Tag<'a> {
    name: &'a str,
    /// `<name/>`
    empty: bool,
}

struct Scan<'a> {
    xml: &'a str,
    pos: usize,
}

impl<'a> Scan<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.xml.as_bytes()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.xml.len()
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes().get(self.pos..).unwrap_or_default()
    }

    fn skip_space(&mut self) {
        while self
            .bytes()
            .get(self.pos)
            .copied()
            .is_some_and(is_xml_space)
        {
            self.pos += 1;
        }
    }

    /// Moves to the next `<` (or the end).
    fn skip_text(&mut self) {
        self.pos = find_byte(self.bytes(), b'<', self.pos).unwrap_or(self.xml.len());
    }

    /// `None` when the current byte is not `<` (text, or the end).
    fn markup_kind(&self) -> Option<Markup> {
        let rest = self.rest();
        if rest.first() != Some(&b'<') {
            return None;
        }
        Some(match rest.get(1) {
            Some(b'/') => Markup::End,
            Some(b'?') => Markup::Instruction,
            Some(b'!') if rest.starts_with(b"<![CDATA[") => Markup::CData,
            Some(b'!') if rest.starts_with(b"<!--") => Markup::Comment,
            // A declaration: refused by skip_misc.
            Some(b'!') => Markup::Comment,
            _ => Markup::Start,
        })
    }

    /// Skips a comment or processing instruction; refuses declarations.
    fn skip_misc(&mut self) -> Result<(), String> {
        let start = self.pos;
        let rest = self.rest();
        let (open, close, what) = if rest.starts_with(b"<!--") {
            (4, &b"-->"[..], "comment")
        } else if rest.starts_with(b"<?") {
            (2, &b"?>"[..], "processing instruction")
        } else {
            return Err(format!(
                "declaration at byte {start} (DOCTYPE or similar) is not accepted"
            ));
        };
        let end = find(self.bytes(), close, start + open)
            .ok_or_else(|| format!("{what} at byte {start} is not terminated"))?;
        self.pos = end + close.len();
        Ok(())
    }

    /// A CDATA section at the current position: its content.
    fn cdata(&mut self) -> Result<&'a str, String> {
        let start = self.pos;
        let body = start + 9;
        let bytes = self.bytes();
        let mut at = body;
        let end = loop {
            let bracket = find_byte(bytes, b']', at)
                .ok_or_else(|| format!("CDATA section at byte {start} is not terminated"))?;
            if bytes.get(bracket + 1..bracket + 3) == Some(b"]>") {
                break bracket;
            }
            at = bracket + 1;
        };
        self.pos = end + 3;
        Ok(&self.xml[body..end])
    }

    /// A start tag at the current position (`<` not followed by `/`, `!` or `?`).
    fn start_tag(&mut self) -> Result<Tag<'a>, String> {
        let start = self.pos;
        let bytes = self.bytes();
        let name_end = self.name_end(start + 1)?;
        let name = &self.xml[start + 1..name_end];
        match bytes.get(name_end) {
            Some(b'>') => {
                self.pos = name_end + 1;
                return Ok(Tag { name, empty: false });
            }
            Some(b'/') if bytes.get(name_end + 1) == Some(&b'>') => {
                self.pos = name_end + 2;
                return Ok(Tag { name, empty: true });
            }
            _ => {}
        }
        // Attributes, skipped; a `>` inside a quoted value does not end the tag.
        let unterminated = || format!("tag <{name}> at byte {start} is not terminated");
        let mut quote: Option<u8> = None;
        let mut previous = 0u8;
        let mut i = name_end;
        loop {
            let &b = bytes.get(i).ok_or_else(unterminated)?;
            match quote {
                _ if b == b'<' => return Err(unterminated()),
                Some(q) if b == q => quote = None,
                Some(_) => {}
                None if b == b'"' || b == b'\'' => quote = Some(b),
                None if b == b'>' => {
                    self.pos = i + 1;
                    return Ok(Tag {
                        name,
                        empty: previous == b'/',
                    });
                }
                None => {}
            }
            previous = b;
            i += 1;
        }
    }

    /// Where the tag name starting at `from` ends; checks its characters.
    fn name_end(&self, from: usize) -> Result<usize, String> {
        let bytes = self.bytes();
        let invalid = || format!("invalid tag name at byte {}", from.saturating_sub(1));
        match bytes.get(from) {
            Some(b'-' | b'.' | b'0'..=b'9') | None => return Err(invalid()),
            _ => {}
        }
        let mut i = from;
        while let Some(&b) = bytes.get(i) {
            match b {
                b' ' | b'\t' | b'\r' | b'\n' | b'/' | b'>' => break,
                b'<' | b'&' | b'"' | b'\'' | b'=' | b'!' | b'?' => return Err(invalid()),
                _ => i += 1,
            }
        }
        if i == from { Err(invalid()) } else { Ok(i) }
    }

    /// The end tag at the current position, which must close `open`.
    fn end_tag(&mut self, open: &str) -> Result<(), String> {
        let start = self.pos;
        let name_end = self.name_end(start + 2)?;
        let name = &self.xml[start + 2..name_end];
        let mut i = name_end;
        while self.bytes().get(i).copied().is_some_and(is_xml_space) {
            i += 1;
        }
        if self.bytes().get(i) != Some(&b'>') {
            return Err(format!(
                "end tag </{name}> at byte {start} is not terminated"
            ));
        }
        if name != open {
            return Err(format!(
                "end tag </{name}> at byte {start} does not close <{open}>"
            ));
        }
        self.pos = i + 1;
        Ok(())
    }

    fn stray_end(&self) -> String {
        format!("end tag at byte {} closes nothing", self.pos)
    }

    /// The text of a field element whose start tag was just read, up to and including
    /// its end tag: CDATA and text pieces joined, nested elements skipped.
    fn field_text(&mut self, name: &'a str) -> Result<Cow<'a, str>, String> {
        // The common shapes in one step: `<![CDATA[..]]></name>` and `text</name>`.
        if self.rest().starts_with(b"<![CDATA[") {
            let text = self.cdata()?;
            if self.closes(name) {
                return Ok(Cow::Borrowed(text));
            }
            let mut joined = Some(Cow::Borrowed(text));
            self.field_pieces(name, &mut joined)?;
            return Ok(joined.unwrap_or_default());
        }
        let mut joined = None;
        self.field_pieces(name, &mut joined)?;
        Ok(joined.unwrap_or_default())
    }

    /// Consumes `</name>` when it is next, exactly (the fast path).
    fn closes(&mut self, name: &str) -> bool {
        let rest = self.rest();
        let closes = rest.len() > name.len() + 2
            && rest.starts_with(b"</")
            && &rest[2..2 + name.len()] == name.as_bytes()
            && rest[2 + name.len()] == b'>';
        if closes {
            self.pos += name.len() + 3;
        }
        closes
    }

    /// The general case of [`Self::field_text`].
    fn field_pieces(
        &mut self,
        name: &'a str,
        joined: &mut Option<Cow<'a, str>>,
    ) -> Result<(), String> {
        loop {
            let start = self.pos;
            self.skip_text();
            let raw = trim_xml_space(&self.xml[start..self.pos]);
            if !raw.is_empty() {
                append(joined, unescape(raw)?);
            }
            match self.markup_kind() {
                None => return Err(format!("input ends inside <{name}>")),
                Some(Markup::End) => return self.end_tag(name),
                Some(Markup::CData) => {
                    let text = self.cdata()?;
                    append(joined, Cow::Borrowed(text));
                }
                Some(Markup::Comment | Markup::Instruction) => self.skip_misc()?,
                Some(Markup::Start) => {
                    let nested = self.start_tag()?;
                    if !nested.empty {
                        self.skip_content(nested.name)?;
                    }
                }
            }
        }
    }

    /// Skips the content of an element whose start tag was just read, up to and including
    /// its end tag, checking that nested end tags match.
    fn skip_content(&mut self, name: &'a str) -> Result<(), String> {
        // The common shapes without a stack: CDATA or text, then `</name>`.
        let start = self.pos;
        if self.rest().starts_with(b"<![CDATA[") {
            self.cdata()?;
        } else {
            self.skip_text();
        }
        if self.closes(name) {
            return Ok(());
        }
        self.pos = start;
        let mut open: Vec<&'a str> = vec![name];
        while let Some(&innermost) = open.last() {
            self.skip_text();
            match self.markup_kind() {
                None => {
                    return Err(format!(
                        "input ends inside an element ({} left open)",
                        open.len() + 1
                    ));
                }
                Some(Markup::End) => {
                    self.end_tag(innermost)?;
                    open.pop();
                }
                Some(Markup::CData) => {
                    self.cdata()?;
                }
                Some(Markup::Comment | Markup::Instruction) => self.skip_misc()?,
                Some(Markup::Start) => {
                    let nested = self.start_tag()?;
                    if !nested.empty {
                        open.push(nested.name);
                    }
                }
            }
        }
        Ok(())
    }
}

fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim_xml_space(text: &str) -> &str {
    text.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
}

/// The name without its namespace prefix.
fn local_name(name: &str) -> &[u8] {
    let bytes = name.as_bytes();
    match bytes.iter().rposition(|&b| b == b':') {
        Some(colon) => &bytes[colon + 1..],
        None => bytes,
    }
}

/// Most searches end within a few bytes (field values are short), where a plain loop beats
/// `memchr`'s setup; the long ones (the `Encrypt` text) go to `memchr`.
fn find_byte(bytes: &[u8], needle: u8, from: usize) -> Option<usize> {
    const SHORT: usize = 32;
    let haystack = bytes.get(from..)?;
    let (head, tail) = haystack.split_at(haystack.len().min(SHORT));
    match head.iter().position(|&b| b == needle) {
        Some(i) => Some(from + i),
        None => memchr::memchr(needle, tail).map(|i| from + head.len() + i),
    }
}

/// `needle` (two or three bytes) from `from` on.
fn find(bytes: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let (&first, tail) = needle.split_first()?;
    let mut at = from;
    loop {
        let candidate = find_byte(bytes, first, at)?;
        if bytes.get(candidate + 1..candidate + 1 + tail.len()) == Some(tail) {
            return Some(candidate);
        }
        at = candidate + 1;
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
    fn scanner_checks_end_tags_of_deeply_nested_elements() {
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
                let escaped = quick_xml::escape::escape(*value);
                let cdata = format!("<![CDATA[{}]]>", value.replace("]]>", "]]]]><![CDATA[>"));
                let child = match rng.gen_range(0..6) {
                    0 => format!("<{name}>{cdata}</{name}>"),
                    1 => format!("<{name}>{escaped}</{name}>"),
                    2 => format!("<{name}>\n  {escaped}<!-- c -->\n</{name}>"),
                    // Pieces of CDATA and text, joined.
                    3 => format!("<{name}>{cdata} {escaped} {cdata}</{name}>"),
                    // A nested element (with a `>` in an attribute) is skipped.
                    4 => format!(
                        "<{name}>{escaped}<Inner a=\"1>2\"><Deep>{cdata}</Deep></Inner>x</{name}>"
                    ),
                    _ => format!("<{name}/>"),
                };
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
