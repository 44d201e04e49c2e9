//! SDK for Stoa function workers: a worker connects to a Stoa server over
//! gRPC (`stoa.v1.Workers/Session`), says which functions it serves, and
//! answers the invocations the server sends it.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use stoa_functions::{Context, Failure, Worker};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Deserialize)]
//! struct EncodeArgs { uri: String, codec: String }
//! #[derive(Serialize)]
//! struct EncodeResult { uri: String }
//!
//! # async fn example() -> Result<(), stoa_functions::Error> {
//! let worker = Worker::builder("http://127.0.0.1:7233")
//!     .token("t-secret")
//!     .name("media-worker")
//!     .max_in_flight(8)
//!     .function("media.encode", |args: EncodeArgs, ctx: Context| async move {
//!         ctx.heartbeat();
//!         Ok::<_, Failure>(EncodeResult { uri: format!("{}.{}", args.uri, args.codec) })
//!     })
//!     .build()?;
//! worker.run(CancellationToken::new()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Architecture invariant: this crate knows the wire types of `stoa-proto`
//! and nothing of the engine or the rule language; a worker is a plain gRPC
//! client.

#![deny(missing_docs)]

mod backoff;
mod context;
mod error;
mod failure;
mod handler;
mod members;
mod session;
mod worker;

pub use context::Context;
pub use error::Error;
pub use failure::Failure;
pub use worker::{Builder, Worker};
