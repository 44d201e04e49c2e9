//! Errors of building and running a worker. Failures of single invocations
//! are not errors of the worker: they travel to the server as `Failure`s.

/// Why a worker could not be built, or stopped running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server address is not a valid URI.
    #[error("invalid server address `{address}`: {source}")]
    InvalidServer {
        /// The address as given.
        address: String,
        /// Why it was refused.
        #[source]
        source: tonic::transport::Error,
    },
    /// No token was set; every call to the server needs one.
    #[error("no token: set one with `Builder::token`")]
    MissingToken,
    /// The token cannot travel in an HTTP header.
    #[error("the token is not a valid header value (it must be visible ASCII)")]
    InvalidToken,
    /// The worker serves no function.
    #[error("no function registered")]
    NoFunctions,
    /// A function name is empty.
    #[error("a function name is empty")]
    EmptyFunctionName,
    /// The same function was registered twice.
    #[error("function `{0}` registered twice")]
    DuplicateFunction(String),
    /// `max_in_flight` is zero, so the worker could never run anything.
    #[error("max_in_flight must be at least 1")]
    ZeroMaxInFlight,
    /// The server refused the session for a reason that reconnecting cannot
    /// fix (bad token, no permission, a Hello it does not accept).
    #[error("the server refused the session: {code:?}: {message}")]
    Refused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
}

/// An error and its causes on one line, `outer: inner: innermost`.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
