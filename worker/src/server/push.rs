//! The push endpoint, `POST /v1/tasks/remove-background`: who may push, how many at once, the
//! body (trusted for nothing but the job id), and the answer the queue must hear.

use std::sync::Arc;

use backless_common::db::is_valid_job_id;
use poem::handler;
use poem::http::HeaderMap;
use poem::web::Data;
use serde::Deserialize;
use tracing::Instrument;

use super::State;
use super::outcome::Outcome;

#[derive(Debug, Deserialize)]
struct TaskBody {
    job_id: String,
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
