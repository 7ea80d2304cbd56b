//! From uploaded bytes to the finished image: decode under limits (EXIF orientation applied),
//! bring the photo to the model's input as the reference tool does, run the network, bring the
//! mask back to full resolution, composite and encode.

use std::io::Cursor;
use std::str::FromStr;

pub use backless_common::db::OutputFormat;
use backless_common::job::{Margin, PlanError, Size};
use backless_common::limits::{ImageLimits, LimitError};
use candle_core::Tensor;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageFormat, ImageReader, RgbImage, RgbaImage};
use serde::{Deserialize, Serialize};

use backless_common::job::Operation;

use crate::model::{ModelError, ModelInfo, ResizeFilter, Segmenter};
use crate::resample::{self, Filter};

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

/// An sRGB colour, written `#rrggbb`, `rrggbb` or a few names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rgb(pub [u8; 3]);

impl FromStr for Rgb {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let named = match s.to_ascii_lowercase().as_str() {
            "white" => Some([255, 255, 255]),
            "black" => Some([0, 0, 0]),
            "red" => Some([255, 0, 0]),
            "green" => Some([0, 128, 0]),
            "blue" => Some([0, 0, 255]),
            _ => None,
        };
        if let Some(c) = named {
            return Ok(Rgb(c));
        }
        let hex = s.strip_prefix('#').unwrap_or(s);
        let bad = || format!("bad colour {s:?}; use #rrggbb or a name such as white");
        if hex.len() != 6 || !hex.is_ascii() {
            return Err(bad());
        }
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
        Ok(Rgb([byte(0)?, byte(2)?, byte(4)?]))
    }
}

impl TryFrom<String> for Rgb {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Rgb> for String {
    fn from(c: Rgb) -> String {
        format!("#{:02x}{:02x}{:02x}", c.0[0], c.0[1], c.0[2])
    }
}

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
    /// JPEG quality, or lossy WebP at this quality (see [`crate::encode::encode`]).
    pub quality: Option<u8>,
    /// Return the mask alone, as a grayscale image.
    pub mask_only: bool,
    /// Paint the background with this colour instead of making it transparent.
    pub bg_color: Option<Rgb>,
    pub crop: Option<Crop>,
    /// Estimate the subject's colour at soft edges ([`crate::foreground`]) instead of keeping
    /// the photo's, which carries the old background.
    pub decontaminate: bool,
    /// Refine the mask by alpha matting ([`crate::matting`]) before compositing.
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

/// Decode under `limits`: size checked first, then dimensions from the header alone (so a
/// decompression bomb is refused before any pixel is allocated), the frame count an animation
/// declares, then a decode bounded by
/// `image::Limits`, then EXIF orientation applied.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<DynamicImage, PipelineError> {
    decode_checked(bytes, limits, |_| Ok(()))
}

/// As [`decode`], with `before_pixels` called on the image's size as it will be decoded (EXIF
/// orientation applied) once the header is read and before any pixel is: the place to refuse a
/// job whose plan breaks a limit without allocating anything.
pub fn decode_checked(
    bytes: &[u8],
    limits: &ImageLimits,
    before_pixels: impl FnOnce(Size) -> Result<(), PipelineError>,
) -> Result<DynamicImage, PipelineError> {
    if bytes.is_empty() {
        return Err(PipelineError::Empty);
    }
    if bytes.len() as u64 > limits.max_bytes {
        return Err(LimitError::TooManyBytes {
            size: bytes.len() as u64,
            max_bytes: limits.max_bytes,
        }
        .into());
    }
    let format = image::guess_format(bytes).map_err(|_| PipelineError::NotAnImage)?;
    if !matches!(
        format,
        ImageFormat::Png
            | ImageFormat::Jpeg
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::Tiff
    ) {
        return Err(PipelineError::NotAnImage);
    }
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(PipelineError::Truncated);
    }
    let reader = || ImageReader::with_format(Cursor::new(bytes), format);
    let (w, h) = reader().into_dimensions().map_err(PipelineError::Corrupt)?;
    limits.check_dimensions(w, h)?;
    limits.check_animation(bytes)?;

    let mut bounded = image::Limits::default();
    bounded.max_image_width = Some(limits.max_side);
    bounded.max_image_height = Some(limits.max_side);
    // Room for the decoded frame in the widest pixel type (16-bit RGBA) plus decoder scratch.
    bounded.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    let mut reader = reader();
    reader.limits(bounded);
    let mut decoder = reader.into_decoder().map_err(PipelineError::Corrupt)?;
    let orientation = decoder.orientation().map_err(PipelineError::Corrupt)?;
    let (w, h) = decoder.dimensions();
    before_pixels(Size::new(w, h).oriented(orientation))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(PipelineError::Corrupt)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// JPEG decoders fill a truncated scan with grey rather than fail, so check for the end-of-image
