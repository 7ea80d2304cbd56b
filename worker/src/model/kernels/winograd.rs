//! Winograd F(2x2, 3x3) and F(4x4, 3x3) for stride-1 3x3 convolutions, dilated ones included.
//!
//! Each `m x m` block of outputs comes from an `a x a` input patch (`a = m + 2`):
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, `a²` multiplies per block and channel pair instead of
//! `9 m²` (16 for 36 with F(2x2), 36 for 144 with F(4x4)). Over a block of tiles that is `a²`
//! independent gemms `M[e] (out, tiles) = U[e] (out, in) x V[e] (in, tiles)`, one per position
//! `e` of the transformed patch. `U` is computed once at load time.
//!
//! With dilation `d` a tile's outputs are `y0 + {0, d, .., (m - 1) d}` along each axis and its
//! patch rows are `y0 - d + {0, d, .., (m + 1) d}`: the same algorithm on the dilated grid. Tile
//! origins are the `y0` with `y0 mod md < d`, which covers every output exactly once.
//!
//! F(4x4) needs 2.25 multiplies per output where F(2x2) needs 4, and reads and writes 2.25
//! transformed values per output and channel instead of 4; its transforms have larger
//! coefficients (up to 8 in `Aᵀ`), so rounding grows, still far inside the golden tolerance
//! (see `docs/benchmarks.md`).

use std::cell::RefCell;

use rayon::prelude::*;

use super::SharedMut;
#[cfg(target_arch = "x86_64")]
use super::has_avx2_fma;
use super::shape::{ConvShape, Epilogue, finish_row, finish_value};

/// Bytes of padded input per band of tile rows (a share of the last-level cache).
const BAND_BYTES: usize = 4 << 20;
/// Bytes of transformed input one task aims at.
const V_BYTES: usize = 512 * 1024;
const MIN_TILES: usize = 32;
const MAX_TILES: usize = 512;
const MIN_TILE_CHANNELS: usize = 32;
const TASKS_PER_THREAD: usize = 3;

