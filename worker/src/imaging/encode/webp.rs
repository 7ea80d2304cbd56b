//! WebP through libwebp (built from the sources the `libwebp-sys` crate vendors, linked
//! statically): lossy colour with a lossless alpha plane, or lossless (the service writes
//! lossless WebP with the `image` crate's encoder, which measured faster; see
//! [`super::encode`]).
//!
//! With `exact` off (libwebp's default) the encoder may rewrite the colour of fully transparent
//! pixels to whatever compresses best; it only ever sees what [`super::encode`] hands it, where
//! those colours are already 0, so nothing of a removed background can reach the file. Lossy
//! colour still rings a little across the subject's edge into transparent pixels: what a
//! decoder shows there comes from the subject's own colours, never from the old background.

use std::ffi::c_void;

use image::DynamicImage;
use libwebp_sys as ffi;

/// WebP's largest side.
pub const MAX_SIDE: u32 = 16_383;

/// libwebp's effort: `method` (0-6) for both kinds, and for lossless files `quality` (0-100),
/// which there is how hard it searches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effort {
    pub method: i32,
    pub lossless_quality: f32,
}

impl Effort {
    /// What BackLess writes: lossless at about PNG's size in a fraction of its time, lossy at
    /// libwebp's default method; see `docs/benchmarks.md`, "PNG and WebP".
    pub fn default_for(mode: Mode) -> Self {
        match mode {
            Mode::Lossless => Self {
                method: 0,
                lossless_quality: 25.0,
            },
            Mode::Lossy { .. } => Self {
                method: 4,
                lossless_quality: 0.0,
            },
        }
    }
}

/// How to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Lossless,
    /// Lossy colour at `quality` (1-100); alpha stays lossless.
    Lossy {
        quality: u8,
    },
}

/// Why a WebP could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WebpError {
    #[error("the image is {0}x{1}; a WebP side may be at most {MAX_SIDE} pixels")]
    TooLarge(u32, u32),
    #[error("libwebp failed: {0}")]
    Encoder(String),
}

/// Frees the picture and the writer's buffer on every path.
struct Encoding {
    picture: ffi::WebPPicture,
    writer: ffi::WebPMemoryWriter,
}

impl Drop for Encoding {
    fn drop(&mut self) {
        // SAFETY: both were initialised by libwebp before this value was built; freeing an
        // empty picture or writer is a no-op.
        unsafe {
            ffi::WebPPictureFree(&mut self.picture);
            ffi::WebPMemoryWriterClear(&mut self.writer);
        }
    }
}

fn failed(what: &str) -> WebpError {
    WebpError::Encoder(what.to_string())
}

/// Encode `img` (8 bits per channel; grey is written as RGB) as WebP.
pub fn encode(img: &DynamicImage, mode: Mode) -> Result<Vec<u8>, WebpError> {
    encode_with(img, mode, Effort::default_for(mode))
}

