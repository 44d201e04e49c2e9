//! Schedule expressions: cron (5 or 6 fields), presets (`@hourly`, ...)
//! and fixed intervals (`@every 30s`), evaluated in an IANA time zone.
//!
//! Pure: no clock is read here; callers pass instants in Unix milliseconds.
//! Time zones come from the tz database bundled into the binary (jiff's
//! `tzdb-bundle-always`), so a machine without `/usr/share/zoneinfo`
//! computes the same ticks.
//!
//! Daylight saving: a tick whose local time does not exist (the hour
//! skipped in spring) runs at the same wall-clock distance after the
//! transition, e.g. 02:30 becomes 03:30; a local time that occurs twice
//! (the hour repeated in autumn) runs once, at its first occurrence.

use std::fmt;

use jiff::tz::TimeZone;

use crate::diagnostic::shown;

/// The longest `@every` interval: 100 years (of 365.25 days). Longer ones
/// are mistakes, and past `i64::MAX` milliseconds they would wrap.
pub const MAX_EVERY_MS: u64 = 100 * 36_525 * 86_400_000;

/// A parsed schedule expression with its time zone.
#[derive(Clone)]
pub struct Spec {
    expr: String,
    tz_name: String,
    tz: TimeZone,
    timing: Timing,
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Spec({:?} in {})", self.expr, self.tz_name)
    }
}

impl PartialEq for Spec {
    fn eq(&self, other: &Spec) -> bool {
        self.expr == other.expr && self.tz_name == other.tz_name
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Timing {
    /// Every `ms` milliseconds, aligned to the Unix epoch (so every server
    /// agrees on the tick instants).
    Every(u64),
    Cron(Box<Fields>),
}

/// One bit per allowed value of each field.
#[derive(Clone, Debug, PartialEq)]
struct Fields {
    seconds: u64,
    minutes: u64,
    hours: u64,
    /// Bits 1..=31.
    days: u64,
    /// Bits 1..=12.
    months: u64,
    /// Bits 0..=6, Sunday is 0.
    weekdays: u64,
    /// Whether day-of-month and day-of-week were both restricted: then a
    /// day matches if either does (as in Vixie cron).
    either_day: bool,
}

/// Why an expression or time zone was refused; the message is for people.
#[derive(Clone, Debug, PartialEq)]
pub enum SpecError {
    Cron(String),
    TimeZone(String),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Cron(m) | SpecError::TimeZone(m) => f.write_str(m),
        }
    }
}

