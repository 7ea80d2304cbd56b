//! Alpha-matting refinement for hair and fur: closed-form matting (Levin, Lischinski and Weiss,
//! "A Closed-Form Solution to Natural Image Matting", 2008), solved only where the network's
//! mask is unsure.
//!
//! 1. **Trimap.** Pixels whose mask is above [`Params::foreground`] are subject, below
//!    [`Params::background`] background; each set is eroded by a square of [`Params::band`]
//!    pixels (as rembg builds its trimap), and everything else is unknown.
//! 2. **Solve.** Alpha is the minimiser of `a^T L a` with the known pixels fixed, where `L` is the
//!    matting Laplacian: every 3x3 window `k` assumes alpha is an affine function of colour, and
//!    contributes `delta_ij - (1 + (I_i - mu_k)^T (Sigma_k + eps/9 I)^-1 (I_j - mu_k)) / 9` for
//!    each pair of its pixels. Only windows touching an unknown pixel take part (the others add
//!    nothing to the unknown rows). The system `L_UU a_U = -L_UK a_K` is solved by conjugate
//!    gradients with a Jacobi preconditioner, matrix-free: each product walks the windows twice
//!    (their sums, then each unknown pixel's nine windows), both passes parallel by rows. A wide
//!    band is solved first at half the size, recursively, and the full-size solve starts from
//!    that answer ([`refine`]); a narrow one starts from the network's own alpha.
//!
//! The Laplacian and its defaults (eps = 1e-7, radius 1) are pymatting's `cf_laplacian`, which
//! rembg applies with its `alpha_matting` option; the test in `worker/tests/it/golden.rs` holds
//! the result to pymatting's `estimate_alpha_cf` on the same photo and trimap. Converging as
//! far on a wide band at full size takes this preconditioner thousands of iterations (pymatting
//! uses an incomplete Cholesky factor); the defaults stop earlier, see
//! [`Params::max_iterations`].
//!
//! Numbers are `f64`: a nearly flat window's covariance is nearly singular (its inverse reaches
//! 9 / eps), and in single precision the products with it drift by tens of levels.
//!
//! Memory: per pixel two `u32` index planes and the `f32` result (12 bytes), the trimap and the
//! starting alpha (2); per window that touches the unknown band its colour sums and inverse
//! covariance (56), its centre (4) and four scratch values (32); per unknown pixel its index (4),
//! the diagonal and the five vectors of an iteration (48): [`BYTES_PER_PIXEL`] when every pixel
//! is unknown (the half-size levels are freed before the full-size solve starts).

use image::{GrayImage, RgbImage};
use rayon::prelude::*;

/// Working bytes per pixel in the worst case (every pixel unknown), for the job's plan.
pub const BYTES_PER_PIXEL: u64 = 12 + 2 + (56 + 4 + 32) + (4 + 48);

const NONE: u32 = u32::MAX;

/// The refinement's settings (defaults: rembg's trimap, pymatting's Laplacian).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Mask values above this are subject before erosion.
    pub foreground: u8,
    /// Mask values below this are background before erosion.
    pub background: u8,
    /// Side of the square both known regions are eroded by.
    pub band: u32,
    /// Regularisation of each window's colour covariance.
    pub epsilon: f64,
    /// Stop once the residual is this fraction of the right-hand side's norm...
    pub tolerance: f64,
    /// ...or after this many iterations (at each level of [`refine`]). The defaults bound the
    /// time (about 12 s for a 12 MP photo with 0.7 M unknown pixels on 2 cores) at the price of
    /// convergence on wide bands: see `docs/benchmarks.md`, "Alpha matting".
    pub max_iterations: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            foreground: 240,
            background: 10,
            band: 10,
            epsilon: 1e-7,
            tolerance: 1e-4,
            max_iterations: 300,
        }
    }
}

/// Trimap values.
pub const UNKNOWN: u8 = 128;

/// The trimap of `mask`: 255 subject, 0 background, [`UNKNOWN`] between. Erosion treats pixels
/// outside the image as not subject and as background (scipy's `binary_erosion` with
/// `border_value` 0 and 1, as rembg calls it), with the square's centre at `band / 2`.
pub fn trimap(mask: &GrayImage, p: &Params) -> GrayImage {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let fg: Vec<bool> = mask.pixels().map(|m| m.0[0] > p.foreground).collect();
    let bg: Vec<bool> = mask.pixels().map(|m| m.0[0] < p.background).collect();
    let fg = erode(&fg, w, h, p.band as usize, false);
    let bg = erode(&bg, w, h, p.band as usize, true);
    GrayImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        image::Luma([if fg[i] {
            255
        } else if bg[i] {
            0
        } else {
            UNKNOWN
        }])
    })
}

