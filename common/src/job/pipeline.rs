//! A job's pipeline: a short, ordered list of image operations, e.g.
//! `remove_background` → `crop_to_subject` → `resize` → `watermark` → `encode`, or only
//! `thumbnail`, or only a `filter`.
//!
//! Web validates a pipeline at upload (so a bad one is a 4xx, never a failed job) and stores it
//! on the job; the worker runs it. Operations are written the same way everywhere a person types
//! them (the upload form's `op` fields, the CLI's `--op`): `name` or `name:key=value,key=value`,
//! with filters as `filter:kind` or `filter:kind=value`:
//!
//! ```text
//! remove_background:model=u2netp
//! remove_background:roi=10% 0% 90% 100%
//! crop_to_subject:margin=16
//! crop_to_subject:margin=10% 5%
//! place:scale=80%,position=center
//! resize:width=800,fit=contain
//! thumbnail:size=256
//! watermark:text=© BackLess,position=bottom_right,opacity=0.5
//! filter:blur=2.5
//! encode:format=webp
//! encode:format=webp,quality=80
//! encode:format=zip,quality=85
//! ```
//!
//! On the job record the pipeline is JSON (`{"op": "resize", "width": 800, ...}`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::colour::normalize_color;
use super::format::OutputFormat;
pub use super::geometry::{MAX_TARGET_SIDE, MIN_PLACE_SCALE};
use super::geometry::{Margin, Region, check_position, check_scale, parse_position, parse_scale};
use super::model::DEFAULT_MODEL;

/// Most operations one job may carry.
pub const MAX_OPERATIONS: usize = 8;
/// Largest `thumbnail` size.
pub const MAX_THUMBNAIL: u32 = 2_048;
/// Longest watermark text, in characters.
pub const MAX_WATERMARK_CHARS: usize = 100;

/// How `resize` fits the image into `width` x `height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Scale to fit inside the box, keeping the aspect ratio (the result may be smaller on one side).
    #[default]
    Contain,
    /// Scale to cover the box, keeping the aspect ratio, and crop the overflow (centred).
    Cover,
    /// Stretch to exactly the box.
    Fill,
}

/// Where `watermark` puts its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    TopLeft,
    TopRight,
    BottomLeft,
    #[default]
    BottomRight,
    Center,
}

/// The filters `filter` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterKind {
    /// To 8-bit luminance (ITU-R 601, as Pillow's `convert("L")`); alpha is kept.
    Grayscale,
    /// Gaussian blur; `value` is sigma in pixels (default 2).
    Blur,
    /// Unsharp mask; `value` is the blur sigma it sharpens against (default 1).
    Sharpen,
    /// Multiply brightness by `value` (1 = unchanged, 0 = black), as Pillow's `ImageEnhance`.
    Brightness,
    /// Scale contrast around the mean grey by `value` (1 = unchanged), as Pillow's `ImageEnhance`.
    Contrast,
}

