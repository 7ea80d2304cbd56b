//! The image operations a job runs, under one name: decode under limits (EXIF orientation
//! applied), each operation of the pipeline in order (the cut-out, resize, watermark, filter,
//! ...), then encode.
//!
//! Pixels stay 8-bit throughout (a 16-bit PNG is reduced on decode); an image with alpha stays
//! RGBA (resizing premultiplies, so transparent edges do not darken), and JPEG output is refused
//! when a pixel is actually transparent.

pub mod cutout;
pub mod decode;
pub mod encode;
mod error;
mod filter;
mod options;
pub mod resample;
mod resize;
mod watermark;

use std::time::{Duration, Instant};

use backless_common::job::{Operation, Plan};
use backless_common::limits::ImageLimits;
use image::{DynamicImage, GrayImage};

use self::cutout::{backdrop, keep_region, place};
pub use self::decode::{decode, decode_checked};
pub use self::encode::encode;
pub use self::error::PipelineError;
use self::filter::apply_filter;
pub use self::options::{Crop, Output, OutputFormat, OutputOptions, Rgb};
use self::resize::{resize, thumbnail};
use self::watermark::watermark;
use crate::budget::MemoryBudget;
use crate::model::Segmenter;

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

/// The image between operations, the subject mask once `remove_background` has run, and the
/// colour of its background.
pub struct Work {
    pub img: DynamicImage,
    pub mask: Option<GrayImage>,
    /// The background's pixel in the image's layout: transparent for a cut-out, the painted
    /// colour, or black for a mask.
    pub background: [u8; 4],
}

