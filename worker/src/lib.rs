//! BackLess worker: salient-object segmentation in candle, the image pipeline around it, and
//! the command line (`worker remove`, `worker model import`).

pub mod auth;
pub mod budget;
pub mod cli;
pub mod config;
pub mod encode;
pub mod foreground;
pub mod matting;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod ops;
pub mod pipeline;
pub mod resample;
pub mod server;
