//! The firing graph of a window of a workflow's timeline, drawn on the
//! server as SVG: each firing, the fact versions it inserted or modified,
//! and the firings those versions enabled (matched). Layered by longest
//! path (every edge points from an earlier entry to a later one, so one
//! pass in timeline order places each node right of everything it comes
//! from), ordered by timeline position within a layer.
//!
//! Hand-written: a layered layout of a DAG whose order is given is a few
//! lines, and no layout crate is worth its build time here. Each node is a
//! link: a firing to its entry in the timeline, a fact to its page.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde::Deserialize;
use stoa_engine::timeline::{Entry, Event};
use stoa_engine::WorkflowId;

use super::layout::{self, copyable};
use super::workflows::{parse_id, timeline_pager, TIMELINE_PAGE};
use super::{PageError, St, Tenant};

/// Nodes drawn at most; a window with more is cut (and says so).
const MAX_NODES: usize = 400;
const COL_W: u32 = 200;
const ROW_H: u32 = 34;
const NODE_W: u32 = 168;
const NODE_H: u32 = 24;
/// Characters of a label shown in a node (the whole in its tooltip).
const LABEL_CHARS: usize = 21;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// What a turn's input did before any rule fired (a start's facts, an
    /// assert, a signal).
    Input(u64),
    /// A firing, by its timeline entry.
    Firing(u64),
    /// A fact version.
    Fact(u64, u32),
}

#[derive(Debug)]
struct Node {
    key: Key,
    /// The timeline entry it links to.
    seq: u64,
    label: String,
    /// Its full text, for the tooltip.
    title: String,
    layer: u32,
}

/// The graph of a window of entries: nodes in timeline order, edges by
/// node index.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    nodes: Vec<Node>,
    edges: Vec<(usize, usize)>,
    index: HashMap<Key, usize>,
    /// Nodes left out past `MAX_NODES`.
    cut: bool,
}

impl Graph {
    fn node(&mut self, key: Key, seq: u64, label: String, title: String) -> Option<usize> {
        if let Some(&i) = self.index.get(&key) {
            return Some(i);
        }
        if self.nodes.len() >= MAX_NODES {
            self.cut = true;
            return None;
        }
        self.nodes.push(Node { key, seq, label, title, layer: 0 });
        self.index.insert(key, self.nodes.len() - 1);
        Some(self.nodes.len() - 1)
    }

    fn edge(&mut self, from: usize, to: usize) {
        if from != to && !self.edges.contains(&(from, to)) {
            self.edges.push((from, to));
            // `to` is always newer than `from`: one pass keeps longest paths.
            let l = self.nodes[from].layer + 1;
            if self.nodes[to].layer < l {
                self.nodes[to].layer = l;
            }
        }
    }

    /// The graph of `entries` (consecutive, in order).
    pub(crate) fn of(entries: &[Entry]) -> Graph {
        let mut g = Graph::default();
        // What inserts and modifies belong to: the last firing of the turn,
        // or the turn's input before its first firing.
        let mut cause: Option<usize> = None;
        let mut turn = u64::MAX;
        let mut input = (0, String::new());
        for e in entries {
            if e.turn != turn {
                turn = e.turn;
                cause = None;
                input = (e.seq, String::new());
            }
            match &e.event {
                Event::TurnStarted { input: i } => input = (e.seq, i.clone()),
                Event::Fired { rule, section, facts } => {
                    let label = match section.as_str() {
                        "action" => rule.clone(),
                        s => format!("{rule} ({s})"),
                    };
                    let title = format!("#{} turn {} fire {label}", e.seq, e.turn);
                    let Some(f) = g.node(Key::Firing(e.seq), e.seq, label, title) else { break };
                    for &(id, v) in facts {
                        let fact =
                            g.node(Key::Fact(id, v), e.seq, format!("f{id}@{v}"), format!("fact f{id} version {v}"));
                        if let Some(n) = fact {
                            g.edge(n, f);
                        }
                    }
                    cause = Some(f);
                }
                Event::Inserted { id, ty, .. } | Event::Modified { id, ty, .. } => {
                    let v = match &e.event {
                        Event::Modified { version, .. } => *version,
                        _ => 1,
                    };
                    let from = match cause {
                        Some(c) => Some(c),
                        None => {
                            let label = format!("turn {turn}: {}", input.1);
                            g.node(Key::Input(turn), input.0, label.clone(), label)
                        }
                    };
                    let label = format!("f{id}@{v} {ty}");
                    let Some(fact) = g.node(Key::Fact(*id, v), e.seq, label.clone(), format!("fact {label}")) else {
                        break;
                    };
                    // A version matched before it was seen here keeps its
                    // label from the firing; say what it is now.
                    g.nodes[fact].label = label;
                    if let Some(from) = from {
                        g.edge(from, fact);
                    }
                }
                _ => {}
            }
        }
        g
    }