/// [`encode`] at another effort.
pub fn encode_with(img: &DynamicImage, mode: Mode, effort: Effort) -> Result<Vec<u8>, WebpError> {
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(WebpError::TooLarge(w, h));
    }
    let alpha = img.color().has_alpha();
    let owned;
    let pixels: &[u8] = match img {
        DynamicImage::ImageRgba8(b) => b.as_raw(),
        DynamicImage::ImageRgb8(b) => b.as_raw(),
        other if alpha => {
            owned = other.to_rgba8().into_raw();
            &owned
        }
        other => {
            owned = other.to_rgb8().into_raw();
            &owned
        }
    };
    let channels = if alpha { 4 } else { 3 };

    // SAFETY: a zeroed config and picture are plain C structs that libwebp's init functions
    // fill in; every pointer handed to libwebp lives until `WebPEncode` returns, and the
    // picture only borrows `pixels` while importing (it copies them).
    unsafe {
        let mut config: ffi::WebPConfig = std::mem::zeroed();
        if ffi::WebPConfigInitInternal(
            &mut config,
            ffi::WebPPreset::WEBP_PRESET_DEFAULT,
            75.0,
            ffi::WEBP_ENCODER_ABI_VERSION as i32,
        ) == 0
        {
            return Err(failed("incompatible library version"));
        }
        match mode {
            Mode::Lossless => {
                config.lossless = 1;
                config.quality = effort.lossless_quality;
            }
            Mode::Lossy { quality } => {
                config.quality = f32::from(quality.clamp(1, 100));
                config.alpha_quality = 100;
            }
        }
        config.method = effort.method;
        // Alpha is compressed on a second thread beside the colour.
        config.thread_level = 1;
        if ffi::WebPValidateConfig(&config) == 0 {
            return Err(failed("invalid configuration"));
        }

        let mut enc = Encoding {
            picture: std::mem::zeroed(),
            writer: std::mem::zeroed(),
        };
        if ffi::WebPPictureInitInternal(&mut enc.picture, ffi::WEBP_ENCODER_ABI_VERSION as i32) == 0
        {
            return Err(failed("incompatible library version"));
        }
        ffi::WebPMemoryWriterInit(&mut enc.writer);
        enc.picture.use_argb = i32::from(mode == Mode::Lossless);
        enc.picture.width = w as i32;
        enc.picture.height = h as i32;
        let stride = (w * channels) as i32;
        let imported = if alpha {
            ffi::WebPPictureImportRGBA(&mut enc.picture, pixels.as_ptr(), stride)
        } else {
            ffi::WebPPictureImportRGB(&mut enc.picture, pixels.as_ptr(), stride)
        };
        if imported == 0 {
            return Err(failed("out of memory importing the picture"));
        }
        enc.picture.writer = Some(ffi::WebPMemoryWrite);
        enc.picture.custom_ptr = (&mut enc.writer as *mut ffi::WebPMemoryWriter).cast::<c_void>();
        if ffi::WebPEncode(&config, &mut enc.picture) == 0 {
            return Err(WebpError::Encoder(format!("{:?}", enc.picture.error_code)));
        }
        Ok(std::slice::from_raw_parts(enc.writer.mem, enc.writer.size).to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, RgbImage, RgbaImage};

    /// A subject (a disc of varied colour) on a transparent background whose hidden colour is 0.
    fn cut_out(w: u32, h: u32) -> RgbaImage {
        RgbaImage::from_fn(w, h, |x, y| {
            let d = (x as i32 - w as i32 / 2).pow(2) + (y as i32 - h as i32 / 2).pow(2);
            let r = (w.min(h) as i32 / 3).pow(2);
            if d < r {
                image::Rgba([(x * 2) as u8, 200, (y * 3) as u8, 255])
            } else {
                image::Rgba([0, 0, 0, 0])
            }
        })
    }

    #[test]
    fn lossless_round_trips() {
        for img in [
            DynamicImage::ImageRgba8(cut_out(97, 61)),
            DynamicImage::ImageRgb8(RgbImage::from_fn(40, 30, |x, y| {
                image::Rgb([x as u8, y as u8, 9])
            })),
        ] {
            let bytes = encode(&img, Mode::Lossless).unwrap();
            let back = image::load_from_memory_with_format(&bytes, ImageFormat::WebP).unwrap();
            assert_eq!(back.to_rgba8(), img.to_rgba8());
        }
    }

    #[test]
    fn lossy_keeps_alpha_exact_and_colour_close() {
        let img = cut_out(160, 120);
        let bytes = encode(
            &DynamicImage::ImageRgba8(img.clone()),
            Mode::Lossy { quality: 90 },
        )
        .unwrap();
        let back = image::load_from_memory_with_format(&bytes, ImageFormat::WebP)
            .unwrap()
            .to_rgba8();
        let mut err = 0u64;
        let mut n = 0u64;
        for (a, b) in img.pixels().zip(back.pixels()) {
            assert_eq!(a.0[3], b.0[3], "alpha is lossless");
            if a.0[3] == 255 {
                err += (0..3)
                    .map(|c| u64::from(a.0[c].abs_diff(b.0[c])))
                    .sum::<u64>();
                n += 3;
            }
        }
        assert!(err / n <= 6, "mean colour error {}", err / n);
        // Smaller than lossless, and quality is a real trade-off.
        let lossless = encode(&DynamicImage::ImageRgba8(img.clone()), Mode::Lossless).unwrap();
        let low = encode(&DynamicImage::ImageRgba8(img), Mode::Lossy { quality: 10 }).unwrap();
        assert!(low.len() < bytes.len(), "{} vs {}", low.len(), bytes.len());
        assert!(bytes.len() < lossless.len() * 2);
    }

    #[test]
    fn sides_past_webps_limit_are_an_error_not_a_crash() {
        let img = DynamicImage::ImageLuma8(image::GrayImage::new(MAX_SIDE + 1, 1));
        assert!(matches!(
            encode(&img, Mode::Lossless),
            Err(WebpError::TooLarge(..))
        ));
    }
}
