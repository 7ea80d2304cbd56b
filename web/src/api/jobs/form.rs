//! The upload form, and how its fields become the job's options: the plain fields (`model`,
//! `format`, `quality`, `mask_only`, `bg_color`, `crop`) or `op` fields as a pipeline.

use backless_common::db::JobOptions;
use backless_common::db::OutputFormat;
use backless_common::db::job::{MODELS, normalize_color};
use backless_common::job::{Operation, Pipeline};
use poem_openapi::Multipart;
use poem_openapi::types::multipart::Upload;

use super::JobsApi;
use crate::error::WebError;

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

impl JobsApi {
    /// The job's options from the form: the plain fields, or the `op` fields as a pipeline.
    pub(super) fn options(&self, form: &UploadForm) -> Result<JobOptions, WebError> {
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
