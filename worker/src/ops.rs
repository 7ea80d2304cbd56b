//! Runs a job's pipeline ([`Pipeline`]) on one image: decode under limits (EXIF orientation
//! applied), each operation in order, then encode.
//!
//! Pixels stay 8-bit throughout (a 16-bit PNG is reduced on decode); an image with alpha stays
//! RGBA (resizing premultiplies, so transparent edges do not darken), and JPEG output is refused
//! when a pixel is actually transparent.

use std::io::Cursor;
use std::time::{Duration, Instant};

use backless_common::db::OutputFormat;
use backless_common::job::plan::{resize_dimensions, thumbnail_dimensions};
use backless_common::job::{FilterKind, Fit, Operation, Plan, Position, Size};
use backless_common::limits::ImageLimits;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, GrayImage, Rgba, RgbaImage};

use crate::model::Segmenter;
use crate::pipeline::{self, Crop, Output, OutputOptions, PipelineError, Rgb};

/// The watermark's typeface: DejaVu Sans Bold (free licence, see assets/fonts/LICENSE-DejaVu.txt).
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-Bold.ttf");

/// What [`run`] reports while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The original is decoded.
    Decoded(Duration),
    /// Operation `index` begins.
    Started(usize),
    /// `remove_background`'s network finished (compositing follows).
    Segmented(Duration),
    /// Operation `index` ended after this long.
    Finished(usize, Duration),
}

/// The image between operations, and the subject mask once `remove_background` has run.
pub struct Work {
    pub img: DynamicImage,
    pub mask: Option<GrayImage>,
}

impl Work {
    /// A decoded image about to go through operations (reduced to 8 bits per channel).
    pub fn new(img: DynamicImage) -> Self {
        Self {
            img: eight_bit(img),
            mask: None,
        }
    }
}

/// Run `ops` (a validated pipeline, ending with `encode`) on `bytes`. `segmenter` is needed only
/// when the pipeline removes the background. The job's [`Plan`] is worked out from the header
/// before any pixel is decoded: a pipeline that would break a limit fails here, having
/// allocated nothing.
pub fn run(
    ops: &[Operation],
    bytes: &[u8],
    limits: &ImageLimits,
    segmenter: Option<&Segmenter>,
    mut progress: impl FnMut(Progress),
) -> Result<Output, PipelineError> {
    let t = Instant::now();
    let img = pipeline::decode_checked(bytes, limits, |size| {
        Plan::new(ops, size, limits)?;
        Ok(())
    })?;
    let mut work = Work::new(img);
    progress(Progress::Decoded(t.elapsed()));
    let mut encoded = None;
    for (i, op) in ops.iter().enumerate() {
        progress(Progress::Started(i));
        let t = Instant::now();
        if let Some(bytes) = apply(&mut work, op, segmenter, &mut progress)? {
            encoded = Some(bytes);
        }
        progress(Progress::Finished(i, t.elapsed()));
    }
    let (format, bytes) = match encoded {
        Some(e) => e,
        None => (
            OutputFormat::Png,
            encode(&work.img, OutputFormat::Png, None)?,
        ),
    };
    Ok(Output {
        bytes,
        content_type: format.content_type(),
        extension: format.extension(),
        width: work.img.width(),
        height: work.img.height(),
    })
}

