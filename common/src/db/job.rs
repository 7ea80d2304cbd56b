//! The `job` table: one row per uploaded photo, from upload until its files are deleted.

use sea_orm::FromJsonQueryResult;
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ops::Pipeline;

/// Where a job is in its life. `done` and `failed` are final.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    #[sea_orm(string_value = "queued")]
    Queued,
    #[sea_orm(string_value = "processing")]
    Processing,
    #[sea_orm(string_value = "done")]
    Done,
    #[sea_orm(string_value = "failed")]
    Failed,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// Output encoding of the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Png,
    Webp,
    Jpeg,
}

impl OutputFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Webp => "image/webp",
            Self::Jpeg => "image/jpeg",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Jpeg => "jpg",
        }
    }

    /// The format's name as clients write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Jpeg => "jpeg",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "png" => Some(Self::Png),
            "webp" => Some(Self::Webp),
            "jpeg" | "jpg" => Some(Self::Jpeg),
            _ => None,
        }
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| format!("unknown format {s:?}; use png, webp or jpeg"))
    }
}

/// The segmentation networks the worker knows.
pub const MODELS: &[&str] = &["u2netp", "u2net", "isnet"];
/// The model used when the client names none.
pub const DEFAULT_MODEL: &str = "u2netp";

/// What the client asked for, stored as JSON on the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromJsonQueryResult)]
pub struct JobOptions {
    /// One of [`MODELS`].
    pub model: String,
    pub format: OutputFormat,
    /// Return the mask (white = subject) instead of the cut-out.
    pub mask_only: bool,
    /// Fill the background with this colour (`#rrggbb`) instead of transparency.
    pub bg_color: Option<String>,
    /// Crop the result to the subject's bounding box.
    pub crop: bool,
    /// The operations to run, when the client gave them; otherwise the fields above describe a
    /// plain background removal (and jobs stored before pipelines existed read the same way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Pipeline>,
}

impl JobOptions {
    /// The operations this job runs.
    pub fn pipeline(&self) -> Pipeline {
        self.pipeline
            .clone()
            .unwrap_or_else(|| Pipeline::from_options(self))
    }
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            model: DEFAULT_MODEL.to_string(),
            format: OutputFormat::Png,
            mask_only: false,
            bg_color: None,
            crop: false,
            pipeline: None,
        }
    }
}

/// Parse `#rgb` / `#rrggbb` (the `#` optional) into a normalised `#rrggbb`.
pub fn normalize_color(s: &str) -> Option<String> {
    let h = s.trim().trim_start_matches('#').to_ascii_lowercase();
    if !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    match h.len() {
        6 => Some(format!("#{h}")),
        3 => Some(format!(
            "#{}",
            h.chars().flat_map(|c| [c, c]).collect::<String>()
        )),
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "job")]
pub struct Model {
    /// 128 random bits, 32 lowercase hex digits: unguessable.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The client that created the job (its signed client id).
    #[sea_orm(indexed)]
    pub owner: String,
    /// Display name (the uploaded file's name without extension, renamable).
    pub name: String,
    pub state: JobState,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub options: JobOptions,
    /// Sniffed content type of the original.
    pub original_content_type: String,
    pub original_key: String,
    pub result_key: Option<String>,
    pub result_content_type: Option<String>,
    pub width: i32,
    pub height: i32,
    /// Outbox flag: the Cloud Tasks task exists.
    pub enqueued: bool,
    /// Deliveries that claimed the job (worker lease).
    pub attempts: i32,
    /// A worker owns the job until then.
    pub claimed_until: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
