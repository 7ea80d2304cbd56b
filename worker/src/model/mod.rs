//! Salient-object segmentation networks in candle, one module per network.
//!
//! All three share the RSU ("residual U-block") building blocks in [`rsu`]; [`u2net`] holds
//! U²-Net and U²-NetP (same graph, different widths), [`isnet`] holds IS-Net (DIS). The
//! convolution, pooling and upsampling kernels they call live in [`ops`], so faster kernels can be
//! swapped in without touching the networks.

pub mod io;
pub mod isnet;
pub mod kernels;
pub mod layers;
pub mod onnx;
pub mod rsu;
pub mod u2net;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

pub use rsu::{BlockSpec, StageSpec};

/// The network families BackLess can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    U2netp,
    U2net,
    Isnet,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::U2netp, Arch::U2net, Arch::Isnet];

    pub fn name(self) -> &'static str {
        match self {
            Arch::U2netp => "u2netp",
            Arch::U2net => "u2net",
            Arch::Isnet => "isnet",
        }
    }

    /// Memory one forward pass holds beyond the loaded weights: activations, the convolution
    /// workspace and the allocator's slack. Measured, not derived: the peak resident size of
    /// `worker bench` over the weights and one decoded photo (`scripts/bench-model.sh`, the
    /// first table in docs/benchmarks.md: 187, 526 and 868 MB), rounded up. The memory budget
    /// ([`crate::budget`]) reserves it for every image that removes a background.
    pub fn inference_bytes(self) -> u64 {
        const MIB: u64 = 1 << 20;
        match self {
            Arch::U2netp => 160 * MIB,
            Arch::U2net => 340 * MIB,
            Arch::Isnet => 680 * MIB,
        }
    }

    /// Every convolution of the network, in the order the forward pass runs them.
    pub fn conv_specs(self) -> Vec<ConvSpec> {
        match self {
            Arch::U2netp | Arch::U2net => u2net::U2NetConfig::for_arch(self).conv_specs(),
            Arch::Isnet => isnet::IsNetConfig::default().conv_specs(),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ModelError::UnknownModel(s.to_string()))
    }
}

/// One convolution as the checkpoint stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSpec {
    /// Weight path, e.g. `stage1.rebnconvin.conv_s1`.
    pub name: String,
    pub in_ch: usize,
    pub out_ch: usize,
    pub kernel: usize,
    pub dilation: usize,
    pub stride: usize,
}

impl ConvSpec {
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![self.out_ch, self.in_ch, self.kernel, self.kernel]
    }
}

/// Resampling filter used to bring the photo to the model's input size and the mask back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    Lanczos,
    Bilinear,
}

/// How pixels become the network's input, as the reference tool for these weights does it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    /// Divide by the image's largest channel value (rembg's `x / max(x)`) instead of by 255.
    pub divide_by_max: bool,
    /// Subtracted after scaling, per channel.
    pub mean: [f32; 3],
    /// Divided by after subtracting the mean, per channel.
    pub std: [f32; 3],
    /// Scale applied to 0..=255 values when `divide_by_max` is false.
    pub scale: f32,
}

/// The JSON written next to the weights: what a runtime needs to use them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub arch: Arch,
    /// Square input side in pixels.
    pub input_size: usize,
    pub resize: ResizeFilter,
    pub normalisation: Normalisation,
    /// Rescale the network output to span [0, 1] (rembg does this for U²-Net(P)).
    pub min_max_rescale: bool,
    /// sha256 of the ONNX file the weights came from.
    pub source_sha256: String,
}

