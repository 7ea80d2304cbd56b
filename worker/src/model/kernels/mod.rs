//! CPU kernels on contiguous f32 NCHW data (batch 1), called by [`super::layers`] when a tensor lives
//! on the CPU. Other devices keep candle's own ops.
//!
//! - [`conv`]: 3x3 / 1x1 convolution as tiled im2col + `gemm`, with bias, ReLU, a residual add and
//!   channel concatenation fused in, one tile per rayon task; layers with at most 4 outputs
//!   (the side outputs) convolve directly, row by row.
//! - [`winograd`]: F(4x4, 3x3) and F(2x2, 3x3) for the stride-1 3x3 layers (dilated too) wide
//!   enough to gain, with weights packed at load time for its own AVX2 micro-kernel.
//! - [`resample`]: ceil-mode 2x2 max pooling and half-pixel bilinear resizing, one channel plane
//!   per task.

pub mod conv;
pub mod resample;
pub mod shape;
pub mod winograd;

pub use winograd::release_workspace;

use candle_core::{Device, Result, Storage, Tensor};

/// Whether the CPU kernels can run on these tensors: all f32 on the CPU with batch 1.
pub fn applies(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| {
        t.device().is_cpu()
            && t.dtype() == candle_core::DType::F32
            && t.dims().len() == 4
            && t.dims()[0] == 1
    })
}

/// Runs `f` on the contiguous f32 data of `ts` (each made contiguous first if it is not).
pub fn with_slices<R>(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
    let owned: Vec<Tensor> = ts.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(guards.len());
    for (storage, layout) in &guards {
        let Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("CPU kernel called on a tensor that is not on the CPU")
        };
        let data = cpu.as_slice::<f32>()?;
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("tensor not contiguous".into()))?;
        slices.push(&data[start..end]);
    }
    f(&slices)
}

/// `(1, c, h, w)` CPU tensor from an NCHW vector.
pub fn from_nchw(data: Vec<f32>, c: usize, h: usize, w: usize) -> Result<Tensor> {
    Tensor::from_vec(data, (1, c, h, w), &Device::Cpu)
}

/// Whether the AVX2 + FMA versions of the kernels can run on this CPU.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// A raw pointer that rayon tasks share to write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(*mut f32);

// SAFETY: every user writes only the region its task owns, and the buffer outlives the tasks.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub(crate) fn new(buf: &mut [f32]) -> Self {
        Self(buf.as_mut_ptr())
    }

    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
