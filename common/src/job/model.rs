//! Segmentation model names.

/// The segmentation networks the worker knows.
pub const MODELS: &[&str] = &["u2netp", "u2net", "isnet"];
/// The model used when the client names none.
pub const DEFAULT_MODEL: &str = "u2netp";
