//! The process's tracing subscriber: log lines on stderr (text or JSON),
//! and OpenTelemetry spans exported over OTLP/gRPC when the standard
//! variables ask for it.
//!
//! Log lines are events only: spans never reach the log formatter, so that
//! with no exporter a span is disabled at its call site and costs a branch
//! (the turn, commit and dispatch spans are on the hot path).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Metadata;
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt, LevelFilter};
use tracing_subscriber::layer::Filter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`
    /// and the event's fields (`tenant`, `workflow`, `invocation`,
    /// `trace_id`, ...) at the top level.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format `{other}`: expected text or json")),
        }
    }
}

/// What `init` sets up.
pub struct Options<'a> {
    /// `service.name` of the spans, unless `OTEL_SERVICE_NAME` says.
    pub service: &'a str,
    /// The variable holding the log filter (`STOA_LOG`).
    pub filter_var: &'a str,
    /// The filter when that variable is unset (`info`).
    pub default_filter: &'a str,
    pub format: LogFormat,
}

/// Libraries whose `info` and `debug` lines are noise to an operator;
/// kept at `warn` unless the filter names them.
const NOISY: [&str; 6] = ["h2", "hyper", "hyper_util", "tower", "sled", "tokio_postgres"];

/// The installed subscriber. Dropping it exports the spans still batched
/// (bounded by a few seconds when the collector does not answer).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// The exporter's own runtime: it works whatever runtime (or none) the
    /// program uses, and it is still running when the program's has ended.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is batched and stops the exporter.
    pub fn shutdown(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5)) {
                eprintln!("traces: the last spans were not exported: {e}");
            }
        }
        // Without waiting (the spans went out above): the program may be
        // inside its own runtime, where waiting is not allowed.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether the OpenTelemetry variables ask for exported traces: an OTLP
/// endpoint is set, and neither `OTEL_SDK_DISABLED=true` nor
/// `OTEL_TRACES_EXPORTER=none`.
pub fn export_wanted() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let is = |k: &str, v: &str| std::env::var(k).is_ok_and(|x| x.trim().eq_ignore_ascii_case(v));
    (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        && !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
}

/// The log filter: `filter_var`'s value, else `default_filter`; noisy
/// libraries at `warn` unless named. A filter that does not parse is
/// reported and the default used.
fn log_filter(opts: &Options) -> EnvFilter {
    let given = std::env::var(opts.filter_var).ok().filter(|s| !s.trim().is_empty());
    let spec = filter_spec(given.as_deref(), opts.default_filter);
    EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("{}={:?}: {e}; using {}", opts.filter_var, given.unwrap_or_default(), opts.default_filter);
        EnvFilter::new(opts.default_filter)
    })
}

/// `given` (else `default`) with the noisy libraries it does not name at
/// `warn`.
fn filter_spec(given: Option<&str>, default: &str) -> String {
    let mut spec = given.unwrap_or(default).to_string();
    for n in NOISY {
        if !spec.split(',').any(|d| d.trim().split(['=', ':', '[']).next() == Some(n)) {
            spec.push_str(&format!(",{n}=warn"));
        }
    }
    spec
}

/// Spans (and their events) worth exporting: Stoa's own, at `info` and up.
/// The level hint matters: without one, `tracing` and the `log` bridge
/// would hand every `trace!` call (sled makes many) to the filters.
fn exported<S>() -> impl Filter<S> {
    filter_fn(|m: &Metadata<'_>| m.target().starts_with("stoa") && *m.level() <= tracing::Level::INFO)
        .with_max_level_hint(LevelFilter::INFO)
}

/// Whether this process exports spans (`init` found an endpoint).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans are exported: code that would do work to make a span
/// (find its parent, say) asks this first. A plain flag rather than
/// `tracing::enabled!`, which with per-layer filters leaves the filters'
/// per-thread state set when no span or event follows, and so drops the
/// thread's next log line.
pub fn spans_exported() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs the global subscriber. Panics if one is installed already.
pub fn init(opts: Options) -> Telemetry {
    // TRACE: no bound of its own, so the log filter's level bounds both.
    let events_only = filter_fn(|m: &Metadata<'_>| m.is_event()).with_max_level_hint(LevelFilter::TRACE);
    let filter = log_filter(&opts).and(events_only);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = match opts.format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => {
            fmt.json().flatten_event(true).with_current_span(false).with_span_list(false).with_filter(filter).boxed()
        }
    };
    let (provider, runtime) = match export_wanted().then(|| exporter(opts.service)).transpose() {
        Ok(Some((p, rt))) => (Some(p), Some(rt)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("traces: not exported: {e}");
            (None, None)
        }
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("stoa"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_filter(exported())
    });
    EXPORTING.store(otel.is_some(), std::sync::atomic::Ordering::Relaxed);
    tracing_subscriber::registry().with(logs).with(otel).init();
    Telemetry { provider, runtime }
}

/// The OTLP/gRPC exporter (endpoint, headers, timeout from the `OTEL_*`
/// variables), batching on its own thread.
fn exporter(service: &str) -> Result<(SdkTracerProvider, tokio::runtime::Runtime), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let exporter = {
        let _in = rt.enter();
        opentelemetry_otlp::SpanExporter::builder().with_tonic().build().map_err(|e| e.to_string())?
    };
    let resource = match std::env::var("OTEL_SERVICE_NAME") {
        Ok(s) if !s.trim().is_empty() => Resource::builder().build(),
        _ => Resource::builder().with_service_name(service.to_string()).build(),
    };
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    Ok((provider, rt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noisy_libraries_stay_at_warn_unless_named() {
        assert_eq!(
            filter_spec(None, "info"),
            "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,sled=warn,tokio_postgres=warn"
        );
        let spec = filter_spec(Some("debug,h2=trace,sled=info"), "info");
        assert_eq!(spec, "debug,h2=trace,sled=info,hyper=warn,hyper_util=warn,tower=warn,tokio_postgres=warn");
        // `hyper_util` is not `hyper`.
        assert!(filter_spec(Some("hyper_util=debug"), "info").contains(",hyper=warn"));
        assert!(EnvFilter::try_new(filter_spec(Some("stoa_server=debug"), "info")).is_ok());
    }

    #[test]
    fn log_formats_parse() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
