//! Web errors and their one mapping to HTTP: a status, a stable machine-readable `code` and a
//! message safe to show. Internal causes are logged, never sent.

use backless_common::db::DbError;
use backless_common::events::EventsError;
use backless_common::limits::LimitError;
use backless_common::storage::StorageError;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("no such job")]
    NotFound,
    #[error("the job is not finished")]
    NotReady,
    #[error("the job has no result: it failed")]
    JobFailed,
    #[error("too many live jobs")]
    TooManyJobs { max: u64 },
    #[error("too many live jobs from this address")]
    TooManyJobsFromAddress { max: u64 },
    #[error("stored-bytes quota of this address used up")]
    StorageQuota { max_bytes: u64 },
    #[error("file too large")]
    FileTooLarge { max_bytes: u64 },
    #[error("no file")]
    MissingFile,
    #[error("empty file")]
    EmptyFile,
    #[error("not an image")]
    NotAnImage,
    #[error("corrupt image: {0}")]
    CorruptImage(String),
    #[error(transparent)]
    ImageLimit(#[from] LimitError),
    #[error("invalid {field}: {reason}")]
    InvalidOption { field: &'static str, reason: String },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(transparent)]
    InvalidPipeline(backless_common::job::OpsError),
    /// The pipeline is valid, but on this image it would break a limit.
    #[error(transparent)]
    Plan(#[from] backless_common::job::PlanError),
    #[error("no API key")]
    MissingApiKey,
    #[error("invalid API key")]
    InvalidApiKey,
    #[error("the key's daily credits are used up")]
    InsufficientCredits { quota: u64 },
    #[error(transparent)]
    ImageUrl(#[from] crate::removebg::fetch::FetchError),
    #[error("the job did not finish in time")]
    Timeout { secs: u64 },
    /// The job ran and failed (the worker's code and message).
    #[error("{message}")]
    Failed { code: String, message: String },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Events(#[from] EventsError),
}

/// The JSON body of every error.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// Stable, machine-readable: `not_found`, `file_too_large`, `unsupported_media_type`, ...
    pub code: String,
    /// Human-readable, safe to show.
    pub message: String,
}

/// Error responses of the API.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
pub enum ErrorResponse {
    /// The request is malformed or an option is invalid.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// An API key's daily credits are used up.
    #[oai(status = 402)]
    PaymentRequired(Json<ErrorBody>),
    /// No API key, or not a valid one.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such job, or it belongs to someone else.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The job is not in a state that allows this.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The upload exceeds the byte limit.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The upload is not an image format we accept.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// The image is valid but outside the limits.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// A quota is used up (live jobs or stored bytes, per client or per address): retry after the
    /// given seconds, or once a job has finished or been deleted.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// Something failed on our side.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// A backend (database, storage, events) is unavailable: retry after the given seconds.
    /// Nothing was stored.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

/// What a client is told to wait when a backend is unavailable.
pub const RETRY_AFTER_SECS: u64 = 5;

fn body(code: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        code: code.to_string(),
        message: message.into(),
    })
}

fn bad_request(err: poem::Error) -> ErrorResponse {
    if err.status() == poem::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ErrorResponse::PayloadTooLarge(body("file_too_large", "The upload is too large."));
    }
    ErrorResponse::BadRequest(body("invalid_request", err.to_string()))
}

impl From<WebError> for ErrorResponse {
    fn from(e: WebError) -> Self {
        use ErrorResponse as R;
        match e {
            WebError::NotFound => R::NotFound(body("not_found", "No such job.")),
            WebError::NotReady => R::Conflict(body(
                "not_ready",
                "The job has not finished yet; watch its events.",
            )),
            WebError::JobFailed => {
                R::Conflict(body("job_failed", "The job failed; it has no result."))
            }
            WebError::TooManyJobs { max } => R::TooManyRequests(
                body(
                    "too_many_jobs",
                    format!(
                        "You already have {max} photos in progress; wait for one to finish or delete one."
                    ),
                ),
                RETRY_AFTER_SECS,
            ),
            WebError::TooManyJobsFromAddress { max } => R::TooManyRequests(
                body(
                    "too_many_jobs",
                    format!(
                        "Your network already has {max} photos in progress; wait for one to finish."
                    ),
                ),
                RETRY_AFTER_SECS,
            ),
            WebError::StorageQuota { max_bytes } => R::TooManyRequests(
                body(
                    "storage_quota",
                    format!(
                        "Your network already has {:.0} MB of photos stored; they are deleted once \
                         downloaded, or delete some.",
                        max_bytes as f64 / 1_000_000.0
                    ),
                ),
                RETRY_AFTER_SECS,
            ),
            WebError::FileTooLarge { max_bytes } => R::PayloadTooLarge(body(
                "file_too_large",
                format!(
                    "The file is larger than {:.0} MB.",
                    max_bytes as f64 / 1_000_000.0
                ),
            )),
            WebError::MissingFile => {
                R::BadRequest(body("missing_file", "Attach an image as `file`."))
            }
            WebError::EmptyFile => R::BadRequest(body("empty_file", "The file is empty.")),
            WebError::NotAnImage => R::UnsupportedMediaType(body(
                "unsupported_media_type",
                "This is not an image we can read: use PNG, JPEG, WebP, GIF, BMP or TIFF.",
            )),
            WebError::CorruptImage(detail) => {
                tracing::info!(%detail, "corrupt upload");
                R::BadRequest(body(
                    "corrupt_image",
                    "The image file is damaged or truncated.",
                ))
            }
            WebError::ImageLimit(l) => R::Unprocessable(body(l.code(), l.to_string())),
            WebError::Plan(e) => R::Unprocessable(body(e.code(), e.to_string())),
            WebError::InvalidOption { field, reason } => {
                R::BadRequest(body("invalid_option", format!("{field}: {reason}")))
            }
            WebError::InvalidRequest(m) => R::BadRequest(body("invalid_request", m)),
            WebError::MissingApiKey => R::Forbidden(body(
                "auth_failed",
                "Missing API key: send it as X-Api-Key.",
            )),
            WebError::InvalidApiKey => R::Forbidden(body("auth_failed", "Invalid API key.")),
            WebError::InsufficientCredits { quota } => R::PaymentRequired(body(
                "insufficient_credits",
                format!("This key's {quota} credits for today are used up."),
            )),
            WebError::ImageUrl(e) => {
                let code = match e {
                    crate::removebg::fetch::FetchError::TooLarge { .. } => "file_too_large",
                    crate::removebg::fetch::FetchError::Forbidden(_) => "image_url_forbidden",
                    _ => "failed_to_download",
                };
                R::BadRequest(body(code, e.to_string()))
            }
            WebError::Timeout { secs } => R::Unavailable(
                body("timeout", "The photo was not processed in time; try again."),
                secs,
            ),
            WebError::Failed { code, message } => {
                // Our own failures are 500; the rest are about the photo.
                if matches!(
                    code.as_str(),
                    "model_failed"
                        | "model_unavailable"
                        | "encode_failed"
                        | "operation_failed"
                        | "internal"
                ) {
                    R::Internal(body(&code, message))
                } else {
                    R::BadRequest(body(&code, message))
                }
            }
            WebError::InvalidPipeline(e) => R::BadRequest(body(e.code(), e.to_string())),
            // Backends fail transiently (restarts, failovers, network): tell the client to retry
            // rather than that the request was wrong. The cause (SQL, paths) is logged only.
            e @ (WebError::Db(_) | WebError::Storage(_) | WebError::Events(_)) => {
                tracing::error!(error = %e, "backend unavailable");
                R::Unavailable(
                    body(
                        "service_unavailable",
                        "The service is briefly unavailable; try again in a few seconds.",
                    ),
                    RETRY_AFTER_SECS,
                )
            }
        }
    }
}

impl ErrorResponse {
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::PaymentRequired(_) => 402,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::PayloadTooLarge(_) => 413,
            Self::UnsupportedMediaType(_) => 415,
            Self::Unprocessable(_) => 422,
            Self::TooManyRequests(..) => 429,
            Self::Internal(_) => 500,
            Self::Unavailable(..) => 503,
        }
    }
}

pub type ApiResult<T> = Result<T, ErrorResponse>;
