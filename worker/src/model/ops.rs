//! The kernels the networks call. Everything numeric the forward pass does goes through these
//! few functions, so a faster implementation (fused, blocked, Winograd) replaces them here.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

/// A 3x3 (or 1x1) convolution with bias, as every layer of these networks has.
#[derive(Debug, Clone)]
pub struct Conv {
    inner: Conv2d,
}

impl Conv {
    pub fn new(
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        dilation: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: dilation * (kernel / 2),
            stride,
            dilation,
            ..Default::default()
        };
        Ok(Self {
            inner: candle_nn::conv2d(in_ch, out_ch, kernel, cfg, vb)?,
        })
    }

    /// Convolution alone (side outputs, IS-Net's stem).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.inner.forward(xs)
    }

    /// Convolution followed by ReLU (BatchNorm is already folded into the weights).
    pub fn forward_relu(&self, xs: &Tensor) -> Result<Tensor> {
        self.inner.forward(xs)?.relu()
    }
}

/// 2x2 max pooling, stride 2, ceil mode: an odd edge forms a window of its own. Repeating the
/// last row/column before a floor-mode pool gives exactly that window's maximum.
pub fn max_pool_ceil(xs: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let mut xs = xs.clone();
    if h % 2 == 1 {
        xs = xs.pad_with_same(2, 0, 1)?;
    }
    if w % 2 == 1 {
        xs = xs.pad_with_same(3, 0, 1)?;
    }
    xs.max_pool2d(2)
}

/// Bilinear resize of `xs` to the spatial size of `like` (PyTorch `align_corners=False`).
pub fn upsample_like(xs: &Tensor, like: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = like.dims4()?;
    upsample_to(xs, h, w)
}

/// Bilinear resize to `h` x `w` (PyTorch `align_corners=False`); a no-op when already that size.
pub fn upsample_to(xs: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, xh, xw) = xs.dims4()?;
    if (xh, xw) == (h, w) {
        return Ok(xs.clone());
    }
    xs.upsample_bilinear2d(h, w, false)
}

/// Concatenate along channels, as the decoders do with skip connections.
pub fn cat_channels(parts: &[&Tensor]) -> Result<Tensor> {
    Tensor::cat(parts, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn ceil_mode_pool_keeps_odd_edges() -> Result<()> {
        let t = Tensor::arange(0f32, 15., &Device::Cpu)?.reshape((1, 1, 3, 5))?;
        let p = max_pool_ceil(&t)?;
        assert_eq!(p.dims(), &[1, 1, 2, 3]);
        // rows [0..5],[5..10],[10..15]: windows ceil over odd edges.
        assert_eq!(
            p.flatten_all()?.to_vec1::<f32>()?,
            vec![6., 8., 9., 11., 13., 14.]
        );
        Ok(())
    }

    #[test]
    fn upsample_matches_half_pixel_bilinear() -> Result<()> {
        // PyTorch: F.interpolate([[0, 1]], size=4, mode="bilinear", align_corners=False)
        // gives [0, 0.25, 0.75, 1] along that axis.
        let t = Tensor::new(&[[0f32, 1.]], &Device::Cpu)?.reshape((1, 1, 1, 2))?;
        let u = upsample_to(&t, 1, 4)?;
        assert_eq!(u.flatten_all()?.to_vec1::<f32>()?, vec![0., 0.25, 0.75, 1.]);
        Ok(())
    }
}