impl FilterKind {
    const ALL: [(FilterKind, &'static str); 5] = [
        (FilterKind::Grayscale, "grayscale"),
        (FilterKind::Blur, "blur"),
        (FilterKind::Sharpen, "sharpen"),
        (FilterKind::Brightness, "brightness"),
        (FilterKind::Contrast, "contrast"),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, n)| *n)
            .unwrap_or("")
    }

    /// The value's accepted range and default (`None`: takes no value / the value is required).
    fn value_rule(self) -> Option<(f32, f32, Option<f32>)> {
        match self {
            FilterKind::Grayscale => None,
            FilterKind::Blur => Some((0.1, 50.0, Some(2.0))),
            FilterKind::Sharpen => Some((0.1, 10.0, Some(1.0))),
            FilterKind::Brightness => Some((0.0, 4.0, None)),
            FilterKind::Contrast => Some((0.0, 4.0, None)),
        }
    }
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    /// Segment the subject and cut it out (needs the model; must come first).
    RemoveBackground {
        model: String,
        /// Return the mask (white = subject) instead of the cut-out.
        #[serde(default)]
        mask_only: bool,
        /// Paint the background `#rrggbb` instead of making it transparent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bg_color: Option<String>,
        /// Estimate the subject's own colour at soft edges, so no halo of the old background
        /// is left (on by default; `false` keeps the photo's colours under the mask).
        #[serde(default = "yes", skip_serializing_if = "is_yes")]
        decontaminate: bool,
        /// Refine the mask by closed-form alpha matting in the band where it is unsure (hair,
        /// fur); off by default: it costs time and memory.
        #[serde(default, skip_serializing_if = "is_no")]
        matting: bool,
        /// Only this rectangle can be subject; everything outside it is background.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        roi: Option<Region>,
    },
    /// Crop to the subject's bounding box (needs `remove_background` before it).
    CropToSubject {
        /// Mask value above which a pixel is subject.
        threshold: u8,
        /// Space kept around the subject (clamped to the image).
        margin: Margin,
    },
    /// Scale and move the subject within the image (remove.bg's `scale` and `position`); the
    /// image keeps its size and the uncovered area is background (needs `remove_background`
    /// before it, with at most `crop_to_subject` between).
    Place {
        /// The subject's bounding box fits in this percentage (10 to 100) of the image's width
        /// and height (it may grow); absent: its size is kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scale: Option<f32>,
        /// Where the subject goes, as percentages (0 to 100) of the free space left of and
        /// above it (50 50 centres it); absent: centred when scaled, else where it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<[f32; 2]>,
    },
    /// Paint the job's background image behind a cut-out, scaled to cover the image and
    /// centred (remove.bg's `bg_image_file` / `bg_image_url`); the result is opaque. Needs a
    /// transparent cut-out before it and a background image stored with the job.
    Backdrop,
    /// Scale to `width` x `height` (give one side to keep the aspect ratio).
    Resize {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        width: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<u32>,
        #[serde(default)]
        fit: Fit,
    },
    /// Shrink to fit in `size` x `size` and to at most `pixels` pixels (at least one is given),
    /// keeping the aspect ratio; never enlarges.
    Thumbnail {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pixels: Option<u64>,
    },
    /// Draw `text` in a corner (or the centre).
    Watermark {
        text: String,
        #[serde(default)]
        position: Position,
        /// 0 (invisible) to 1 (opaque).
        opacity: f32,
    },
    /// Apply one filter.
    Filter {
        filter: FilterKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<f32>,
    },
    /// Encode the result (last; PNG when a pipeline has none).
    Encode {
        format: OutputFormat,
        /// Quality, 1-100: JPEG's (default 90) and a zip's `color.jpg`'s; for WebP it asks for
        /// lossy colour (alpha stays lossless), and WebP without it is lossless. PNG is
        /// lossless and takes none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quality: Option<u8>,
    },
}

impl Operation {
    /// The operation's name, as written in a pipeline.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::RemoveBackground { .. } => "remove_background",
            Operation::CropToSubject { .. } => "crop_to_subject",
            Operation::Place { .. } => "place",
            Operation::Backdrop => "backdrop",
            Operation::Resize { .. } => "resize",
            Operation::Thumbnail { .. } => "thumbnail",
            Operation::Watermark { .. } => "watermark",
            Operation::Filter { .. } => "filter",
            Operation::Encode { .. } => "encode",
        }
    }

    /// The default encoding step.
    pub fn png() -> Self {
        Operation::Encode {
            format: OutputFormat::Png,
            quality: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_no(b: &bool) -> bool {
    !b
}

fn is_yes(v: &bool) -> bool {
    *v
}

/// Why a pipeline was refused. Each has a stable [`code`](OpsError::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpsError {
    #[error(
        "unknown operation {0:?}; use remove_background, crop_to_subject, place, backdrop, resize, thumbnail, watermark, filter or encode"
    )]
    UnknownOperation(String),
    #[error("{op}: {message}")]
    BadParameter { op: String, message: String },
    #[error("a pipeline has at most {MAX_OPERATIONS} operations, this one has {0}")]
    TooLong(usize),
    #[error("{0}")]
    BadOrder(String),
    #[error(
        "JPEG has no transparency: give remove_background a bg_color, or encode as PNG or WebP"
    )]
    JpegNeedsBackground,
}

impl OpsError {
    /// Stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            OpsError::UnknownOperation(_) => "unknown_operation",
            OpsError::BadParameter { .. } => "bad_parameter",
            OpsError::TooLong(_) => "pipeline_too_long",
            OpsError::BadOrder(_) => "bad_pipeline_order",
            OpsError::JpegNeedsBackground => "jpeg_needs_background",
        }
    }

    fn bad(op: &str, message: impl Into<String>) -> Self {
        OpsError::BadParameter {
            op: op.to_string(),
            message: message.into(),
        }
    }
}

