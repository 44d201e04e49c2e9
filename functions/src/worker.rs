//! `Worker` and its `Builder`: the configuration of a worker, and the loop
//! that keeps a session open, reconnecting with backoff until shut down.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Endpoint;

use crate::backoff::Backoff;
use crate::handler::{self, Handler};
use crate::members::Members;
use crate::session::{self, SessionError};
use crate::{Context, Error, Failure};

/// What the SDK says about itself in `Hello.name` unless told otherwise.
const SDK_NAME: &str = concat!("stoa-rust-sdk/", env!("CARGO_PKG_VERSION"));

/// Configures a [`Worker`]; start with [`Worker::builder`].
#[must_use]
pub struct Builder {
    server: String,
    token: Option<String>,
    name: Option<String>,
    max_in_flight: u32,
    functions: Vec<(String, Handler)>,
    backoff: (Duration, Duration),
    drain_timeout: Option<Duration>,
}

/// A configured worker. [`Worker::run`] serves its functions until told to
/// stop.
pub struct Worker {
    pub(crate) config: Config,
}

/// Everything a session needs, fixed when the worker is built.
pub(crate) struct Config {
    pub(crate) endpoint: Endpoint,
    pub(crate) authorization: AsciiMetadataValue,
    pub(crate) name: String,
    pub(crate) max_in_flight: u32,
    /// Registration order, for `Hello.functions`.
    pub(crate) function_names: Vec<String>,
    pub(crate) functions: HashMap<String, Handler>,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) drain_timeout: Option<Duration>,
}

impl Worker {
    /// Starts configuring a worker for the server at `server`, e.g.
    /// `http://127.0.0.1:7233`.
    pub fn builder(server: impl Into<String>) -> Builder {
        Builder {
            server: server.into(),
            token: None,
            name: None,
            max_in_flight: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            functions: Vec::new(),
            backoff: (Duration::from_millis(100), Duration::from_secs(10)),
            drain_timeout: Some(Duration::from_secs(60)),
        }
    }

    /// Serves until `shutdown` is cancelled, then stops taking work, answers
    /// the invocations in flight (within the drain timeout) and closes the
    /// session.
    ///
    /// A broken session, or a server that is not up, is retried with
    /// exponential backoff; invocations in flight on a broken session are
    /// dropped, since the server hands them out again when their lease runs
    /// out. A server that asks for a drain (it is shutting down) gets the
    /// work in flight answered, then the worker reconnects with backoff, so
    /// it serves the server again once it is back. Returns an error only when the server refuses the worker for good
    /// (`UNAUTHENTICATED`, `PERMISSION_DENIED`, `INVALID_ARGUMENT`), since
    /// reconnecting with the same token and Hello cannot fix that.
    ///
    /// With a cluster, the server names its other members and the worker
    /// holds a session to each of them too (each leases only the work of
    /// the workflows it owns); `max_in_flight` holds per session.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let config = Arc::new(self.config);
        let members = Members::new(config.clone(), shutdown.clone());
        let served = serve(&config, &config.endpoint, &members, &shutdown, &|| true).await;
        members.stopped().await;
        served
    }

    /// The functions this worker serves, in registration order.
    pub fn functions(&self) -> impl Iterator<Item = &str> {
        self.config.function_names.iter().map(String::as_str)
    }
}

