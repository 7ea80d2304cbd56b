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
use super::conv::{ConvShape, Epilogue, finish_value};

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
        let xs = origins(w, d);
        let tiles = ys.len() * xs.len();
        let threads = rayon::current_num_threads().max(1);
        let want = threads * TASKS_PER_THREAD;

        let mut blk = (V_BYTES / (64 * cin)).clamp(MIN_TILES, MAX_TILES);
        if tiles.div_ceil(blk) < want {
            blk = tiles.div_ceil(want).max(MIN_TILES);
        }
        let blk = blk.min(tiles).max(1);
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

        let mut out = vec![0f32; cout * pixels];
        let dst = SharedMut::new(&mut out);
        (0..tile_tasks * ch_tiles).into_par_iter().for_each(|task| {
            let (tt, ct) = (task / ch_tiles, task % ch_tiles);
            let t0 = tt * blk;
            let t1 = (t0 + blk).min(tiles);
            let c0 = ct * ch_blk;
            let c1 = (c0 + ch_blk).min(cout);
            let nt = t1 - t0;
            let nc = c1 - c0;
            BUFS.with_borrow_mut(|(v, m)| {
                v.resize(16 * cin * nt, 0.0);
                m.resize(16 * nc * nt, 0.0);
                let tile_at = |t: usize| (ys[t / xs.len()], xs[t % xs.len()]);
                for (ci, plane) in planes.iter().enumerate() {
                    for t in 0..nt {
                        let (y0, x0) = tile_at(t0 + t);
                        let p = input_transform(plane, h, w, y0, x0, d);
                        for (e, val) in p.into_iter().enumerate() {
                            v[(e * cin + ci) * nt + t] = val;
                        }
                    }
                }
                for e in 0..16 {
                    // SAFETY: u, v and m are in bounds for these sizes and strides; m is
                    // this task's own buffer.
                    unsafe {
                        gemm::gemm(
                            nc,
                            nt,
                            cin,
                            m.as_mut_ptr().add(e * nc * nt),
                            1,
                            nt as isize,
                            false,
                            self.u.as_ptr().add((e * cout + c0) * cin),
                            1,
                            cin as isize,
                            v.as_ptr().add(e * cin * nt),
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
                let out = dst.get();
                for co in c0..c1 {
                    let bias = self.bias[co];
                    let lc = co - c0;
                    for t in 0..nt {
                        let mut mm = [0f32; 16];
                        for (e, x) in mm.iter_mut().enumerate() {
                            *x = m[(e * nc + lc) * nt + t];
                        }
                        let y = output_transform(&mm);
                        let (y0, x0) = tile_at(t0 + t);
                        for (i, row) in y.iter().enumerate() {
                            let oy = y0 + i * d;
                            if oy >= h {
                                continue;
                            }
                            for (j, &val) in row.iter().enumerate() {
                                let ox = x0 + j * d;
                                if ox < w {
                                    let at = co * pixels + oy * w + ox;
                                    // SAFETY: output (co, oy, ox) belongs to this task's tile
                                    // and channel block alone; `out` outlives the loop.
                                    unsafe {
                                        *out.add(at) = finish_value(val + bias, epilogue, at);
                                    }
                                }
                            }
                        }
                    }
                }
            });
        });
        out
    }
}

/// `Bᵀ d B` for the 4x4 patch with rows `y0 - d + {0, d, 2d, 3d}` (likewise columns), zeros
/// outside the plane; returned row-major.
#[inline]
fn input_transform(plane: &[f32], h: usize, w: usize, y0: usize, x0: usize, d: usize) -> [f32; 16] {
    let mut p = [[0f32; 4]; 4];
    let inside = y0 >= d && x0 >= d && y0 + 2 * d < h && x0 + 2 * d < w;
    if inside {
        for (i, row) in p.iter_mut().enumerate() {
            let base = (y0 + i * d - d) * w + x0 - d;
            for (j, v) in row.iter_mut().enumerate() {
                *v = plane[base + j * d];
            }
        }
    } else {
        for (i, row) in p.iter_mut().enumerate() {
            let iy = (y0 + i * d) as isize - d as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            for (j, v) in row.iter_mut().enumerate() {
                let ix = (x0 + j * d) as isize - d as isize;
                if ix >= 0 && ix < w as isize {
                    *v = plane[iy as usize * w + ix as usize];
                }
            }
        }
    }
    // Rows: Bᵀ p.
    let mut t = [[0f32; 4]; 4];
    for j in 0..4 {
        t[0][j] = p[0][j] - p[2][j];
        t[1][j] = p[1][j] + p[2][j];
        t[2][j] = p[2][j] - p[1][j];
        t[3][j] = p[1][j] - p[3][j];
    }
    // Columns: (Bᵀ p) B.
    let mut out = [0f32; 16];
    for (i, r) in t.iter().enumerate() {
        out[i * 4] = r[0] - r[2];
        out[i * 4 + 1] = r[1] + r[2];
        out[i * 4 + 2] = r[2] - r[1];
        out[i * 4 + 3] = r[1] - r[3];
    }
    out
}

/// `Aᵀ m A` for a row-major 4x4 `m`: the 2x2 outputs.
#[inline]
fn output_transform(m: &[f32; 16]) -> [[f32; 2]; 2] {
    let mut t = [[0f32; 4]; 2];
    for j in 0..4 {
        t[0][j] = m[j] + m[4 + j] + m[8 + j];
        t[1][j] = m[4 + j] - m[8 + j] - m[12 + j];
    }
    [
        [t[0][0] + t[0][1] + t[0][2], t[0][1] - t[0][2] - t[0][3]],
        [t[1][0] + t[1][1] + t[1][2], t[1][1] - t[1][2] - t[1][3]],
    ]
}
