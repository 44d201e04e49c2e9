//! Times as people read them: wall-clock in the local time zone (`TZ`),
//! and how far from now (`in 14 m`, `3 s ago`).

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `2026-12-05 13:04:05 CET`, in the local time zone.
pub fn local(ms: u64) -> String {
    format_local(ms, "%Y-%m-%d %H:%M:%S %Z")
}

/// `2026-12-05 13:04:05.123`, in the local time zone (timeline turns).
pub fn local_precise(ms: u64) -> String {
    format_local(ms, "%Y-%m-%d %H:%M:%S%.3f")
}

fn format_local(ms: u64, format: &str) -> String {
    match jiff::Timestamp::from_millisecond(ms as i64) {
        Ok(t) => t.to_zoned_datetime(jiff::tz::TimeZone::system()).strftime(format).to_string(),
        Err(_) => format!("{ms} ms"),
    }
}

/// How far `ms` is from `now_ms`: `in 14 m`, `3 s ago`, `now`.
pub fn relative(ms: u64, now_ms: u64) -> String {
    let (d, future) = if ms >= now_ms { (ms - now_ms, true) } else { (now_ms - ms, false) };
    let s = d / 1000;
    let span = match s {
        0 => return "now".into(),
        1..=59 => format!("{s} s"),
        60..=3599 => format!("{} m", s / 60),
        3600..=86_399 => match (s / 3600, s % 3600 / 60) {
            (h, 0) => format!("{h} h"),
            (h, m) => format!("{h} h {m} m"),
        },
        _ => match (s / 86_400, s % 86_400 / 3600) {
            (d, 0) => format!("{d} d"),
            (d, h) => format!("{d} d {h} h"),
        },
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// `2026-12-05 13:04:05 CET (in 14 m)`.
pub fn both(ms: u64, now_ms: u64) -> String {
    format!("{} ({})", local(ms), relative(ms, now_ms))
}

#[cfg(test)]
mod tests {
    use super::relative;

    #[test]
    fn distances_read_short() {
        let now = 1_000_000_000;
        let cases = [
            (now, "now"),
            (now + 400, "now"),
            (now - 3_000, "3 s ago"),
            (now + 14 * 60_000 + 5_000, "in 14 m"),
            (now - 3_600_000, "1 h ago"),
            (now + 2 * 3_600_000 + 5 * 60_000, "in 2 h 5 m"),
            (now + 2 * 86_400_000, "in 2 d"),
            (now - 86_400_000 - 3 * 3_600_000, "1 d 3 h ago"),
        ];
        for (ms, text) in cases {
            assert_eq!(relative(ms, now), text, "{ms}");
        }
    }

    #[test]
    fn local_times_follow_the_time_zone() {
        // The test cannot set TZ for the process safely; UTC through jiff.
        let t = jiff::Timestamp::from_millisecond(1_764_939_845_123).unwrap();
        assert_eq!(
            t.to_zoned_datetime(jiff::tz::TimeZone::UTC).strftime("%Y-%m-%d %H:%M:%S%.3f").to_string(),
            "2025-12-05 13:04:05.123"
        );
        assert!(super::local(1_764_939_845_123).starts_with("2025-12-0"));
    }
}
