//! Opaque pagination cursors of A1 and A6.
//!
//! A cursor names the position after the last item returned, in creation order (links by
//! creation sequence, customers by arrival), never an offset into the current list: so a
//! link created or deleted between two pages neither repeats nor hides a surviving one.
//! The text is base64 so callers treat it as opaque, as they must with WeCom's.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a cursor pages through; a cursor of one kind is refused by the other API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorKind {
    /// A1: links, scope 0.
    Links,
    /// A6: customers of the link whose creation sequence is the scope.
    Customers,
}

impl CursorKind {
    fn tag(self) -> &'static str {
        match self {
            CursorKind::Links => "l",
            CursorKind::Customers => "c",
        }
    }
}

/// Encodes "resume after `position`" for `kind` within `scope`.
pub fn encode(kind: CursorKind, scope: u64, position: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("sim1:{}:{scope}:{position}", kind.tag()))
}

/// Decodes a cursor made by [`encode`] for the same kind and scope; `None` for anything else.
pub fn decode(kind: CursorKind, scope: u64, cursor: &str) -> Option<u64> {
    let raw = URL_SAFE_NO_PAD.decode(cursor.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.split(':');
    if parts.next()? != "sim1" || parts.next()? != kind.tag() {
        return None;
    }
    let got_scope: u64 = parts.next()?.parse().ok()?;
    let position: u64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || got_scope != scope {
        return None;
    }
    Some(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = encode(CursorKind::Customers, 7, 1000);
        assert_eq!(decode(CursorKind::Customers, 7, &c), Some(1000));
    }

    #[test]
    fn refuses_foreign_or_mangled_cursors() {
        let c = encode(CursorKind::Customers, 7, 1000);
        assert_eq!(decode(CursorKind::Customers, 8, &c), None);
        assert_eq!(decode(CursorKind::Links, 7, &c), None);
        assert_eq!(decode(CursorKind::Links, 0, "not a cursor!"), None);
        assert_eq!(decode(CursorKind::Links, 0, "c2ltMTpsOjA6"), None);
    }
}
