//! Checking an upload before anything is stored: the format comes from the bytes (magic numbers),
//! never from the client's Content-Type or file name; the dimensions come from the header, read
//! before any pixel is decoded.

use std::io::Cursor;

use backless_common::job::Size;
use backless_common::limits::ImageLimits;
use image::ImageDecoder;

use crate::error::WebError;

/// An accepted image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Png,
    Jpeg,
    Webp,
    Gif,
    Bmp,
    Tiff,
}

impl Sniffed {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
            Self::Gif => "image/gif",
            Self::Bmp => "image/bmp",
            Self::Tiff => "image/tiff",
        }
    }
}

/// Every accepted type, as [`Sniffed::content_type`] names it.
pub const ACCEPTED_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
];

/// Identify the format from magic numbers.
pub fn sniff(data: &[u8]) -> Option<Sniffed> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Sniffed::Png)
    } else if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Sniffed::Jpeg)
    } else if data.len() >= 12 && &data[0..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Some(Sniffed::Webp)
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some(Sniffed::Gif)
    } else if data.starts_with(b"BM") && data.len() >= 26 {
        Some(Sniffed::Bmp)
    } else if data.starts_with(b"II*\0") || data.starts_with(b"MM\0*") {
        Some(Sniffed::Tiff)
    } else {
        None
    }
}

/// What we learnt about an accepted upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub format: Sniffed,
    /// As stored in the file.
    pub width: u32,
    pub height: u32,
    /// As the photo is seen and processed (EXIF orientation applied): what a job's plan starts
    /// from.
    pub oriented: Size,
}

/// Sniff, read the dimensions from the header and check them against the limits.
pub fn check_image(data: &[u8], limits: &ImageLimits) -> Result<Checked, WebError> {
    if data.is_empty() {
        return Err(WebError::EmptyFile);
    }
    if data.len() as u64 > limits.max_bytes {
        return Err(WebError::FileTooLarge {
            max_bytes: limits.max_bytes,
        });
    }
    let format = sniff(data).ok_or(WebError::NotAnImage)?;
    let reader = image::ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .map_err(|e| WebError::CorruptImage(e.to_string()))?;
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| WebError::CorruptImage(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    limits.check_dimensions(width, height)?;
    limits.check_animation(data)?;
    let orientation = decoder
        .orientation()
        .map_err(|e| WebError::CorruptImage(e.to_string()))?;
    Ok(Checked {
        format,
        width,
        height,
        oriented: Size::new(width, height).oriented(orientation),
    })
}

/// An uploaded file's name and bytes. The multipart parser has already spooled the file to an
/// unlinked temporary file; its bytes are mapped from there, not copied onto the heap, so a large
/// upload costs page cache (which the kernel can drop), not process memory.
pub async fn read_upload(
    file: poem_openapi::types::multipart::Upload,
    max: u64,
) -> Result<(Option<String>, bytes::Bytes), WebError> {
    if file.size() as u64 > max {
        return Err(WebError::FileTooLarge { max_bytes: max });
    }
    let name = file.file_name().map(str::to_string);
    if file.size() == 0 {
        return Ok((name, bytes::Bytes::new()));
    }
    let spooled = file.into_file().into_std().await;
    // SAFETY: the file is the multipart parser's own unlinked temporary file: no other process
    // can open it, and nothing in this one writes to it after parsing, so the mapped bytes do not
    // change while they are borrowed.
    let mapped = unsafe { memmap2::Mmap::map(&spooled) }
        .map_err(|e| WebError::InvalidRequest(format!("cannot read the upload: {e}")))?;
    if mapped.len() as u64 > max {
        return Err(WebError::FileTooLarge { max_bytes: max });
    }
    Ok((name, bytes::Bytes::from_owner(mapped)))
}

/// A display name from an uploaded file name: no directories, no extension, printable, short.
pub fn display_name(file_name: Option<&str>) -> String {
    let base = file_name
        .unwrap_or("")
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("");
    let stem = match base.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => base,
    };
    clean_name(stem).unwrap_or_else(|| "photo".to_string())
}

/// Trim, drop control characters, cap at 100 characters; `None` if nothing is left.
pub fn clean_name(name: &str) -> Option<String> {
    let cleaned: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect::<String>()
        .trim()
        .to_string();
    (!cleaned.is_empty()).then_some(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::new(w, h);
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn sniffs_magic_numbers() {
        assert_eq!(sniff(&png(2, 2)), Some(Sniffed::Png));
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0rest"), Some(Sniffed::Jpeg));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(Sniffed::Webp));
        assert_eq!(sniff(b"GIF89a...."), Some(Sniffed::Gif));
        assert_eq!(sniff(b"II*\0...."), Some(Sniffed::Tiff));
        assert_eq!(sniff(b"<html>hello</html>"), None);
    }

    #[test]
    fn accepted_types_are_the_sniffed_ones() {
        use Sniffed::*;
        let sniffed = [Png, Jpeg, Webp, Gif, Bmp, Tiff].map(Sniffed::content_type);
        assert_eq!(ACCEPTED_TYPES, sniffed);
    }

    #[test]
    fn checks_dimensions_from_header() {
        let l = ImageLimits::default();
        let c = check_image(&png(30, 20), &l).unwrap();
        assert_eq!((c.width, c.height, c.format), (30, 20, Sniffed::Png));
        assert_eq!(c.oriented, Size::new(30, 20));
        assert!(matches!(check_image(b"", &l), Err(WebError::EmptyFile)));
        assert!(matches!(
            check_image(b"hello", &l),
            Err(WebError::NotAnImage)
        ));
        let truncated = &png(30, 20)[..12];
        assert!(matches!(
            check_image(truncated, &l),
            Err(WebError::CorruptImage(_))
        ));
        let small = ImageLimits {
            max_pixels: 100,
            ..l
        };
        assert!(matches!(
            check_image(&png(30, 20), &small),
            Err(WebError::ImageLimit(_))
        ));
    }

    #[test]
    fn names() {
        assert_eq!(
            display_name(Some("C:\\Users\\me\\cat.final.JPG")),
            "cat.final"
        );
        assert_eq!(display_name(Some("../../etc/passwd")), "passwd");
        assert_eq!(display_name(Some(".hidden")), ".hidden");
        assert_eq!(display_name(None), "photo");
        assert_eq!(clean_name("  \u{7}  "), None);
    }
}
