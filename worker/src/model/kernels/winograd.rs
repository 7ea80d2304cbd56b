//! Winograd F(2x2, 3x3) for stride-1 3x3 convolutions, dilated ones included.
//!
//! Each 2x2 block of outputs comes from a 4x4 input patch: `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`,
//! 16 multiplies per block and channel pair instead of 36. Over a block of tiles that is 16
//! independent gemms `M[e] (out, tiles) = U[e] (out, in) x V[e] (in, tiles)`, one per position `e`
//! of the 4x4 transformed patch. `U` is computed once at load time.
//!
//! With dilation `d` a tile's outputs are `(y0, y0 + d) x (x0, x0 + d)` and its patch rows are
//! `y0 - d + {0, d, 2d, 3d}`: the same algorithm on the dilated grid. Tile origins are the `y0`
//! with `y0 mod 2d < d`, which covers every output exactly once.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::SharedMut;
use super::conv::{ConvShape, Epilogue, finish_row, finish_value};

/// Bytes of transformed input one task aims at.
const V_BYTES: usize = 512 * 1024;
const MIN_TILES: usize = 32;
const MAX_TILES: usize = 512;
const MIN_TILE_CHANNELS: usize = 32;
const TASKS_PER_THREAD: usize = 3;

thread_local! {
    static BUFS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Weights transformed for F(2x2, 3x3): `u[e]` is `(out_ch, in_ch)` row-major.
#[derive(Debug, Clone)]
pub struct WinogradConv {
    pub shape: ConvShape,
    u: Vec<f32>,
    bias: Vec<f32>,
}

/// The tile origins along one axis of length `n` for dilation `d`.
fn origins(n: usize, d: usize) -> Vec<usize> {
    (0..n).filter(|y| y % (2 * d) < d).collect()
}

/// The same origins ordered by phase `x mod 2d`, so consecutive tiles of one phase are
/// consecutive in the phase-split input (see `run`).
fn origins_by_phase(n: usize, d: usize) -> Vec<usize> {
    (0..d.min(n)).flat_map(|r| (r..n).step_by(2 * d)).collect()
}

impl WinogradConv {
    /// `weight` is OIHW 3x3, stride 1, padding = dilation.
    pub fn new(shape: ConvShape, weight: &[f32], bias: Vec<f32>) -> Self {
        assert!(shape.kernel == 3 && shape.stride == 1 && shape.padding == shape.dilation);
        let (cin, cout) = (shape.in_ch, shape.out_ch);
        let mut u = vec![0f32; 16 * cout * cin];
        for co in 0..cout {
            for ci in 0..cin {
                let g = &weight[(co * cin + ci) * 9..][..9];
                // t = G g (4x3), then U = t Gᵀ (4x4).
                let mut t = [[0f32; 3]; 4];
                for j in 0..3 {
                    let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                    t[0][j] = g0;
                    t[1][j] = 0.5 * (g0 + g1 + g2);
                    t[2][j] = 0.5 * (g0 - g1 + g2);
                    t[3][j] = g2;
                }
                for (i, row) in t.iter().enumerate() {
                    let [g0, g1, g2] = *row;
                    let vals = [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2];
                    for (j, v) in vals.into_iter().enumerate() {
                        u[((i * 4 + j) * cout + co) * cin + ci] = v;
                    }
                }
            }
        }
        Self { shape, u, bias }
    }

    /// The OIHW 3x3 weights these were made from. `G` keeps the first and last tap of each
    /// axis as they are and puts `(g0 + g1 + g2) / 2` second, so `g1 = 2 u1 - u0 - u3` inverts
    /// it exactly up to rounding.
    pub fn original_weight(&self) -> Vec<f32> {
        let (cin, cout) = (self.shape.in_ch, self.shape.out_ch);
        let mut weight = vec![0f32; cout * cin * 9];
        for co in 0..cout {
            for ci in 0..cin {
                let u = |i: usize, j: usize| self.u[((i * 4 + j) * cout + co) * cin + ci];
                // Undo Gᵀ along columns for rows 0, 1 and 3 of t = G g, then G along rows.
                let t = |i: usize| [u(i, 0), 2.0 * u(i, 1) - u(i, 0) - u(i, 3), u(i, 3)];
                let (t0, t1, t3) = (t(0), t(1), t(3));
                let g = &mut weight[(co * cin + ci) * 9..][..9];
                for j in 0..3 {
                    g[j] = t0[j];
                    g[3 + j] = 2.0 * t1[j] - t0[j] - t3[j];
                    g[6 + j] = t3[j];
                }
            }
        }
        weight
    }

    /// Gemm work relative to im2col for an `h x w` input (below 1 means Winograd is cheaper).
    pub fn relative_cost(shape: &ConvShape, h: usize, w: usize) -> f64 {
        let d = shape.dilation;
        let tiles = origins(h, d).len() * origins(w, d).len();
        (16 * tiles) as f64 / (9 * h * w) as f64
    }

    /// Same contract as [`super::conv::PackedConv::run`].
    pub fn run(&self, planes: &[&[f32]], h: usize, w: usize, epilogue: Epilogue) -> Vec<f32> {
        let s = self.shape;
        let (cin, cout, d) = (s.in_ch, s.out_ch, s.dilation);
        assert_eq!(planes.len(), cin, "input channels");
        let pixels = h * w;
        let ys = origins(h, d);
        let xs = origins_by_phase(w, d);
        let tiles = ys.len() * xs.len();
        let threads = rayon::current_num_threads().max(1);
        let want = threads * TASKS_PER_THREAD;

        let mut blk = (V_BYTES / (64 * cin)).clamp(MIN_TILES, MAX_TILES);
        if tiles.div_ceil(blk) < want {
            blk = tiles.div_ceil(want).max(MIN_TILES);
        }
        let blk = blk.min(tiles).max(1).next_multiple_of(LANES);
        let tile_tasks = tiles.div_ceil(blk);
        let ch_tiles = if tile_tasks >= want {
            1
        } else {
            want.div_ceil(tile_tasks)
                .min(cout.div_ceil(MIN_TILE_CHANNELS))
                .max(1)
        };
        let ch_blk = cout.div_ceil(ch_tiles);
        let ch_tiles = cout.div_ceil(ch_blk);

        // Zero-padded, phase-split copy of the input: padding d before and 2d after each axis
        // keeps every patch read in bounds, and each padded row is stored as its 2d phases
        // (column xp at phase xp mod 2d, index xp / 2d). A patch's four columns are then two
        // phases at two neighbouring indices, and LANES tiles of one phase read LANES
        // consecutive floats.
        let (hp, wp) = (h + 3 * d, w + 3 * d);
        let mp = wp.div_ceil(2 * d) + 1;
        let row_len = 2 * d * mp;
        // The buffer is reused from layer to layer (its zero padding must be rewritten, but a
        // memset is far cheaper than faulting in fresh pages).
        let mut padded = PaddedBuf::take(cin * hp * row_len);
        padded
            .par_chunks_mut(hp * row_len)
            .zip(planes.par_iter())
            .for_each(|(dst, src)| {
                dst.fill(0.0);
                for (y, row) in src.chunks_exact(w).enumerate() {
                    let drow = &mut dst[(y + d) * row_len..][..row_len];
                    split_phases(row, d, mp, drow);
                }
            });
        // Offsets of patch column j from column 0: phase +d, next index, both.
        let col_off = [0, d * mp, 1, d * mp + 1];
        let row_off = d * row_len;
        let padded = &padded[..];

        let mut out = vec![0f32; cout * pixels];
        let dst = SharedMut::new(&mut out);
        (0..tile_tasks * ch_tiles).into_par_iter().for_each(|task| {
            let (tt, ct) = (task / ch_tiles, task % ch_tiles);
            let t0 = tt * blk;
            let t1 = (t0 + blk).min(tiles);
            let c0 = ct * ch_blk;
            let c1 = (c0 + ch_blk).min(cout);
            // Tiles padded to whole lanes; the extra ones repeat the last tile and are dropped.
            let nt = (t1 - t0).next_multiple_of(LANES);
            let nc = c1 - c0;
            // Leading dimensions one cache line past the product, so the 16 streams of one
            // transform do not alias in L1.
            let v_ld = cin * nt + 16;
            let m_ld = nc * nt + 16;
            let origin: Vec<(usize, usize)> = (t0..t0 + nt)
                .map(|t| {
                    let t = t.min(t1 - 1);
                    (ys[t / xs.len()], xs[t % xs.len()])
                })
                .collect();
            let base: Vec<usize> = origin
                .iter()
                .map(|&(y, x)| y * row_len + (x % (2 * d)) * mp + x / (2 * d))
                .collect();
            BUFS.with_borrow_mut(|(v, m)| {
                v.resize(16 * v_ld, 0.0);
                m.resize(16 * m_ld, 0.0);
                InputJob {
                    padded,
                    plane_len: hp * row_len,
                    base: &base,
                    row_off,
                    col_off,
                    nt,
                    v_ld,
                }
                .run(v);
                for e in 0..16 {
                    // SAFETY: u, v and m are in bounds for these sizes and strides; m is
                    // this task's own buffer.
                    unsafe {
                        gemm::gemm(
                            nc,
                            nt,
                            cin,
                            m.as_mut_ptr().add(e * m_ld),
                            1,
                            nt as isize,
                            false,
                            self.u.as_ptr().add((e * cout + c0) * cin),
                            1,
                            cin as isize,
                            v.as_ptr().add(e * v_ld),
                            1,
                            nt as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                }
                OutputJob {
                    m,
                    m_ld,
                    nt,
                    channels: c0..c1,
                    bias: &self.bias,
                    origin: &origin,
                    real: t1 - t0,
                    d,
                    h,
                    w,
                    epilogue,
                    out: dst,
                }
                .run();
            });
        });
        out
    }
}

/// Scatter one input row into its padded, phase-split row: padded column `xp = x + d` goes to
/// phase `xp mod 2d`, index `xp / 2d`. Walks each phase with a stride instead of dividing per
/// element.
#[inline]
fn split_phases(row: &[f32], d: usize, mp: usize, drow: &mut [f32]) {
    let two_d = 2 * d;
    for r in 0..two_d {
        // The first x with (x + d) mod 2d == r.
        let x_start = (r + d) % two_d;
        if x_start >= row.len() {
            continue;
        }
        let first = (x_start + d) / two_d;
        let phase = &mut drow[r * mp + first..(r + 1) * mp];
        for (dst, &val) in phase.iter_mut().zip(row[x_start..].iter().step_by(two_d)) {
            *dst = val;
        }
    }
}

/// The padded input buffer, kept between layers (one per process: layers run one after the
/// other; a concurrent caller finding it taken allocates its own).
static PADDED: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());

/// A buffer taken from [`PADDED`] and given back (the larger one kept) when dropped.
struct PaddedBuf(Vec<f32>);

impl PaddedBuf {
    /// `len` values, contents unspecified.
    fn take(len: usize) -> Self {
        let mut v = PADDED
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        v.resize(len, 0.0);
        Self(v)
    }
}

/// Frees the kept padded-input buffer (called after each forward pass, so an idle process
/// holds no workspace).
pub fn release_workspace() {
    if let Ok(mut g) = PADDED.lock() {
        *g = Vec::new();
    }
}

impl Drop for PaddedBuf {
    fn drop(&mut self) {
        if let Ok(mut g) = PADDED.lock()
            && g.capacity() < self.0.capacity()
        {
            *g = std::mem::take(&mut self.0);
        }
    }
}

impl std::ops::Deref for PaddedBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for PaddedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

/// Transforms one task's input tiles into `V` (`16` matrices of `(in_ch, nt)`, leading
/// dimension `v_ld`).
struct InputJob<'a> {
    padded: &'a [f32],
    plane_len: usize,
    base: &'a [usize],
    row_off: usize,
    col_off: [usize; 4],
    nt: usize,
    v_ld: usize,
}

impl InputJob<'_> {
    fn run(&self, v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { self.run_avx2(v) };
        }
        self.run_portable(v)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, v: &mut [f32]) {
        self.run_portable(v)
    }

    #[inline(always)]
    fn run_portable(&self, v: &mut [f32]) {
        let (nt, v_ld) = (self.nt, self.v_ld);
        // Groups whose LANES tiles read consecutive floats (decided once, not per channel).
        let contiguous: Vec<bool> = self
            .base
            .chunks_exact(LANES)
            .map(|b| b.windows(2).all(|p| p[1] == p[0] + 1))
            .collect();
        for (ci, plane) in self.padded.chunks_exact(self.plane_len).enumerate() {
            for (k, bases) in self.base.chunks_exact(LANES).enumerate() {
                let vals =
                    input_transform(plane, bases, contiguous[k], self.row_off, &self.col_off);
                for (e, lanes) in vals.iter().enumerate() {
                    v[e * v_ld + ci * nt + k * LANES..][..LANES].copy_from_slice(lanes);
                }
            }
        }
    }
}

