//! A remove.bg-compatible API under `/v1.0`, for the plugins, scripts and no-code tools that
//! already speak it: change the base URL, keep the client.
//!
//! `POST /v1.0/removebg` is synchronous for the client and an ordinary job inside: the photo is
//! checked and stored, the job queued for a worker, and web waits for its events (bus and state
//! watcher, as an event stream does) up to `BACKLESS_REMOVEBG_TIMEOUT`. The result is answered as
//! remove.bg does (the image with `X-Width`, `X-Height`, `X-Type` and `X-Credits-Charged`, or
//! `{"data": {"result_b64": ...}}` when the client accepts JSON), and the job, original and
//! result are deleted as soon as the answer is sent (or the client leaves). Errors are remove.bg's
//! `{"errors": [{"title", "code"}]}` with its status codes. `GET /v1.0/account` reports the key's
//! credits in remove.bg's shape.

pub mod fetch;
pub mod params;

use std::collections::HashMap;
use std::sync::Arc;

use backless_common::db::{NewJob, new_job_id};
use backless_common::events::JobEvent;
use backless_common::limits::ImageLimits;
use base64::Engine;
use bytes::Bytes;
use futures::{StreamExt, stream};
use poem::http::header;
use poem::{Body, IntoResponse, Request, Response};
use poem_openapi::payload::{Form, Json};
use poem_openapi::registry::{
    MetaHeader, MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry,
};
use poem_openapi::types::multipart::Upload;
use poem_openapi::{ApiRequest, ApiResponse, Multipart, Object, OpenApi, Tags};

use crate::config::ApiConfig;
use crate::error::{ErrorResponse, WebError};
use crate::keys::{Charge, KeyInfo, Presented};
use crate::lifecycle::Shared;
use crate::upload::{check_image, read_upload};
use fetch::Fetcher;
use params::{ParamError, Params};

#[derive(Tags)]
enum ApiTags {
    /// remove.bg-compatible API (`X-Api-Key`).
    RemoveBg,
}

/// The remove.bg API.
pub struct RemoveBgApi {
    pub shared: Arc<Shared>,
    pub limits: ImageLimits,
    pub api: ApiConfig,
    pub fetcher: Fetcher,
    /// The model jobs use (the default model when installed, else the first installed).
    pub model: String,
    pub models: Vec<String>,
}

/// The multipart form (what clients send with a file).
#[derive(Debug, Multipart)]
pub struct RemoveBgMultipart {
    /// The photo (JPEG, PNG, WebP, GIF, BMP or TIFF). Exactly one of `image_file`,
    /// `image_file_b64` and `image_url`.
    pub image_file: Option<Upload>,
    /// The photo, base64-encoded.
    pub image_file_b64: Option<String>,
    /// Where to fetch the photo: http(s), public addresses only.
    pub image_url: Option<String>,
    /// `preview` (default; also `small`, `regular`: up to 0.25 MP), `medium` (1.5 MP), `hd`
    /// (4 MP), `full`, `4k`, `auto` (25 MP), `50MP`; within the server's limits.
    pub size: Option<String>,
    /// Accepted; the model is the same for every subject.
    #[oai(rename = "type")]
    pub type_: Option<String>,
    /// Accepted; changes nothing.
    pub type_level: Option<String>,
    /// `auto` (PNG with transparency, JPEG otherwise; a mask is PNG), `png`, `jpg`, `webp`,
    /// `zip` (`color.jpg` and the alpha matte `alpha.png`).
    pub format: Option<String>,
    /// `rgba` (default) or `alpha` (the mask).
    pub channels: Option<String>,
    /// Background colour: hex (`81d4fa`, `fff`, with or without `#`) or a colour name.
    pub bg_color: Option<String>,
    /// Crop to the subject.
    pub crop: Option<String>,
    /// Margin kept around the subject when cropping: pixels (`30`, `30px`, at most 500) or a
    /// percentage of the subject (`10%`, at most 50%); one value, two (top and bottom, left and
    /// right) or four (top, right, bottom, left). Clamped to the photo.
    pub crop_margin: Option<String>,
    /// The subject's size: `original` (default) or `10%` to `100%` of the image (its box fits
    /// in that share of the width and height). Scaling centres it unless `position` is given.
    pub scale: Option<String>,
    /// Where the subject goes: `original` (default), `center`, or one or two percentages of
    /// the free space (`0% 100%`: bottom left).
    pub position: Option<String>,
    /// Region of interest `x1 y1 x2 y2` (pixels or percentages of the photo): nothing outside
    /// it can be subject. Default `0% 0% 100% 100%`.
    pub roi: Option<String>,
    /// A background image to put behind the subject (scaled to cover the result and
    /// centred), fetched as `image_url` is. At most one of `bg_color`, `bg_image_url` and
    /// `bg_image_file`.
    pub bg_image_url: Option<String>,
    /// A background image file (same limits as the photo).
    pub bg_image_file: Option<Upload>,
    /// Accepted; changes nothing.
    pub add_shadow: Option<String>,
    /// Accepted; changes nothing.
    pub semitransparency: Option<String>,
}

