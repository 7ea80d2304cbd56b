//! One delivery of one job: claim it, fetch its files, run its pipeline under the memory budget
//! while publishing its stages, store the result and record the end.

use std::sync::Arc;
use std::time::Duration;

use backless_common::db::Job;
use backless_common::events::{JobEvent, Stage};
use backless_common::job::{MODELS, Pipeline};
use backless_common::storage::{StorageError, background_key, result_key};

use super::State;
use super::outcome::Outcome;
use crate::imaging::{self, Progress};

fn elapsed_ms(job: &Job) -> u64 {
    (chrono::Utc::now() - job.created_at)
        .num_milliseconds()
        .max(0) as u64
}

async fn publish(state: &State, job: &Job, stage: Stage) {
    publish_event(state, job, JobEvent::new(stage, elapsed_ms(job))).await;
}

async fn publish_event(state: &State, job: &Job, event: JobEvent) {
    let stage = event.stage;
    if let Err(e) = state.events.publish(&job.id, event).await {
        // Progress is best effort: the final state is in the database either way.
        tracing::warn!(error = %e, ?stage, "cannot publish progress");
    }
}

fn observe_stage(state: &State, name: &str, took: Duration) {
    state
        .metrics
        .stage_seconds
        .with_label_values(&[name])
        .observe(took.as_secs_f64());
}

/// Record a permanent failure and tell the watchers.
async fn fail(state: &State, job: &Job, code: &str, message: &str) -> Outcome {
    match state.db.mark_failed(&job.id, code, message).await {
        Ok(_) => {
            let event = JobEvent::failed(code, message, elapsed_ms(job));
            if let Err(e) = state.events.publish(&job.id, event).await {
                tracing::warn!(error = %e, "cannot publish failure");
            }
            tracing::info!(code, "job failed permanently");
            Outcome::Finished("failed")
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot record failure");
            Outcome::Retry("database", 5)
        }
    }
}

/// Give the job back and ask the queue to retry.
async fn retry(state: &State, job: &Job, why: &'static str) -> Outcome {
    if let Err(e) = state.db.release(&job.id).await {
        tracing::warn!(error = %e, "cannot release the claim; it expires with its lease");
    }
    Outcome::Retry(why, 5)
}

