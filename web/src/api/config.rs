//! `/v1/config`: what the page needs to check an upload before sending it (the same limits the
//! server enforces) and which options this deployment offers.

use std::time::Duration;

use backless_common::job::{MODELS, model_label};
use backless_common::limits::ImageLimits;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};

use crate::upload::ACCEPTED_TYPES;

/// The most photos the page sends at once (see [`ConfigView::batch_size`]).
const PAGE_BATCH: u64 = 4;

#[derive(Tags)]
enum ApiTags {
    /// What this deployment accepts.
    Config,
}

/// The config resource.
pub struct ConfigApi {
    pub limits: ImageLimits,
    /// Models the workers load (`BACKLESS_MODELS`); the others are listed as unavailable.
    pub models: Vec<String>,
    pub max_live_per_client: u64,
    pub grace: Duration,
}

/// A segmentation model and whether this deployment runs it.
#[derive(Debug, Clone, Object)]
pub struct ModelView {
    pub id: String,
    /// What the page calls it.
    pub label: String,
    pub available: bool,
}

/// Limits and options, as the server enforces them.
#[derive(Debug, Clone, Object)]
pub struct ConfigView {
    /// Largest accepted upload, in bytes (`413 file_too_large` beyond).
    pub max_upload_bytes: u64,
    /// Largest accepted width x height (`422 too_many_pixels` beyond).
    pub max_pixels: u64,
    /// Largest accepted width or height (`422 image_side_too_large` beyond).
    pub max_side: u32,
    /// Accepted image types (sniffed from the bytes).
    pub content_types: Vec<String>,
    /// Output formats: `png`, `webp`, `jpeg`.
    pub formats: Vec<String>,
    /// Every known model; `available` is false where no worker loads it.
    pub models: Vec<ModelView>,
    /// Jobs a client may have queued or processing at once (`429 too_many_jobs` beyond).
    pub max_live_jobs: u64,
    /// Photos the page sends at once: at most `max_live_jobs`, and at most 4, since each holds
    /// an event stream and browsers open six HTTP/1.1 connections per host.
    pub batch_size: u64,
    /// Seconds a finished job's files survive after its last event stream closes.
    pub grace_seconds: u64,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Config")]
impl ConfigApi {
    /// Upload limits and the options this deployment offers.
    #[oai(path = "/config", method = "get")]
    async fn config(&self) -> Json<ConfigView> {
        Json(ConfigView {
            max_upload_bytes: self.limits.max_bytes,
            max_pixels: self.limits.max_pixels,
            max_side: self.limits.max_side,
            content_types: ACCEPTED_TYPES.iter().map(|t| (*t).to_string()).collect(),
            formats: ["png", "webp", "jpeg"].map(String::from).to_vec(),
            models: MODELS
                .iter()
                .map(|m| ModelView {
                    id: (*m).to_string(),
                    label: model_label(m).to_string(),
                    available: self.models.iter().any(|a| a == m),
                })
                .collect(),
            max_live_jobs: self.max_live_per_client,
            batch_size: self.max_live_per_client.clamp(1, PAGE_BATCH),
            grace_seconds: self.grace.as_secs(),
        })
    }
}