/// A validated pipeline: ends with exactly one `encode`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pipeline(Vec<Operation>);

impl Pipeline {
    /// Check `ops` (an `encode` to PNG is appended when missing). `models` are the segmentation
    /// models `remove_background` may name.
    pub fn new(mut ops: Vec<Operation>, models: &[String]) -> Result<Self, OpsError> {
        if ops.is_empty() {
            return Err(OpsError::BadOrder("the pipeline is empty".into()));
        }
        if ops.len() > MAX_OPERATIONS {
            return Err(OpsError::TooLong(ops.len()));
        }
        if !matches!(ops.last(), Some(Operation::Encode { .. })) {
            ops.push(Operation::png());
        }
        // Whether the subject's mask still matches the image (crop and place need it).
        let mut masked = false;
        let mut transparent = false;
        let last = ops.len() - 1;
        for (i, op) in ops.iter().enumerate() {
            check_parameters(op, models)?;
            match op {
                Operation::RemoveBackground {
                    mask_only,
                    bg_color,
                    ..
                } => {
                    if i != 0 {
                        return Err(OpsError::BadOrder(
                            "remove_background must be the first operation (it segments the original photo)".into(),
                        ));
                    }
                    masked = true;
                    transparent = !mask_only && bg_color.is_none();
                }
                Operation::CropToSubject { .. } if !masked => {
                    return Err(OpsError::BadOrder(
                        "crop_to_subject must come right after remove_background (it crops to the subject's mask)".into(),
                    ));
                }
                Operation::Place { .. } if !masked => {
                    return Err(OpsError::BadOrder(
                        "place must come right after remove_background or crop_to_subject (it moves the subject by its mask)".into(),
                    ));
                }
                Operation::CropToSubject { .. } => {}
                Operation::Place { .. } => masked = false,
                Operation::Backdrop if !transparent => {
                    return Err(OpsError::BadOrder(
                        "backdrop paints behind a transparent cut-out: it needs remove_background (without mask_only or bg_color) before it, once".into(),
                    ));
                }
                Operation::Backdrop => {
                    masked = false;
                    transparent = false;
                }
                Operation::Encode { format, .. } => {
                    if i != last {
                        return Err(OpsError::BadOrder(
                            "encode must be the last operation, and there can be only one".into(),
                        ));
                    }
                    if *format == OutputFormat::Jpeg && transparent {
                        return Err(OpsError::JpegNeedsBackground);
                    }
                }
                _ => masked = false,
            }
        }
        Ok(Self(ops))
    }

    /// Parse operations written as text (see the module docs), then validate them.
    pub fn parse<S: AsRef<str>>(ops: &[S], models: &[String]) -> Result<Self, OpsError> {
        let ops = ops
            .iter()
            .map(|s| s.as_ref().parse())
            .collect::<Result<Vec<Operation>, _>>()?;
        Self::new(ops, models)
    }

    /// Wrap operations already known to be valid (built by code, not by a client).
    pub(crate) fn from_validated(ops: Vec<Operation>) -> Self {
        Self(ops)
    }

    pub fn operations(&self) -> &[Operation] {
        &self.0
    }

    /// The segmentation model the pipeline needs, if any.
    pub fn model(&self) -> Option<&str> {
        self.0.iter().find_map(|op| match op {
            Operation::RemoveBackground { model, .. } => Some(model.as_str()),
            _ => None,
        })
    }

    /// Whether the job needs a background image stored with it (`backdrop`).
    pub fn needs_background(&self) -> bool {
        self.0.iter().any(|op| matches!(op, Operation::Backdrop))
    }

    /// The output format (from the final `encode`).
    pub fn format(&self) -> OutputFormat {
        match self.0.last() {
            Some(Operation::Encode { format, .. }) => *format,
            _ => OutputFormat::Png,
        }
    }

