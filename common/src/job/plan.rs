//! A job's plan: what a pipeline will do to an image of a given size, worked out from the
//! header alone, before any pixel is decoded or allocated.
//!
//! Web plans at upload and refuses a pipeline whose plan breaks a limit (a 4xx, nothing stored);
//! the worker plans again from the decoded header before it allocates anything, because a push
//! may carry a job web never checked. Both use this one function, so the same pipeline on the
//! same image gets the same answer and the same code in both places.
//!
//! Every size derived from user input is computed in `u64` (the product of two `u32` sides fits)
//! and compared with the limits before it is narrowed to `u32`: a derived side can exceed the
//! limits, never wrap.

use serde::Serialize;

use super::format::OutputFormat;
use super::pipeline::{Fit, Operation, Pipeline};
use super::stage::Stage;
use crate::limits::ImageLimits;

/// Width x height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Size {
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height }
    }

    pub fn pixels(self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// The size of a stored image of this size once its EXIF `orientation` is applied.
    pub fn oriented(self, orientation: image::metadata::Orientation) -> Self {
        use image::metadata::Orientation as O;
        match orientation {
            O::Rotate90 | O::Rotate270 | O::Rotate90FlipH | O::Rotate270FlipH => {
                Self::new(self.height, self.width)
            }
            _ => self,
        }
    }
}

/// One operation of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The operation's name, as written in a pipeline.
    pub operation: &'static str,
    /// The image after this step: exact, except after `crop_to_subject`, where it is the bound
    /// (the crop is known only once the subject is).
    pub output: Size,
    /// Bytes of image buffers this step holds at its peak.
    pub working_bytes: u64,
}

/// One event a job reports, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, poem_openapi::Object)]
pub struct PlannedStage {
    /// The SSE event id (`id:`) of this stage.
    pub seq: u64,
    /// The SSE event name (`event:`).
    pub stage: Stage,
    /// The index of the pipeline operation that reports it, for operation stages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<u32>,
}

/// What a pipeline will do to one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The image as decoded (EXIF orientation applied).
    pub input: Size,
    pub steps: Vec<Step>,
    /// The most bytes of image buffers held at once (decoding included; the model's own
    /// working memory is fixed per model and not counted).
    pub working_bytes: u64,
}

/// Why a pipeline cannot run on an image. Each has a stable [`code`](PlanError::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "{operation} would make a {width}x{height} image; each side may be at most {max_side} pixels and the whole at most {:.1} megapixels",
        (*max_pixels as f64) / 1e6
    )]
    OutputTooLarge {
        operation: &'static str,
        width: u64,
        height: u64,
        max_side: u32,
        max_pixels: u64,
    },
    #[error(
        "this pipeline needs about {} MiB of working memory for this image; the limit is {} MiB",
        needed >> 20,
        budget >> 20
    )]
    OverMemoryBudget { needed: u64, budget: u64 },
}

impl PlanError {
    /// Stable, machine-readable code (the same in web and worker).
    pub fn code(&self) -> &'static str {
        match self {
            PlanError::OutputTooLarge { .. } => "output_too_large",
            PlanError::OverMemoryBudget { .. } => "over_memory_budget",
        }
    }
}

/// What closed-form matting holds per pixel at worst (`backless_worker::imaging::cutout::matting`).
pub const MATTING_BYTES_PER_PIXEL: u64 = 158;

/// WebP's largest side.
pub const WEBP_MAX_SIDE: u32 = 16_383;

/// Bytes per pixel of buffers held while decoding: the decoder's frame in the widest pixel type
/// (16-bit RGBA) and its 8-bit copy.
const DECODE_BYTES_PER_PIXEL: u64 = 8 + 4;