/// marker after the first start-of-scan (scan data escapes 0xFF, so the marker cannot occur
/// inside it; EXIF thumbnails, which carry their own, come before the scan).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let find = |from: usize, marker: u8| {
        bytes[from..]
            .windows(2)
            .position(|w| w == [0xFF, marker])
            .map(|p| p + from)
    };
    find(0, 0xDA).is_some_and(|sos| find(sos + 2, 0xD9).is_some())
}

fn filter(f: ResizeFilter) -> Filter {
    match f {
        ResizeFilter::Lanczos => Filter::Lanczos3,
        ResizeFilter::Bilinear => Filter::Bilinear,
    }
}

/// The photo resized to the model's input, as 8-bit RGB (alpha dropped, as Pillow's
/// `convert("RGB")` does).
pub fn model_pixels(img: &DynamicImage, info: &ModelInfo) -> RgbImage {
    let rgb = img.to_rgb8();
    let s = info.input_size as u32;
    resample::resize_rgb(&rgb, s, s, filter(info.resize))
}

/// Normalise 8-bit RGB into the network's `(1, 3, H, W)` f32 input.
pub fn normalise(pixels: &RgbImage, info: &ModelInfo) -> candle_core::Result<Tensor> {
    let n = &info.normalisation;
    let scale = if n.divide_by_max {
        let max = pixels.as_raw().iter().copied().max().unwrap_or(0);
        if max == 0 { 1.0 } else { 1.0 / f32::from(max) }
    } else {
        n.scale
    };
    let (w, h) = (pixels.width() as usize, pixels.height() as usize);
    let mut planes = vec![0f32; 3 * w * h];
    for (i, px) in pixels.pixels().enumerate() {
        for c in 0..3 {
            planes[c * w * h + i] = (f32::from(px.0[c]) * scale - n.mean[c]) / n.std[c];
        }
    }
    Tensor::from_vec(planes, (1, 3, h, w), &candle_core::Device::Cpu)
}

/// The network's `(1, 1, H, W)` output as an 8-bit mask at model resolution, post-processed as
/// the reference tool does (rembg: min-max rescale, then truncation to u8).
pub fn output_to_mask(output: &Tensor, info: &ModelInfo) -> candle_core::Result<GrayImage> {
    let (_, _, h, w) = output.dims4()?;
    let mut values = output.flatten_all()?.to_vec1::<f32>()?;
    if info.min_max_rescale {
        let (lo, hi) = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let range = hi - lo;
        for v in &mut values {
            *v = if range > 0.0 { (*v - lo) / range } else { 0.0 };
        }
    }
    let bytes = values
        .iter()
        .map(|&v| {
            let v = (v * 255.0).clamp(0.0, 255.0);
            if info.min_max_rescale {
                v as u8
            } else {
                v.round() as u8
            }
        })
        .collect();
    Ok(GrayImage::from_raw(w as u32, h as u32, bytes).expect("mask matches its dimensions"))
}

impl Segmenter {
    /// The foreground mask of `img` at `img`'s full resolution.
    pub fn mask(&self, img: &DynamicImage) -> Result<GrayImage, ModelError> {
        let input = normalise(&model_pixels(img, &self.info), &self.info)?;
        let output = self.forward(&input)?;
        let small = output_to_mask(&output.to_device(&candle_core::Device::Cpu)?, &self.info)?;
        Ok(resample::resize_gray(
            &small,
            img.width(),
            img.height(),
            filter(self.info.resize),
        ))
    }
}

