//! The push endpoint, `POST /v1/tasks/remove-background`: who may push, how many at once, the
//! body (trusted for nothing but the job id), and the answer the queue must hear.

use std::sync::Arc;

use backless_common::db::is_valid_job_id;
use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Json};
use poem::{IntoResponse, Response, handler};
use serde::Deserialize;
use tracing::Instrument;

use super::State;

#[derive(Debug, Deserialize)]
struct TaskBody {
    job_id: String,
}

/// How a push ended, as the queue must hear it.
pub(super) enum Outcome {
    /// Finished (done, failed for good, or nothing to do): 200.
    Finished(&'static str),
    /// Worth retrying: 503 with Retry-After seconds.
    Retry(&'static str, u64),
    /// Not from the queue: 401.
    Unauthenticated,
}

impl Outcome {
    /// The `outcome` label in `backless_worker_pushes_total`.
    fn label(&self) -> String {
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

#[handler]
pub(super) async fn remove_background(
    Data(state): Data<&Arc<State>>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Outcome {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let span = tracing::info_span!(
        "push",
        job_id = tracing::field::Empty,
        task = %header("x-cloudtasks-taskname"),
        retry = %header("x-cloudtasks-taskretrycount"),
    );
    let outcome = async move {
        if let Err(e) = state.auth.check(headers).await {
            tracing::warn!(reason = %e, "push refused");
            return Outcome::Unauthenticated;
        }
        let Ok(_admitted) = state.admission.try_acquire() else {
            tracing::info!("at capacity; asking the queue to retry");
            return Outcome::Retry("busy", 5);
        };
        // The body is trusted for nothing but the job id.
        let bytes = body.into_bytes_limit(4096).await.unwrap_or_default();
        let Ok(TaskBody { job_id }) = serde_json::from_slice::<TaskBody>(&bytes) else {
            tracing::warn!("push without a readable job id; dropping it");
            return Outcome::Finished("ignored");
        };
        if !is_valid_job_id(&job_id) {
            tracing::warn!("push with a malformed job id; dropping it");
            return Outcome::Finished("ignored");
        }
        tracing::Span::current().record("job_id", job_id.as_str());
        let outcome = super::job::process(state, &job_id).await;
        tracing::info!(outcome = %outcome.label(), "push handled");
        outcome
    }
    .instrument(span)
    .await;
    state
        .metrics
        .pushes
        .with_label_values(&[outcome.label().as_str()])
        .inc();
    outcome
}
