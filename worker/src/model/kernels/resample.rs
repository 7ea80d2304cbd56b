//! Pooling and resizing on NCHW planes, one channel per rayon task.

use rayon::prelude::*;

/// 2x2 max pooling, stride 2, ceil mode: an odd last row or column forms a window of its own.
/// `src` is `c` planes of `h x w`; returns `c` planes of `ceil(h/2) x ceil(w/2)`.
pub fn max_pool_ceil(src: &[f32], c: usize, h: usize, w: usize) -> (Vec<f32>, usize, usize) {
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let mut out = vec![0f32; c * ho * wo];
    out.par_chunks_mut(ho * wo)
        .zip(src.par_chunks(h * w))
        .for_each(|(dst, plane)| {
            for (oy, drow) in dst.chunks_exact_mut(wo).enumerate() {
                let r0 = &plane[2 * oy * w..(2 * oy + 1) * w];
                let r1 = if 2 * oy + 1 < h {
                    &plane[(2 * oy + 1) * w..(2 * oy + 2) * w]
                } else {
                    r0
                };
                for (ox, d) in drow.iter_mut().enumerate() {
                    let (x0, x1) = (2 * ox, (2 * ox + 1).min(w - 1));
                    *d = r0[x0].max(r0[x1]).max(r1[x0].max(r1[x1]));
                }
            }
        });
    (out, ho, wo)
}

/// Source index pair and weight of the second for each output coordinate, half-pixel centres
/// (PyTorch `align_corners=False` with an explicit size).
fn taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let src = (scale * (o as f64 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, (src - i0 as f64).clamp(0.0, 1.0) as f32)
        })
        .collect()
}

/// Bilinear resize of `c` planes of `h x w` to `ho x wo`.
pub fn upsample_bilinear(
    src: &[f32],
    c: usize,
    (h, w): (usize, usize),
    (ho, wo): (usize, usize),
) -> Vec<f32> {
    let ys = taps(h, ho);
    let xs = taps(w, wo);
    let mut out = vec![0f32; c * ho * wo];
    out.par_chunks_mut(ho * wo)
        .zip(src.par_chunks(h * w))
        .for_each(|(dst, plane)| {
            let mut r0 = vec![0f32; wo];
            let mut r1 = vec![0f32; wo];
            let lerp_row = |row: &[f32], out: &mut [f32]| {
                for (o, &(x0, x1, lx)) in out.iter_mut().zip(&xs) {
                    *o = row[x0] + (row[x1] - row[x0]) * lx;
                }
            };
            let mut cached = (usize::MAX, usize::MAX);
            for (drow, &(y0, y1, ly)) in dst.chunks_exact_mut(wo).zip(&ys) {
                if cached != (y0, y1) {
                    lerp_row(&plane[y0 * w..(y0 + 1) * w], &mut r0);
                    lerp_row(&plane[y1 * w..(y1 + 1) * w], &mut r1);
                    cached = (y0, y1);
                }
                for ((d, a), b) in drow.iter_mut().zip(&r0).zip(&r1) {
                    *d = a + (b - a) * ly;
                }
            }
        });
    out
}
