//! Client commands: talk to a Stoa server over gRPC.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use stoa_proto::v1 as pb;
use stoa_proto::v1::stoa_client::StoaClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(clap::Args, Clone)]
pub struct Conn {
    /// Server address.
    #[arg(long, env = "STOA_SERVER", default_value = "http://127.0.0.1:7233")]
    pub server: String,
    /// Bearer token; it names your tenant (`stoa serve --token TENANT=TOKEN`).
    #[arg(long, env = "STOA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON for scripts instead of text.
    #[arg(long)]
    pub json: bool,
    /// W3C trace context to continue (`00-<trace id>-<span id>-<flags>`):
    /// the server's spans for this command join that trace. With
    /// OTEL_EXPORTER_OTLP_ENDPOINT set, this command exports a span of its
    /// own (a child of this one, or a new trace's root) and the server's
    /// spans are its children.
    #[arg(long, env = "TRACEPARENT", value_name = "00-TRACE_ID-SPAN_ID-FLAGS")]
    pub traceparent: Option<String>,
}

impl Conn {
    /// The span of a client command (`stoa start`, ...): a child of
    /// `--traceparent` if given. Disabled when no exporter is configured.
    pub(crate) fn span(&self, command: &str) -> anyhow::Result<tracing::Span> {
        if let Some(tp) = &self.traceparent {
            if stoa_telemetry::TraceParent::parse(tp).is_none() {
                return Err(crate::exit::usage(format!(
                    "--traceparent {tp:?}: not a W3C traceparent (00-<32 hex digits>-<16 hex digits>-<2 hex digits>)"
                )));
            }
        }
        let span = tracing::info_span!("client", otel.name = format!("stoa {command}"), otel.kind = "client");
        stoa_telemetry::set_parent(&span, self.traceparent.as_deref(), None);
        Ok(span)
    }
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Upload a pack; the server checks it like `stoa check` and rejects it
    /// whole if it has errors (the deployed version stays).
    ///
    /// Example: stoa deploy examples/packs/video-encode --canary 0.1
    Deploy {
        #[command(flatten)]
        conn: Conn,
        /// The pack directory (holding pack.toml).
        pack: PathBuf,
        /// Check on the server and preview the upgrade: which rules would
        /// gain activations in live workflows, and how many. Changes nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        rollout: RolloutArgs,
    },
    /// Make a deployed version the one workflows run (promote a canary,
    /// or go to any deployed version); live workflows are upgraded.
    ///
    /// Example: stoa rollout video-encode 1.1.0
    Rollout {
        #[command(flatten)]
        conn: Conn,
        /// Pack name.
        name: String,
        /// A deployed version of the pack (`stoa packs` lists them).
        version: String,
        #[command(flatten)]
        rollout: RolloutArgs,
    },
    /// Drop the pack's canary, or else go back to the version stable
    /// before the current one; live workflows move back, keeping their facts.
    ///
    /// Example: stoa rollback video-encode
    Rollback {
        #[command(flatten)]
        conn: Conn,
        /// Pack name.
        name: String,
        /// Return at once instead of showing the upgrade's progress.
        #[arg(long)]
        no_wait: bool,
        /// Move live workflows back even across incompatible schema
        /// changes that reach their facts; refused without it.
        #[arg(long)]
        force: bool,
    },
    /// Show the progress of a pack's newest upgrade.
    ///
    /// Example: stoa upgrade video-encode --wait
    Upgrade {
        #[command(flatten)]
        conn: Conn,
        /// Pack name.
        name: String,
        /// Follow it until it is done.
        #[arg(long)]
        wait: bool,
    },
    /// Send a signal: to one workflow (--workflow), or to every pack that
    /// subscribes to its name. The same --id is acted on once.
    ///
    /// Example: stoa signal approval.decided --payload '{"request": "r1", "approved": true}'
    Signal {
        #[command(flatten)]
        conn: Conn,
        /// Signal name, e.g. partition.ready.
        name: String,
        /// Idempotency key. Default: random.
        #[arg(long)]
        id: Option<String>,
        /// JSON payload.
        #[arg(long, default_value = "null")]
        payload: String,
        /// Deliver it to this workflow only (a `Signal` fact), not to the
        /// packs that subscribe to the name.
        #[arg(long)]
        workflow: Option<String>,
    },
    /// Show a signal's lineage: what led to it, the workflows it started or
    /// unblocked, and the signals those emitted, as a tree.
    ///
    /// Example: stoa lineage cli-4242-1733400000
    Lineage {
        #[command(flatten)]
        conn: Conn,
        /// The signal's id (as `stoa signal` printed it).
        signal: String,
    },
    /// List deployed packs: name, the version new workflows start on, every
    /// version deployed (oldest first), and a canary if one runs.
    ///
    /// Example: stoa packs
    Packs {
        #[command(flatten)]
        conn: Conn,
    },
    /// Start a workflow of a deployed pack. Facts the pack's schemas refuse
    /// are all reported at once, with their index and field.
    ///
    /// Example: stoa start video-encode --facts examples/packs/video-encode/facts.json --watch
    Start {
        #[command(flatten)]
        conn: Conn,
        /// Pack name.
        pack: String,
        /// Start facts: a file (a JSON array of {"type", "fields"}, or TOML
        /// [[fact]] tables), or that JSON inline (`'[{"type": "Job",
        /// "fields": {}}]'`; one object is one fact).
        #[arg(long, value_name = "FILE|JSON")]
        facts: PathBuf,
        /// Idempotency key: the same id starts one workflow. Default: random.
        #[arg(long)]
        request_id: Option<String>,
        /// Follow the timeline until the workflow ends.
        #[arg(long)]
        watch: bool,
    },
    /// Show a workflow: status with its times, facts, waiting activations
    /// (with their attempts), pending timers. `stoa describe` adds the
    /// recent timeline.
    ///
    /// Example: stoa get wf_acme.1a2b --no-facts
    Get {
        #[command(flatten)]
        conn: Conn,
        /// The workflow id (`wf_…`, as `stoa start` or `stoa ls` print it).
        workflow: String,
        /// Leave the facts out.
        #[arg(long)]
        no_facts: bool,
    },
    /// Describe a workflow: status with wall-clock times, each waiting
    /// invocation with its attempt, last error, next retry and whether a
    /// connected worker serves its function, pending timers (local time and
    /// how far off), and the recent timeline with the times of its turns.
    ///
    /// Example: stoa describe wf_acme.1a2b --timeline 50
    Describe(crate::describe::Args),
    /// List workflows, newest first (by start time), with column headers.
    ///
    /// Example: stoa ls --pack video-encode --status running --limit 20
    Ls {
        #[command(flatten)]
        conn: Conn,
        /// Only workflows of this pack.
        #[arg(long)]
        pack: Option<String>,
        /// Only workflows in this status: running, completed, failed or
        /// cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// In workflow id order instead of newest first (cheaper on a
        /// tenant with very many workflows: newest first reads them all
        /// for each page).
        #[arg(long)]
        by_id: bool,
    },
    /// Follow a workflow's timeline live (from the start, or from --from),
    /// with the wall-clock time of each turn. Exits 4 if the workflow
    /// fails.
    ///
    /// Example: stoa watch wf_acme.1a2b --from 40
    Watch {
        #[command(flatten)]
        conn: Conn,
        /// The workflow id.
        workflow: String,
        /// The first timeline entry to show (entries are numbered from 1).
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// Assert facts into a running workflow: one turn, whose result and
    /// timeline entries are printed. Exits 4 if the turn failed the
    /// workflow.
    ///
    /// Example: stoa assert wf_acme.1a2b --facts '{"type": "Pause", "fields": {"reason": "maintenance"}}'
    Assert(crate::change::AssertArgs),
    /// Retract facts of a running workflow by id: one turn, whose result
    /// and timeline entries are printed. Exits 4 if the turn failed the
    /// workflow.
    ///
    /// Example: stoa retract wf_acme.1a2b f12 f13
    Retract(crate::change::RetractArgs),
    /// Cancel a running workflow: its waiting invocations and timers are
    /// cancelled; if its pack has rules over `Cancelled` facts, one is
    /// asserted so they can clean up (release what the workflow holds)
    /// within --grace, after which it is terminated; it ends `cancelled`.
    /// With --terminate it ends at once, running no rule.
    ///
    /// Example: stoa cancel wf_acme.1a2b --reason "customer asked" --grace 10m
    Cancel {
        #[command(flatten)]
        conn: Conn,
        /// The workflow id.
        workflow: String,
        /// Why; kept as the workflow's reason and in the `Cancelled` fact.
        #[arg(long, default_value = "cancelled by stoa cancel")]
        reason: String,
        /// How long the pack's cleanup may take (e.g. 30s, 10m).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// End now, without running the pack's cleanup rules.
        #[arg(long)]
        terminate: bool,
    },
}

/// Which workflows run a version.
#[derive(clap::Args, Clone, Debug)]
pub struct RolloutArgs {
    /// Run it on this fraction (0 < F <= 1) of live and new workflows only.
    #[arg(long, value_name = "F", conflicts_with = "new_only")]
    canary: Option<f64>,
    /// Start new workflows on it; leave live ones on their version.
    #[arg(long)]
    new_only: bool,
    /// Return at once instead of showing the upgrade's progress.
    #[arg(long)]
    no_wait: bool,
    /// Move live workflows even across incompatible schema changes (a
    /// field removed, renamed, retyped or newly required) that reach their
    /// facts; refused without it. `--dry-run` lists the changes.
    #[arg(long)]
    force: bool,
}

impl RolloutArgs {
    fn mode(&self) -> (i32, f64) {
        match (self.canary, self.new_only) {
            (Some(f), _) => (pb::Rollout::Canary as i32, f),
            (None, true) => (pb::Rollout::NewOnly as i32, 0.0),
            (None, false) => (pb::Rollout::All as i32, 0.0),
        }
    }
}

pub(crate) type Client = StoaClient<InterceptedService<Channel, Caller>>;

#[derive(Clone)]
pub struct Bearer(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// The token, and the trace context the server's spans continue.
#[derive(Clone)]
pub struct Caller {
    bearer: Bearer,
    traceparent: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    tracestate: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for Caller {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut req = self.bearer.call(req)?;
        if let Some(tp) = &self.traceparent {
            req.metadata_mut().insert(stoa_telemetry::propagate::TRACEPARENT, tp.clone());
        }
        if let Some(ts) = &self.tracestate {
            req.metadata_mut().insert(stoa_telemetry::propagate::TRACESTATE, ts.clone());
        }
        Ok(req)
    }
}

/// A client of the server; its calls carry the current span's context
/// (the command's span), else `--traceparent` as given.
pub(crate) async fn connect(c: &Conn) -> anyhow::Result<Client> {
    use stoa_telemetry::propagate::{traceparent, tracestate};
    let token = c.token.clone().ok_or_else(|| crate::exit::usage("no token: pass --token or set STOA_TOKEN"))?;
    let bearer = Bearer(format!("Bearer {token}").parse().context("the token is not valid ASCII")?);
    let current = tracing::Span::current();
    let (tp, ts) = match traceparent(&current) {
        Some(tp) => (Some(tp), tracestate(&current)),
        None => (c.traceparent.as_deref().and_then(stoa_telemetry::TraceParent::parse).map(|t| t.to_string()), None),
    };
    let caller =
        Caller { bearer, traceparent: tp.and_then(|v| v.parse().ok()), tracestate: ts.and_then(|v| v.parse().ok()) };
    let channel = Channel::from_shared(c.server.clone())
        .with_context(|| format!("bad server address {}", c.server))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the Stoa server at {}", c.server))?;
    Ok(StoaClient::with_interceptor(channel, caller).max_decoding_message_size(64 << 20))
}

/// A server's refusal, naming its gRPC status (exit status 1).
pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", crate::exit::status(&s))
}

pub fn pack_files(dir: &Path) -> anyhow::Result<Vec<pb::PackFile>> {
    let (src, _) = crate::pack::read_source(dir)?;
    let src = src.ok_or_else(|| anyhow::anyhow!("{}: the definition has errors; nothing sent", dir.display()))?;
    Ok(wire_files(src))
}

/// The packs to deploy for `dir`, in order: one for a pack; for a DAG
/// definition, its foreach bodies' (innermost first), then its own.
pub fn pack_file_sets(dir: &Path) -> anyhow::Result<Vec<Vec<pb::PackFile>>> {
    if !crate::dag::is_definition(dir) {
        return Ok(vec![pack_files(dir)?]);
    }
    let (packs, _) = crate::dag::sources(dir, dir)?;
    let packs = packs.ok_or_else(|| anyhow::anyhow!("{}: the definition has errors; nothing sent", dir.display()))?;
    Ok(packs.into_iter().map(wire_files).collect())
}

fn wire_files(src: stoa_rules::compile::PackSource) -> Vec<pb::PackFile> {
    src.files
        .into_iter()
        .map(|(p, t)| pb::PackFile { path: p.to_string_lossy().replace('\\', "/"), content: t.into_bytes() })
        .collect()
}

/// Facts from `--facts`: a file, or JSON given inline (an array of facts,
/// or one fact object).
pub(crate) fn facts_in(path: &Path) -> anyhow::Result<Vec<pb::FactInput>> {
    let inline = path.to_str().map(str::trim_start).filter(|t| t.starts_with('[') || t.starts_with('{'));
    let specs = match inline {
        Some(text) => {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| crate::exit::usage(format!("--facts: not JSON: {e}")))?;
            let v = if v.is_object() { serde_json::Value::Array(vec![v]) } else { v };
            serde_json::from_value::<Vec<stoa_rules::testcase::FactSpec>>(v)
                .map_err(|e| crate::exit::usage(format!("--facts: {e}")))?
        }
        None => crate::run::read_facts(path)?,
    };
    Ok(specs.into_iter().map(|f| pb::FactInput { r#type: f.ty, fields_json: f.fields.to_json().to_string() }).collect())
}

pub(crate) fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(v).expect("serializable"));
}

impl Command {
    fn conn(&self) -> &Conn {
        match self {
            Command::Deploy { conn, .. }
            | Command::Rollout { conn, .. }
            | Command::Rollback { conn, .. }
            | Command::Upgrade { conn, .. }
            | Command::Signal { conn, .. }
            | Command::Lineage { conn, .. }
            | Command::Packs { conn }
            | Command::Start { conn, .. }
            | Command::Get { conn, .. }
            | Command::Ls { conn, .. }
            | Command::Watch { conn, .. }
            | Command::Cancel { conn, .. } => conn,
            Command::Describe(a) => &a.conn,
            Command::Assert(a) => &a.conn,
            Command::Retract(a) => &a.conn,
        }
    }

