//! The web console over a real server (`--http-listen 127.0.0.1:0`):
//! plain HTTP (login → list → workflow page → cancel, tenant isolation,
//! CSRF, metrics on the same listener), and a real browser: Debian's
//! chromium driven headless through WebDriver (`chromedriver`), with a
//! WebDriver client of a few calls written here (see `Browser`).
//!
//! The browser test needs `chromium` and `chromedriver`
//! (`tests/e2e/setup-browser.sh` installs them; the README's test command
//! runs it). Without them it fails under CI (`CI` set) or with
//! `STOA_REQUIRE_BROWSER=1`, and elsewhere skips, saying so on stderr.
//! Screenshots of each page go to `$CARGO_TARGET_TMPDIR/console/`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stoa_proto::v1 as pb;

use crate::client::{client, deploy, facts, RawWorker};
use crate::support::{Proc, Server, TOKEN_A, TOKEN_B};

const WAIT: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// An HTTP/1.1 answer.
struct Answer {
    status: u16,
    /// Header lines, names lower-cased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// One request over a fresh connection to `base` (`http://host:port`).
fn http(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("request");
    // Read the head, then the body by its length: chromedriver keeps the
    // connection open whatever `Connection: close` says.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut buf).expect("response");
        assert!(n > 0, "the connection closed before the head ended: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("a status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = raw[head_end + 4..].to_vec();
    loop {
        let complete = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if complete {
            break;
        }
        let n = s.read(&mut buf).expect("response body");
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let body = if chunked { dechunk(&body) } else { body };
    Answer { status, headers, body }
}

/// A chunked body's content.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of `name="csrf" value="…"` in a page.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("a CSRF field").to_string()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// Starts one `once` workflow per request id for `token`'s tenant.
async fn start(addr: &str, token: &str, ids: &[&str]) -> Vec<String> {
    let mut c = client(addr, token).await;
    deploy(&mut c, "tests/packs/once").await;
    let mut out = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let r = c
            .start_workflow(pb::StartWorkflowRequest {
                pack: "once".into(),
                facts: facts(serde_json::json!([{"type": "Job", "fields": {"n": n, "state": "new"}}])),
                request_id: id.to_string(),
            })
            .await
            .expect("start")
            .into_inner();
        out.push(r.workflow_id);
    }
    out
}

async fn status_of(addr: &str, token: &str, id: &str) -> String {
    let mut c = client(addr, token).await;
    let w = c.get_workflow(pb::GetWorkflowRequest { workflow_id: id.into(), without_facts: true }).await;
    w.expect("get").into_inner().status
}

#[test]
fn console_over_http_login_list_workflow_cancel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--http-listen", "127.0.0.1:0"]);
    let web = server.console.clone().expect("the server printed its console address");
    assert_eq!(server.metrics.as_deref(), Some(web.trim_start_matches("http://")), "one listener serves both");
    let rt = rt();
    let ids = rt.block_on(start(&server.addr, TOKEN_A, &["h-1", "h-2"]));
    let theirs = rt.block_on(start(&server.addr, TOKEN_B, &["h-b"])).remove(0);

    // Pages need a login; a wrong token is refused.
    let a = http(&web, "GET", "/workflows", &[], "");
    assert_eq!((a.status, a.header("location")), (303, Some("/login?next=%2Fworkflows")));
    let a = http(&web, "POST", "/login", &[FORM], &form(&[("token", "wrong-token")]));
    assert_eq!(a.status, 401);
    let a = http(&web, "POST", "/login", &[FORM], &form(&[("token", TOKEN_A), ("next", "/workflows")]));
    assert_eq!(a.status, 303, "{}", a.body);
    let set = a.header("set-cookie").expect("a session cookie");
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains(TOKEN_A), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let me = [("Cookie", cookie.as_str())];

    // The list, filtered.
    let list = http(&web, "GET", "/workflows?status=running&pack=once", &me, "");
    assert_eq!(list.status, 200);
    for id in &ids {
        assert!(list.body.contains(&format!("href=\"/workflows/{id}\"")), "{id} listed: {}", list.body);
    }
    assert!(!list.body.contains(&theirs), "another tenant's workflow listed");

    // One workflow: waiting on t.work.
    let page = http(&web, "GET", &format!("/workflows/{}", ids[0]), &me, "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("t.work") && page.body.contains("badge running"), "{}", page.body);
    let csrf = csrf_of(&page.body);

    // Another tenant's workflow is a 404, never data.
    let other = http(&web, "GET", &format!("/workflows/{theirs}"), &me, "");
    assert_eq!(other.status, 404);
    assert!(!other.body.contains("t.work"), "{}", other.body);

    // Cancel: refused without the CSRF token, done with it.
    let path = format!("/workflows/{}/cancel", ids[0]);
    let refused = http(&web, "POST", &path, &[me[0], FORM], &form(&[("reason", "no token")]));
    assert_eq!(refused.status, 403);
    let done = http(&web, "POST", &path, &[me[0], FORM], &form(&[("csrf", &csrf), ("reason", "from the e2e test")]));
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(rt.block_on(status_of(&server.addr, TOKEN_A, &ids[0])), "cancelled");
    assert_eq!(rt.block_on(status_of(&server.addr, TOKEN_A, &ids[1])), "running");
    let page = http(&web, "GET", &format!("/workflows/{}", ids[0]), &me, "");
    assert!(page.body.contains("badge cancelled") && page.body.contains("from the e2e test"), "{}", page.body);

    // Metrics stay on the same listener, without a login.
    let m = http(&web, "GET", "/metrics", &[], "");
    assert_eq!(m.status, 200);
    assert!(m.body.contains("stoa_"), "{}", m.body);
}

// ------------------------------------------------------------ the browser

/// Where chromium and chromedriver are, if installed.
fn browser_binaries() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(n)).find(|p| p.is_file())
        })
    };
    let chromium =
        std::env::var_os("STOA_CHROMIUM").map(PathBuf::from).or_else(|| find(&["chromium", "chromium-browser"]));
    let driver = std::env::var_os("STOA_CHROMEDRIVER").map(PathBuf::from).or_else(|| find(&["chromedriver"]));
    Some((chromium?, driver?))
}

