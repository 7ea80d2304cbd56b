//! Separable 8-bit resampling that reproduces Pillow's `Image.resize` bit for bit, so the
//! network sees exactly the pixels it sees under rembg (which resizes with Pillow's LANCZOS).
//!
//! Pillow's algorithm: per output pixel, a window of input pixels around
//! `center = (i + 0.5) * scale`, filter support widened by the scale when shrinking
//! (antialiasing), weights normalised then turned into 22-bit fixed point; horizontal pass first,
//! rounded and clamped to 8 bits, then the vertical pass.

use rayon::prelude::*;

/// The filters BackLess uses, with Pillow's definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Lanczos with a = 3 (Pillow `Image.LANCZOS`).
    Lanczos3,
    /// Triangle filter (Pillow `Image.BILINEAR`).
    Bilinear,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Lanczos3 => 3.0,
            Filter::Bilinear => 1.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        }
        match self {
            Filter::Lanczos3 if (-3.0..3.0).contains(&x) => sinc(x) * sinc(x / 3.0),
            Filter::Lanczos3 => 0.0,
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point weights for one axis: output pixel `i` reads `len` inputs from `start`.
struct Coeffs {
    windows: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

impl Coeffs {
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut windows = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for (i, row) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = (i as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, as `as` does.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let len = end.saturating_sub(start).min(ksize);
            let mut total = 0.0;
            for (x, kx) in k[..len].iter_mut().enumerate() {
                *kx = filter.eval(((x + start) as f64 - center + 0.5) / filterscale);
                total += *kx;
            }
            for (kx, out) in k[..len].iter().zip(row.iter_mut()) {
                let w = if total != 0.0 { kx / total } else { *kx };
                let fixed = w * f64::from(1u32 << PRECISION_BITS);
                *out = if w < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            windows.push((start, len));
        }
        Self {
            windows,
            ksize,
            weights,
        }
    }

    fn row(&self, i: usize) -> (usize, &[i32]) {
        let (start, len) = self.windows[i];
        (start, &self.weights[i * self.ksize..i * self.ksize + len])
    }
}

#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i64 = 1 << (PRECISION_BITS - 1);

fn horizontal(src: &[u8], w: usize, h: usize, ch: usize, out_w: usize, f: Filter) -> Vec<u8> {
    let c = Coeffs::new(w, out_w, f);
    let mut out = vec![0u8; out_w * h * ch];
    out.par_chunks_mut(out_w * ch)
        .zip(src.par_chunks(w * ch))
        .take(h)
        .for_each(|(dst, row)| {
            for x in 0..out_w {
                let (start, k) = c.row(x);
                for b in 0..ch {
                    let mut acc = HALF;
                    for (j, &kw) in k.iter().enumerate() {
                        acc += i64::from(row[(start + j) * ch + b]) * i64::from(kw);
                    }
                    dst[x * ch + b] = clip8(acc);
                }
            }
        });
    out
}

fn vertical(src: &[u8], w: usize, h: usize, ch: usize, out_h: usize, f: Filter) -> Vec<u8> {
    let c = Coeffs::new(h, out_h, f);
    let stride = w * ch;
    let mut out = vec![0u8; stride * out_h];
    out.par_chunks_mut(stride).enumerate().for_each(|(y, dst)| {
        let (start, k) = c.row(y);
        let mut acc = vec![HALF; stride];
        for (j, &kw) in k.iter().enumerate() {
            let row = &src[(start + j) * stride..(start + j + 1) * stride];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += i64::from(v) * i64::from(kw);
            }
        }
        for (d, a) in dst.iter_mut().zip(acc) {
            *d = clip8(a);
        }
    });
    out
}

/// Resize interleaved 8-bit pixels (`ch` channels) from `w` x `h` to `out_w` x `out_h`.
pub fn resize(
    src: &[u8],
    (w, h): (usize, usize),
    ch: usize,
    (out_w, out_h): (usize, usize),
    filter: Filter,
) -> Vec<u8> {
    assert_eq!(
        src.len(),
        w * h * ch,
        "buffer does not match its dimensions"
    );
    let pass1 = if out_w != w {
        horizontal(src, w, h, ch, out_w, filter)
    } else {
        src.to_vec()
    };
    if out_h != h {
        vertical(&pass1, out_w, h, ch, out_h, filter)
    } else {
        pass1
    }
}

/// Resize an RGB image with Pillow's algorithm.
pub fn resize_rgb(img: &image::RgbImage, w: u32, h: u32, filter: Filter) -> image::RgbImage {
    let data = resize(
        img.as_raw(),
        (img.width() as usize, img.height() as usize),
        3,
        (w as usize, h as usize),
        filter,
    );
    image::RgbImage::from_raw(w, h, data).expect("resize produced the requested size")
}

/// Resize a grayscale image with Pillow's algorithm.
pub fn resize_gray(img: &image::GrayImage, w: u32, h: u32, filter: Filter) -> image::GrayImage {
    let data = resize(
        img.as_raw(),
        (img.width() as usize, img.height() as usize),
        1,
        (w as usize, h as usize),
        filter,
    );
    image::GrayImage::from_raw(w, h, data).expect("resize produced the requested size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy() {
        let src: Vec<u8> = (0..=255).collect();
        assert_eq!(resize(&src, (16, 16), 1, (16, 16), Filter::Lanczos3), src);
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 37 * 23 * 3];
        for f in [Filter::Lanczos3, Filter::Bilinear] {
            let out = resize(&src, (37, 23), 3, (320, 320), f);
            assert!(out.iter().all(|&v| v == 77), "{f:?} upscale");
            let out = resize(&src, (37, 23), 3, (5, 4), f);
            assert!(out.iter().all(|&v| v == 77), "{f:?} downscale");
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        let c = Coeffs::new(6000, 320, Filter::Lanczos3);
        for i in 0..320 {
            let (_, k) = c.row(i);
            let sum: i64 = k.iter().map(|&v| i64::from(v)).sum();
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                "row {i}: {sum}"
            );
        }
    }
}
