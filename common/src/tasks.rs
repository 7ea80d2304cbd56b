//! The task-queue client: Cloud Tasks through `google-cloud-tasks-v2` (REST), or an emulator at
//! `BACKLESS_TASKS_ENDPOINT` with anonymous credentials.
//!
//! Each job becomes one HTTP POST task named `{queue}/tasks/{job_id}` with body `{"job_id": ...}`,
//! created with idempotency on: a retried enqueue can never make a second task, and
//! `ALREADY_EXISTS` means the job is already enqueued.

use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
use google_cloud_tasks_v2::client::CloudTasks;
use google_cloud_tasks_v2::model::{HttpMethod, HttpRequest, OidcToken, Queue, Task};
use tokio::sync::Mutex;

use crate::config::TasksConfig;

/// Task-queue failures.
#[derive(Debug, thiserror::Error)]
pub enum TasksError {
    #[error("cannot create the Cloud Tasks client: {0}")]
    Client(String),
    /// The queue service could not be reached or did not answer in time (worth retrying).
    #[error("Cloud Tasks is unavailable: {0}")]
    Unavailable(String),
    /// The queue service answered with an error status.
    #[error("Cloud Tasks refused the request ({code}): {message}")]
    Rejected { code: String, message: String },
}

impl TasksError {
    fn from_gax(e: google_cloud_tasks_v2::Error) -> Self {
        match e.status() {
            Some(status) => Self::Rejected {
                code: status.code.name().to_string(),
                message: status.message.clone(),
            },
            None => Self::Unavailable(e.to_string()),
        }
    }
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Created,
    /// A task with this job's name already exists (or existed recently): nothing to do.
    AlreadyExists,
}

/// The header carrying `BACKLESS_PUSH_SECRET` on each push.
pub const PUSH_SECRET_HEADER: &str = "X-BackLess-Push-Secret";

/// The JSON body of every push.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskBody {
    pub job_id: String,
}

/// Client for the jobs queue. The underlying client is created on first use (and again after a
/// failed creation), so a service starts even while credentials or the emulator are not ready.
#[derive(Debug)]
pub struct TaskQueue {
    cfg: TasksConfig,
    client: Mutex<Option<CloudTasks>>,
}

impl TaskQueue {
    pub fn new(cfg: TasksConfig) -> Self {
        Self {
            cfg,
            client: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &TasksConfig {
        &self.cfg
    }

    async fn client(&self) -> Result<CloudTasks, TasksError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // Fail fast: the caller (an upload, or the outbox loop) has its own retry story.
        let mut builder = CloudTasks::builder()
            .with_retry_policy(
                Aip194Strict
                    .with_attempt_limit(3)
                    .with_time_limit(Duration::from_secs(10)),
            )
            .with_backoff_policy(
                ExponentialBackoffBuilder::new()
                    .with_initial_delay(Duration::from_millis(100))
                    .with_maximum_delay(Duration::from_secs(1))
                    .clamp(),
            );
        if let Some(endpoint) = &self.cfg.endpoint {
            builder = builder.with_endpoint(endpoint.clone()).with_credentials(
                google_cloud_auth::credentials::anonymous::Builder::new().build(),
            );
        }
        let client = builder
            .build()
            .await
            .map_err(|e| TasksError::Client(e.to_string()))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The task this job's enqueue creates.
    pub fn task_for(&self, job_id: &str) -> Task {
        let body = serde_json::to_vec(&TaskBody {
            job_id: job_id.to_string(),
        })
        .expect("serialising a string");
        let mut headers = vec![("Content-Type", "application/json".to_string())];
        if let Some(secret) = &self.cfg.push_secret {
            headers.push((PUSH_SECRET_HEADER, secret.clone()));
        }
        let mut http = HttpRequest::new()
            .set_url(self.cfg.task_url())
            .set_http_method(HttpMethod::Post)
            .set_headers(headers)
            .set_body(body);
        if let Some(sa) = &self.cfg.service_account {
            let mut token = OidcToken::new().set_service_account_email(sa.clone());
            if let Some(aud) = &self.cfg.audience {
                token = token.set_audience(aud.clone());
            }
            http = http.set_oidc_token(token);
        }
        Task::new()
            .set_name(self.cfg.task_name(job_id))
            .set_http_request(http)
    }

    /// Create the job's push task; an existing task of the same name counts as success.
    #[tracing::instrument(skip_all, fields(job_id))]
    pub async fn enqueue_job(&self, job_id: &str) -> Result<Enqueued, TasksError> {
        let client = self.client().await?;
        let res = client
            .create_task()
            .set_parent(self.cfg.queue_path())
            .set_task(self.task_for(job_id))
            .with_idempotency(true)
            .send()
            .await;
        match res {
            Ok(_) => Ok(Enqueued::Created),
            Err(e) if e.status().is_some_and(|s| s.code == Code::AlreadyExists) => {
                Ok(Enqueued::AlreadyExists)
            }
            Err(e) => Err(TasksError::from_gax(e)),
        }
    }

    /// Create the queue if it does not exist (dev and emulator set-ups).
    pub async fn ensure_queue(&self) -> Result<(), TasksError> {
        let client = self.client().await?;
        match client
            .get_queue()
            .set_name(self.cfg.queue_path())
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.status().is_some_and(|s| s.code == Code::NotFound) => {}
            Err(e) => return Err(TasksError::from_gax(e)),
        }
        match client
            .create_queue()
            .set_parent(self.cfg.location_path())
            .set_queue(Queue::new().set_name(self.cfg.queue_path()))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status().is_some_and(|s| s.code == Code::AlreadyExists) => Ok(()),
            Err(e) => Err(TasksError::from_gax(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CommonConfig, FromSettings};

    #[test]
    fn task_shape() {
        let cfg = CommonConfig::from_pairs([
            ("BACKLESS_WORKER_URL", "http://127.0.0.1:9000"),
            (
                "BACKLESS_TASKS_SERVICE_ACCOUNT",
                "sa@x.iam.gserviceaccount.com",
            ),
            ("BACKLESS_TASKS_AUDIENCE", "https://worker"),
        ])
        .unwrap();
        let q = TaskQueue::new(cfg.tasks);
        let t = q.task_for("0123");
        assert_eq!(
            t.name,
            "projects/dev/locations/local/queues/backless/tasks/0123"
        );
        let Some(google_cloud_tasks_v2::model::task::MessageType::HttpRequest(h)) = t.message_type
        else {
            panic!("not an http task")
        };
        assert_eq!(h.url, "http://127.0.0.1:9000/v1/tasks/remove-background");
        assert_eq!(h.http_method, HttpMethod::Post);
        let body: TaskBody = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(body.job_id, "0123");
        assert_eq!(
            h.headers.get("Content-Type").map(String::as_str),
            Some("application/json")
        );
        let Some(google_cloud_tasks_v2::model::http_request::AuthorizationHeader::OidcToken(tok)) =
            h.authorization_header
        else {
            panic!("no oidc token")
        };
        assert_eq!(tok.service_account_email, "sa@x.iam.gserviceaccount.com");
        assert_eq!(tok.audience, "https://worker");
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_a_typed_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let cfg = CommonConfig::from_pairs([(
            "BACKLESS_TASKS_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )])
        .unwrap();
        let q = TaskQueue::new(cfg.tasks);
        let err = q.enqueue_job("abc").await.unwrap_err();
        assert!(matches!(err, TasksError::Unavailable(_)), "{err:?}");
    }
}
