//! Convolution as tiled im2col + gemm with a fused epilogue.
//!
//! The output `(out_ch, ho * wo)` is `W (out_ch, in_ch * k * k) x col (in_ch * k * k, ho * wo)`,
//! where `W` is the OIHW weight as stored (already the row-major left-hand matrix, so no repacking)
//! and `col` holds, for each `(ci, ky, kx)`, the input plane shifted by that tap (zeros outside).
//! Pixels are cut into tiles whose `col` block stays cache-sized, and when there are too few
//! pixels to keep every thread busy, output channels are split as well; each tile is one rayon
//! task running a single-threaded gemm into its block of the NCHW output, followed by bias, ReLU
//! and the residual add while that block is still in cache. Several input tensors are read as
//! one channel-concatenated input, so decoders never materialise their `cat`.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::SharedMut;
use super::shape::finish_row;
pub use super::shape::{ConvShape, Epilogue};
use super::winograd::WinogradConv;

/// Bytes of `col` one tile aims at (a share of a 1 MiB L2).
const COL_BYTES: usize = 384 * 1024;
/// Fewest pixels a tile gets, below which gemm's packing overhead dominates.
const MIN_TILE_PIXELS: usize = 64;
/// Fewest output channels a channel split leaves per task.
const MIN_TILE_CHANNELS: usize = 32;
/// Use Winograd when its gemm work is below this fraction of im2col's.
const WINOGRAD_BELOW: f64 = 0.75;
/// Fewest input and output channels for Winograd: below, its transforms cost more than they save.
const WINOGRAD_MIN_CHANNELS: usize = 16;
/// Tasks per thread wanted for load balance.
const TASKS_PER_THREAD: usize = 3;
/// Layers with at most this many output channels (the side outputs: 64 -> 1) convolve directly:
/// im2col would copy the input `k²` times to feed a gemm with a single row.
const DIRECT_MAX_OUT: usize = 4;