/// The JSON or form body (what clients send with base64 or a URL). Values may be strings,
/// booleans or numbers.
#[derive(Debug, Clone, Object, serde::Deserialize)]
pub struct RemoveBgFields {
    pub image_file_b64: Option<String>,
    pub image_url: Option<String>,
    pub size: Option<serde_json::Value>,
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub type_: Option<serde_json::Value>,
    pub type_level: Option<serde_json::Value>,
    pub format: Option<serde_json::Value>,
    pub channels: Option<serde_json::Value>,
    pub bg_color: Option<serde_json::Value>,
    pub crop: Option<serde_json::Value>,
    pub crop_margin: Option<serde_json::Value>,
    pub scale: Option<serde_json::Value>,
    pub position: Option<serde_json::Value>,
    pub roi: Option<serde_json::Value>,
    pub bg_image_url: Option<serde_json::Value>,
    pub add_shadow: Option<serde_json::Value>,
    pub semitransparency: Option<serde_json::Value>,
}

/// The request body, in any of remove.bg's three encodings.
// Parsed once per request and taken apart at once: the size difference costs nothing, and
// poem-openapi needs the payloads unboxed.
#[allow(clippy::large_enum_variant)]
#[derive(ApiRequest)]
pub enum RemoveBgBody {
    Multipart(RemoveBgMultipart),
    Form(Form<RemoveBgFields>),
    Json(Json<RemoveBgFields>),
}

/// Where the photo comes from.
enum Source {
    File(Upload),
    Base64(String),
    Url(String),
}

