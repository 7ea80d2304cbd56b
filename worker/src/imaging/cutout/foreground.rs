//! Foreground colour estimation: the colour a partly transparent pixel's subject has, without
//! the old background mixed into it.
//!
//! A pixel of the photo is `I = a F + (1 - a) B`: subject colour `F` over background colour `B`
//! at the mask's alpha `a`. A cut-out that keeps `I` as its colour carries the old background
//! into every soft edge (hair, fur, motion blur): placed on a new background, those edges show a
//! halo of the old one. Solving for `F` removes it.
//!
//! The solver is the multilevel method of Germer, Uelwer, Conrad and Harmeling, "Fast
//! Multi-Level Foreground Estimation" (ICPR 2020), the one pymatting implements as
//! `estimate_foreground_ml`: for each pixel, a 2x2 least-squares system couples `F` and `B` with
//! the photo and with the neighbours' estimates (weighted by the alpha gradient), solved by
//! Gauss-Seidel sweeps on a pyramid from 1x1 up to full size, each level started from the one
//! below. Defaults are the paper's (and pymatting's).
//!
//! Only the band where something is to be solved is swept: pixels that are partly transparent
//! or whose alpha differs from a neighbour's. Elsewhere a pixel's neighbours all share its alpha,
//! so they pull on it with the regularisation weight alone (1e-5): an opaque pixel's foreground
//! is its own colour to within that, and a transparent one's colour is never shown. On a sharp
//! mask the band is a thin line around the subject, so the full-resolution levels cost what the
//! edge costs, not what the photo does; a mask upscaled from the network's 320 px keeps faint
//! values over much of the background, and those pixels are solved like any other (the result
//! then matches pymatting's to within a level).
//!
//! Memory: `F` and `B` are kept as 16-bit fixed point (12 bytes a pixel, the finest level
//! only; the level below is freed once it has been upsampled); the photo and alpha are read in
//! place at full size and copied at the smaller levels (a quarter of the pixels at most).

use image::{GrayImage, RgbImage};

/// The solver's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Smoothness added to every neighbour's weight.
    pub regularization: f32,
    /// Sweeps on levels whose sides are both at most `small_size`.
    pub small_iterations: usize,
    /// Sweeps on the larger levels.
    pub big_iterations: usize,
    pub small_size: u32,
    /// Weight of the alpha gradient between neighbours.
    pub gradient_weight: f32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            regularization: 1e-5,
            small_iterations: 10,
            big_iterations: 2,
            small_size: 32,
            gradient_weight: 1.0,
        }
    }
}

/// One colour plane triple in 16-bit fixed point (0..=65535 for 0..=1).
type Px16 = [u16; 3];

const ONE: f32 = 65535.0;

fn to16(v: f32) -> u16 {
    (v * ONE + 0.5) as u16
}

/// Nearest-neighbour source index of each destination index (`dst * src / dst_len`).
fn nearest(dst: u32, src: u32) -> Vec<u32> {
    (0..dst)
        .map(|d| ((u64::from(d) * u64::from(src) / u64::from(dst)) as u32).min(src - 1))
        .collect()
}

/// `prev` (`pw` x `ph`) resampled to `w` x `h` by nearest neighbour.
fn upsample(prev: &[Px16], (pw, ph): (u32, u32), (w, h): (u32, u32)) -> Vec<Px16> {
    let (xs, ys) = (nearest(w, pw), nearest(h, ph));
    let mut out = Vec::with_capacity(w as usize * h as usize);
    for &sy in &ys {
        let row = &prev[sy as usize * pw as usize..][..pw as usize];
        out.extend(xs.iter().map(|&sx| row[sx as usize]));
    }
    out
}