/// Bytes per (input, output) pixel an operation holds at its peak, for 8-bit images of up to
/// four channels: the source, the destination and the step's scratch.
fn bytes_per_pixel(op: &Operation) -> (u64, u64) {
    match op {
        // RGB copy for the model input, the mask and its resampling, the RGBA cut-out; with
        // edge colours estimated, the solver's two 16-bit RGB planes and its 8-bit result.
        // Alpha matting first (the photo, its RGB copy, the mask, and the solver's worst case,
        // every pixel unknown: see worker/src/imaging/cutout/matting.rs), freed before compositing.
        Operation::RemoveBackground { matting: true, .. } => {
            (4 + 3 + 1 + MATTING_BYTES_PER_PIXEL, 4)
        }
        Operation::RemoveBackground {
            decontaminate: true,
            mask_only: false,
            ..
        } => (4 + 3 + 2 + 1 + 12 + 3, 4),
        Operation::RemoveBackground { .. } => (4 + 3 + 2 + 1, 4),
        // The cut-out and its mask, then their crops.
        Operation::CropToSubject { .. } => (4 + 1, 4 + 1),
        // The image and its mask, the subject's box and its scaled copy, the new canvas.
        Operation::Place { .. } => (4 + 1 + 4 + 4, 4),
        // The cut-out and the background scaled to it (the decoded background image itself is
        // held to the same pixel limit as any upload), and the opaque result.
        Operation::Backdrop => (4 + 3, 3),
        // Source, an RGBA copy of a grey-with-alpha source, destination.
        Operation::Resize { .. } | Operation::Thumbnail { .. } => (4 + 4, 4),
        // An RGBA copy to draw on and the converted result (glyph coverage is the text's box).
        Operation::Watermark { .. } => (4 + 4, 4),
        // Blur and sharpen work on float planes.
        Operation::Filter { .. } => (4 + 16, 4),
        // A zip: the image, its copy with hidden colours cleared, the colour and alpha planes,
        // and the two encoded files and the archive (each at most the raw size).
        Operation::Encode {
            format: OutputFormat::Zip,
            ..
        } => (4 + 4 + 3 + 1, 4 + 4),
        // The image, an RGB copy for JPEG, and the encoded bytes (at most the raw size).
        Operation::Encode { .. } => (4 + 3, 4),
    }
}

/// The size `resize` produces from `input`, unchecked (sides may exceed any limit, never wrap).
pub fn resize_dimensions(
    input: Size,
    width: Option<u32>,
    height: Option<u32>,
    fit: Fit,
) -> (u64, u64) {
    let (iw, ih) = (f64::from(input.width), f64::from(input.height));
    // f64 -> u64 saturates; both sides of a product of two u32 are exact in f64's range.
    let side = |v: f64| (v.round() as u64).max(1);
    match (width, height) {
        (Some(w), None) => (u64::from(w), side(ih * f64::from(w) / iw)),
        (None, Some(h)) => (side(iw * f64::from(h) / ih), u64::from(h)),
        (Some(w), Some(h)) => match fit {
            Fit::Fill | Fit::Cover => (u64::from(w), u64::from(h)),
            Fit::Contain => {
                let s = (f64::from(w) / iw).min(f64::from(h) / ih);
                (
                    side(iw * s).min(u64::from(w)),
                    side(ih * s).min(u64::from(h)),
                )
            }
        },
        (None, None) => (u64::from(input.width), u64::from(input.height)),
    }
}

/// The size `thumbnail` produces from `input`: within `size` x `size` and at most `pixels`
/// pixels (each bound when given), keeping the aspect ratio, never larger than `input`.
pub fn thumbnail_dimensions(input: Size, size: Option<u32>, pixels: Option<u64>) -> (u64, u64) {
    let (mut w, mut h) = (u64::from(input.width), u64::from(input.height));
    if let Some(size) = size
        && (input.width > size || input.height > size)
    {
        (w, h) = resize_dimensions(input, Some(size), Some(size), Fit::Contain);
    }
    if let Some(cap) = pixels.map(|p| p.max(1))
        && w.saturating_mul(h) > cap
    {
        // Both sides by the same factor, rounded down; a side held at one pixel leaves the
        // whole budget to the other.
        let s = (cap as f64 / (w as f64 * h as f64)).sqrt();
        let (mut nw, mut nh) = (
            (((w as f64) * s) as u64).clamp(1, w),
            (((h as f64) * s) as u64).clamp(1, h),
        );
        if nw.saturating_mul(nh) > cap {
            if nw <= nh {
                nh = (cap / nw).max(1);
            } else {
                nw = (cap / nh).max(1);
            }
        }
        (w, h) = (nw, nh);
    }
    (w, h)
}

