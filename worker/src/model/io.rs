//! The network's input and output as the reference tool (rembg) makes them: the photo resized
//! to the model's input and normalised, and the output rescaled to an 8-bit mask and brought back
//! to the photo's size.

use candle_core::Tensor;
use image::{DynamicImage, GrayImage, RgbImage};

use super::{ModelError, ModelInfo, ResizeFilter, Segmenter};
use crate::imaging::resample::{self, Filter};

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
