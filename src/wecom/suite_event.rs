//! The instruction callbacks of a third-party suite (指令回调, path/90628, 90642): the
//! `suite_ticket` pushed every 10 minutes, and the authorisation lifecycle of a corp
//! (`create_auth` with an AuthCode, `change_auth`, `cancel_auth`, `reset_permanent_code`).
//! They carry `SuiteId` and `InfoType` but no `ChangeType`, so they are parsed here, not
//! by [`super::event::parse_event`]. Debug never shows a ticket or an AuthCode.

use super::event::{EventError, push_cdata, read_root_fields};

/// What a suite callback says.
#[derive(Clone, PartialEq, Eq)]
pub enum SuiteInfo {
    /// The latest suite_ticket (valid 30 minutes; always use the newest).
    SuiteTicket { ticket: String },
    /// A corp authorised the suite; the AuthCode is valid 10 minutes, once.
    CreateAuth { auth_code: String },
    /// A corp changed the authorisation (visible range, permissions).
    ChangeAuth { auth_corp_id: String },
    /// A corp cancelled the authorisation: its permanent code and tokens are void.
    CancelAuth { auth_corp_id: String },
    /// The permanent code was reset: the AuthCode gives the new one.
    ResetPermanentCode { auth_code: String },
    /// Any other InfoType (contacts changes, orders...): not ours.
    Other { info_type: String },
}

impl std::fmt::Debug for SuiteInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SuiteInfo::SuiteTicket { .. } => f.write_str("SuiteTicket(<redacted>)"),
            SuiteInfo::CreateAuth { .. } => f.write_str("CreateAuth(<redacted>)"),
            SuiteInfo::ResetPermanentCode { .. } => f.write_str("ResetPermanentCode(<redacted>)"),
            SuiteInfo::ChangeAuth { auth_corp_id } => write!(f, "ChangeAuth({auth_corp_id})"),
            SuiteInfo::CancelAuth { auth_corp_id } => write!(f, "CancelAuth({auth_corp_id})"),
            SuiteInfo::Other { info_type } => write!(f, "Other({info_type})"),
        }
    }
}

impl SuiteInfo {
    /// The InfoType element.
    pub fn info_type(&self) -> &str {
        match self {
            SuiteInfo::SuiteTicket { .. } => "suite_ticket",
            SuiteInfo::CreateAuth { .. } => "create_auth",
            SuiteInfo::ChangeAuth { .. } => "change_auth",
            SuiteInfo::CancelAuth { .. } => "cancel_auth",
            SuiteInfo::ResetPermanentCode { .. } => "reset_permanent_code",
            SuiteInfo::Other { info_type } => info_type,
        }
    }
}

/// One decrypted suite callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteEvent {
    pub suite_id: String,
    pub info: SuiteInfo,
    /// `TimeStamp`, Unix seconds.
    pub timestamp: i64,
}

#[derive(Clone, Copy)]
enum Field {
    SuiteId,
    InfoType,
    TimeStamp,
    SuiteTicket,
    AuthCode,
    AuthCorpId,
}

/// Parses a decrypted suite callback.
pub fn parse_suite_event(xml: &str) -> Result<SuiteEvent, EventError> {
    let mut suite_id = None;
    let mut info_type = None;
    let mut timestamp = None;
    let mut ticket = None;
    let mut auth_code = None;
    let mut auth_corp_id = None;
    read_root_fields(
        xml,
        |name| {
            Some(match name {
                b"SuiteId" => Field::SuiteId,
                b"InfoType" => Field::InfoType,
                b"TimeStamp" => Field::TimeStamp,
                b"SuiteTicket" => Field::SuiteTicket,
                b"AuthCode" => Field::AuthCode,
                b"AuthCorpId" => Field::AuthCorpId,
                _ => return None,
            })
        },
        |field, text| {
            let text = (!text.trim().is_empty()).then(|| text.trim().to_string());
            match field {
                Field::SuiteId => suite_id = text,
                Field::InfoType => info_type = text,
                Field::TimeStamp => timestamp = text,
                Field::SuiteTicket => ticket = text,
                Field::AuthCode => auth_code = text,
                Field::AuthCorpId => auth_corp_id = text,
            }
        },
    )
    .map_err(EventError::MalformedXml)?;
    let suite_id = suite_id.ok_or(EventError::MissingField("SuiteId"))?;
    let info_type = info_type.ok_or(EventError::MissingField("InfoType"))?;
    let timestamp = match timestamp {
        Some(value) => value
            .parse::<i64>()
            .ok()
            .filter(|t| (0..=253_402_300_799).contains(t))
            .ok_or(EventError::InvalidNumber {
                field: "TimeStamp",
                value: value.chars().take(32).collect(),
            })?,
        None => return Err(EventError::MissingField("TimeStamp")),
    };
    let info = match info_type.as_str() {
        "suite_ticket" => SuiteInfo::SuiteTicket {
            ticket: ticket.ok_or(EventError::MissingField("SuiteTicket"))?,
        },
        "create_auth" => SuiteInfo::CreateAuth {
            auth_code: auth_code.ok_or(EventError::MissingField("AuthCode"))?,
        },
        "reset_permanent_code" => SuiteInfo::ResetPermanentCode {
            auth_code: auth_code.ok_or(EventError::MissingField("AuthCode"))?,
        },
        "change_auth" => SuiteInfo::ChangeAuth {
            auth_corp_id: auth_corp_id.ok_or(EventError::MissingField("AuthCorpId"))?,
        },
        "cancel_auth" => SuiteInfo::CancelAuth {
            auth_corp_id: auth_corp_id.ok_or(EventError::MissingField("AuthCorpId"))?,
        },
        _ => SuiteInfo::Other { info_type },
    };
    Ok(SuiteEvent {
        suite_id,
        info,
        timestamp,
    })
}