impl Work {
    /// A decoded image about to go through operations (reduced to 8 bits per channel).
    pub fn new(img: DynamicImage) -> Self {
        Self {
            img: eight_bit(img),
            mask: None,
            background: [0; 4],
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
    background: Option<&[u8]>,
    limits: &ImageLimits,
    segmenter: Option<&Segmenter>,
    progress: impl FnMut(Progress),
) -> Result<Output, PipelineError> {
    run_within(None, ops, bytes, background, limits, segmenter, progress)
}

/// As [`run`], holding what the image will need from `budget` (its [`Plan`]'s working memory,
/// the network's activations if it removes a background, and the bytes given) from the moment
/// its header is read, before any pixel is decoded, until the result is encoded: images run
/// side by side only as far as memory allows.
pub fn run_within(
    budget: Option<&MemoryBudget>,
    ops: &[Operation],
    bytes: &[u8],
    background: Option<&[u8]>,
    limits: &ImageLimits,
    segmenter: Option<&Segmenter>,
    mut progress: impl FnMut(Progress),
) -> Result<Output, PipelineError> {
    let mut t = Instant::now();
    // Held until this function returns.
    let mut _reservation = None;
    let img = decode_checked(bytes, limits, |size| {
        let plan = Plan::new(ops, size, limits)?;
        if let Some(budget) = budget {
            _reservation = Some(budget.reserve(reserved_bytes(&plan, ops, segmenter, bytes)));
            // The decode's time starts once there is room for it.
            t = Instant::now();
        }
        Ok(())
    })?;
    let mut work = Work::new(img);
    progress(Progress::Decoded(t.elapsed()));
    let mut encoded = None;
    for (i, op) in ops.iter().enumerate() {
        progress(Progress::Started(i));
        let t = Instant::now();
        if let Operation::Backdrop = op {
            let background = background.ok_or(PipelineError::BackgroundMissing)?;
            backdrop(&mut work, background, limits)?;
        } else if let Some(bytes) = apply(&mut work, op, segmenter, &mut progress)? {
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

/// What an image running `ops` under `plan` reserves from a [`MemoryBudget`].
fn reserved_bytes(
    plan: &Plan,
    ops: &[Operation],
    segmenter: Option<&Segmenter>,
    bytes: &[u8],
) -> u64 {
    let removes = ops
        .iter()
        .any(|op| matches!(op, Operation::RemoveBackground { .. }));
    let inference = match segmenter {
        Some(seg) if removes => seg.info.arch.inference_bytes(),
        _ => 0,
    };
    plan.working_bytes
        .saturating_add(inference)
        .saturating_add(bytes.len() as u64)
}

/// Background removal on one file with the CLI's options (`worker remove`): the same pipeline
/// a job with those options runs.
pub fn remove_background(
    segmenter: &Segmenter,
    bytes: &[u8],
    limits: &ImageLimits,
    opts: &OutputOptions,
) -> Result<Output, PipelineError> {
    opts.check()?;
    let ops = opts.operations(&segmenter.info.name);
    run(&ops, bytes, None, limits, Some(segmenter), |_| {})
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
            matting,
            roi,
            ..
        } => {
            let seg = segmenter.ok_or(PipelineError::ModelMissing)?;
            let mut mask = seg.mask(&work.img)?;
            progress(Progress::Segmented(t.elapsed()));
            if *matting {
                let params = cutout::matting::Params::default();
                mask = match &work.img {
                    DynamicImage::ImageRgb8(rgb) => cutout::matting::refine(rgb, &mask, &params),
                    other => cutout::matting::refine(&other.to_rgb8(), &mask, &params),
                };
            }
            // After matting, whose unknown band may reach past the region's edge.
            if let Some(roi) = roi {
                keep_region(&mut mask, roi);
            }
            let opts = OutputOptions {
                format: OutputFormat::Png,
                quality: None,
                mask_only: *mask_only,
                bg_color: bg_color.as_deref().and_then(|c| c.parse::<Rgb>().ok()),
                crop: None,
                decontaminate: *decontaminate,
                matting: *matting,
            };
            work.background = match opts.bg_color {
                Some(Rgb([r, g, b])) if !mask_only => [r, g, b, 255],
                _ => [0; 4],
            };
            let img = std::mem::replace(&mut work.img, DynamicImage::new_luma8(0, 0));
            work.img = cutout::compose(img, &mask, &opts)?;
            work.mask = Some(mask);
        }
        // Needs the background image: see `run`.
        Operation::Backdrop => return Err(PipelineError::BackgroundMissing),
        Operation::Place { scale, position } => {
            if let Some(mask) = work.mask.take() {
                work.img = place(&work.img, &mask, work.background, *scale, *position)?;
            }
        }
        Operation::CropToSubject { threshold, margin } => {
            let crop = Crop {
                threshold: *threshold,
                margin: *margin,
            };
            if let Some(mask) = &work.mask
                && let Some((x, y, w, h)) = cutout::subject_box(mask, &crop)
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
pub(crate) fn eight_bit(img: DynamicImage) -> DynamicImage {
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use backless_common::job::{Fit, Size};
    use image::{ImageFormat, Rgb as Px, RgbImage, Rgba, RgbaImage};

    use super::*;

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
        encode(img, OutputFormat::Png, None).unwrap()
    }

    /// `ops` on `img`, without a model: the encoded output (for outputs that are not one image).
    fn run_ops_raw(img: &DynamicImage, ops: &[&str]) -> Result<Output, PipelineError> {
        let models: Vec<String> = vec!["u2netp".into()];
        let pipeline = backless_common::job::Pipeline::parse(ops, &models).unwrap();
        run(
            pipeline.operations(),
            &png(img),
            None,
            &ImageLimits::default(),
            None,
            |_| {},
        )
    }

    /// `ops` on `img`, and the output decoded back.
    fn run_ops(img: &DynamicImage, ops: &[&str]) -> Result<(Output, DynamicImage), PipelineError> {
        let out = run_ops_raw(img, ops)?;
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
        backless_common::job::plan::resize_dimensions(Size::new(w, h), width, height, fit)
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
            ("encode:format=webp,quality=70", ImageFormat::WebP),
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
        let (_, lossy) = run_ops(&see_through, &["encode:format=webp,quality=50"]).unwrap();
        assert_eq!(lossy.to_rgba8().get_pixel(3, 3).0[3], 100);
        let opaque = DynamicImage::ImageRgba8(RgbaImage::from_pixel(8, 8, Rgba([1, 2, 3, 255])));
        assert!(run_ops(&opaque, &["encode:format=jpeg"]).is_ok());
    }

    /// A 100x50 cut-out with a 10x10 opaque red subject at (20, 10), and its mask.
    fn cut_out() -> (DynamicImage, GrayImage) {
        let inside = |x: u32, y: u32| (20..30).contains(&x) && (10..20).contains(&y);
        let img = RgbaImage::from_fn(100, 50, |x, y| match inside(x, y) {
            true => Rgba([200, 0, 0, 255]),
            false => Rgba([0; 4]),
        });
        let mask = GrayImage::from_fn(100, 50, |x, y| {
            image::Luma([if inside(x, y) { 255 } else { 0 }])
        });
        (DynamicImage::ImageRgba8(img), mask)
    }

    /// The box of pixels with alpha (or, opaque images, red) above 128.
    fn opaque_box(img: &DynamicImage) -> (u32, u32, u32, u32) {
        let rgba = img.to_rgba8();
        let mask = GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let p = rgba.get_pixel(x, y).0;
            image::Luma([if p[3] == 255 && p[0] > 128 && p[1] < 128 {
                255
            } else {
                0
            }])
        });
        cutout::subject_box(&mask, &Crop::default()).unwrap()
    }

    #[test]
    fn place_scales_and_moves_the_subject_on_its_background() {
        let (img, mask) = cut_out();
        // 50%: the 10x10 box fits in 50x25, so it becomes 25x25, centred.
        let out = place(&img, &mask, [0; 4], Some(50.0), None).unwrap();
        assert_eq!((out.width(), out.height()), (100, 50));
        let (x, y, w, h) = opaque_box(&out);
        assert!((24..=26).contains(&w) && (24..=26).contains(&h), "{w}x{h}");
        assert!(
            (x as i32 - 37).abs() <= 1 && (y as i32 - 12).abs() <= 1,
            "at {x},{y}"
        );
        assert_eq!(
            out.to_rgba8().get_pixel(0, 0).0,
            [0; 4],
            "the rest stays transparent"
        );
        // Position alone: bottom right, same size.
        let out = place(&img, &mask, [0; 4], None, Some([100.0, 100.0])).unwrap();
        assert_eq!(opaque_box(&out), (90, 40, 10, 10));
        // On a painted background the uncovered area is that colour.
        let painted = DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(img.to_rgba8()).to_rgb8());
        let out = place(&painted, &mask, [0, 0, 255, 255], None, Some([0.0, 0.0])).unwrap();
        assert!(matches!(out, DynamicImage::ImageRgb8(_)));
        assert_eq!(out.to_rgb8().get_pixel(99, 49).0, [0, 0, 255]);
        assert_eq!(out.to_rgb8().get_pixel(5, 5).0, [200, 0, 0]);
        // No subject: unchanged.
        let empty = GrayImage::new(100, 50);
        assert_eq!(place(&img, &empty, [0; 4], Some(50.0), None).unwrap(), img);
    }

    #[test]
    fn backdrop_paints_the_background_image_behind_the_cut_out() {
        let (img, _) = cut_out();
        // On the cut-out directly: a pipeline would need the model for remove_background.
        let mut work = Work::new(img.clone());
        // A background of another shape: left half green, right half blue, 40x10; covering a
        // 100x50 canvas crops its sides, so the canvas's left edge is green, its right blue.
        let bg = DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 10, |x, _| {
            if x < 20 {
                image::Rgb([0, 255, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        }));
        backdrop(&mut work, &png(&bg), &ImageLimits::default()).unwrap();
        let out = work.img.to_rgb8();
        assert_eq!(out.dimensions(), (100, 50));
        assert_eq!(out.get_pixel(25, 15).0, [200, 0, 0], "the subject");
        assert_eq!(out.get_pixel(2, 40).0, [0, 255, 0]);
        assert_eq!(out.get_pixel(97, 40).0, [0, 0, 255]);

        // A background that is not an image is the job's fault, with its own code.
        let mut work = Work::new(img);
        let err = backdrop(&mut work, b"not an image", &ImageLimits::default()).unwrap_err();
        assert_eq!(err.code(), "invalid_background");
    }

    #[test]
    fn encoders_write_no_hidden_colour() {
        // Whatever reaches the encoder (here an upload's own hidden colours) is cleared too.
        let hidden =
            DynamicImage::ImageRgba8(RgbaImage::from_pixel(3, 3, image::Rgba([9, 8, 7, 0])));
        for format in [OutputFormat::Png, OutputFormat::Webp] {
            let back = image::load_from_memory(&encode(&hidden, format, None).unwrap())
                .unwrap()
                .to_rgba8();
            assert!(back.pixels().all(|p| p.0 == [0; 4]), "{format:?}");
        }
        let la = DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_pixel(
            2,
            2,
            image::LumaA([77, 0]),
        ));
        let back = image::load_from_memory(&encode(&la, OutputFormat::Png, None).unwrap()).unwrap();
        assert!(back.to_luma_alpha8().pixels().all(|p| p.0 == [0, 0]));
    }

    /// Lossy WebP of a cut-out carries nothing of the removed background: the same subject cut
    /// out of a green and of a blue photo gives the same file, byte for byte, at every quality;
    /// alpha is exact, and away from the subject the colour is 0 (near it, lossy colour rings
    /// with the subject's own colours).
    #[test]
    fn lossy_webp_carries_nothing_of_the_removed_background() {
        let (w, h) = (96u32, 64u32);
        let inside = |x: u32, y: u32| (30..66).contains(&x) && (16..48).contains(&y);
        let cut = |background: [u8; 3]| {
            let photo = RgbImage::from_fn(w, h, |x, y| {
                if inside(x, y) {
                    Px([230, 20, 30])
                } else {
                    Px(background)
                }
            });
            let mask = GrayImage::from_fn(w, h, |x, y| {
                image::Luma([if inside(x, y) { 255 } else { 0 }])
            });
            cutout::compose(
                DynamicImage::ImageRgb8(photo),
                &mask,
                &OutputOptions::default(),
            )
            .unwrap()
        };
        let (green, blue) = (cut([0, 255, 0]), cut([0, 0, 255]));
        for quality in [10, 50, 90] {
            let bytes = encode(&green, OutputFormat::Webp, Some(quality)).unwrap();
            assert_eq!(
                bytes,
                encode(&blue, OutputFormat::Webp, Some(quality)).unwrap()
            );
            let back = image::load_from_memory(&bytes).unwrap().to_rgba8();
            for (x, y, p) in back.enumerate_pixels() {
                let a = if inside(x, y) { 255 } else { 0 };
                assert_eq!(p.0[3], a, "alpha at {x},{y} (q {quality})");
                if !(14..82).contains(&x) || !(0..64).contains(&y) {
                    assert!(
                        p.0.iter().all(|&v| v <= 2),
                        "{:?} at {x},{y} (q {quality})",
                        p.0
                    );
                }
            }
        }
    }

    #[test]
    fn roi_clears_the_mask_outside_it() {
        let mut mask = GrayImage::from_pixel(10, 4, image::Luma([255]));
        keep_region(&mut mask, &"20% 0 50% 100%".parse().unwrap());
        let row: Vec<u8> = (0..10).map(|x| mask.get_pixel(x, 2).0[0]).collect();
        assert_eq!(row, [0, 0, 255, 255, 255, 0, 0, 0, 0, 0]);
    }

    /// The files of a zip, by name.
    fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        use std::io::Read;
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        (0..zip.len())
            .map(|i| {
                let mut file = zip.by_index(i).unwrap();
                let name = file.name().unwrap().to_string();
                let mut data = Vec::new();
                file.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn zip_holds_a_colour_jpeg_and_the_alpha_matte_and_no_hidden_colour() {
        // Left half opaque red, right half fully transparent over a saturated green that
        // must not survive, one soft column between.
        let img = DynamicImage::ImageRgba8(RgbaImage::from_fn(32, 16, |x, _| match x {
            0..15 => Rgba([220, 30, 30, 255]),
            15 => Rgba([220, 30, 30, 128]),
            _ => Rgba([0, 255, 0, 0]),
        }));
        let out =
            run_ops_raw(&img, &["thumbnail:size=32", "encode:format=zip,quality=95"]).unwrap();
        assert_eq!(out.content_type, "application/zip");
        assert_eq!((out.width, out.height), (32, 16));
        let files = unzip(&out.bytes);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["color.jpg", "alpha.png"]);
        let colour = image::load_from_memory_with_format(&files[0].1, ImageFormat::Jpeg)
            .unwrap()
            .to_rgb8();
        let alpha = image::load_from_memory_with_format(&files[1].1, ImageFormat::Png).unwrap();
        assert!(
            matches!(alpha, DynamicImage::ImageLuma8(_)),
            "an 8-bit grey matte"
        );
        let alpha = alpha.to_luma8();
        assert_eq!(
            (colour.dimensions(), alpha.dimensions()),
            ((32, 16), (32, 16))
        );
        for (x, a) in [(0, 255), (15, 128), (31, 0)] {
            assert_eq!(alpha.get_pixel(x, 8).0[0], a, "alpha at x={x}");
        }
        let [r, g, _] = colour.get_pixel(4, 8).0;
        assert!(r > 200 && g < 60, "subject colour kept: {r} {g}");
        let [r, g, b] = colour.get_pixel(28, 8).0;
        assert!(
            r.max(g).max(b) < 8,
            "no background colour under alpha 0: {r} {g} {b}"
        );

        // An opaque image gets an all-white matte.
        let out = run_ops_raw(&photo(20, 10), &["encode:format=zip"]).unwrap();
        let alpha = image::load_from_memory(&unzip(&out.bytes)[1].1)
            .unwrap()
            .to_luma8();
        assert!(alpha.pixels().all(|p| p.0[0] == 255));
    }

    #[test]
    fn remove_background_without_a_model_is_an_error_not_a_panic() {
        let err = run_ops(&photo(32, 32), &["remove_background"]).unwrap_err();
        assert!(matches!(err, PipelineError::ModelMissing));
    }
}
