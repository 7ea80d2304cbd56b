//! BackLess worker: salient-object segmentation in candle, the image pipeline around it, and
//! the command line (`worker remove`, `worker model import`).

pub mod auth;
pub mod budget;
pub mod cli;
pub mod config;
pub mod imaging;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod server;