/// The text of a JSON value as a form would carry it.
fn text(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// The JSON or form fields, as text.
const FIELDS: [&str; 14] = [
    "size",
    "type",
    "type_level",
    "format",
    "channels",
    "bg_color",
    "crop",
    "crop_margin",
    "scale",
    "position",
    "roi",
    "bg_image_url",
    "add_shadow",
    "semitransparency",
];

/// A request taken apart.
struct Parts {
    /// The parameters as text, by remove.bg's names.
    fields: HashMap<String, String>,
    /// The photo.
    source: Option<Source>,
    /// A background image file (`bg_image_file`).
    bg_file: Option<Upload>,
}

impl RemoveBgBody {
    /// The parameters as text fields, the photo's source, and a background image file.
    fn split(self) -> Result<Parts, ApiError> {
        let mut fields = HashMap::new();
        let mut bg_file = None;
        let sources = match self {
            RemoveBgBody::Multipart(m) => {
                let values = [
                    m.size,
                    m.type_,
                    m.type_level,
                    m.format,
                    m.channels,
                    m.bg_color,
                    m.crop,
                    m.crop_margin,
                    m.scale,
                    m.position,
                    m.roi,
                    m.bg_image_url,
                    m.add_shadow,
                    m.semitransparency,
                ];
                for (k, v) in FIELDS.iter().zip(values) {
                    if let Some(v) = v {
                        fields.insert(k.to_string(), v);
                    }
                }
                if m.bg_image_file.is_some() {
                    fields.insert("bg_image_file".into(), "given".into());
                }
                bg_file = m.bg_image_file;
                [
                    m.image_file.map(Source::File),
                    m.image_file_b64.map(Source::Base64),
                    m.image_url.map(Source::Url),
                ]
            }
            RemoveBgBody::Form(Form(f)) => Self::fields(f, &mut fields),
            RemoveBgBody::Json(Json(f)) => Self::fields(f, &mut fields),
        };
        let mut given: Vec<Source> = sources.into_iter().flatten().collect();
        match given.len() {
            0 | 1 => Ok(Parts {
                fields,
                source: given.pop(),
                bg_file,
            }),
            _ => Err(ApiError::bad(
                "multiple_sources",
                "Give exactly one of image_file, image_file_b64 and image_url.",
            )),
        }
    }

    /// The JSON or form fields as text into `fields`; the sources they give.
    fn fields(f: RemoveBgFields, fields: &mut HashMap<String, String>) -> [Option<Source>; 3] {
        let values = [
            f.size,
            f.type_,
            f.type_level,
            f.format,
            f.channels,
            f.bg_color,
            f.crop,
            f.crop_margin,
            f.scale,
            f.position,
            f.roi,
            f.bg_image_url,
            f.add_shadow,
            f.semitransparency,
        ];
        for (k, v) in FIELDS.iter().zip(values) {
            if let Some(v) = v.and_then(text) {
                fields.insert(k.to_string(), v);
            }
        }
        [
            None,
            f.image_file_b64.map(Source::Base64),
            f.image_url.map(Source::Url),
        ]
    }
}

/// One remove.bg error.
#[derive(Debug, Clone, Object)]
pub struct ErrorItem {
    /// Human-readable, safe to show.
    pub title: String,
    /// Stable, machine-readable.
    pub code: Option<String>,
}

/// remove.bg's error body.
#[derive(Debug, Clone, Object)]
pub struct Errors {
    pub errors: Vec<ErrorItem>,
}

/// Errors in remove.bg's shape and statuses.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_body")]
pub enum ApiError {
    /// Bad input: missing or several sources, an invalid parameter or image, a refused URL.
    #[oai(status = 400)]
    BadRequest(Json<Errors>),
    /// The key's credits for today are used up.
    #[oai(status = 402)]
    PaymentRequired(Json<Errors>),
    /// No API key, or not a valid one.
    #[oai(status = 403)]
    Forbidden(Json<Errors>),
    /// The request body is larger than the limit.
    #[oai(status = 413)]
    PayloadTooLarge(Json<Errors>),
    /// Too many requests or jobs at once: retry after the given seconds.
    #[oai(status = 429)]
    TooManyRequests(Json<Errors>, #[oai(header = "Retry-After")] u64),
    /// Something failed on our side.
    #[oai(status = 500)]
    Internal(Json<Errors>),
    /// A backend is unavailable or the job did not finish in time: retry.
    #[oai(status = 503)]
    Unavailable(Json<Errors>, #[oai(header = "Retry-After")] u64),
}

fn errors(code: &str, title: impl Into<String>) -> Json<Errors> {
    Json(Errors {
        errors: vec![ErrorItem {
            title: title.into(),
            code: Some(code.to_string()),
        }],
    })
}

impl ApiError {
    fn bad(code: &str, title: impl Into<String>) -> Self {
        Self::BadRequest(errors(code, title))
    }
}

fn bad_body(err: poem::Error) -> ApiError {
    if err.status() == poem::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge(errors("file_too_large", "The request is too large."));
    }
    ApiError::bad("invalid_request", err.to_string())
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        Self::bad(e.code, e.title)
    }
}

impl From<WebError> for ApiError {
    fn from(e: WebError) -> Self {
        // One mapping of errors to codes and messages (the `/v1` one), in remove.bg's statuses:
        // everything about the input is a 400.
        let code_for = |code: &str| {
            match code {
                "unsupported_media_type" | "corrupt_image" | "empty_file" | "empty_image" => {
                    "invalid_file_type"
                }
                "too_many_pixels"
                | "image_side_too_large"
                | "too_many_frames"
                | "output_too_large"
                | "over_memory_budget" => "resolution_too_high",
                "too_many_jobs" | "rate_limited" => "rate_limit_exceeded",
                other => other,
            }
            .to_string()
        };
        let convert =
            |Json(b): Json<crate::error::ErrorBody>| errors(&code_for(&b.code), b.message);
        use ErrorResponse as R;
        match ErrorResponse::from(e) {
            R::BadRequest(b)
            | R::NotFound(b)
            | R::Conflict(b)
            | R::UnsupportedMediaType(b)
            | R::Unprocessable(b) => Self::BadRequest(convert(b)),
            R::PayloadTooLarge(b) => Self::BadRequest(convert(b)),
            R::PaymentRequired(b) => Self::PaymentRequired(convert(b)),
            R::Forbidden(b) => Self::Forbidden(convert(b)),
            R::TooManyRequests(b, s) => Self::TooManyRequests(convert(b), s),
            R::Internal(b) => Self::Internal(convert(b)),
            R::Unavailable(b, s) => Self::Unavailable(convert(b), s),
        }
    }
}

/// The account's credits.
#[derive(Debug, Clone, Object)]
pub struct Credits {
    /// Credits left today (keys without a quota report [`UNLIMITED_CREDITS`]).
    pub total: f64,
    pub subscription: f64,
    pub payg: f64,
    pub enterprise: f64,
}

/// API usage.
#[derive(Debug, Clone, Object)]
pub struct ApiUsage {
    /// Calls left today, as `credits.total`.
    pub free_calls: u64,
    /// Always `all`.
    pub sizes: String,
}

#[derive(Debug, Clone, Object)]
pub struct AccountAttributes {
    pub credits: Credits,
    pub api: ApiUsage,
}

#[derive(Debug, Clone, Object)]
pub struct AccountData {
    pub attributes: AccountAttributes,
}

/// `GET /v1.0/account`.
#[derive(Debug, Clone, Object)]
pub struct Account {
    pub data: AccountData,
}

/// What a key without a daily quota reports as its credits.
pub const UNLIMITED_CREDITS: u64 = 1_000_000;

/// The JSON answer (when the client accepts JSON).
#[derive(Debug, Clone, Object)]
pub struct ResultData {
    /// The result image, base64.
    pub result_b64: String,
}

#[derive(Debug, Clone, Object)]
pub struct ResultJson {
    pub data: ResultData,
}

/// Deletes the job when dropped: once the answer is sent, on any error, or when the client
/// leaves while it waits. Gives the key's credit back unless the job delivered.
struct Cleanup {
    shared: Arc<Shared>,
    id: String,
    refund: Option<Charge>,
}

impl Cleanup {
    /// Refund (if still due) and delete now, before the answer goes out; nothing is left for
    /// the drop.
    async fn settle(&mut self) {
        if self.id.is_empty() {
            return;
        }
        settle(
            &self.shared,
            std::mem::take(&mut self.id),
            self.refund.take(),
        )
        .await;
    }

    /// Move the duty to another owner (the answer's body); this one is left with nothing to do.
    fn hand_over(&mut self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            id: std::mem::take(&mut self.id),
            refund: self.refund.take(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.id.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The task carries plain data, not a `Cleanup`: a runtime shutting down drops the tasks
        // it will never run (and refuses new ones, dropping them at once), and a `Cleanup` in
        // one would spawn another from its drop, without end. Whatever is left, the sweep deletes.
        let (shared, id, refund) = (
            Arc::clone(&self.shared),
            std::mem::take(&mut self.id),
            self.refund.take(),
        );
        rt.spawn(async move { settle(&shared, id, refund).await });
    }
}

/// Give the credit back (if due) and delete the job.
async fn settle(shared: &Shared, id: String, refund: Option<Charge>) {
    if let Some(c) = refund {
        c.refund(&shared.db).await;
    }
    if let Err(e) = shared.delete_job(&id, "removebg").await {
        tracing::warn!(error = ?e, job_id = %id, "cannot delete a removebg job; the sweep will");
    }
}

/// The answer, with remove.bg's headers: the image, or JSON carrying it.
pub struct ImageReply {
    content_type: String,
    width: u32,
    height: u32,
    body: Body,
}

impl IntoResponse for ImageReply {
    fn into_response(self) -> Response {
        Response::builder()
            .content_type(self.content_type)
            .header(header::CACHE_CONTROL, "private, no-store")
            .header("X-Content-Type-Options", "nosniff")
            .header("X-Width", self.width)
            .header("X-Height", self.height)
            .header("X-Type", "other")
            .header("X-Credits-Charged", "1")
            .body(self.body)
    }
}

impl ApiResponse for ImageReply {
    fn meta() -> MetaResponses {
        let header = |name: &str, description: &str| MetaHeader {
            name: name.to_string(),
            description: Some(description.to_string()),
            required: true,
            deprecated: false,
            schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new("string"))),
        };
        MetaResponses {
            responses: vec![MetaResponse {
                description: "The result: the image (PNG, JPEG or WebP), or with \
                              `Accept: application/json` `{\"data\": {\"result_b64\": ...}}`.",
                status: Some(200),
                status_range: None,
                content: vec![
                    MetaMediaType {
                        content_type: "image/*",
                        schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format(
                            "string", "binary",
                        ))),
                    },
                    MetaMediaType {
                        content_type: "application/json",
                        schema: MetaSchemaRef::Reference("ResultJson".to_string()),
                    },
                ],
                headers: vec![
                    header("X-Width", "Width of the result in pixels."),
                    header("X-Height", "Height of the result in pixels."),
                    header("X-Type", "Always `other` (no subject classification)."),
                    header("X-Credits-Charged", "Credits charged: 1."),
                ],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        <ResultJson as poem_openapi::types::Type>::register(registry);
    }
}

#[derive(ApiResponse)]
pub enum AccountResponse {
    #[oai(status = 200)]
    Ok(Json<Account>),
}

type Reply<T> = Result<T, ApiError>;

/// The dimensions in an image's header, from the first bytes of it.
fn dimensions(prefix: &[u8]) -> Option<(u32, u32)> {
    // A zip result's first file is its `color.jpg`, stored uncompressed after its local header
    // (30 bytes, then the name and the extra field).
    if let Some(header) = prefix.strip_prefix(b"PK\x03\x04") {
        let len = |at: usize| {
            Some(usize::from(u16::from_le_bytes([
                *header.get(at)?,
                *header.get(at + 1)?,
            ])))
        };
        let start = 30 + len(22)? + len(24)?;
        return dimensions(prefix.get(start..)?);
    }
    image::ImageReader::new(std::io::Cursor::new(prefix))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// Bytes of a result read before its header must have been seen.
const HEADER_PEEK: usize = 256 * 1024;

impl RemoveBgApi {
    fn key(req: &Request) -> Result<KeyInfo, WebError> {
        match req.extensions().get::<Presented>() {
            Some(Presented::Valid(k)) => Ok(k.clone()),
            Some(Presented::Unknown) => Err(WebError::InvalidApiKey),
            None => Err(WebError::MissingApiKey),
        }
    }

    /// The photo's bytes, whatever its source.
    async fn read(&self, source: Source) -> Result<Bytes, ApiError> {
        let max = self.limits.max_bytes;
        match source {
            Source::File(f) => Ok(read_upload(f, max).await?.1),
            Source::Base64(b64) => {
                // A data URL's prefix is tolerated; whitespace (line breaks) is not data.
                let b64 = b64.split_once(";base64,").map_or(b64.as_str(), |(_, d)| d);
                let clean: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                if (clean.len() as u64 / 4).saturating_mul(3) > max {
                    return Err(WebError::FileTooLarge { max_bytes: max }.into());
                }
                let engine = base64::engine::general_purpose::GeneralPurpose::new(
                    &base64::alphabet::STANDARD,
                    base64::engine::general_purpose::GeneralPurposeConfig::new()
                        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
                );
                engine
                    .decode(clean.as_bytes())
                    .map(Bytes::from)
                    .map_err(|_| {
                        ApiError::bad(
                            "invalid_image_file_b64",
                            "image_file_b64 is not valid base64.",
                        )
                    })
            }
            Source::Url(url) => Ok(self.fetcher.fetch(&url).await.map_err(WebError::from)?),
        }
    }

    /// Wait for the job's final event (bus and state watcher), at most the configured timeout.
    async fn wait(
        &self,
        live: futures::stream::BoxStream<'static, JobEvent>,
        id: &str,
    ) -> Result<(), WebError> {
        let mut events = stream::select(live, self.shared.watcher.state_changes(id));
        let timeout = self.api.removebg_timeout;
        let end = tokio::time::timeout(timeout, async {
            while let Some(ev) = events.next().await {
                if ev.stage.is_final() {
                    return Some(ev);
                }
            }
            None
        })
        .await;
        match end {
            Ok(Some(ev)) if ev.error_code.is_none() => Ok(()),
            Ok(Some(ev)) => Err(WebError::Failed {
                code: ev.error_code.unwrap_or_default(),
                message: ev.message.unwrap_or_else(|| "The job failed.".into()),
            }),
            Ok(None) => Err(WebError::Failed {
                code: "internal".into(),
                message: "The job's events ended early.".into(),
            }),
            Err(_) => Err(WebError::Timeout { secs: 5 }),
        }
    }

    /// Store, queue and wait for the job; the answer. `cleanup` is settled by the caller on an
    /// error; a streamed answer takes it over.
    async fn deliver(
        &self,
        req: &Request,
        mut job: backless_common::db::Job,
        data: Bytes,
        background: Option<Bytes>,
        cleanup: &mut Cleanup,
    ) -> Reply<ImageReply> {
        let shared = &self.shared;
        let id = job.id.clone();
        // Subscribed before the job can run, so its end cannot be missed.
        let live = shared.events.subscribe(&id).await.map_err(WebError::from)?;
        shared.store_and_enqueue(&mut job, data, background).await?;
        self.wait(live, &id).await?;

        let job = shared
            .db
            .get(&id)
            .await
            .map_err(WebError::from)?
            .ok_or(WebError::NotFound)?;
        let key_name = job.result_key.clone().ok_or(WebError::NotFound)?;
        let content_type = job
            .result_content_type
            .clone()
            .unwrap_or_else(|| job.options.format.content_type().to_string());
        let wants_json = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json") && !v.contains("image/"));
        if wants_json {
            let bytes = shared
                .storage
                .get(&key_name)
                .await
                .map_err(WebError::from)?;
            let (width, height) = dimensions(&bytes).unwrap_or((0, 0));
            cleanup.refund = None;
            cleanup.settle().await;
            let json = ResultJson {
                data: ResultData {
                    result_b64: base64::engine::general_purpose::STANDARD.encode(&bytes),
                },
            };
            return Ok(ImageReply {
                content_type: "application/json".into(),
                width,
                height,
                body: Body::from_string(poem_openapi::types::ToJSON::to_json_string(&json)),
            });
        }
        // Streamed as stored; the header is read from the first chunks for X-Width/X-Height.
        let object = shared
            .storage
            .get_stream(&key_name)
            .await
            .map_err(WebError::from)?;
        let mut body = object.body;
        let mut prefix: Vec<u8> = Vec::new();
        let mut dims = None;
        while dims.is_none() && prefix.len() < HEADER_PEEK {
            match body.next().await {
                Some(chunk) => {
                    prefix.extend_from_slice(&chunk.map_err(WebError::Storage)?);
                    dims = dimensions(&prefix);
                }
                None => break,
            }
        }
        let (width, height) = dims.ok_or_else(|| WebError::Failed {
            code: "internal".into(),
            message: "The result cannot be read.".into(),
        })?;
        cleanup.refund = None;
        let cleanup = cleanup.hand_over();
        let rest = body.map(move |chunk| {
            // The job goes when the body has been sent, or the client left.
            let _held = &cleanup;
            chunk.map_err(|e| std::io::Error::other(e.to_string()))
        });
        let stream = stream::once(async move { Ok(Bytes::from(prefix)) }).chain(rest);
        Ok(ImageReply {
            content_type,
            width,
            height,
            body: Body::from_bytes_stream(stream),
        })
    }
}

#[OpenApi(prefix_path = "/v1.0", tag = "ApiTags::RemoveBg")]
impl RemoveBgApi {
    /// Remove the background of one photo and answer with the result (remove.bg's API).
    #[oai(path = "/removebg", method = "post")]
    #[tracing::instrument(skip_all, fields(job_id))]
    async fn removebg(
        &self,
        req: &Request,
        /// remove.bg's key header.
        #[oai(name = "X-Api-Key")]
        _api_key: poem_openapi::param::Header<Option<String>>,
        body: RemoveBgBody,
    ) -> Reply<ImageReply> {
        let key = Self::key(req)?;
        let Parts {
            fields,
            source,
            bg_file,
        } = body.split()?;
        let params = Params::from_fields(&fields)?;
        let source = source.ok_or_else(|| {
            ApiError::bad(
                "missing_source",
                "Give one of image_file, image_file_b64 or image_url.",
            )
        })?;
        let pipeline = params.pipeline(&self.model, &self.models)?;
        let data = self.read(source).await?;
        let checked = check_image(&data, &self.limits)?;
        let bg_source = match (bg_file, &params.bg_image_url) {
            (Some(file), _) => Some(Source::File(file)),
            (None, Some(url)) => Some(Source::Url(url.clone())),
            (None, None) => None,
        };
        let background = match bg_source {
            Some(source) => {
                let bg = self.read(source).await?;
                // Held to the same limits as any photo, and refused before anything is stored.
                check_image(&bg, &self.limits).map_err(|e| {
                    ApiError::bad("invalid_bg_image", format!("The background image: {e}"))
                })?;
                Some(bg)
            }
            None => None,
        };
        pipeline
            .plan(checked.oriented, &self.limits)
            .map_err(WebError::from)?;
        let shared = &self.shared;
        let charge = Charge::take(&shared.db, &key, self.api.max_live_per_key).await?;
        let id = new_job_id();
        tracing::Span::current().record("job_id", id.as_str());
        let options = crate::api::jobs::options_for(pipeline);
        let inserted = shared
            .db
            .insert(NewJob {
                id: id.clone(),
                owner: key.owner(),
                name: "removebg".into(),
                options,
                original_content_type: checked.format.content_type().to_string(),
                width: checked.width,
                height: checked.height,
                client_addr: None,
            })
            .await;
        let job = match inserted {
            Ok(job) => job,
            Err(e) => {
                charge.refund(&shared.db).await;
                return Err(WebError::from(e).into());
            }
        };
        // From here on, whatever happens, the job is deleted (and the credit given back unless
        // the result is delivered).
        let mut cleanup = Cleanup {
            shared: Arc::clone(shared),
            id: id.clone(),
            refund: Some(charge),
        };
        let answer = self.deliver(req, job, data, background, &mut cleanup).await;
        if answer.is_err() {
            // The error answer goes out with the credit back and the job gone.
            cleanup.settle().await;
        }
        answer
    }

    /// The key's credits today, in remove.bg's shape.
    #[oai(path = "/account", method = "get")]
    async fn account(
        &self,
        req: &Request,
        /// remove.bg's key header.
        #[oai(name = "X-Api-Key")]
        _api_key: poem_openapi::param::Header<Option<String>>,
    ) -> Reply<AccountResponse> {
        let key = Self::key(req)?;
        let left = match key.quota_per_day {
            Some(q) => q.saturating_sub(
                self.shared
                    .db
                    .credits_spent(&key.id, &crate::keys::today())
                    .await
                    .map_err(WebError::from)?,
            ),
            None => UNLIMITED_CREDITS,
        };
        Ok(AccountResponse::Ok(Json(Account {
            data: AccountData {
                attributes: AccountAttributes {
                    credits: Credits {
                        total: left as f64,
                        subscription: 0.0,
                        payg: left as f64,
                        enterprise: 0.0,
                    },
                    api: ApiUsage {
                        free_calls: left,
                        sizes: "all".into(),
                    },
                },
            },
        })))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use backless_common::config::{CommonConfig, FromSettings};
    use backless_common::startup::{Backends, Components};
    use backless_common::tasks::TaskQueue;

    use super::*;

    /// A job's cleanup still pending when its runtime shuts down (a response body never sent)
    /// ends there. Its drop used to spawn a task holding another cleanup, which the closing
    /// runtime dropped at once, which spawned another: a stack overflow that took the process
    /// down.
    #[test]
    fn a_cleanup_pending_at_runtime_shutdown_ends_there() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = CommonConfig::from_pairs([
                ("BACKLESS_DATABASE_URL", "sqlite::memory:"),
                ("BACKLESS_STORAGE_URL", "memory://"),
            ])
            .unwrap();
            let Backends {
                db,
                storage,
                events,
            } = Components::default().resolve(&config).await.unwrap();
            let shared = Arc::new(Shared::new(
                db,
                storage,
                events,
                Arc::new(TaskQueue::new(config.tasks.clone())),
                Duration::from_secs(1),
                Duration::from_secs(1),
                Duration::from_secs(1),
            ));
            tokio::spawn(async move {
                let _cleanup = Cleanup {
                    shared,
                    id: "a-job-never-answered".into(),
                    refund: None,
                };
                std::future::pending::<()>().await;
            });
            tokio::task::yield_now().await;
        });
        drop(rt);
    }
}
