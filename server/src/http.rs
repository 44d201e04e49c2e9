//! The server's HTTP listener (`--metrics-listen`): Prometheus metrics on
//! `GET /metrics`. One axum `Router`, so that later pages (the console)
//! join it with `Router::merge` on the same listener.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::scrape::Scrape;

/// Prometheus's text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every route of the HTTP listener.
pub fn router(scrape: Arc<Scrape>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(scrape).fallback(not_found)
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
