//! What `/v1/jobs` answers: a job, its options and events as clients see them, and the responses.

use backless_common::db::{Job, JobState, OutputFormat};
use backless_common::events::{JobEvent, Stage};
use backless_common::job::PlannedStage;
use futures::stream::BoxStream;
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::{ApiResponse, Enum, Object};

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum JobStateView {
    Queued,
    Processing,
    Done,
    Failed,
}

impl From<JobState> for JobStateView {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Queued => Self::Queued,
            JobState::Processing => Self::Processing,
            JobState::Done => Self::Done,
            JobState::Failed => Self::Failed,
        }
    }
}

/// Output encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum FormatView {
    Png,
    Webp,
    Jpeg,
    /// `color.jpg` and `alpha.png` in one archive.
    Zip,
}

impl From<OutputFormat> for FormatView {
    fn from(f: OutputFormat) -> Self {
        match f {
            OutputFormat::Png => Self::Png,
            OutputFormat::Webp => Self::Webp,
            OutputFormat::Jpeg => Self::Jpeg,
            OutputFormat::Zip => Self::Zip,
        }
    }
}

/// The processing options of a job.
#[derive(Debug, Clone, Object)]
pub struct OptionsView {
    /// The segmentation model (absent when the pipeline does not remove the background).
    pub model: Option<String>,
    pub format: FormatView,
    pub mask_only: bool,
    pub bg_color: Option<String>,
    pub crop: bool,
}

/// A job as its owner sees it.
#[derive(Debug, Clone, Object)]
pub struct JobView {
    /// Unguessable id.
    pub id: String,
    /// Display name (renamable).
    pub name: String,
    pub state: JobStateView,
    /// Stable code when `state` is `failed`.
    pub error_code: Option<String>,
    /// Message safe to show when `state` is `failed`.
    pub error_message: Option<String>,
    pub options: OptionsView,
    /// The operations the job runs, in order, written as the `op` upload fields take them
    /// (e.g. `resize:width=800,fit=contain`).
    pub pipeline: Vec<String>,
    /// Every event the job reports, in order (`uploaded` to `done`; a failure ends the stream
    /// with `failed` at the id of `done`): what a progress display lists.
    pub stages: Vec<PlannedStage>,
    pub width: u32,
    pub height: u32,
    pub original_content_type: String,
    pub result_content_type: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Suggested file name for the result, e.g. `cat-nobg.png`.
    pub download_name: String,
    pub events_url: String,
    pub original_url: String,
    /// Present once the job is done.
    pub result_url: Option<String>,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        let base = format!("/v1/jobs/{}", j.id);
        let pipeline = j.options.pipeline();
        let suffix = if pipeline.model().is_some() {
            "nobg"
        } else {
            "edited"
        };
        Self {
            download_name: format!("{}-{suffix}.{}", j.name, pipeline.format().extension()),
            pipeline: pipeline.to_strings(),
            stages: pipeline.stages(),
            events_url: format!("{base}/events"),
            original_url: format!("{base}/original"),
            result_url: (j.state == JobState::Done).then(|| format!("{base}/result")),
            id: j.id,
            name: j.name,
            state: j.state.into(),
            error_code: j.error_code,
            error_message: j.error_message,
            options: OptionsView {
                model: pipeline.model().map(str::to_string),
                format: pipeline.format().into(),
                mask_only: j.options.mask_only,
                bg_color: j.options.bg_color,
                crop: j.options.crop,
            },
            width: u32::try_from(j.width).unwrap_or(0),
            height: u32::try_from(j.height).unwrap_or(0),
            original_content_type: j.original_content_type,
            result_content_type: j.result_content_type,
            created_at: j.created_at,
            finished_at: j.finished_at,
        }
    }
}

/// A newly created job and the token that grants access to it.
#[derive(Debug, Clone, Object)]
pub struct CreatedJob {
    pub job: JobView,
    /// Send as `Authorization: Bearer <token>` to act as this client (browsers use the cookie).
    /// Absent when the job was made with an API key (the key is the credential).
    pub token: Option<String>,
}

/// Rename request.
#[derive(Debug, Clone, Object)]
pub struct RenameRequest {
    pub name: String,
}

/// One progress event (SSE `data:`; `id:` is `seq`, `event:` is `stage`).
#[derive(Debug, Clone, Object)]
pub struct JobEventView {
    pub seq: u64,
    pub stage: Stage,
    pub elapsed_ms: u64,
    pub message: Option<String>,
    pub error_code: Option<String>,
}

impl From<JobEvent> for JobEventView {
    fn from(e: JobEvent) -> Self {
        Self {
            seq: e.seq,
            stage: e.stage,
            elapsed_ms: e.elapsed_ms,
            message: e.message,
            error_code: e.error_code,
        }
    }
}

#[derive(ApiResponse)]
pub enum CreateResponse {
    /// The job was recorded and queued.
    #[oai(status = 201)]
    Created(
        Json<CreatedJob>,
        #[oai(header = "Location")] String,
        #[oai(header = "Set-Cookie")] Option<String>,
    ),
}

#[derive(ApiResponse)]
pub enum JobResponse {
    #[oai(status = 200)]
    Ok(Json<JobView>),
}

#[derive(ApiResponse)]
pub enum ListResponse {
    /// The caller's jobs, newest first.
    #[oai(status = 200)]
    Ok(Json<Vec<JobView>>),
}

#[derive(ApiResponse)]
pub enum DeleteResponse {
    /// Files and record are gone.
    #[oai(status = 204)]
    Deleted,
}

#[derive(ApiResponse)]
pub enum EventsResponse {
    /// Server-sent events: the current state first, then each stage live; ends after `done` or
    /// `failed`.
    #[oai(status = 200)]
    Stream(EventStream<BoxStream<'static, JobEventView>>),
}