/// Looks up an IANA time zone name (`UTC`, `Europe/Paris`) in the bundled
/// database.
pub fn time_zone(name: &str) -> Result<TimeZone, SpecError> {
    if name.is_empty() || name.eq_ignore_ascii_case("UTC") {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| {
        SpecError::TimeZone(format!(
            "`{}` is not a time zone of the IANA database; write e.g. \"UTC\" or \"Europe/Paris\"",
            shown(name)
        ))
    })
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Spec {
    /// Parses `expr` in time zone `tz` (empty means UTC).
    pub fn parse(expr: &str, tz: &str) -> Result<Spec, SpecError> {
        let zone = time_zone(tz)?;
        let timing = parse_timing(expr.trim()).map_err(SpecError::Cron)?;
        let tz_name = if tz.is_empty() { "UTC".to_string() } else { tz.to_string() };
        Ok(Spec { expr: expr.trim().to_string(), tz_name, tz: zone, timing })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn time_zone(&self) -> &str {
        &self.tz_name
    }

    /// The first tick strictly after `after_ms`; `None` if there is none
    /// within the next years (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match &self.timing {
            Timing::Every(p) => {
                // At most `MAX_EVERY_MS` (checked by `parse`): no cast wraps;
                // past the end of time there is no tick.
                let p = *p as i64;
                (after_ms.div_euclid(p) + 1).checked_mul(p)
            }
            Timing::Cron(f) => self.next_cron(f, after_ms),
        }
    }

    /// The ticks in `(from_ms, to_ms]`, oldest first, at most `limit`.
    pub fn ticks(&self, from_ms: i64, to_ms: i64, limit: usize) -> Vec<i64> {
        let mut out = Vec::new();
        let mut t = from_ms;
        while out.len() < limit {
            match self.next_after(t) {
                Some(n) if n <= to_ms => {
                    out.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        out
    }

    /// The latest `n` ticks in `(from_ms, to_ms]`, oldest first. Looks back
    /// through growing windows, so a long gap of a frequent schedule costs
    /// about `n` ticks, not every tick of the gap.
    pub fn last_ticks(&self, from_ms: i64, to_ms: i64, n: usize) -> Vec<i64> {
        if n == 0 || to_ms <= from_ms {
            return Vec::new();
        }
        const MINUTE: i64 = 60_000;
        for window in [MINUTE, 60 * MINUTE, 1440 * MINUTE, 32 * 1440 * MINUTE, 366 * 1440 * MINUTE, i64::MAX] {
            let start = to_ms.saturating_sub(window).max(from_ms);
            let mut ring = std::collections::VecDeque::with_capacity(n.min(4096));
            let mut t = start;
            while let Some(next) = self.next_after(t).filter(|&x| x <= to_ms) {
                if ring.len() == n {
                    ring.pop_front();
                }
                ring.push_back(next);
                t = next;
            }
            if ring.len() == n || start == from_ms {
                return ring.into();
            }
        }
        Vec::new()
    }

    fn next_cron(&self, f: &Fields, after_ms: i64) -> Option<i64> {
        let after = jiff::Timestamp::from_millisecond(after_ms).ok()?;
        let local = after.to_zoned_datetime(self.tz.clone()).datetime();
        let mut c = Civil {
            year: local.year() as i32,
            month: local.month() as u32,
            day: local.day() as u32,
            hour: local.hour() as u32,
            minute: local.minute() as u32,
            second: local.second() as u32,
        };
        c.add_second();
        let limit_year = c.year + 8;
        loop {
            let found = f.next_match(c, limit_year)?;
            let dt = jiff::civil::DateTime::new(
                found.year as i16,
                found.month as i8,
                found.day as i8,
                found.hour as i8,
                found.minute as i8,
                found.second as i8,
                0,
            )
            .ok()?;
            let at = self.tz.to_ambiguous_zoned_datetime(dt).compatible().ok()?.timestamp().as_millisecond();
            // Around a daylight-saving change a later local time can map to
            // an instant at or before `after`: keep looking.
            if at > after_ms {
                return Some(at);
            }
            c = found;
            c.add_second();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Civil {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// 0 = Sunday (Sakamoto's method).
fn weekday(year: i32, month: u32, day: u32) -> u32 {
    const T: [i32; 12] = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4];
    let y = if month < 3 { year - 1 } else { year };
    ((y + y / 4 - y / 100 + y / 400 + T[month as usize - 1] + day as i32).rem_euclid(7)) as u32
}

impl Civil {
    fn add_second(&mut self) {
        self.second += 1;
        if self.second == 60 {
            self.second = 0;
            self.next_minute();
        }
    }
    fn next_minute(&mut self) {
        self.second = 0;
        self.minute += 1;
        if self.minute == 60 {
            self.next_hour();
        }
    }
    fn next_hour(&mut self) {
        self.second = 0;
        self.minute = 0;
        self.hour += 1;
        if self.hour == 24 {
            self.next_day();
        }
    }
    fn next_day(&mut self) {
        self.second = 0;
        self.minute = 0;
        self.hour = 0;
        self.day += 1;
        if self.day > days_in_month(self.year, self.month) {
            self.next_month();
        }
    }
    fn next_month(&mut self) {
        self.second = 0;
        self.minute = 0;
        self.hour = 0;
        self.day = 1;
        self.month += 1;
        if self.month == 13 {
            self.month = 1;
            self.year += 1;
        }
    }
}

fn has(bits: u64, v: u32) -> bool {
    bits & (1 << v) != 0
}

impl Fields {
    fn day_matches(&self, c: &Civil) -> bool {
        let dom = has(self.days, c.day);
        let dow = has(self.weekdays, weekday(c.year, c.month, c.day));
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first local time at or after `c` that the fields allow.
    fn next_match(&self, mut c: Civil, limit_year: i32) -> Option<Civil> {
        loop {
            if c.year > limit_year {
                return None;
            }
            if !has(self.months, c.month) {
                c.next_month();
            } else if !self.day_matches(&c) {
                c.next_day();
            } else if !has(self.hours, c.hour) {
                c.next_hour();
            } else if !has(self.minutes, c.minute) {
                c.next_minute();
            } else if !has(self.seconds, c.second) {
                c.add_second();
            } else {
                return Some(c);
            }
        }
    }
}

fn parse_timing(expr: &str) -> Result<Timing, String> {
    if let Some(rest) = expr.strip_prefix("@every") {
        let d = humantime::parse_duration(rest.trim())
            .map_err(|e| format!("`@every {}`: not a duration ({e}); write e.g. \"@every 30s\"", shown(rest.trim())))?;
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if ms < 1000 || !ms.is_multiple_of(1000) {
            return Err(format!("`{}`: the interval must be a whole number of seconds, at least 1s", shown(expr)));
        }
        if ms > MAX_EVERY_MS {
            return Err(format!("`{}`: the interval must be at most 100 years", shown(expr)));
        }
        return Ok(Timing::Every(ms));
    }
    let expanded = match expr {
        "@yearly" | "@annually" => "0 0 0 1 1 *",
        "@monthly" => "0 0 0 1 * *",
        "@weekly" => "0 0 0 * * 0",
        "@daily" | "@midnight" => "0 0 0 * * *",
        "@hourly" => "0 0 * * * *",
        e if e.starts_with('@') => {
            return Err(format!(
                "unknown preset `{}`; use @yearly, @monthly, @weekly, @daily, @hourly or @every <duration>",
                shown(e)
            ))
        }
        e => e,
    };
    let parts: Vec<&str> = expanded.split_whitespace().collect();
    let (sec, rest) = match parts.len() {
        5 => ("0", &parts[..]),
        6 => (parts[0], &parts[1..]),
        n => {
            return Err(format!(
                "`{}` has {n} field(s); a cron expression has 5 (minute hour day month weekday) or 6 (second first)",
                shown(expr)
            ))
        }
    };
    let field = |name: &str, text: &str, lo: u32, hi: u32, names: &[&str]| {
        parse_field(text, lo, hi, names).map_err(|m| format!("`{}`: {name} field `{}`: {m}", shown(expr), shown(text)))
    };
    let seconds = field("second", sec, 0, 59, &[])?;
    let minutes = field("minute", rest[0], 0, 59, &[])?;
    let hours = field("hour", rest[1], 0, 23, &[])?;
    let days = field("day-of-month", rest[2], 1, 31, &[])?;
    let months = field("month", rest[3], 1, 12, &MONTHS)?;
    let mut weekdays = field("day-of-week", rest[4], 0, 7, &WEEKDAYS)?;
    if has(weekdays, 7) {
        weekdays = (weekdays | 1) & !(1 << 7);
    }
    let star = |s: &str| s == "*" || s == "?";
    Ok(Timing::Cron(Box::new(Fields {
        seconds,
        minutes,
        hours,
        days,
        months,
        weekdays,
        either_day: !star(rest[2]) && !star(rest[4]),
    })))
}

fn parse_value(s: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    // Names count from `lo` (months from 1, weekdays from 0).
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(lo + i as u32);
    }
    let v: u32 = s.parse().map_err(|_| format!("`{}` is not a number", shown(s)))?;
    if v < lo || v > hi {
        return Err(format!("{v} is out of range {lo}-{hi}"));
    }
    Ok(v)
}

fn parse_field(text: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err("empty list item".into());
        }
        if item.contains(['L', 'W', '#']) {
            return Err("L, W and # are not supported".into());
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("step `{}` is not a number", shown(s)))?;
                if step == 0 {
                    return Err("a step cannot be 0".into());
                }
                (r, step)
            }
            None => (item, 1),
        };
        let (a, b) = if range == "*" || range == "?" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (parse_value(a, lo, hi, names)?, parse_value(b, lo, hi, names)?);
            if a > b {
                return Err(format!("range {a}-{b} runs backwards"));
            }
            (a, b)
        } else {
            let a = parse_value(range, lo, hi, names)?;
            // `5/15` means from 5 to the end, every 15.
            (a, if step > 1 || item.contains('/') { hi } else { a })
        };
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    fn show(t: i64) -> String {
        jiff::Timestamp::from_millisecond(t).unwrap().to_string()
    }

    fn next_n(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let s = Spec::parse(expr, tz).unwrap();
        s.ticks(ms(from), i64::MAX, n).into_iter().map(show).collect()
    }

    #[test]
    fn five_and_six_fields() {
        assert_eq!(
            next_n("*/15 * * * *", "", "2026-01-01T00:07:00Z", 3),
            ["2026-01-01T00:15:00Z", "2026-01-01T00:30:00Z", "2026-01-01T00:45:00Z"]
        );
        assert_eq!(
            next_n("*/20 * * * * *", "UTC", "2026-01-01T00:00:00Z", 3),
            ["2026-01-01T00:00:20Z", "2026-01-01T00:00:40Z", "2026-01-01T00:01:00Z"]
        );
        assert_eq!(
            next_n("0 9 * * mon-fri", "", "2026-01-02T10:00:00Z", 2),
            ["2026-01-05T09:00:00Z", "2026-01-06T09:00:00Z"]
        );
        assert_eq!(next_n("0 0 29 feb *", "", "2026-01-01T00:00:00Z", 1), ["2028-02-29T00:00:00Z"]);
        // Day-of-month and day-of-week both given: either matches.
        assert_eq!(
            next_n("0 0 13 * fri", "", "2026-02-01T00:00:00Z", 2),
            ["2026-02-06T00:00:00Z", "2026-02-13T00:00:00Z"]
        );
        assert_eq!(next_n("0 0 * * 7", "", "2026-01-01T00:00:00Z", 1), ["2026-01-04T00:00:00Z"]);
        assert_eq!(Spec::parse("0 0 30 2 *", "").unwrap().next_after(0), None);
    }

    #[test]
    fn presets_and_intervals() {
        assert_eq!(next_n("@hourly", "", "2026-01-01T00:00:00Z", 2), ["2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"]);
        assert_eq!(next_n("@daily", "Europe/Paris", "2026-01-01T12:00:00Z", 1), ["2026-01-01T23:00:00Z"]);
        assert_eq!(
            next_n("@every 30s", "", "2026-01-01T00:00:10Z", 2),
            ["2026-01-01T00:00:30Z", "2026-01-01T00:01:00Z"]
        );
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        // 09:00 in Paris is 08:00Z in winter, 07:00Z in summer.
        assert_eq!(
            next_n("0 9 * * *", "Europe/Paris", "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T07:00:00Z", "2026-03-30T07:00:00Z"]
        );
        // 02:30 does not exist on 2026-03-29 in Paris: it runs at 03:30 local.
        assert_eq!(
            next_n("30 2 * * *", "Europe/Paris", "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"]
        );
        // Every 30 minutes across the skipped hour: no tick twice, none lost
        // more than the hour that does not exist.
        assert_eq!(
            next_n("*/30 * * * *", "Europe/Paris", "2026-03-29T00:15:00Z", 4),
            ["2026-03-29T00:30:00Z", "2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z", "2026-03-29T02:00:00Z"]
        );
        // 02:30 occurs twice on 2026-10-25: it runs once.
        assert_eq!(
            next_n("30 2 * * *", "Europe/Paris", "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
    }

    #[test]
    fn last_ticks_looks_back_cheaply() {
        let s = Spec::parse("* * * * * *", "").unwrap();
        let to = ms("2026-01-08T00:00:00Z");
        let got = s.last_ticks(ms("2026-01-01T00:00:00Z"), to, 3);
        assert_eq!(got, [to - 2000, to - 1000, to]);
        let d = Spec::parse("@daily", "").unwrap();
        assert_eq!(d.last_ticks(ms("2025-01-01T00:00:00Z"), to, 1), [to]);
        assert_eq!(d.last_ticks(to - 1000, to + 1000, 5), [to]);
        assert!(d.last_ticks(to, to + 1000, 5).is_empty());
    }

    #[test]
    fn intervals_are_bounded_and_ticks_never_wrap() {
        // Found by the property tests: 300,000,000 years are more
        // milliseconds than an i64 holds; the interval wrapped negative and
        // `last_ticks` never ended.
        assert_eq!(
            Spec::parse("@every 300000000 years", "").unwrap_err().to_string(),
            "`@every 300000000 years`: the interval must be at most 100 years"
        );
        assert!(Spec::parse("@every 600000000 years", "").is_err());
        let s = Spec::parse("@every 100 years", "").unwrap();
        assert_eq!(s.next_after(i64::MAX - 1000), None);
        assert_eq!(Spec::parse("@every 1s", "").unwrap().next_after(i64::MAX - 10), None);
        let last = s.last_ticks(i64::MIN, i64::MAX, 2);
        assert!(last.len() == 2 && last[0] < last[1], "{last:?}");
        // A long expression is quoted short.
        let long = format!("{} * * * *", "1".repeat(10_000));
        assert!(Spec::parse(&long, "").unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn errors_name_the_field() {
        let err = |e: &str, tz: &str| Spec::parse(e, tz).unwrap_err().to_string();
        assert_eq!(err("61 * * * *", ""), "`61 * * * *`: minute field `61`: 61 is out of range 0-59");
        assert_eq!(
            err("* * *", ""),
            "`* * *` has 3 field(s); a cron expression has 5 (minute hour day month weekday) or 6 (second first)"
        );
        assert_eq!(err("0 0 * foo *", ""), "`0 0 * foo *`: month field `foo`: `foo` is not a number");
        assert_eq!(err("0 0 L * *", ""), "`0 0 L * *`: day-of-month field `L`: L, W and # are not supported");
        assert_eq!(
            err("@often", ""),
            "unknown preset `@often`; use @yearly, @monthly, @weekly, @daily, @hourly or @every <duration>"
        );
        assert_eq!(
            err("@every 1500ms", ""),
            "`@every 1500ms`: the interval must be a whole number of seconds, at least 1s"
        );
        assert_eq!(
            err("@daily", "Mars/Olympus"),
            "`Mars/Olympus` is not a time zone of the IANA database; write e.g. \"UTC\" or \"Europe/Paris\""
        );
    }
}