thread_local! {
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A convolution's weights, laid out for the kernel at load time.
#[derive(Debug, Clone)]
pub struct PackedConv {
    pub shape: ConvShape,
    /// `(out_ch, in_ch * k * k)` row-major; empty when `winograd` holds the weights (they are
    /// rebuilt from it in the rare case a map is too small for Winograd to pay).
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// The same weights transformed for Winograd (F(4x4) or F(2x2), by width), for stride-1 3x3
    /// layers.
    winograd: Option<WinogradConv>,
}

impl PackedConv {
    /// `weight` is OIHW, `bias` has `out_ch` values.
    pub fn new(shape: ConvShape, weight: Vec<f32>, bias: Vec<f32>) -> Self {
        let k = shape.in_ch * shape.kernel * shape.kernel;
        assert_eq!(weight.len(), shape.out_ch * k, "weight size");
        assert_eq!(bias.len(), shape.out_ch, "bias size");
        let winograd = (shape.kernel == 3
            && shape.stride == 1
            && shape.padding == shape.dilation
            && shape.in_ch.min(shape.out_ch) >= WINOGRAD_MIN_CHANNELS)
            .then(|| WinogradConv::new(shape, &weight, bias.clone()));
        // The transformed weights are 16/9 (F(2x2)) or 4x (F(4x4)) the originals: keeping both
        // would hold that much more again.
        let weight = if winograd.is_some() {
            Vec::new()
        } else {
            weight
        };
        Self {
            shape,
            weight,
            bias,
            winograd,
        }
    }

    /// The `(out_ch, in_ch * k * k)` weights for the non-Winograd paths: as stored, or rebuilt
    /// from the transformed ones when only those are kept (a map too small for Winograd to pay).
    fn plain_weight(&self) -> std::borrow::Cow<'_, [f32]> {
        match &self.winograd {
            Some(wg) if self.weight.is_empty() => wg.original_weight().into(),
            _ => (&self.weight[..]).into(),
        }
    }

    /// Convolve the channel concatenation of `parts` (each `(channels, h * w)` NCHW data, batch 1)
    /// and return the `(out_ch, ho * wo)` output.
    pub fn run(&self, parts: &[&[f32]], h: usize, w: usize, epilogue: Epilogue) -> Vec<f32> {
        let s = self.shape;
        let plane = h * w;
        let planes: Vec<&[f32]> = parts
            .iter()
            .flat_map(|p| {
                assert_eq!(p.len() % plane, 0, "input part is not whole planes");
                p.chunks_exact(plane)
            })
            .collect();
        assert_eq!(planes.len(), s.in_ch, "input channels");
        let (ho, wo) = s.out_size(h, w);
        let pixels = ho * wo;
        if let Some(r) = epilogue.residual {
            assert_eq!(r.len(), s.out_ch * pixels, "residual size");
        }
        if let Some(wg) = &self.winograd
            && wg.relative_cost(h, w) < WINOGRAD_BELOW
        {
            return wg.run(&planes, h, w, epilogue);
        }
        if s.stride == 1 && s.out_ch <= DIRECT_MAX_OUT {
            return self.run_direct(&planes, h, w, epilogue);
        }
        let weight = self.plain_weight();
        let kdim = s.in_ch * s.kernel * s.kernel;
        let threads = rayon::current_num_threads().max(1);
        let want = threads * TASKS_PER_THREAD;

        let mut tile = (COL_BYTES / (4 * kdim)).max(MIN_TILE_PIXELS);
        if pixels.div_ceil(tile) < want {
            tile = pixels.div_ceil(want).max(MIN_TILE_PIXELS);
        }
        let tile = tile.min(pixels).max(1);
        let pix_tiles = pixels.div_ceil(tile);
        let ch_tiles = if pix_tiles >= want {
            1
        } else {
            want.div_ceil(pix_tiles)
                .min(s.out_ch.div_ceil(MIN_TILE_CHANNELS))
                .max(1)
        };
        let ch_blk = s.out_ch.div_ceil(ch_tiles);
        let ch_tiles = s.out_ch.div_ceil(ch_blk);

        let mut out = vec![0f32; s.out_ch * pixels];
        let dst = SharedMut::new(&mut out);
        let geom = Geom { h, w, wo };
        (0..pix_tiles * ch_tiles).into_par_iter().for_each(|t| {
            let (pt, ct) = (t / ch_tiles, t % ch_tiles);
            let p0 = pt * tile;
            let p1 = (p0 + tile).min(pixels);
            let c0 = ct * ch_blk;
            let c1 = (c0 + ch_blk).min(s.out_ch);
            COL.with_borrow_mut(|col| {
                let n = p1 - p0;
                col.resize(kdim * n, 0.0);
                im2col(&planes, &s, &geom, p0, p1, &mut col[..kdim * n]);
                // SAFETY: this task alone writes rows c0..c1, columns p0..p1 of `out`, which
                // outlives the parallel loop; lhs and rhs are in bounds for the strides given.
                unsafe {
                    let base = dst.get().add(c0 * pixels + p0);
                    gemm::gemm(
                        c1 - c0,
                        n,
                        kdim,
                        base,
                        1,
                        pixels as isize,
                        false,
                        weight.as_ptr().add(c0 * kdim),
                        1,
                        kdim as isize,
                        col.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                    for c in c0..c1 {
                        let row = std::slice::from_raw_parts_mut(dst.get().add(c * pixels + p0), n);
                        finish_row(row, self.bias[c], epilogue, c * pixels + p0);
                    }
                }
            });
        });
        out
    }
}

impl PackedConv {
    /// Stride-1 convolution with few output channels, row by row: each output row is
    /// accumulated in place from `in_ch * k * k` shifted input rows (an axpy each, in L1), then
    /// finished with the epilogue. One task per band of rows.
    fn run_direct(&self, planes: &[&[f32]], h: usize, w: usize, epilogue: Epilogue) -> Vec<f32> {
        let s = self.shape;
        let (ho, wo) = s.out_size(h, w);
        let weight = self.plain_weight();
        let mut out = vec![0f32; s.out_ch * ho * wo];
        let band = ho.div_ceil(rayon::current_num_threads().max(1) * TASKS_PER_THREAD);
        let dst = SharedMut::new(&mut out);
        (0..ho.div_ceil(band)).into_par_iter().for_each(|t| {
            let rows = t * band..((t + 1) * band).min(ho);
            for co in 0..s.out_ch {
                let wk =
                    &weight[co * s.in_ch * s.kernel * s.kernel..][..s.in_ch * s.kernel * s.kernel];
                for y in rows.clone() {
                    let at = (co * ho + y) * wo;
                    // SAFETY: row y of channel co belongs to this task alone; `out` outlives
                    // the parallel loop.
                    let row = unsafe { std::slice::from_raw_parts_mut(dst.get().add(at), wo) };
                    direct_row(planes, wk, &s, h, w, y, row);
                    finish_row(row, self.bias[co], epilogue, at);
                }
            }
        });
        out
    }
}

/// Output row `y` of one output channel (weights `wk`, `(in_ch, k, k)`) into `row`, zeroed first.
fn direct_row(
    planes: &[&[f32]],
    wk: &[f32],
    s: &ConvShape,
    h: usize,
    w: usize,
    y: usize,
    row: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present (checked just above).
        return unsafe { direct_row_avx2(planes, wk, s, h, w, y, row) };
    }
    direct_row_portable(planes, wk, s, h, w, y, row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn direct_row_avx2(
    planes: &[&[f32]],
    wk: &[f32],
    s: &ConvShape,
    h: usize,
    w: usize,
    y: usize,
    row: &mut [f32],
) {
    direct_row_portable(planes, wk, s, h, w, y, row)
}

#[inline(always)]
fn direct_row_portable(
    planes: &[&[f32]],
    wk: &[f32],
    s: &ConvShape,
    h: usize,
    w: usize,
    y: usize,
    row: &mut [f32],
) {
    let (k, d, pad) = (s.kernel, s.dilation as isize, s.padding as isize);
    let wo = row.len() as isize;
    row.fill(0.0);
    for (plane, taps) in planes.iter().zip(wk.chunks_exact(k * k)) {
        for ky in 0..k {
            let iy = y as isize + ky as isize * d - pad;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let src = &plane[iy as usize * w..][..w];
            for kx in 0..k {
                let off = kx as isize * d - pad;
                // Output columns x with 0 <= x + off < w.
                let lo = (-off).clamp(0, wo);
                let hi = (w as isize - off).clamp(lo, wo);
                if lo == hi {
                    continue;
                }
                let tap = taps[ky * k + kx];
                let (lo, hi) = (lo as usize, hi as usize);
                let input = &src[(lo as isize + off) as usize..(hi as isize + off) as usize];
                for (o, &x) in row[lo..hi].iter_mut().zip(input) {
                    *o += tap * x;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Geom {
    h: usize,
    w: usize,
    wo: usize,
}

/// Fill `col` (`in_ch * k * k` rows of `p1 - p0` values) for output pixels `p0..p1`.
fn im2col(planes: &[&[f32]], s: &ConvShape, g: &Geom, p0: usize, p1: usize, col: &mut [f32]) {
    let n = p1 - p0;
    let k = s.kernel;
    let mut rows = col.chunks_exact_mut(n);
    for plane in planes {
        for ky in 0..k {
            for kx in 0..k {
                let row = rows.next().expect("col has in_ch * k * k rows");
                let mut p = p0;
                while p < p1 {
                    let (y, x0) = (p / g.wo, p % g.wo);
                    let x1 = g.wo.min(x0 + (p1 - p));
                    let seg = &mut row[p - p0..p - p0 + (x1 - x0)];
                    fill_segment(plane, s, g, y, x0, ky, kx, seg);
                    p += x1 - x0;
                }
            }
        }
    }
}

/// Output row `y`, columns `x0..x0 + seg.len()`, of the tap `(ky, kx)`.
#[allow(clippy::too_many_arguments)]
fn fill_segment(
    plane: &[f32],
    s: &ConvShape,
    g: &Geom,
    y: usize,
    x0: usize,
    ky: usize,
    kx: usize,
    seg: &mut [f32],
) {
    let pad = s.padding as isize;
    let iy = (y * s.stride + ky * s.dilation) as isize - pad;
    if iy < 0 || iy >= g.h as isize {
        seg.fill(0.0);
        return;
    }
    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
    let off = (kx * s.dilation) as isize - pad;
    if s.stride == 1 {
        // Input column x + off must lie in 0..w.
        let x1 = (x0 + seg.len()) as isize;
        let lo = (-off).clamp(x0 as isize, x1);
        let hi = (g.w as isize - off).clamp(lo, x1);
        if lo == hi {
            seg.fill(0.0);
            return;
        }
        let (a, b) = ((lo - x0 as isize) as usize, (hi - x0 as isize) as usize);
        seg[..a].fill(0.0);
        seg[a..b].copy_from_slice(&src[(lo + off) as usize..(hi + off) as usize]);
        seg[b..].fill(0.0);
    } else {
        for (i, v) in seg.iter_mut().enumerate() {
            let ix = ((x0 + i) * s.stride) as isize + off;
            *v = if ix >= 0 && ix < g.w as isize {
                src[ix as usize]
            } else {
                0.0
            };
        }
    }
}
