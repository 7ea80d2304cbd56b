//! Our PNG writer: 8-bit grey, grey+alpha, RGB or RGBA, no metadata.
//!
//! Two choices make it both small and fast:
//! - **Adaptive row filters.** Each row gets the filter (none, sub, up, average, Paeth) whose
//!   output has the smallest sum of absolute values, read as signed bytes: the heuristic libpng and
//!   Pillow use, so the filtered stream compresses as theirs does.
//! - **Deflate in bands on every core.** The rows are cut into bands of about [`BAND_BYTES`]; each
//!   band is filtered and deflated on its own thread into raw deflate blocks ending in a sync
//!   flush (the last band in the final block), and the bands are joined into one zlib stream whose
//!   Adler-32 is combined from theirs. This is how pigz parallelises gzip; each band starts with an
//!   empty window, which costs a few hundred bytes per band.
//!
//! The compression level trades size for time (see `docs/benchmarks.md`, "PNG and WebP").

use image::DynamicImage;
use rayon::prelude::*;
use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Method, Status, Strategy};

/// The deflate level of every PNG BackLess writes (`docs/benchmarks.md`, "PNG and WebP"): on a
/// 12 MP cut-out 2.5% larger than Pillow's default (zlib level 6, filtered: what rembg writes)
/// in a quarter of its time. zlib-rs (like zlib-ng) takes its medium strategy up to level 6 and
/// zlib's lazy matching, which honours the filtered strategy, from level 7: level 7 is 3% smaller
/// than Pillow's in 44% of its time, but added a tenth to a batch of small photos' time.
pub const LEVEL: u32 = 6;

/// Target size of one band of filtered rows.
const BAND_BYTES: usize = 1 << 21;

/// The PNG colour types we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Colour {
    Grey = 0,
    Rgb = 2,
    GreyAlpha = 4,
    Rgba = 6,
}

impl Colour {
    fn channels(self) -> usize {
        match self {
            Self::Grey => 1,
            Self::GreyAlpha => 2,
            Self::Rgb => 3,
            Self::Rgba => 4,
        }
    }
}

/// Why a PNG could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    #[error("the image is {0}x{1}; a PNG needs both sides between 1 and 2^31 - 1")]
    Size(u32, u32),
    #[error("deflate failed: {0}")]
    Deflate(String),
}

/// Encode `img` as PNG at `level` (0-9), 8 bits per channel (wider images are reduced).
pub fn encode(img: &DynamicImage, level: u32) -> Result<Vec<u8>, PngError> {
    let owned;
    let (colour, pixels): (Colour, &[u8]) = match img {
        DynamicImage::ImageLuma8(b) => (Colour::Grey, b.as_raw()),
        DynamicImage::ImageLumaA8(b) => (Colour::GreyAlpha, b.as_raw()),
        DynamicImage::ImageRgb8(b) => (Colour::Rgb, b.as_raw()),
        DynamicImage::ImageRgba8(b) => (Colour::Rgba, b.as_raw()),
        other if other.color().has_alpha() => {
            owned = other.to_rgba8().into_raw();
            (Colour::Rgba, owned.as_slice())
        }
        other => {
            owned = other.to_rgb8().into_raw();
            (Colour::Rgb, owned.as_slice())
        }
    };
    encode_raw(pixels, img.width(), img.height(), colour, level)
}