    /// The command's name, as its span shows it.
    fn name(&self) -> &'static str {
        match self {
            Command::Deploy { .. } => "deploy",
            Command::Rollout { .. } => "rollout",
            Command::Rollback { .. } => "rollback",
            Command::Upgrade { .. } => "upgrade",
            Command::Signal { .. } => "signal",
            Command::Lineage { .. } => "lineage",
            Command::Packs { .. } => "packs",
            Command::Start { .. } => "start",
            Command::Get { .. } => "get",
            Command::Ls { .. } => "ls",
            Command::Watch { .. } => "watch",
            Command::Cancel { .. } => "cancel",
            Command::Describe(_) => "describe",
            Command::Assert(_) => "assert",
            Command::Retract(_) => "retract",
        }
    }
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    use tracing::Instrument;
    let span = cmd.conn().span(cmd.name())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(cmd).instrument(span))
}

async fn run_async(cmd: Command) -> anyhow::Result<ExitCode> {
    let conn = cmd.conn().clone();
    let mut c = connect(&conn).await?;
    let json = conn.json;
    match cmd {
        Command::Deploy { pack, dry_run, rollout, .. } => {
            // A definition with foreach blocks is several packs: the bodies
            // first, so that the definition never starts one not deployed.
            for files in pack_file_sets(&pack)? {
                let (mode, canary_fraction) = rollout.mode();
                let force = rollout.force;
                let r = c
                    .deploy_pack(pb::DeployPackRequest { files, dry_run, rollout: mode, canary_fraction, force })
                    .await;
                let r = match r {
                    Ok(r) => r.into_inner(),
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        eprintln!("{}", s.message());
                        return Ok(ExitCode::from(1));
                    }
                    Err(s) => return Err(status_err(s)),
                };
                for d in &r.diagnostics {
                    eprintln!("{}:{}:{}: {}[{}]: {}", d.path, d.line, d.col, d.severity, d.code, d.message);
                }
                if json {
                    let preview: Vec<_> = r
                        .preview
                        .iter()
                        .map(
                            |g| serde_json::json!({"rule": g.rule, "activations": g.activations, "workflows": g.workflows}),
                        )
                        .collect();
                    print_json(
                        &serde_json::json!({"name": r.name, "version": r.version, "digest": r.digest, "changed": r.changed, "dry_run": dry_run,
                            "rules_added": r.rules_added, "rules_changed": r.rules_changed, "rules_removed": r.rules_removed,
                            "live_workflows": r.live_workflows, "preview": preview,
                            "schema_changes": r.schema_changes.iter().map(impact_json).collect::<Vec<_>>()}),
                    );
                } else {
                    let what = match (dry_run, r.changed) {
                        (true, _) => "checked (dry run)",
                        (false, true) => "deployed",
                        (false, false) => "already deployed (no change)",
                    };
                    println!("{} {} {what}", r.name, r.version);
                    for (what, list) in
                        [("new", &r.rules_added), ("changed", &r.rules_changed), ("removed", &r.rules_removed)]
                    {
                        if !list.is_empty() {
                            println!("  {what} rules: {}", list.join(", "));
                        }
                    }
                    for i in &r.schema_changes {
                        println!("  {}", impact_line(i));
                    }
                    if dry_run {
                        println!("  {} live workflow(s) would be upgraded", r.live_workflows);
                        for g in &r.preview {
                            println!(
                                "  rule \"{}\" would gain {} activation(s) in {} workflow(s)",
                                g.rule, g.activations, g.workflows
                            );
                        }
                    }
                }
                if let Some(job) = r.upgrade.filter(|_| !rollout.no_wait && !json) {
                    progress(&mut c, job).await?;
                }
            }
        }
        Command::Rollout { name, version, rollout, .. } => {
            let (mode, canary_fraction) = rollout.mode();
            let r = c
                .rollout_pack(pb::RolloutPackRequest {
                    name,
                    version,
                    rollout: mode,
                    canary_fraction,
                    force: rollout.force,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            rollout_done(&mut c, r, rollout.no_wait, json).await?;
        }
        Command::Rollback { name, no_wait, force, .. } => {
            let r = c.rollback_pack(pb::RollbackPackRequest { name, force }).await.map_err(status_err)?.into_inner();
            rollout_done(&mut c, r, no_wait, json).await?;
        }
        Command::Upgrade { name, wait, .. } => {
            let job = c.get_upgrade(pb::GetUpgradeRequest { name }).await.map_err(status_err)?.into_inner();
            if wait && !json {
                progress(&mut c, job).await?;
            } else if json {
                print_json(&job_json(&job));
            } else {
                println!("{}", job_line(&job));
            }
        }
        Command::Signal { name, id, payload, workflow, .. } => {
            serde_json::from_str::<serde_json::Value>(&payload).context("--payload is not JSON")?;
            let signal_id = id.unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                format!("cli-{}-{t}", std::process::id())
            });
            let r = c
                .send_signal(pb::SendSignalRequest {
                    name,
                    signal_id: signal_id.clone(),
                    payload_json: payload,
                    workflow_id: workflow.unwrap_or_default(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if json {
                print_json(
                    &serde_json::json!({"signal_id": signal_id, "created": r.created, "started": r.started, "delivered": r.delivered}),
                );
            } else {
                println!("{signal_id} {}", if r.created { "sent" } else { "already sent (nothing done again)" });
                for w in &r.started {
                    println!("  started   {w}");
                }
                for w in &r.delivered {
                    println!("  delivered {w}");
                }
            }
        }
        Command::Lineage { signal, .. } => {
            let r = c.get_lineage(pb::GetLineageRequest { signal_id: signal }).await.map_err(status_err)?.into_inner();
            for s in &r.signals {
                if json {
                    print_json(
                        &serde_json::json!({"id": s.id, "name": s.name, "depth": s.depth, "from": s.from_workflow, "started": s.started, "delivered": s.delivered, "payload": serde_json::from_str::<serde_json::Value>(&s.payload_json).unwrap_or_default()}),
                    );
                    continue;
                }
                let pad = "  ".repeat(s.depth as usize);
                let from = if s.from_workflow.is_empty() {
                    "sent through the API".to_string()
                } else {
                    format!("emitted by {}", s.from_workflow)
                };
                println!("{pad}signal {} ({}) {} {from}", s.name, s.id, s.payload_json);
                for w in &s.started {
                    println!("{pad}  started   {w}");
                }
                for w in &s.delivered {
                    println!("{pad}  unblocked {w}");
                }
            }
        }
        Command::Packs { .. } => {
            let r = c.list_packs(pb::ListPacksRequest {}).await.map_err(status_err)?.into_inner();
            if !json && !r.packs.is_empty() {
                println!("{:<24} {:<12} VERSIONS", "NAME", "STABLE");
            }
            for p in r.packs {
                if json {
                    print_json(&serde_json::json!({"name": p.name, "versions": p.versions, "functions": p.functions,
                        "stable": p.stable, "canary_version": p.canary_version, "canary_fraction": p.canary_fraction}));
                } else {
                    let canary = match p.canary_version.as_str() {
                        "" => String::new(),
                        v => format!(" (canary {v} on {:.1}%)", p.canary_fraction * 100.0),
                    };
                    println!("{:<24} {:<12} {}{canary}", p.name, p.stable, p.versions.join(", "));
                }
            }
        }
        Command::Start { pack, facts, request_id, watch, .. } => {
            let request_id = request_id.unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                format!("cli-{}-{t}", std::process::id())
            });
            let facts = facts_in(&facts)?;
            let r = c
                .start_workflow(pb::StartWorkflowRequest { pack, facts, request_id: request_id.clone() })
                .await
                .map_err(status_err)?
                .into_inner();
            if json {
                print_json(&serde_json::json!({
                    "workflow_id": r.workflow_id, "created": r.created, "queued": r.queued, "request_id": request_id,
                }));
            } else if r.queued {
                println!("{} queued by the pack's run strategy: it starts when a running one ends", r.workflow_id);
            } else {
                println!(
                    "{} {}",
                    r.workflow_id,
                    if r.created { "started" } else { "already started by this request id" }
                );
            }
            // A queued workflow has no timeline yet to follow.
            if watch && !r.queued {
                return follow(&mut c, &r.workflow_id, 1, json).await;
            }
        }
        Command::Get { workflow, no_facts, .. } => {
            let w = c
                .get_workflow(pb::GetWorkflowRequest { workflow_id: workflow, without_facts: no_facts })
                .await
                .map_err(status_err)?
                .into_inner();
            if json {
                print_json(&crate::describe::workflow_json(&w));
            } else {
                crate::describe::print_workflow(&w, crate::when::now_ms());
            }
        }
        Command::Describe(args) => return crate::describe::run(&mut c, args, json).await,
        Command::Assert(args) => return crate::change::assert(&mut c, args, json).await,
        Command::Retract(args) => return crate::change::retract(&mut c, args, json).await,
        Command::Ls { pack, status, limit, by_id, .. } => {
            let mut token = String::new();
            let mut shown = 0;
            let now = crate::when::now_ms();
            loop {
                let page = (limit - shown).min(1000);
                let r = c
                    .list_workflows(pb::ListWorkflowsRequest {
                        pack: pack.clone().unwrap_or_default(),
                        status: status.clone().unwrap_or_default(),
                        page_size: page,
                        page_token: token,
                        newest_first: !by_id,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                if !json && shown == 0 && !r.workflows.is_empty() {
                    println!("{:<40} {:<20} {:<8} {:<10} STARTED", "ID", "PACK", "VERSION", "STATUS");
                }
                for w in &r.workflows {
                    if json {
                        print_json(
                            &serde_json::json!({"id": w.id, "pack": w.pack, "pack_version": w.pack_version, "status": w.status, "created_ms": w.created_ms, "updated_ms": w.updated_ms}),
                        );
                    } else {
                        println!(
                            "{:<40} {:<20} {:<8} {:<10} {}",
                            w.id,
                            w.pack,
                            w.pack_version,
                            w.status,
                            crate::when::both(w.created_ms, now)
                        );
                    }
                }
                shown += r.workflows.len() as u32;
                token = r.next_page_token;
                if token.is_empty() || shown >= limit {
                    break;
                }
            }
        }
        Command::Watch { workflow, from, .. } => return follow(&mut c, &workflow, from, json).await,
        Command::Cancel { workflow, reason, grace, terminate, .. } => {
            let grace_ms = grace.as_millis().max(1) as u64;
            let r = c
                .cancel_workflow(pb::CancelWorkflowRequest {
                    workflow_id: workflow.clone(),
                    reason,
                    terminate,
                    grace_ms,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if json {
                print_json(&serde_json::json!({"workflow_id": workflow, "turn": r.turn, "status": r.status}));
            } else {
                println!("{workflow} {}", r.status);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn job_line(j: &pb::UpgradeJob) -> String {
    format!(
        "upgrade of {} to {}: {} — {} of {} looked at, {} upgraded, {} failed (rolled back), {} left alone, {} firing(s)",
        j.pack, j.version, j.state, j.scanned, j.total, j.upgraded, j.failed, j.skipped, j.firings
    )
}

fn job_json(j: &pb::UpgradeJob) -> serde_json::Value {
    serde_json::json!({"pack": j.pack, "version": j.version, "state": j.state, "total": j.total, "scanned": j.scanned,
        "upgraded": j.upgraded, "failed": j.failed, "skipped": j.skipped, "firings": j.firings,
        "started_ms": j.started_ms, "finished_ms": j.finished_ms})
}

/// A schema change a rollout crosses, for people: what, where, and what
/// it reaches.
fn impact_line(i: &pb::SchemaImpact) -> String {
    let at = if i.field.is_empty() { i.r#type.clone() } else { format!("{}.{}", i.r#type, i.field) };
    let verdict = match (i.compatible, i.facts) {
        (true, _) => "compatible",
        (false, 0) => "INCOMPATIBLE, reaches no live fact",
        (false, _) => "INCOMPATIBLE",
    };
    format!(
        "schema {at}: {} [{verdict}] (from {}: {} fact(s) in {} live workflow(s))",
        i.what, i.from_version, i.facts, i.workflows
    )
}

fn impact_json(i: &pb::SchemaImpact) -> serde_json::Value {
    serde_json::json!({"type": i.r#type, "field": i.field, "what": i.what, "compatible": i.compatible,
        "from_version": i.from_version, "workflows": i.workflows, "facts": i.facts})
}

async fn rollout_done(c: &mut Client, r: pb::RolloutPackResponse, no_wait: bool, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(
            &serde_json::json!({"stable": r.stable, "canary_version": r.canary_version, "canary_fraction": r.canary_fraction, "upgrade": r.upgrade.as_ref().map(job_json)}),
        );
        return Ok(());
    }
    match r.canary_version.as_str() {
        "" => println!("stable: {}", r.stable),
        v => println!("stable: {}, canary: {v} on {:.1}% of workflows", r.stable, r.canary_fraction * 100.0),
    }
    match r.upgrade {
        Some(job) if !no_wait => progress(c, job).await,
        _ => Ok(()),
    }
}

/// A progress bar over an upgrade until it is done.
async fn progress(c: &mut Client, mut job: pb::UpgradeJob) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(job.total.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("upgrading {msg} [{bar:30}] {pos}/{len} workflows ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("{} to {}", job.pack, job.version));
    let name = job.pack.clone();
    while job.state != "done" {
        bar.set_position(job.scanned.min(job.total));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        job = c.get_upgrade(pb::GetUpgradeRequest { name: name.clone() }).await.map_err(status_err)?.into_inner();
    }
    bar.set_length(job.scanned.max(1));
    bar.finish_with_message(format!("{} to {}", job.pack, job.version));
    println!("{}", job_line(&job));
    Ok(())
}

pub(crate) async fn follow(c: &mut Client, workflow: &str, from: u64, json: bool) -> anyhow::Result<ExitCode> {
    let mut stream = c
        .watch_workflow(pb::WatchWorkflowRequest { workflow_id: workflow.to_string(), from_seq: from })
        .await
        .map_err(status_err)?
        .into_inner();
    let mut failed = false;
    while let Some(e) = stream.message().await.map_err(status_err)? {
        failed |= e.kind == "failed";
        if json {
            println!("{}", e.json);
        } else {
            println!("{}", crate::describe::timeline_line(&e));
        }
    }
    Ok(if failed { ExitCode::from(crate::exit::WORKFLOW_FAILED) } else { ExitCode::SUCCESS })
}
