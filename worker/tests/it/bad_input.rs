//! Hostile and broken files give a typed error, never a panic, and never allocate the pixels a
//! header claims.

use std::io::Cursor;

use backless_common::limits::{ImageLimits, LimitError};
use backless_worker::imaging::{PipelineError, decode};
use image::{ImageFormat, RgbImage};

fn encoded(format: ImageFormat, w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

/// A valid PNG whose IHDR claims `w` x `h` (with a correct CRC, so only the size is hostile).
pub fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut png = encoded(ImageFormat::Png, 1, 1);
    // signature (8) + length (4) + "IHDR" (4) + data (13) + crc (4)
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

#[test]
fn zero_bytes() {
    assert!(matches!(
        decode(&[], &ImageLimits::default()),
        Err(PipelineError::Empty)
    ));
}

#[test]
fn text_file_named_png() {
    let err = decode(b"hello, this is not an image\n", &ImageLimits::default()).unwrap_err();
    assert!(matches!(err, PipelineError::NotAnImage), "{err:?}");
    assert_eq!(err.code(), "not_an_image");
}

#[test]
fn svg_is_not_a_raster_image() {
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>"#;
    assert!(matches!(
        decode(svg, &ImageLimits::default()),
        Err(PipelineError::NotAnImage)
    ));
}

#[test]
fn truncated_jpeg_and_png() {
    for format in [ImageFormat::Jpeg, ImageFormat::Png] {
        let full = encoded(format, 64, 48);
        assert!(decode(&full, &ImageLimits::default()).is_ok());
        let cut = &full[..full.len() / 2];
        let Err(err) = decode(cut, &ImageLimits::default()) else {
            panic!("{format:?}: a truncated file decoded");
        };
        assert_eq!(err.code(), "corrupt_image");
    }
}

#[test]
fn png_bomb_is_refused_from_its_header() {
    let bomb = png_bomb(100_000, 100_000);
    let err = decode(&bomb, &ImageLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            PipelineError::Limits(
                LimitError::SideTooLarge { .. } | LimitError::TooManyPixels { .. }
            )
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "image_side_too_large");
    // Within the side limit but over the pixel limit: the message says what the limit is.
    let err = decode(&png_bomb(10_000, 9_000), &ImageLimits::default()).unwrap_err();
    assert!(err.to_string().contains("40.0 megapixels"), "{err}");
}

#[test]
fn oversized_file_is_refused_before_decoding() {
    let png = encoded(ImageFormat::Png, 64, 64);
    let limits = ImageLimits {
        max_bytes: 100,
        ..ImageLimits::default()
    };
    let err = decode(&png, &limits).unwrap_err();
    assert_eq!(err.code(), "file_too_large");
}

#[test]
fn exif_orientation_is_applied() {
    // A 4x2 JPEG tagged "rotate 90 CW" (orientation 6) decodes as 2x4.
    let jpeg = encoded(ImageFormat::Jpeg, 4, 2);
    // APP1 Exif segment: big-endian TIFF with one IFD entry, Orientation (0x0112) = 6.
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2a\0\0\0\x08");
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1, 0, 6, 0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut tagged = jpeg[..2].to_vec();
    tagged.extend_from_slice(&[0xFF, 0xE1]);
    tagged.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    tagged.extend_from_slice(&app1);
    tagged.extend_from_slice(&jpeg[2..]);
    let img = decode(&tagged, &ImageLimits::default()).unwrap();
    assert_eq!((img.width(), img.height()), (2, 4));
}

#[test]
fn jpeg_header_claiming_huge_dimensions_is_refused_before_decoding() {
    let mut jpeg = encoded(ImageFormat::Jpeg, 8, 8);
    // SOF0: FF C0, length (2), precision (1), height (2), width (2).
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline JPEG");
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]); // 65000 x 65000
    let err = decode(&jpeg, &ImageLimits::default()).unwrap_err();
    assert!(
        matches!(err, PipelineError::Limits(LimitError::SideTooLarge { .. })),
        "{err:?}"
    );
    assert_eq!(err.code(), "image_side_too_large");
}

fn gif_frames(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        let frames = (0..n).map(|i| {
            image::Frame::new(image::RgbaImage::from_pixel(
                4,
                4,
                image::Rgba([i as u8 * 40, 0, 0, 255]),
            ))
        });
        enc.encode_frames(frames).unwrap();
    }
    out
}

#[test]
fn animation_declaring_too_many_frames_is_refused() {
    let gif = gif_frames(5);
    let few = ImageLimits {
        max_frames: 4,
        ..ImageLimits::default()
    };
    let err = decode(&gif, &few).unwrap_err();
    assert!(
        matches!(
            err,
            PipelineError::Limits(LimitError::TooManyFrames { frames: 5, .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "too_many_frames");
    let enough = ImageLimits {
        max_frames: 5,
        ..ImageLimits::default()
    };
    let img = decode(&gif, &enough).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (4, 4),
        "the first frame is processed"
    );
}

#[test]
fn polyglot_gif_with_script_is_decoded_as_an_image_and_reencoding_drops_the_rest() {
    let mut polyglot = encoded(ImageFormat::Gif, 16, 16);
    polyglot.extend_from_slice(b"<script>alert(document.cookie)</script>");
    let img = decode(&polyglot, &ImageLimits::default()).unwrap();
    assert_eq!((img.width(), img.height()), (16, 16));
    for format in [
        backless_worker::imaging::OutputFormat::Png,
        backless_worker::imaging::OutputFormat::Webp,
    ] {
        let out = backless_worker::imaging::encode(&img, format, None).unwrap();
        assert!(!out.windows(7).any(|w| w == b"<script"), "{format:?}");
    }
}