/// Bounding box `(x, y, w, h)` of mask values above `crop.threshold`, grown by the margin
/// (percentages of the subject's box) and clamped to the image.
pub fn subject_box(mask: &GrayImage, crop: &Crop) -> Option<(u32, u32, u32, u32)> {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in mask.enumerate_pixels() {
        if p.0[0] > crop.threshold {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    if x0 == u32::MAX {
        return None;
    }
    let [top, right, bottom, left] = crop.margin.resolve(x1 - x0 + 1, y1 - y0 + 1);
    let x0 = x0.saturating_sub(left);
    let y0 = y0.saturating_sub(top);
    let x1 = x1.saturating_add(right).min(mask.width() - 1);
    let y1 = y1.saturating_add(bottom).min(mask.height() - 1);
    Some((x0, y0, x1 - x0 + 1, y1 - y0 + 1))
}

/// Build the output image from the photo and its full-resolution mask.
pub fn compose(
    img: DynamicImage,
    mask: &GrayImage,
    opts: &OutputOptions,
) -> Result<DynamicImage, PipelineError> {
    let mut out = if opts.mask_only {
        DynamicImage::ImageLuma8(mask.clone())
    } else {
        if opts.format == OutputFormat::Jpeg && opts.bg_color.is_none() {
            return Err(PipelineError::JpegNeedsBackground);
        }
        let mut rgb = img.into_rgb8();
        // Soft edges get the subject's own colour; where the mask is all-or-nothing there is
        // nothing to estimate.
        if opts.decontaminate && mask.pixels().any(|m| !matches!(m.0[0], 0 | 255)) {
            rgb = crate::foreground::estimate_foreground(
                &rgb,
                mask,
                &crate::foreground::Params::default(),
            );
        }
        match opts.bg_color {
            Some(Rgb(bg)) => {
                for (p, m) in rgb.pixels_mut().zip(mask.pixels()) {
                    let a = u32::from(m.0[0]);
                    for (v, b) in p.0.iter_mut().zip(bg) {
                        let mixed = u32::from(*v) * a + u32::from(b) * (255 - a);
                        *v = ((mixed + 127) / 255) as u8;
                    }
                }
                DynamicImage::ImageRgb8(rgb)
            }
            None => {
                // The mask as alpha; where it is 0 the colour is 0 too, so nothing of the
                // removed background survives in the file.
                let mut rgba = RgbaImage::new(rgb.width(), rgb.height());
                for ((o, p), m) in rgba.pixels_mut().zip(rgb.pixels()).zip(mask.pixels()) {
                    o.0 = match m.0[0] {
                        0 => [0; 4],
                        a => [p.0[0], p.0[1], p.0[2], a],
                    };
                }
                DynamicImage::ImageRgba8(rgba)
            }
        }
    };
    if let Some(crop) = &opts.crop
        && let Some((x, y, w, h)) = subject_box(mask, crop)
    {
        out = out.crop_imm(x, y, w, h);
    }
    Ok(out)
}

/// True when some fully transparent pixel still carries a colour.
pub fn carries_hidden_colour(img: &DynamicImage) -> bool {
    match img {
        DynamicImage::ImageLumaA8(b) => b.pixels().any(|p| p.0[1] == 0 && p.0[0] != 0),
        DynamicImage::ImageRgba8(b) => b.pixels().any(|p| p.0[3] == 0 && p.0 != [0; 4]),
        _ => false,
    }
}

/// Set the colour of every fully transparent pixel to 0: an image's hidden colours are whatever
/// was there before (the removed background, an upload's own hidden pixels), and anyone who
/// drops the alpha channel would see them.
pub fn clear_hidden_colour(img: &mut DynamicImage) {
    match img {
        DynamicImage::ImageLumaA8(b) => b
            .pixels_mut()
            .filter(|p| p.0[1] == 0)
            .for_each(|p| p.0 = [0; 2]),
        DynamicImage::ImageRgba8(b) => b
            .pixels_mut()
            .filter(|p| p.0[3] == 0)
            .for_each(|p| p.0 = [0; 4]),
        _ => {}
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_parse() {
        assert_eq!("#ff8000".parse::<Rgb>(), Ok(Rgb([255, 128, 0])));
        assert_eq!("FF8000".parse::<Rgb>(), Ok(Rgb([255, 128, 0])));
        assert_eq!("white".parse::<Rgb>(), Ok(Rgb([255; 3])));
        assert!("#ff80".parse::<Rgb>().is_err());
        assert!("#gg0000".parse::<Rgb>().is_err());
    }

    #[test]
    fn subject_box_with_margin() {
        let mut m = GrayImage::new(20, 10);
        m.put_pixel(5, 3, image::Luma([200]));
        m.put_pixel(8, 6, image::Luma([255]));
        m.put_pixel(19, 9, image::Luma([5])); // haze below the threshold
        let c = Crop {
            threshold: 10,
            margin: Margin::px(2),
        };
        assert_eq!(subject_box(&m, &c), Some((3, 1, 8, 8)));
        assert_eq!(subject_box(&GrayImage::new(4, 4), &c), None);
        // A margin past any image is clamped, never wrapped.
        let wide = Crop {
            threshold: 10,
            margin: "10000".parse().unwrap(),
        };
        assert_eq!(subject_box(&m, &wide), Some((0, 0, 20, 10)));
        // Percentages of the subject (4 wide, 4 high): 50% is 2 on every side; top and bottom
        // of its height, left and right of its width.
        let half = Crop {
            threshold: 10,
            margin: "50% 25%".parse().unwrap(),
        };
        assert_eq!(subject_box(&m, &half), Some((4, 1, 6, 8)));
    }

    #[test]
    fn nothing_of_the_background_survives_under_alpha_0() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 2, image::Rgb([200, 100, 50])));
        let mut mask = GrayImage::new(4, 2);
        mask.put_pixel(1, 0, image::Luma([255]));
        mask.put_pixel(2, 0, image::Luma([128]));
        let out = compose(img, &mask, &OutputOptions::default()).unwrap();
        let px = out.to_rgba8();
        assert_eq!(px.get_pixel(0, 0).0, [0, 0, 0, 0]);
        assert_eq!(px.get_pixel(1, 0).0, [200, 100, 50, 255]);
        assert_eq!(px.get_pixel(2, 0).0[3], 128);
    }

    #[test]
    fn jpeg_without_background_is_refused() {
        let img = DynamicImage::ImageRgb8(RgbImage::new(4, 4));
        let mask = GrayImage::new(4, 4);
        let opts = OutputOptions {
            format: OutputFormat::Jpeg,
            ..Default::default()
        };
        assert!(matches!(
            compose(img, &mask, &opts),
            Err(PipelineError::JpegNeedsBackground)
        ));
    }
}
