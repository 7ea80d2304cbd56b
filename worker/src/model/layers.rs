//! The kernels the networks call. Everything numeric the forward pass does goes through these
//! few functions, so a faster implementation (fused, blocked, Winograd) replaces them here.

use std::sync::Arc;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use super::kernels::{self, conv::ConvShape, conv::Epilogue, conv::PackedConv};

/// A 3x3 (or 1x1) convolution with bias, as every layer of these networks has.
///
/// Weights loaded on the CPU go to [`PackedConv`] (our im2col + gemm kernel with the bias, ReLU,
/// residual and concatenation fused); on any other device candle's `conv2d` runs.
#[derive(Debug, Clone)]
pub struct Conv {
    imp: ConvImpl,
}

#[derive(Debug, Clone)]
enum ConvImpl {
    Cpu(Arc<PackedConv>),
    Candle(Conv2d),
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
        let conv = candle_nn::conv2d(in_ch, out_ch, kernel, cfg, vb)?;
        let imp = match conv.bias() {
            Some(bias) if conv.weight().device().is_cpu() => {
                let shape = ConvShape {
                    in_ch,
                    out_ch,
                    kernel,
                    dilation,
                    stride,
                    padding: cfg.padding,
                };
                let weight = conv.weight().flatten_all()?.to_vec1::<f32>()?;
                let bias = bias.to_vec1::<f32>()?;
                ConvImpl::Cpu(Arc::new(PackedConv::new(shape, weight, bias)))
            }
            _ => ConvImpl::Candle(conv),
        };
        Ok(Self { imp })
    }

    /// Convolution alone (side outputs, IS-Net's stem).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_fused(&[xs], false, None)
    }

    /// Convolution followed by ReLU (BatchNorm is already folded into the weights).
    pub fn forward_relu(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_fused(&[xs], true, None)
    }

    /// `[relu](conv(cat(parts, channels))) [+ residual]` in one pass: the concatenation is never
    /// materialised and the epilogue runs while each output tile is in cache.
    pub fn forward_fused(
        &self,
        parts: &[&Tensor],
        relu: bool,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        match &self.imp {
            ConvImpl::Cpu(packed) if kernels::applies(parts) => {
                let (_, _, h, w) = parts[0].dims4()?;
                for p in parts {
                    let (_, _, ph, pw) = p.dims4()?;
                    if (ph, pw) != (h, w) {
                        candle_core::bail!("conv parts differ in size: {h}x{w} vs {ph}x{pw}");
                    }
                }
                let s = packed.shape;
                let (ho, wo) = s.out_size(h, w);
                let mut all: Vec<&Tensor> = parts.to_vec();
                if let Some(r) = residual {
                    if r.dims() != [1, s.out_ch, ho, wo] {
                        candle_core::bail!("residual shape {:?}", r.dims());
                    }
                    all.push(r);
                }
                let out = kernels::with_slices(&all, |slices| {
                    let (inputs, res) = if residual.is_some() {
                        (&slices[..slices.len() - 1], slices.last().copied())
                    } else {
                        (slices, None)
                    };
                    let channels: usize = inputs.iter().map(|s| s.len()).sum::<usize>() / (h * w);
                    if channels != s.in_ch {
                        candle_core::bail!("conv expects {} channels, got {channels}", s.in_ch);
                    }
                    Ok(packed.run(
                        inputs,
                        h,
                        w,
                        Epilogue {
                            relu,
                            residual: res,
                        },
                    ))
                })?;
                kernels::from_nchw(out, s.out_ch, ho, wo)
            }
            ConvImpl::Cpu(_) if parts[0].dims().len() == 4 && parts[0].dim(0)? > 1 => {
                // The kernel takes one image; run a batch image by image.
                let n = parts[0].dim(0)?;
                let outs = (0..n)
                    .map(|i| {
                        let ps: Vec<Tensor> = parts
                            .iter()
                            .map(|p| p.narrow(0, i, 1))
                            .collect::<Result<_>>()?;
                        let refs: Vec<&Tensor> = ps.iter().collect();
                        let r = residual.map(|r| r.narrow(0, i, 1)).transpose()?;
                        self.forward_fused(&refs, relu, r.as_ref())
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&outs, 0)
            }
            ConvImpl::Cpu(_) => {
                candle_core::bail!("CPU conv weights need f32 NCHW inputs on the CPU")
            }
            ConvImpl::Candle(conv) => {
                let xs = cat_channels(parts)?;
                let mut ys = conv.forward(&xs)?;
                if relu {
                    ys = ys.relu()?;
                }
                match residual {
                    Some(r) => ys + r,
                    None => Ok(ys),
                }
            }
        }
    }
}

