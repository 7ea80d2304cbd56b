//! U²-Net and U²-NetP (Qin et al., 2020), as rembg ships them.
//!
//! Six encoder stages (RSU-7, 6, 5, 4, 4F, 4F) with ceil-mode pooling between them, five decoder
//! stages (`stage5d..stage1d`), six 3x3 side outputs upsampled to stage 1's size, and a 1x1
//! `outconv` fusing them; the output used is `sigmoid(d0)`. U²-NetP is the same graph with 16
//! middle and 64 output channels everywhere.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{Conv, max_pool_ceil, upsample_like};
use super::rsu::{Rsu, StageSpec, rsu, rsu4f};
use super::{Arch, ConvSpec};

/// Widths of every stage; `stages[0..6]` are the encoder, `stages[6..11]` the decoder
/// (`stage5d` first).
#[derive(Debug, Clone)]
pub struct U2NetConfig {
    pub stages: [StageSpec; 11],
}

const fn stage(name: &'static str, block: super::BlockSpec) -> StageSpec {
    StageSpec { name, block }
}

impl U2NetConfig {
    pub fn full() -> Self {
        Self {
            stages: [
                stage("stage1", rsu(7, 3, 32, 64)),
                stage("stage2", rsu(6, 64, 32, 128)),
                stage("stage3", rsu(5, 128, 64, 256)),
                stage("stage4", rsu(4, 256, 128, 512)),
                stage("stage5", rsu4f(512, 256, 512)),
                stage("stage6", rsu4f(512, 256, 512)),
                stage("stage5d", rsu4f(1024, 256, 512)),
                stage("stage4d", rsu(4, 1024, 128, 256)),
                stage("stage3d", rsu(5, 512, 64, 128)),
                stage("stage2d", rsu(6, 256, 32, 64)),
                stage("stage1d", rsu(7, 128, 16, 64)),
            ],
        }
    }

    pub fn small() -> Self {
        Self {
            stages: [
                stage("stage1", rsu(7, 3, 16, 64)),
                stage("stage2", rsu(6, 64, 16, 64)),
                stage("stage3", rsu(5, 64, 16, 64)),
                stage("stage4", rsu(4, 64, 16, 64)),
                stage("stage5", rsu4f(64, 16, 64)),
                stage("stage6", rsu4f(64, 16, 64)),
                stage("stage5d", rsu4f(128, 16, 64)),
                stage("stage4d", rsu(4, 128, 16, 64)),
                stage("stage3d", rsu(5, 128, 16, 64)),
                stage("stage2d", rsu(6, 128, 16, 64)),
                stage("stage1d", rsu(7, 128, 16, 64)),
            ],
        }
    }

    pub fn for_arch(arch: Arch) -> Self {
        match arch {
            Arch::U2netp => Self::small(),
            _ => Self::full(),
        }
    }

    /// Input channels of `side1..side6`: the outputs of stage1d..stage2d... and stage6.
    pub fn side_channels(&self) -> [usize; 6] {
        let out = |i: usize| self.stages[i].block.out_ch();
        // side1 <- stage1d, side2 <- stage2d, ..., side5 <- stage5d, side6 <- stage6
        [out(10), out(9), out(8), out(7), out(6), out(5)]
    }

    /// Every convolution in execution order: stages, then sides, then `outconv`.
    pub fn conv_specs(&self) -> Vec<ConvSpec> {
        let mut specs: Vec<ConvSpec> = self.stages.iter().flat_map(StageSpec::conv_specs).collect();
        for (i, in_ch) in self.side_channels().into_iter().enumerate() {
            specs.push(head(format!("side{}", i + 1), in_ch, 3));
        }
        specs.push(head("outconv".into(), 6, 1));
        specs
    }
}

pub(super) fn head(name: String, in_ch: usize, kernel: usize) -> ConvSpec {
    ConvSpec {
        name,
        in_ch,
        out_ch: 1,
        kernel,
        dilation: 1,
        stride: 1,
    }
}

#[derive(Debug, Clone)]
pub struct U2Net {
    encoder: Vec<Rsu>,
    decoder: Vec<Rsu>,
    sides: Vec<Conv>,
    outconv: Conv,
}

impl U2Net {
    pub fn new(cfg: &U2NetConfig, vb: VarBuilder) -> Result<Self> {
        let block = |s: &StageSpec| Rsu::new(&s.block, vb.pp(s.name));
        let sides = cfg
            .side_channels()
            .into_iter()
            .enumerate()
            .map(|(i, c)| Conv::new(c, 1, 3, 1, 1, vb.pp(format!("side{}", i + 1))))
            .collect::<Result<_>>()?;
        Ok(Self {
            encoder: cfg.stages[..6].iter().map(block).collect::<Result<_>>()?,
            decoder: cfg.stages[6..].iter().map(block).collect::<Result<_>>()?,
            sides,
            outconv: Conv::new(6, 1, 1, 1, 1, vb.pp("outconv"))?,
        })
    }
}

/// Encoder-decoder shared by U²-Net and IS-Net: returns the decoder outputs
/// `[hx1d, hx2d, hx3d, hx4d, hx5d, hx6]` (finest first).
pub(super) fn encode_decode(encoder: &[Rsu], decoder: &[Rsu], xs: &Tensor) -> Result<Vec<Tensor>> {
    let mut enc: Vec<Tensor> = Vec::with_capacity(6);
    let mut hx = xs.clone();
    for (i, stage) in encoder.iter().enumerate() {
        if i > 0 {
            hx = max_pool_ceil(&hx)?;
        }
        hx = stage.forward(&hx)?;
        enc.push(hx.clone());
    }
    // decoder[0] = stage5d ... decoder[4] = stage1d; each takes up(previous) ++ the encoder skip.
    let mut outs = vec![hx.clone()];
    let mut d = hx;
    for (stage, skip) in decoder.iter().zip(enc[..5].iter().rev()) {
        let up = upsample_like(&d, skip)?;
        d = stage.forward_parts(&[&up, skip])?;
        outs.push(d.clone());
    }
    outs.reverse();
    Ok(outs)
}

impl Module for U2Net {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let feats = encode_decode(&self.encoder, &self.decoder, xs)?;
        let d1 = self.sides[0].forward(&feats[0])?;
        let mut ds = vec![d1.clone()];
        for (side, feat) in self.sides[1..].iter().zip(&feats[1..]) {
            ds.push(upsample_like(&side.forward(feat)?, &d1)?);
        }
        let refs: Vec<&Tensor> = ds.iter().collect();
        let d0 = self.outconv.forward_fused(&refs, false, None)?;
        candle_nn::ops::sigmoid(&d0)
    }
}