thread_local! {
    static BUFS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Output tile size: F(2x2, 3x3) or F(4x4, 3x3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    F2,
    F4,
}

/// F(4x4) for layers with at most this many (input, output) channel pairs: its transformed
/// weights are 36/9 of the originals (F(2x2)'s 16/9), which the narrow layers at full resolution
/// can afford and the 256-1024-channel ones of the deep stages cannot.
const F4_MAX_PAIRS: usize = 128 * 128;

impl Tile {
    /// The tile for a layer of this shape.
    pub fn for_shape(shape: &ConvShape) -> Self {
        if shape.in_ch * shape.out_ch <= F4_MAX_PAIRS {
            Tile::F4
        } else {
            Tile::F2
        }
    }

    /// Outputs per tile side.
    pub const fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Patch side, `m + 2`.
    pub const fn alpha(self) -> usize {
        self.m() + 2
    }

    /// `G` (`alpha x 3`), which takes a 3-tap filter to the transformed domain. Both have the
    /// shape the inverse in [`WinogradConv::original_weight`] relies on: first row `s (1, 0, 0)`,
    /// second `c (1, 1, 1)`, last `(0, 0, 1)`.
    fn g(self) -> &'static [[f64; 3]] {
        const F2: [[f64; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        const F4: [[f64; 3]; 6] = [
            [0.25, 0.0, 0.0],
            [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
            [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
            [0.0, 0.0, 1.0],
        ];
        match self {
            Tile::F2 => &F2,
            Tile::F4 => &F4,
        }
    }
}

/// Weights transformed for F(m x m, 3x3): `u[e]` is `(out_ch, in_ch)`, for each of the `alpha²`
/// positions `e` of the transformed patch, packed for [`multiply`] (see [`u_index`]).
#[derive(Debug, Clone)]
pub struct WinogradConv {
    pub shape: ConvShape,
    pub tile: Tile,
    u: Vec<f32>,
    bias: Vec<f32>,
}

/// Where `U[e][co][ci]` is kept: `U[e]` is cut into blocks of `MR` output channels (the last one
/// shorter when `MR` does not divide `cout`); block `co / MR` starts at row `co / MR * MR` as in
/// a row-major layout, but within it the channels of each input are side by side (`[ci][r]`), so
/// the micro-kernel broadcasts consecutive floats.
#[inline]
fn u_index(e: usize, co: usize, ci: usize, cout: usize, cin: usize) -> usize {
    let r0 = co / MR * MR;
    let rows = MR.min(cout - r0);
    e * cout * cin + r0 * cin + ci * rows + (co - r0)
}

/// The tile origins along one axis of length `n` for dilation `d` and tile size `m`.
fn origins(n: usize, d: usize, m: usize) -> Vec<usize> {
    (0..n).filter(|y| y % (m * d) < d).collect()
}

/// The same origins ordered by phase `x mod md`, so consecutive tiles of one phase are
/// consecutive in the phase-split input (see `run`).
fn origins_by_phase(n: usize, d: usize, m: usize) -> Vec<usize> {
    (0..d.min(n)).flat_map(|r| (r..n).step_by(m * d)).collect()
}

impl WinogradConv {
    /// `weight` is OIHW 3x3, stride 1, padding = dilation; the tile is chosen by
    /// [`Tile::for_shape`].
    pub fn new(shape: ConvShape, weight: &[f32], bias: Vec<f32>) -> Self {
        Self::with_tile(shape, weight, bias, Tile::for_shape(&shape))
    }

    /// As [`Self::new`] with the tile given.
    pub fn with_tile(shape: ConvShape, weight: &[f32], bias: Vec<f32>, tile: Tile) -> Self {
        assert!(shape.kernel == 3 && shape.stride == 1 && shape.padding == shape.dilation);
        let (cin, cout) = (shape.in_ch, shape.out_ch);
        let (a, g) = (tile.alpha(), tile.g());
        let mut u = vec![0f32; a * a * cout * cin];
        for co in 0..cout {
            for ci in 0..cin {
                let w = &weight[(co * cin + ci) * 9..][..9];
                // t = G w (alpha x 3), then U = t Gᵀ (alpha x alpha), in f64.
                let t: Vec<[f64; 3]> = g
                    .iter()
                    .map(|gr| {
                        std::array::from_fn(|j| {
                            (0..3).map(|k| gr[k] * f64::from(w[k * 3 + j])).sum()
                        })
                    })
                    .collect();
                for (i, tr) in t.iter().enumerate() {
                    for (j, gr) in g.iter().enumerate() {
                        let v: f64 = (0..3).map(|k| tr[k] * gr[k]).sum();
                        u[u_index(i * a + j, co, ci, cout, cin)] = v as f32;
                    }
                }
            }
        }
        Self {
            shape,
            tile,
            u,
            bias,
        }
    }

    /// The OIHW 3x3 weights these were made from. `G`'s first row is `s (1, 0, 0)`, its second
    /// `c (1, 1, 1)` and its last `(0, 0, 1)`, so from `t = G g`: `g0 = t0 / s`, `g2 = t_last`,
    /// `g1 = t1 / c - g0 - g2`, exact up to rounding; the same undoes `Gᵀ` along the other axis.
    pub fn original_weight(&self) -> Vec<f32> {
        let (cin, cout) = (self.shape.in_ch, self.shape.out_ch);
        let a = self.tile.alpha();
        let g = self.tile.g();
        let (s, c) = (g[0][0], g[1][0]);
        let undo = |v0: f64, v1: f64, vl: f64| {
            let (g0, g2) = (v0 / s, vl);
            [g0, v1 / c - g0 - g2, g2]
        };
        let mut weight = vec![0f32; cout * cin * 9];
        for co in 0..cout {
            for ci in 0..cin {
                let u =
                    |i: usize, j: usize| f64::from(self.u[u_index(i * a + j, co, ci, cout, cin)]);
                // Rows 0, 1 and last of t = G g, each recovered from its row of U = t Gᵀ.
                let t = |i: usize| undo(u(i, 0), u(i, 1), u(i, a - 1));
                let (t0, t1, tl) = (t(0), t(1), t(a - 1));
                let w = &mut weight[(co * cin + ci) * 9..][..9];
                for j in 0..3 {
                    let col = undo(t0[j], t1[j], tl[j]);
                    for k in 0..3 {
                        w[k * 3 + j] = col[k] as f32;
                    }
                }
            }
        }
        weight
    }

    /// Gemm work relative to im2col for an `h x w` input (below 1 means Winograd is cheaper).
    pub fn relative_cost(&self, h: usize, w: usize) -> f64 {
        let (d, m, a) = (self.shape.dilation, self.tile.m(), self.tile.alpha());
        let tiles = origins(h, d, m).len() * origins(w, d, m).len();
        (a * a * tiles) as f64 / (9 * h * w) as f64
    }

    /// Same contract as `PackedConv::run` (conv.rs).
    pub fn run(&self, planes: &[&[f32]], h: usize, w: usize, epilogue: Epilogue) -> Vec<f32> {
        match self.tile {
            Tile::F2 => self.run_with::<T2>(planes, h, w, epilogue),
            Tile::F4 => self.run_with::<T4>(planes, h, w, epilogue),
        }
    }

    fn run_with<T: Transform>(
        &self,
        planes: &[&[f32]],
        h: usize,
        w: usize,
        epilogue: Epilogue,
    ) -> Vec<f32> {
        let s = self.shape;
        let (cin, d, m) = (s.in_ch, s.dilation, T::M);
        assert_eq!(planes.len(), cin, "input channels");
        let all_ys = origins(h, d, m);
        // Zero-padded, phase-split copy of the input: padding d before and (m + 1) d after each
        // axis keeps every patch read in bounds, and each padded row is stored as its md phases
        // (column xp at phase xp mod md, index xp / md). A patch's columns are then m phases at
        // two neighbouring indices, and LANES tiles of one phase read LANES consecutive floats.
        let mp = (w + (m + 1) * d).div_ceil(m * d) + 1;
        let mut out = vec![0f32; s.out_ch * h * w];
        let layer = Layer {
            planes,
            h,
            w,
            xs: origins_by_phase(w, d, m),
            mp,
            row_len: m * d * mp,
            epilogue,
            out: SharedMut::new(&mut out),
        };
        // The copy is made one band of tile rows at a time, sized to stay in the last-level
        // cache until the transforms read it (a whole padded map is tens of MB, written to and
        // read back from memory). A band is padded rows `ys[0] ..= ys[last] + (m + 1) d`.
        let band_rows = (BAND_BYTES / (4 * cin * layer.row_len)).max(1);
        let mut b0 = 0;
        while b0 < all_ys.len() {
            let span = |b1: usize| all_ys[b1 - 1] - all_ys[b0] + (m + 1) * d + 1;
            let mut b1 = b0 + 1;
            while b1 < all_ys.len() && span(b1 + 1) <= band_rows {
                b1 += 1;
            }
            self.band::<T>(&layer, &all_ys[b0..b1], span(b1));
            b0 = b1;
        }
        out
    }

    /// The tiles with origins `ys x layer.xs`, from a padded copy of `rows` rows starting at
    /// padded row `ys[0]`.
    fn band<T: Transform>(&self, layer: &Layer, ys: &[usize], rows: usize) {
        let s = self.shape;
        let (cin, cout, d) = (s.in_ch, s.out_ch, s.dilation);
        let (m, a2) = (T::M, T::A * T::A);
        let Layer {
            planes,
            h,
            w,
            ref xs,
            mp,
            row_len,
            epilogue,
            out,
        } = *layer;
        let top = ys[0];
        let want = rayon::current_num_threads().max(1) * TASKS_PER_THREAD;
        let tiles = ys.len() * xs.len();
        let mut blk = (V_BYTES / (4 * a2 * cin)).clamp(MIN_TILES, MAX_TILES);
        if tiles.div_ceil(blk) < want {
            blk = tiles.div_ceil(want).max(MIN_TILES);
        }
        let blk = blk.min(tiles).max(1).next_multiple_of(NR);
        let tile_tasks = tiles.div_ceil(blk);
        let ch_tiles = if tile_tasks >= want {
            1
        } else {
            want.div_ceil(tile_tasks)
                .min(cout.div_ceil(MIN_TILE_CHANNELS))
                .max(1)
        };
        // Channel blocks start on a block of packed `U` (see `u_index`).
        let ch_blk = cout.div_ceil(ch_tiles).next_multiple_of(MR).min(cout);
        let ch_tiles = cout.div_ceil(ch_blk);

        // The buffer is reused from band to band and layer to layer.
        let mut padded = PaddedBuf::take(cin * rows * row_len);
        padded
            .par_chunks_mut(rows * row_len)
            .zip(planes.par_iter())
            .for_each(|(dst, src)| {
                let mut line = vec![0f32; row_len];
                for (r, drow) in dst.chunks_exact_mut(row_len).enumerate() {
                    // Padded row top + r is input row top + r - d.
                    match (top + r).checked_sub(d).filter(|&y| y < h) {
                        Some(y) => split_phases(&src[y * w..][..w], d, m, mp, drow, &mut line),
                        None => drow.fill(0.0),
                    }
                }
            });
        let padded = &padded[..];
        // Offset of patch column j from column 0: phase j mod m (times d), index j / m.
        let col_off: [usize; 6] = std::array::from_fn(|j| (j % m) * d * mp + j / m);

        (0..tile_tasks * ch_tiles).into_par_iter().for_each(|task| {
            let (tt, ct) = (task / ch_tiles, task % ch_tiles);
            let t0 = tt * blk;
            let t1 = (t0 + blk).min(tiles);
            let c0 = ct * ch_blk;
            let c1 = (c0 + ch_blk).min(cout);
            // Tiles padded to whole blocks; the extra ones repeat the last tile and are dropped.
            let nt = (t1 - t0).next_multiple_of(NR);
            let nc = c1 - c0;
            // Leading dimensions one cache line past the product, so the streams of one
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
                .map(|&(y, x)| (y - top) * row_len + (x % (m * d)) * mp + x / (m * d))
                .collect();
            BUFS.with_borrow_mut(|(v, mm)| {
                v.resize(a2 * v_ld, 0.0);
                mm.resize(a2 * m_ld, 0.0);
                InputJob {
                    padded,
                    plane_len: rows * row_len,
                    base: &base,
                    row_off: d * row_len,
                    col_off,
                    nt,
                    v_ld,
                }
                .run::<T>(v);
                let operands = Operands {
                    u: &self.u,
                    u_rows: c0..c1,
                    cout,
                    cin,
                    v,
                    v_ld,
                    nt,
                    m_ld,
                };
                multiply(&operands, a2, mm);
                OutputJob {
                    m: mm,
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
                    out,
                }
                .run::<T>();
            });
        });
    }
}

/// What every band of one layer shares.
struct Layer<'a> {
    planes: &'a [&'a [f32]],
    h: usize,
    w: usize,
    /// Tile origins along x, by phase.
    xs: Vec<usize>,
    /// Indices per phase in a padded row.
    mp: usize,
    /// Floats per padded row (`md` phases of `mp`).
    row_len: usize,
    epilogue: Epilogue<'a>,
    out: SharedMut,
}

/// Write one input row as its padded, phase-split row (all `md * mp` values): padded column
/// `xp = x + d` goes to phase `xp mod md`, index `xp / md`, and the rest is zero. `line` (as long
/// as `drow`) holds the padded row first; splitting it is then a transpose of an `(mp, md)`
/// matrix, done with AVX shuffles for `md = 4` (F(4x4) undilated, the common case).
#[inline]
fn split_phases(row: &[f32], d: usize, m: usize, mp: usize, drow: &mut [f32], line: &mut [f32]) {
    let md = m * d;
    line[..d].fill(0.0);
    line[d..d + row.len()].copy_from_slice(row);
    line[d + row.len()..].fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if md == 4 && has_avx2_fma() {
        // SAFETY: AVX2 is present (checked just above); the lengths are as documented.
        return unsafe { transpose4_avx2(line, mp, drow) };
    }
    for (q, chunk) in line.chunks_exact(md).enumerate() {
        for (r, &val) in chunk.iter().enumerate() {
            drow[r * mp + q] = val;
        }
    }
}

/// `drow[r * mp + q] = line[4 q + r]` for `q < mp`, `r < 4`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose4_avx2(line: &[f32], mp: usize, drow: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(line.len() >= 4 * mp && drow.len() >= 4 * mp);
    let body = mp / 8 * 8;
    let src = line.as_ptr();
    let dst = drow.as_mut_ptr();
    // SAFETY: every load reads line[4q..4q + 32] and every store drow[r mp + q..+ 8] for
    // q + 8 <= body <= mp, in bounds by the assertion; unaligned accesses throughout.
    unsafe {
        // unpack/shuffle work within 128-bit halves, leaving each phase's q in the order
        // 0 2 4 6 | 1 3 5 7; the permute puts them back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for q in (0..body).step_by(8) {
            let p = src.add(4 * q);
            let (a, b) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
            let (c, e) = (_mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24)));
            let (t0, t1) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
            let (t2, t3) = (_mm256_unpacklo_ps(c, e), _mm256_unpackhi_ps(c, e));
            let phases = [
                _mm256_shuffle_ps::<0x44>(t0, t2),
                _mm256_shuffle_ps::<0xEE>(t0, t2),
                _mm256_shuffle_ps::<0x44>(t1, t3),
                _mm256_shuffle_ps::<0xEE>(t1, t3),
            ];
            for (r, v) in phases.into_iter().enumerate() {
                _mm256_storeu_ps(dst.add(r * mp + q), _mm256_permutevar8x32_ps(v, order));
            }
        }
    }
    for q in body..mp {
        for r in 0..4 {
            drow[r * mp + q] = line[4 * q + r];
        }
    }
}