/// One operation on `work`; `encode` returns the encoded bytes.
pub fn apply(
    work: &mut Work,
    op: &Operation,
    segmenter: Option<&Segmenter>,
    progress: &mut impl FnMut(Progress),
) -> Result<Option<(OutputFormat, Vec<u8>)>, PipelineError> {
    let t = Instant::now();
    match op {
        Operation::RemoveBackground {
            mask_only,
            bg_color,
            decontaminate,
            ..
        } => {
            let seg = segmenter.ok_or(PipelineError::ModelMissing)?;
            let mask = seg.mask(&work.img)?;
            progress(Progress::Segmented(t.elapsed()));
            let opts = OutputOptions {
                format: OutputFormat::Png,
                mask_only: *mask_only,
                bg_color: bg_color.as_deref().and_then(|c| c.parse::<Rgb>().ok()),
                crop: None,
                decontaminate: *decontaminate,
            };
            let img = std::mem::replace(&mut work.img, DynamicImage::new_luma8(0, 0));
            work.img = pipeline::compose(img, &mask, &opts)?;
            work.mask = Some(mask);
        }
        Operation::CropToSubject { threshold, margin } => {
            let crop = Crop {
                threshold: *threshold,
                margin: *margin,
            };
            if let Some(mask) = &work.mask
                && let Some((x, y, w, h)) = pipeline::subject_box(mask, &crop)
            {
                work.img = work.img.crop_imm(x, y, w, h);
                work.mask = Some(image::imageops::crop_imm(mask, x, y, w, h).to_image());
            }
        }
        Operation::Resize { width, height, fit } => {
            work.img = resize(&work.img, *width, *height, *fit)?;
            work.mask = None;
        }
        Operation::Thumbnail { size, pixels } => {
            work.img = thumbnail(&work.img, *size, *pixels)?;
            work.mask = None;
        }
        Operation::Watermark {
            text,
            position,
            opacity,
        } => watermark(&mut work.img, text, *position, *opacity),
        Operation::Filter { filter, value } => {
            let value = value.or(filter.default_value()).unwrap_or(1.0);
            work.img = apply_filter(&work.img, *filter, value);
        }
        Operation::Encode { format, quality } => {
            return Ok(Some((*format, encode(&work.img, *format, *quality)?)));
        }
    }
    Ok(None)
}

/// 8-bit pixels in one of the four layouts the operations handle.
fn eight_bit(img: DynamicImage) -> DynamicImage {
    match img {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_) => img,
        DynamicImage::ImageLuma16(_) => DynamicImage::ImageLuma8(img.to_luma8()),
        DynamicImage::ImageLumaA16(_) => DynamicImage::ImageLumaA8(img.to_luma_alpha8()),
        other if other.color().has_alpha() => DynamicImage::ImageRgba8(other.to_rgba8()),
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    }
}

