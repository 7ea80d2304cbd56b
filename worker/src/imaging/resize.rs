//! `resize` and `thumbnail`: Lanczos-3 with alpha premultiplied while filtering, and a box
//! reduction first when a thumbnail is far below the original.

use backless_common::job::plan::{resize_dimensions, thumbnail_dimensions};
use backless_common::job::{Fit, Size};
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;

use super::PipelineError;

/// Scale to exactly `w` x `h` (Lanczos-3; alpha premultiplied while filtering).
pub(crate) fn scale(
    img: &DynamicImage,
    w: u32,
    h: u32,
    cover: bool,
) -> Result<DynamicImage, PipelineError> {
    if (w, h) == (img.width(), img.height()) {
        return Ok(img.clone());
    }
    let mut options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    if cover {
        options = options.fit_into_destination(None);
    }
    resample(img, w, h, &options)
}

/// `img` resampled to `w` x `h` by the resizer with `options`, in the same pixel layout (LumaA
/// comes back as RGBA: the resizer has no SIMD path for it, and every encoder takes RGBA).
fn resample(
    img: &DynamicImage,
    w: u32,
    h: u32,
    options: &ResizeOptions,
) -> Result<DynamicImage, PipelineError> {
    let rgba;
    let src = match img {
        DynamicImage::ImageLumaA8(_) => {
            rgba = DynamicImage::ImageRgba8(img.to_rgba8());
            &rgba
        }
        _ => img,
    };
    let mut dst = match src {
        DynamicImage::ImageLuma8(_) => DynamicImage::new_luma8(w, h),
        DynamicImage::ImageRgb8(_) => DynamicImage::new_rgb8(w, h),
        _ => DynamicImage::new_rgba8(w, h),
    };
    Resizer::new().resize(src, &mut dst, options).map_err(|e| {
        tracing::warn!(error = %e, "resampling failed");
        PipelineError::Operation("the image could not be resized".into())
    })?;
    Ok(dst)
}

/// A planned side as a `u32`: the plan has checked it against the limits, so failing here means
/// the image is not the one planned.
fn planned(op: &str, (w, h): (u64, u64)) -> Result<(u32, u32), PipelineError> {
    match (u32::try_from(w), u32::try_from(h)) {
        (Ok(w), Ok(h)) => Ok((w, h)),
        _ => Err(PipelineError::Operation(format!(
            "{op} would make a {w}x{h} image"
        ))),
    }
}

pub(crate) fn resize(
    img: &DynamicImage,
    width: Option<u32>,
    height: Option<u32>,
    fit: Fit,
) -> Result<DynamicImage, PipelineError> {
    let size = Size::new(img.width(), img.height());
    let (w, h) = planned("resize", resize_dimensions(size, width, height, fit))?;
    let cover = fit == Fit::Cover && width.is_some() && height.is_some();
    scale(img, w, h, cover)
}

/// Fit inside `size` x `size`, keeping the aspect ratio, never enlarging.
pub(crate) fn thumbnail(
    img: &DynamicImage,
    size: Option<u32>,
    pixels: Option<u64>,
) -> Result<DynamicImage, PipelineError> {
    let from = Size::new(img.width(), img.height());
    let (w, h) = planned("thumbnail", thumbnail_dimensions(from, size, pixels))?;
    if (w, h) == (img.width(), img.height()) {
        return Ok(img.clone());
    }
    // Far below the original, a box reduction first keeps Lanczos's window small, as Pillow's
    // `thumbnail` (`reducing_gap`) does; the final Lanczos pass is at least 2x from the target.
    let factor = (img.width() / w).min(img.height() / h) / 2;
    if factor >= 2 {
        let reduced = box_reduce(img, factor)?;
        return scale(&reduced, w, h, false);
    }
    scale(img, w, h, false)
}

/// Average `factor` x `factor` blocks (edges keep partial blocks).
fn box_reduce(img: &DynamicImage, factor: u32) -> Result<DynamicImage, PipelineError> {
    let (w, h) = (img.width().div_ceil(factor), img.height().div_ceil(factor));
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Box))
        .use_alpha(true);
    resample(img, w, h, &options)
}