/// The padded input buffer, kept between layers (one per process: layers run one after the
/// other; a concurrent caller finding it taken allocates its own).
static PADDED: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());

/// A buffer taken from [`PADDED`] and given back (the larger one kept) when dropped; the first
/// `.1` values are in use.
struct PaddedBuf(Vec<f32>, usize);

impl PaddedBuf {
    /// `len` values, contents unspecified. A kept buffer that is long enough is used as it is
    /// (shrinking and regrowing a `Vec` would zero the regrown part, a memset the whole size of
    /// the buffer per layer).
    fn take(len: usize) -> Self {
        let mut v = PADDED
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        if v.len() < len {
            v.resize(len, 0.0);
        }
        Self(v, len)
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
        &self.0[..self.1]
    }
}

impl std::ops::DerefMut for PaddedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0[..self.1]
    }
}

/// Transforms one task's input tiles into `V` (`alpha²` matrices of `(in_ch, nt)`, leading
/// dimension `v_ld`).
struct InputJob<'a> {
    padded: &'a [f32],
    plane_len: usize,
    base: &'a [usize],
    row_off: usize,
    col_off: [usize; 6],
    nt: usize,
    v_ld: usize,
}

impl InputJob<'_> {
    fn run<T: Transform>(&self, v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { self.run_avx2::<T>(v) };
        }
        self.run_portable::<T>(v)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2<T: Transform>(&self, v: &mut [f32]) {
        self.run_portable::<T>(v)
    }

    #[inline(always)]
    fn run_portable<T: Transform>(&self, v: &mut [f32]) {
        let (nt, v_ld) = (self.nt, self.v_ld);
        let channels = self.padded.len() / self.plane_len;
        assert!(self.base.len() <= nt && v.len() >= (T::A * T::A - 1) * v_ld + channels * nt);
        // Groups whose LANES tiles read consecutive floats (decided once, not per channel).
        let contiguous: Vec<bool> = self
            .base
            .chunks_exact(LANES)
            .map(|b| b.windows(2).all(|p| p[1] == p[0] + 1))
            .collect();
        let mut vals = [[0f32; LANES]; 36];
        for (ci, plane) in self.padded.chunks_exact(self.plane_len).enumerate() {
            for (k, bases) in self.base.chunks_exact(LANES).enumerate() {
                input_transform::<T>(
                    plane,
                    bases,
                    contiguous[k],
                    self.row_off,
                    &self.col_off,
                    &mut vals,
                );
                let at = ci * nt + k * LANES;
                for (e, lanes) in vals[..T::A * T::A].iter().enumerate() {
                    // SAFETY: e < alpha², at + LANES <= cin * nt: in bounds by the assertion
                    // at the top.
                    unsafe {
                        let dst = v.as_mut_ptr().add(e * v_ld + at);
                        std::ptr::copy_nonoverlapping(lanes.as_ptr(), dst, LANES);
                    }
                }
            }
        }
    }
}