/// The foreground colour of `image` under `alpha` (same size), as 8-bit RGB.
pub fn estimate_foreground(image: &RgbImage, alpha: &GrayImage, params: &Params) -> RgbImage {
    let (w0, h0) = image.dimensions();
    assert_eq!((w0, h0), alpha.dimensions(), "image and alpha sizes differ");
    if w0 == 0 || h0 == 0 {
        return RgbImage::new(w0, h0);
    }
    let levels = f64::from(w0.max(h0)).log2().ceil().max(1.0) as i32;
    // Level 0 is 1x1; its start value does not matter (the sweeps settle it), use mid grey.
    let mut size = (1u32, 1u32);
    let mut fg: Vec<Px16> = vec![[32768; 3]];
    let mut bg: Vec<Px16> = vec![[32768; 3]];
    for level in 0..=levels {
        let t = f64::from(level) / f64::from(levels);
        let w = (f64::from(w0).powf(t).round() as u32).clamp(1, w0);
        let h = (f64::from(h0).powf(t).round() as u32).clamp(1, h0);
        if (w, h) != size {
            fg = upsample(&fg, size, (w, h));
            bg = upsample(&bg, size, (w, h));
            size = (w, h);
        }
        let sweeps = if w <= params.small_size && h <= params.small_size {
            params.small_iterations
        } else {
            params.big_iterations
        };
        let level = Level::new(image, alpha, w, h);
        let band = level.band(&mut fg, &mut bg);
        for _ in 0..sweeps {
            level.sweep(&band, &mut fg, &mut bg, params);
        }
    }
    drop(bg);
    // The last level is the photo itself: every partly transparent pixel is in the band and
    // takes its estimate; opaque ones keep their own colour (transparent ones are not shown).
    let mut out = image.clone();
    let raw: &mut [u8] = &mut out;
    for (i, (f, a)) in fg.iter().zip(alpha.as_raw()).enumerate() {
        if *a != 255 {
            for c in 0..3 {
                raw[3 * i + c] = ((u32::from(f[c]) * 255 + 32767) / 65535) as u8;
            }
        }
    }
    out
}

/// The photo and alpha seen at one pyramid level (nearest-neighbour), as 8-bit planes: borrowed
/// at full size, copied at the smaller levels.
struct Level<'a> {
    image: std::borrow::Cow<'a, [u8]>,
    alpha: std::borrow::Cow<'a, [u8]>,
    w: usize,
    h: usize,
}

impl<'a> Level<'a> {
    fn new(image: &'a RgbImage, alpha: &'a GrayImage, w: u32, h: u32) -> Self {
        let (w0, h0) = image.dimensions();
        let size = (w as usize, h as usize);
        if (w, h) == (w0, h0) {
            return Self {
                image: image.as_raw().as_slice().into(),
                alpha: alpha.as_raw().as_slice().into(),
                w: size.0,
                h: size.1,
            };
        }
        let (xs, ys) = (nearest(w, w0), nearest(h, h0));
        let (mut img, mut a) = (Vec::with_capacity(3 * size.0 * size.1), Vec::new());
        for &sy in &ys {
            let row = sy as usize * w0 as usize;
            for &sx in &xs {
                let i = row + sx as usize;
                img.extend_from_slice(&image.as_raw()[3 * i..3 * i + 3]);
                a.push(alpha.as_raw()[i]);
            }
        }
        Self {
            image: img.into(),
            alpha: a.into(),
            w: size.0,
            h: size.1,
        }
    }

    fn colour16(&self, i: usize) -> Px16 {
        [0, 1, 2].map(|c| u16::from(self.image[3 * i + c]) * 257)
    }

    /// The pixels to solve, as `(x, y)` in row order: partly transparent, or next to a pixel of another alpha. The others are settled where the photo
    /// decides them (an opaque pixel's foreground and a transparent one's background are its own
    /// colour), so the band's neighbours start right when the band moves between levels.
    fn band(&self, fg: &mut [Px16], bg: &mut [Px16]) -> Vec<(u32, u32)> {
        use rayon::prelude::*;
        let (w, h, alpha) = (self.w, self.h, &self.alpha);
        // Rows in parallel: each writes only its own row of the planes.
        let rows: Vec<Vec<(u32, u32)>> = fg
            .par_chunks_mut(w)
            .zip(bg.par_chunks_mut(w))
            .enumerate()
            .map(|(y, (fg_row, bg_row))| {
                let mut band = Vec::new();
                for x in 0..w {
                    let i = y * w + x;
                    let a = alpha[i];
                    let differs = |j: usize| alpha[j] != a;
                    let edge = !matches!(a, 0 | 255)
                        || (x > 0 && differs(i - 1))
                        || (x + 1 < w && differs(i + 1))
                        || (y > 0 && differs(i - w))
                        || (y + 1 < h && differs(i + w));
                    if edge {
                        band.push((x as u32, y as u32));
                    } else if a == 255 {
                        // Opaque: the photo shows the subject itself.
                        fg_row[x] = self.colour16(i);
                    } else {
                        // Transparent: the photo shows the background.
                        bg_row[x] = self.colour16(i);
                    }
                }
                band
            })
            .collect();
        rows.concat()
    }