/// 2x2 max pooling, stride 2, ceil mode: an odd edge forms a window of its own. Repeating the
/// last row/column before a floor-mode pool gives exactly that window's maximum.
pub fn max_pool_ceil(xs: &Tensor) -> Result<Tensor> {
    let (_, c, h, w) = xs.dims4()?;
    if kernels::applies(&[xs]) {
        let (out, ho, wo) = kernels::with_slices(&[xs], |s| {
            Ok(kernels::resample::max_pool_ceil(s[0], c, h, w))
        })?;
        return kernels::from_nchw(out, c, ho, wo);
    }
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
    let (_, c, xh, xw) = xs.dims4()?;
    if (xh, xw) == (h, w) {
        return Ok(xs.clone());
    }
    if kernels::applies(&[xs]) {
        let out = kernels::with_slices(&[xs], |s| {
            Ok(kernels::resample::upsample_bilinear(
                s[0],
                c,
                (xh, xw),
                (h, w),
            ))
        })?;
        return kernels::from_nchw(out, c, h, w);
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
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims());
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// A `Conv` with random weights, and those weights for the reference.
    fn random_conv(
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        dilation: usize,
        stride: usize,
    ) -> Result<(Conv, Tensor, Tensor)> {
        let dev = Device::Cpu;
        let w = (Tensor::randn(0f32, 1., (out_ch, in_ch, kernel, kernel), &dev)?
            / ((in_ch * kernel * kernel) as f64).sqrt())?;
        let b = Tensor::randn(0f32, 1., out_ch, &dev)?;
        let map = HashMap::from([
            ("weight".to_string(), w.clone()),
            ("bias".to_string(), b.clone()),
        ]);
        let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
        Ok((
            Conv::new(in_ch, out_ch, kernel, dilation, stride, vb)?,
            w,
            b,
        ))
    }

    /// candle's own conv2d + bias, the reference.
    fn reference(
        xs: &Tensor,
        w: &Tensor,
        b: &Tensor,
        dilation: usize,
        stride: usize,
    ) -> Result<Tensor> {
        let k = w.dim(2)?;
        let ys = xs.conv2d(w, dilation * (k / 2), stride, dilation, 1)?;
        ys.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)
    }

    #[test]
    fn conv_matches_candle_at_odd_sizes() -> Result<()> {
        let dev = Device::Cpu;
        // (in, out, kernel, dilation, stride, h, w): channels off any block size, all dilations,
        // 1x1, IS-Net's stride-2 stem, and maps smaller than the dilation; layers of 16+ channels
        // take the Winograd path (F(4x4) up to 128 x 128 channel pairs, F(2x2) above), layers of
        // at most 4 outputs the direct one.
        let cases = [
            (3, 16, 3, 1, 1, 57, 83),
            (13, 37, 3, 1, 1, 57, 83),
            (13, 37, 3, 2, 1, 57, 83),
            (13, 37, 3, 4, 1, 57, 83),
            (13, 37, 3, 8, 1, 57, 83),
            (70, 33, 3, 1, 1, 19, 23),
            (20, 24, 3, 1, 1, 57, 83),
            (20, 24, 3, 2, 1, 57, 83),
            (20, 24, 3, 4, 1, 57, 83),
            (20, 24, 3, 8, 1, 57, 83),
            (6, 1, 1, 1, 1, 57, 83),
            (21, 5, 1, 1, 1, 57, 83),
            (19, 1, 3, 1, 1, 57, 83),
            (9, 3, 3, 2, 1, 57, 83),
            (8, 2, 3, 1, 1, 1, 1),
            (130, 96, 3, 1, 1, 57, 83),
            (140, 130, 3, 2, 1, 23, 19),
            // Wide inputs on large maps: the padded copy is made in several bands of tile rows
            // (F(4x4), F(4x4) dilated, F(2x2)).
            (256, 24, 3, 1, 1, 120, 200),
            (200, 20, 3, 2, 1, 100, 150),
            (256, 80, 3, 1, 1, 90, 100),
            (3, 16, 3, 1, 2, 57, 83),
            (9, 11, 3, 8, 1, 5, 3),
            // Wide enough for Winograd, but the map is too small for it to pay: im2col on
            // weights rebuilt from the transformed ones.
            (20, 24, 3, 8, 1, 5, 7),
            (16, 16, 3, 4, 1, 3, 9),
            (9, 11, 3, 2, 1, 1, 1),
            (130, 96, 3, 1, 1, 7, 9),
        ];
        for (cin, cout, k, d, s, h, w) in cases {
            let (conv, wt, b) = random_conv(cin, cout, k, d, s)?;
            let xs = Tensor::randn(0f32, 1., (1, cin, h, w), &dev)?;
            let want = reference(&xs, &wt, &b, d, s)?;
            let diff = max_abs_diff(&conv.forward(&xs)?, &want)?;
            assert!(diff <= 1e-4, "{cin}->{cout} k{k} d{d} s{s} {h}x{w}: {diff}");
            let diff = max_abs_diff(&conv.forward_relu(&xs)?, &want.relu()?)?;
            assert!(
                diff <= 1e-4,
                "relu {cin}->{cout} k{k} d{d} s{s} {h}x{w}: {diff}"
            );
        }
        Ok(())
    }

    #[test]
    fn fused_cat_relu_residual_matches_unfused() -> Result<()> {
        let dev = Device::Cpu;
        for d in [1, 2, 4, 8] {
            let (conv, wt, b) = random_conv(5 + 11, 24, 3, d, 1)?;
            let a = Tensor::randn(0f32, 1., (1, 5, 31, 45), &dev)?;
            let c = Tensor::randn(0f32, 1., (1, 11, 31, 45), &dev)?;
            let r = Tensor::randn(0f32, 1., (1, 24, 31, 45), &dev)?;
            let want = (reference(&Tensor::cat(&[&a, &c], 1)?, &wt, &b, d, 1)?.relu()? + &r)?;
            let got = conv.forward_fused(&[&a, &c], true, Some(&r))?;
            let diff = max_abs_diff(&got, &want)?;
            assert!(diff <= 1e-4, "dilation {d}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn batch_runs_image_by_image() -> Result<()> {
        let (conv, wt, b) = random_conv(6, 20, 3, 2, 1)?;
        let xs = Tensor::randn(0f32, 1., (2, 6, 13, 17), &Device::Cpu)?;
        let diff = max_abs_diff(&conv.forward(&xs)?, &reference(&xs, &wt, &b, 2, 1)?)?;
        assert!(diff <= 1e-4, "{diff}");
        Ok(())
    }

    #[test]
    fn pool_and_upsample_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        for (h, w) in [(57, 83), (8, 6), (1, 1), (3, 2)] {
            let xs = Tensor::randn(0f32, 1., (1, 7, h, w), &dev)?;
            let mut padded = xs.clone();
            if h % 2 == 1 {
                padded = padded.pad_with_same(2, 0, 1)?;
            }
            if w % 2 == 1 {
                padded = padded.pad_with_same(3, 0, 1)?;
            }
            assert_eq!(
                max_abs_diff(&max_pool_ceil(&xs)?, &padded.max_pool2d(2)?)?,
                0.0
            );
            for (oh, ow) in [(2 * h, 2 * w), (h + 1, 2 * w - 1), (57, 83), (1, 1)] {
                let want = xs.upsample_bilinear2d(oh, ow, false)?;
                let diff = max_abs_diff(&upsample_to(&xs, oh, ow)?, &want)?;
                assert!(diff <= 1e-5, "{h}x{w} -> {oh}x{ow}: {diff}");
            }
        }
        Ok(())
    }

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
