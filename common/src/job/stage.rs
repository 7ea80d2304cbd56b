//! The stages a job reports while it runs, and their place in the event stream.

use serde::{Deserialize, Serialize};

use super::pipeline::Operation;

/// The pipeline stages a user watches, in order. Between `received` and `stored` come the
/// job's operations, each with its own stage (a plain background removal: `segmenting`,
/// `compositing`, `encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, poem_openapi::Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum Stage {
    /// The original is stored and the job recorded (web).
    Uploaded,
    /// The task is in the queue (web).
    Queued,
    /// A worker took the task (worker).
    Received,
    /// `remove_background`: the model is running (worker).
    Segmenting,
    /// `remove_background`: the mask is applied (worker).
    Compositing,
    /// `crop_to_subject` (worker).
    Cropping,
    /// `place` (worker).
    Placing,
    /// `backdrop` (worker).
    Painting,
    /// `resize` (worker).
    Resizing,
    /// `thumbnail` (worker).
    Thumbnailing,
    /// `watermark` (worker).
    Watermarking,
    /// `filter` (worker).
    Filtering,
    /// `encode` (worker).
    Encoding,
    /// The result is stored (worker).
    Stored,
    /// Final: the result can be fetched.
    Done,
    /// Final: see `error_code` / `message`.
    Failed,
}

/// Event ids of operation stages: operation `i` starts at `OPS_SEQ + 2 * i`.
pub const OPS_SEQ: u64 = 10;

impl Stage {
    /// Position in the pipeline, used as the SSE event id. An operation's stage is placed as if
    /// it were the job's first operation; [`JobEvent::operation`] places it at its real index.
    pub fn seq(self) -> u64 {
        match self {
            Self::Uploaded => 1,
            Self::Queued => 2,
            Self::Received => 3,
            Self::Compositing => OPS_SEQ + 1,
            Self::Segmenting
            | Self::Cropping
            | Self::Placing
            | Self::Painting
            | Self::Resizing
            | Self::Thumbnailing
            | Self::Watermarking
            | Self::Filtering
            | Self::Encoding => OPS_SEQ,
            Self::Stored => 40,
            Self::Done | Self::Failed => 41,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uploaded => "uploaded",
            Self::Queued => "queued",
            Self::Received => "received",
            Self::Segmenting => "segmenting",
            Self::Compositing => "compositing",
            Self::Cropping => "cropping",
            Self::Placing => "placing",
            Self::Painting => "painting",
            Self::Resizing => "resizing",
            Self::Thumbnailing => "thumbnailing",
            Self::Watermarking => "watermarking",
            Self::Filtering => "filtering",
            Self::Encoding => "encoding",
            Self::Stored => "stored",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

impl Operation {
    /// The stage this operation reports while it runs (`remove_background` then also reports
    /// [`Stage::Compositing`]).
    pub fn stage(&self) -> Stage {
        match self {
            Operation::RemoveBackground { .. } => Stage::Segmenting,
            Operation::CropToSubject { .. } => Stage::Cropping,
            Operation::Place { .. } => Stage::Placing,
            Operation::Backdrop => Stage::Painting,
            Operation::Resize { .. } => Stage::Resizing,
            Operation::Thumbnail { .. } => Stage::Thumbnailing,
            Operation::Watermark { .. } => Stage::Watermarking,
            Operation::Filter { .. } => Stage::Filtering,
            Operation::Encode { .. } => Stage::Encoding,
        }
    }
}