/// Binary erosion by a `size` x `size` square (offsets `-size/2 ..= size - 1 - size/2`), rows
/// then columns; `border` is the value outside the image.
fn erode(set: &[bool], w: usize, h: usize, size: usize, border: bool) -> Vec<bool> {
    if size <= 1 {
        return set.to_vec();
    }
    let before = size / 2;
    let after = size - 1 - before;
    // A line keeps a pixel when every pixel within the window along it is set.
    let line = |get: &dyn Fn(usize) -> bool, n: usize, out: &mut dyn FnMut(usize, bool)| {
        // Prefix counts of unset pixels.
        let mut unset = vec![0u32; n + 1];
        for i in 0..n {
            unset[i + 1] = unset[i] + u32::from(!get(i));
        }
        for i in 0..n {
            let outside = i < before || i + after >= n;
            let lo = i.saturating_sub(before);
            let hi = (i + after).min(n - 1);
            let all = unset[hi + 1] == unset[lo] && (border || !outside);
            out(i, all);
        }
    };
    let mut rows = vec![false; w * h];
    for y in 0..h {
        let row = &set[y * w..(y + 1) * w];
        line(&|x| row[x], w, &mut |x, v| rows[y * w + x] = v);
    }
    let mut out = vec![false; w * h];
    for x in 0..w {
        line(&|y| rows[y * w + x], h, &mut |y, v| out[y * w + x] = v);
    }
    out
}

/// The solver's number type (see the module's notes on precision).
type F = f64;

/// One 3x3 window that touches the unknown band: its colour sums (the mean, exactly, without
/// storing it in floating point) and the inverse of its regularised covariance (symmetric: 00,
/// 01, 02, 11, 12, 22).
#[derive(Clone, Copy)]
struct Window {
    sums: [u16; 3],
    inv: [F; 6],
}

impl Window {
    fn new(px: &[[u8; 3]; 9], epsilon: F) -> Self {
        let mut sums = [0u16; 3];
        for p in px {
            for c in 0..3 {
                sums[c] += u16::from(p[c]);
            }
        }
        let mean = sums.map(|s| F::from(s) / (9.0 * 255.0));
        let px = px.map(|p| p.map(|v| F::from(v) / 255.0));
        let mut a = [epsilon, 0.0, 0.0, epsilon, 0.0, epsilon];
        for p in &px {
            let d = [p[0] - mean[0], p[1] - mean[1], p[2] - mean[2]];
            a[0] += d[0] * d[0];
            a[1] += d[0] * d[1];
            a[2] += d[0] * d[2];
            a[3] += d[1] * d[1];
            a[4] += d[1] * d[2];
            a[5] += d[2] * d[2];
        }
        let [a00, a01, a02, a11, a12, a22] = a.map(|v| v / 9.0);
        let m00 = a11 * a22 - a12 * a12;
        let m01 = a02 * a12 - a01 * a22;
        let m02 = a01 * a12 - a02 * a11;
        let det = a00 * m00 + a01 * m01 + a02 * m02;
        let m11 = a00 * a22 - a02 * a02;
        let m12 = a01 * a02 - a00 * a12;
        let m22 = a00 * a11 - a01 * a01;
        let inv = [m00, m01, m02, m11, m12, m22].map(|m| m / det);
        Self { sums, inv }
    }

    fn centred(&self, colour: [F; 3]) -> [F; 3] {
        let mean = |c: usize| F::from(self.sums[c]) / (9.0 * 255.0);
        [
            colour[0] - mean(0),
            colour[1] - mean(1),
            colour[2] - mean(2),
        ]
    }

    fn times_inv(&self, v: [F; 3]) -> [F; 3] {
        let m = &self.inv;
        [
            m[0] * v[0] + m[1] * v[1] + m[2] * v[2],
            m[1] * v[0] + m[3] * v[1] + m[4] * v[2],
            m[2] * v[0] + m[4] * v[1] + m[5] * v[2],
        ]
    }
}

fn dot3(a: [F; 3], b: [F; 3]) -> F {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The matting system over the unknown pixels.
struct System<'a> {
    image: &'a RgbImage,
    trimap: &'a GrayImage,
    w: usize,
    /// Window index by centre pixel (`NONE`: no window there or it touches no unknown pixel).
    window_at: Vec<u32>,
    windows: Vec<Window>,
    centres: Vec<u32>,
    /// Unknown index by pixel.
    unknown_at: Vec<u32>,
    unknown: Vec<u32>,
    diagonal: Vec<F>,
}

