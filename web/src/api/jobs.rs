//! `/v1/jobs`: upload, read, watch (SSE), fetch, rename and delete jobs.
//!
//! Access: a job is visible only to the client that created it (signed cookie or bearer token);
//! everyone else gets 404, exactly as for an id that does not exist.

use std::sync::Arc;
use std::time::Duration;

use backless_common::db::job::{MODELS, normalize_color};
use backless_common::db::{Job, JobOptions, JobState, NewJob, OutputFormat, new_job_id};
use backless_common::events::{JobEvent, Stage};
use backless_common::job::{Operation, Pipeline, PlannedStage};
use backless_common::limits::ImageLimits;
use futures::stream::BoxStream;
use futures::{StreamExt, stream};
use poem::Request;
use poem::web::sse::Event;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::types::multipart::Upload;
use poem_openapi::{ApiResponse, Enum, Multipart, Object, OpenApi, Tags};

use super::image_body::{ImageBody, ResultBody};
use crate::error::{ApiResult, WebError};
use crate::identity::{ClientId, Signer};
use crate::keys::{Charge, Presented};
use crate::lifecycle::{Shared, state_event};
use crate::upload::{check_image, clean_name, display_name, read_upload};

#[derive(Tags)]
enum ApiTags {
    /// Background-removal jobs.
    Jobs,
}

/// The jobs resource.
pub struct JobsApi {
    pub shared: Arc<Shared>,
    pub signer: Signer,
    pub limits: ImageLimits,
    pub max_live_per_client: u64,
    pub keep_alive: Duration,
    pub max_stream_lifetime: Duration,
    pub result_delivery: crate::config::ResultDelivery,
    pub addr_quotas: crate::config::AddrQuotas,
    /// Queued or processing jobs per API key.
    pub max_live_per_key: u64,
    /// The models the workers load (`BACKLESS_MODELS`): a job naming another is refused (400),
    /// not failed by the worker.
    pub models: Vec<String>,
}

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

/// The upload form.
#[derive(Debug, Multipart)]
pub struct UploadForm {
    /// The photo: PNG, JPEG, WebP, GIF, BMP or TIFF.
    pub file: Upload,
    /// `u2netp` (default), `u2net` or `isnet`.
    pub model: Option<String>,
    /// `png` (default), `webp` or `jpeg`.
    pub format: Option<String>,
    /// 1-100: JPEG's quality (default 90), or lossy WebP (alpha stays lossless) at this quality;
    /// WebP without it is lossless. PNG takes none.
    pub quality: Option<u8>,
    /// Return the mask instead of the cut-out.
    pub mask_only: Option<bool>,
    /// Fill the background with `#rrggbb` instead of transparency.
    pub bg_color: Option<String>,
    /// Crop to the subject.
    pub crop: Option<bool>,
    /// Display name (default: the file name without extension).
    pub name: Option<String>,
    /// Operations to run instead of a plain background removal, in order, one per field:
    /// `remove_background[:model=,mask_only=,bg_color=]`, `crop_to_subject[:threshold=,margin=]`,
    /// `resize:width=,height=[,fit=contain|cover|fill]`, `thumbnail:size=`,
    /// `watermark:text=[,position=top_left|top_right|bottom_left|bottom_right|center,opacity=]`,
    /// `filter:grayscale|blur[=sigma]|sharpen[=sigma]|brightness=factor|contrast=factor`,
    /// `encode:format=png|webp|jpeg[,quality=]`. At most 8; PNG when no `encode` ends them.
    /// Not combined with `model`, `format`, `mask_only`, `bg_color` or `crop`.
    #[oai(default)]
    pub op: Vec<String>,
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

impl JobsApi {
    async fn owned(&self, req: &Request, id: &str) -> Result<(ClientId, Job), WebError> {
        let client = self.signer.identify(req).ok_or(WebError::NotFound)?;
        if !backless_common::db::is_valid_job_id(id) {
            return Err(WebError::NotFound);
        }
        let job = self
            .shared
            .db
            .get_owned(id, &client.0)
            .await?
            .ok_or(WebError::NotFound)?;
        Ok((client, job))
    }

