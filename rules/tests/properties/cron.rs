//! Schedule expressions and time zones: random and cron-shaped ones parse
//! or are refused with a message, and every tick computation of one that
//! parses ends soon with ticks in order, inside the asked window.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use stoa_rules::cron::Spec;

use crate::support::{bounded, check};

fn number() -> BoxedStrategy<String> {
    prop_oneof![
        6 => (0u32..62).prop_map(|n| n.to_string()),
        1 => any::<u32>().prop_map(|n| n.to_string()),
        1 => select(&["-1", "007", "4294967296", "99999999999999999999", "1.5", "+3", ""][..]).prop_map(String::from),
    ]
    .boxed()
}

fn field() -> BoxedStrategy<String> {
    let item = prop_oneof![
        4 => Just("*".to_string()),
        1 => Just("?".to_string()),
        5 => number(),
        3 => (number(), number()).prop_map(|(a, b)| format!("{a}-{b}")),
        3 => (prop_oneof![Just("*".to_string()), number()], number()).prop_map(|(a, s)| format!("{a}/{s}")),
        1 => (number(), number(), number()).prop_map(|(a, b, s)| format!("{a}-{b}/{s}")),
        2 => select(&["jan", "DEC", "mon", "Fri", "sun-sat", "mon-fri", "jan-mar", "feb/2"][..]).prop_map(String::from),
        1 => select(&["L", "W", "15W", "5#3", "/", "-", ",", "**", "*/0", "\u{0}", "é"][..]).prop_map(String::from),
    ];
    vec(item, 1..4).prop_map(|v| v.join(",")).boxed()
}

/// Cron-shaped, preset and interval expressions, and some noise.
pub fn expression() -> BoxedStrategy<String> {
    prop_oneof![
        6 => vec(field(), 5..=6).prop_map(|f| f.join(" ")),
        1 => vec(field(), 0..9).prop_map(|f| f.join(" ")),
        2 => select(&["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly", "@often", "@", "@every"][..])
            .prop_map(String::from),
        2 => crate::manifest::duration().prop_map(|d| format!("@every {d}")),
        1 => "\\PC{0,24}",
    ]
    .boxed()
}

pub fn time_zone() -> BoxedStrategy<String> {
    prop_oneof![
        6 => select(&[
            "UTC", "utc", "", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham",
            "Asia/Kathmandu", "America/Santiago", "Africa/Casablanca", "Antarctica/Troll", "Pacific/Apia",
            "Europe/Dublin", "Etc/GMT+12", "Etc/GMT-14", "America/St_Johns", "Asia/Tehran",
        ][..])
        .prop_map(String::from),
        1 => select(&["Mars/Olympus", "../../etc/passwd", "/etc/localtime", "Europe/Paris\u{0}", "EST5EDT,M3.2.0,M11.1.0", "posix:UTC"][..])
            .prop_map(String::from),
        1 => "\\PC{0,20}",
    ]
    .boxed()
}

/// Instants from the far past to the far future, most of them near now.
fn instant() -> BoxedStrategy<i64> {
    prop_oneof![
        6 => 1_500_000_000_000i64..2_100_000_000_000,
        2 => -62_000_000_000_000i64..253_000_000_000_000,
        1 => select(&[i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX, 253_402_300_799_000][..]),
    ]
    .boxed()
}

#[test]
fn expressions_parse_or_are_refused_and_ticks_stay_bounded() {
    let strategy = (expression(), time_zone(), instant(), 0i64..40 * 24 * 3_600_000, 0usize..20);
    check("cron", 256, strategy, |(expr, tz, from, span, n)| {
        let (e, z) = (expr.clone(), tz.clone());
        let out = bounded(format!("{expr:?} in {tz:?}"), move || {
            let spec = match Spec::parse(&e, &z) {
                Ok(s) => s,
                Err(err) => return Err(err.to_string()),
            };
            let to = from.saturating_add(span);
            let next = spec.next_after(from);
            let ticks = spec.ticks(from, to, n);
            let last = spec.last_ticks(from, to, n);
            Ok((next, ticks, last, to))
        });
        let (next, ticks, last, to) = match out {
            Ok(r) => r,
            Err(msg) => {
                prop_assert!(!msg.is_empty() && !msg.contains('\n'), "message {:?}", msg);
                return Ok(());
            }
        };
        if let Some(t) = next {
            prop_assert!(t > from, "next tick {} is not after {}", t, from);
        }
        for list in [&ticks, &last] {
            prop_assert!(list.len() <= n);
            prop_assert!(list.windows(2).all(|w| w[0] < w[1]), "ticks out of order: {:?}", list);
            prop_assert!(list.iter().all(|t| *t > from && *t <= to), "a tick outside ({}, {}]: {:?}", from, to, list);
        }
        if let (Some(first), Some(t)) = (ticks.first(), next) {
            prop_assert_eq!(*first, t);
        }
        // The latest ticks are the latest: nothing after them in the window.
        if let Some(l) = last.last() {
            let (e, z, l) = (expr.clone(), tz.clone(), *l);
            let after = bounded("next after the last", move || Spec::parse(&e, &z).ok().and_then(|s| s.next_after(l)));
            prop_assert!(after.is_none_or(|a| a > to), "{:?} comes after the latest tick {}", after, l);
        }
        Ok(())
    });
}

#[test]
fn huge_intervals_are_refused_or_tick_forward() {
    for expr in [
        "@every 292471208 years",
        "@every 300000000 years",
        "@every 584942417355 years",
        "@every 18446744073709551615s",
        "@every 9223372036854775807ms",
        "@every 100 years",
    ] {
        let e = expr.to_string();
        let got = bounded(expr, move || {
            Spec::parse(&e, "UTC").map(|s| {
                let ticks = s.ticks(0, i64::MAX, 3);
                let last = s.last_ticks(i64::MIN, i64::MAX, 3);
                (s.next_after(i64::MAX - 1000), ticks, last)
            })
        });
        if let Ok((next, ticks, last)) = got {
            assert!(next.is_none(), "{expr}: a tick after the end of time: {next:?}");
            assert!(ticks.windows(2).all(|w| w[0] < w[1]) && ticks.iter().all(|t| *t > 0), "{expr}: {ticks:?}");
            assert!(last.windows(2).all(|w| w[0] < w[1]), "{expr}: {last:?}");
        }
    }
}
