//! From the finished image to the bytes a user downloads: PNG ([`png`], our own writer), WebP
//! ([`webp`], libwebp), JPEG and remove.bg's zip. No metadata is ever written, and every format
//! that keeps alpha writes colour 0 under fully transparent pixels.

pub mod png;
pub mod webp;

use std::io::Cursor;

use image::{DynamicImage, GrayImage};

use super::cutout;
use super::{OutputFormat, PipelineError};

/// True when some pixel is not fully opaque.
fn has_transparency(img: &DynamicImage) -> bool {
    match img {
        DynamicImage::ImageLumaA8(b) => b.pixels().any(|p| p.0[1] < 255),
        DynamicImage::ImageRgba8(b) => b.pixels().any(|p| p.0[3] < 255),
        _ => false,
    }
}

/// Encode `img`. Fully transparent pixels are written with colour 0 in every format that keeps
/// alpha (see [`cutout::clear_hidden_colour`]; the image is copied only when it still has
/// such colours). `quality` (1-100) is JPEG's (default 90), a zip's `color.jpg`'s, or makes a
/// WebP lossy (its alpha stays lossless); without it WebP is lossless. JPEG refuses transparent
/// pixels (an opaque alpha channel is dropped); a zip carries the alpha as its own matte.
pub fn encode(
    img: &DynamicImage,
    format: OutputFormat,
    quality: Option<u8>,
) -> Result<Vec<u8>, PipelineError> {
    let cleared;
    let img = if format.has_alpha() && cutout::carries_hidden_colour(img) {
        let mut copy = img.clone();
        cutout::clear_hidden_colour(&mut copy);
        cleared = copy;
        &cleared
    } else {
        img
    };
    match format {
        OutputFormat::Png => png::encode(img, png::LEVEL).map_err(|e| encode_failed("PNG", &e)),
        // Lossless WebP comes from the `image` crate's encoder: on a 12 MP cut-out it is 4x
        // faster than libwebp's fastest lossless setting for a file 2% larger (and smaller than
        // PNG); lossy WebP from libwebp.
        // (The plan refuses a WebP side over the format's limit; this is the last line.)
        OutputFormat::Webp if img.width().max(img.height()) > webp::MAX_SIDE => {
            Err(PipelineError::Operation(
                webp::WebpError::TooLarge(img.width(), img.height()).to_string(),
            ))
        }
        OutputFormat::Webp => match quality {
            None => {
                let mut buf = Cursor::new(Vec::new());
                img.write_to(&mut buf, image::ImageFormat::WebP)
                    .map_err(|e| encode_failed("WebP", &e))?;
                Ok(buf.into_inner())
            }
            Some(quality) => webp::encode(img, webp::Mode::Lossy { quality })
                .map_err(|e| encode_failed("WebP", &e)),
        },
        OutputFormat::Jpeg if has_transparency(img) => Err(PipelineError::JpegNeedsBackground),
        OutputFormat::Jpeg => jpeg(img, quality),
        OutputFormat::Zip => zip_pair(img, quality),
    }
}

/// The encoder's own words go to the log only; the job records a plain message.
fn encode_failed(format: &str, e: &dyn std::fmt::Display) -> PipelineError {
    tracing::warn!(error = %e, format, "encoding failed");
    PipelineError::EncodeFailed
}

/// The image's colour channels as JPEG (any alpha ignored).
fn jpeg(img: &DynamicImage, quality: Option<u8>) -> Result<Vec<u8>, PipelineError> {
    let mut buf = Cursor::new(Vec::new());
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality.unwrap_or(90));
    let result = match img {
        DynamicImage::ImageLuma8(_) => img.write_with_encoder(enc),
        DynamicImage::ImageLumaA8(_) => {
            DynamicImage::ImageLuma8(img.to_luma8()).write_with_encoder(enc)
        }
        _ => DynamicImage::ImageRgb8(img.to_rgb8()).write_with_encoder(enc),
    };
    result.map_err(|e| encode_failed("JPEG", &e))?;
    Ok(buf.into_inner())
}

/// remove.bg's zip: `color.jpg` (the colours; 0 where the image is fully transparent) and
/// `alpha.png` (8-bit grey: the alpha channel, all white for an opaque image), stored
/// uncompressed (both are compressed already), with no timestamps or other metadata.
fn zip_pair(img: &DynamicImage, quality: Option<u8>) -> Result<Vec<u8>, PipelineError> {
    use std::io::Write;
    let alpha = match img {
        DynamicImage::ImageLumaA8(b) => GrayImage::from_fn(b.width(), b.height(), |x, y| {
            image::Luma([b.get_pixel(x, y).0[1]])
        }),
        DynamicImage::ImageRgba8(b) => GrayImage::from_fn(b.width(), b.height(), |x, y| {
            image::Luma([b.get_pixel(x, y).0[3]])
        }),
        _ => GrayImage::from_pixel(img.width(), img.height(), image::Luma([255])),
    };
    let files = [
        ("color.jpg", jpeg(img, quality)?),
        (
            "alpha.png",
            encode(&DynamicImage::ImageLuma8(alpha), OutputFormat::Png, None)?,
        ),
    ];
    let failed = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "writing the zip failed");
        PipelineError::Operation("the zip could not be written".into())
    };
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    for (name, bytes) in files {
        zip.start_file(name, options).map_err(|e| failed(&e))?;
        zip.write_all(&bytes).map_err(|e| failed(&e))?;
    }
    Ok(zip.finish().map_err(|e| failed(&e))?.into_inner())
}
