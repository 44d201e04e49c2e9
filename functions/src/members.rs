//! A cluster's servers, as the worker knows them. Each server of a cluster
//! leases a worker only the invocations of the workflows it owns, so the
//! worker holds a session to every member: the servers name them in
//! `Welcome.members` and again in `Members` whenever they change. A
//! session to a member that left ends at its next failure.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::worker::Config;

pub(crate) struct Members {
    config: Arc<Config>,
    shutdown: CancellationToken,
    /// The address the worker was given (its own session loop).
    seed: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last list a server sent.
    latest: Vec<String>,
    /// Members with a session loop of their own.
    running: HashSet<String>,
    loops: Vec<JoinHandle<()>>,
}

impl Members {
    pub fn new(config: Arc<Config>, shutdown: CancellationToken) -> Arc<Members> {
        let seed = config.endpoint.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        Arc::new(Members { config, shutdown, seed, state: Mutex::default() })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A server named the members: a session loop starts for each new one.
    pub fn announce(self: &Arc<Self>, addresses: Vec<String>) {
        let mut state = self.state();
        state.latest.clone_from(&addresses);
        for address in addresses {
            if address == self.seed || state.running.contains(&address) || self.shutdown.is_cancelled() {
                continue;
            }
            let Some(endpoint) = endpoint(&self.config.endpoint, &address) else {
                tracing::warn!(%address, "a server named a member address that is not one");
                continue;
            };
            tracing::info!(%address, "opening a session to another server of the cluster");
            state.running.insert(address.clone());
            let me = self.clone();
            state.loops.push(tokio::spawn(async move {
                let current = {
                    let me = me.clone();
                    let address = address.clone();
                    move || me.state().latest.contains(&address)
                };
                let served = crate::worker::serve(&me.config, &endpoint, &me, &me.shutdown, &current).await;
                if let Err(e) = served {
                    tracing::error!(%address, error = %e, "the member refused the worker");
                }
                me.state().running.remove(&address);
            }));
        }
    }

    /// Waits for the members' session loops (they end with the shutdown).
    pub async fn stopped(&self) {
        loop {
            let loops = std::mem::take(&mut self.state().loops);
            if loops.is_empty() {
                return;
            }
            for l in loops {
                let _ = l.await;
            }
        }
    }
}

/// The seed's endpoint settings, at another address.
fn endpoint(seed: &Endpoint, address: &str) -> Option<Endpoint> {
    let scheme = seed.uri().scheme_str().unwrap_or("http");
    let e = Endpoint::from_shared(format!("{scheme}://{address}")).ok()?;
    Some(
        e.connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(20))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .keep_alive_while_idle(true),
    )
}
