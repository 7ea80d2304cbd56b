//! The API error every front end speaks: a gRPC code plus a message (and, for some
//! validation errors, a help link), mapped to `tonic::Status` and to the Google JSON
//! error envelope in one place each.

use serde_json::json;

/// The gRPC status codes the emulator answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Cancelled,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    Unimplemented,
    Internal,
    Unavailable,
}

impl Code {
    /// The numeric gRPC code.
    pub fn number(self) -> i32 {
        match self {
            Code::Cancelled => 1,
            Code::InvalidArgument => 3,
            Code::DeadlineExceeded => 4,
            Code::NotFound => 5,
            Code::AlreadyExists => 6,
            Code::PermissionDenied => 7,
            Code::ResourceExhausted => 8,
            Code::FailedPrecondition => 9,
            Code::Aborted => 10,
            Code::Unimplemented => 12,
            Code::Internal => 13,
            Code::Unavailable => 14,
        }
    }

    /// The `status` string of the JSON envelope.
    pub fn name(self) -> &'static str {
        match self {
            Code::Cancelled => "CANCELLED",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
        }
    }

    /// The HTTP status of the REST mapping (google.rpc.Code -> HTTP).
    pub fn http_status(self) -> u16 {
        match self {
            Code::Cancelled => 499,
            Code::InvalidArgument | Code::FailedPrecondition => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Internal => 500,
            Code::Unavailable => 503,
        }
    }

    fn tonic(self) -> tonic::Code {
        tonic::Code::from_i32(self.number())
    }
}

/// A `google.rpc.Help` link attached to some validation errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelpLink {
    pub description: &'static str,
    pub url: &'static str,
}

/// An error answered to a client. The message is what the real service says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub help: Option<HelpLink>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            help: None,
        }
    }

    pub fn with_help(mut self, description: &'static str, url: &'static str) -> Self {
        self.help = Some(HelpLink { description, url });
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    pub fn unimplemented(method: &str) -> Self {
        Self::new(
            Code::Unimplemented,
            format!("{method} is not implemented by the BackLess Cloud Tasks emulator."),
        )
    }

    /// The Google JSON error envelope.
    pub fn to_json(&self) -> serde_json::Value {
        let mut error = json!({
            "code": self.code.http_status(),
            "message": self.message,
            "status": self.code.name(),
        });
        if let Some(help) = &self.help {
            error["details"] = json!([{
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": help.description, "url": help.url}],
            }]);
        }
        json!({ "error": error })
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.code.tonic(), e.message)
    }
}
