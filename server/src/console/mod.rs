//! The web console: server-rendered HTML (maud) on the HTTP listener,
//! with a little JavaScript embedded in the binary (`assets`). Every page
//! reads through the runtime in this process, scoped to the session's
//! tenant exactly as the gRPC API is: another tenant's workflow is a 404.
//!
//! Reading works with JavaScript off; scripts only add comfort (local
//! times, live timelines, copying ids, live filters).
//!
//! Security: a login with a tenant's API token opens a server-side session
//! (`session`); the browser holds a random id in an HttpOnly,
//! SameSite=Strict cookie. Every POST carries the session's CSRF token in
//! a hidden field, and a POST whose `Origin` is another site is refused.
//! Pages are sent with a strict Content-Security-Policy (scripts and
//! styles from this origin only), so a value that escaped the templates
//! still could not run.

mod assets;
mod explain;
mod graph;
mod layout;
mod packs;
mod session;
#[cfg(test)]
mod tests;
mod workflows;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, request::Parts, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::html;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::schedule::Scheduler;

pub(crate) use session::Sessions;

/// What the console's handlers share.
pub(crate) struct Console {
    pub runtime: Arc<Runtime>,
    pub schedules: Arc<Scheduler>,
    pub auth: Auth,
    pub sessions: Sessions,
    /// Cancelled at the server's stop: event streams end with it.
    pub stop: CancellationToken,
}

impl Console {
    pub fn new(runtime: Arc<Runtime>, schedules: Arc<Scheduler>, auth: Auth, stop: CancellationToken) -> Arc<Console> {
        Arc::new(Console { runtime, schedules, auth, sessions: Sessions::default(), stop })
    }
}

type St = State<Arc<Console>>;

/// Every route of the console. The caller adds a fallback (`not_found`).
pub(crate) fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/workflows") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/workflows", get(workflows::list))
        .route("/workflows/cancel", post(workflows::cancel_many))
        .route("/workflows/signal", post(workflows::signal_many))
        .route("/workflows/{id}", get(workflows::show))
        .route("/workflows/{id}/events", get(workflows::events))
        .route("/workflows/{id}/graph", get(graph::page))
        .route("/workflows/{id}/cancel", post(workflows::cancel))
        .route("/workflows/{id}/signal", post(workflows::signal))
        .route("/workflows/{id}/facts", post(workflows::assert))
        .route("/workflows/{id}/facts/{fact}", get(explain::fact))
        .route("/workflows/{id}/rules/{rule}", get(explain::rule))
        .route("/signals/{id}", get(workflows::signal_page))
        .route("/packs", get(packs::list))
        .route("/packs/{name}/rollout", post(packs::rollout))
        .route("/packs/{name}/diff", get(packs::diff))
        .route("/packs/{name}/rollback", post(packs::rollback))
        .route("/schedules", get(packs::schedules))
        .route("/workers", get(packs::workers))
        .route("/schedules/{name}/{action}", post(packs::schedule_action))
        .route("/assets/{name}", get(assets::serve))
        .with_state(console)
        .layer(axum::middleware::from_fn(guard))
}

/// The answer to a path no route serves (naming `/metrics` when this
/// listener serves it too).
pub(crate) async fn not_found(metrics: bool) -> Response {
    let m = if metrics {
        "no such page; the console starts at /workflows, metrics are at /metrics"
    } else {
        "no such page"
    };
    PageError::NotFound(m.into()).into_response()
}

