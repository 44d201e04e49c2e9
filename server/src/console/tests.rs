//! The console's handlers through the HTTP router (`tower::ServiceExt::
//! oneshot`), over a real core on a sled store: login, sessions, tenant
//! isolation, CSRF, escaping, the assert form's schema errors, why-not.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use stoa_engine::store::{SledStore, Store};
use stoa_engine::WorkflowId;
use stoa_rules::testcase::FactSpec;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::Console;
use crate::config::{Config, TenantConfig};
use crate::{Core, Parts};

const TOKEN_A: &str = "console-token-a";
const TOKEN_B: &str = "console-token-b";

const PACK_TOML: &str = r#"
[pack]
name = "orders"
version = "1"

[functions."ship.it"]
timeout = "30s"

[facts.Order]
id = "string"
note = "string"
status = "string"
"#;

const RULES: &str = r#"
rule "ship" {
    match { o: Order(status == "new") }
    action {
        modify(o, #{ status: "shipping" });
        call("ship.it", #{ id: o.id });
    }
    reaction { modify(o, #{ status: "shipped" }); }
}

rule "approve" {
    match {
        o: Order(status == "shipped")
        a: Approval(order == o.id)
    }
    action { complete(#{ ok: true }); }
}
"#;

/// A core for tenants `a` and `b` with the console's router in front.
struct Fixture {
    router: Router,
    console: Arc<Console>,
    core: Option<Core>,
    shutdown: CancellationToken,
    committer: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            tenants: vec![TenantConfig::new("a", TOKEN_A), TenantConfig::new("b", TOKEN_B)],
            ..Config::default()
        };
        config.limits.worker_drain_ms = 100;
        let policies = config.policies().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), 8).unwrap());
        let clock = crate::clock::Clock::system();
        let metrics = crate::metrics::Metrics::off();
        let (committer, thread) = crate::committer::Committer::spawn(store.clone(), clock.clone(), &metrics);
        let pool = crate::pool::Pool::start(crate::pool::Options {
            threads: 2,
            share: 1,
            shares: crate::runtime::turn_shares(&policies),
            stack_bytes: crate::pool::stack_bytes(&config.highest_ceilings().unwrap()),
        })
        .unwrap();
        let parts = Parts {
            store,
            clock,
            pool,
            committer,
            faults: Arc::new(crate::faults::Off),
            compile: crate::runtime::compiler(),
            placement: Arc::new(crate::placement::Placement::alone()),
            peers: None,
            member: None,
            metrics,
        };
        let shutdown = CancellationToken::new();
        let core = Core::start(&config, policies, parts, &shutdown, None).unwrap();
        let auth = crate::auth::Auth::new([(TOKEN_A.into(), "a".into()), (TOKEN_B.into(), "b".into())].into());
        let console = Console::new(core.runtime.clone(), core.schedules.clone(), auth, shutdown.child_token());
        let router = crate::http::router(None, Some(console.clone()));
        Fixture { router, console, core: Some(core), shutdown, committer: Some(thread), _dir: dir }
    }

    /// Deploys the orders pack for `tenant` and starts one workflow whose
    /// note is `note`; it waits on `ship.it` (no worker serves it).
    async fn order(&self, tenant: &str, note: &str) -> WorkflowId {
        let rt = &self.console.runtime;
        let files: BTreeMap<String, String> =
            [("pack.toml".to_string(), PACK_TOML.to_string()), ("orders.rules".to_string(), RULES.to_string())].into();
        rt.deploy(tenant, files, false, None).await.unwrap();
        let facts: Vec<FactSpec> = serde_json::from_value(serde_json::json!([
            {"type": "Order", "fields": {"id": "o1", "note": note, "status": "new"}}
        ]))
        .unwrap();
        rt.start(tenant, "orders", facts, &format!("req-{note}")).await.unwrap().0
    }

    async fn send(&self, req: Request<Body>) -> Answer {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap();
        Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }

    async fn get(&self, path: &str, session: Option<&Session>) -> Answer {
        let mut req = Request::get(path);
        if let Some(s) = session {
            req = req.header(header::COOKIE, &s.cookie);
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, session: Option<&Session>, form: &str) -> Answer {
        let mut req = Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(s) = session {
            req = req.header(header::COOKIE, &s.cookie);
        }
        self.send(req.body(Body::from(form.to_string())).unwrap()).await
    }

    /// Logs in with `token`: the session's cookie and CSRF token.
    async fn login(&self, token: &str) -> Session {
        let a = self.post("/login", None, &format!("token={token}&next=%2Fworkflows")).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        let set = a.headers[header::SET_COOKIE].to_str().unwrap().to_string();
        let cookie = set.split(';').next().unwrap().to_string();
        let page = self.get("/workflows", Some(&Session { cookie: cookie.clone(), csrf: String::new() })).await;
        assert_eq!(page.status, StatusCode::OK);
        let csrf = page.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
        Session { cookie, csrf }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(core) = self.core.take() {
            core.stopped().await;
        }
        if let Some(t) = self.committer.take() {
            tokio::task::spawn_blocking(move || t.join()).await.unwrap().unwrap();
        }
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

struct Session {
    cookie: String,
    csrf: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_need_a_login_and_a_wrong_token_is_refused() {
    let f = Fixture::new().await;
    let a = f.get("/workflows?status=running", None).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.headers[header::LOCATION], "/login?next=%2Fworkflows%3Fstatus%3Drunning");
    let a = f.post("/login", None, "token=not-a-token").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.body.contains("unknown token"), "{}", a.body);
    assert!(a.headers.get(header::SET_COOKIE).is_none());

    let a = f.post("/login", None, &format!("token={TOKEN_A}&next=%2F%2Fevil.example")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.headers[header::LOCATION], "/workflows", "no redirect off the site");
    let cookie = a.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains(TOKEN_A), "the cookie holds a session id, not the token: {cookie}");
    assert_eq!(f.console.sessions.len(), 1);

    let s = f.login(TOKEN_A).await;
    let page = f.get("/workflows", Some(&s)).await;
    assert!(page.body.contains("tenant <b class=\"tenant\">a</b>"), "{}", page.body);
    let csp = page.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");

    // Logging out needs the CSRF token, and ends the session.
    assert_eq!(f.post("/logout", Some(&s), "").await.status, StatusCode::FORBIDDEN);
    assert_eq!(f.post("/logout", Some(&s), &format!("csrf={}", s.csrf)).await.status, StatusCode::SEE_OTHER);
    assert_eq!(f.get("/workflows", Some(&s)).await.status, StatusCode::SEE_OTHER);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_workflow_is_a_404_everywhere() {
    let f = Fixture::new().await;
    let id = f.order("a", "secret-of-a").await;
    let b = f.login(TOKEN_B).await;
    for path in [
        format!("/workflows/{id}"),
        format!("/workflows/{id}/rules/ship"),
        format!("/workflows/{id}/facts/1"),
        format!("/workflows/{id}/events"),
        format!("/workflows/{id}?from=1"),
    ] {
        let a = f.get(&path, Some(&b)).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}: {}", a.body);
        assert!(!a.body.contains("secret-of-a") && !a.body.contains("orders"), "{path}: {}", a.body);
    }
    for (path, form) in [("cancel", String::new()), ("facts", "type=Approval&fields=%7B%7D".to_string())] {
        let a = f.post(&format!("/workflows/{id}/{path}"), Some(&b), &format!("csrf={}&{form}", b.csrf)).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}: {}", a.body);
    }
    // Not listed, not found by id or request id.
    for q in ["", "?q=req-secret-of-a", &format!("?q={id}")] {
        let list = f.get(&format!("/workflows{q}"), Some(&b)).await;
        let listed = list.body.split("<section id=\"list\">").nth(1).unwrap();
        assert!(listed.starts_with("<p class=\"muted\">No workflow matches."), "{q}: {}", list.body);
        assert!(!list.body.contains("<span class=\"n\">1</span>"), "{q}: {}", list.body);
    }
    // Tenant a sees it, and it still runs.
    let a = f.login(TOKEN_A).await;
    let page = f.get(&format!("/workflows/{id}"), Some(&a)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("secret-of-a") && page.body.contains("badge running"), "{}", page.body);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_without_the_sessions_csrf_token_are_refused() {
    let f = Fixture::new().await;
    let id = f.order("a", "n").await;
    let s = f.login(TOKEN_A).await;
    let other = f.login(TOKEN_A).await;
    let cancel = format!("/workflows/{id}/cancel");
    for form in ["reason=x".to_string(), "csrf=&reason=x".to_string(), format!("csrf={}&reason=x", other.csrf)] {
        let a = f.post(&cancel, Some(&s), &form).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{form}: {}", a.body);
    }
    // The right token from another site.
    let req = Request::post(&cancel)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, &s.cookie)
        .header(header::HOST, "console.internal:8080")
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::from(format!("csrf={}", s.csrf)))
        .unwrap();
    assert_eq!(f.send(req).await.status, StatusCode::FORBIDDEN);
    // No session at all.
    assert_eq!(f.post(&cancel, None, &format!("csrf={}", s.csrf)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(f.console.runtime.get("a", &id).unwrap().meta.status.as_str(), "running");

    let a = f.post(&cancel, Some(&s), &format!("csrf={}&reason=from+the+test", s.csrf)).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.headers[header::LOCATION].to_str().unwrap(), format!("/workflows/{id}?done=cancelled"));
    let m = f.console.runtime.get("a", &id).unwrap().meta;
    assert_eq!(m.status.as_str(), "cancelled");
    let page = f.get(&format!("/workflows/{id}?done=cancelled"), Some(&s)).await;
    assert!(page.body.contains("Cancel requested.") && page.body.contains("from the test"), "{}", page.body);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fact_values_are_escaped() {
    let f = Fixture::new().await;
    let id = f.order("a", "<script>alert(1)</script>\"'&").await;
    let s = f.login(TOKEN_A).await;
    for path in [format!("/workflows/{id}"), format!("/workflows/{id}/facts/1")] {
        let page = f.get(&path, Some(&s)).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(!page.body.contains("<script>alert"), "{path}: {}", page.body);
        assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;"), "{path}: {}", page.body);
    }
    // In a query echoed back in the filter form too.
    let list = f.get("/workflows?q=%22%3E%3Cscript%3Ex", Some(&s)).await;
    assert!(!list.body.contains("<script>x"), "{}", list.body);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assert_form_shows_schema_errors_at_the_field() {
    let f = Fixture::new().await;
    let id = f.order("a", "n").await;
    let s = f.login(TOKEN_A).await;
    let path = format!("/workflows/{id}/facts");
    let a = f.post(&path, Some(&s), &format!("csrf={}&type=Order&fields=%7B%22id%22%3A5%7D", s.csrf)).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.body.contains("Order.id must be string"), "{}", a.body);
    assert!(a.body.contains("Order.note is required by the schema"), "{}", a.body);
    assert!(a.body.contains("<tr class=\"invalid\"><td>id</td>"), "the field is marked: {}", a.body);
    assert!(a.body.contains("{&quot;id&quot;:5}"), "what was typed is kept: {}", a.body);
    let a = f.post(&path, Some(&s), &format!("csrf={}&type=bad+type&fields=%5B%5D", s.csrf)).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.body.contains("must be a JSON object"), "{}", a.body);
    let a =
        f.post(&path, Some(&s), &format!("csrf={}&type=Approval&fields=%7B%22order%22%3A%22o1%22%7D", s.csrf)).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let facts = f.console.runtime.get("a", &id).unwrap().facts;
    assert!(facts.iter().any(|x| x.ty.to_string() == "Approval"), "{facts:?}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_not_names_the_failing_constraint_with_its_values() {
    let f = Fixture::new().await;
    let id = f.order("a", "n").await;
    let s = f.login(TOKEN_A).await;
    let page = f.get(&format!("/workflows/{id}/rules/approve"), Some(&s)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("every partial match dies at condition 1"), "{}", page.body);
    assert!(page.body.contains("<code class=\"failing\">status == &quot;shipped&quot;</code>"), "{}", page.body);
    assert!(page.body.contains("&quot;shipping&quot; == &quot;shipped&quot;"), "{}", page.body);
    assert!(page.body.contains("<tr class=\"dies\">"), "{}", page.body);
    let page = f.get(&format!("/workflows/{id}/rules/ship"), Some(&s)).await;
    assert!(page.body.contains("Fired") && page.body.contains("ship.it"), "{}", page.body);
    assert_eq!(f.get(&format!("/workflows/{id}/rules/nope"), Some(&s)).await.status, StatusCode::NOT_FOUND);
    let fact = f.get(&format!("/workflows/{id}/facts/1"), Some(&s)).await;
    assert!(fact.body.contains("rule <a href=\"/workflows/"), "a version made by a firing links it: {}", fact.body);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_filters_by_status_pack_and_text_and_counts() {
    let f = Fixture::new().await;
    let one = f.order("a", "one").await;
    let two = f.order("a", "two").await;
    let s = f.login(TOKEN_A).await;
    let list = f.get("/workflows", Some(&s)).await;
    assert!(list.body.contains(one.as_str()) && list.body.contains(two.as_str()), "{}", list.body);
    assert!(list.body.contains("<span class=\"n\">2</span>"), "two running: {}", list.body);
    // Newest first.
    assert!(list.body.find(two.as_str()) < list.body.find(one.as_str()), "{}", list.body);
    let done = f.get("/workflows?status=completed", Some(&s)).await;
    assert!(!done.body.contains(one.as_str()) && done.body.contains("No workflow matches."), "{}", done.body);
    let waiting = f.get("/workflows?status=waiting-invocation&pack=orders&version=1", Some(&s)).await;
    assert!(waiting.body.contains(one.as_str()) && waiting.body.contains("waiting on an invocation"));
    assert!(f.get("/workflows?status=waiting-timer", Some(&s)).await.body.contains("No workflow matches."));
    assert!(f.get("/workflows?pack=orders&version=2", Some(&s)).await.body.contains("No workflow matches."));
    let by_request = f.get("/workflows?q=req-one", Some(&s)).await;
    assert!(by_request.body.contains(one.as_str()) && !by_request.body.contains(two.as_str()));
    let prefix = &one.as_str()[..one.as_str().len() - 20];
    let by_prefix = f.get(&format!("/workflows?q={prefix}"), Some(&s)).await;
    assert!(by_prefix.body.contains(one.as_str()), "{}", by_prefix.body);
    // Created in a window (UTC): now is in it, a day ago's window is empty.
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let window = f.get(&format!("/workflows?since={today}"), Some(&s)).await;
    assert!(window.body.contains(one.as_str()), "{}", window.body);
    let before = f.get(&format!("/workflows?until={today}T00%3A00"), Some(&s)).await;
    assert!(before.body.contains("No workflow matches."), "{}", before.body);
    // Pages of one, newest first, through the link of each page.
    let first = f.get("/workflows?size=1", Some(&s)).await;
    assert!(first.body.contains(two.as_str()) && !first.body.contains(one.as_str()), "{}", first.body);
    let next = first.body.split("rel=\"next\" href=\"").nth(1).and_then(|r| r.split('"').next()).expect("a next page");
    let second = f.get(&next.replace("&amp;", "&"), Some(&s)).await;
    assert!(second.body.contains(one.as_str()) && !second.body.contains(two.as_str()), "{}", second.body);
    assert!(!second.body.contains("rel=\"next\""), "the last page: {}", second.body);
    // Hostile filters and page tokens are refused, never read.
    let b_id = f.order("b", "theirs").await;
    for bad in [
        "/workflows?status=nope".to_string(),
        "/workflows?version=1".into(),
        "/workflows?pack=orders&version=a%20b".into(),
        "/workflows?since=yesterday".into(),
        "/workflows?size=100000".into(),
        "/workflows?before=nope".into(),
        "/workflows?before=99999999999999999999999:wf_a.x".into(),
        format!("/workflows?before=1:{b_id}"),
        "/workflows?pack=%3Cscript%3E".into(),
    ] {
        assert_eq!(f.get(&bad, Some(&s)).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let b = f.login(TOKEN_B).await;
    let theirs = f.get("/workflows", Some(&b)).await;
    assert!(theirs.body.contains(b_id.as_str()) && !theirs.body.contains(one.as_str()), "{}", theirs.body);
    assert_eq!(f.get("/workflows?pack=orders", Some(&s)).await.status, StatusCode::OK);
    // The packs and schedules pages, and the embedded assets.
    let packs = f.get("/packs", Some(&s)).await;
    assert!(packs.body.contains("orders") && packs.body.contains("ship.it"), "{}", packs.body);
    assert_eq!(f.get("/schedules", Some(&s)).await.status, StatusCode::OK);
    let js = f.get("/assets/htmx.min.js", None).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/javascript"));
    assert_eq!(f.get("/nope", Some(&s)).await.status, StatusCode::NOT_FOUND);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_cancel_says_how_many_then_cancels_them_and_no_other_tenants() {
    let f = Fixture::new().await;
    let mine = [f.order("a", "one").await, f.order("a", "two").await];
    let theirs = f.order("b", "three").await;
    let s = f.login(TOKEN_A).await;
    let list = f.get("/workflows", Some(&s)).await;
    assert!(list.body.contains("Cancel the running workflows of this filter"), "{}", list.body);
    // Without the session's token: refused, nothing asked.
    let bad = f.post("/workflows/cancel", Some(&s), "csrf=nope&pack=orders").await;
    assert_eq!(bad.status, StatusCode::FORBIDDEN);
    let ask = f.post("/workflows/cancel", Some(&s), &format!("csrf={}&pack=orders", s.csrf)).await;
    assert_eq!(ask.status, StatusCode::OK);
    assert!(ask.body.contains("Cancel 2 running workflow(s)?") && ask.body.contains("pack orders"), "{}", ask.body);
    // A filter by request id: one; by a finished status: none.
    let one = f.post("/workflows/cancel", Some(&s), &format!("csrf={}&q=req-one", s.csrf)).await;
    assert!(one.body.contains("Cancel 1 running workflow(s)?"), "{}", one.body);
    let none = f.post("/workflows/cancel", Some(&s), &format!("csrf={}&status=failed", s.csrf)).await;
    assert!(none.body.contains("Cancel 0 running workflow(s)?"), "{}", none.body);
    // A stale count (one more started since) is refused.
    let stale = f.post("/workflows/cancel", Some(&s), &format!("csrf={}&pack=orders&confirm=1", s.csrf)).await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);
    for id in &mine {
        assert_eq!(f.console.runtime.get("a", id).unwrap().meta.status.as_str(), "running");
    }
    let form = format!("csrf={}&pack=orders&status=waiting-invocation&confirm=2&reason=drill", s.csrf);
    let done = f.post("/workflows/cancel", Some(&s), &form).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.headers[header::LOCATION], "/workflows?pack=orders&status=waiting-invocation&done=cancelled-2");
    for id in &mine {
        let w = f.console.runtime.get("a", id).unwrap();
        assert_eq!(w.meta.status.as_str(), "cancelled", "{:?}", w.meta.reason);
    }
    assert_eq!(f.console.runtime.get("b", &theirs).unwrap().meta.status.as_str(), "running");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_signal_reaches_each_running_workflow_of_the_filter() {
    let f = Fixture::new().await;
    let mine = [f.order("a", "one").await, f.order("a", "two").await];
    let theirs = f.order("b", "three").await;
    let s = f.login(TOKEN_A).await;
    let ask = f.post("/workflows/signal", Some(&s), &format!("csrf={}&status=running", s.csrf)).await;
    assert!(ask.body.contains("Signal 2 running workflow(s)?"), "{}", ask.body);
    let bad = f.post("/workflows/signal", Some(&s), &format!("csrf={}&confirm=2&name=go&payload=%7B", s.csrf)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    let sent = f
        .post("/workflows/signal", Some(&s), &format!("csrf={}&status=running&confirm=2&name=go&payload=7", s.csrf))
        .await;
    assert_eq!(sent.status, StatusCode::SEE_OTHER, "{}", sent.body);
    assert_eq!(sent.headers[header::LOCATION], "/workflows?status=running&done=signalled-2");
    let signals = |tenant: &str, id: &WorkflowId| {
        let snap = f.console.runtime.get(tenant, id).unwrap();
        snap.facts.iter().filter(|f| &*f.ty.name() == "Signal").count()
    };
    for id in &mine {
        assert_eq!(signals("a", id), 1, "{id}");
    }
    assert_eq!(signals("b", &theirs), 0);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_sent_from_the_page_arrives_as_a_signal_fact() {
    let f = Fixture::new().await;
    let id = f.order("a", "n").await;
    let s = f.login(TOKEN_A).await;
    let page = f.get(&format!("/workflows/{id}"), Some(&s)).await;
    assert!(page.body.contains("Send signal"), "{}", page.body);
    let path = format!("/workflows/{id}/signal");
    let bad = f.post(&path, Some(&s), &format!("csrf={}&name=go&payload=%7Bnope", s.csrf)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("payload: not JSON"), "{}", bad.body);
    assert_eq!(f.post(&path, Some(&s), "csrf=nope&name=go").await.status, StatusCode::FORBIDDEN);
    let b = f.login(TOKEN_B).await;
    assert_eq!(f.post(&path, Some(&b), &format!("csrf={}&name=go", b.csrf)).await.status, StatusCode::NOT_FOUND);
    let sent = f.post(&path, Some(&s), &format!("csrf={}&name=go&payload=%7B%22day%22%3A3%7D", s.csrf)).await;
    assert_eq!(sent.status, StatusCode::SEE_OTHER, "{}", sent.body);
    let snap = f.console.runtime.get("a", &id).unwrap();
    let signal = snap.facts.iter().find(|f| &*f.ty.name() == "Signal").expect("a Signal fact");
    let fields = signal.fields.to_json();
    assert_eq!((fields["name"].as_str(), fields["payload"]["day"].as_i64()), (Some("go"), Some(3)), "{fields}");
    f.stop().await;
}

/// A parent that starts an `orders` child and emits a signal.
const PARENT_TOML: &str = "[pack]\nname = \"parent\"\nversion = \"1\"\n";
const PARENT_RULES: &str = r#"
rule "spawn" {
    match { g: Go() }
    action {
        start_workflow("orders", [#{ type: "Order", fields: #{ id: "c1", note: "child", status: "new" } }]);
        emit("hello", #{ from: "parent" });
    }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflow_page_shows_attempts_family_and_signal_lineage() {
    let f = Fixture::new().await;
    f.order("a", "one").await;
    let rt = f.console.runtime.clone();
    let files: BTreeMap<String, String> =
        [("pack.toml".to_string(), PARENT_TOML.to_string()), ("p.rules".to_string(), PARENT_RULES.to_string())].into();
    rt.deploy("a", files, false, None).await.unwrap();
    let go: Vec<FactSpec> = serde_json::from_value(serde_json::json!([{"type": "Go", "fields": {}}])).unwrap();
    let (parent, _) = rt.start("a", "parent", go, "req-parent").await.unwrap();
    let s = f.login(TOKEN_A).await;
    // The child starts and the signal is routed after the parent's turn.
    let mut page = String::new();
    for _ in 0..100 {
        page = f.get(&format!("/workflows/{parent}"), Some(&s)).await.body;
        if page.contains("Parent and children") && page.contains("Out (1)") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(page.contains("Parent and children") && page.contains("(this one)"), "{page}");
    let child = page
        .split("<ul class=\"tree\"><li><a href=\"/workflows/")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a child link")
        .to_string();
    assert!(page.contains("Out (1)") && page.contains("hello"), "{page}");
    let signal = page.split("href=\"/signals/").nth(1).and_then(|r| r.split('"').next()).expect("a signal").to_string();
    // The child: its parent above it, its invocation queued with no worker,
    // attempt 1.
    let mut child_page = f.get(&format!("/workflows/{child}"), Some(&s)).await;
    for _ in 0..100 {
        if child_page.body.contains("queued") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        child_page = f.get(&format!("/workflows/{child}"), Some(&s)).await;
    }
    assert!(child_page.body.contains(&format!("<a href=\"/workflows/{parent}\">")), "{}", child_page.body);
    assert!(child_page.body.contains("queued <span class=\"error\">(no worker)</span>"), "{}", child_page.body);
    assert!(child_page.body.contains(">1 of "), "{}", child_page.body);
    // The signal's lineage names the parent that emitted it.
    let lineage = f.get(&format!("/signals/{signal}"), Some(&s)).await;
    assert_eq!(lineage.status, StatusCode::OK, "{}", lineage.body);
    assert!(lineage.body.contains("hello") && lineage.body.contains(parent.as_str()), "{}", lineage.body);
    // Another tenant sees neither.
    let b = f.login(TOKEN_B).await;
    assert_eq!(f.get(&format!("/signals/{signal}"), Some(&b)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(f.get(&format!("/workflows/{child}"), Some(&b)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(f.get("/signals/%01x", Some(&s)).await.status, StatusCode::NOT_FOUND);
    // The parent's firing graph: its start, the firing, linked.
    let graph = f.get(&format!("/workflows/{parent}/graph"), Some(&s)).await;
    assert!(graph.body.contains("<svg class=\"graph\""), "{}", graph.body);
    assert!(graph.body.contains(">spawn</text>") && graph.body.contains(&format!("/workflows/{parent}/facts/1")));
    assert_eq!(f.get(&format!("/workflows/{parent}/graph"), Some(&b)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(f.get(&format!("/workflows/{parent}/graph?from=x"), Some(&s)).await.status, StatusCode::BAD_REQUEST);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_page_shows_the_backlog_no_worker_serves() {
    let f = Fixture::new().await;
    f.order("a", "one").await;
    let s = f.login(TOKEN_A).await;
    let page = f.get("/workers", Some(&s)).await;
    assert_eq!(page.status, StatusCode::OK);
    // ship.it: one queued (or running), no worker: the row is marked.
    assert!(page.body.contains("<code>ship.it</code>"), "{}", page.body);
    assert!(page.body.contains("Sessions (0)"), "{}", page.body);
    let b = f.login(TOKEN_B).await;
    assert!(!f.get("/workers", Some(&b)).await.body.contains("ship.it"), "another tenant's backlog stays hidden");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_pause_resume_and_trigger_from_the_page() {
    let f = Fixture::new().await;
    let toml = format!(
        "{PACK_TOML}\n[schedules.hourly]\ncron = \"0 0 * * *\"\n\
         facts = [{{ type = \"Order\", fields = {{ id = \"s1\", note = \"scheduled\", status = \"new\" }} }}]\n"
    );
    let files: BTreeMap<String, String> =
        [("pack.toml".to_string(), toml), ("orders.rules".to_string(), RULES.to_string())].into();
    let (pack, _, _) = f.console.runtime.deploy("a", files, false, None).await.unwrap();
    f.console.schedules.install_pack("a", "orders", &pack.manifest.schedules).unwrap();
    let s = f.login(TOKEN_A).await;
    let page = f.get("/schedules", Some(&s)).await;
    assert!(page.body.contains("hourly") && page.body.contains("0 0 * * *"), "{}", page.body);
    // Tenant b sees none of it.
    let b = f.login(TOKEN_B).await;
    assert!(!f.get("/schedules", Some(&b)).await.body.contains("hourly"));
    assert_eq!(
        f.post("/schedules/hourly/pause", Some(&b), &format!("csrf={}", b.csrf)).await.status,
        StatusCode::NOT_FOUND
    );

    assert_eq!(f.post("/schedules/hourly/pause", Some(&s), "").await.status, StatusCode::FORBIDDEN);
    let a = f.post("/schedules/hourly/pause", Some(&s), &format!("csrf={}", s.csrf)).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let page = f.get("/schedules?done=pause", Some(&s)).await;
    assert!(page.body.contains("badge cancelled\">paused") && page.body.contains("Paused."), "{}", page.body);
    let a = f.post("/schedules/hourly/resume", Some(&s), &format!("csrf={}", s.csrf)).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let a = f.post("/schedules/hourly/trigger", Some(&s), &format!("csrf={}", s.csrf)).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let to = a.headers[header::LOCATION].to_str().unwrap().to_string();
    let started = to.split("workflow=").nth(1).expect("the started workflow").replace("%2E", ".");
    let w = f.console.runtime.get("a", &WorkflowId::parse(&started).unwrap()).unwrap();
    assert_eq!(w.meta.pack, "orders");
    let page = f.get(&to, Some(&s)).await;
    assert!(page.body.contains("Triggered.") && page.body.contains(&started), "{}", page.body);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_rollout_and_its_rollback_from_the_packs_page() {
    let f = Fixture::new().await;
    let rt = &f.console.runtime;
    let files = |v: &str| -> BTreeMap<String, String> {
        [
            ("pack.toml".to_string(), PACK_TOML.replace("version = \"1\"", &format!("version = \"{v}\""))),
            (
                "orders.rules".to_string(),
                RULES.replace("ship.it\", #{ id: o.id }", &format!("ship.it\", #{{ id: o.id, v: {v} }}")),
            ),
        ]
        .into()
    };
    rt.deploy("a", files("1"), false, None).await.unwrap();
    rt.rollout("a", "orders", "1", crate::upgrade::Mode::All, false).await.unwrap();
    rt.deploy("a", files("2"), false, None).await.unwrap();
    let facts: Vec<FactSpec> = serde_json::from_value(serde_json::json!([
        {"type": "Order", "fields": {"id": "o1", "note": "live", "status": "new"}}
    ]))
    .unwrap();
    rt.start("a", "orders", facts, "req-live").await.unwrap();
    let s = f.login(TOKEN_A).await;
    let page = f.get("/packs", Some(&s)).await;
    assert!(page.body.contains("<dt>Stable</dt><dd><b>1</b>"), "{}", page.body);
    // The dry run of version 2: `ship` changed; the live workflow moves.
    let diff = f.get("/packs/orders/diff?version=2&mode=all", Some(&s)).await;
    assert_eq!(diff.status, StatusCode::OK, "{}", diff.body);
    assert!(diff.body.contains("Changed (1)") && diff.body.contains("<code>ship</code>"), "{}", diff.body);
    assert!(diff.body.contains("1 live workflow(s) would move to 2"), "{}", diff.body);
    assert_eq!(f.get("/packs/orders/diff?version=9", Some(&s)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(f.get("/packs/orders/diff?version=2&mode=canary", Some(&s)).await.status, StatusCode::BAD_REQUEST);
    let b = f.login(TOKEN_B).await;
    assert_eq!(f.get("/packs/orders/diff?version=2", Some(&b)).await.status, StatusCode::NOT_FOUND);

    let path = "/packs/orders/rollout";
    assert_eq!(f.post(path, Some(&s), "version=2&mode=canary&percent=25").await.status, StatusCode::FORBIDDEN);
    let a = f.post(path, Some(&s), &format!("csrf={}&version=2&mode=canary&percent=0", s.csrf)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = f.post(path, Some(&s), &format!("csrf={}&version=9&mode=all", s.csrf)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = f.post(path, Some(&s), &format!("csrf={}&version=2&mode=canary&percent=25", s.csrf)).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let page = f.get("/packs?done=rollout", Some(&s)).await;
    assert!(
        page.body.contains("Rollout started.") && page.body.contains("<b>2</b> on 25.0% of workflows"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Drop the canary"), "{}", page.body);
    // Another tenant cannot touch it.
    let other = f.post("/packs/orders/rollback", Some(&b), &format!("csrf={}", b.csrf)).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND, "{}", other.body);

    let a = f.post("/packs/orders/rollback", Some(&s), &format!("csrf={}", s.csrf)).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let r = rt.rollout_of("a", "orders").unwrap();
    assert_eq!((r.stable.as_str(), r.canary.is_none()), ("1", true));
    f.stop().await;
}
