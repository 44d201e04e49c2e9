//! A small correctness run of the engine benchmark programs: Miss Manners
//! on 16 guests fires exactly as many rules as CLIPS (183) and its seating
//! is valid, and Waltz on 12 regions fires as many as CLIPS (3,576).
//! (`bench/compare.sh` checks every size, result and firing sequence against
//! CLIPS; the timed runs are a benchmark, not tests.)

use std::collections::{BTreeMap, BTreeSet};

use crate::support::{repo, stoa};

#[test]
fn manners_16_fires_as_clips_and_seats_everyone_validly() {
    let out = stoa()
        .args(["run", "bench/manners", "--facts", "bench/manners/data/manners16.json", "--json"])
        .output()
        .expect("stoa run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entries: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let fired = entries.iter().filter(|e| e["event"]["kind"] == "fired").count();
    assert_eq!(fired, 183, "CLIPS fires 183 rules on manners16");

    // Guests: name -> (sex, hobbies).
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("bench/manners/data/manners16.json")).expect("data"))
            .expect("json");
    let mut guests: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for f in data.as_array().expect("facts").iter().filter(|f| f["type"] == "Guest") {
        let g = guests.entry(f["fields"]["name"].as_str().expect("name").into()).or_default();
        g.0 = f["fields"]["sex"].as_str().expect("sex").into();
        g.1.insert(f["fields"]["hobby"].as_str().expect("hobby").into());
    }
    // The printed seating: "name seat" per seat.
    let mut seats: BTreeMap<u64, String> = BTreeMap::new();
    for e in entries.iter().filter(|e| e["event"]["kind"] == "log") {
        let msg = e["event"]["message"].as_str().expect("message");
        let (name, seat) = msg.rsplit_once(' ').expect("name seat");
        seats.insert(seat.parse().expect("seat number"), name.into());
    }
    assert_eq!(seats.len(), guests.len(), "every guest is seated once");
    let order: Vec<&String> = seats.values().collect();
    for pair in order.windows(2) {
        let (a, b) = (&guests[pair[0]], &guests[pair[1]]);
        assert_ne!(a.0, b.0, "{} and {} sit together with the same sex", pair[0], pair[1]);
        assert!(!a.1.is_disjoint(&b.1), "{} and {} share no hobby", pair[0], pair[1]);
    }
}

#[test]
fn waltz_12_fires_as_clips() {
    let out = stoa()
        .args(["run", "bench/waltz", "--facts", "bench/waltz/data/waltz12.json", "--json"])
        .output()
        .expect("stoa run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fired = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"]["kind"] == "fired")
        .count();
    assert_eq!(fired, 3576, "CLIPS fires 3,576 rules on waltz12");
}
