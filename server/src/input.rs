//! Names and ids from clients: required where they must be, bounded in
//! length, plain characters, and errors that quote at most a short prefix
//! of what was sent (a megabyte-long name must not come back whole in a
//! status, which travels in gRPC metadata).

use stoa_rules::diagnostic::shown;
use tonic::Status;

fn bad(field: &str, value: &str, rule: &str) -> Status {
    if value.is_empty() {
        return Status::invalid_argument(format!("{field}: required; {rule}"));
    }
    Status::invalid_argument(format!("{field}: `{}` is not valid; {rule}", shown(value)))
}

pub fn pack_name(field: &str, s: &str) -> Result<(), Status> {
    if stoa_rules::manifest::valid_pack_name(s) {
        return Ok(());
    }
    Err(bad(field, s, "a pack name is 1 to 128 letters, digits, `-`, `_` or `.`"))
}

pub fn version(field: &str, s: &str) -> Result<(), Status> {
    if stoa_rules::manifest::valid_version(s) {
        return Ok(());
    }
    Err(bad(field, s, "a version is 1 to 64 characters, without spaces"))
}

pub fn fact_type(field: &str, s: &str) -> Result<(), Status> {
    if stoa_rules::value::valid_type_name(s) {
        return Ok(());
    }
    Err(bad(field, s, stoa_rules::sandbox::TYPE_NAME_RULE))
}

/// A field name of a fact from a client: 1 to 128 bytes, no control
/// characters, not reserved (`_id`, `_type`).
pub fn field_name(field: &str, s: &str) -> Result<(), Status> {
    if s.is_empty() || s.len() > 128 || s.chars().any(char::is_control) {
        return Err(bad(field, s, "a field name is 1 to 128 characters, none of them a control character"));
    }
    if s.starts_with('_') {
        return Err(bad(field, s, "names starting with `_` are reserved"));
    }
    Ok(())
}

/// An id chosen by the client (a request id): 1 to 256 bytes, no control
/// characters.
pub fn client_id(field: &str, s: &str) -> Result<(), Status> {
    if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
        return Err(bad(field, s, "1 to 256 bytes, without control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_bad_name_is_quoted_short() {
        let long = "x".repeat(1 << 20);
        let e = pack_name("pack", &format!("{long}/")).unwrap_err();
        assert!(e.message().len() < 200, "{}", e.message().len());
        assert!(e.message().starts_with("pack: `xxxx"), "{}", e.message());
        assert!(e.message().contains("(1048577 bytes)"), "{}", e.message());
        let e = fact_type("facts[0].type", "Job\0").unwrap_err();
        assert_eq!(
            e.message(),
            "facts[0].type: `Job\u{fffd}… (4 bytes)` is not valid; a fact type is an upper-case letter, then letters, digits or `_` (at most 128)"
        );
        assert_eq!(pack_name("pack", "").unwrap_err().message().split(';').next(), Some("pack: required"));
        assert!(field_name("f", "_id").is_err() && client_id("r", "a\nb").is_err() && version("v", "1 0").is_err());
        assert!(pack_name("p", "video-encode").is_ok() && fact_type("t", "Job_2").is_ok());
    }
}
