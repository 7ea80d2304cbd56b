//! Output encodings.

use serde::{Deserialize, Serialize};

/// Output encoding of the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Png,
    Webp,
    Jpeg,
    /// remove.bg's `zip`: `color.jpg` (the colours, without transparency) and `alpha.png` (the
    /// alpha matte) in one archive.
    Zip,
}

impl OutputFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Webp => "image/webp",
            Self::Jpeg => "image/jpeg",
            Self::Zip => "application/zip",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Jpeg => "jpg",
            Self::Zip => "zip",
        }
    }

    /// The format's name as clients write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Jpeg => "jpeg",
            Self::Zip => "zip",
        }
    }

    /// Whether the format keeps transparency (JPEG has none; a zip carries it as its own matte).
    pub fn has_alpha(self) -> bool {
        self != Self::Jpeg
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "png" => Some(Self::Png),
            "webp" => Some(Self::Webp),
            "jpeg" | "jpg" => Some(Self::Jpeg),
            "zip" => Some(Self::Zip),
            _ => None,
        }
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| format!("unknown format {s:?}; use png, webp, jpeg or zip"))
    }
}
