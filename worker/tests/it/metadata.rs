//! Outputs carry no metadata from the upload: a JPEG with an EXIF GPS position comes out, in every
//! output format, without EXIF or the position.

use std::io::Cursor;

use backless_common::limits::ImageLimits;
use backless_worker::imaging::remove_background;
use backless_worker::imaging::{OutputFormat, OutputOptions, Rgb};
use image::{ImageDecoder, ImageFormat, RgbImage};

/// A big-endian TIFF/EXIF block: IFD0 holds only a GPS IFD pointer; the GPS IFD says 51°30'N,
/// 0°7'W, and carries a marker string we can search for.
fn exif_with_gps() -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(b"MM\0\x2A\0\0\0\x08"); // header, IFD0 at 8
    // IFD0 (8): 1 entry, GPSInfo (0x8825) LONG -> 26; no next IFD.
    t.extend_from_slice(&[0, 1, 0x88, 0x25, 0, 4, 0, 0, 0, 1, 0, 0, 0, 26, 0, 0, 0, 0]);
    // GPS IFD (26): 4 entries (2 + 4 * 12 + 4 = 54 bytes), data from 80.
    t.extend_from_slice(&[0, 4]);
    t.extend_from_slice(&[0, 1, 0, 2, 0, 0, 0, 2, b'N', 0, 0, 0]); // LatitudeRef "N"
    t.extend_from_slice(&[0, 2, 0, 5, 0, 0, 0, 3, 0, 0, 0, 80]); // Latitude -> 80
    t.extend_from_slice(&[0, 3, 0, 2, 0, 0, 0, 2, b'W', 0, 0, 0]); // LongitudeRef "W"
    t.extend_from_slice(&[0, 0x1B, 0, 7, 0, 0, 0, 16, 0, 0, 0, 104]); // ProcessingMethod -> 104
    t.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(t.len(), 80);
    for (num, den) in [(51u32, 1u32), (30, 1), (0, 1)] {
        t.extend_from_slice(&num.to_be_bytes());
        t.extend_from_slice(&den.to_be_bytes());
    }
    t.extend_from_slice(b"ASCII\0\0\0GPSMARK!");
    t
}

/// A 64x48 JPEG with an APP1 EXIF segment right after SOI.
fn jpeg_with_gps() -> Vec<u8> {
    let img = RgbImage::from_fn(64, 48, |x, y| {
        if (16..48).contains(&x) && (12..36).contains(&y) {
            image::Rgb([220, 40, 40])
        } else {
            image::Rgb([20, 20, 200 + (x % 3) as u8])
        }
    });
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Jpeg).unwrap();
    let plain = buf.into_inner();
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&exif_with_gps());
    let mut out = plain[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&plain[2..]);
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn gps_exif_is_not_carried_into_any_output() {
    assert!(crate::weights_present("u2netp"));
    let input = jpeg_with_gps();
    // The input really carries it: the decoder finds the EXIF block with our marker.
    let mut dec = image::codecs::jpeg::JpegDecoder::new(Cursor::new(&input)).unwrap();
    let exif = dec.exif_metadata().unwrap().expect("input has EXIF");
    assert!(contains(&exif, b"GPSMARK!"));

    let seg = crate::load("u2netp");
    let white = Some(Rgb([255, 255, 255]));
    let cases = [
        (OutputFormat::Png, None, false),
        (OutputFormat::Webp, None, false),
        (OutputFormat::Jpeg, white, false),
        (OutputFormat::Png, None, true),
    ];
    for (format, bg_color, mask_only) in cases {
        let opts = OutputOptions {
            format,
            mask_only,
            bg_color,
            crop: None,
            ..OutputOptions::default()
        };
        let out = remove_background(&seg, &input, &ImageLimits::default(), &opts).unwrap();
        let b = &out.bytes;
        let what = format!("{format:?} mask_only={mask_only}");
        assert!(!contains(b, b"GPSMARK!"), "{what}: GPS data in the output");
        assert!(!contains(b, b"Exif"), "{what}: EXIF in the output");
        assert!(!contains(b, b"eXIf") && !contains(b, b"EXIF"), "{what}");
        assert!(
            !contains(b, b"MM\0\x2A") && !contains(b, b"II\x2A\0"),
            "{what}: TIFF block"
        );
        if format == OutputFormat::Jpeg {
            assert!(!contains(b, &[0xFF, 0xE1]), "{what}: an APP1 segment");
        }
        let back = image::load_from_memory(b).unwrap();
        assert_eq!((back.width(), back.height()), (64, 48), "{what}");
    }
}