/// Scale to exactly `w` x `h` (Lanczos-3; alpha premultiplied while filtering).
fn scale(img: &DynamicImage, w: u32, h: u32, cover: bool) -> Result<DynamicImage, PipelineError> {
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

fn resize(
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
fn thumbnail(
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

/// Draw `text` near the `position` corner: white glyphs over a soft dark shadow, so it reads on
/// light and dark photos alike. Its height is 5% of the shorter side (at least 12 px), reduced
/// until it fits within 90% of the width.
fn watermark(img: &mut DynamicImage, text: &str, position: Position, opacity: f32) {
    use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};

    let font = FontRef::try_from_slice(FONT).expect("the embedded font parses");
    let (iw, ih) = (img.width() as f32, img.height() as f32);
    let mut px = (iw.min(ih) * 0.05).max(12.0);
    let layout = |px: f32| {
        let scaled = font.as_scaled(PxScale::from(px));
        let mut caret = 0.0f32;
        let mut glyphs = Vec::new();
        let mut prev = None;
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(p) = prev {
                caret += scaled.kern(p, id);
            }
            glyphs.push(id.with_scale_and_position(px, point(caret, scaled.ascent())));
            caret += scaled.h_advance(id);
            prev = Some(id);
        }
        (glyphs, caret, scaled.ascent() - scaled.descent())
    };
    let (mut glyphs, mut width, mut height) = layout(px);
    if width > iw * 0.9 && width > 0.0 {
        px = (px * iw * 0.9 / width).max(4.0);
        (glyphs, width, height) = layout(px);
    }
    let margin = (px * 0.5).round();
    let x0 = match position {
        Position::TopLeft | Position::BottomLeft => margin,
        Position::TopRight | Position::BottomRight => iw - margin - width,
        Position::Center => (iw - width) / 2.0,
    };
    let y0 = match position {
        Position::TopLeft | Position::TopRight => margin,
        Position::BottomLeft | Position::BottomRight => ih - margin - height,
        Position::Center => (ih - height) / 2.0,
    };
    let shadow = (px / 16.0).max(1.0);

    // Coverage of the text (and of its shadow), accumulated over all glyphs, kept for the box
    // they cover only: the working memory follows the text, not the canvas.
    let outlined: Vec<_> = glyphs
        .into_iter()
        .filter_map(|g| font.outline_glyph(g))
        .collect();
    let (w, h) = (img.width(), img.height());
    let (mut bx0, mut by0, mut bx1, mut by1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for o in &outlined {
        let b = o.px_bounds();
        bx0 = bx0.min(x0 + b.min.x);
        by0 = by0.min(y0 + b.min.y);
        bx1 = bx1.max(x0 + b.max.x + shadow);
        by1 = by1.max(y0 + b.max.y + shadow);
    }
    let clamp = |v: f32, max: u32| v.clamp(0.0, max as f32) as u32;
    let (bx0, by0) = (clamp(bx0.floor() - 1.0, w), clamp(by0.floor() - 1.0, h));
    let (bx1, by1) = (clamp(bx1.ceil() + 1.0, w), clamp(by1.ceil() + 1.0, h));
    if bx1 <= bx0 || by1 <= by0 {
        return;
    }
    let (bw, bh) = ((bx1 - bx0) as usize, (by1 - by0) as usize);
    let mut text_cov = vec![0f32; bw * bh];
    let mut shadow_cov = vec![0f32; bw * bh];
    for outlined in &outlined {
        let b = outlined.px_bounds();
        outlined.draw(|gx, gy, c| {
            for (cov, dx) in [(&mut text_cov, 0.0), (&mut shadow_cov, shadow)] {
                let x = (x0 + b.min.x + gx as f32 + dx).round();
                let y = (y0 + b.min.y + gy as f32 + dx).round();
                if x >= bx0 as f32 && y >= by0 as f32 && x < bx1 as f32 && y < by1 as f32 {
                    let i = (y as u32 - by0) as usize * bw + (x as u32 - bx0) as usize;
                    cov[i] = (cov[i] + c).min(1.0);
                }
            }
        });
    }
    let mut rgba: RgbaImage = img.to_rgba8();
    for (row, y) in (by0..by1).enumerate() {
        for (col, x) in (bx0..bx1).enumerate() {
            let i = row * bw + col;
            let (t, s) = (text_cov[i], shadow_cov[i]);
            let p = rgba.get_pixel_mut(x, y);
            if s > 0.0 {
                over(p, [0, 0, 0], s * opacity * 0.6);
            }
            if t > 0.0 {
                over(p, [255, 255, 255], t * opacity);
            }
        }
    }
    *img = match img {
        DynamicImage::ImageRgba8(_) | DynamicImage::ImageLumaA8(_) => {
            DynamicImage::ImageRgba8(rgba)
        }
        DynamicImage::ImageLuma8(_) => {
            DynamicImage::ImageLuma8(DynamicImage::ImageRgba8(rgba).to_luma8())
        }
        _ => DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(rgba).to_rgb8()),
    };
}

/// Porter-Duff "over": `colour` at coverage `a` onto `p` (which may be transparent).
fn over(p: &mut Rgba<u8>, colour: [u8; 3], a: f32) {
    let da = f32::from(p.0[3]) / 255.0;
    let out_a = a + da * (1.0 - a);
    if out_a <= 0.0 {
        return;
    }
    for (v, &c) in p.0[..3].iter_mut().zip(&colour) {
        let mixed = (f32::from(c) * a + f32::from(*v) * da * (1.0 - a)) / out_a;
        *v = mixed.round().clamp(0.0, 255.0) as u8;
    }
    p.0[3] = (out_a * 255.0).round() as u8;
}

/// Apply `lut` to the colour channels (alpha untouched).
fn map_colours(img: &DynamicImage, lut: &[u8; 256]) -> DynamicImage {
    let mut out = img.clone();
    let (bytes, channels, has_alpha): (&mut [u8], usize, bool) = match &mut out {
        DynamicImage::ImageLuma8(b) => (b, 1, false),
        DynamicImage::ImageLumaA8(b) => (b, 2, true),
        DynamicImage::ImageRgb8(b) => (b, 3, false),
        DynamicImage::ImageRgba8(b) => (b, 4, true),
        _ => unreachable!("operations see 8-bit images only"),
    };
    let colour = if has_alpha { channels - 1 } else { channels };
    for px in bytes.chunks_exact_mut(channels) {
        for v in &mut px[..colour] {
            *v = lut[*v as usize];
        }
    }
    out
}

fn lut(f: impl Fn(f32) -> f32) -> [u8; 256] {
    std::array::from_fn(|v| f(v as f32).round().clamp(0.0, 255.0) as u8)
}

/// Mean luminance (ITU-R 601, as Pillow's `ImageEnhance.Contrast` takes it), rounded.
fn mean_luma(img: &DynamicImage) -> f32 {
    let luma = img.to_luma8();
    let sum: u64 = luma.as_raw().iter().map(|&v| u64::from(v)).sum();
    (sum as f64 / luma.as_raw().len().max(1) as f64).round() as f32
}

fn apply_filter(img: &DynamicImage, kind: FilterKind, value: f32) -> DynamicImage {
    match kind {
        FilterKind::Grayscale => {
            if img.color().has_alpha() {
                DynamicImage::ImageLumaA8(img.to_luma_alpha8())
            } else {
                DynamicImage::ImageLuma8(img.to_luma8())
            }
        }
        FilterKind::Blur => img.fast_blur(value),
        FilterKind::Sharpen => sharpen(img, value),
        FilterKind::Brightness => map_colours(img, &lut(|v| v * value)),
        FilterKind::Contrast => {
            let mean = mean_luma(img);
            map_colours(img, &lut(|v| mean + (v - mean) * value))
        }
    }
}

/// Unsharp mask: `v + 1.5 (v - blur(v))` where the difference exceeds 3 levels (Pillow's
/// `UnsharpMask` defaults: percent 150, threshold 3).
fn sharpen(img: &DynamicImage, sigma: f32) -> DynamicImage {
    let blurred = img.fast_blur(sigma);
    let mut out = img.clone();
    let channels = usize::from(img.color().channel_count());
    let colour = if img.color().has_alpha() {
        channels - 1
    } else {
        channels
    };
    let (Some(dst), src) = (bytes_mut(&mut out), blurred.as_bytes()) else {
        return out;
    };
    for (px, b) in dst
        .chunks_exact_mut(channels)
        .zip(src.chunks_exact(channels))
    {
        for (v, &bv) in px[..colour].iter_mut().zip(&b[..colour]) {
            let diff = i32::from(*v) - i32::from(bv);
            if diff.abs() > 3 {
                *v = (i32::from(*v) + diff * 3 / 2).clamp(0, 255) as u8;
            }
        }
    }
    out
}

fn bytes_mut(img: &mut DynamicImage) -> Option<&mut [u8]> {
    match img {
        DynamicImage::ImageLuma8(b) => Some(b),
        DynamicImage::ImageLumaA8(b) => Some(b),
        DynamicImage::ImageRgb8(b) => Some(b),
        DynamicImage::ImageRgba8(b) => Some(b),
        _ => None,
    }
}

/// True when some pixel is not fully opaque.
fn has_transparency(img: &DynamicImage) -> bool {
    match img {
        DynamicImage::ImageLumaA8(b) => b.pixels().any(|p| p.0[1] < 255),
        DynamicImage::ImageRgba8(b) => b.pixels().any(|p| p.0[3] < 255),
        _ => false,
    }
}

/// Encode (no metadata is ever written). JPEG refuses transparent pixels; an opaque alpha
/// channel is dropped.
pub fn encode(
    img: &DynamicImage,
    format: OutputFormat,
    quality: Option<u8>,
) -> Result<Vec<u8>, PipelineError> {
    if format != OutputFormat::Jpeg {
        return pipeline::encode(img, format);
    }
    if has_transparency(img) {
        return Err(PipelineError::JpegNeedsBackground);
    }
    let mut buf = Cursor::new(Vec::new());
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality.unwrap_or(90));
    let result = match img {
        DynamicImage::ImageLuma8(_) => img.write_with_encoder(enc),
        DynamicImage::ImageLumaA8(_) => {
            DynamicImage::ImageLuma8(img.to_luma8()).write_with_encoder(enc)
        }
        _ => DynamicImage::ImageRgb8(img.to_rgb8()).write_with_encoder(enc),
    };
    result.map_err(PipelineError::Encode)?;
    Ok(buf.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgb as Px, RgbImage};

    /// A photo-like gradient with a red square, `w` x `h`.
    fn photo(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            if (w / 4..w / 2).contains(&x) && (h / 4..h / 2).contains(&y) {
                Px([220, 30, 30])
            } else {
                Px([(x * 255 / w) as u8, (y * 255 / h) as u8, 128])
            }
        }))
    }

    fn png(img: &DynamicImage) -> Vec<u8> {
        pipeline::encode(img, OutputFormat::Png).unwrap()
    }

    fn run_ops(img: &DynamicImage, ops: &[&str]) -> Result<(Output, DynamicImage), PipelineError> {
        let models: Vec<String> = vec!["u2netp".into()];
        let pipeline = backless_common::job::Pipeline::parse(ops, &models).unwrap();
        let out = run(
            pipeline.operations(),
            &png(img),
            &ImageLimits::default(),
            None,
            |_| {},
        )?;
        let back = image::load_from_memory(&out.bytes).unwrap();
        Ok((out, back))
    }

    /// Every operation but the model's on a real photo (301x200): sizes, aspect ratio, and the
    /// encoded result decodes back.
    #[test]
    fn each_operation_on_a_real_photo() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/photos/chelsea.png"
        );
        let photo = image::open(path).unwrap();
        assert_eq!((photo.width(), photo.height()), (301, 200));
        let cases: [(&[&str], (u32, u32)); 9] = [
            (&["resize:width=150"], (150, 100)),
            (&["resize:height=50,fit=contain"], (75, 50)),
            (&["resize:width=100,height=100,fit=cover"], (100, 100)),
            (&["resize:width=100,height=100,fit=contain"], (100, 66)),
            (&["thumbnail:size=64", "encode:format=webp"], (64, 43)),
            (
                &[
                    "watermark:text=Chelsea,position=top_left",
                    "encode:format=jpeg",
                ],
                (301, 200),
            ),
            (&["filter:blur=1.5", "filter:sharpen"], (301, 200)),
            (
                &["filter:brightness=1.2", "filter:contrast=0.8"],
                (301, 200),
            ),
            (
                &["filter:grayscale", "encode:format=jpeg,quality=70"],
                (301, 200),
            ),
        ];
        for (ops, size) in cases {
            let (out, back) = run_ops(&photo, ops).unwrap();
            assert_eq!((out.width, out.height), size, "{ops:?}");
            assert_eq!((back.width(), back.height()), size, "{ops:?}");
            // The cat is still there: the result is not a flat image.
            let luma = back.to_luma8();
            let (lo, hi) = luma
                .pixels()
                .fold((255u8, 0u8), |(lo, hi), p| (lo.min(p.0[0]), hi.max(p.0[0])));
            assert!(hi - lo > 100, "{ops:?}: range {lo}..{hi}");
        }
    }

    fn resize_dimensions(
        (w, h): (u32, u32),
        width: Option<u32>,
        height: Option<u32>,
        fit: Fit,
    ) -> (u64, u64) {
        super::resize_dimensions(Size::new(w, h), width, height, fit)
    }

    #[test]
    fn resize_dimensions_follow_the_fit() {
        assert_eq!(
            resize_dimensions((4000, 3000), Some(800), None, Fit::Contain),
            (800, 600)
        );
        assert_eq!(
            resize_dimensions((4000, 3000), None, Some(300), Fit::Contain),
            (400, 300)
        );
        assert_eq!(
            resize_dimensions((4000, 3000), Some(500), Some(500), Fit::Contain),
            (500, 375)
        );
        assert_eq!(
            resize_dimensions((4000, 3000), Some(500), Some(500), Fit::Cover),
            (500, 500)
        );
        assert_eq!(
            resize_dimensions((4000, 3000), Some(500), Some(100), Fit::Fill),
            (500, 100)
        );
        assert_eq!(
            resize_dimensions((3, 1000), Some(1), None, Fit::Contain),
            (1, 333)
        );
    }

    #[test]
    fn resize_keeps_aspect_and_content() {
        let (out, img) = run_ops(&photo(400, 300), &["resize:width=200"]).unwrap();
        assert_eq!((out.width, out.height), (200, 150));
        assert_eq!((img.width(), img.height()), (200, 150));
        // The red square (100..200, 75..150 in the original) is still red at half scale.
        let p = img.to_rgb8().get_pixel(75, 55).0;
        assert!(p[0] > 200 && p[1] < 60, "{p:?}");
        let (_, cover) =
            run_ops(&photo(400, 300), &["resize:width=100,height=100,fit=cover"]).unwrap();
        assert_eq!((cover.width(), cover.height()), (100, 100));
        let (_, fill) =
            run_ops(&photo(400, 300), &["resize:width=100,height=100,fit=fill"]).unwrap();
        assert_eq!((fill.width(), fill.height()), (100, 100));
    }

    #[test]
    fn thumbnail_fits_and_never_enlarges() {
        let (_, t) = run_ops(&photo(1200, 500), &["thumbnail:size=128"]).unwrap();
        assert_eq!((t.width(), t.height()), (128, 53));
        let (_, same) = run_ops(&photo(100, 60), &["thumbnail:size=128"]).unwrap();
        assert_eq!((same.width(), same.height()), (100, 60));
        let (_, capped) = run_ops(&photo(1200, 500), &["thumbnail:pixels=60000"]).unwrap();
        assert_eq!((capped.width(), capped.height()), (379, 158));
        // The far reduction (box first, then Lanczos) still keeps the square's colour.
        let p = t.to_rgb8().get_pixel(48, 18).0;
        assert!(p[0] > 180 && p[1] < 80, "{p:?}");
    }

    #[test]
    fn resize_premultiplies_alpha() {
        // Half transparent black, half opaque white: no dark fringe may appear in the white half.
        let img = DynamicImage::ImageRgba8(RgbaImage::from_fn(64, 8, |x, _| {
            if x < 32 {
                Rgba([0, 0, 0, 0])
            } else {
                Rgba([255, 255, 255, 255])
            }
        }));
        let (_, out) = run_ops(&img, &["resize:width=16"]).unwrap();
        let out = out.to_rgba8();
        for x in 0..16 {
            let p = out.get_pixel(x, 1).0;
            if p[3] > 0 {
                assert!(p[0] > 240, "dark fringe at {x}: {p:?}");
            }
        }
    }

    #[test]
    fn watermark_lands_in_its_corner() {
        let base = photo(640, 480);
        for (position, (qx, qy)) in [
            ("bottom_right", (1, 1)),
            ("top_left", (0, 0)),
            ("top_right", (1, 0)),
            ("bottom_left", (0, 1)),
        ] {
            let op = format!("watermark:text=BackLess,position={position},opacity=1");
            let (_, out) = run_ops(&base, &[op.as_str()]).unwrap();
            let (a, b) = (base.to_rgb8(), out.to_rgb8());
            let mut changed = [[0u32; 2]; 2];
            let mut white = 0;
            for (x, y, p) in b.enumerate_pixels() {
                if p != a.get_pixel(x, y) {
                    changed[(y >= 240) as usize][(x >= 320) as usize] += 1;
                }
                if p.0 == [255, 255, 255] {
                    white += 1;
                }
            }
            let total: u32 = changed.iter().flatten().sum();
            assert!(total > 300, "{position}: only {total} pixels changed");
            assert_eq!(changed[qy][qx], total, "{position}: {changed:?}");
            assert!(white > 100, "{position}: {white} white text pixels");
        }
    }

    #[test]
    fn watermark_on_a_cut_out_is_visible_on_transparent_pixels() {
        let img = DynamicImage::ImageRgba8(RgbaImage::new(800, 600));
        let (_, out) = run_ops(&img, &["watermark:text=Hi,position=center,opacity=0.8"]).unwrap();
        let out = out.to_rgba8();
        let visible = out
            .pixels()
            .filter(|p| p.0[3] > 150 && p.0[0] > 200)
            .count();
        assert!(visible > 100, "{visible}");
        // Centred: the text's pixels are around the middle.
        let (sx, n) = out
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0[3] > 0)
            .fold((0u64, 0u64), |(sx, n), (x, _, _)| {
                (sx + u64::from(x), n + 1)
            });
        assert!((sx / n).abs_diff(400) < 40, "centre at x = {}", sx / n);
    }

    #[test]
    fn filters_do_what_they_say() {
        let base = photo(200, 100);
        let (_, g) = run_ops(&base, &["filter:grayscale"]).unwrap();
        assert_eq!(g.color(), image::ColorType::L8);
        let (_, bright) = run_ops(&base, &["filter:brightness=0.5"]).unwrap();
        let (a, b) = (base.to_rgb8(), bright.to_rgb8());
        assert_eq!(b.get_pixel(60, 30).0, [110, 15, 15]);
        assert_eq!(b.get_pixel(0, 0).0[2], a.get_pixel(0, 0).0[2] / 2);
        let (_, flat) = run_ops(&base, &["filter:contrast=0"]).unwrap();
        let flat = flat.to_rgb8();
        let first = flat.get_pixel(0, 0).0;
        assert!(
            flat.pixels().all(|p| p.0 == first),
            "contrast 0 is one grey"
        );
        assert_eq!(first[0], first[1]);
        // Blur softens the square's hard edge; sharpen makes it harder.
        let edge = |img: &DynamicImage| {
            let p = img.to_rgb8();
            i32::from(p.get_pixel(50, 30).0[0]) - i32::from(p.get_pixel(49, 30).0[0])
        };
        let (_, blurred) = run_ops(&base, &["filter:blur=3"]).unwrap();
        let (_, sharp) = run_ops(&blurred, &["filter:sharpen=2"]).unwrap();
        assert!(
            edge(&blurred) < edge(&base) / 2,
            "{} vs {}",
            edge(&blurred),
            edge(&base)
        );
        assert!(
            edge(&sharp) > edge(&blurred),
            "{} vs {}",
            edge(&sharp),
            edge(&blurred)
        );
    }

    #[test]
    fn formats_decode_back_and_jpeg_refuses_transparency() {
        let base = photo(120, 80);
        for (op, format) in [
            ("encode:format=png", ImageFormat::Png),
            ("encode:format=webp", ImageFormat::WebP),
            ("encode:format=jpeg,quality=60", ImageFormat::Jpeg),
        ] {
            let (out, back) = run_ops(&base, &["thumbnail:size=64", op]).unwrap();
            assert_eq!(image::guess_format(&out.bytes).ok(), Some(format), "{op}");
            assert_eq!((back.width(), back.height()), (64, 43), "{op}");
        }
        let low = run_ops(&base, &["encode:format=jpeg,quality=5"]).unwrap().0;
        let high = run_ops(&base, &["encode:format=jpeg,quality=95"])
            .unwrap()
            .0;
        assert!(low.bytes.len() < high.bytes.len());

        let see_through =
            DynamicImage::ImageRgba8(RgbaImage::from_pixel(8, 8, Rgba([1, 2, 3, 100])));
        assert!(matches!(
            run_ops(&see_through, &["encode:format=jpeg"]),
            Err(PipelineError::JpegNeedsBackground)
        ));
        // Alpha kept where the format allows it.
        let (_, webp) = run_ops(&see_through, &["encode:format=webp"]).unwrap();
        assert_eq!(webp.to_rgba8().get_pixel(3, 3).0[3], 100);
        let opaque = DynamicImage::ImageRgba8(RgbaImage::from_pixel(8, 8, Rgba([1, 2, 3, 255])));
        assert!(run_ops(&opaque, &["encode:format=jpeg"]).is_ok());
    }

    #[test]
    fn remove_background_without_a_model_is_an_error_not_a_panic() {
        let err = run_ops(&photo(32, 32), &["remove_background"]).unwrap_err();
        assert!(matches!(err, PipelineError::ModelMissing));
    }
}