    fn options(&self, form: &UploadForm) -> Result<JobOptions, WebError> {
        if !form.op.is_empty() {
            return self.pipeline_options(form);
        }
        let mut o = JobOptions::default();
        if !self.models.contains(&o.model)
            && let Some(first) = self.models.first()
        {
            // The default model is not installed here: the first one that is.
            o.model = first.clone();
        }
        if let Some(m) = form
            .model
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            if !self.models.iter().any(|installed| installed == m) {
                let reason = if MODELS.contains(&m) {
                    format!(
                        "{m} is not installed on this server; use {}",
                        self.models.join(", ")
                    )
                } else {
                    format!("use one of {}", self.models.join(", "))
                };
                return Err(WebError::InvalidOption {
                    field: "model",
                    reason,
                });
            }
            o.model = m.to_string();
        }
        if let Some(f) = form
            .format
            .as_deref()
            .map(str::trim)
            .filter(|f| !f.is_empty())
        {
            o.format = OutputFormat::parse(f).ok_or_else(|| WebError::InvalidOption {
                field: "format",
                reason: "use png, webp, jpeg or zip".into(),
            })?;
        }
        o.mask_only = form.mask_only.unwrap_or(false);
        o.crop = form.crop.unwrap_or(false);
        if let Some(c) = form
            .bg_color
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            o.bg_color = Some(normalize_color(c).ok_or_else(|| WebError::InvalidOption {
                field: "bg_color",
                reason: "use a colour like #ffffff".into(),
            })?);
        }
        if o.format == OutputFormat::Jpeg && o.bg_color.is_none() && !o.mask_only {
            // JPEG has no transparency: default to white rather than black.
            o.bg_color = Some("#ffffff".into());
        }
        if let Some(q) = form.quality {
            // The plain fields with a quality are a pipeline whose `encode` carries it.
            let mut ops = o.plain_pipeline().to_strings();
            ops.pop();
            ops.push(format!("encode:format={},quality={q}", o.format.name()));
            let pipeline =
                Pipeline::parse(&ops, &self.models).map_err(|e| WebError::InvalidOption {
                    field: "quality",
                    reason: e.to_string(),
                })?;
            o.pipeline = Some(pipeline);
        }
        Ok(o)
    }

    /// Options for a job given as operations.
    fn pipeline_options(&self, form: &UploadForm) -> Result<JobOptions, WebError> {
        let plain = [
            ("model", form.model.is_some()),
            ("format", form.format.is_some()),
            ("quality", form.quality.is_some()),
            ("mask_only", form.mask_only.is_some()),
            ("bg_color", form.bg_color.is_some()),
            ("crop", form.crop.is_some()),
        ];
        if let Some((field, _)) = plain.iter().find(|(_, given)| *given) {
            return Err(WebError::InvalidOption {
                field,
                reason: "give it as an operation (e.g. remove_background:model=u2net) when op fields are used".into(),
            });
        }
        let pipeline =
            Pipeline::parse(&form.op, &self.models).map_err(WebError::InvalidPipeline)?;
        if pipeline.needs_background() {
            return Err(WebError::InvalidOption {
                field: "op",
                reason: "backdrop needs a background image, which only the remove.bg API \
                         (bg_image_file, bg_image_url) takes for now"
                    .into(),
            });
        }
        Ok(options_for(pipeline))
    }

    /// Whether the client, or its address, already holds more than it may, this job included
    /// (its row is written, its `size` bytes not yet counted).
    async fn over_quota(
        &self,
        client: &ClientId,
        addr: Option<&str>,
        size: u64,
    ) -> Result<(), WebError> {
        let live = self.shared.db.count_live_by_owner(&client.0).await?;
        if live > self.max_live_per_client {
            return Err(WebError::TooManyJobs {
                max: self.max_live_per_client,
            });
        }
        let Some(addr) = addr else {
            return Ok(());
        };
        let q = self.addr_quotas;
        if q.live_jobs == 0 && q.stored_bytes == 0 {
            return Ok(());
        }
        let usage = self.shared.db.usage_by_addr(addr).await?;
        if q.live_jobs != 0 && usage.live_jobs > q.live_jobs {
            return Err(WebError::TooManyJobsFromAddress { max: q.live_jobs });
        }
        if q.stored_bytes != 0 && usage.stored_bytes.saturating_add(size) > q.stored_bytes {
            return Err(WebError::StorageQuota {
                max_bytes: q.stored_bytes,
            });
        }
        Ok(())
    }

    /// A stored object, to stream to the client.
    async fn open(&self, key: &str) -> Result<backless_common::storage::ObjectStream, WebError> {
        self.shared
            .storage
            .get_stream(key)
            .await
            .map_err(|e| match e {
                backless_common::storage::StorageError::NotFound(_) => WebError::NotFound,
                e => e.into(),
            })
    }
}

