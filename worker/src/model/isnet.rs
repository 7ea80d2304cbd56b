//! IS-Net (DIS, Qin et al., 2022), the general-use model imgly ships.
//!
//! A stride-2 3x3 `conv_in` (no activation) halves the input, then the U²-Net encoder-decoder
//! runs on it; the output used is `sigmoid(side1)` upsampled to the input size. There is no
//! fusion conv.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::ConvSpec;
use super::layers::{Conv, upsample_to};
use super::rsu::{Rsu, StageSpec, rsu};
use super::u2net::{U2NetConfig, encode_decode, head};

#[derive(Debug, Clone)]
pub struct IsNetConfig {
    pub stem_ch: usize,
    pub stages: [StageSpec; 11],
}

impl Default for IsNetConfig {
    /// U²-Net's full-width stages, but stage 1 takes the 64-channel stem instead of RGB.
    fn default() -> Self {
        let mut stages = U2NetConfig::full().stages;
        stages[0].block = rsu(7, 64, 32, 64);
        Self {
            stem_ch: 64,
            stages,
        }
    }
}

impl IsNetConfig {
    fn side_channels(&self) -> [usize; 6] {
        let out = |i: usize| self.stages[i].block.out_ch();
        [out(10), out(9), out(8), out(7), out(6), out(5)]
    }

    /// Every convolution in execution order.
    pub fn conv_specs(&self) -> Vec<ConvSpec> {
        let mut specs = vec![ConvSpec {
            name: "conv_in".into(),
            in_ch: 3,
            out_ch: self.stem_ch,
            kernel: 3,
            dilation: 1,
            stride: 2,
        }];
        specs.extend(self.stages.iter().flat_map(StageSpec::conv_specs));
        for (i, in_ch) in self.side_channels().into_iter().enumerate() {
            specs.push(head(format!("side{}", i + 1), in_ch, 3));
        }
        specs
    }
}

#[derive(Debug, Clone)]
pub struct IsNet {
    conv_in: Conv,
    encoder: Vec<Rsu>,
    decoder: Vec<Rsu>,
    sides: Vec<Conv>,
}

impl IsNet {
    /// All six side convolutions are loaded so the module tree mirrors the checkpoint, though
    /// only `side1` feeds the output used.
    pub fn new(cfg: &IsNetConfig, vb: VarBuilder) -> Result<Self> {
        let block = |s: &StageSpec| Rsu::new(&s.block, vb.pp(s.name));
        Ok(Self {
            conv_in: Conv::new(3, cfg.stem_ch, 3, 1, 2, vb.pp("conv_in"))?,
            encoder: cfg.stages[..6].iter().map(block).collect::<Result<_>>()?,
            decoder: cfg.stages[6..].iter().map(block).collect::<Result<_>>()?,
            sides: cfg
                .side_channels()
                .into_iter()
                .enumerate()
                .map(|(i, c)| Conv::new(c, 1, 3, 1, 1, vb.pp(format!("side{}", i + 1))))
                .collect::<Result<_>>()?,
        })
    }
}

impl Module for IsNet {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let hxin = self.conv_in.forward(xs)?;
        let feats = encode_decode(&self.encoder, &self.decoder, &hxin)?;
        let d1 = upsample_to(&self.sides[0].forward(&feats[0])?, h, w)?;
        candle_nn::ops::sigmoid(&d1)
    }
}