/// Transforms one task's `M` back to 2x2 output blocks with the epilogue applied.
struct OutputJob<'a> {
    m: &'a [f32],
    m_ld: usize,
    nt: usize,
    channels: std::ops::Range<usize>,
    bias: &'a [f32],
    origin: &'a [(usize, usize)],
    /// Tiles that are real (the rest pad the last lane group).
    real: usize,
    d: usize,
    h: usize,
    w: usize,
    epilogue: Epilogue<'a>,
    out: SharedMut,
}

impl OutputJob<'_> {
    fn run(&self) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { self.run_avx2() };
        }
        self.run_portable()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self) {
        self.run_portable()
    }

    #[inline(always)]
    fn run_portable(&self) {
        let (d, h, w, nt) = (self.d, self.h, self.w, self.nt);
        let pixels = h * w;
        let out = self.out.get();
        for co in self.channels.clone() {
            let bias = self.bias[co];
            let lc = co - self.channels.start;
            for k in 0..nt / LANES {
                let mut mm = [[0f32; LANES]; 16];
                for (e, lanes) in mm.iter_mut().enumerate() {
                    lanes.copy_from_slice(&self.m[e * self.m_ld + lc * nt + k * LANES..][..LANES]);
                }
                let y = output_transform(&mm);
                let count = LANES.min(self.real.saturating_sub(k * LANES));
                let group = &self.origin[k * LANES..][..count];
                let (y0, x0) = group[0];
                if d == 1
                    && count == LANES
                    && y0 + 1 < h
                    && x0 + 2 * LANES <= w
                    && group[LANES - 1] == (y0, x0 + 2 * (LANES - 1))
                {
                    // Undilated tiles side by side on one row: each output row of the group
                    // is 2 * LANES consecutive values; interleave, finish and store them whole.
                    for i in 0..2 {
                        let mut row = interleave(&y[i * 2], &y[i * 2 + 1]);
                        let at = co * pixels + (y0 + i) * w + x0;
                        finish_row(&mut row, bias, self.epilogue, at);
                        // SAFETY: these outputs belong to this task's tiles and channel block
                        // alone (checked in bounds above); the buffer outlives the task.
                        unsafe {
                            std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(at), 2 * LANES);
                        }
                    }
                    continue;
                }
                for (lane, &(y0, x0)) in group.iter().enumerate() {
                    for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let (oy, ox) = (y0 + i * d, x0 + j * d);
                        if oy < h && ox < w {
                            let at = co * pixels + oy * w + ox;
                            let val = y[i * 2 + j][lane] + bias;
                            // SAFETY: output (co, oy, ox) belongs to this task's tiles and
                            // channel block alone; the buffer outlives the task.
                            unsafe {
                                *out.add(at) = finish_value(val, self.epilogue, at);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Tiles transformed together, one per SIMD lane.
const LANES: usize = 8;
// `interleave` is written for 8 lanes (one AVX register).
const _: () = assert!(LANES == 8);

type Lanes = [f32; LANES];

/// `Bᵀ d B` for `LANES` tiles whose patches start at `bases` in the phase-split plane (patch
/// element `(i, j)` at `base + i * row_off + col_off[j]`); returned row-major over the 4x4
/// positions.
#[inline(always)]
fn input_transform(
    plane: &[f32],
    bases: &[usize],
    contiguous: bool,
    row_off: usize,
    col_off: &[usize; 4],
) -> [Lanes; 16] {
    let mut p = [[[0f32; LANES]; 4]; 4];
    if contiguous {
        // One phase, consecutive indices: every patch element is LANES consecutive floats.
        for (i, row) in p.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                v.copy_from_slice(&plane[bases[0] + i * row_off + col_off[j]..][..LANES]);
            }
        }
    } else {
        for (lane, &b) in bases.iter().enumerate() {
            for (i, row) in p.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    v[lane] = plane[b + i * row_off + col_off[j]];
                }
            }
        }
    }
    let (add, sub) = (lanes_add, lanes_sub);
    // Rows: Bᵀ p.
    let mut t = [[[0f32; LANES]; 4]; 4];
    for j in 0..4 {
        t[0][j] = sub(&p[0][j], &p[2][j]);
        t[1][j] = add(&p[1][j], &p[2][j]);
        t[2][j] = sub(&p[2][j], &p[1][j]);
        t[3][j] = sub(&p[1][j], &p[3][j]);
    }
    // Columns: (Bᵀ p) B.
    let mut out = [[0f32; LANES]; 16];
    for (i, r) in t.iter().enumerate() {
        out[i * 4] = sub(&r[0], &r[2]);
        out[i * 4 + 1] = add(&r[1], &r[2]);
        out[i * 4 + 2] = sub(&r[2], &r[1]);
        out[i * 4 + 3] = sub(&r[1], &r[3]);
    }
    out
}

/// `[a0, b0, a1, b1, ...]`: the two outputs of each tile side by side.
#[inline(always)]
fn interleave(a: &Lanes, b: &Lanes) -> [f32; 2 * LANES] {
    #[cfg(target_arch = "x86_64")]
    if cfg!(target_feature = "avx") || std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: AVX is present (compile-time or checked just above); loads and stores are
        // unaligned and within the arrays.
        unsafe {
            use std::arch::x86_64::*;
            let (va, vb) = (_mm256_loadu_ps(a.as_ptr()), _mm256_loadu_ps(b.as_ptr()));
            // unpack works within 128-bit halves: lo = a0 b0 a1 b1 | a4 b4 a5 b5, hi = a2 b2 a3
            // b3 | a6 b6 a7 b7; the permutes put the halves in order.
            let (lo, hi) = (_mm256_unpacklo_ps(va, vb), _mm256_unpackhi_ps(va, vb));
            let mut out = [0f32; 2 * LANES];
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_permute2f128_ps(lo, hi, 0x20));
            _mm256_storeu_ps(
                out.as_mut_ptr().add(LANES),
                _mm256_permute2f128_ps(lo, hi, 0x31),
            );
            return out;
        }
    }
    std::array::from_fn(|i| if i % 2 == 0 { a[i / 2] } else { b[i / 2] })
}

