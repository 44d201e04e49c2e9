//! The W3C `traceparent` header (Trace Context, level 1): parsed strictly,
//! since it arrives from clients and is stored with workflows.
//!
//! `00-<trace id: 32 hex>-<parent id: 16 hex>-<flags: 2 hex>`, lowercase.
//! A later version may append fields after a `-`; they are dropped, and the
//! header is re-emitted as version 00. Anything else (uppercase, all-zero
//! ids, version `ff`, stray bytes, an oversized value) is no parent at all:
//! the caller starts a new trace instead of failing or storing the text.

use std::fmt;

/// Longest `traceparent` looked at; a longer one is ignored unread.
pub const MAX_LEN: usize = 512;

/// Longest `tracestate` passed on; a longer one is dropped.
pub const MAX_STATE_LEN: usize = 512;

/// A valid `traceparent`: always written back in its canonical form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Sampled: the caller records this trace.
    pub const SAMPLED: u8 = 0x01;

    /// `None` for anything that is not a valid header.
    pub fn parse(s: &str) -> Option<TraceParent> {
        let s = s.trim_matches([' ', '\t']);
        if s.len() < 55 || s.len() > MAX_LEN || !s.is_ascii() {
            return None;
        }
        let b = s.as_bytes();
        let version = hex_byte(&b[0..2])?;
        if version == 0xff || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        // Version 00 has exactly four fields; a later one may have more.
        if (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&b[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, out) in parent_id.iter_mut().enumerate() {
            *out = hex_byte(&b[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&b[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent { trace_id, parent_id, flags })
    }

    pub fn sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex digits (as log lines show it).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.parent_id), self.flags)
    }
}

/// A `tracestate` worth passing on: bounded and plain printable ASCII (its
/// members are checked again by OpenTelemetry, which drops a bad one).
pub fn valid_state(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_STATE_LEN && s.bytes().all(|c| (0x20..0x7f).contains(&c))
}

/// The trace id of a stored `traceparent`, for log lines; `None` if it is
/// not one.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    TraceParent::parse(traceparent).map(|t| t.trace_id_hex())
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_writes_back_a_valid_header() {
        let t = TraceParent::parse(GOOD).expect("valid");
        assert_eq!(t.to_string(), GOOD);
        assert!(t.sampled());
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace_id_of(GOOD).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let unsampled = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").expect("valid");
        assert!(!unsampled.sampled());
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let t = TraceParent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds")
            .expect("a later version with more fields");
        assert_eq!(t.to_string(), GOOD);
        assert_eq!(TraceParent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"), None);
    }

    #[test]
    fn refuses_malformed_headers() {
        let bad = [
            "",
            "00",
            "garbage",
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff, and version 00 with a trailing field.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
            // Wrong separators and lengths.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            // Not hex, not ASCII.
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\u{0}",
        ];
        for b in bad {
            assert_eq!(TraceParent::parse(b), None, "{b:?}");
        }
    }

    #[test]
    fn an_oversized_header_is_not_read() {
        let huge = format!("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}", "a".repeat(MAX_LEN));
        assert_eq!(TraceParent::parse(&huge), None);
        assert_eq!(TraceParent::parse(&"-".repeat(1 << 20)), None);
    }

    #[test]
    fn tracestate_is_bounded_and_printable() {
        assert!(valid_state("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));
        assert!(!valid_state(""));
        assert!(!valid_state(&"a=b,".repeat(200)));
        assert!(!valid_state("a=b\nc=d"));
    }
}
