//! Stoa's wire types: the `stoa.v1` package, generated from
//! `proto/stoa/v1/stoa.proto`. Only the server, the CLI's client commands and
//! workers depend on this crate; the engine never does.

#![allow(clippy::all, missing_docs)]

pub mod codec;

pub mod v1 {
    tonic::include_proto!("stoa.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("stoa_v1_descriptor");
}
