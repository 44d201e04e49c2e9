//! The exit statuses of `stoa`, and the errors that choose them: a script
//! can tell a mistyped command from a refusing server from a failing test.

use std::process::ExitCode;

/// The server refused or failed the request (the message names the gRPC
/// status), or it could not be reached; a file could not be read.
pub const ERROR: u8 = 1;
/// The command line is wrong (clap's own errors, and values it cannot
/// check, such as a malformed `--traceparent`).
pub const USAGE: u8 = 2;
/// `stoa check` found errors in the pack (or `test`/`run` on a pack with
/// errors), or `stoa test` failing tests (or coverage below the pack's
/// `[tests] min_coverage`).
pub const CHECK_FAILED: u8 = 3;
/// The workflow followed (`stoa watch`, `start --watch`, `run`) ended
/// failed, or the turn `stoa assert`/`retract` made failed it.
pub const WORKFLOW_FAILED: u8 = 4;

/// `stoa --help`'s closing text.
pub const HELP: &str = "\
Exit status:
  0  success
  1  error: the server refused or failed the request (the message names the gRPC status,
     e.g. `NOT_FOUND (5)`), could not be reached, or a file could not be read
  2  usage: the command line is wrong
  3  `stoa check` found errors (or `test`/`run` met a pack with errors), or `stoa test`
     failing tests (or coverage below the pack's minimum)
  4  the workflow followed (`watch`, `start --watch`, `run`) ended failed, or the turn of
     `assert`/`retract` failed it

Environment: STOA_SERVER, STOA_TOKEN (client commands), STOA_LOG (log level; default warn,
`stoa serve` info), TRACEPARENT, OTEL_EXPORTER_OTLP_ENDPOINT.

Benchmarks (`stoa bench engine|e2e|always-on|schedules|safety|soak|explain`) are left out of
this list; `stoa bench --help` describes them.";

/// A mistake on the command line that clap cannot see.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A pack with errors where one without was needed (`stoa test`, `run`):
/// exit status 3, as `stoa check` finding them.
#[derive(Debug)]
pub struct CheckFailed(pub String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

/// A usage error (exit status 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
}

/// The exit status of a command that failed with `e`.
pub fn code_of(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<Usage>().is_some() {
        ExitCode::from(USAGE)
    } else if e.downcast_ref::<CheckFailed>().is_some() {
        ExitCode::from(CHECK_FAILED)
    } else {
        ExitCode::from(ERROR)
    }
}

/// A gRPC status as the user reads it: `NOT_FOUND (5): workflow … does not
/// exist`.
pub fn status(s: &tonic::Status) -> String {
    let name = format!("{:?}", s.code());
    let mut upper = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            upper.push('_');
        }
        upper.push(c.to_ascii_uppercase());
    }
    format!("{upper} ({}): {}", s.code() as i32, s.message())
}

#[cfg(test)]
mod tests {
    #[test]
    fn statuses_read_as_grpc_names_them() {
        let s = tonic::Status::not_found("workflow wf_a.x does not exist");
        assert_eq!(super::status(&s), "NOT_FOUND (5): workflow wf_a.x does not exist");
        let s = tonic::Status::invalid_argument("facts[0].type: required");
        assert_eq!(super::status(&s), "INVALID_ARGUMENT (3): facts[0].type: required");
    }
}