#[inline(always)]
fn lanes_add(a: &Lanes, b: &Lanes) -> Lanes {
    std::array::from_fn(|i| a[i] + b[i])
}

#[inline(always)]
fn lanes_sub(a: &Lanes, b: &Lanes) -> Lanes {
    std::array::from_fn(|i| a[i] - b[i])
}

/// `Aᵀ m A` for `LANES` tiles of a row-major 4x4 `m`: the 2x2 outputs, row-major.
#[inline(always)]
fn output_transform(m: &[Lanes; 16]) -> [Lanes; 4] {
    let (add, sub) = (lanes_add, lanes_sub);
    let mut t = [[[0f32; LANES]; 4]; 2];
    for j in 0..4 {
        t[0][j] = add(&add(&m[j], &m[4 + j]), &m[8 + j]);
        t[1][j] = sub(&sub(&m[4 + j], &m[8 + j]), &m[12 + j]);
    }
    [
        add(&add(&t[0][0], &t[0][1]), &t[0][2]),
        sub(&sub(&t[0][1], &t[0][2]), &t[0][3]),
        add(&add(&t[1][0], &t[1][1]), &t[1][2]),
        sub(&sub(&t[1][1], &t[1][2]), &t[1][3]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_weights_are_recovered_from_the_transform() {
        let shape = ConvShape {
            in_ch: 5,
            out_ch: 7,
            kernel: 3,
            dilation: 1,
            stride: 1,
            padding: 1,
        };
        // Deterministic values of both signs and several magnitudes.
        let weight: Vec<f32> = (0..7 * 5 * 9)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let wg = WinogradConv::new(shape, &weight, vec![0.0; 7]);
        let back = wg.original_weight();
        for (a, b) in weight.iter().zip(&back) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn phase_split_puts_every_column_where_the_transform_reads_it() {
        for d in [1usize, 2, 4, 8] {
            for w in [1usize, 2, 3, 7, 16, 17] {
                let row: Vec<f32> = (0..w).map(|x| x as f32 + 1.0).collect();
                let wp = w + 3 * d;
                let mp = wp.div_ceil(2 * d) + 1;
                let mut drow = vec![0f32; 2 * d * mp];
                split_phases(&row, d, mp, &mut drow);
                for (x, &val) in row.iter().enumerate() {
                    let xp = x + d;
                    assert_eq!(
                        drow[(xp % (2 * d)) * mp + xp / (2 * d)],
                        val,
                        "d{d} w{w} x{x}"
                    );
                }
                let nonzero = drow.iter().filter(|v| **v != 0.0).count();
                assert_eq!(nonzero, w, "d{d} w{w}: stray writes");
            }
        }
    }

    #[test]
    fn interleave_pairs_lanes() {
        let a: Lanes = std::array::from_fn(|i| i as f32);
        let b: Lanes = std::array::from_fn(|i| 100.0 + i as f32);
        let got = interleave(&a, &b);
        let want: [f32; 16] = std::array::from_fn(|i| if i % 2 == 0 { a[i / 2] } else { b[i / 2] });
        assert_eq!(got, want);
    }
}