    /// The SVG, each node a link (`base`: the workflow's path; `from`: the
    /// timeline page the entries come from).
    pub(crate) fn svg(&self, base: &str) -> Markup {
        let mut rows: HashMap<u32, u32> = HashMap::new();
        let mut at = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let row = rows.entry(n.layer).or_default();
            at.push((10 + n.layer * COL_W, 10 + *row * ROW_H));
            *row += 1;
        }
        let width = 20 + (self.nodes.iter().map(|n| n.layer).max().unwrap_or(0) + 1) * COL_W;
        let height = 20 + rows.values().max().copied().unwrap_or(1) * ROW_H;
        let clip = |s: &str| -> String {
            if s.chars().count() <= LABEL_CHARS {
                s.to_string()
            } else {
                format!("{}…", s.chars().take(LABEL_CHARS - 1).collect::<String>())
            }
        };
        html! {
            svg.graph xmlns="http://www.w3.org/2000/svg" width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) }
                role="img" aria-label="Firing graph" {
                defs {
                    marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                        path.arrow d="M 0 0 L 10 5 L 0 10 z" {}
                    }
                }
                @for &(a, b) in &self.edges {
                    @let ((x1, y1), (x2, y2)) = (at[a], at[b]);
                    @let (x1, y1, x2, y2) = (x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2);
                    @let mid = (x1 + x2) / 2;
                    path.edge d={ "M " (x1) " " (y1) " C " (mid) " " (y1) ", " (mid) " " (y2) ", " (x2) " " (y2) } marker-end="url(#arrow)" {}
                }
                @for (n, &(x, y)) in self.nodes.iter().zip(&at) {
                    @let (class, href) = match n.key {
                        Key::Input(_) => ("node input", format!("{base}?from={}#e{}", n.seq, n.seq)),
                        Key::Firing(seq) => ("node firing", format!("{base}?from={seq}#e{seq}")),
                        Key::Fact(id, _) => ("node fact", format!("{base}/facts/{id}")),
                    };
                    a href=(href) class=(class) {
                        title { (n.title) }
                        rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="4" {}
                        text x=(x + 8) y=(y + 16) { (clip(&n.label)) }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize, Default)]
pub struct GraphQuery {
    #[serde(default)]
    from: Option<u64>,
}

/// `/workflows/{id}/graph?from=SEQ`: the firing graph of one timeline
/// page (the latest by default).
pub async fn page(
    State(console): St,
    tenant: Tenant,
    Path(id): Path<String>,
    Query(q): Query<GraphQuery>,
) -> Result<Response, PageError> {
    let id: WorkflowId = parse_id(&id)?;
    let rt = &console.runtime;
    let meta =
        rt.meta_of(&tenant.name, &id)?.ok_or_else(|| PageError::NotFound(format!("workflow {id} does not exist")))?;
    let last = meta.timeline_seq;
    let from = q.from.unwrap_or_else(|| last.saturating_sub(TIMELINE_PAGE as u64 - 1)).clamp(1, last.max(1));
    let entries = rt.timeline(&tenant.name, &id, from, TIMELINE_PAGE)?;
    let graph = Graph::of(&entries);
    let base = format!("/workflows/{id}");
    let body = html! {
        h1 { "Firing graph of " a href=(base) { (copyable(id.as_str())) } }
        p.muted {
            "Rule firings, the fact versions they inserted or modified, and the firings those versions enabled; "
            "left to right in the order they happened. Click a firing for its timeline entry, a fact for its history."
        }
        (timeline_pager(&format!("{base}/graph"), from, last, entries.len()))
        @if graph.nodes.is_empty() {
            p.muted { "No firing or fact change in these entries." }
        } @else {
            @if graph.cut { p.muted { "The first " (MAX_NODES) " nodes are drawn; page on for the rest." } }
            div.scroll.graph { (graph.svg(&base)) }
        }
    };
    Ok(layout::page(&format!("Firing graph of {id}"), Some(&tenant), body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_engine::timeline::SectionKind;

    fn e(seq: u64, turn: u64, event: Event) -> Entry {
        Entry { seq, turn, at_ms: 0, at_us: 0, event }
    }

    /// An input's fact enables a firing, whose insert enables another in
    /// the next turn: four layers, edges forward, and each node a link.
    #[test]
    fn firings_facts_and_what_they_enabled_in_layers() {
        let ty = stoa_rules::Sym::new("Job");
        let entries = vec![
            e(1, 1, Event::TurnStarted { input: "start with 1 fact(s)".into() }),
            e(2, 1, Event::Inserted { id: 1, ty, fields: Default::default() }),
            e(3, 1, Event::Fired { rule: "split".into(), section: SectionKind::Action, facts: vec![(1, 1)] }),
            e(4, 1, Event::Inserted { id: 2, ty, fields: Default::default() }),
            e(5, 2, Event::TurnStarted { input: "result".into() }),
            e(6, 2, Event::Fired { rule: "encode".into(), section: SectionKind::Reaction, facts: vec![(2, 1)] }),
            e(7, 2, Event::Modified { id: 2, ty, version: 2, before: Default::default(), after: Default::default() }),
        ];
        let g = Graph::of(&entries);
        let shown: Vec<(String, u32)> = g.nodes.iter().map(|n| (n.label.clone(), n.layer)).collect();
        assert_eq!(
            shown,
            [
                ("turn 1: start with 1 fact(s)".to_string(), 0),
                ("f1@1 Job".into(), 1),
                ("split".into(), 2),
                ("f2@1 Job".into(), 3),
                ("encode (reaction)".into(), 4),
                ("f2@2 Job".into(), 5),
            ]
        );
        assert_eq!(g.edges, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]);
        let svg = g.svg("/workflows/wf_a.x").into_string();
        assert!(svg.contains(r##"href="/workflows/wf_a.x?from=3#e3""##), "{svg}");
        assert!(svg.contains(r#"href="/workflows/wf_a.x/facts/2""#), "{svg}");
        assert_eq!(svg.matches("<path class=\"edge\"").count(), 5);
    }

    /// A window of many firings draws at most `MAX_NODES`, and says so.
    #[test]
    fn large_windows_are_cut() {
        let entries: Vec<Entry> = (1..=1000)
            .map(|s| e(s, 1, Event::Fired { rule: "r".into(), section: SectionKind::Action, facts: vec![] }))
            .collect();
        let g = Graph::of(&entries);
        assert_eq!((g.nodes.len(), g.cut), (MAX_NODES, true));
    }
}
