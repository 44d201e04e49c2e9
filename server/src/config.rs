//! Server configuration: a TOML file, overridden by command-line flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// sled's page cache, in MiB. The hot set is the running workflows; a
    /// bigger cache mostly holds finished history, and sled's real use is
    /// about twice this (100,000 invocations: 32 MiB stays near 190 MiB of
    /// RSS, 128 MiB climbs to 285).
    pub cache_mb: u64,
    /// Tenants and their bearer tokens.
    pub tenants: Vec<TenantConfig>,
    pub limits: Limits,
    /// Concurrency limit per function name (all tenants), e.g. `"media.encode" = 64`.
    pub function_concurrency: BTreeMap<String, usize>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    pub tokens: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Invocations of one tenant running on workers at once (its pool).
    pub tenant_max_in_flight: usize,
    /// Invocations of one tenant queued or running; past it, requests that
    /// would add work get RESOURCE_EXHAUSTED (backpressure).
    pub tenant_max_pending: usize,
    /// Invocations in one micro-batch to a worker.
    pub max_batch: usize,
    /// On shutdown, how long workers get to answer the invocations they
    /// hold (they are sent a Drain) before the server stops, in milliseconds.
    pub worker_drain_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 4 << 20,
            tenant_max_in_flight: 10_000,
            tenant_max_pending: 1_000_000,
            max_batch: 64,
            worker_drain_ms: 5_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7233".parse().expect("address"),
            data_dir: PathBuf::from("stoa-data"),
            cache_mb: 32,
            tenants: Vec::new(),
            limits: Limits::default(),
            function_concurrency: BTreeMap::new(),
        }
    }
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

    /// Checks what serde cannot: tenant names, unique tokens.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = BTreeMap::new();
        for t in &self.tenants {
            if t.name.is_empty() || !t.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                return Err(format!("tenant name `{}`: use lower-case letters, digits and `-`", t.name));
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
        Ok(())
    }
}
