//! Limits on what BackLess accepts from strangers, shared by web (checked at upload) and the
//! worker (checked again before decoding, since a push may arrive from anywhere the queue allows).

use serde::{Deserialize, Serialize};

/// Bounds on one input image. Defaults are safe for a public service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLimits {
    /// Largest accepted file, in bytes.
    pub max_bytes: u64,
    /// Largest accepted width x height, read from the header before decoding.
    pub max_pixels: u64,
    /// Largest accepted width or height on its own.
    pub max_side: u32,
    /// Most frames an animation may declare (only the first is processed; the rest are refused
    /// from the container structure, before any pixel is decoded).
    #[serde(default = "default_max_frames")]
    pub max_frames: u32,
    /// Most bytes of image buffers one job may hold at once, estimated by the job's
    /// [`Plan`](crate::job::Plan) before anything is allocated.
    #[serde(default = "default_max_working_bytes")]
    pub max_working_bytes: u64,
}

fn default_max_working_bytes() -> u64 {
    ImageLimits::default().max_working_bytes
}

fn default_max_frames() -> u32 {
    ImageLimits::default().max_frames
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_bytes: 25 * 1024 * 1024,
            max_pixels: 40_000_000,
            max_side: 20_000,
            max_frames: 1_000,
            max_working_bytes: 2 << 30,
        }
    }
}

impl ImageLimits {
    /// Check declared dimensions against the limits.
    pub fn check_dimensions(&self, width: u32, height: u32) -> Result<(), LimitError> {
        if width == 0 || height == 0 {
            return Err(LimitError::EmptyImage);
        }
        if width > self.max_side || height > self.max_side {
            return Err(LimitError::SideTooLarge {
                width,
                height,
                max_side: self.max_side,
            });
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(LimitError::TooManyPixels {
                width,
                height,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }

    /// Check the frame count an animated file declares (see [`crate::frames::count_frames`]).
    pub fn check_frames(&self, frames: u32) -> Result<(), LimitError> {
        if frames > self.max_frames {
            return Err(LimitError::TooManyFrames {
                frames,
                max_frames: self.max_frames,
            });
        }
        Ok(())
    }

    /// Count the frames in `data` from its structure and check them.
    pub fn check_animation(&self, data: &[u8]) -> Result<(), LimitError> {
        self.check_frames(crate::frames::count_frames(data))
    }
}

/// Why an image was refused by [`ImageLimits`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the image has no pixels")]
    EmptyImage,
    #[error("image is {width}x{height}; each side may be at most {max_side} pixels")]
    SideTooLarge {
        width: u32,
        height: u32,
        max_side: u32,
    },
    #[error(
        "image is {width}x{height} ({:.1} megapixels); the limit is {:.1} megapixels",
        (*width as f64) * (*height as f64) / 1e6,
        (*max_pixels as f64) / 1e6
    )]
    TooManyPixels {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("file is {size} bytes; the limit is {max_bytes} bytes")]
    TooManyBytes { size: u64, max_bytes: u64 },
    #[error("the animation has {frames} frames; the limit is {max_frames}")]
    TooManyFrames { frames: u32, max_frames: u32 },
}

impl LimitError {
    /// Stable, machine-readable code: the same in web (at upload) and the worker (at decode).
    pub fn code(&self) -> &'static str {
        match self {
            LimitError::EmptyImage => "empty_image",
            LimitError::SideTooLarge { .. } => "image_side_too_large",
            LimitError::TooManyPixels { .. } => "too_many_pixels",
            LimitError::TooManyBytes { .. } => "file_too_large",
            LimitError::TooManyFrames { .. } => "too_many_frames",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_within_and_beyond_limits() {
        let l = ImageLimits::default();
        assert!(l.check_dimensions(6000, 4000).is_ok());
        assert_eq!(l.check_dimensions(0, 10), Err(LimitError::EmptyImage));
        assert!(matches!(
            l.check_dimensions(8000, 6000),
            Err(LimitError::TooManyPixels { .. })
        ));
        assert!(matches!(
            l.check_dimensions(30_000, 10),
            Err(LimitError::SideTooLarge { .. })
        ));
        assert!(l.check_frames(1_000).is_ok());
        assert!(matches!(
            l.check_frames(1_001),
            Err(LimitError::TooManyFrames { .. })
        ));
        let msg = l.check_dimensions(8000, 6000).unwrap_err().to_string();
        assert!(msg.contains("48.0 megapixels"), "{msg}");
        assert!(msg.contains("40.0 megapixels"), "{msg}");
    }
}
