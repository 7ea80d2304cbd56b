//! RSU blocks ("residual U-blocks"), the building block of U²-Net, U²-NetP and IS-Net.
//!
//! RSU-L is a small U-Net of height L: `rebnconvin`, then `rebnconv1..L-1` with a ceil-mode pool
//! between each, a dilated bottom `rebnconvL`, and a decoder `rebnconv{L-1}d..1d` that
//! concatenates skip connections and upsamples; its output is `hx1d + hxin`. RSU-4F keeps the
//! resolution and widens the receptive field with dilations 1, 2, 4, 8 instead of pooling.
//! Every `rebnconv*` is a 3x3 conv + ReLU stored as `<name>.conv_s1`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::ConvSpec;
use super::layers::{Conv, max_pool_ceil, upsample_like};

/// The shape of one RSU block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSpec {
    /// RSU-L with pooling, `height` in 4..=7.
    Rsu {
        height: usize,
        in_ch: usize,
        mid_ch: usize,
        out_ch: usize,
    },
    /// RSU-4F: dilated, no pooling.
    Rsu4F {
        in_ch: usize,
        mid_ch: usize,
        out_ch: usize,
    },
}

/// A named stage of a network (`stage1`, `stage5d`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageSpec {
    pub name: &'static str,
    pub block: BlockSpec,
}

pub const fn rsu(height: usize, in_ch: usize, mid_ch: usize, out_ch: usize) -> BlockSpec {
    BlockSpec::Rsu {
        height,
        in_ch,
        mid_ch,
        out_ch,
    }
}

pub const fn rsu4f(in_ch: usize, mid_ch: usize, out_ch: usize) -> BlockSpec {
    BlockSpec::Rsu4F {
        in_ch,
        mid_ch,
        out_ch,
    }
}

/// One `rebnconv`: (suffix, in, out, dilation).
type Layer = (String, usize, usize, usize);

impl BlockSpec {
    pub fn out_ch(&self) -> usize {
        match *self {
            BlockSpec::Rsu { out_ch, .. } | BlockSpec::Rsu4F { out_ch, .. } => out_ch,
        }
    }

    /// Encoder layers (`rebnconvin`, `rebnconv1..L`) then decoder layers (`rebnconv{L-1}d..1d`),
    /// in execution order.
    fn layers(&self) -> (Vec<Layer>, Vec<Layer>) {
        let (height, in_ch, mid, out, dilations): (usize, _, _, _, Vec<usize>) = match *self {
            BlockSpec::Rsu {
                height,
                in_ch,
                mid_ch,
                out_ch,
            } => {
                let mut d = vec![1; height];
                d[height - 1] = 2;
                (height, in_ch, mid_ch, out_ch, d)
            }
            BlockSpec::Rsu4F {
                in_ch,
                mid_ch,
                out_ch,
            } => (4, in_ch, mid_ch, out_ch, vec![1, 2, 4, 8]),
        };
        let mut enc = vec![("rebnconvin".to_string(), in_ch, out, 1)];
        for i in 1..=height {
            let cin = if i == 1 { out } else { mid };
            enc.push((format!("rebnconv{i}"), cin, mid, dilations[i - 1]));
        }
        let dec = (1..height)
            .rev()
            .map(|i| {
                let cout = if i == 1 { out } else { mid };
                (format!("rebnconv{i}d"), 2 * mid, cout, dilations[i - 1])
            })
            .collect();
        (enc, dec)
    }

    pub fn conv_specs(&self, prefix: &str) -> Vec<ConvSpec> {
        let (enc, dec) = self.layers();
        enc.into_iter()
            .chain(dec)
            .map(|(name, in_ch, out_ch, dilation)| ConvSpec {
                name: format!("{prefix}.{name}.conv_s1"),
                in_ch,
                out_ch,
                kernel: 3,
                dilation,
                stride: 1,
            })
            .collect()
    }
}

impl StageSpec {
    pub fn conv_specs(&self) -> Vec<ConvSpec> {
        self.block.conv_specs(self.name)
    }
}

/// An RSU block with weights.
#[derive(Debug, Clone)]
pub struct Rsu {
    conv_in: Conv,
    encoder: Vec<Conv>,
    decoder: Vec<Conv>,
    pooled: bool,
}

impl Rsu {
    pub fn new(spec: &BlockSpec, vb: VarBuilder) -> Result<Self> {
        let (enc, dec) = spec.layers();
        let make =
            |(name, cin, cout, d): Layer| Conv::new(cin, cout, 3, d, 1, vb.pp(name).pp("conv_s1"));
        let mut enc = enc.into_iter();
        let conv_in = make(enc.next().expect("rebnconvin"))?;
        Ok(Self {
            conv_in,
            encoder: enc.map(make).collect::<Result<_>>()?,
            decoder: dec.into_iter().map(make).collect::<Result<_>>()?,
            pooled: matches!(spec, BlockSpec::Rsu { .. }),
        })
    }
}

impl Rsu {
    /// The block on the channel concatenation of `parts` (decoder stages take the upsampled
    /// deeper output and the encoder skip without concatenating them first).
    pub fn forward_parts(&self, parts: &[&Tensor]) -> Result<Tensor> {
        let hxin = self.conv_in.forward_fused(parts, true, None)?;
        let height = self.encoder.len();
        // Encoder: hx1..hx{L-1}, pooling between levels (RSU-L) or not (RSU-4F).
        let mut skips: Vec<Tensor> = Vec::with_capacity(height);
        let mut hx = hxin.clone();
        for (i, conv) in self.encoder[..height - 1].iter().enumerate() {
            if self.pooled && i > 0 {
                hx = max_pool_ceil(&hx)?;
            }
            hx = conv.forward_relu(&hx)?;
            skips.push(hx.clone());
        }
        // Bottom: dilated conv on the last level, no pooling before it.
        let mut d = self.encoder[height - 1].forward_relu(&hx)?;
        // Decoder: concat with the skip of the same level, conv, upsample to the level above;
        // the last conv adds `hxin` (the block's residual) in its epilogue.
        let last = self.decoder.len() - 1;
        for (i, (conv, skip)) in self.decoder.iter().zip(skips.iter().rev()).enumerate() {
            let up = if self.pooled {
                upsample_like(&d, skip)?
            } else {
                d
            };
            let residual = (i == last).then_some(&hxin);
            d = conv.forward_fused(&[&up, skip], true, residual)?;
        }
        Ok(d)
    }
}

impl Module for Rsu {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_parts(&[xs])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsu7_layers_match_the_reference_tree() {
        let specs = rsu(7, 3, 32, 64).conv_specs("stage1");
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(specs.len(), 14);
        assert_eq!(names[0], "stage1.rebnconvin.conv_s1");
        assert_eq!(names[7], "stage1.rebnconv7.conv_s1");
        assert_eq!(names[8], "stage1.rebnconv6d.conv_s1");
        assert_eq!(names[13], "stage1.rebnconv1d.conv_s1");
        let dil: Vec<_> = specs.iter().map(|s| s.dilation).collect();
        assert_eq!(dil, [1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1]);
        assert_eq!((specs[1].in_ch, specs[1].out_ch), (64, 32));
        assert_eq!((specs[13].in_ch, specs[13].out_ch), (64, 64));
    }

    #[test]
    fn rsu4f_dilations() {
        let specs = rsu4f(512, 256, 512).conv_specs("stage5");
        let dil: Vec<_> = specs.iter().map(|s| s.dilation).collect();
        assert_eq!(dil, [1, 1, 2, 4, 8, 4, 2, 1]);
    }
}
