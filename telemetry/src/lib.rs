//! Seeing inside a Stoa process: W3C trace context carried on gRPC
//! metadata and in the wire types (`traceparent`, `propagate`), and the
//! tracing subscriber every Stoa binary installs (`setup`): log lines in
//! text or JSON, and OpenTelemetry spans exported over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! The engine knows none of this: it carries a stored `traceparent` as an
//! opaque string.

pub mod propagate;
pub mod setup;
pub mod traceparent;

pub use propagate::{inject, remote_context, set_parent, traceparent as traceparent_of};
pub use setup::{init, LogFormat, Options, Telemetry};
pub use traceparent::TraceParent;