impl<'a> System<'a> {
    fn new(image: &'a RgbImage, trimap: &'a GrayImage, epsilon: f64) -> Self {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let is_unknown = |i: usize| !matches!(trimap.as_raw()[i], 0 | 255);
        let mut unknown_at = vec![NONE; w * h];
        let mut unknown = Vec::new();
        for (i, slot) in unknown_at.iter_mut().enumerate() {
            if is_unknown(i) {
                *slot = unknown.len() as u32;
                unknown.push(i as u32);
            }
        }
        let colour = |i: usize| {
            let p = &image.as_raw()[i * 3..i * 3 + 3];
            [p[0], p[1], p[2]]
        };
        let mut window_at = vec![NONE; w * h];
        let mut centres = Vec::new();
        if w >= 3 && h >= 3 {
            for y in 1..h - 1 {
                for x in 1..w - 1 {
                    let touches = (0..9).any(|k| is_unknown((y + k / 3 - 1) * w + x + k % 3 - 1));
                    if touches {
                        window_at[y * w + x] = centres.len() as u32;
                        centres.push((y * w + x) as u32);
                    }
                }
            }
        }
        let windows: Vec<Window> = centres
            .par_iter()
            .map(|&c| {
                let (x, y) = (c as usize % w, c as usize / w);
                let px = std::array::from_fn(|k| colour((y + k / 3 - 1) * w + x + k % 3 - 1));
                Window::new(&px, epsilon)
            })
            .collect();
        let mut sys = Self {
            image,
            trimap,
            w,
            window_at,
            windows,
            centres,
            unknown_at,
            unknown,
            diagonal: Vec::new(),
        };
        sys.diagonal = sys
            .unknown
            .par_iter()
            .map(|&i| {
                let ci = sys.colour(i as usize);
                sys.windows_of(i as usize)
                    .map(|k| {
                        let k = &sys.windows[k];
                        let d = k.centred(ci);
                        1.0 - (1.0 + dot3(d, k.times_inv(d))) / 9.0
                    })
                    .sum::<F>()
                    .max(1e-12)
            })
            .collect();
        sys
    }

    fn colour(&self, i: usize) -> [F; 3] {
        let p = &self.image.as_raw()[i * 3..i * 3 + 3];
        [p[0], p[1], p[2]].map(|v| F::from(v) / 255.0)
    }

    /// The indices of the windows (centred within one pixel of `i`) that hold pixel `i`.
    fn windows_of(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let (x, y) = (i % self.w, i / self.w);
        let h = self.window_at.len() / self.w;
        (0..9).filter_map(move |k| {
            let (cx, cy) = ((x + k % 3).checked_sub(1)?, (y + k / 3).checked_sub(1)?);
            if cx >= self.w || cy >= h {
                return None;
            }
            let idx = self.window_at[cy * self.w + cx];
            (idx != NONE).then_some(idx as usize)
        })
    }

    /// The alpha the trimap fixes at a known pixel (0 or 1).
    fn known(&self, i: usize) -> F {
        if self.trimap.as_raw()[i] == 255 {
            1.0
        } else {
            0.0
        }
    }

    /// `(L y)` on the unknown pixels, where `y` is `values` on the unknown pixels and, when
    /// `with_known`, the trimap's alpha on the known ones (else 0).
    fn apply(&self, values: &[F], with_known: bool) -> Vec<F> {
        let value = |i: usize| match self.unknown_at[i] {
            NONE if with_known => self.known(i),
            NONE => 0.0,
            u => values[u as usize],
        };
        // Per window: the sum of `y` and `Sigma^-1 * sum (I_j - mu) y_j`.
        let sums: Vec<[F; 4]> = self
            .centres
            .par_iter()
            .zip(&self.windows)
            .map(|(&c, k)| {
                let (x, y) = (c as usize % self.w, c as usize / self.w);
                let mut s = 0.0;
                let mut v = [0.0 as F; 3];
                for j in 0..9 {
                    let p = (y + j / 3 - 1) * self.w + x + j % 3 - 1;
                    let yj = value(p);
                    let d = k.centred(self.colour(p));
                    s += yj;
                    v = [v[0] + d[0] * yj, v[1] + d[1] * yj, v[2] + d[2] * yj];
                }
                let t = k.times_inv(v);
                [s, t[0], t[1], t[2]]
            })
            .collect();
        self.unknown
            .par_iter()
            .map(|&i| {
                let i = i as usize;
                let yi = value(i);
                let ci = self.colour(i);
                self.windows_of(i)
                    .map(|k| {
                        let [s, t0, t1, t2] = sums[k];
                        yi - (s + dot3(self.windows[k].centred(ci), [t0, t1, t2])) / 9.0
                    })
                    .sum::<F>()
            })
            .collect()
    }
}

