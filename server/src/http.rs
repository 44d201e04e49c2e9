//! The server's HTTP listeners (`--http-listen`, `--metrics-listen`): one
//! axum `Router` each, with Prometheus metrics on `GET /metrics` and the
//! web console (`console`) as `Config::http_listeners` says, served until
//! shutdown.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::console::{self, Console};
use crate::scrape::Scrape;

/// Prometheus's text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every route of one listener: metrics (with `scrape`), the console
/// (with `console`), or both.
pub(crate) fn router(scrape: Option<Arc<Scrape>>, console: Option<Arc<Console>>) -> Router {
    let mut router = Router::new();
    let with_metrics = scrape.is_some();
    if let Some(s) = scrape {
        router = router.merge(Router::new().route("/metrics", get(metrics)).with_state(s));
    }
    match console {
        Some(c) => router.merge(console::router(c)).fallback(move || console::not_found(with_metrics)),
        None => router.fallback(not_found),
    }
}

async fn metrics(State(scrape): State<Arc<Scrape>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], scrape.text().await)
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "not found; metrics are at /metrics\n")
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let served = axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the HTTP listener stopped");
    }
}
