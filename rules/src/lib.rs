//! Stoa's rule-pack language: values, manifest, rule-file parser, compiler,
//! the Rhai sandbox and the test-case format.

pub mod budget;
pub mod compile;
pub mod cron;
pub mod diagnostic;
pub mod expr;
pub mod limits;
pub mod manifest;
pub mod native;
pub mod sandbox;
mod schema_check;
pub mod syntax;
pub mod testcase;
pub mod value;

pub use diagnostic::{Code, Diagnostic, Pos, Severity};
pub use value::{FieldList, Fields, Sym, Value};
