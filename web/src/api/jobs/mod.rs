//! `/v1/jobs`: upload, read, watch (SSE), fetch, rename and delete jobs.
//!
//! Access: a job is visible only to the client that created it (signed cookie or bearer token);
//! everyone else gets 404, exactly as for an id that does not exist.

mod form;
mod progress;
mod views;

use std::sync::Arc;
use std::time::Duration;

use backless_common::db::{Job, JobState, NewJob, new_job_id};
use backless_common::limits::ImageLimits;
use futures::{StreamExt, stream};
use poem::Request;
use poem::web::sse::Event;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::{OpenApi, Tags};

pub use self::form::{UploadForm, options_for};
use self::progress::Progress;
pub use self::views::*;
use super::image_body::{ImageBody, ResultBody};
use crate::error::{ApiResult, WebError};
use crate::identity::{ClientId, Signer};
use crate::keys::{Charge, Presented};
use crate::lifecycle::Shared;
use crate::upload::{check_image, clean_name, display_name, read_upload};
use crate::watcher::state_event;

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
            stream::select(live, shared.watcher.state_changes(&job.id)).boxed()
        };

        let out = Progress {
            first,
            live: merged,
            last_seen,
            hold,
            guard,
            max_lifetime: self.max_stream_lifetime,
        }
        .into_stream();
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