/// `width` x `height` as a [`Size`] if it is within `limits`.
fn within(
    operation: &'static str,
    (width, height): (u64, u64),
    limits: &ImageLimits,
) -> Result<Size, PlanError> {
    let too_large = || PlanError::OutputTooLarge {
        operation,
        width,
        height,
        max_side: limits.max_side,
        max_pixels: limits.max_pixels,
    };
    let max_side = u64::from(limits.max_side);
    if width == 0 || height == 0 || width > max_side || height > max_side {
        return Err(too_large());
    }
    match width.checked_mul(height) {
        Some(px) if px <= limits.max_pixels => {}
        _ => return Err(too_large()),
    }
    let narrow = |v: u64| u32::try_from(v).map_err(|_| too_large());
    Ok(Size::new(narrow(width)?, narrow(height)?))
}

impl Plan {
    /// Plan `ops` on an image of `input` size (already checked against `limits`): each step's
    /// output within the side and pixel limits, the whole within the working-memory budget.
    pub fn new(ops: &[Operation], input: Size, limits: &ImageLimits) -> Result<Self, PlanError> {
        let mut working = input.pixels().saturating_mul(DECODE_BYTES_PER_PIXEL);
        let mut current = input;
        let mut steps = Vec::with_capacity(ops.len());
        for op in ops {
            let output = match op {
                Operation::Resize { width, height, fit } => within(
                    op.name(),
                    resize_dimensions(current, *width, *height, *fit),
                    limits,
                )?,
                Operation::Thumbnail { size, pixels } => within(
                    op.name(),
                    thumbnail_dimensions(current, *size, *pixels),
                    limits,
                )?,
                // WebP cannot hold a side over 16,383 pixels: refused here, not by the encoder.
                Operation::Encode {
                    format: OutputFormat::Webp,
                    ..
                } if current.width.max(current.height) > WEBP_MAX_SIDE => {
                    return Err(PlanError::OutputTooLarge {
                        operation: "encode:format=webp",
                        width: u64::from(current.width),
                        height: u64::from(current.height),
                        max_side: WEBP_MAX_SIDE,
                        max_pixels: limits.max_pixels,
                    });
                }
                // The rest keep the size (a crop can only shrink it).
                _ => current,
            };
            let (per_in, per_out) = bytes_per_pixel(op);
            let bytes = current
                .pixels()
                .saturating_mul(per_in)
                .saturating_add(output.pixels().saturating_mul(per_out));
            working = working.max(bytes);
            steps.push(Step {
                operation: op.name(),
                output,
                working_bytes: bytes,
            });
            current = output;
        }
        if working > limits.max_working_bytes {
            return Err(PlanError::OverMemoryBudget {
                needed: working,
                budget: limits.max_working_bytes,
            });
        }
        Ok(Self {
            input,
            steps,
            working_bytes: working,
        })
    }

    /// The image the pipeline produces (a bound after `crop_to_subject`).
    pub fn output(&self) -> Size {
        self.steps.last().map_or(self.input, |s| s.output)
    }
}
impl Pipeline {
    /// What this pipeline will do to an image of `input` size, or which limit it would break.
    pub fn plan(&self, input: Size, limits: &ImageLimits) -> Result<Plan, PlanError> {
        Plan::new(self.operations(), input, limits)
    }

    /// The events a job running this pipeline reports, in order.
    pub fn stages(&self) -> Vec<PlannedStage> {
        stages(self.operations())
    }
}