    /// The operations as text, one per entry.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

fn check_parameters(op: &Operation, models: &[String]) -> Result<(), OpsError> {
    let name = op.name();
    let bad = |m: String| Err(OpsError::bad(name, m));
    match op {
        Operation::RemoveBackground {
            model, bg_color, ..
        } => {
            if !models.iter().any(|m| m == model) {
                return bad(format!(
                    "unknown model {model:?}; this service offers {}",
                    models.join(", ")
                ));
            }
            if let Some(c) = bg_color
                && normalize_color(c).as_deref() != Some(c.as_str())
            {
                return bad(format!("bg_color {c:?} must be #rrggbb"));
            }
        }
        Operation::CropToSubject { margin, .. } => {
            margin.check().map_err(|m| OpsError::bad(name, m))?
        }
        // Regions are checked as they are parsed or read.
        Operation::Backdrop => {}
        Operation::Place { scale, position } => {
            if scale.is_none() && position.is_none() {
                return bad("give scale, position or both".into());
            }
            if let Some(s) = scale {
                check_scale(*s).map_err(|m| OpsError::bad(name, m))?;
            }
            if let Some(p) = position {
                check_position(*p).map_err(|m| OpsError::bad(name, m))?;
            }
        }
        Operation::Resize { width, height, .. } => {
            if width.is_none() && height.is_none() {
                return bad("give width, height or both".into());
            }
            for (side, v) in [("width", width), ("height", height)] {
                if let Some(v) = v
                    && !(1..=MAX_TARGET_SIDE).contains(v)
                {
                    return bad(format!("{side} must be 1 to {MAX_TARGET_SIDE}, not {v}"));
                }
            }
        }
        Operation::Thumbnail { size, pixels } => {
            if size.is_none() && pixels.is_none() {
                return bad("give size, pixels or both".to_string());
            }
            if let Some(size) = size
                && !(1..=MAX_THUMBNAIL).contains(size)
            {
                return bad(format!("size must be 1 to {MAX_THUMBNAIL}, not {size}"));
            }
            if let Some(pixels) = pixels
                && *pixels == 0
            {
                return bad("pixels must be at least 1".to_string());
            }
        }
        Operation::Watermark { text, opacity, .. } => {
            let chars = text.chars().count();
            if text.trim().is_empty() || chars > MAX_WATERMARK_CHARS {
                return bad(format!(
                    "text must be 1 to {MAX_WATERMARK_CHARS} characters"
                ));
            }
            if text.chars().any(char::is_control) {
                return bad("text must be one line without control characters".into());
            }
            if !(opacity.is_finite() && *opacity > 0.0 && *opacity <= 1.0) {
                return bad(format!(
                    "opacity must be above 0 and at most 1, not {opacity}"
                ));
            }
        }
        Operation::Filter { filter, value } => match (filter.value_rule(), value) {
            (None, Some(_)) => return bad(format!("{} takes no value", filter.as_str())),
            (None, None) => {}
            (Some((_, _, None)), None) => {
                return bad(format!("{} needs a value", filter.as_str()));
            }
            (Some(_), None) => {}
            (Some((lo, hi, _)), Some(v)) => {
                if !(v.is_finite() && (lo..=hi).contains(v)) {
                    return bad(format!("{} must be {lo} to {hi}, not {v}", filter.as_str()));
                }
            }
        },
        Operation::Encode { format, quality } => match (format, quality) {
            (OutputFormat::Png, Some(_)) => {
                return bad("quality applies to JPEG, WebP and zip only (PNG is lossless)".into());
            }
            (_, Some(q)) if !(1..=100).contains(q) => {
                return bad(format!("quality must be 1 to 100, not {q}"));
            }
            _ => {}
        },
    }
    Ok(())
}

impl FilterKind {
    /// The value used when none is given.
    pub fn default_value(self) -> Option<f32> {
        self.value_rule().and_then(|(_, _, d)| d)
    }
}

/// `key=value` pairs of one operation's text. A piece without `=` belongs to the value before
/// it, so a watermark's text may contain commas.
fn pairs<'a>(op: &str, params: &'a str) -> Result<Vec<(&'a str, String)>, OpsError> {
    let mut out: Vec<(&'a str, String)> = Vec::new();
    for piece in params.split(',') {
        match piece.split_once('=') {
            Some((k, v))
                if !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_') =>
            {
                if out.iter().any(|(seen, _)| *seen == k) {
                    return Err(OpsError::bad(op, format!("{k} is given twice")));
                }
                out.push((k, v.to_string()));
            }
            _ => match out.last_mut() {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(piece);
                }
                None if piece.trim().is_empty() => {}
                None => {
                    return Err(OpsError::bad(
                        op,
                        format!("expected key=value, got {piece:?}"),
                    ));
                }
            },
        }
    }
    Ok(out)
}

/// Typed access to an operation's parameters; anything left over is an error.
struct Params<'a> {
    op: &'a str,
    pairs: Vec<(&'a str, String)>,
}