/// A W3C WebDriver session on chromedriver: the dozen calls these tests
/// use, over the same small HTTP client (a crate such as fantoccini
/// would bring an HTTP client stack and Mozilla's `webdriver` types for
/// them).
struct Browser {
    driver: String,
    session: String,
    _chromedriver: Proc,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().unwrap().port();
        let child = std::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let proc = Proc(child);
        let driver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http(&driver, "GET", "/status", &[], "").body.contains("\"ready\":true");
            if up {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", format!("--user-data-dir={}", profile.path().display())],
            },
        }}});
        let v = call(&driver, "POST", "/session", Some(caps));
        let session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
        Browser { driver, session, _chromedriver: proc, _profile: profile }
    }

    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        call(&self.driver, method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(serde_json::json!({ "url": url })));
    }

    fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    fn source(&self) -> String {
        self.call("GET", "/source", None).as_str().unwrap_or_default().to_string()
    }

    fn find(&self, css: &str) -> String {
        let v = self.call("POST", "/element", Some(serde_json::json!({"using": "css selector", "value": css})));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    fn count(&self, css: &str) -> usize {
        let v = self.call("POST", "/elements", Some(serde_json::json!({"using": "css selector", "value": css})));
        v.as_array().map_or(0, Vec::len)
    }

    fn type_in(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/clear"), Some(serde_json::json!({})));
        self.call("POST", &format!("/element/{e}/value"), Some(serde_json::json!({ "text": text })));
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(serde_json::json!({})));
    }

    fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/text"), None).as_str().unwrap_or_default().to_string()
    }

    /// Waits until the page source satisfies `ok`.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.source();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "waited 30 s for {what}; the page: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, dir: &Path, name: &str) {
        use base64::Engine;
        let v = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).expect("base64");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write a screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(&self.driver, "DELETE", &format!("/session/{}", self.session), &[], "");
    }
}