    /// One Gauss-Seidel sweep over `band`, in row order (pymatting's order), updating `fg`
    /// and `bg` in place.
    fn sweep(&self, band: &[(u32, u32)], fg: &mut [Px16], bg: &mut [Px16], p: &Params) {
        const TO_UNIT: f32 = 1.0 / 255.0;
        const FROM16: f32 = 1.0 / ONE;
        let (w, h) = (self.w, self.h);
        let (alpha, image): (&[u8], &[u8]) = (&self.alpha, &self.image);
        for &(x, y) in band {
            let (x, y) = (x as usize, y as usize);
            let i = y * w + x;
            let a0 = f32::from(alpha[i]) * TO_UNIT;
            let a1 = 1.0 - a0;
            let (mut a00, a01, mut a11) = (a0 * a0, a0 * a1, a1 * a1);
            let px = &image[3 * i..3 * i + 3];
            let colour = [0, 1, 2].map(|c| f32::from(px[c]) * TO_UNIT);
            let mut b0 = colour.map(|v| a0 * v);
            let mut b1 = colour.map(|v| a1 * v);
            // Neighbours clamped at the border, as pymatting does (an edge pixel counts
            // itself).
            let neighbours = [
                if x > 0 { i - 1 } else { i },
                if x + 1 < w { i + 1 } else { i },
                if y > 0 { i - w } else { i },
                if y + 1 < h { i + w } else { i },
            ];
            for j in neighbours {
                let weight = p.regularization
                    + p.gradient_weight * (a0 - f32::from(alpha[j]) * TO_UNIT).abs();
                a00 += weight;
                a11 += weight;
                let (f, b, wf) = (fg[j], bg[j], weight * FROM16);
                for c in 0..3 {
                    b0[c] += wf * f32::from(f[c]);
                    b1[c] += wf * f32::from(b[c]);
                }
            }
            let inv = 1.0 / (a00 * a11 - a01 * a01);
            let (m00, m01, m11) = (inv * a11, -inv * a01, inv * a00);
            for c in 0..3 {
                fg[i][c] = to16((m00 * b0[c] + m01 * b1[c]).clamp(0.0, 1.0));
                bg[i][c] = to16((m01 * b0[c] + m11 * b1[c]).clamp(0.0, 1.0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known foreground composited over a saturated background with a soft alpha ramp: the
    /// estimate gets the foreground back where the photo alone would show the background.
    #[test]
    fn recovers_a_known_foreground_over_a_saturated_background() {
        let (w, h) = (96u32, 64u32);
        let fg_colour =
            |x: u32, y: u32| [200.0, 150.0 + (y as f32 / h as f32) * 50.0, 60.0 + x as f32];
        let bg_colour = [0.0, 255.0, 0.0];
        // Opaque on the left, a soft edge across the middle third, transparent on the right.
        let alpha_at = |x: u32| ((64.0 - x as f32) / 32.0).clamp(0.0, 1.0);
        let alpha = GrayImage::from_fn(w, h, |x, _| {
            image::Luma([(alpha_at(x) * 255.0).round() as u8])
        });
        let image = RgbImage::from_fn(w, h, |x, y| {
            let a = f32::from(alpha.get_pixel(x, y).0[0]) / 255.0;
            let f = fg_colour(x, y);
            image::Rgb([0, 1, 2].map(|c| (a * f[c] + (1.0 - a) * bg_colour[c]).round() as u8))
        });
        let fg = estimate_foreground(&image, &alpha, &Params::default());
        let (mut err_est, mut err_orig, mut n) = (0.0f64, 0.0f64, 0);
        for y in 0..h {
            for x in 0..w {
                let a = alpha_at(x);
                // Only where the subject is partly visible (and visible enough to judge).
                if !(0.2..1.0).contains(&a) {
                    continue;
                }
                let truth = fg_colour(x, y);
                let (est, orig) = (fg.get_pixel(x, y).0, image.get_pixel(x, y).0);
                for c in 0..3 {
                    err_est += f64::from((f32::from(est[c]) - truth[c]).abs());
                    err_orig += f64::from((f32::from(orig[c]) - truth[c]).abs());
                }
                n += 3;
            }
        }
        let (err_est, err_orig) = (err_est / f64::from(n), err_orig / f64::from(n));
        assert!(err_est < 8.0, "mean error {err_est:.2} levels");
        assert!(err_orig > 40.0, "the photo alone is off by {err_orig:.2}");
        // Opaque pixels keep the photo's colour.
        assert_eq!(fg.get_pixel(3, 10).0, image.get_pixel(3, 10).0);
    }

    #[test]
    fn odd_sizes_and_single_pixels() {
        for (w, h) in [(1, 1), (1, 7), (13, 1), (3, 2)] {
            let image = RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]));
            let alpha = GrayImage::from_pixel(w, h, image::Luma([255]));
            let fg = estimate_foreground(&image, &alpha, &Params::default());
            assert_eq!(fg.dimensions(), (w, h));
            assert!(fg.pixels().all(|p| p.0 == [10, 20, 30]), "{w}x{h}");
        }
    }
}