/// The XML WeCom sends for `event` (the simulator's side).
pub fn render_suite_event(event: &SuiteEvent) -> String {
    let mut xml = String::from("<xml>");
    push_cdata(&mut xml, "SuiteId", &event.suite_id);
    match &event.info {
        SuiteInfo::CreateAuth { auth_code } | SuiteInfo::ResetPermanentCode { auth_code } => {
            push_cdata(&mut xml, "AuthCode", auth_code);
        }
        _ => {}
    }
    push_cdata(&mut xml, "InfoType", event.info.info_type());
    xml.push_str(&format!("<TimeStamp>{}</TimeStamp>", event.timestamp));
    match &event.info {
        SuiteInfo::SuiteTicket { ticket } => push_cdata(&mut xml, "SuiteTicket", ticket),
        SuiteInfo::ChangeAuth { auth_corp_id } | SuiteInfo::CancelAuth { auth_corp_id } => {
            push_cdata(&mut xml, "AuthCorpId", auth_corp_id);
        }
        _ => {}
    }
    xml.push_str("</xml>");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_suite_ticket_sample() {
        let xml = "<xml><SuiteId><![CDATA[ww4asffe99e54c0fxxxx]]></SuiteId>\
            <InfoType> <![CDATA[suite_ticket]]></InfoType>\
            <TimeStamp>1403610513</TimeStamp>\
            <SuiteTicket><![CDATA[asdfasfdasdfasdf]]></SuiteTicket></xml>";
        let event = parse_suite_event(xml).unwrap();
        assert_eq!(event.suite_id, "ww4asffe99e54c0fxxxx");
        assert_eq!(event.timestamp, 1403610513);
        assert_eq!(
            event.info,
            SuiteInfo::SuiteTicket {
                ticket: "asdfasfdasdfasdf".into()
            }
        );
        assert!(!format!("{event:?}").contains("asdfasfdasdfasdf"));
    }

    #[test]
    fn every_lifecycle_event_round_trips() {
        for info in [
            SuiteInfo::SuiteTicket { ticket: "t".into() },
            SuiteInfo::CreateAuth {
                auth_code: "code".into(),
            },
            SuiteInfo::ChangeAuth {
                auth_corp_id: "wwcorp".into(),
            },
            SuiteInfo::CancelAuth {
                auth_corp_id: "wwcorp".into(),
            },
            SuiteInfo::ResetPermanentCode {
                auth_code: "code2".into(),
            },
        ] {
            let event = SuiteEvent {
                suite_id: "wwsuite".into(),
                info,
                timestamp: 1_700_000_000,
            };
            assert_eq!(
                parse_suite_event(&render_suite_event(&event)).unwrap(),
                event
            );
        }
    }

    #[test]
    fn a_create_auth_without_its_code_is_refused() {
        let xml = "<xml><SuiteId>s</SuiteId><InfoType>create_auth</InfoType><TimeStamp>1</TimeStamp></xml>";
        assert_eq!(
            parse_suite_event(xml).unwrap_err(),
            EventError::MissingField("AuthCode")
        );
    }
}
