//! Facts and the typed ids of the engine.

use std::fmt;

use serde::{Deserialize, Serialize};
use stoa_rules::{Fields, Sym};

/// A fact's id, unique within its workflow, never reused.
pub type FactId = u64;

/// A fact: a typed JSON object with an id and a version that grows with
/// every `modify`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    pub id: FactId,
    #[serde(rename = "type")]
    pub ty: Sym,
    pub version: u32,
    pub fields: Fields,
    /// Recency: when this version was made, on the workflow's own clock of
    /// changes (the conflict resolution prefers newer facts).
    #[serde(default)]
    pub tag: u64,
}

impl Fact {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"id": self.id, "type": self.ty, "version": self.version, "fields": self.fields.to_json()})
    }
}

macro_rules! typed_id {
    ($name:ident, $prefix:literal) => {
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Wraps an id, adding the prefix if it is missing.
            pub fn new(s: impl Into<String>) -> $name {
                let s = s.into();
                if s.starts_with($prefix) {
                    $name(s)
                } else {
                    $name(format!("{}{}", $prefix, s))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

typed_id!(WorkflowId, "wf_");

impl WorkflowId {
    /// Checks a user-chosen id: letters, digits, `-`, `_`, `.`; at most 128.
    pub fn parse(s: &str) -> Result<WorkflowId, String> {
        let body = s.strip_prefix(Self::PREFIX).unwrap_or(s);
        if body.is_empty() || body.len() > 128 || !body.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            let s = stoa_rules::diagnostic::shown(s);
            return Err(format!("invalid workflow id `{s}`: use 1 to 128 letters, digits, `-`, `_` or `.`"));
        }
        Ok(WorkflowId::new(s))
    }

    /// The partition of this workflow among `count` (from 1): FNV-1a (64
    /// bits) of the id, modulo `count`. Stored rows and every server of a
    /// cluster rely on it, so it never changes; the id holds the tenant, so
    /// tenants spread too.
    pub fn partition(&self, count: u32) -> u32 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.0.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % u64::from(count.max(1))) as u32
    }
}
typed_id!(InvocationId, "inv_");

impl InvocationId {
    /// Invocation ids are derived from the workflow and a per-workflow
    /// counter, so a replayed turn produces the same ids (dedup relies on it).
    pub fn of(wf: &WorkflowId, seq: u64) -> InvocationId {
        InvocationId(format!("inv_{}.{seq}", &wf.as_str()[WorkflowId::PREFIX.len()..]))
    }

    pub fn workflow(&self) -> Option<WorkflowId> {
        let rest = self.0.strip_prefix(Self::PREFIX)?;
        let (wf, _) = rest.rsplit_once('.')?;
        Some(WorkflowId::new(wf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partitions are part of the stored data: these values never change.
    #[test]
    fn partitions_are_stable_and_spread() {
        let p = |id: &str| WorkflowId::new(id).partition(256);
        assert_eq!([p("wf_a.1"), p("wf_a.2"), p("wf_b.1"), p("")], [77, 52, 184, 189]);
        let mut seen = [0u32; 16];
        for i in 0..16_000 {
            seen[WorkflowId::new(format!("wf_t.{i:x}")).partition(16) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert_eq!(WorkflowId::new("wf_a.1").partition(0), 0);
    }
}
