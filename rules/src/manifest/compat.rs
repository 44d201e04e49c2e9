//! Whether the facts of live workflows, made under one version of a pack's
//! schemas, fit another version: the compatibility rules of an upgrade or
//! a rollback (docs/rules.md, "Schema evolution").
//!
//! A `modify` keeps a field its schema does not know when the fact already
//! held it (`Schema::check_modified`), so removing an optional field is
//! safe: that is what rolling back its addition does.

use super::{FieldSpec, FieldType, Manifest};

/// One difference between two versions' schemas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaChange {
    pub ty: String,
    /// The field, or `None` for the whole type (or strict mode).
    pub field: Option<String>,
    /// What changed, for people: "added, optional".
    pub what: String,
    /// Whether facts made under the old version fit the new one.
    pub compatible: bool,
}

/// The schema changes from `from` to `to`, types and fields in name order.
pub fn schema_changes(from: &Manifest, to: &Manifest) -> Vec<SchemaChange> {
    let mut out = Vec::new();
    let mut change = |ty: &str, field: Option<&str>, what: String, compatible: bool| {
        out.push(SchemaChange { ty: ty.into(), field: field.map(Into::into), what, compatible })
    };
    if to.strict_facts && !from.strict_facts {
        change("*", None, "strict mode on: facts of types without a schema are refused".into(), false);
    }
    let types: std::collections::BTreeSet<&String> = from.facts.keys().chain(to.facts.keys()).collect();
    for ty in types {
        let (old, new) = match (from.facts.get(ty), to.facts.get(ty)) {
            (Some(_), None) => {
                change(ty, None, "schema removed: its facts become free-form".into(), true);
                continue;
            }
            (None, Some(_)) => {
                change(ty, None, "schema added: facts made before were free-form and may not fit".into(), false);
                continue;
            }
            (Some(o), Some(n)) => (o, n),
            (None, None) => continue,
        };
        // Renames, either way: `to` declares one (an upgrade), or `from`
        // did and `to` has the old name again (a rollback).
        let mut renamed = std::collections::BTreeSet::new();
        for (a, b) in renames(old, new) {
            let (o, n) = (&old.fields[&a], &new.fields[&b]);
            let what = format!("renamed from `{a}` to `{b}`: live facts are renamed with the move");
            let (what, compatible) = match retyped(o, n) {
                Some((change, ok)) => (format!("{what}; {change}"), ok),
                None => (what, true),
            };
            change(ty, Some(&b), what, compatible);
            renamed.insert(a);
            renamed.insert(b);
        }
        let fields: std::collections::BTreeSet<&String> = old.fields.keys().chain(new.fields.keys()).collect();
        for f in fields.into_iter().filter(|f| !renamed.contains(*f)) {
            let (what, compatible) = match (old.fields.get(f), new.fields.get(f)) {
                (None, Some(n)) if n.default.is_some() => (format!("added, {}, with a default", n.ty.name()), true),
                (None, Some(n)) if n.optional => (format!("added, {}, optional", n.ty.name()), true),
                (None, Some(n)) => {
                    (format!("added, {}, required without a default: facts made before lack it", n.ty.name()), false)
                }
                // What undoes a compatible addition (a rollback) is compatible.
                (Some(o), None) if o.may_be_absent() => {
                    ("removed, was optional or defaulted: facts keep it".into(), true)
                }
                (Some(_), None) => {
                    ("removed, was required: what facts hold there is no longer read (a rename?)".into(), false)
                }
                (Some(o), Some(n)) => match retyped(o, n) {
                    Some(change) => change,
                    None => continue,
                },
                (None, None) => continue,
            };
            change(ty, Some(f), what, compatible);
        }
    }
    out
}

/// The fields moving from schema `old` to `new` renames: `(old name, new
/// name)`, where one of the two versions declares the rename (`from`) and
/// the field exists under one name in each.
pub fn renames(old: &super::Schema, new: &super::Schema) -> Vec<(String, String)> {
    let forward = new.fields.iter().filter_map(|(n, spec)| Some((spec.from.clone()?, n.clone())));
    let back = old.fields.iter().filter_map(|(o, spec)| Some((o.clone(), spec.from.clone()?)));
    forward
        .chain(back)
        .filter(|(a, b)| {
            old.fields.contains_key(a)
                && !old.fields.contains_key(b)
                && new.fields.contains_key(b)
                && !new.fields.contains_key(a)
        })
        .collect()
}

