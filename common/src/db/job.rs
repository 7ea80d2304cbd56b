//! The `job` table: one row per uploaded photo, from upload until its files are deleted.

use sea_orm::FromJsonQueryResult;
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

pub use crate::job::{DEFAULT_MODEL, MODELS, OutputFormat, normalize_color};
use crate::job::{Margin, Operation, Pipeline};

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
            .unwrap_or_else(|| self.plain_pipeline())
    }

    /// The pipeline the plain background-removal fields describe.
    pub fn plain_pipeline(&self) -> Pipeline {
        let mut ops = vec![Operation::RemoveBackground {
            model: self.model.clone(),
            mask_only: self.mask_only,
            bg_color: self.bg_color.clone(),
            decontaminate: true,
            matting: false,
            roi: None,
        }];
        if self.crop {
            ops.push(Operation::CropToSubject {
                threshold: 10,
                margin: Margin::px(0),
            });
        }
        ops.push(Operation::Encode {
            format: self.format,
            quality: None,
        });
        Pipeline::from_validated(ops)
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
    /// Deliveries that claimed the job and did not give it back (a delivery that hits a
    /// transient failure releases its claim; one whose worker dies keeps it).
    pub attempts: i32,
    /// A worker owns the job until then.
    pub claimed_until: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
    /// Size of the stored original; `None` while the upload is still being stored (the row is
    /// written first, so a crash leaves a row the sweep deletes, never an object nothing knows).
    pub original_bytes: Option<i64>,
    /// The uploader's address prefix (an IPv4 address or an IPv6 /64), for per-address quotas.
    pub client_addr: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl From<JobState> for crate::job::Stage {
    /// The stage a stored job state corresponds to (what a new watcher is told first).
    fn from(state: JobState) -> Self {
        use crate::job::Stage;
        match state {
            JobState::Queued => Stage::Queued,
            JobState::Processing => Stage::Received,
            JobState::Done => Stage::Done,
            JobState::Failed => Stage::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_describe_a_pipeline() {
        let o = JobOptions {
            crop: true,
            format: OutputFormat::Webp,
            ..Default::default()
        };
        let p = o.plain_pipeline();
        assert_eq!(
            p.to_strings(),
            [
                "remove_background:model=u2netp",
                "crop_to_subject:threshold=10,margin=0",
                "encode:format=webp"
            ]
        );
    }

    #[test]
    fn jobs_stored_before_pipelines_still_read() {
        let old =
            r#"{"model":"u2netp","format":"png","mask_only":false,"bg_color":null,"crop":false}"#;
        let o: JobOptions = serde_json::from_str(old).unwrap();
        assert_eq!(o.pipeline(), o.plain_pipeline());
    }
}
