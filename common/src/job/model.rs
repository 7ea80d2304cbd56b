//! Segmentation model names.

/// The segmentation networks the worker knows.
pub const MODELS: &[&str] = &["u2netp", "u2net", "isnet"];
/// What a model is called where people choose one (the page's model list).
pub fn model_label(model: &str) -> &'static str {
    match model {
        "u2netp" => "U²-NetP (fast)",
        "u2net" => "U²-Net (balanced)",
        "isnet" => "IS-Net (best quality)",
        _ => "unknown model",
    }
}

/// The model used when the client names none.
pub const DEFAULT_MODEL: &str = "u2netp";
