//! Server configuration: a TOML file, overridden by command-line flags.
//!
//! Besides where to listen and store, it sets what tenants may use: the
//! `[ceilings]` of every pack limit (a pack may lower a limit, never raise
//! it past its tenant's ceiling) and the `[quotas]` of a tenant's packs,
//! workflows and queues. A tenant may override either in its own entry.
//! Nothing here has an "unlimited" value: every limit is from 1 up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use stoa_rules::limits::Limits as PackLimits;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where to serve HTTP: the web console (`/`) and Prometheus metrics
    /// (`GET /metrics`, unless `metrics_listen` names another address).
    /// Port 0 picks a free one.
    pub http_listen: Option<SocketAddr>,
    /// Where to serve Prometheus metrics. Alone, an alias of `http_listen`
    /// (console and metrics on one listener); with `http_listen` at another
    /// address, a listener of its own that serves `/metrics` only (and the
    /// console's listener serves no metrics). Both unset: no HTTP listener
    /// and no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Where state is kept: `sled:DIR` (the embedded store; the default,
    /// in `data_dir`) or `postgres://…` (PostgreSQL, shared by the servers
    /// of a cluster).
    pub store: Option<String>,
    /// Where the embedded store keeps its files (`store` unset).
    pub data_dir: PathBuf,
    /// The PostgreSQL store's connections and partitions.
    pub postgres: Postgres,
    /// sled's page cache, in MiB. The hot set is the running workflows; a
    /// bigger cache mostly holds finished history, and sled's real use is
    /// about twice this (100,000 invocations: 32 MiB stays near 190 MiB of
    /// RSS, 128 MiB climbs to 285).
    pub cache_mb: u64,
    /// Tenants and their bearer tokens.
    pub tenants: Vec<TenantConfig>,
    pub limits: Limits,
    /// The most each pack limit may be, for every tenant (those not given
    /// keep their default ceilings, not the packs' default limits).
    #[serde(deserialize_with = "ceilings")]
    pub ceilings: PackLimits,
    /// What each tenant may use.
    pub quotas: Quotas,
    /// Concurrency limit per function name (all tenants), e.g. `"media.encode" = 64`.
    pub function_concurrency: BTreeMap<String, usize>,
    /// How `stoa serve` writes its log lines on stderr.
    pub log_format: LogFormat,
}

/// What one HTTP listener serves (`Config::http_listeners`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpServes {
    pub console: bool,
    pub metrics: bool,
}

/// Log lines as text for people, or one JSON object a line for a log
/// pipeline (`stoa serve --log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where the server keeps its state (`Config::store`).
#[derive(Clone, Debug, PartialEq)]
pub enum StoreSpec {
    Sled(PathBuf),
    /// A connection string, as libpq takes it.
    Postgres(String),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Postgres {
    /// Connections at most.
    pub pool_size: usize,
    /// Partitions of a cluster created by this server (a cluster keeps the
    /// number it was created with).
    pub partitions: u32,
    /// How long a partition's lease lasts without renewal: a dead server's
    /// workflows move to the others this long after it stopped renewing
    /// (it renews four times per period).
    pub lease_ms: u64,
    /// The address other servers and workers reach this one at; unset:
    /// the address it listens on (which must then not be 0.0.0.0).
    pub advertise: Option<String>,
}

impl Default for Postgres {
    fn default() -> Self {
        Postgres { pool_size: 16, partitions: 256, lease_ms: 5000, advertise: None }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// Bearer tokens (`--token TENANT=TOKEN` adds more).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// This tenant's own ceilings, over `[ceilings]` (only the keys given).
    #[serde(default)]
    pub ceilings: toml::Table,
    /// This tenant's own quotas, over `[quotas]` (only the keys given).
    #[serde(default)]
    pub quotas: toml::Table,
}

impl TenantConfig {
    pub fn new(name: &str, token: &str) -> TenantConfig {
        TenantConfig {
            name: name.to_string(),
            tokens: vec![token.to_string()],
            ceilings: toml::Table::new(),
            quotas: toml::Table::new(),
        }
    }
}

/// Server-wide limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Invocations in one micro-batch to a worker.
    pub max_batch: usize,
    /// On shutdown, how long workers get to answer the invocations they
    /// hold (they are sent a Drain) before the server stops, in
    /// milliseconds. Turns still running after it are stopped.
    pub worker_drain_ms: u64,
    /// Threads that run turns and pack builds (0: two per CPU, at least 4).
    /// Twice the CPUs, so that a tenant limited to half of them can still
    /// use every CPU, and one whose turns spin leaves the others theirs.
    pub turn_threads: usize,
    /// Workflows kept in memory at most; the least recently used idle ones
    /// are unloaded past it (they reload from the store on their next turn).
    pub max_loaded_workflows: usize,
    /// A workflow idle this long is unloaded, in milliseconds.
    pub unload_idle_ms: u64,
    /// How long a finished workflow (completed or failed) stays stored, in
    /// milliseconds; then it is deleted whole (facts, timeline, the record
    /// of its start request, which a new start may then use again).
    pub retain_finished_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 4 << 20,
            max_batch: 64,
            worker_drain_ms: 5_000,
            turn_threads: 0,
            max_loaded_workflows: 20_000,
            unload_idle_ms: 30_000,
            retain_finished_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// What one tenant may use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Bytes of one pack's files.
    pub max_pack_bytes: u64,
    /// Rules in one pack.
    pub max_rules_per_pack: u64,
    /// Files in one pack.
    pub max_files_per_pack: u64,
    /// Compiled versions of one pack kept in memory besides the running
    /// ones (stable and canary); older versions stay in the store and are
    /// compiled again when a workflow on one of them loads.
    pub max_versions_kept: u64,
    /// Workflows running at once.
    pub max_live_workflows: u64,
    /// Invocations queued, backing off or running; requests that would add
    /// more get RESOURCE_EXHAUSTED (backpressure).
    pub max_pending: u64,
    /// Invocations running on workers at once (the tenant's pool).
    pub max_in_flight: u64,
    /// Turn threads busy with this tenant at once (0: half the threads,
    /// at least one), so that other tenants always find one free.
    pub max_turn_threads: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_pack_bytes: 4 << 20,
            max_rules_per_pack: 100_000,
            max_files_per_pack: 10_000,
            max_versions_kept: 2,
            max_live_workflows: 1_000_000,
            max_pending: 100_000,
            max_in_flight: 10_000,
            max_turn_threads: 0,
        }
    }
}