/// The events a job running `ops` reports, in order, from upload to `done` (a failure ends the
/// stream with `failed` instead, at the id of `done`).
pub fn stages(ops: &[Operation]) -> Vec<PlannedStage> {
    let plain = |stage: Stage| PlannedStage {
        seq: stage.seq(),
        stage,
        operation: None,
    };
    let mut out = vec![
        plain(Stage::Uploaded),
        plain(Stage::Queued),
        plain(Stage::Received),
    ];
    for (i, op) in ops.iter().enumerate() {
        let at = |stage: Stage| PlannedStage {
            seq: stage.seq() + 2 * i as u64,
            stage,
            operation: u32::try_from(i).ok(),
        };
        out.push(at(op.stage()));
        if matches!(op, Operation::RemoveBackground { .. }) {
            out.push(at(Stage::Compositing));
        }
    }
    out.push(plain(Stage::Stored));
    out.push(plain(Stage::Done));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{MODELS, Pipeline};

    fn pipeline(ops: &[&str]) -> Pipeline {
        let models: Vec<String> = MODELS.iter().map(|m| m.to_string()).collect();
        Pipeline::parse(ops, &models).unwrap()
    }

    fn plan(w: u32, h: u32, ops: &[&str]) -> Result<Plan, PlanError> {
        Plan::new(
            pipeline(ops).operations(),
            Size::new(w, h),
            &ImageLimits::default(),
        )
    }

    fn code(w: u32, h: u32, ops: &[&str]) -> &'static str {
        plan(w, h, ops).unwrap_err().code()
    }

    #[test]
    fn sizes_follow_each_step() {
        let p = plan(
            4000,
            3000,
            &[
                "remove_background",
                "crop_to_subject:margin=10",
                "resize:width=800",
                "thumbnail:size=256",
                "encode:format=webp",
            ],
        )
        .unwrap();
        let sizes: Vec<_> = p
            .steps
            .iter()
            .map(|s| (s.output.width, s.output.height))
            .collect();
        assert_eq!(
            sizes,
            [
                (4000, 3000),
                (4000, 3000),
                (800, 600),
                (256, 192),
                (256, 192)
            ]
        );
        assert_eq!(p.output(), Size::new(256, 192));
        assert!(p.working_bytes >= 12 * 12_000_000, "{}", p.working_bytes);
        // Thumbnails never enlarge.
        let p = plan(100, 60, &["thumbnail:size=128"]).unwrap();
        assert_eq!(p.output(), Size::new(100, 60));
        // A pixel budget keeps the aspect ratio and never goes over.
        let p = plan(4000, 3000, &["thumbnail:pixels=250000"]).unwrap();
        assert_eq!(p.output(), Size::new(577, 433));
        assert!(p.output().pixels() <= 250_000);
        let p = plan(1, 20_000, &["thumbnail:pixels=1000"]).unwrap();
        assert_eq!(p.output(), Size::new(1, 1000));
        let p = plan(600, 400, &["thumbnail:size=500,pixels=250000"]).unwrap();
        assert_eq!(p.output(), Size::new(500, 333));
        let p = plan(600, 400, &["thumbnail:pixels=250000"]).unwrap();
        assert_eq!(p.output(), Size::new(600, 400));
    }

    #[test]
    fn matting_is_planned_at_its_worst_case() {
        let plain = plan(4000, 3000, &["remove_background"]).unwrap();
        let matted = plan(4000, 3000, &["remove_background:matting=true"]).unwrap();
        assert!(matted.working_bytes >= 12_000_000 * (MATTING_BYTES_PER_PIXEL + 8));
        assert!(matted.working_bytes > plain.working_bytes);
        // 40 MP with matting is over the default 2 GiB budget; without it, it fits.
        assert_eq!(
            code(8000, 5000, &["remove_background:matting=true"]),
            "over_memory_budget"
        );
        assert!(plan(8000, 5000, &["remove_background"]).is_ok());
    }

    #[test]
    fn webp_sides_past_its_limit_are_refused_before_encoding() {
        assert_eq!(code(1, 16_384, &["encode:format=webp"]), "output_too_large");
        assert_eq!(
            code(
                20_000,
                100,
                &["filter:grayscale", "encode:format=webp,quality=80"]
            ),
            "output_too_large"
        );
        assert!(plan(16_383, 100, &["encode:format=webp"]).is_ok());
        assert!(plan(1, 16_384, &["encode:format=png"]).is_ok());
        // Shrunk first, then it fits.
        assert!(plan(20_000, 100, &["resize:width=10000", "encode:format=webp"]).is_ok());
    }

    #[test]
    fn derived_sides_are_checked_not_wrapped() {
        // The 163-byte PNG of the crash: 1x20000, width 10000 -> 10000 x 200,000,000.
        assert_eq!(code(1, 20_000, &["resize:width=10000"]), "output_too_large");
        assert_eq!(
            code(20_000, 1, &["resize:height=10000"]),
            "output_too_large"
        );
        let err = plan(1, 20_000, &["resize:width=10000"]).unwrap_err();
        assert!(err.to_string().contains("10000x200000000"), "{err}");
        // The largest sides a u32 can hold: still a refusal, never an overflow.
        let huge = resize_dimensions(Size::new(1, u32::MAX), Some(u32::MAX), None, Fit::Contain);
        assert_eq!(huge.0, u64::from(u32::MAX));
        assert!(huge.1 > u64::from(u32::MAX));
        assert!(within("resize", huge, &ImageLimits::default()).is_err());
    }

    #[test]
    fn enlarging_past_the_pixel_limit_is_refused() {
        for fit in ["fill", "cover"] {
            let op = format!("resize:width=10000,height=10000,fit={fit}");
            assert_eq!(code(64, 64, &[op.as_str()]), "output_too_large", "{fit}");
        }
        // contain keeps the aspect ratio: 64x32 into 10000x10000 is 10000x5000 = 50 MP.
        assert_eq!(
            code(64, 32, &["resize:width=10000,height=10000"]),
            "output_too_large"
        );
        assert!(plan(64, 32, &["resize:width=8000,height=4000"]).is_ok());
    }

    #[test]
    fn chained_resizes_are_checked_at_every_step() {
        // Each step alone is allowed, the second one's output is not.
        assert_eq!(
            code(
                100,
                100,
                &[
                    "resize:width=5000",
                    "resize:height=10000",
                    "thumbnail:size=64"
                ]
            ),
            "output_too_large"
        );
        assert!(plan(100, 100, &["resize:width=5000", "resize:height=6000"]).is_ok());
    }

    #[test]
    fn a_watermark_on_a_huge_canvas_is_refused() {
        assert_eq!(
            code(
                2,
                1,
                &[
                    "resize:width=10000,height=10000,fit=fill",
                    "watermark:text=hi"
                ]
            ),
            "output_too_large"
        );
        // Within the pixel limit, but over a small working-memory budget.
        let small = ImageLimits {
            max_working_bytes: 256 << 20,
            ..ImageLimits::default()
        };
        let p = pipeline(&[
            "resize:width=8000,height=4000,fit=fill",
            "watermark:text=hi",
        ]);
        let err = Plan::new(p.operations(), Size::new(2, 1), &small).unwrap_err();
        assert_eq!(err.code(), "over_memory_budget");
        assert!(err.to_string().contains("limit is 256 MiB"), "{err}");
    }

    #[test]
    fn stages_follow_the_operations() {
        let p = pipeline(&["remove_background", "resize:width=10", "encode:format=png"]);
        let s: Vec<_> = stages(p.operations())
            .iter()
            .map(|s| (s.seq, s.stage.as_str()))
            .collect();
        assert_eq!(
            s,
            [
                (1, "uploaded"),
                (2, "queued"),
                (3, "received"),
                (10, "segmenting"),
                (11, "compositing"),
                (12, "resizing"),
                (14, "encoding"),
                (40, "stored"),
                (41, "done"),
            ]
        );
    }
}
