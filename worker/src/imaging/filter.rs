//! `filter`: grayscale, blur, sharpen, brightness and contrast, on colour channels only.

use backless_common::job::FilterKind;
use image::DynamicImage;

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

pub(crate) fn apply_filter(img: &DynamicImage, kind: FilterKind, value: f32) -> DynamicImage {
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