pub(super) async fn process(state: &Arc<State>, job_id: &str) -> Outcome {
    let job = match state.db.get(job_id).await {
        Ok(Some(job)) => job,
        Ok(None) => return Outcome::Finished("gone"),
        Err(e) => {
            tracing::warn!(error = %e, "database unavailable");
            return Outcome::Retry("database", 5);
        }
    };
    if job.state.is_final() {
        return Outcome::Finished("already finished");
    }
    // Only a pipeline that removes the background waits for the models: a thumbnail runs at
    // once even while they load.
    let pipeline = job.options.pipeline();
    let models = match pipeline.model() {
        None => None,
        Some(_) => match state.models(Duration::from_secs(30)).await {
            None => return Outcome::Retry("models loading", 5),
            Some(Err(_)) => return Outcome::Retry("models unavailable", 30),
            Some(Ok(m)) => Some(m),
        },
    };
    match state.db.try_claim(job_id, state.lease).await {
        Ok(true) => {}
        Ok(false) => {
            // Finished meanwhile, or another delivery holds a live lease: come back later.
            return match state.db.get(job_id).await {
                Ok(Some(j)) if j.state.is_final() => Outcome::Finished("already finished"),
                Ok(None) => Outcome::Finished("gone"),
                _ => Outcome::Retry("another delivery is processing this job", 10),
            };
        }
        Err(e) => {
            tracing::warn!(error = %e, "database unavailable");
            return Outcome::Retry("database", 5);
        }
    }
    // The claim counted this delivery. Deliveries that hit a transient failure give their claim
    // back, so a job claimed this often has died with its worker each time: fail it, answering
    // 2xx, so the queue stops redelivering it into the same crash.
    let attempt = i64::from(job.attempts) + 1;
    if attempt > i64::from(state.max_attempts) {
        tracing::warn!(attempt, "job delivered too often; failing it");
        let msg = format!(
            "the job was attempted {} times without finishing",
            attempt - 1
        );
        return fail(state, &job, "too_many_attempts", &msg).await;
    }
    // The record is trusted no more than the push: a pipeline web never validated (a job planted
    // in the database, a record from an older version) is checked again.
    let known: Vec<String> = MODELS.iter().map(|m| m.to_string()).collect();
    if let Err(e) = Pipeline::new(pipeline.operations().to_vec(), &known) {
        return fail(state, &job, e.code(), &e.to_string()).await;
    }
    publish(state, &job, Stage::Received).await;
    let segmenter = match (pipeline.model(), &models) {
        (Some(name), Some(models)) => match models.get(name) {
            Some(seg) => Some(Arc::clone(seg)),
            None => {
                let msg = format!("the model {name:?} is not available on this worker");
                return fail(state, &job, "model_unavailable", &msg).await;
            }
        },
        _ => None,
    };
    let original = match state.storage.get_original(job_id).await {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound(_)) => {
            return fail(
                state,
                &job,
                "original_missing",
                "the uploaded image is gone",
            )
            .await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "storage unavailable");
            return retry(state, &job, "storage").await;
        }
    };
    let background = if pipeline.needs_background() {
        match state.storage.get(&background_key(job_id)).await {
            Ok(bytes) => Some(bytes),
            Err(StorageError::NotFound(_)) => {
                let e = crate::imaging::PipelineError::BackgroundMissing;
                return fail(state, &job, e.code(), &e.to_string()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "storage unavailable");
                return retry(state, &job, "storage").await;
            }
        }
    } else {
        None
    };
    let Ok(_permit) = state.inference.acquire().await else {
        return retry(state, &job, "shutting down").await;
    };
    if segmenter.is_some() {
        state.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        state.metrics.model_runs.inc();
    }

    // Progress is heard on the blocking thread and forwarded from here.
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let limits = state.limits;
    let ops = pipeline.operations().to_vec();
    let budget = state.budget.clone();
    let run = tokio::task::spawn_blocking(move || {
        let out = imaging::run_within(
            Some(&budget),
            &ops,
            &original,
            background.as_deref(),
            &limits,
            segmenter.as_deref(),
            |p| {
                let _ = progress_tx.send(p);
            },
        );
        drop(original);
        out
    });
    let ops = pipeline.operations();
    while let Some(p) = progress_rx.recv().await {
        match p {
            Progress::Decoded(took) => observe_stage(state, "decode", took),
            Progress::Started(i) => {
                let event = JobEvent::operation(ops[i].stage(), i, elapsed_ms(&job));
                publish_event(state, &job, event).await;
            }
            Progress::Segmented(took) => {
                let model = pipeline.model().unwrap_or_default();
                state
                    .metrics
                    .inference_seconds
                    .with_label_values(&[model])
                    .observe(took.as_secs_f64());
                let i = ops.iter().position(|op| op.name() == "remove_background");
                let event =
                    JobEvent::operation(Stage::Compositing, i.unwrap_or(0), elapsed_ms(&job));
                publish_event(state, &job, event).await;
            }
            Progress::Finished(i, took) => {
                tracing::info!(
                    op = ops[i].name(),
                    ms = took.as_millis() as u64,
                    "operation finished"
                );
                observe_stage(state, ops[i].name(), took);
            }
        }
    }
    let output = run.await;
    // The image's buffers are freed by now; `trim_when_idle` hands the pages back once no job
    // has finished for a while.
    state.jobs_done.send_modify(|n| *n += 1);
    let output = match output {
        Ok(Ok(out)) => out,
        Ok(Err(e)) if e.is_permanent() => return fail(state, &job, e.code(), &e.to_string()).await,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "processing failed");
            return retry(state, &job, "inference").await;
        }
        Err(e) => {
            tracing::error!(error = %e, "processing panicked");
            return fail(state, &job, "internal", "the image could not be processed").await;
        }
    };
    let content_type = output.content_type;
    if let Err(e) = state.storage.put_result(job_id, output.bytes.into()).await {
        tracing::warn!(error = %e, "cannot store the result");
        return retry(state, &job, "storage").await;
    }
    publish(state, &job, Stage::Stored).await;
    match state
        .db
        .mark_done(job_id, &result_key(job_id), content_type)
        .await
    {
        Ok(true) => {
            publish(state, &job, Stage::Done).await;
            tracing::info!("job done");
            Outcome::Finished("done")
        }
        // Not processing any more. Deleted while we worked: what we just stored goes too. Already
        // finished by another delivery (its lease ran out, and both ran): that job's files are
        // its result, and nothing is deleted.
        Ok(false) => match state.db.exists(job_id).await {
            Ok(false) => {
                if let Err(e) = state.storage.delete_job(job_id).await {
                    tracing::warn!(error = %e, "cannot delete a deleted job's result; the orphan sweep will");
                }
                Outcome::Finished("gone")
            }
            Ok(true) => {
                tracing::info!("another delivery finished the job first");
                Outcome::Finished("already finished")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell a deleted job from a finished one; keeping its files");
                Outcome::Finished("kept")
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot record the result");
            retry(state, &job, "database").await
        }
    }
}