/// One WebDriver command; its `value`, or a panic with the driver's error.
fn call(driver: &str, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let a = http(driver, method, path, &[("Content-Type", "application/json")], &body);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_else(|_| panic!("{method} {path}: {}", a.body));
    assert!(a.status == 200, "{method} {path}: {} {v}", a.status);
    v["value"].clone()
}

#[test]
fn console_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser_binaries() else {
        let required = std::env::var_os("CI").is_some() || std::env::var_os("STOA_REQUIRE_BROWSER").is_some();
        assert!(!required, "chromium and chromedriver are missing: run tests/e2e/setup-browser.sh");
        eprintln!(
            "SKIPPED console_in_a_real_browser: chromium and chromedriver are not installed \
             (tests/e2e/setup-browser.sh installs them; CI=1 or STOA_REQUIRE_BROWSER=1 makes this a failure)"
        );
        return;
    };
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--http-listen", "127.0.0.1:0"]);
    let web = server.console.clone().expect("console address");
    let rt = rt();
    let ids = rt.block_on(start(&server.addr, TOKEN_A, &["b-live", "b-cancel"]));
    let theirs = rt.block_on(start(&server.addr, TOKEN_B, &["b-theirs"])).remove(0);
    let browser = Browser::start(&chromium, &chromedriver);

    // Login: a wrong token, then the right one lands on the page asked for.
    browser.go(&format!("{web}/workflows"));
    assert!(browser.url().contains("/login?next="), "{}", browser.url());
    browser.screenshot(&shots, "login");
    browser.type_in("#token", "not-the-token");
    browser.click("button[type=submit]");
    browser.wait_for("the refusal", |s| s.contains("unknown token"));
    browser.type_in("#token", TOKEN_A);
    browser.click("button[type=submit]");
    browser.wait_for("the list", |s| s.contains(&ids[0]) && s.contains(&ids[1]));
    assert!(!browser.source().contains(&theirs));
    // Scripts ran: times are shown in the browser's zone, UTC on hover.
    browser.wait_for("local times", |s| s.contains("data-local"));
    browser.screenshot(&shots, "workflows");

    // The live workflow: open it, then answer its invocation; the timeline
    // updates by itself until it completes.
    browser.click(&format!("a[href='/workflows/{}']", ids[0]));
    browser.wait_for("the workflow page", |s| s.contains("Waiting invocations") && s.contains("badge running"));
    let entries = browser.count("ol.entries li");
    browser.screenshot(&shots, "workflow-running");
    rt.block_on(async {
        let mut w = RawWorker::connect(&server.addr, TOKEN_A, &["t.work"], 8).await.expect("worker");
        let deadline = Instant::now() + WAIT;
        let inv = loop {
            let invs = w.invocations(WAIT).await;
            if let Some(inv) = invs.into_iter().find(|i| i.workflow_id == ids[0]) {
                break inv;
            }
            assert!(Instant::now() < deadline, "the live workflow's invocation never came");
        };
        assert!(w.answer(&inv, serde_json::json!({"ok": true})).await);
        // The session stays until the answer is applied (dropped at once,
        // it could close before the answer left).
        let deadline = Instant::now() + WAIT;
        while status_of(&server.addr, TOKEN_A, &ids[0]).await != "completed" {
            assert!(Instant::now() < deadline, "the answer was never applied");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(w);
    });
    browser.wait_for("the live update to completed", |s| s.contains("badge completed"));
    assert!(browser.count("ol.entries li") > entries, "the timeline grew");
    browser.screenshot(&shots, "workflow-completed");

    // Why / why not for its rule.
    browser.go(&format!("{web}/workflows/{}/rules/work", ids[0]));
    browser.wait_for("the rule page", |s| s.contains("Conditions"));
    assert!(browser.text("h1").contains("work"));
    browser.screenshot(&shots, "why");

    // Cancel from the page (confirming the dialog).
    browser.go(&format!("{web}/workflows/{}", ids[1]));
    browser.wait_for("the second workflow", |s| s.contains("Cancel workflow"));
    browser.type_in("input[name=reason]", "cancelled in the browser");
    browser.click("button.danger");
    let deadline = Instant::now() + WAIT;
    loop {
        let path = format!("/session/{}/alert/accept", browser.session);
        let a = http(&browser.driver, "POST", &path, &[("Content-Type", "application/json")], "{}");
        if a.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no confirmation dialog: {}", a.body);
        std::thread::sleep(Duration::from_millis(50));
    }
    browser.wait_for("the cancelled workflow", |s| s.contains("badge cancelled") && s.contains("Cancel requested."));
    browser.screenshot(&shots, "workflow-cancelled");

    // Packs, and another tenant's workflow by URL: a 404 page.
    browser.go(&format!("{web}/packs"));
    browser.wait_for("the packs page", |s| s.contains("t.work"));
    browser.screenshot(&shots, "packs");
    browser.go(&format!("{web}/workflows/{theirs}"));
    browser.wait_for("the 404 page", |s| s.contains("404 Not Found"));
    eprintln!("console screenshots: {}", shots.display());
}

