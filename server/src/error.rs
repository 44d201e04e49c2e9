//! API errors and their gRPC status codes. Messages name the field or the
//! object; internal details are logged, not sent to clients.

use stoa_engine::workflow::Rejected;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Rejected(Rejected),
    /// The store cannot read or write now (a full disk, an I/O error):
    /// retryable, unlike `Internal`.
    #[error("{0}")]
    Unavailable(String),
    /// The workflow is not on this server (any more): its partition moved.
    /// The runtime looks for it again; clients see `Unavailable`.
    #[error("{0}")]
    Moved(String),
    #[error("{0}")]
    Internal(String),
}

impl From<stoa_engine::store::Error> for ApiError {
    fn from(e: stoa_engine::store::Error) -> ApiError {
        match e {
            stoa_engine::store::Error::Io(detail) => {
                tracing::error!(error = %detail, "storage I/O failed");
                ApiError::Unavailable("storage is unavailable; retry later".into())
            }
            e @ stoa_engine::store::Error::Fenced { .. } => ApiError::Moved(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The longest status message, in bytes. A status travels in HTTP/2
/// trailers, percent-encoded (up to three bytes for one), and clients
/// refuse trailers past 16 KiB by default: a deploy listing its many
/// diagnostics was answered with an h2 protocol error, which clients see as
/// INTERNAL (found by the e2e campaign, tests/e2e/fuzz.rs).
pub const MAX_STATUS_MESSAGE: usize = 4 << 10;

fn bounded(mut m: String) -> String {
    if m.len() > MAX_STATUS_MESSAGE {
        let more = m.len() - MAX_STATUS_MESSAGE;
        let mut end = MAX_STATUS_MESSAGE;
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m.truncate(end);
        m.push_str(&format!("\n… ({more} more bytes; `stoa check` shows all of a pack's diagnostics)"));
    }
    m
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        let e = match e {
            ApiError::InvalidArgument(m) => ApiError::InvalidArgument(bounded(m)),
            ApiError::FailedPrecondition(m) => ApiError::FailedPrecondition(bounded(m)),
            ApiError::NotFound(m) => ApiError::NotFound(bounded(m)),
            ApiError::ResourceExhausted(m) => ApiError::ResourceExhausted(bounded(m)),
            e => e,
        };
        match e {
            ApiError::NotFound(m) => tonic::Status::not_found(m),
            ApiError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            ApiError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            ApiError::ResourceExhausted(m) => tonic::Status::resource_exhausted(m),
            ApiError::Rejected(r @ (Rejected::InvalidFacts(..) | Rejected::UnknownFact(_))) => {
                tonic::Status::invalid_argument(r.to_string())
            }
            ApiError::Rejected(r) => tonic::Status::failed_precondition(r.to_string()),
            ApiError::Unavailable(m) | ApiError::Moved(m) => tonic::Status::unavailable(m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                tonic::Status::internal("internal error; see the server log")
            }
        }
    }
}