/// Keeps a session open with the server at `endpoint` until `shutdown`
/// (see `Worker::run`), or until a session fails while `wanted` says the
/// server is no longer a member.
pub(crate) async fn serve(
    config: &Config,
    endpoint: &Endpoint,
    members: &Arc<Members>,
    shutdown: &CancellationToken,
    wanted: &(dyn Fn() -> bool + Sync),
) -> Result<(), Error> {
    let (min, max) = config.backoff;
    let mut backoff = Backoff::new(min, max);
    let announce = |addresses: Vec<String>| members.announce(addresses);
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let error = match session::run(config, endpoint, &announce, shutdown, &mut backoff).await {
            Ok(()) => return Ok(()),
            Err(SessionError::Refused(status)) => {
                tracing::error!(code = ?status.code(), message = status.message(), "server refused the worker");
                return Err(Error::Refused { code: status.code(), message: status.message().to_owned() });
            }
            Err(error) => error,
        };
        if shutdown.is_cancelled() {
            // The session broke while draining: what was in flight is
            // lost either way, and reconnecting would only take new work.
            tracing::warn!(%error, "session lost during shutdown");
            return Ok(());
        }
        if !wanted() {
            tracing::info!(server = %endpoint.uri(), "the server left the cluster: no more sessions with it");
            return Ok(());
        }
        let delay = backoff.next_delay();
        tracing::warn!(%error, server = %endpoint.uri(), retry_in = ?delay, "no session with the server");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

impl Builder {
    /// The bearer token sent with every call (required); it names the tenant.
    pub fn token(mut self, token: impl Into<String>) -> Builder {
        self.token = Some(token.into());
        self
    }

    /// A name for the server's logs (`Hello.name`); defaults to the SDK's.
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(name.into());
        self
    }

    /// How many invocations run at once; the server sends no more than this.
    /// Defaults to the number of CPUs.
    pub fn max_in_flight(mut self, max_in_flight: u32) -> Builder {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Serves `name` with a typed handler: the invocation's JSON arguments
    /// are decoded into `A` (a decoding error is a fatal failure naming the
    /// field), and the `R` it returns is encoded as the JSON result.
    ///
    /// The handler runs as a task: run CPU-heavy or blocking work with
    /// `tokio::task::spawn_blocking`, or it stalls the session (answers,
    /// cancels and the automatic heartbeats) while it runs. A panic fails
    /// the attempt as retryable; a `Cancel` from the server drops the future.
    pub fn function<A, R, F, Fut>(mut self, name: impl Into<String>, handler: F) -> Builder
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Failure>> + Send + 'static,
    {
        let name = name.into();
        let handler = handler::typed(name.clone(), handler);
        self.functions.push((name, handler));
        self
    }

    /// Serves `name` with a handler that gets the arguments as JSON text and
    /// returns the result as JSON text, unchecked: for pass-through workers
    /// and benchmarks that should not pay for decoding.
    pub fn function_raw<F, Fut>(mut self, name: impl Into<String>, handler: F) -> Builder
    where
        F: Fn(String, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, Failure>> + Send + 'static,
    {
        self.functions.push((name.into(), handler::raw(handler)));
        self
    }

    /// Bounds of the reconnect delay (jittered, doubling from `min` to
    /// `max`); 100 ms to 10 s by default.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Builder {
        self.backoff = (min, max);
        self
    }

    /// How long a shutdown waits for invocations in flight before dropping
    /// them (the server redelivers them); 60 s by default, `None` waits for
    /// as long as they take.
    pub fn drain_timeout(mut self, timeout: Option<Duration>) -> Builder {
        self.drain_timeout = timeout;
        self
    }

    /// Checks the configuration. Connecting happens in [`Worker::run`].
    pub fn build(self) -> Result<Worker, Error> {
        let endpoint = Endpoint::from_shared(self.server.clone())
            .map_err(|source| Error::InvalidServer { address: self.server.clone(), source })?
            // Fail a dead address fast and try again with backoff, rather
            // than hang in the OS's connect timeout.
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            // A server that vanished without closing the connection (a
            // killed VM, a cut network) shows up as missed pings, not as a
            // stream that waits forever.
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let token = self.token.ok_or(Error::MissingToken)?;
        let authorization = format!("Bearer {token}").parse::<AsciiMetadataValue>().map_err(|_| Error::InvalidToken)?;
        if self.max_in_flight == 0 {
            return Err(Error::ZeroMaxInFlight);
        }
        if self.functions.is_empty() {
            return Err(Error::NoFunctions);
        }
        let mut function_names = Vec::with_capacity(self.functions.len());
        let mut functions = HashMap::with_capacity(self.functions.len());
        for (name, handler) in self.functions {
            if name.is_empty() {
                return Err(Error::EmptyFunctionName);
            }
            if functions.insert(name.clone(), handler).is_some() {
                return Err(Error::DuplicateFunction(name));
            }
            function_names.push(name);
        }
        Ok(Worker {
            config: Config {
                endpoint,
                authorization,
                name: self.name.unwrap_or_else(|| SDK_NAME.to_owned()),
                max_in_flight: self.max_in_flight,
                function_names,
                functions,
                backoff: self.backoff,
                drain_timeout: self.drain_timeout,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop(builder: Builder, name: &str) -> Builder {
        builder.function(name, |args: serde_json::Value, _ctx: Context| async move { Ok::<_, Failure>(args) })
    }

    #[test]
    fn build_checks_the_configuration() {
        let base = || Worker::builder("http://127.0.0.1:7233").token("t");
        assert!(matches!(noop(Worker::builder("http://127.0.0.1:1"), "f").build(), Err(Error::MissingToken)));
        assert!(matches!(noop(base().token("bad\ntoken"), "f").build(), Err(Error::InvalidToken)));
        assert!(matches!(noop(Worker::builder("not a uri").token("t"), "f").build(), Err(Error::InvalidServer { .. })));
        assert!(matches!(base().build(), Err(Error::NoFunctions)));
        assert!(matches!(noop(base(), "").build(), Err(Error::EmptyFunctionName)));
        assert!(matches!(noop(base().max_in_flight(0), "f").build(), Err(Error::ZeroMaxInFlight)));
        assert!(matches!(noop(noop(base(), "f"), "f").build(), Err(Error::DuplicateFunction(name)) if name == "f"));
        let worker = noop(noop(base(), "b"), "a").build().unwrap();
        assert_eq!(worker.functions().collect::<Vec<_>>(), ["b", "a"]);
    }
}