fn dot(a: &[F], b: &[F]) -> f64 {
    a.par_iter().zip(b).map(|(&x, &y)| x * y).sum()
}

/// What [`solve`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub unknown: usize,
    pub iterations: usize,
    /// Final residual over the right-hand side's norm.
    pub residual: f64,
}

/// Alpha (0..=1, one value a pixel) for `image` under `trimap`, starting from `initial` (0..=255,
/// e.g. the network's mask) on the unknown pixels, or from 0.5.
pub fn solve(
    image: &RgbImage,
    trimap: &GrayImage,
    initial: Option<&GrayImage>,
    p: &Params,
) -> (Vec<f32>, Report) {
    let sys = System::new(image, trimap, p.epsilon);
    let n = sys.unknown.len();
    let mut alpha: Vec<f32> = (0..trimap.as_raw().len())
        .map(|i| sys.known(i) as f32)
        .collect();
    if n == 0 {
        return (
            alpha,
            Report {
                unknown: 0,
                iterations: 0,
                residual: 0.0,
            },
        );
    }
    let mut x: Vec<F> = sys
        .unknown
        .iter()
        .map(|&i| initial.map_or(0.5, |m| F::from(m.as_raw()[i as usize]) / 255.0))
        .collect();
    // b = -(L_UK a_K); r = b - L_UU x = -(L [x; a_K])_U.
    let b = sys.apply(&vec![0.0; n], true);
    let b_norm = dot(&b, &b).sqrt();
    drop(b);
    let mut r: Vec<F> = sys.apply(&x, true).into_iter().map(|v| -v).collect();
    let mut z: Vec<F> = r.iter().zip(&sys.diagonal).map(|(r, d)| r / d).collect();
    let mut dir = z.clone();
    let mut rz = dot(&r, &z);
    let mut iterations = 0;
    let mut residual = dot(&r, &r).sqrt() / b_norm.max(f64::MIN_POSITIVE);
    while iterations < p.max_iterations && residual > p.tolerance {
        let ad = sys.apply(&dir, false);
        let step = rz / dot(&dir, &ad);
        if !step.is_finite() {
            break;
        }
        x.par_iter_mut().zip(&dir).for_each(|(x, d)| *x += step * d);
        r.par_iter_mut().zip(&ad).for_each(|(r, a)| *r -= step * a);
        z.par_iter_mut()
            .zip(&r)
            .zip(&sys.diagonal)
            .for_each(|((z, r), d)| *z = r / d);
        let rz_next = dot(&r, &z);
        let beta = rz_next / rz;
        rz = rz_next;
        dir.par_iter_mut()
            .zip(&z)
            .for_each(|(d, z)| *d = z + beta * *d);
        iterations += 1;
        residual = dot(&r, &r).sqrt() / b_norm.max(f64::MIN_POSITIVE);
    }
    for (&i, v) in sys.unknown.iter().zip(&x) {
        alpha[i as usize] = v.clamp(0.0, 1.0) as f32;
    }
    (
        alpha,
        Report {
            unknown: n,
            iterations,
            residual,
        },
    )
}

/// Above this many unknown pixels, [`refine`] first solves at half the size.
const COARSE_ABOVE: usize = 1 << 16;

