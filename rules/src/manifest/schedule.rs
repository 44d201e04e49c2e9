//! `[schedules.NAME]` in `pack.toml`: workflows a pack starts on a clock.
//! The server installs them for the pack's tenant on deploy.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cron::{Spec, SpecError};
use crate::diagnostic::{shown, Code, Diagnostic, SourceMap};
use crate::testcase::FactSpec;

/// What a schedule does with ticks it missed while the server was down
/// (or too late to count as on time).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Run none of them.
    Skip,
    /// Run the latest one only.
    #[default]
    One,
    /// Run each of them (the latest `max_catch_up`).
    All,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::One => "one",
            CatchUp::All => "all",
        }
    }

    pub fn parse(s: &str) -> Option<CatchUp> {
        match s {
            "skip" => Some(CatchUp::Skip),
            "one" | "" => Some(CatchUp::One),
            "all" => Some(CatchUp::All),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScheduleSpec {
    /// A cron expression (5 or 6 fields) or a preset (`@hourly`, `@every 30s`).
    pub cron: String,
    /// IANA name; "UTC" by default.
    pub timezone: String,
    /// The facts each tick's workflow starts with.
    pub facts: Vec<FactSpec>,
    pub catch_up: CatchUp,
    /// With `catch_up = "all"`: at most this many missed ticks run (the latest).
    pub max_catch_up: Option<u32>,
}

/// Schedule names become part of request ids (`schedule:<name>:<ms>`).
pub fn valid_schedule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    cron: toml::Spanned<String>,
    timezone: Option<toml::Spanned<String>>,
    #[serde(default)]
    facts: Vec<toml::Spanned<FactSpec>>,
    catch_up: Option<toml::Spanned<String>>,
    max_catch_up: Option<toml::Spanned<i64>>,
}

pub(super) fn schedules(
    path: &Path,
    map: &SourceMap,
    raw: &BTreeMap<String, toml::Spanned<RawSchedule>>,
    schemas: &BTreeMap<String, super::Schema>,
    strict: bool,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, ScheduleSpec> {
    let mut out = BTreeMap::new();
    for (raw_name, entry) in raw {
        let at = |span: std::ops::Range<usize>| map.pos(span.start);
        let mut err = |span: std::ops::Range<usize>, msg: String| {
            diags.push(Diagnostic::error(path, at(span), Code::Schedule, msg));
        };
        let r = entry.get_ref();
        let name = shown(raw_name);
        if !valid_schedule_name(raw_name) {
            err(entry.span(), format!("schedule name `{name}`: use letters, digits, `-`, `_` or `.` (at most 128)"));
        }
        let tz = r.timezone.as_ref().map(|t| t.get_ref().clone()).unwrap_or_else(|| "UTC".into());
        if let Err(SpecError::Cron(m) | SpecError::TimeZone(m)) = Spec::parse(r.cron.get_ref(), "UTC") {
            err(r.cron.span(), format!("schedule `{name}`: cron: {m}"));
        }
        if let Err(e) = crate::cron::time_zone(&tz) {
            let span = r.timezone.as_ref().map(|t| t.span()).unwrap_or(entry.span());
            err(span, format!("schedule `{name}`: timezone: {e}"));
        }
        let catch_up = match &r.catch_up {
            None => CatchUp::default(),
            Some(c) => CatchUp::parse(c.get_ref()).unwrap_or_else(|| {
                err(
                    c.span(),
                    format!("schedule `{name}`: catch_up `{}`: expected \"skip\", \"one\" or \"all\"", c.get_ref()),
                );
                CatchUp::default()
            }),
        };
        let max_catch_up = match &r.max_catch_up {
            None => None,
            Some(m) if (1..=100_000).contains(m.get_ref()) => {
                if catch_up != CatchUp::All {
                    err(m.span(), format!("schedule `{name}`: max_catch_up applies only with catch_up = \"all\""));
                }
                Some(*m.get_ref() as u32)
            }
            Some(m) => {
                err(m.span(), format!("schedule `{name}`: max_catch_up must be between 1 and 100000"));
                None
            }
        };
        // Each tick starts a workflow with these facts: one it would refuse
        // is refused now, not at every tick.
        for f in &r.facts {
            let spec = f.get_ref();
            if !crate::value::valid_type_name(&spec.ty) {
                let (ty, rule) = (shown(&spec.ty), crate::sandbox::TYPE_NAME_RULE);
                err(f.span(), format!("schedule `{name}`: `{ty}` is not a fact type: {rule}"));
            }
            for (k, _) in spec.fields.iter() {
                if k.with_name(|k| k.starts_with('_')) {
                    err(
                        f.span(),
                        format!("schedule `{name}`: field `{}` starts with `_`, which is reserved", shown(&k.name())),
                    );
                }
            }
            let undeclared = strict && !schemas.contains_key(&spec.ty) && !super::BUILTIN_TYPES.contains(&&*spec.ty);
            if undeclared && crate::value::valid_type_name(&spec.ty) {
                err(
                    f.span(),
                    format!("schedule `{name}`: {} has no schema, and `[facts] strict = true` requires one", spec.ty),
                );
            }
            for v in schemas.get(&spec.ty).map(|s| s.violations_new(&spec.ty, &spec.fields)).unwrap_or_default() {
                err(f.span(), format!("schedule `{name}`: {v}"));
            }
        }
        out.insert(
            raw_name.clone(),
            ScheduleSpec {
                cron: r.cron.get_ref().trim().to_string(),
                timezone: tz,
                facts: r.facts.iter().map(|f| f.get_ref().clone()).collect(),
                catch_up,
                max_catch_up,
            },
        );
    }
    out
}
