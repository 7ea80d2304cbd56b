//! Why an image could not be turned into a result, with the stable code a job records.

use backless_common::job::PlanError;
use backless_common::limits::LimitError;

use crate::model::ModelError;

/// Why an image could not be turned into a result. Everything but `Model` is the input's fault:
/// permanent, never worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is not an image BackLess can read (PNG, JPEG, WebP, GIF, BMP or TIFF)")]
    NotAnImage,
    #[error(transparent)]
    Limits(#[from] LimitError),
    #[error("the image is damaged or truncated and cannot be decoded")]
    Corrupt(#[source] image::ImageError),
    #[error("the image is damaged or truncated and cannot be decoded")]
    Truncated,
    #[error("JPEG has no transparency: choose PNG or WebP, or give a background colour")]
    JpegNeedsBackground,
    #[error("could not encode the result")]
    EncodeFailed,
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("no segmentation model is loaded for remove_background")]
    ModelMissing,
    #[error("{0}")]
    Operation(String),
    #[error("backdrop needs a background image, and the job has none")]
    BackgroundMissing,
    #[error("the background image: {0}")]
    Background(Box<PipelineError>),
}

impl PipelineError {
    /// A stable, machine-readable code for clients and job records.
    pub fn code(&self) -> &'static str {
        match self {
            PipelineError::Empty => "empty_file",
            PipelineError::NotAnImage => "not_an_image",
            PipelineError::Limits(e) => e.code(),
            PipelineError::Corrupt(_) | PipelineError::Truncated => "corrupt_image",
            PipelineError::JpegNeedsBackground => "jpeg_needs_background",
            PipelineError::EncodeFailed => "encode_failed",
            PipelineError::Plan(e) => e.code(),
            PipelineError::Model(_) => "model_failed",
            PipelineError::ModelMissing => "model_unavailable",
            PipelineError::Operation(_) => "operation_failed",
            PipelineError::BackgroundMissing => "background_missing",
            PipelineError::Background(_) => "invalid_background",
        }
    }

    /// True when retrying the same input cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, PipelineError::Model(_) | PipelineError::ModelMissing)
    }
}