impl ModelInfo {
    pub fn for_arch(arch: Arch, name: &str, source_sha256: &str) -> Self {
        let (input_size, resize, normalisation, min_max_rescale) = match arch {
            Arch::U2netp | Arch::U2net => (
                320,
                ResizeFilter::Lanczos,
                Normalisation {
                    divide_by_max: true,
                    mean: [0.485, 0.456, 0.406],
                    std: [0.229, 0.224, 0.225],
                    scale: 1.0,
                },
                true,
            ),
            // imgly's pre-processing: (x - 128) / 256.
            Arch::Isnet => (
                1024,
                ResizeFilter::Bilinear,
                Normalisation {
                    divide_by_max: false,
                    mean: [0.5; 3],
                    std: [1.0; 3],
                    scale: 1.0 / 256.0,
                },
                false,
            ),
        };
        Self {
            name: name.to_string(),
            arch,
            input_size,
            resize,
            normalisation,
            min_max_rescale,
            source_sha256: source_sha256.to_string(),
        }
    }
}

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model {0:?}; known models: u2netp, u2net, isnet")]
    UnknownModel(String),
    #[error(
        "model files for {name} are missing ({path}); run `scripts/fetch-models.sh {name}` first"
    )]
    Missing { name: String, path: PathBuf },
    #[error("model description {path} is unreadable: {reason}")]
    BadInfo { path: PathBuf, reason: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A network with its weights, ready to run.
pub enum Network {
    U2Net(u2net::U2Net),
    IsNet(isnet::IsNet),
}

impl Network {
    pub fn new(arch: Arch, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(match arch {
            Arch::U2netp | Arch::U2net => {
                Network::U2Net(u2net::U2Net::new(&u2net::U2NetConfig::for_arch(arch), vb)?)
            }
            Arch::Isnet => Network::IsNet(isnet::IsNet::new(&isnet::IsNetConfig::default(), vb)?),
        })
    }
}

impl Module for Network {
    /// `(1, 3, H, W)` normalised input -> `(1, 1, H, W)` foreground probability.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Network::U2Net(n) => n.forward(xs),
            Network::IsNet(n) => n.forward(xs),
        }
    }
}

/// A loaded model: the network, its description and the device it runs on.
pub struct Segmenter {
    pub info: ModelInfo,
    network: Network,
    device: Device,
}

impl Segmenter {
    /// Load `<dir>/<name>.safetensors` (memory-mapped) and `<dir>/<name>.json`.
    pub fn load(dir: &Path, name: &str, device: &Device) -> Result<Self, ModelError> {
        let weights = dir.join(format!("{name}.safetensors"));
        let info_path = dir.join(format!("{name}.json"));
        for path in [&weights, &info_path] {
            if !path.is_file() {
                return Err(ModelError::Missing {
                    name: name.to_string(),
                    path: path.clone(),
                });
            }
        }
        let bad = |reason: String| ModelError::BadInfo {
            path: info_path.clone(),
            reason,
        };
        let text = std::fs::read(&info_path).map_err(|e| bad(e.to_string()))?;
        let info: ModelInfo = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        // SAFETY: the file is ours and is not modified while mapped; candle copies each tensor
        // out of the map (converting to f32) when the network is built.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device)? };
        let network = Network::new(info.arch, vb)?;
        Ok(Self {
            info,
            network,
            device: device.clone(),
        })
    }

    /// Build from an already-made VarBuilder (tests with random or in-memory weights).
    pub fn from_parts(
        info: ModelInfo,
        vb: VarBuilder,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let network = Network::new(info.arch, vb)?;
        Ok(Self {
            info,
            network,
            device: device.clone(),
        })
    }

    /// Run the network once on a small input so the first real image pays for nothing but its
    /// own work: the thread pool is started, every kernel's code is paged in and the packed
    /// weights are touched. 64 x 64 reaches the deepest stage of every network (ceil-mode
    /// pooling keeps a 1 x 1 map there).
    pub fn warm_up(&self) -> Result<(), ModelError> {
        let input = Tensor::zeros((1, 3, 64, 64), DType::F32, &self.device)?;
        self.forward(&input)?;
        Ok(())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Run the network on a normalised `(1, 3, H, W)` tensor; returns `(1, 1, H, W)` in [0, 1].
    ///
    /// On the CPU one forward pass runs at a time in the process, whatever the model: each
    /// already uses every core, and two side by side took half as much CPU time again per image
    /// (20 small photos, 2 cores: 0.87 s against 0.56 s), fighting over the same cores and
    /// caches. Images in flight overlap everything else (decoding, compositing, encoding) with
    /// the pass that runs.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor, ModelError> {
        static CPU: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = self
            .device
            .is_cpu()
            .then(|| CPU.lock().unwrap_or_else(|e| e.into_inner()));
        // The convolution workspace is kept for the next pass; the worker frees it once idle
        // (`memory::release_free_memory`).
        Ok(self.network.forward(&input.to_device(&self.device)?)?)
    }
}

/// The device inference runs on: the first CUDA GPU when built with `--features cuda` and one is
/// usable, else the CPU. candle's `cuda_if_available` only asks whether the feature is compiled in,
/// so on a machine with no GPU (or a driver that cannot run) it fails instead of falling back.
pub fn default_device() -> candle_core::Result<Device> {
    #[cfg(feature = "cuda")]
    match Device::new_cuda(0) {
        Ok(device) => return Ok(device),
        Err(e) => tracing::warn!(error = %e, "no usable CUDA GPU, running on the CPU"),
    }
    Ok(Device::Cpu)
}