/// Transforms one task's `M` back to `m x m` output blocks with the epilogue applied.
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
    fn run<T: Transform>(&self) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { self.run_avx2::<T>() };
        }
        self.run_portable::<T>()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2<T: Transform>(&self) {
        self.run_portable::<T>()
    }

    #[inline(always)]
    fn run_portable<T: Transform>(&self) {
        let (d, h, w, nt) = (self.d, self.h, self.w, self.nt);
        let (m, a2) = (T::M, T::A * T::A);
        let pixels = h * w;
        let out = self.out.get();
        assert!(self.real <= nt && self.m.len() >= (a2 - 1) * self.m_ld + self.channels.len() * nt);
        let mut mm = [[0f32; LANES]; 36];
        for co in self.channels.clone() {
            let bias = self.bias[co];
            let lc = co - self.channels.start;
            // Groups holding at least one real tile (the block is padded to whole NR).
            for k in 0..self.real.div_ceil(LANES) {
                let at = lc * nt + k * LANES;
                for (e, lanes) in mm[..a2].iter_mut().enumerate() {
                    // SAFETY: e < alpha², at + LANES <= channels * nt: in bounds by the
                    // assertion at the top.
                    unsafe {
                        let src = self.m.as_ptr().add(e * self.m_ld + at);
                        std::ptr::copy_nonoverlapping(src, lanes.as_mut_ptr(), LANES);
                    }
                }
                let y = output_transform::<T>(&mm);
                let count = LANES.min(self.real.saturating_sub(k * LANES));
                let group = &self.origin[k * LANES..][..count];
                let (y0, x0) = group[0];
                if d == 1
                    && count == LANES
                    && y0 + m <= h
                    && x0 + m * LANES <= w
                    && group[LANES - 1] == (y0, x0 + m * (LANES - 1))
                {
                    // Undilated tiles side by side on one row: each output row of the group
                    // is m * LANES consecutive values; interleave, finish and store them whole.
                    for i in 0..m {
                        let mut row = T::interleave(&y[i * m..][..m]);
                        let row = &mut row[..m * LANES];
                        let at = co * pixels + (y0 + i) * w + x0;
                        finish_row(row, bias, self.epilogue, at);
                        // SAFETY: these outputs belong to this task's tiles and channel block
                        // alone (checked in bounds above); the buffer outlives the task.
                        unsafe {
                            std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(at), m * LANES);
                        }
                    }
                    continue;
                }
                for (lane, &(y0, x0)) in group.iter().enumerate() {
                    for i in 0..m {
                        for j in 0..m {
                            let (oy, ox) = (y0 + i * d, x0 + j * d);
                            if oy < h && ox < w {
                                let at = co * pixels + oy * w + ox;
                                let val = y[i * m + j][lane] + bias;
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
}

/// Tiles per micro-kernel block: two AVX registers of `LANES`.
const NR: usize = 2 * LANES;
/// Output channels per micro-kernel block: 6 x 2 accumulators, 2 loads of `V` and a broadcast
/// of `U` fill 15 of the 16 AVX registers.
const MR: usize = 6;

/// One task's operands for [`multiply`]: `U[e]` is `(cout, cin)` at `e * cout * cin`, packed
/// as [`u_index`] says, of which rows `u_rows` (starting on a block) are this task's; `V[e]` is `(cin, nt)` at `e * v_ld`; `M[e]` is
/// `(u_rows.len(), nt)` at `e * m_ld`.
struct Operands<'a> {
    u: &'a [f32],
    u_rows: std::ops::Range<usize>,
    cout: usize,
    cin: usize,
    v: &'a [f32],
    v_ld: usize,
    nt: usize,
    m_ld: usize,
}

/// `M[e] = U[e][u_rows] x V[e]` for the `a2` positions `e`: small matrices (16-128 rows and
/// columns of `U`, 16-512 tiles), where a general gemm spends much of its time packing both
/// operands on every call. Here both are already laid out as the kernel reads them: `U` packed
/// at load time, `V` written by the input transform with tiles contiguous per channel. Each
/// `MR x NR` block of `M` is one pass over `cin` with its accumulators in registers.
fn multiply(op: &Operands, a2: usize, m: &mut [f32]) {
    assert_eq!(op.nt % NR, 0, "tiles padded to whole blocks");
    let nc = op.u_rows.len();
    assert!(op.u.len() >= a2 * op.cout * op.cin && op.u_rows.end <= op.cout);
    assert!(op.v.len() >= (a2 - 1) * op.v_ld + op.cin * op.nt);
    assert!(m.len() >= (a2 - 1) * op.m_ld + nc * op.nt);
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present (checked just above); the bounds are asserted.
        return unsafe { multiply_avx2(op, a2, m) };
    }
    assert_eq!(op.u_rows.start % MR, 0, "rows start on a packed block");
    for e in 0..a2 {
        let v = &op.v[e * op.v_ld..][..op.cin * op.nt];
        let out = &mut m[e * op.m_ld..][..nc * op.nt];
        out.fill(0.0);
        for co in op.u_rows.clone() {
            let orow = &mut out[(co - op.u_rows.start) * op.nt..][..op.nt];
            for (ci, vrow) in v.chunks_exact(op.nt).enumerate() {
                let x = op.u[u_index(e, co, ci, op.cout, op.cin)];
                for (o, &y) in orow.iter_mut().zip(vrow) {
                    *o = x.mul_add(y, *o);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn multiply_avx2(op: &Operands, a2: usize, m: &mut [f32]) {
    let nc = op.u_rows.len();
    assert_eq!(op.u_rows.start % MR, 0, "rows start on a packed block");
    for e in 0..a2 {
        // SAFETY (all blocks): block r0 of this task's U[e] (rows r0..r0 + R, packed), columns
        // n0..n0 + NR of V[e] and rows r0..r0 + R of M[e], all within the lengths asserted by
        // `multiply`.
        unsafe {
            let u = op.u.as_ptr().add((e * op.cout + op.u_rows.start) * op.cin);
            let v = op.v.as_ptr().add(e * op.v_ld);
            let out = m.as_mut_ptr().add(e * op.m_ld);
            for r0 in (0..nc).step_by(MR) {
                let a = u.add(r0 * op.cin);
                for n0 in (0..op.nt).step_by(NR) {
                    let args = (a, v.add(n0), op.nt, op.cin, out.add(r0 * op.nt + n0), op.nt);
                    match (nc - r0).min(MR) {
                        6 => block::<6>(args),
                        5 => block::<5>(args),
                        4 => block::<4>(args),
                        3 => block::<3>(args),
                        2 => block::<2>(args),
                        _ => block::<1>(args),
                    }
                }
            }
        }
    }
}

/// `C (R x NR) = A (R x k) x B (k x NR)`: `A` packed `[k][R]`, `B` and `C` row-major with
/// leading dimensions `ldb` / `ldc`. The `2 R` accumulators stay in registers for the whole `k`
/// loop; the pointers advance by addition only.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::type_complexity)]
unsafe fn block<const R: usize>(
    (a, b, ldb, k, c, ldc): (*const f32, *const f32, usize, usize, *mut f32, usize),
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees A, B and C cover the ranges read and written.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let (mut ap, mut bp) = (a, b);
        for _ in 0..k {
            let (b0, b1) = (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.wrapping_add(LANES)));
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*ap.wrapping_add(r));
                row[0] = _mm256_fmadd_ps(x, b0, row[0]);
                row[1] = _mm256_fmadd_ps(x, b1, row[1]);
            }
            ap = ap.wrapping_add(R);
            bp = bp.wrapping_add(ldb);
        }
        let mut cp = c;
        for row in &acc {
            _mm256_storeu_ps(cp, row[0]);
            _mm256_storeu_ps(cp.wrapping_add(LANES), row[1]);
            cp = cp.wrapping_add(ldc);
        }
    }
}

/// Tiles transformed together, one per SIMD lane.
const LANES: usize = 8;
// `interleave2` is written for 8 lanes (one AVX register).
const _: () = assert!(LANES == 8);

type Lanes = [f32; LANES];

const ZERO: Lanes = [0.0; LANES];

/// The one-dimensional transforms of one tile size; the 2-D ones apply them along both axes.
trait Transform {
    /// Outputs per tile side.
    const M: usize;
    /// Patch side.
    const A: usize;
    /// `Bᵀ d` on `A` values (the rest of the array is ignored / zero).
    fn input_1d(d: &[Lanes; 6]) -> [Lanes; 6];
    /// `Aᵀ m` on `A` values, giving `M`.
    fn output_1d(m: &[Lanes; 6]) -> [Lanes; 4];
    /// One output row of a group of tiles, `M * LANES` values (the rest of the array unused):
    /// `[t0 o0, t0 o1, .., t1 o0, ..]` from the `M` outputs `y[j][lane]`.
    fn interleave(y: &[Lanes]) -> [f32; 4 * LANES];
}

/// F(2x2, 3x3): `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`, `Aᵀ = [1 1 1 0; 0 1 -1 -1]`.
struct T2;

/// F(4x4, 3x3) on the points 0, ±1, ±2 (Lavin and Gray):
/// `Bᵀ = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
/// 0 4 0 -5 0 1]`, `Aᵀ = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]`.
struct T4;

impl Transform for T2 {
    const M: usize = 2;
    const A: usize = 4;

    #[inline(always)]
    fn input_1d(d: &[Lanes; 6]) -> [Lanes; 6] {
        let (add, sub) = (lanes_add, lanes_sub);
        [
            sub(&d[0], &d[2]),
            add(&d[1], &d[2]),
            sub(&d[2], &d[1]),
            sub(&d[1], &d[3]),
            ZERO,
            ZERO,
        ]
    }

    #[inline(always)]
    fn output_1d(m: &[Lanes; 6]) -> [Lanes; 4] {
        let (add, sub) = (lanes_add, lanes_sub);
        [
            add(&add(&m[0], &m[1]), &m[2]),
            sub(&sub(&m[1], &m[2]), &m[3]),
            ZERO,
            ZERO,
        ]
    }

    #[inline(always)]
    fn interleave(y: &[Lanes]) -> [f32; 4 * LANES] {
        let pair = interleave2(&y[0], &y[1]);
        let mut row = [0f32; 4 * LANES];
        row[..2 * LANES].copy_from_slice(&pair);
        row
    }
}

impl Transform for T4 {
    const M: usize = 4;
    const A: usize = 6;

    #[inline(always)]
    fn input_1d(d: &[Lanes; 6]) -> [Lanes; 6] {
        let (add, sub) = (lanes_add, lanes_sub);
        let f = lanes_fma;
        // t1 = (d3 + d4) - 4 (d1 + d2), t2 = (d4 - d3) + 4 (d1 - d2),
        // t3 = (d4 - d2) + 2 (d3 - d1), t4 = (d4 - d2) - 2 (d3 - d1).
        let (s12, d12) = (add(&d[1], &d[2]), sub(&d[1], &d[2]));
        let (s34, d43) = (add(&d[3], &d[4]), sub(&d[4], &d[3]));
        let (d42, d31) = (sub(&d[4], &d[2]), sub(&d[3], &d[1]));
        [
            f(-5.0, &d[2], &f(4.0, &d[0], &d[4])),
            f(-4.0, &s12, &s34),
            f(4.0, &d12, &d43),
            f(2.0, &d31, &d42),
            f(-2.0, &d31, &d42),
            f(-5.0, &d[3], &f(4.0, &d[1], &d[5])),
        ]
    }

    #[inline(always)]
    fn output_1d(m: &[Lanes; 6]) -> [Lanes; 4] {
        let (add, sub) = (lanes_add, lanes_sub);
        let f = lanes_fma;
        let (s12, d12) = (add(&m[1], &m[2]), sub(&m[1], &m[2]));
        let (s34, d34) = (add(&m[3], &m[4]), sub(&m[3], &m[4]));
        [
            add(&add(&m[0], &s12), &s34),
            f(2.0, &d34, &d12),
            f(4.0, &s34, &s12),
            add(&f(8.0, &d34, &d12), &m[5]),
        ]
    }

    #[inline(always)]
    fn interleave(y: &[Lanes]) -> [f32; 4 * LANES] {
        let mut row = [0f32; 4 * LANES];
        #[cfg(target_arch = "x86_64")]
        if cfg!(target_feature = "avx") || std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: AVX is present (compile-time or checked just above); loads and stores are
            // unaligned and within the arrays (y has 4 lane groups, row 4 x LANES floats).
            unsafe {
                use std::arch::x86_64::*;
                let v: [__m256; 4] = std::array::from_fn(|j| _mm256_loadu_ps(y[j].as_ptr()));
                // Within 128-bit halves: u0 = lanes 0 | 4 of the four outputs, u1 = 1 | 5,
                // u2 = 2 | 6, u3 = 3 | 7; the permutes then store lanes 0 1, 2 3, 4 5, 6 7.
                let (t0, t1) = (
                    _mm256_unpacklo_ps(v[0], v[1]),
                    _mm256_unpackhi_ps(v[0], v[1]),
                );
                let (t2, t3) = (
                    _mm256_unpacklo_ps(v[2], v[3]),
                    _mm256_unpackhi_ps(v[2], v[3]),
                );
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let p = row.as_mut_ptr();
                _mm256_storeu_ps(p, _mm256_permute2f128_ps::<0x20>(u0, u1));
                _mm256_storeu_ps(p.add(8), _mm256_permute2f128_ps::<0x20>(u2, u3));
                _mm256_storeu_ps(p.add(16), _mm256_permute2f128_ps::<0x31>(u0, u1));
                _mm256_storeu_ps(p.add(24), _mm256_permute2f128_ps::<0x31>(u2, u3));
                return row;
            }
        }
        for (lane, out) in row.chunks_exact_mut(4).enumerate() {
            for (j, v) in out.iter_mut().enumerate() {
                *v = y[j][lane];
            }
        }
        row
    }
}

/// `Bᵀ d B` for `LANES` tiles whose patches start at `bases` in the phase-split plane (patch
/// element `(i, j)` at `base + i * row_off + col_off[j]`), written row-major over the
/// `A x A` positions into `out`.
#[inline(always)]
fn input_transform<T: Transform>(
    plane: &[f32],
    bases: &[usize],
    contiguous: bool,
    row_off: usize,
    col_off: &[usize; 6],
    out: &mut [Lanes; 36],
) {
    let a = T::A;
    let mut p = [[ZERO; 6]; 6];
    if contiguous {
        // One phase, consecutive indices: every patch element is LANES consecutive floats. The
        // farthest one (last row, last column) bounds them all: checked once, then read
        // without a check per load.
        let b = bases[0];
        assert!(
            b + (a - 1) * row_off + col_off[..a].iter().max().unwrap_or(&0) + LANES <= plane.len()
        );
        for (i, row) in p[..a].iter_mut().enumerate() {
            for (j, v) in row[..a].iter_mut().enumerate() {
                // SAFETY: in bounds by the assertion above.
                let src = unsafe { plane.as_ptr().add(b + i * row_off + col_off[j]) };
                // SAFETY: LANES floats from src are in bounds; `v` is LANES floats.
                unsafe { std::ptr::copy_nonoverlapping(src, v.as_mut_ptr(), LANES) };
            }
        }
    } else {
        for (lane, &b) in bases.iter().enumerate() {
            for (i, row) in p[..a].iter_mut().enumerate() {
                for (j, v) in row[..a].iter_mut().enumerate() {
                    v[lane] = plane[b + i * row_off + col_off[j]];
                }
            }
        }
    }
    // Columns: Bᵀ p, then rows: (Bᵀ p) B.
    let mut t = [[ZERO; 6]; 6];
    for j in 0..a {
        let col = T::input_1d(&std::array::from_fn(|i| p[i][j]));
        for i in 0..a {
            t[i][j] = col[i];
        }
    }
    for i in 0..a {
        let row = T::input_1d(&t[i]);
        out[i * a..(i + 1) * a].copy_from_slice(&row[..a]);
    }
}

/// `Aᵀ m A` for `LANES` tiles of a row-major `A x A` `m`: the `M x M` outputs, row-major.
#[inline(always)]
fn output_transform<T: Transform>(m: &[Lanes; 36]) -> [Lanes; 16] {
    let (a, mo) = (T::A, T::M);
    let mut t = [[ZERO; 6]; 4];
    for j in 0..a {
        let col = T::output_1d(&std::array::from_fn(|i| {
            if i < a { m[i * a + j] } else { ZERO }
        }));
        for i in 0..mo {
            t[i][j] = col[i];
        }
    }
    let mut y = [ZERO; 16];
    for i in 0..mo {
        let row = T::output_1d(&t[i]);
        y[i * mo..(i + 1) * mo].copy_from_slice(&row[..mo]);
    }
    y
}

/// `[a0, b0, a1, b1, ...]`: the two outputs of each tile side by side.
#[inline(always)]
fn interleave2(a: &Lanes, b: &Lanes) -> [f32; 2 * LANES] {
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

/// `k a + b`, one rounding where FMA is compiled in.
#[inline(always)]
fn lanes_fma(k: f32, a: &Lanes, b: &Lanes) -> Lanes {
    std::array::from_fn(|i| k.mul_add(a[i], b[i]))
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
        for tile in [Tile::F2, Tile::F4] {
            let wg = WinogradConv::with_tile(shape, &weight, vec![0.0; 7], tile);
            let back = wg.original_weight();
            for (a, b) in weight.iter().zip(&back) {
                assert!((a - b).abs() <= 1e-6, "{tile:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn phase_split_puts_every_column_where_the_transform_reads_it() {
        for (m, d) in [2usize, 4]
            .into_iter()
            .flat_map(|m| [1usize, 2, 4, 8].map(|d| (m, d)))
        {
            for w in [1usize, 2, 3, 7, 16, 17, 40, 61, 100] {
                let row: Vec<f32> = (0..w).map(|x| x as f32 + 1.0).collect();
                let wp = w + (m + 1) * d;
                let mp = wp.div_ceil(m * d) + 1;
                let mut drow = vec![f32::NAN; m * d * mp];
                let mut line = vec![f32::NAN; m * d * mp];
                split_phases(&row, d, m, mp, &mut drow, &mut line);
                for (x, &val) in row.iter().enumerate() {
                    let xp = x + d;
                    assert_eq!(
                        drow[(xp % (m * d)) * mp + xp / (m * d)],
                        val,
                        "m{m} d{d} w{w} x{x}"
                    );
                }
                // Everything else is written as zero (NaN would mean a value never written).
                let nonzero = drow.iter().filter(|v| **v != 0.0).count();
                assert_eq!(nonzero, w, "m{m} d{d} w{w}: stray writes");
            }
        }
    }

    #[test]
    fn interleave_puts_each_tiles_outputs_side_by_side() {
        let y: [Lanes; 4] = std::array::from_fn(|j| std::array::from_fn(|l| (10 * l + j) as f32));
        let got = T4::interleave(&y);
        let want: [f32; 32] = std::array::from_fn(|i| (10 * (i / 4) + i % 4) as f32);
        assert_eq!(got, want);
        let got = T2::interleave(&y[..2]);
        let want: [f32; 16] = std::array::from_fn(|i| (10 * (i / 2) + i % 2) as f32);
        assert_eq!(got[..16], want);
    }

    #[test]
    fn interleave_pairs_lanes() {
        let a: Lanes = std::array::from_fn(|i| i as f32);
        let b: Lanes = std::array::from_fn(|i| 100.0 + i as f32);
        let got = interleave2(&a, &b);
        let want: [f32; 16] = std::array::from_fn(|i| if i % 2 == 0 { a[i / 2] } else { b[i / 2] });
        assert_eq!(got, want);
    }
}