/// A job's options when it is given as a pipeline: the summary fields (model, format, mask, colour,
/// crop) read from the pipeline itself, so they cannot disagree with what runs.
pub fn options_for(pipeline: Pipeline) -> JobOptions {
    let mut o = JobOptions {
        format: pipeline.format(),
        ..JobOptions::default()
    };
    if let Some(Operation::RemoveBackground {
        model,
        mask_only,
        bg_color,
        ..
    }) = pipeline.operations().first()
    {
        o.model = model.clone();
        o.mask_only = *mask_only;
        o.bg_color = bg_color.clone();
    }
    o.crop = pipeline
        .operations()
        .iter()
        .any(|op| matches!(op, Operation::CropToSubject { .. }));
    o.pipeline = Some(pipeline);
    o
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Jobs")]
impl JobsApi {
    /// Upload a photo and start removing its background.
    #[oai(path = "/jobs", method = "post")]
    #[tracing::instrument(skip_all, fields(job_id))]
    async fn create(&self, req: &Request, form: UploadForm) -> ApiResult<CreateResponse> {
        let key = match req.extensions().get::<Presented>() {
            Some(Presented::Valid(k)) => Some(k.clone()),
            Some(Presented::Unknown) => return Err(WebError::InvalidApiKey.into()),
            None => None,
        };
        let (client, new_cookie) = match (&key, self.signer.identify(req)) {
            (Some(k), _) => (ClientId(k.owner()), None),
            (None, Some(c)) => (c, None),
            (None, None) => {
                let c = self.signer.new_client();
                let cookie = self.signer.cookie(&c);
                (c, Some(cookie))
            }
        };
        if key.is_none() {
            let live = self
                .shared
                .db
                .count_live_by_owner(&client.0)
                .await
                .map_err(WebError::from)?;
            if live >= self.max_live_per_client {
                return Err(WebError::TooManyJobs {
                    max: self.max_live_per_client,
                }
                .into());
            }
        }
        let options = self.options(&form)?;
        let explicit_name = form.name.as_deref().and_then(clean_name);
        let (file_name, data) = read_upload(form.file, self.limits.max_bytes).await?;
        let checked = check_image(&data, &self.limits)?;
        // What the job will produce, from the header alone: a pipeline that would break a limit
        // on this image is refused now, not failed by the worker.
        options
            .pipeline()
            .plan(checked.oriented, &self.limits)
            .map_err(WebError::from)?;
        let name = explicit_name.unwrap_or_else(|| display_name(file_name.as_deref()));

        let addr = req
            .extensions()
            .get::<crate::ratelimit::ClientAddr>()
            .map(|a| a.0.clone());
        // A key's job spends a credit (its quotas replace the per-client and per-address ones).
        let charge = match &key {
            Some(k) => Some(Charge::take(&self.shared.db, k, self.max_live_per_key).await?),
            None => None,
        };
        let id = new_job_id();
        tracing::Span::current().record("job_id", id.as_str());
        let shared = &self.shared;
        // The row first: a crash from here on leaves a row the sweep deletes (with any object
        // under its id), never an object nothing knows about.
        let inserted = shared
            .db
            .insert(NewJob {
                id: id.clone(),
                owner: client.0.clone(),
                name,
                options,
                original_content_type: checked.format.content_type().to_string(),
                width: checked.width,
                height: checked.height,
                client_addr: addr.clone(),
            })
            .await
            .map_err(WebError::from);
        let mut job = match inserted {
            Ok(job) => job,
            Err(e) => {
                if let Some(c) = &charge {
                    c.refund(&shared.db).await;
                }
                return Err(e.into());
            }
        };
        let size = data.len() as u64;
        // Counted with this job in: two uploads racing past the check above cannot both stay.
        let admitted = match &charge {
            Some(_) => Ok(()),
            None => self.over_quota(&client, addr.as_deref(), size).await,
        };
        if let Err(e) = admitted {
            shared.forget_upload(&id).await;
            return Err(e.into());
        }
        if let Err(e) = shared.store_and_enqueue(&mut job, data, None).await {
            if let Some(c) = &charge {
                c.refund(&shared.db).await;
            }
            return Err(e.into());
        }
        // A key is its own credential: no client token is made for it.
        let token = key.is_none().then(|| self.signer.token(&client));
        Ok(CreateResponse::Created(
            Json(CreatedJob {
                job: job.into(),
                token,
            }),
            format!("/v1/jobs/{id}"),
            new_cookie,
        ))
    }

    /// The caller's jobs.
    #[oai(path = "/jobs", method = "get")]
    async fn list(&self, req: &Request) -> ApiResult<ListResponse> {
        let Some(client) = self.signer.identify(req) else {
            return Ok(ListResponse::Ok(Json(Vec::new())));
        };
        let jobs = self
            .shared
            .db
            .list_by_owner(&client.0)
            .await
            .map_err(WebError::from)?;
        Ok(ListResponse::Ok(Json(
            jobs.into_iter().map(Into::into).collect(),
        )))
    }

    /// One job.
    #[oai(path = "/jobs/:id", method = "get")]
    async fn get(&self, req: &Request, id: Path<String>) -> ApiResult<JobResponse> {
        let (_, job) = self.owned(req, &id).await?;
        Ok(JobResponse::Ok(Json(job.into())))
    }

    /// Rename a job.
    #[oai(path = "/jobs/:id", method = "patch")]
    async fn rename(
        &self,
        req: &Request,
        id: Path<String>,
        body: Json<RenameRequest>,
    ) -> ApiResult<JobResponse> {
        let (client, _) = self.owned(req, &id).await?;
        let name = clean_name(&body.name).ok_or(WebError::InvalidOption {
            field: "name",
            reason: "must not be empty".into(),
        })?;
        let job = self
            .shared
            .db
            .rename(&id, &client.0, &name)
            .await
            .map_err(WebError::from)?
            .ok_or(WebError::NotFound)?;
        Ok(JobResponse::Ok(Json(job.into())))
    }

    /// Delete a job now: original, result and record.
    #[oai(path = "/jobs/:id", method = "delete")]
    #[tracing::instrument(skip_all, fields(job_id = %id.0))]
    async fn delete(&self, req: &Request, id: Path<String>) -> ApiResult<DeleteResponse> {
        let (_, job) = self.owned(req, &id).await?;
        self.shared.delete_job(&job.id, "api").await?;
        Ok(DeleteResponse::Deleted)
    }

    /// The uploaded original.
    #[oai(path = "/jobs/:id/original", method = "get")]
    async fn original(&self, req: &Request, id: Path<String>) -> ApiResult<ImageBody> {
        let (_, job) = self.owned(req, &id).await?;
        Ok(ImageBody {
            object: self.open(&job.original_key).await?,
            content_type: job.original_content_type,
            filename: None,
        })
    }

    /// The result, once the job is done: the image, or with `BACKLESS_RESULT_DELIVERY=redirect`
    /// a 303 to a signed URL of it in the object store, valid for `BACKLESS_RESULT_URL_TTL`.
    #[oai(path = "/jobs/:id/result", method = "get")]
    async fn result(&self, req: &Request, id: Path<String>) -> ApiResult<ResultBody> {
        let (_, job) = self.owned(req, &id).await?;
        let key = match (job.state, &job.result_key) {
            (JobState::Done, Some(k)) => k.clone(),
            (JobState::Failed, _) => return Err(WebError::JobFailed.into()),
            _ => return Err(WebError::NotReady.into()),
        };
        let content_type = job
            .result_content_type
            .clone()
            .unwrap_or_else(|| job.options.format.content_type().to_string());
        let filename = JobView::from(job).download_name;
        if let crate::config::ResultDelivery::Redirect { ttl } = self.result_delivery {
            let headers = backless_common::storage::DownloadHeaders {
                content_type: Some(content_type),
                content_disposition: Some(super::image_body::content_disposition(&filename)),
            };
            let url = self
                .shared
                .storage
                .signed_get_url(&key, ttl, &headers)
                .await
                .map_err(WebError::from)?
                .ok_or_else(|| {
                    WebError::from(backless_common::storage::StorageError::CannotSign(
                        self.shared.storage.url().to_string(),
                    ))
                })?;
            return Ok(ResultBody::Redirect(url.to_string()));
        }
        Ok(ResultBody::Image(ImageBody {
            object: self.open(&key).await?,
            content_type,
            filename: Some(filename),
        }))
    }

    /// Live progress as server-sent events. The first event is the job's current state (a client
    /// arriving after completion still gets `done`); `Last-Event-ID` skips what was already seen;
    /// the stream ends after `done` or `failed`, unless `hold=true`: then it stays open (keep-alive
    /// comments only) until the client leaves, so the job's grace window starts only then.
    #[oai(path = "/jobs/:id/events", method = "get")]
    #[tracing::instrument(skip_all, fields(job_id = %id.0))]
    async fn events(
        &self,
        req: &Request,
        id: Path<String>,
        #[oai(name = "Last-Event-ID")] last_event_id: Header<Option<String>>,
        /// Keep the stream open after the final event, until the client disconnects.
        hold: Query<Option<bool>>,
    ) -> ApiResult<EventsResponse> {
        let hold = hold.0.unwrap_or(false);
        let client = self.signer.identify(req).ok_or(WebError::NotFound)?;
        if !backless_common::db::is_valid_job_id(&id) {
            return Err(WebError::NotFound.into());
        }
        let shared = Arc::clone(&self.shared);
        // Subscribe before reading the state, so nothing falls between the two.
        let live = shared.events.subscribe(&id).await.map_err(WebError::from)?;
        let job = shared
            .db
            .get_owned(&id, &client.0)
            .await
            .map_err(WebError::from)?
            .ok_or(WebError::NotFound)?;
        let last_seen: u64 = last_event_id
            .0
            .as_deref()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let guard = shared.watch(&job.id);
        let first = state_event(&job);

        // A finished job will say nothing more; an unfinished one is followed on the bus and, for
        // events lost between processes, by the process's one state watcher.
        let merged = if first.stage.is_final() {
            drop(live);
            stream::empty().boxed()
        } else {
            stream::select(live, crate::watcher::state_changes(&shared, &job.id)).boxed()
        };

        struct St {
            first: Option<JobEvent>,
            live: BoxStream<'static, JobEvent>,
            last: u64,
            hold: bool,
            ended: bool,
            _guard: crate::lifecycle::WatchGuard,
        }
        /// After the final event: end, or (held) stay open with the watch guard until the client
        /// leaves and poem drops the stream.
        async fn after_end(mut st: St) -> Option<(JobEventView, Option<St>)> {
            if st.hold {
                st.live = stream::empty().boxed();
                std::future::pending::<()>().await;
            }
            drop(st);
            None
        }
        let st = St {
            first: Some(first),
            live: merged,
            last: last_seen,
            hold,
            ended: false,
            _guard: guard,
        };
        let out = stream::unfold(Some(st), |st| async move {
            let mut st = st?;
            if st.ended {
                return after_end(st).await;
            }
            loop {
                let ev = match st.first.take() {
                    Some(e) => {
                        if e.stage.is_final() && e.seq <= st.last {
                            // Already seen the end: nothing more will come.
                            return after_end(st).await;
                        }
                        e
                    }
                    None => match st.live.next().await {
                        Some(e) => e,
                        None => return after_end(st).await,
                    },
                };
                if ev.seq <= st.last {
                    continue;
                }
                st.last = ev.seq;
                let next = match (ev.stage.is_final(), st.hold) {
                    (false, _) => Some(st),
                    (true, false) => None,
                    (true, true) => {
                        // Send the final event now; the next poll parks in `after_end`.
                        st.ended = true;
                        Some(st)
                    }
                };
                return Some((JobEventView::from(ev), next));
            }
        })
        // No stream lives for ever (connections get rebalanced, and a replica can drain); the
        // client's EventSource reconnects with Last-Event-ID and picks up where it was.
        .take_until(tokio::time::sleep(self.max_stream_lifetime))
        .boxed();
        Ok(EventsResponse::Stream(
            EventStream::new(out)
                .keep_alive(self.keep_alive)
                .to_event(|e: JobEventView| {
                    let stage = poem_openapi::types::ToJSON::to_json(&e.stage)
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    let data = poem_openapi::types::ToJSON::to_json_string(&e);
                    Event::message(data).event_type(stage).id(e.seq.to_string())
                }),
        ))
    }
}