/// How one field changed, if it did.
fn retyped(o: &FieldSpec, n: &FieldSpec) -> Option<(String, bool)> {
    if o.ty != n.ty {
        // Every value the old type held is one the new type holds.
        let widened = matches!(
            (o.ty, n.ty),
            (_, FieldType::Any)
                | (FieldType::Int | FieldType::Float, FieldType::Number)
                | (FieldType::Int | FieldType::Number, FieldType::Float)
        );
        let what = format!("retyped from {} to {}", o.ty.name(), n.ty.name());
        return Some((what, widened && (n.optional || !o.optional)));
    }
    match (o.optional, n.optional) {
        (true, false) if n.default.is_none() => {
            Some(("now required, without a default: facts made before may lack it".into(), false))
        }
        (true, false) => Some(("now required, with a default".into(), true)),
        (false, true) => Some(("now optional".into(), true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(facts: &str) -> Manifest {
        let src = format!("[pack]\nname = \"p\"\nversion = \"1\"\n{facts}");
        super::super::parse_manifest(std::path::Path::new("pack.toml"), &src).expect("parses")
    }

    fn changes(from: &str, to: &str) -> String {
        let lines: Vec<String> = schema_changes(&manifest(from), &manifest(to))
            .into_iter()
            .map(|c| {
                let at = c.field.map(|f| format!("{}.{f}", c.ty)).unwrap_or(c.ty);
                format!("{} {at}: {}", if c.compatible { "ok " } else { "NOT" }, c.what)
            })
            .collect();
        lines.join("\n")
    }

    const V1: &str = "[facts.Order]\nid = \"string\"\nstatus = \"string\"\nqty = \"int\"\n";

    #[test]
    fn a_declared_rename_is_compatible_both_ways() {
        let v2 = "[facts.Order]\nid = \"string\"\nstate = { type = \"string\", from = \"status\" }\nqty = \"int\"\n";
        expect_test::expect![[r#"
            ok  Order.state: renamed from `status` to `state`: live facts are renamed with the move"#]]
        .assert_eq(&changes(V1, v2));
        expect_test::expect![[r#"
            ok  Order.status: renamed from `state` to `status`: live facts are renamed with the move"#]]
        .assert_eq(&changes(v2, V1));
        // Without `from` it is a removal and an addition.
        let undeclared = "[facts.Order]\nid = \"string\"\nstate = \"string\"\nqty = \"int\"\n";
        assert!(changes(V1, undeclared).contains("NOT Order.state: added"), "{}", changes(V1, undeclared));
    }

    #[test]
    fn adding_an_optional_field_and_rolling_it_back_are_compatible() {
        let v2 = format!("{V1}reminded = \"bool?\"\nsource = {{ type = \"string\", default = \"web\" }}\n");
        expect_test::expect![[r#"
            ok  Order.reminded: added, bool, optional
            ok  Order.source: added, string, with a default"#]]
        .assert_eq(&changes(V1, &v2));
        let rollback = changes(&v2, V1);
        assert!(!rollback.contains("NOT"), "{rollback}");
        assert_eq!(changes(V1, V1), "");
    }

    #[test]
    fn removing_renaming_retyping_and_requiring_are_not() {
        let v2 = "[facts.Order]\nid = \"string\"\nstate = \"string\"\nqty = \"number\"\nnote = \"string\"\n[facts.Line]\nn = \"int\"\n[facts]\nstrict = true\n";
        expect_test::expect![[r#"
            NOT *: strict mode on: facts of types without a schema are refused
            NOT Line: schema added: facts made before were free-form and may not fit
            NOT Order.note: added, string, required without a default: facts made before lack it
            ok  Order.qty: retyped from int to number
            NOT Order.state: added, string, required without a default: facts made before lack it
            NOT Order.status: removed, was required: what facts hold there is no longer read (a rename?)"#]]
        .assert_eq(&changes(V1, v2));
        expect_test::expect![[r#"
            NOT Order.qty: retyped from int to string"#]]
        .assert_eq(&changes(V1, &V1.replace("qty = \"int\"", "qty = \"string\"")));
    }
}
