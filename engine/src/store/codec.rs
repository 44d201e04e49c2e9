//! Record encoding: one format-version byte, then JSON. JSON keeps records
//! readable with standard tools while the format is young; the version byte
//! lets a later build migrate or refuse old records instead of misreading.
//!
//! Version 2 stores the timeline in runs of entries and the outbox inside
//! the waiting activations; version 3, a workflow's timers by the instant
//! they are due at (a list per record); version 4, a timeline run's turn,
//! instant and stamp once per run, not per entry. An optional field added
//! with a serde default (a workflow's and an invocation's `traceparent`)
//! needs no new version: older records read as without it, and older
//! builds ignore it. It stays JSON on purpose:
//! sled's memory grows with the number of records written, not with their
//! size (see `sled_store`), so a binary codec would save disk, not memory.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Error;

pub const FORMAT: u8 = 4;

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(FORMAT);
    serde_json::to_writer(&mut out, v).expect("records serialize");
    out
}

pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, Error> {
    let key = || String::from_utf8_lossy(key).into_owned();
    match bytes.first() {
        Some(&FORMAT) => {
            serde_json::from_slice(&bytes[1..]).map_err(|e| Error::Corrupt { key: key(), reason: e.to_string() })
        }
        Some(&found) => Err(Error::Version { key: key(), found, expected: FORMAT }),
        None => Err(Error::Corrupt { key: key(), reason: "empty record".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_versions() {
        let mut b = encode(&vec![1, 2]);
        assert_eq!(decode::<Vec<i32>>(b"k", &b).unwrap(), vec![1, 2]);
        b[0] = 9;
        assert_eq!(
            decode::<Vec<i32>>(b"k", &b).unwrap_err().to_string(),
            "record k has format version 9; this build reads version 4"
        );
    }
}
