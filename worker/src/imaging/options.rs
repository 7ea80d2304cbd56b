//! A plain background removal's options, as the command line takes them (`worker remove`), and
//! the finished image.

use backless_common::job::{Margin, Operation};
use serde::{Deserialize, Serialize};

pub use backless_common::db::OutputFormat;
pub use backless_common::job::Rgb;

use super::PipelineError;

/// Crop the result to the subject: the bounding box of alpha above `threshold`, grown by
/// `margin` on each side (clamped to the image).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Crop {
    pub threshold: u8,
    pub margin: Margin,
}

impl Default for Crop {
    fn default() -> Self {
        // Edges keep alpha 1-2 after resampling; 10/255 ignores that haze.
        Self {
            threshold: 10,
            margin: Margin::px(0),
        }
    }
}

/// What the user asked to get back.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OutputOptions {
    pub format: OutputFormat,
    /// JPEG quality, or lossy WebP at this quality (see [`super::encode::encode`]).
    pub quality: Option<u8>,
    /// Return the mask alone, as a grayscale image.
    pub mask_only: bool,
    /// Paint the background with this colour instead of making it transparent.
    pub bg_color: Option<Rgb>,
    pub crop: Option<Crop>,
    /// Estimate the subject's colour at soft edges ([`super::cutout::foreground`]) instead of keeping
    /// the photo's, which carries the old background.
    pub decontaminate: bool,
    /// Refine the mask by alpha matting ([`super::cutout::matting`]) before compositing.
    pub matting: bool,
}

impl Default for OutputOptions {
    fn default() -> Self {
        Self {
            format: OutputFormat::default(),
            quality: None,
            mask_only: false,
            bg_color: None,
            crop: None,
            decontaminate: true,
            matting: false,
        }
    }
}

/// The finished image.
#[derive(Debug, Clone)]
pub struct Output {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub extension: &'static str,
    pub width: u32,
    pub height: u32,
}

impl OutputOptions {
    /// Refuse options no image can satisfy: a transparent cut-out as JPEG.
    pub fn check(&self) -> Result<(), PipelineError> {
        if self.format == OutputFormat::Jpeg && !self.mask_only && self.bg_color.is_none() {
            return Err(PipelineError::JpegNeedsBackground);
        }
        Ok(())
    }

    /// These options as a pipeline for `model`.
    pub fn operations(&self, model: &str) -> Vec<Operation> {
        let mut ops = vec![Operation::RemoveBackground {
            model: model.to_string(),
            mask_only: self.mask_only,
            bg_color: self.bg_color.map(String::from),
            decontaminate: self.decontaminate,
            matting: self.matting,
            roi: None,
        }];
        if let Some(c) = self.crop {
            ops.push(Operation::CropToSubject {
                threshold: c.threshold,
                margin: c.margin,
            });
        }
        ops.push(Operation::Encode {
            format: self.format,
            quality: self.quality,
        });
        ops
    }
}
