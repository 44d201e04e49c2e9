//! Trace context across processes: from a `traceparent` (gRPC metadata, a
//! stored string, a field of the wire types) to a span's parent, and from a
//! span to the `traceparent` of the next hop.
//!
//! Every function here is cheap when traces are off: a span no layer
//! records is disabled, and a disabled span yields no context and takes no
//! parent, without allocating.

use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tonic::metadata::{MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::traceparent::{valid_state, TraceParent};

/// The metadata (and HTTP header) keys of W3C Trace Context.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The remote context a `traceparent` (and optional `tracestate`) names;
/// `None` if the header is not valid.
pub fn remote_context(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    let tp = TraceParent::parse(traceparent)?;
    let state = tracestate.filter(|s| valid_state(s)).and_then(|s| TraceState::from_str(s).ok()).unwrap_or_default();
    let cx = SpanContext::new(
        TraceId::from_bytes(tp.trace_id),
        SpanId::from_bytes(tp.parent_id),
        TraceFlags::new(tp.flags),
        true,
        state,
    );
    Some(Context::new().with_remote_span_context(cx))
}

/// Makes `span` a child of the context `traceparent` names. Must come
/// before the span is first entered; does nothing to a disabled span or
/// with a header that is not valid. Whether the parent was set.
pub fn set_parent(span: &Span, traceparent: Option<&str>, tracestate: Option<&str>) -> bool {
    if span.is_disabled() {
        return false;
    }
    match traceparent.and_then(|tp| remote_context(tp, tracestate)) {
        Some(cx) => span.set_parent(cx).is_ok(),
        None => false,
    }
}

/// The `traceparent` that makes the next hop a child of `span`; `None`
/// when no exporter records it.
pub fn traceparent(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    if !sc.is_valid() {
        return None;
    }
    Some(format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// The `tracestate` to send with `traceparent(span)`, if it has one.
pub fn tracestate(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let header = span.context().span().span_context().trace_state().header();
    (!header.is_empty()).then_some(header)
}

/// Puts `span`'s context into outgoing gRPC metadata; nothing when the
/// span is not recorded.
pub fn inject(span: &Span, metadata: &mut MetadataMap) {
    let Some(tp) = traceparent(span) else { return };
    if let Ok(v) = MetadataValue::try_from(tp.as_str()) {
        metadata.insert(TRACEPARENT, v);
    }
    if let Some(state) = tracestate(span).and_then(|s| MetadataValue::try_from(s.as_str()).ok()) {
        metadata.insert(TRACESTATE, state);
    }
}

/// The `traceparent` and `tracestate` of incoming HTTP/2 headers (gRPC
/// metadata), as text; values that are not visible ASCII are ignored.
pub fn from_headers(headers: &tonic::codegen::http::HeaderMap) -> (Option<&str>, Option<&str>) {
    let get = |k| headers.get(k).and_then(|v| v.to_str().ok());
    (get(TRACEPARENT), get(TRACESTATE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_header_is_a_remote_parent() {
        let cx = remote_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("congo=t61rcWkgMzE"))
            .expect("valid");
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sc.trace_state().header(), "congo=t61rcWkgMzE");
    }

    #[test]
    fn hostile_headers_give_no_parent() {
        assert!(remote_context("00-zz", None).is_none());
        assert!(remote_context(&"0".repeat(100_000), None).is_none());
        // A bad tracestate is dropped, the parent kept.
        let cx = remote_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("bad\u{7f}state"))
            .expect("parent kept");
        assert_eq!(cx.span().span_context().trace_state().header(), "");
    }

    #[test]
    fn a_disabled_span_costs_nothing_and_yields_nothing() {
        let span = Span::none();
        assert!(!set_parent(&span, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), None));
        assert_eq!(traceparent(&span), None);
        let mut md = MetadataMap::new();
        inject(&span, &mut md);
        assert!(md.is_empty());
    }

    /// With an OpenTelemetry layer (no exporter: the spans are recorded,
    /// then dropped), a span takes a remote parent and passes on its own.
    #[test]
    fn a_recorded_span_continues_its_parent_and_passes_itself_on() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let span = tracing::info_span!("child");
            assert!(set_parent(&span, Some(given), Some("congo=t61rcWkgMzE")));
            let own = TraceParent::parse(&traceparent(&span).expect("recorded")).expect("valid");
            assert_eq!(own.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_ne!(own, TraceParent::parse(given).unwrap(), "its own span id");
            assert!(own.sampled());
            assert_eq!(tracestate(&span).as_deref(), Some("congo=t61rcWkgMzE"));
            // Started now: its parent is fixed.
            assert!(!set_parent(&span, Some(given), None));
            let mut md = MetadataMap::new();
            inject(&span, &mut md);
            assert_eq!(md.get(TRACEPARENT).unwrap().to_str().unwrap(), own.to_string());
            assert_eq!(md.get(TRACESTATE).unwrap().to_str().unwrap(), "congo=t61rcWkgMzE");
            // A hostile parent is no parent: a new trace.
            let root = tracing::info_span!("root");
            assert!(!set_parent(&root, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g"), None));
            let fresh = TraceParent::parse(&traceparent(&root).expect("recorded")).expect("valid");
            assert_ne!(fresh.trace_id, own.trace_id);
        });
    }

    #[test]
    fn headers_are_read_as_visible_ascii_only() {
        let mut h = tonic::codegen::http::HeaderMap::new();
        h.insert(TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        h.insert(TRACESTATE, tonic::codegen::http::HeaderValue::from_bytes(b"a=\xff").unwrap());
        let (tp, ts) = from_headers(&h);
        assert!(tp.is_some());
        assert_eq!(ts, None);
    }
}
