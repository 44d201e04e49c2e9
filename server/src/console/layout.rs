//! The page shell and the small pieces every page uses: timestamps, status
//! badges, JSON values.

use maud::{html, Markup, DOCTYPE};
use stoa_rules::Value;

use super::Tenant;

/// A whole page: header with navigation (and the tenant, when logged in),
/// then `body`.
pub fn page(title: &str, tenant: Option<&Tenant>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // No inline styles (the CSP forbids them), no eval.
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false}"#;
                title { (title) " · Stoa" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/htmx.min.js" defer {}
                script src="/assets/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/workflows" { "Stoa" }
                    nav {
                        a href="/workflows" { "Workflows" }
                        a href="/packs" { "Packs" }
                        a href="/schedules" { "Schedules" }
                        a href="/workers" { "Workers" }
                    }
                    @if let Some(t) = tenant {
                        span.who { "tenant " b.tenant { (t.name) } }
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(t.csrf);
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A timestamp (ms since the epoch) in UTC, which the script shows in the
/// browser's zone (UTC on hover).
pub fn time(ms: u64) -> Markup {
    if ms == 0 {
        return html! { span.muted { "—" } };
    }
    let Ok(ts) = jiff::Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64) else {
        return html! { (ms) };
    };
    let iso = ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let shown = ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! { time datetime=(iso) title=(shown) { (shown) } }
}

/// A workflow status as a coloured badge.
pub fn status(s: &str) -> Markup {
    html! { span class={ "badge " (s) } { (s) } }
}

/// An id with a copy button (the button only works with scripts on).
pub fn copyable(id: &str) -> Markup {
    html! { code.id { (id) } " " button.copy type="button" data-copy=(id) title="Copy the id" { "copy" } }
}

/// A fact field's value: strings as they are, the rest as JSON.
pub fn value(v: &Value) -> Markup {
    match v {
        Value::Str(s) => html! { (s.as_ref() as &str) },
        Value::Null => html! { span.muted { "null" } },
        other => html! { code { (other.to_string()) } },
    }
}

/// A page's place for an informational line.
pub fn notice(text: &str) -> Markup {
    html! { p.notice role="status" { (text) } }
}