/// `mask` refined by closed-form matting on `image` (same size), as an 8-bit mask.
///
/// Conjugate gradients move information about a pixel per iteration, so a wide unknown band
/// needs many of them at full size. When the band is large the problem is solved first on the
/// photo and mask at half the size (the band halved too), recursively, and that answer, scaled
/// back up, is where the full-size solve starts: the coarse levels settle the smooth part of
/// the matte for a quarter of the cost each, the full size only its detail.
pub fn refine(image: &RgbImage, mask: &GrayImage, p: &Params) -> GrayImage {
    use image::imageops::{FilterType, resize};
    let tri = trimap(mask, p);
    let unknown = tri.pixels().filter(|t| t.0[0] == UNKNOWN).count();
    let (w, h) = image.dimensions();
    let coarse = (unknown > COARSE_ABOVE && w >= 64 && h >= 64).then(|| {
        let half = |v: u32| v / 2;
        let small = refine(
            &resize(image, half(w), half(h), FilterType::Triangle),
            &resize(mask, half(w), half(h), FilterType::Triangle),
            &Params {
                band: (p.band / 2).max(1),
                ..*p
            },
        );
        resize(&small, w, h, FilterType::Triangle)
    });
    let (alpha, report) = solve(image, &tri, Some(coarse.as_ref().unwrap_or(mask)), p);
    tracing::debug!(
        width = w,
        unknown = report.unknown,
        iterations = report.iterations,
        residual = report.residual,
        "alpha matting"
    );
    GrayImage::from_raw(
        mask.width(),
        mask.height(),
        alpha.iter().map(|a| (a * 255.0).round() as u8).collect(),
    )
    .expect("one value a pixel")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_counts_what_the_solver_holds() {
        assert_eq!(
            BYTES_PER_PIXEL,
            backless_common::job::plan::MATTING_BYTES_PER_PIXEL
        );
        assert_eq!(std::mem::size_of::<Window>(), 56);
    }

    #[test]
    fn erosion_matches_a_square_with_its_centre_at_half_the_side() {
        // One set pixel survives no erosion; a 12x12 block eroded by 10 keeps its 3x3 core
        // (offsets -5..=4: rows and columns 5..=7 of 0..12).
        let (w, h) = (20, 20);
        let mut set = vec![false; w * h];
        for y in 0..12 {
            for x in 0..12 {
                set[y * w + x] = true;
            }
        }
        let out = erode(&set, w, h, 10, false);
        let kept: Vec<(usize, usize)> = (0..w * h)
            .filter(|&i| out[i])
            .map(|i| (i % w, i / w))
            .collect();
        // With a border of "unset", the block's top-left corner touches the image edge.
        assert_eq!(
            kept,
            vec![
                (5, 5),
                (6, 5),
                (7, 5),
                (5, 6),
                (6, 6),
                (7, 6),
                (5, 7),
                (6, 7),
                (7, 7)
            ]
        );
        let out = erode(&set, w, h, 10, true);
        let kept = (0..w * h).filter(|&i| out[i]).count();
        // The image edge now counts as set: rows/columns 0..=7.
        assert_eq!(kept, 64);
    }

    /// A synthetic composite: a known soft alpha mixes a red subject over a blue background;
    /// the solver recovers that alpha from a trimap that leaves the whole ramp unknown.
    #[test]
    fn recovers_a_soft_edge_between_two_colours() {
        let (w, h) = (64u32, 24u32);
        let truth = |x: u32| ((x as f32 - 20.0) / 24.0).clamp(0.0, 1.0);
        let image = RgbImage::from_fn(w, h, |x, _| {
            let a = truth(x);
            let mix = |f: f32, b: f32| (a * f + (1.0 - a) * b).round() as u8;
            image::Rgb([mix(220.0, 20.0), mix(40.0, 60.0), mix(30.0, 200.0)])
        });
        let trimap = GrayImage::from_fn(w, h, |x, _| {
            image::Luma([match x {
                0..=15 => 0,
                48.. => 255,
                _ => UNKNOWN,
            }])
        });
        let params = Params {
            tolerance: 1e-6,
            max_iterations: 2000,
            ..Params::default()
        };
        let (alpha, report) = solve(&image, &trimap, None, &params);
        assert!(report.residual <= 1e-6, "{report:?}");
        let (mut sum, mut max) = (0.0f32, 0.0f32);
        for y in 0..h {
            for x in 0..w {
                let e = (alpha[(y * w + x) as usize] - truth(x)).abs();
                sum += e;
                max = max.max(e);
            }
        }
        let mean = sum / (w * h) as f32;
        // The photo is 8-bit, so its colours sit off the line between the two by up to half a
        // level: that and eps, not the solver, bound the error.
        assert!(mean < 0.002, "mean error {mean}");
        assert!(max < 0.01, "max error {max}");
    }

    #[test]
    fn a_trimap_without_unknown_pixels_is_the_trimap() {
        let image = RgbImage::new(8, 8);
        let tri = GrayImage::from_fn(8, 8, |x, _| image::Luma([if x < 4 { 0 } else { 255 }]));
        let (alpha, report) = solve(&image, &tri, None, &Params::default());
        assert_eq!(report.iterations, 0);
        assert_eq!(alpha[3], 0.0);
        assert_eq!(alpha[4], 1.0);
        // Tiny images have no full window: nothing to solve, nothing to crash.
        let tiny = GrayImage::from_pixel(2, 2, image::Luma([UNKNOWN]));
        let (alpha, _) = solve(&RgbImage::new(2, 2), &tiny, None, &Params::default());
        assert_eq!(alpha.len(), 4);
    }
}
