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
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        match e {
            ApiError::NotFound(m) => tonic::Status::not_found(m),
            ApiError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            ApiError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            ApiError::ResourceExhausted(m) => tonic::Status::resource_exhausted(m),
            ApiError::Rejected(r @ (Rejected::InvalidFact(..) | Rejected::UnknownFact(_))) => {
                tonic::Status::invalid_argument(r.to_string())
            }
            ApiError::Rejected(r) => tonic::Status::failed_precondition(r.to_string()),
            ApiError::Unavailable(m) => tonic::Status::unavailable(m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                tonic::Status::internal("internal error; see the server log")
            }
        }
    }
}