fn encode_raw(
    pixels: &[u8],
    width: u32,
    height: u32,
    colour: Colour,
    level: u32,
) -> Result<Vec<u8>, PngError> {
    const MAX: u32 = i32::MAX as u32;
    if width == 0 || height == 0 || width > MAX || height > MAX {
        return Err(PngError::Size(width, height));
    }
    let bpp = colour.channels();
    let row = (width as usize)
        .checked_mul(bpp)
        .ok_or(PngError::Size(width, height))?;
    debug_assert_eq!(pixels.len(), row * height as usize);
    let rows_per_band = (BAND_BYTES / (row + 1)).max(1);
    let bands: Vec<(usize, usize)> = (0..height as usize)
        .step_by(rows_per_band)
        .map(|y| (y, (y + rows_per_band).min(height as usize)))
        .collect();
    let last = bands.len() - 1;
    let level = level.min(9);
    let parts = bands
        .par_iter()
        .enumerate()
        .map(|(i, &(y0, y1))| {
            let filtered = filter_rows(pixels, row, bpp, y0, y1);
            let adler = adler32(&filtered);
            deflate(&filtered, level, i == last).map(|d| (d, adler, filtered.len()))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let deflated: usize = parts.iter().map(|(d, _, _)| d.len()).sum();
    let mut out = Vec::with_capacity(deflated + 128 + 12 * parts.len());
    out.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = [0u8; 13];
    ihdr[0..4].copy_from_slice(&width.to_be_bytes());
    ihdr[4..8].copy_from_slice(&height.to_be_bytes());
    ihdr[8] = 8;
    ihdr[9] = colour as u8;
    chunk(&mut out, b"IHDR", &[&ihdr]);

    let header = zlib_header(level);
    let mut checksum = 1u32;
    for (i, (data, adler, len)) in parts.iter().enumerate() {
        checksum = adler32_combine(checksum, *adler, *len as u64);
        let head: &[u8] = if i == 0 { &header } else { &[] };
        let tail = checksum.to_be_bytes();
        let tail: &[u8] = if i == last { &tail } else { &[] };
        chunk(&mut out, b"IDAT", &[head, data, tail]);
    }
    chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

/// Append a chunk made of `parts` (each chunk here is far below 2^31 bytes).
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// The two-byte zlib header for a 32 KiB window, with the level hint of `level`.
fn zlib_header(level: u32) -> [u8; 2] {
    let hint: u16 = match level {
        0 | 1 => 0,
        2..=5 => 1,
        6 => 2,
        _ => 3,
    };
    let mut head = 0x7800u16 | (hint << 6);
    head += 31 - head % 31;
    head.to_be_bytes()
}

/// Rows `y0..y1`, each prefixed by its filter type.
fn filter_rows(pixels: &[u8], row: usize, bpp: usize, y0: usize, y1: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity((row + 1) * (y1 - y0));
    let zeros = vec![0u8; row];
    let mut scratch = vec![0u8; row * 5];
    for y in y0..y1 {
        let cur = &pixels[y * row..(y + 1) * row];
        let prev = if y == 0 {
            &zeros[..]
        } else {
            &pixels[(y - 1) * row..y * row]
        };
        let best = filter_row(cur, prev, bpp, &mut scratch);
        out.push(best as u8);
        out.extend_from_slice(&scratch[best * row..(best + 1) * row]);
    }
    out
}

/// Write the five filtered versions of `cur` into `scratch` (row after row) and return the
/// index of the one with the smallest sum of absolute signed bytes.
fn filter_row(cur: &[u8], prev: &[u8], bpp: usize, scratch: &mut [u8]) -> usize {
    let n = cur.len();
    let (none, rest) = scratch.split_at_mut(n);
    let (sub, rest) = rest.split_at_mut(n);
    let (up, rest) = rest.split_at_mut(n);
    let (avg, paeth) = rest.split_at_mut(n);
    let mut sums = [0u64; 5];
    let cost = |v: u8| u64::from((v as i8).unsigned_abs());
    for i in 0..bpp.min(n) {
        let (x, b) = (cur[i], prev[i]);
        none[i] = x;
        sub[i] = x;
        up[i] = x.wrapping_sub(b);
        avg[i] = x.wrapping_sub(b >> 1);
        paeth[i] = x.wrapping_sub(b);
    }
    for i in bpp..n {
        let (x, a, b, c) = (cur[i], cur[i - bpp], prev[i], prev[i - bpp]);
        none[i] = x;
        sub[i] = x.wrapping_sub(a);
        up[i] = x.wrapping_sub(b);
        avg[i] = x.wrapping_sub(((u16::from(a) + u16::from(b)) >> 1) as u8);
        paeth[i] = x.wrapping_sub(paeth_predictor(a, b, c));
    }
    for (sum, filtered) in sums.iter_mut().zip([&*none, &*sub, &*up, &*avg, &*paeth]) {
        *sum = filtered.iter().map(|&v| cost(v)).sum();
    }
    let mut best = 0;
    for (i, &s) in sums.iter().enumerate() {
        if s < sums[best] {
            best = i;
        }
    }
    best
}

/// The PNG specification's Paeth predictor.
fn paeth_predictor(a: u8, b: u8, c: u8) -> u8 {
    let (ia, ib, ic) = (i16::from(a), i16::from(b), i16::from(c));
    let p = ia + ib - ic;
    let (pa, pb, pc) = ((p - ia).abs(), (p - ib).abs(), (p - ic).abs());
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

/// Raw deflate of `data`: ends with a sync flush (byte-aligned, not final) unless `last`.
///
/// With zlib's filtered strategy, as Pillow writes PNG: PNG's filtered rows are mostly small
/// values, and preferring literals over short matches for them makes the file 2.6% smaller than
/// the default strategy at the same level (a 0.3 MP cut-out, zlib's own figures).
fn deflate(data: &[u8], level: u32, last: bool) -> Result<Vec<u8>, PngError> {
    let mut c = Deflate::new_with_config(DeflateConfig {
        level: level as i32,
        method: Method::Deflated,
        window_bits: -15,
        mem_level: 8,
        strategy: Strategy::Filtered,
    });
    let flush = if last {
        DeflateFlush::Finish
    } else {
        DeflateFlush::SyncFlush
    };
    // Room for the worst case, so one call takes all the input and ends the band.
    let mut out = vec![0u8; zlib_rs::compress_bound(data.len()) + 64];
    let status = c
        .compress(data, &mut out, flush)
        .map_err(|e| PngError::Deflate(e.as_str().to_string()))?;
    let complete = c.total_in() as usize == data.len()
        && match status {
            Status::StreamEnd => last,
            Status::Ok => !last,
            Status::BufError => false,
        };
    if !complete {
        return Err(PngError::Deflate(format!(
            "deflate stopped at {} of {} bytes ({status:?})",
            c.total_in(),
            data.len()
        )));
    }
    out.truncate(c.total_out() as usize);
    Ok(out)
}

const ADLER_MOD: u64 = 65521;

fn adler32(data: &[u8]) -> u32 {
    let mut a = simd_adler32::Adler32::new();
    a.write(data);
    a.finish()
}

/// The Adler-32 of `A ++ B` from `adler32(A)`, `adler32(B)` and `B`'s length (zlib's
/// `adler32_combine`).
fn adler32_combine(first: u32, second: u32, second_len: u64) -> u32 {
    let rem = second_len % ADLER_MOD;
    let a1 = u64::from(first & 0xffff);
    let b1 = u64::from(first >> 16);
    let a2 = u64::from(second & 0xffff);
    let b2 = u64::from(second >> 16);
    let a = (a1 + a2 + ADLER_MOD - 1) % ADLER_MOD;
    let b = (rem * a1 + b1 + b2 + ADLER_MOD - rem) % ADLER_MOD;
    ((b << 16) | a) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayAlphaImage, GrayImage, ImageFormat, RgbImage, RgbaImage};

    fn noisy(w: u32, h: u32) -> RgbaImage {
        let mut state = 0x2545_f491_u32;
        RgbaImage::from_fn(w, h, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let n = (state & 0x1f) as u8;
            let a = if (x + y) % 7 == 0 { 0 } else { 255 - n };
            image::Rgba([(x * 3) as u8 ^ n, (y * 5) as u8, n, a])
        })
    }

    #[test]
    fn adler_combines_like_one_pass() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for split in [0, 1, 65_521, 100_000, 200_000] {
            let (a, b) = data.split_at(split);
            assert_eq!(
                adler32_combine(adler32(a), adler32(b), b.len() as u64),
                adler32(&data),
                "split at {split}"
            );
        }
    }

    #[test]
    fn zlib_headers_are_valid() {
        for level in 0..=9 {
            let h = zlib_header(level);
            assert_eq!(h[0], 0x78);
            assert_eq!(u16::from_be_bytes(h) % 31, 0, "level {level}");
        }
    }

    /// Every layout, across band boundaries, decodes back to the same pixels with the `image`
    /// crate's (independent) decoder, at every level.
    #[test]
    fn round_trips_every_layout_and_band() {
        // 700 rows of 3,000 RGBA bytes: several bands.
        let rgba = noisy(750, 700);
        let images = [
            DynamicImage::ImageRgba8(rgba.clone()),
            DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(rgba.clone()).to_rgb8()),
            DynamicImage::ImageLumaA8(DynamicImage::ImageRgba8(rgba.clone()).to_luma_alpha8()),
            DynamicImage::ImageLuma8(DynamicImage::ImageRgba8(rgba).to_luma8()),
            DynamicImage::ImageLuma8(GrayImage::from_pixel(1, 1, image::Luma([7]))),
            DynamicImage::ImageLumaA8(GrayAlphaImage::from_pixel(1, 3000, image::LumaA([9, 0]))),
            DynamicImage::ImageRgb8(RgbImage::from_pixel(5000, 1, image::Rgb([1, 2, 3]))),
        ];
        for img in &images {
            for level in [0, 1, 4, 9] {
                let png = encode(img, level).unwrap();
                let back = image::load_from_memory_with_format(&png, ImageFormat::Png).unwrap();
                assert_eq!(back.color(), img.color());
                assert_eq!(
                    back.as_bytes(),
                    img.as_bytes(),
                    "{:?} level {level}",
                    img.color()
                );
            }
        }
    }

    #[test]
    fn sixteen_bit_images_are_written_in_eight() {
        let img = DynamicImage::ImageRgba16(image::ImageBuffer::from_pixel(
            3,
            2,
            image::Rgba([65535u16, 0, 32896, 65535]),
        ));
        let back = image::load_from_memory(&encode(&img, LEVEL).unwrap()).unwrap();
        assert_eq!(back.to_rgba8().get_pixel(2, 1).0, [255, 0, 128, 255]);
    }

    #[test]
    fn filters_pick_the_cheapest_row() {
        // A horizontal ramp is free under `sub`, a copy of the previous row under `up`.
        let ramp: Vec<u8> = (0..64).collect();
        let mut scratch = vec![0; 64 * 5];
        assert_eq!(filter_row(&ramp, &[0; 64], 1, &mut scratch), 1);
        assert_eq!(filter_row(&ramp, &ramp, 1, &mut scratch), 2);
        assert_eq!(filter_row(&[0; 64], &[0; 64], 1, &mut scratch), 0);
    }

    /// Filtered images compress as well as the reference's default (the `png` crate at its best
    /// level), and far better than the fast setting we used before.
    #[test]
    fn smaller_than_the_fast_setting() {
        let img = DynamicImage::ImageRgba8(RgbaImage::from_fn(600, 400, |x, y| {
            let inside = (x as i32 - 300).pow(2) + (y as i32 - 200).pow(2) < 150 * 150;
            if inside {
                image::Rgba([(x / 3) as u8, (y / 2) as u8, 90, 255])
            } else {
                image::Rgba([0, 0, 0, 0])
            }
        }));
        let ours = encode(&img, LEVEL).unwrap().len();
        let mut fast = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut fast), ImageFormat::Png)
            .unwrap();
        assert!(
            ours < fast.len(),
            "ours {ours} vs image crate {}",
            fast.len()
        );
    }
}