impl Params<'_> {
    fn take<T: FromStr>(&mut self, key: &str, what: &str) -> Result<Option<T>, OpsError> {
        let Some(i) = self.pairs.iter().position(|(k, _)| *k == key) else {
            return Ok(None);
        };
        let (_, v) = self.pairs.remove(i);
        v.trim()
            .parse()
            .map(Some)
            .map_err(|_| OpsError::bad(self.op, format!("{key} must be {what}, not {v:?}")))
    }

    fn text(&mut self, key: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(k, _)| *k == key)?;
        Some(self.pairs.remove(i).1)
    }

    fn done(self) -> Result<(), OpsError> {
        match self.pairs.first() {
            Some((k, _)) => Err(OpsError::bad(self.op, format!("unknown parameter {k:?}"))),
            None => Ok(()),
        }
    }
}

fn parse_enum<T: serde::de::DeserializeOwned>(
    op: &str,
    key: &str,
    v: &str,
    choices: &str,
) -> Result<T, OpsError> {
    serde_json::from_value(serde_json::Value::String(v.trim().to_ascii_lowercase()))
        .map_err(|_| OpsError::bad(op, format!("{key} must be one of {choices}, not {v:?}")))
}

impl FromStr for Operation {
    type Err = OpsError;

    fn from_str(s: &str) -> Result<Self, OpsError> {
        let s = s.trim();
        let (name, params) = s.split_once(':').unwrap_or((s, ""));
        let name = name.trim();
        if name == "filter" {
            let (kind, value) = match params.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (params, None),
            };
            let filter = FilterKind::ALL
                .iter()
                .find(|(_, n)| *n == kind.trim())
                .map(|(k, _)| *k)
                .ok_or_else(|| {
                    OpsError::bad(
                        "filter",
                        format!(
                            "unknown filter {:?}; use grayscale, blur, sharpen, brightness or contrast",
                            kind.trim()
                        ),
                    )
                })?;
            let value = value
                .map(|v| {
                    v.trim().parse::<f32>().map_err(|_| {
                        OpsError::bad(
                            "filter",
                            format!("{} value must be a number, not {v:?}", filter.as_str()),
                        )
                    })
                })
                .transpose()?;
            return Ok(Operation::Filter { filter, value });
        }
        let mut p = Params {
            op: name,
            pairs: pairs(name, params)?,
        };
        let op = match name {
            "remove_background" => Operation::RemoveBackground {
                model: p.text("model").unwrap_or_else(|| DEFAULT_MODEL.to_string()),
                mask_only: p.take("mask_only", "true or false")?.unwrap_or(false),
                bg_color: match p.text("bg_color") {
                    Some(c) => Some(normalize_color(&c).ok_or_else(|| {
                        OpsError::bad(
                            name,
                            format!("bg_color {c:?}: use #rrggbb, #rgb or a name such as white"),
                        )
                    })?),
                    None => None,
                },
                decontaminate: p.take("decontaminate", "true or false")?.unwrap_or(true),
                matting: p.take("matting", "true or false")?.unwrap_or(false),
                roi: p
                    .text("roi")
                    .map(|v| {
                        v.parse()
                            .map_err(|e| OpsError::bad(name, format!("roi {e}")))
                    })
                    .transpose()?,
            },
            "crop_to_subject" => Operation::CropToSubject {
                threshold: p.take("threshold", "0 to 255")?.unwrap_or(10),
                margin: p
                    .text("margin")
                    .map(|v| {
                        v.parse()
                            .map_err(|e| OpsError::bad(name, format!("margin {e}")))
                    })
                    .transpose()?
                    .unwrap_or_default(),
            },
            "place" => Operation::Place {
                scale: p
                    .text("scale")
                    .map(|v| parse_scale(&v).map_err(|e| OpsError::bad(name, e)))
                    .transpose()?
                    .flatten(),
                position: p
                    .text("position")
                    .map(|v| parse_position(&v).map_err(|e| OpsError::bad(name, e)))
                    .transpose()?
                    .flatten(),
            },
            "backdrop" => Operation::Backdrop,
            "resize" => Operation::Resize {
                width: p.take("width", "a number of pixels")?,
                height: p.take("height", "a number of pixels")?,
                fit: match p.text("fit") {
                    Some(v) => parse_enum(name, "fit", &v, "contain, cover, fill")?,
                    None => Fit::default(),
                },
            },
            "thumbnail" => Operation::Thumbnail {
                size: p.take("size", "a number of pixels")?,
                pixels: p.take("pixels", "a number of pixels")?,
            },
            "watermark" => Operation::Watermark {
                text: p
                    .text("text")
                    .ok_or_else(|| OpsError::bad(name, "text is required"))?,
                position: match p.text("position") {
                    Some(v) => parse_enum(
                        name,
                        "position",
                        &v,
                        "top_left, top_right, bottom_left, bottom_right, center",
                    )?,
                    None => Position::default(),
                },
                opacity: p.take("opacity", "a number from 0 to 1")?.unwrap_or(0.5),
            },
            "encode" => Operation::Encode {
                format: {
                    let v = p
                        .text("format")
                        .ok_or_else(|| OpsError::bad(name, "format is required"))?;
                    OutputFormat::parse(&v).ok_or_else(|| {
                        OpsError::bad(
                            name,
                            format!("format must be png, webp, jpeg or zip, not {v:?}"),
                        )
                    })?
                },
                quality: p.take("quality", "1 to 100")?,
            },
            other => return Err(OpsError::UnknownOperation(other.to_string())),
        };
        p.done()?;
        Ok(op)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::RemoveBackground {
                model,
                mask_only,
                bg_color,
                decontaminate,
                matting,
                roi,
            } => {
                write!(f, "remove_background:model={model}")?;
                if *mask_only {
                    write!(f, ",mask_only=true")?;
                }
                if let Some(c) = bg_color {
                    write!(f, ",bg_color={c}")?;
                }
                if !decontaminate {
                    write!(f, ",decontaminate=false")?;
                }
                if *matting {
                    write!(f, ",matting=true")?;
                }
                if let Some(r) = roi {
                    write!(f, ",roi={r}")?;
                }
                Ok(())
            }
            Operation::CropToSubject { threshold, margin } => {
                write!(f, "crop_to_subject:threshold={threshold},margin={margin}")
            }
            Operation::Backdrop => write!(f, "backdrop"),
            Operation::Place { scale, position } => {
                let parts: Vec<String> = [
                    scale.map(|s| format!("scale={s}%")),
                    position.map(|[x, y]| format!("position={x}% {y}%")),
                ]
                .into_iter()
                .flatten()
                .collect();
                write!(f, "place:{}", parts.join(","))
            }
            Operation::Resize { width, height, fit } => {
                write!(f, "resize:")?;
                if let Some(w) = width {
                    write!(f, "width={w},")?;
                }
                if let Some(h) = height {
                    write!(f, "height={h},")?;
                }
                write!(f, "fit={}", serde_name(fit))
            }
            Operation::Thumbnail { size, pixels } => {
                let parts: Vec<String> = [
                    size.map(|s| format!("size={s}")),
                    pixels.map(|p| format!("pixels={p}")),
                ]
                .into_iter()
                .flatten()
                .collect();
                write!(f, "thumbnail:{}", parts.join(","))
            }
            Operation::Watermark {
                text,
                position,
                opacity,
            } => write!(
                f,
                "watermark:position={},opacity={opacity},text={text}",
                serde_name(position)
            ),
            Operation::Filter { filter, value } => match value {
                Some(v) => write!(f, "filter:{}={v}", filter.as_str()),
                None => write!(f, "filter:{}", filter.as_str()),
            },
            Operation::Encode { format, quality } => {
                write!(f, "encode:format={}", format.name())?;
                if let Some(q) = quality {
                    write!(f, ",quality={q}")?;
                }
                Ok(())
            }
        }
    }
}

