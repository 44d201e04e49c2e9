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
    #[error("{0}")]
    Internal(String),
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
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                tonic::Status::internal("internal error; see the server log")
            }
        }
    }
}
