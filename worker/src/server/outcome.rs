//! How a push ended, as the queue must hear it: 2xx stops it, 503 with `Retry-After` has it
//! come back, 401 says the push was not the queue's.

use poem::http::StatusCode;
use poem::web::Json;
use poem::{IntoResponse, Response};

/// How a push ended, as the queue must hear it.
pub enum Outcome {
    /// Finished (done, failed for good, or nothing to do): 200.
    Finished(&'static str),
    /// Worth retrying: 503 with Retry-After seconds.
    Retry(&'static str, u64),
    /// Not from the queue: 401.
    Unauthenticated,
}

impl Outcome {
    /// The `outcome` label in `backless_worker_pushes_total`.
    pub fn label(&self) -> String {
        match self {
            Outcome::Finished(what) => what.replace(' ', "_"),
            Outcome::Retry(..) => "retry".into(),
            Outcome::Unauthenticated => "unauthenticated".into(),
        }
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        match self {
            Outcome::Finished(what) => Json(serde_json::json!({ "status": what })).into_response(),
            Outcome::Retry(why, after) => Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("Retry-After", after.to_string())
                .content_type("application/json")
                .body(serde_json::json!({ "status": "retry", "reason": why }).to_string()),
            Outcome::Unauthenticated => Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("WWW-Authenticate", "Bearer")
                .content_type("application/json")
                .body(r#"{"status":"unauthenticated"}"#),
        }
    }
}
