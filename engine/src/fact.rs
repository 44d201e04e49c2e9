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