/// A tenant's ceilings and quotas, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub ceilings: PackLimits,
    pub quotas: Quotas,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7233".parse().expect("address"),
            http_listen: None,
            metrics_listen: None,
            store: None,
            data_dir: PathBuf::from("stoa-data"),
            postgres: Postgres::default(),
            cache_mb: 32,
            tenants: Vec::new(),
            limits: Limits::default(),
            ceilings: PackLimits::default_ceilings(),
            quotas: Quotas::default(),
            function_concurrency: BTreeMap::new(),
            log_format: LogFormat::Text,
        }
    }
}

fn ceilings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PackLimits, D::Error> {
    let given = toml::Table::deserialize(d)?;
    overlay(&PackLimits::default_ceilings(), &given).map_err(serde::de::Error::custom)
}

/// `base` with the keys of `over` replaced.
fn overlay<T: Serialize + serde::de::DeserializeOwned>(base: &T, over: &toml::Table) -> Result<T, String> {
    let mut t = toml::Table::try_from(base).map_err(|e| e.to_string())?;
    t.extend(over.clone());
    toml::Value::Table(t).try_into().map_err(|e: toml::de::Error| e.message().trim().replace('\n', "; "))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            let at = e.span().map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                let col = s.start - text[..s.start].rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                format!("{line}:{col}: ")
            });
            format!("{}:{}{}", path.display(), at.unwrap_or_default(), e.message().trim().replace('\n', "; "))
        })
    }

    /// Threads that run turns.
    pub fn turn_threads(&self) -> usize {
        match self.limits.turn_threads {
            0 => (2 * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)).max(4),
            n => n,
        }
    }

    /// Each tenant's ceilings and quotas, by name.
    pub fn policies(&self) -> Result<BTreeMap<String, Policy>, String> {
        let mut out = BTreeMap::new();
        for t in &self.tenants {
            let ceilings: PackLimits =
                overlay(&self.ceilings, &t.ceilings).map_err(|e| format!("tenant `{}`: ceilings: {e}", t.name))?;
            let mut quotas: Quotas =
                overlay(&self.quotas, &t.quotas).map_err(|e| format!("tenant `{}`: quotas: {e}", t.name))?;
            if quotas.max_turn_threads == 0 {
                quotas.max_turn_threads = (self.turn_threads() as u64 / 2).max(1);
            }
            out.insert(t.name.clone(), Policy { ceilings, quotas });
        }
        Ok(out)
    }

    /// The highest ceilings of any tenant: what the turn threads' stacks
    /// must hold.
    pub fn highest_ceilings(&self) -> Result<PackLimits, String> {
        let mut high = self.ceilings.clone();
        for p in self.policies()?.values() {
            high.max_call_depth = high.max_call_depth.max(p.ceilings.max_call_depth);
            high.max_operations = high.max_operations.max(p.ceilings.max_operations);
        }
        Ok(high)
    }

    /// Checks what serde cannot: tenant names, unique tokens, no zero limit.
    /// Which store `store` names.
    pub fn store_spec(&self) -> Result<StoreSpec, String> {
        let Some(spec) = &self.store else { return Ok(StoreSpec::Sled(self.data_dir.clone())) };
        if let Some(dir) = spec.strip_prefix("sled:") {
            if dir.is_empty() {
                return Err("store `sled:`: give the directory, as sled:DIR".into());
            }
            return Ok(StoreSpec::Sled(PathBuf::from(dir)));
        }
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            return Ok(StoreSpec::Postgres(spec.clone()));
        }
        // Never echo the rest: it may hold a password.
        let scheme: String = spec.chars().take_while(|c| c.is_ascii_alphanumeric()).take(20).collect();
        Err(format!("store `{scheme}…`: expected sled:DIR or postgres://USER@HOST/DATABASE"))
    }

    /// The HTTP listeners to bind and what each serves: one for both
    /// console and metrics, unless `http_listen` and `metrics_listen` name
    /// two addresses (then metrics stay off the console's listener).
    pub fn http_listeners(&self) -> Vec<(SocketAddr, HttpServes)> {
        const BOTH: HttpServes = HttpServes { console: true, metrics: true };
        match (self.http_listen, self.metrics_listen) {
            (None, None) => vec![],
            (Some(a), None) | (None, Some(a)) => vec![(a, BOTH)],
            (Some(h), Some(m)) if h == m => vec![(h, BOTH)],
            (Some(h), Some(m)) => vec![
                (h, HttpServes { console: true, metrics: false }),
                (m, HttpServes { console: false, metrics: true }),
            ],
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.store_spec()?;
        if self.postgres.pool_size == 0 || self.postgres.partitions == 0 {
            return Err("postgres.pool_size and postgres.partitions are from 1 up".into());
        }
        if let Some(m) = self.metrics_listen.filter(|m| *m == self.listen && m.port() != 0) {
            return Err(format!("metrics_listen {m} is the gRPC listen address; give it a port of its own"));
        }
        if let Some(h) = self.http_listen.filter(|h| *h == self.listen && h.port() != 0) {
            return Err(format!("http_listen {h} is the gRPC listen address; give it a port of its own"));
        }
        if !(400..=600_000).contains(&self.postgres.lease_ms) {
            return Err(format!("postgres.lease_ms: {} is outside 400..=600000", self.postgres.lease_ms));
        }
        let mut seen = BTreeMap::new();
        for t in &self.tenants {
            if t.name.is_empty()
                || t.name.len() > 64
                || !t.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(format!("tenant name `{}`: use 1 to 64 lower-case letters, digits and `-`", t.name));
            }
            for tok in &t.tokens {
                if tok.len() < 8 {
                    return Err(format!("tenant `{}`: tokens must be at least 8 characters", t.name));
                }
                if let Some(other) = seen.insert(tok.clone(), t.name.clone()) {
                    return Err(format!("a token is given to both `{other}` and `{}`", t.name));
                }
            }
        }
        if self.tenants.is_empty() {
            return Err("no tenant is configured: add [[tenants]] to the config or pass --token TENANT=TOKEN".into());
        }
        let zero = |what: &str, name: &str| Err(format!("{what}.{name} is 0; every limit is from 1 up"));
        if let Some(name) = self.ceilings.zeros().first() {
            return zero("ceilings", name);
        }
        for (tenant, p) in self.policies()? {
            if let Some(name) = p.ceilings.zeros().first() {
                return zero(&format!("tenant `{tenant}`: ceilings"), name);
            }
            let q = toml::Table::try_from(&p.quotas).map_err(|e| e.to_string())?;
            if let Some((name, _)) = q.iter().find(|(_, v)| v.as_integer() == Some(0)) {
                return zero(&format!("tenant `{tenant}`: quotas"), name);
            }
        }
        let l = &self.limits;
        for (name, v) in [
            ("max_request_bytes", l.max_request_bytes as u64),
            ("max_batch", l.max_batch as u64),
            ("max_loaded_workflows", l.max_loaded_workflows as u64),
            ("unload_idle_ms", l.unload_idle_ms),
            ("retain_finished_ms", l.retain_finished_ms),
        ] {
            if v == 0 {
                return zero("limits", name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.message().to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn a_tenant_overrides_only_the_keys_it_gives() {
        let c = parse(
            r#"
[ceilings]
max_operations = 2000000
[quotas]
max_pending = 500
[limits]
turn_threads = 4
[[tenants]]
name = "a"
tokens = ["aaaaaaaaaa"]
ceilings = { max_call_depth = 16 }
quotas = { max_live_workflows = 10 }
[[tenants]]
name = "b"
tokens = ["bbbbbbbbbb"]
"#,
        )
        .unwrap();
        let p = c.policies().unwrap();
        let (a, b) = (&p["a"], &p["b"]);
        assert_eq!((a.ceilings.max_operations, a.ceilings.max_call_depth), (2_000_000, 16));
        assert_eq!((a.quotas.max_pending, a.quotas.max_live_workflows, a.quotas.max_turn_threads), (500, 10, 2));
        assert_eq!(b.ceilings.max_call_depth, PackLimits::default_ceilings().max_call_depth);
    }

    #[test]
    fn zero_is_never_unlimited_and_unknown_keys_are_named() {
        let tenant = "[[tenants]]\nname = \"a\"\ntokens = [\"aaaaaaaaaa\"]\n";
        let e = parse(&format!("[ceilings]\nmax_operations = 0\n{tenant}")).unwrap_err();
        assert_eq!(e, "ceilings.max_operations is 0; every limit is from 1 up");
        let e = parse(&format!("{tenant}quotas = {{ max_pending = 0 }}\n")).unwrap_err();
        assert_eq!(e, "tenant `a`: quotas.max_pending is 0; every limit is from 1 up");
        let e = parse(&format!("{tenant}ceilings = {{ max_opps = 3 }}\n")).unwrap_err();
        assert!(e.starts_with("tenant `a`: ceilings: unknown field `max_opps`"), "{e}");
    }

    #[test]
    fn metrics_listen_is_an_address_of_its_own() {
        let tenant = "[[tenants]]\nname = \"a\"\ntokens = [\"aaaaaaaaaa\"]\n";
        let c = parse(&format!("metrics_listen = \"127.0.0.1:9464\"\n{tenant}")).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let e =
            parse(&format!("listen = \"127.0.0.1:7233\"\nmetrics_listen = \"127.0.0.1:7233\"\n{tenant}")).unwrap_err();
        assert_eq!(e, "metrics_listen 127.0.0.1:7233 is the gRPC listen address; give it a port of its own");
        let e = parse(&format!("metrics_listen = \"localhost\"\n{tenant}")).unwrap_err();
        assert!(e.contains("invalid socket address"), "{e}");
        assert_eq!(parse(tenant).unwrap().metrics_listen, None);
    }

    #[test]
    fn one_http_listener_serves_console_and_metrics_unless_two_are_named() {
        let tenant = "[[tenants]]\nname = \"a\"\ntokens = [\"aaaaaaaaaa\"]\n";
        let listeners = |text: &str| parse(&format!("{text}{tenant}")).unwrap().http_listeners();
        let both = HttpServes { console: true, metrics: true };
        let (h, m): (SocketAddr, SocketAddr) = ("127.0.0.1:8080".parse().unwrap(), "127.0.0.1:9464".parse().unwrap());
        assert_eq!(listeners(""), vec![]);
        assert_eq!(listeners("http_listen = \"127.0.0.1:8080\"\n"), vec![(h, both)]);
        assert_eq!(listeners("metrics_listen = \"127.0.0.1:9464\"\n"), vec![(m, both)]);
        assert_eq!(
            listeners("http_listen = \"127.0.0.1:8080\"\nmetrics_listen = \"127.0.0.1:8080\"\n"),
            vec![(h, both)]
        );
        assert_eq!(
            listeners("http_listen = \"127.0.0.1:8080\"\nmetrics_listen = \"127.0.0.1:9464\"\n"),
            vec![(h, HttpServes { console: true, metrics: false }), (m, HttpServes { console: false, metrics: true })]
        );
        let e = parse(&format!("listen = \"127.0.0.1:7233\"\nhttp_listen = \"127.0.0.1:7233\"\n{tenant}")).unwrap_err();
        assert_eq!(e, "http_listen 127.0.0.1:7233 is the gRPC listen address; give it a port of its own");
    }
}