/// Headers on every answer; POSTs from another site refused.
async fn guard(req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD && !same_origin(req.headers()) {
        return PageError::Forbidden("this form was sent from another site".into()).into_response();
    }
    let started = std::time::Instant::now();
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    // The page's server time, for the browser's tools and `stoa bench
    // console` (a duration reveals nothing a client could not time itself).
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.3}")) {
        h.insert("server-timing", v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// No `Origin`, or one whose host is the request's `Host`.
fn same_origin(h: &axum::http::HeaderMap) -> bool {
    let Some(origin) = h.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else { return true };
    let host = h.get(header::HOST).and_then(|o| o.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or(origin);
    !host.is_empty() && origin_host == host
}

/// The logged-in tenant of a request. A request without a live session is
/// sent to the login page (GET) or refused (other methods).
pub(crate) struct Tenant {
    pub name: String,
    pub csrf: String,
    session: String,
}

impl Tenant {
    /// `Ok` when the form's CSRF token is this session's.
    pub fn check_csrf(&self, sent: &str) -> Result<(), PageError> {
        if session::same(sent, &self.csrf) {
            Ok(())
        } else {
            Err(PageError::Forbidden("the form's CSRF token is missing or stale; reload the page and retry".into()))
        }
    }
}

impl FromRequestParts<Arc<Console>> for Tenant {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Arc<Console>) -> Result<Self, Self::Rejection> {
        let id = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .find_map(|h| session::cookie(h, session::COOKIE));
        if let Some((id, s)) = id.and_then(|id| console.sessions.get(id).map(|s| (id, s))) {
            return Ok(Tenant { name: s.tenant, csrf: s.csrf, session: id.to_string() });
        }
        if parts.method == Method::GET {
            let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let to = format!("/login?next={}", percent_encode(next));
            return Err(Redirect::to(&to).into_response());
        }
        Err(PageError::Unauthorized("log in first".into()).into_response())
    }
}

/// `s` with everything but unreserved URL characters percent-encoded.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A page that could not be shown, as an HTML page with its status.
#[derive(Debug)]
pub(crate) enum PageError {
    NotFound(String),
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    Conflict(String),
    Unavailable(String),
    Internal,
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> PageError {
        // The gRPC mapping bounds messages and keeps internal details in the log.
        PageError::from(tonic::Status::from(e))
    }
}

impl From<tonic::Status> for PageError {
    fn from(status: tonic::Status) -> PageError {
        let m = status.message().to_string();
        match status.code() {
            tonic::Code::NotFound => PageError::NotFound(m),
            tonic::Code::InvalidArgument => PageError::BadRequest(m),
            tonic::Code::FailedPrecondition | tonic::Code::ResourceExhausted => PageError::Conflict(m),
            tonic::Code::Unavailable => PageError::Unavailable(m),
            _ => PageError::Internal,
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (code, message) = match self {
            PageError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            PageError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            PageError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            PageError::Conflict(m) => (StatusCode::CONFLICT, m),
            PageError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            PageError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the server log".into()),
        };
        let title = code.canonical_reason().unwrap_or("error");
        let body = html! {
            h1 { (code.as_u16()) " " (title) }
            p.error { (message) }
            p { a href="/workflows" { "Workflows" } }
        };
        (code, layout::page(title, None, body)).into_response()
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// Where to go after the login: a path of this site only.
fn local_path(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/workflows"
    }
}

async fn login_page(axum::extract::Query(q): axum::extract::Query<LoginQuery>) -> Response {
    layout::page("Log in", None, login_form(&q.next, None)).into_response()
}

fn login_form(next: &str, error: Option<&str>) -> maud::Markup {
    html! {
        section.login {
            h1 { "Log in to Stoa" }
            p.muted { "Use one of your tenant's API tokens (the same the " code { "stoa" } " commands send)." }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(local_path(next));
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                @if let Some(e) = error { p.error role="alert" { (e) } }
                button type="submit" { "Log in" }
            }
        }
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(State(console): St, Form(form): Form<LoginForm>) -> Response {
    match console.auth.tenant_for(form.token.trim()) {
        Some(tenant) => {
            let (id, _) = console.sessions.open(&tenant);
            let mut resp = Redirect::to(local_path(&form.next)).into_response();
            if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id)) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        None => (StatusCode::UNAUTHORIZED, layout::page("Log in", None, login_form(&form.next, Some("unknown token"))))
            .into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

async fn logout(State(console): St, tenant: Tenant, Form(form): Form<CsrfForm>) -> Result<Response, PageError> {
    tenant.check_csrf(&form.csrf)?;
    console.sessions.close(&tenant.session);
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&session::clear_cookie()).expect("ascii"));
    Ok(resp)
}