/// The serde name of a unit enum variant (`bottom_right`), for [`Operation`]'s text form.
fn serde_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::MODELS;

    fn models() -> Vec<String> {
        MODELS.iter().map(|m| m.to_string()).collect()
    }

    fn parse(ops: &[&str]) -> Result<Pipeline, OpsError> {
        Pipeline::parse(ops, &models())
    }

    #[test]
    fn text_round_trips() {
        let p = parse(&[
            "remove_background:model=u2net,bg_color=#FFF,decontaminate=false,matting=true",
            "crop_to_subject:margin=16",
            "resize:width=800,fit=cover",
            "watermark:text=Hello, world = 1,position=top_left,opacity=0.25",
            "filter:blur=2.5",
            "filter:grayscale",
            "encode:format=jpeg,quality=80",
        ])
        .unwrap();
        let text = p.to_strings();
        assert_eq!(
            text[0],
            "remove_background:model=u2net,bg_color=#ffffff,decontaminate=false,matting=true"
        );
        assert_eq!(
            text[3],
            "watermark:position=top_left,opacity=0.25,text=Hello, world = 1"
        );
        let again = Pipeline::parse(&text, &models()).unwrap();
        assert_eq!(again, p);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Pipeline>(&json).unwrap(), p);
        assert!(
            json.contains(r#"{"op":"resize","width":800,"fit":"cover"}"#),
            "{json}"
        );
    }

    #[test]
    fn roi_margins_and_place_round_trip_and_keep_their_order() {
        let p = parse(&[
            "remove_background:roi=10% 0 90% 100%",
            "crop_to_subject:margin=10% 5px",
            "place:scale=80%,position=center",
            "encode:format=webp",
        ])
        .unwrap();
        let text = p.to_strings();
        assert_eq!(text[0], "remove_background:model=u2netp,roi=10% 0 90% 100%");
        assert_eq!(text[1], "crop_to_subject:threshold=10,margin=10% 5");
        assert_eq!(text[2], "place:scale=80%,position=50% 50%");
        assert_eq!(Pipeline::parse(&text, &models()).unwrap(), p);
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""roi":"10% 0 90% 100%""#), "{json}");
        assert!(json.contains(r#""margin":"10% 5""#), "{json}");
        assert_eq!(serde_json::from_str::<Pipeline>(&json).unwrap(), p);
        // A margin in pixels is stored as the number it always was.
        let old = parse(&["remove_background", "crop_to_subject:margin=16"]).unwrap();
        assert!(
            serde_json::to_string(&old)
                .unwrap()
                .contains(r#""margin":16"#)
        );

        let code = |ops: &[&str]| parse(ops).unwrap_err().code();
        for bad in [
            &["remove_background:roi=0 0 100%"][..],
            &["remove_background:roi=90% 0 10% 100%"],
            &["remove_background", "crop_to_subject:margin=1 2 3"],
            &["remove_background", "crop_to_subject:margin=101%"],
            &["remove_background", "place"],
            &["remove_background", "place:scale=5%"],
            &["remove_background", "place:scale=101"],
            &["remove_background", "place:position=50% 120%"],
            &["remove_background", "place:position=left"],
        ] {
            assert_eq!(code(bad), "bad_parameter", "{bad:?}");
        }
        // place needs the mask: right after remove_background or crop_to_subject.
        assert_eq!(code(&["place:scale=50"]), "bad_pipeline_order");
        assert_eq!(
            code(&["remove_background", "thumbnail:size=9", "place:scale=50"]),
            "bad_pipeline_order"
        );
        assert_eq!(
            code(&["remove_background", "place:scale=50", "crop_to_subject"]),
            "bad_pipeline_order"
        );
        assert!(
            parse(&[
                "remove_background",
                "place:position=0% 100%",
                "thumbnail:size=9"
            ])
            .is_ok()
        );
        // backdrop: behind a transparent cut-out only; the result is opaque, so JPEG is fine.
        let p = parse(&[
            "remove_background",
            "place:scale=50",
            "backdrop",
            "encode:format=jpeg",
        ])
        .unwrap();
        assert!(p.needs_background());
        assert_eq!(p.to_strings()[2], "backdrop");
        assert!(
            serde_json::to_string(&p)
                .unwrap()
                .contains(r#"{"op":"backdrop"}"#)
        );
        assert!(!parse(&["remove_background"]).unwrap().needs_background());
        for bad in [
            &["backdrop"][..],
            &["remove_background:bg_color=#fff", "backdrop"],
            &["remove_background:mask_only=true", "backdrop"],
            &["remove_background", "backdrop", "backdrop"],
        ] {
            assert_eq!(code(bad), "bad_pipeline_order", "{bad:?}");
        }
    }

    #[test]
    fn encode_png_is_appended() {
        let p = parse(&["thumbnail:size=128"]).unwrap();
        assert_eq!(p.operations().len(), 2);
        assert_eq!(p.format(), OutputFormat::Png);
        assert_eq!(p.model(), None);
    }

    #[test]
    fn each_kind_of_mistake_has_its_code() {
        let code = |ops: &[&str]| parse(ops).unwrap_err().code();
        assert_eq!(code(&["sepia"]), "unknown_operation");
        assert_eq!(code(&["filter:sepia"]), "bad_parameter");
        assert_eq!(code(&["resize"]), "bad_parameter");
        assert_eq!(code(&["resize:width=0"]), "bad_parameter");
        assert_eq!(code(&["resize:width=20000"]), "bad_parameter");
        assert_eq!(
            code(&[
                "remove_background",
                "crop_to_subject:margin=18446744073709551615"
            ]),
            "bad_parameter"
        );
        assert_eq!(
            code(&["remove_background", "crop_to_subject:margin=4294967295"]),
            "bad_parameter"
        );
        assert_eq!(code(&["resize:width=abc"]), "bad_parameter");
        assert_eq!(code(&["resize:width=10,fit=squash"]), "bad_parameter");
        assert_eq!(code(&["resize:width=10,depth=3"]), "bad_parameter");
        assert_eq!(code(&["resize:width=10,width=3"]), "bad_parameter");
        assert_eq!(code(&["thumbnail"]), "bad_parameter");
        assert_eq!(code(&["thumbnail:size=5000"]), "bad_parameter");
        assert_eq!(code(&["watermark:text= "]), "bad_parameter");
        assert_eq!(code(&["watermark:text=x,opacity=2"]), "bad_parameter");
        assert_eq!(code(&["watermark:text=x,opacity=0"]), "bad_parameter");
        assert_eq!(code(&["filter:blur=0"]), "bad_parameter");
        assert_eq!(code(&["filter:blur=NaN"]), "bad_parameter");
        assert_eq!(code(&["filter:brightness"]), "bad_parameter");
        assert_eq!(code(&["filter:grayscale=2"]), "bad_parameter");
        assert_eq!(code(&["encode:format=gif"]), "bad_parameter");
        assert_eq!(code(&["encode:format=jpeg,quality=0"]), "bad_parameter");
        assert_eq!(code(&["encode:format=png,quality=50"]), "bad_parameter");
        assert_eq!(code(&["encode:format=webp,quality=0"]), "bad_parameter");
        assert_eq!(code(&["encode:format=webp,quality=101"]), "bad_parameter");
        assert_eq!(code(&["remove_background:model=sam"]), "bad_parameter");
        assert_eq!(
            code(&["remove_background:bg_color=redish"]),
            "bad_parameter"
        );
        // The spellings every other input takes (a name, three digits) are recorded as #rrggbb.
        for red in ["Red", "f00", "#FF0000"] {
            let p = parse(&[&format!("remove_background:bg_color={red}")]).unwrap();
            assert_eq!(
                p.to_strings()[0],
                "remove_background:model=u2netp,bg_color=#ff0000"
            );
        }
        assert_eq!(
            code(&["remove_background:bg_color=#ff000080"]),
            "bad_parameter"
        );
        assert_eq!(code(&["thumbnail:size=9"; 9]), "pipeline_too_long");
        assert_eq!(
            code(&["thumbnail:size=9", "remove_background"]),
            "bad_pipeline_order"
        );
        assert_eq!(code(&["crop_to_subject"]), "bad_pipeline_order");
        assert_eq!(
            code(&["remove_background", "thumbnail:size=9", "crop_to_subject"]),
            "bad_pipeline_order"
        );
        assert_eq!(
            code(&["encode:format=png", "thumbnail:size=9"]),
            "bad_pipeline_order"
        );
        assert_eq!(
            code(&["remove_background", "encode:format=jpeg"]),
            "jpeg_needs_background"
        );
        assert_eq!(
            Pipeline::new(vec![], &models()).unwrap_err().code(),
            "bad_pipeline_order"
        );
        // A JPEG is fine once the background is painted, or for operations without a cut-out.
        assert!(parse(&["remove_background:bg_color=#fff", "encode:format=jpeg"]).is_ok());
        assert!(parse(&["thumbnail:size=64", "encode:format=jpeg,quality=70"]).is_ok());
        let webp = parse(&["remove_background", "encode:format=webp,quality=75"]).unwrap();
        assert_eq!(webp.to_strings()[1], "encode:format=webp,quality=75");
        // A zip carries transparency as its own matte, so a cut-out needs no background.
        let zip = parse(&["remove_background", "encode:format=zip,quality=80"]).unwrap();
        assert_eq!(zip.format(), OutputFormat::Zip);
        assert_eq!(zip.to_strings()[1], "encode:format=zip,quality=80");
    }
}