/// The browser binaries, or `None` after saying why the test skips (a
/// failure under CI or with `STOA_REQUIRE_BROWSER=1`).
fn browser_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    let found = browser_binaries();
    if found.is_none() {
        let required = std::env::var_os("CI").is_some() || std::env::var_os("STOA_REQUIRE_BROWSER").is_some();
        assert!(!required, "chromium and chromedriver are missing: run tests/e2e/setup-browser.sh");
        eprintln!(
            "SKIPPED {test}: chromium and chromedriver are not installed \
             (tests/e2e/setup-browser.sh installs them; CI=1 or STOA_REQUIRE_BROWSER=1 makes this a failure)"
        );
    }
    found
}

/// Rows of the list shown now.
fn rows(browser: &Browser) -> usize {
    browser.count("#list table.grid tbody tr")
}

/// The list with filters and pages, a bulk cancel over a filter (not a
/// pack), the firing graph clicked through to a firing and to a fact, and
/// a version's dry run.
#[test]
fn console_filters_bulk_cancel_graph_and_diff_in_a_real_browser() {
    let Some((chromium, chromedriver)) =
        browser_or_skip("console_filters_bulk_cancel_graph_and_diff_in_a_real_browser")
    else {
        return;
    };
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--http-listen", "127.0.0.1:0"]);
    let web = server.console.clone().expect("console address");
    let rt = rt();
    let requests: Vec<String> = (0..60).map(|i| format!("f-{i:02}")).collect();
    let ids = rt.block_on(start(&server.addr, TOKEN_A, &requests.iter().map(String::as_str).collect::<Vec<_>>()));
    let browser = Browser::start(&chromium, &chromedriver);
    browser.go(&format!("{web}/login"));
    browser.type_in("#token", TOKEN_A);
    browser.click("button[type=submit]");
    browser.wait_for("the list", |s| s.contains(&ids[59]));

    // Newest first, 50 a page; the next page has the other 10.
    assert_eq!(rows(&browser), 50);
    assert!(browser.source().contains(&ids[59]) && !browser.source().contains(&format!("/workflows/{}\"", ids[0])));
    browser.click("a[rel=next]");
    browser.wait_for("the second page", |s| s.contains(&format!("/workflows/{}\"", ids[0])));
    assert_eq!(rows(&browser), 10);
    // Filters: a status (with its count), then a request id typed in.
    browser.go(&format!("{web}/workflows?status=waiting-invocation&pack=once"));
    browser.wait_for("the filtered list", |s| s.contains("waiting on an invocation"));
    assert!(browser.source().contains("<span class=\"n\">60</span>"), "60 counted");
    browser.type_in("input[name=q]", "f-07");
    browser.click("form.filters button[type=submit]");
    browser.wait_for("one row", |s| s.contains(&ids[7]) && !s.contains(&ids[8]));
    assert_eq!(rows(&browser), 1);
    browser.screenshot(&shots, "workflows-filtered");

    // Bulk cancel over that filter (a request id, no pack): it says how
    // many, then cancels that one only.
    browser.click("div.bulk form[action='/workflows/cancel'] button");
    browser.wait_for("the confirmation", |s| s.contains("Cancel 1 running workflow(s)?"));
    assert!(browser.source().contains("id or request id “f-07”"), "the filter in words");
    browser.screenshot(&shots, "bulk-cancel-confirm");
    browser.click("button.danger");
    browser.wait_for("the notice", |s| s.contains("Cancelled 1 workflow(s)"));
    let deadline = Instant::now() + WAIT;
    while rt.block_on(status_of(&server.addr, TOKEN_A, &ids[7])) != "cancelled" {
        assert!(Instant::now() < deadline, "the workflow was never cancelled");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rt.block_on(status_of(&server.addr, TOKEN_A, &ids[8])), "running");

    // The firing graph of a workflow: a firing leads to its timeline
    // entry, a fact to its history.
    browser.go(&format!("{web}/workflows/{}/graph", ids[3]));
    browser.wait_for("the graph", |s| s.contains("<svg") && s.contains("class=\"node firing\""));
    browser.screenshot(&shots, "firing-graph");
    browser.click("svg a.firing");
    browser.wait_for("the firing's entry", |s| s.contains("Timeline") && s.contains("fire   work"));
    assert!(browser.url().contains("#e"), "{}", browser.url());
    browser.go(&format!("{web}/workflows/{}/graph", ids[3]));
    browser.wait_for("the graph again", |s| s.contains("class=\"node fact\""));
    browser.click("svg a.fact");
    browser.wait_for("the fact's page", |s| s.contains("Job") && s.contains("/facts/1"));
    assert!(browser.url().ends_with(&format!("/workflows/{}/facts/1", ids[3])), "{}", browser.url());

    // A second version as a canary on almost nothing; its dry run against
    // the stable one: a new rule, and the activations it would gain.
    rt.block_on(async {
        let mut c = client(&server.addr, TOKEN_A).await;
        let files = crate::client::pack_files("tests/packs/once")
            .into_iter()
            .map(|mut f| {
                let text = String::from_utf8(f.content).expect("utf-8");
                f.content = match f.path.as_str() {
                    "pack.toml" => text.replace("version = \"1\"", "version = \"2\"").into_bytes(),
                    _ => format!("{text}\nrule \"note\" {{\n    match {{ j: Job(state == \"running\") }}\n    action {{ log(\"seen\"); }}\n}}\n").into_bytes(),
                };
                f
            })
            .collect();
        c.deploy_pack(pb::DeployPackRequest {
            files,
            rollout: pb::Rollout::Canary as i32,
            canary_fraction: 0.0001,
            ..Default::default()
        })
        .await
        .expect("deploy version 2");
    });
    browser.go(&format!("{web}/packs"));
    browser.wait_for("the packs page", |s| s.contains("Show the diff"));
    browser.click("article.pack form[action$='/diff'] button");
    browser.wait_for("the dry run", |s| s.contains("Dry run: once 2") && s.contains("New (1)"));
    let page = browser.source();
    assert!(page.contains("<code>note</code>"), "{page}");
    assert!(page.contains("Activations gained") && page.contains("live workflow(s) would move to 2"), "{page}");
    browser.screenshot(&shots, "pack-diff");

    // A worker takes the invocations and keeps them: the workflow page
    // shows the attempt running, on which session, until when.
    let worker = rt.block_on(async {
        let mut w = RawWorker::connect(&server.addr, TOKEN_A, &["t.work"], 100).await.expect("worker");
        let deadline = Instant::now() + WAIT;
        let mut taken = 0;
        while taken < 59 && Instant::now() < deadline {
            taken += w.invocations(Duration::from_secs(2)).await.len();
        }
        w
    });
    browser.go(&format!("{web}/workflows/{}", ids[8]));
    browser.wait_for("the running attempt", |s| s.contains("Waiting invocations") && s.contains(">session "));
    browser.screenshot(&shots, "workflow-waiting");
    drop(worker);
    eprintln!("console screenshots: {}", shots.display());
}
