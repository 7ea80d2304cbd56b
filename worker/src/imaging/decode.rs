//! Decoding under limits: the size first, then the header's dimensions and frames (so a
//! decompression bomb is refused before any pixel is allocated), then a bounded decode, then
//! EXIF orientation.

use std::io::Cursor;

use backless_common::job::Size;
use backless_common::limits::{ImageLimits, LimitError};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use super::PipelineError;

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
