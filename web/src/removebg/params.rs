//! The remove.bg request parameters, read from whichever body the client sent (multipart, form
//! or JSON, where booleans may be real booleans), checked, and turned into a job's pipeline.
//!
//! Mapping: `size` caps the result's pixels (`thumbnail:pixels=`, never enlarging); `channels=alpha`
//! is `mask_only`; `bg_color` paints the background; `crop`/`crop_margin` add `crop_to_subject`;
//! `format` is the final `encode`. `type`, `type_level`, `semitransparency` and the shadow options
//! are accepted and change nothing (one model serves every subject); `scale`, `position`, `roi`
//! and background images are refused with a clear error unless they ask for the default.

use std::collections::HashMap;

use backless_common::db::OutputFormat;
use backless_common::job::{Operation, Pipeline, normalize_color};

/// One refused parameter: remove.bg's error code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub code: &'static str,
    pub title: String,
}

fn err(code: &'static str, title: impl Into<String>) -> ParamError {
    ParamError {
        code,
        title: title.into(),
    }
}

/// What the client asked for, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// The most pixels of the result (from `size`).
    pub max_pixels: u64,
    /// `size` as given, normalised (`preview`, `full`, `auto`, ...).
    pub size: String,
    pub format: Format,
    /// `channels=alpha`: the mask instead of the cut-out.
    pub alpha_only: bool,
    /// `#rrggbb`.
    pub bg_color: Option<String>,
    pub crop: bool,
    /// Pixels kept around the subject when cropping.
    pub crop_margin: u32,
}

/// remove.bg's `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PNG when the result has transparency, JPEG otherwise (a mask is PNG: it is exact).
    Auto,
    Png,
    Jpg,
    Webp,
}

/// The megapixel caps of remove.bg's sizes.
const SIZES: &[(&[&str], u64)] = &[
    (&["preview", "small", "regular"], 250_000),
    (&["medium"], 1_500_000),
    (&["hd"], 4_000_000),
    (&["full", "4k", "auto"], 25_000_000),
    (&["50mp"], 50_000_000),
];

/// The subject types remove.bg knows (`type`); accepted, with no effect on the model.
const TYPES: &[&str] = &[
    "auto",
    "person",
    "product",
    "car",
    "animal",
    "graphic",
    "transportation",
];

/// Colour names `bg_color` takes besides hex (CSS's basic colours).
const COLOUR_NAMES: &[(&str, &str)] = &[
    ("white", "#ffffff"),
    ("black", "#000000"),
    ("red", "#ff0000"),
    ("green", "#008000"),
    ("lime", "#00ff00"),
    ("blue", "#0000ff"),
    ("yellow", "#ffff00"),
    ("cyan", "#00ffff"),
    ("aqua", "#00ffff"),
    ("magenta", "#ff00ff"),
    ("fuchsia", "#ff00ff"),
    ("gray", "#808080"),
    ("grey", "#808080"),
    ("silver", "#c0c0c0"),
    ("maroon", "#800000"),
    ("olive", "#808000"),
    ("navy", "#000080"),
    ("purple", "#800080"),
    ("teal", "#008080"),
    ("orange", "#ffa500"),
    ("pink", "#ffc0cb"),
    ("brown", "#a52a2a"),
];

/// Largest `crop_margin` in pixels (remove.bg's own maximum).
const MAX_CROP_MARGIN: u32 = 500;

fn boolean(field: &str, v: &str) -> Result<bool, ParamError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(err(
            "invalid_parameter",
            format!("{field} must be true or false, not {v:?}"),
        )),
    }
}

/// A colour as remove.bg takes it: hex with or without `#` (3 or 6 digits), or a name.
pub fn colour(v: &str) -> Result<String, ParamError> {
    let v = v.trim();
    if let Some((_, hex)) = COLOUR_NAMES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(v))
    {
        return Ok((*hex).to_string());
    }
    let digits = v.trim_start_matches('#');
    if matches!(digits.len(), 4 | 8) && digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(err(
            "invalid_bg_color",
            "semi-transparent background colours are not supported; give 3 or 6 hex digits",
        ));
    }
    normalize_color(v).ok_or_else(|| {
        err(
            "invalid_bg_color",
            format!("bg_color must be a hex colour (81d4fa, fff) or a colour name, not {v:?}"),
        )
    })
}

impl Params {
    /// Read the parameters from the request's text fields (names as remove.bg spells them).
    pub fn from_fields(fields: &HashMap<String, String>) -> Result<Self, ParamError> {
        let get = |k: &str| fields.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let size = get("size").unwrap_or("preview").to_ascii_lowercase();
        let max_pixels = SIZES
            .iter()
            .find(|(names, _)| names.contains(&size.as_str()))
            .map(|(_, px)| *px)
            .ok_or_else(|| {
                err(
                    "invalid_size",
                    format!("size must be preview, small, regular, medium, hd, full, 4k, 50MP or auto, not {size:?}"),
                )
            })?;
        let format = match get("format").map(str::to_ascii_lowercase).as_deref() {
            None | Some("auto") => Format::Auto,
            Some("png") => Format::Png,
            Some("jpg" | "jpeg") => Format::Jpg,
            Some("webp") => Format::Webp,
            Some("zip") => {
                return Err(err(
                    "unsupported_parameter",
                    "format=zip is not supported yet; use png, webp, jpg or channels=alpha",
                ));
            }
            Some(other) => {
                return Err(err(
                    "invalid_format",
                    format!("format must be auto, png, jpg or webp, not {other:?}"),
                ));
            }
        };
        let alpha_only = match get("channels").map(str::to_ascii_lowercase).as_deref() {
            None | Some("rgba") => false,
            Some("alpha") => true,
            Some(other) => {
                return Err(err(
                    "invalid_channels",
                    format!("channels must be rgba or alpha, not {other:?}"),
                ));
            }
        };
        let bg_color = get("bg_color").map(colour).transpose()?;
        if let Some(t) = get("type")
            && !TYPES.contains(&t.to_ascii_lowercase().as_str())
        {
            return Err(err(
                "invalid_type",
                format!("type must be one of {}, not {t:?}", TYPES.join(", ")),
            ));
        }
        let crop = get("crop")
            .map(|v| boolean("crop", v))
            .transpose()?
            .unwrap_or(false);
        let crop_margin = match get("crop_margin") {
            None => 0,
            Some(v) => {
                let px = v.strip_suffix("px").unwrap_or(v).trim();
                if v.contains('%') || px.contains(' ') {
                    return Err(err(
                        "unsupported_parameter",
                        "crop_margin takes one value in pixels (e.g. 30px); percentages and per-side values are not supported",
                    ));
                }
                px.parse::<u32>()
                    .ok()
                    .filter(|m| *m <= MAX_CROP_MARGIN)
                    .ok_or_else(|| {
                        err(
                            "invalid_crop_margin",
                            format!("crop_margin must be 0 to {MAX_CROP_MARGIN} pixels, not {v:?}"),
                        )
                    })?
            }
        };
        // Accepted only at their defaults.
        for (field, defaults) in [
            ("scale", &["original", "100%"][..]),
            ("position", &["original"][..]),
            ("roi", &["0% 0% 100% 100%"][..]),
        ] {
            if let Some(v) = get(field)
                && !defaults.iter().any(|d| d.eq_ignore_ascii_case(v))
            {
                return Err(err(
                    "unsupported_parameter",
                    format!(
                        "{field} is not supported yet (only {})",
                        defaults.join(" or ")
                    ),
                ));
            }
        }
        for field in ["bg_image_url", "bg_image_file"] {
            if get(field).is_some() {
                return Err(err(
                    "unsupported_parameter",
                    format!("{field} is not supported yet; use bg_color"),
                ));
            }
        }
        Ok(Self {
            max_pixels,
            size,
            format,
            alpha_only,
            bg_color,
            crop,
            crop_margin,
        })
    }

    /// Whether the result has transparent pixels.
    fn transparent(&self) -> bool {
        !self.alpha_only && self.bg_color.is_none()
    }

    /// The output encoding.
    pub fn output_format(&self) -> OutputFormat {
        match self.format {
            Format::Png => OutputFormat::Png,
            Format::Webp => OutputFormat::Webp,
            Format::Jpg => OutputFormat::Jpeg,
            Format::Auto if self.transparent() || self.alpha_only => OutputFormat::Png,
            Format::Auto => OutputFormat::Jpeg,
        }
    }

    /// The job: remove the background, crop, cap the size, encode.
    pub fn pipeline(&self, model: &str, models: &[String]) -> Result<Pipeline, ParamError> {
        let format = self.output_format();
        // JPEG has no alpha: a transparent background becomes white, as remove.bg's jpg does.
        let bg_color = match (&self.bg_color, format) {
            (None, OutputFormat::Jpeg) if !self.alpha_only => Some("#ffffff".to_string()),
            (c, _) => c.clone(),
        };
        let mut ops = vec![Operation::RemoveBackground {
            model: model.to_string(),
            mask_only: self.alpha_only,
            bg_color: if self.alpha_only { None } else { bg_color },
            decontaminate: true,
        }];
        if self.crop {
            ops.push(Operation::CropToSubject {
                threshold: 10,
                margin: self.crop_margin,
            });
        }
        ops.push(Operation::Thumbnail {
            size: None,
            pixels: Some(self.max_pixels),
        });
        ops.push(Operation::Encode {
            format,
            quality: None,
        });
        Pipeline::new(ops, models).map_err(|e| err("invalid_parameter", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Result<Params, ParamError> {
        let fields = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Params::from_fields(&fields)
    }

    fn ops(pairs: &[(&str, &str)]) -> Vec<String> {
        params(pairs)
            .unwrap()
            .pipeline("u2netp", &["u2netp".to_string()])
            .unwrap()
            .to_strings()
    }

    #[test]
    fn defaults_are_a_preview_png_cut_out() {
        assert_eq!(
            ops(&[]),
            [
                "remove_background:model=u2netp",
                "thumbnail:pixels=250000",
                "encode:format=png"
            ]
        );
    }

    #[test]
    fn sizes_formats_channels_and_colours() {
        assert_eq!(params(&[("size", "HD")]).unwrap().max_pixels, 4_000_000);
        assert_eq!(params(&[("size", "4k")]).unwrap().max_pixels, 25_000_000);
        assert_eq!(params(&[("size", "50MP")]).unwrap().max_pixels, 50_000_000);
        assert_eq!(
            params(&[("size", "huge")]).unwrap_err().code,
            "invalid_size"
        );
        // auto: PNG with transparency, JPEG on a colour, PNG for a mask.
        assert_eq!(
            params(&[("bg_color", "81d4fa")]).unwrap().output_format(),
            OutputFormat::Jpeg
        );
        assert_eq!(
            params(&[("channels", "alpha")]).unwrap().output_format(),
            OutputFormat::Png
        );
        // jpg without a colour gets white; a named colour is hex.
        assert_eq!(
            ops(&[("format", "jpg")])[0],
            "remove_background:model=u2netp,bg_color=#ffffff"
        );
        assert_eq!(
            ops(&[("bg_color", "Red"), ("format", "webp")])[0],
            "remove_background:model=u2netp,bg_color=#ff0000"
        );
        assert_eq!(colour("#fff").unwrap(), "#ffffff");
        assert_eq!(colour("ff000080").unwrap_err().code, "invalid_bg_color");
        assert_eq!(colour("notacolour").unwrap_err().code, "invalid_bg_color");
        assert_eq!(
            ops(&[("channels", "alpha")])[0],
            "remove_background:model=u2netp,mask_only=true"
        );
    }

    #[test]
    fn crop_and_the_parameters_not_supported() {
        assert_eq!(
            ops(&[("crop", "true"), ("crop_margin", "30px")])[1],
            "crop_to_subject:threshold=10,margin=30"
        );
        assert_eq!(ops(&[("crop", "false"), ("crop_margin", "30")]).len(), 3);
        assert_eq!(
            params(&[("crop_margin", "10%")]).unwrap_err().code,
            "unsupported_parameter"
        );
        assert_eq!(
            params(&[("crop_margin", "501")]).unwrap_err().code,
            "invalid_crop_margin"
        );
        assert_eq!(
            params(&[("crop", "maybe")]).unwrap_err().code,
            "invalid_parameter"
        );
        // Defaults are accepted; anything else is refused, not silently ignored.
        assert!(
            params(&[
                ("scale", "original"),
                ("position", "original"),
                ("roi", "0% 0% 100% 100%")
            ])
            .is_ok()
        );
        for (k, v) in [
            ("scale", "50%"),
            ("position", "center"),
            ("roi", "0 0 10 10"),
            ("bg_image_url", "http://x/y.png"),
            ("format", "zip"),
        ] {
            assert_eq!(
                params(&[(k, v)]).unwrap_err().code,
                "unsupported_parameter",
                "{k}"
            );
        }
        // type and the shadow options change nothing.
        assert!(
            params(&[
                ("type", "product"),
                ("type_level", "2"),
                ("add_shadow", "true")
            ])
            .is_ok()
        );
        assert_eq!(
            params(&[("type", "spaceship")]).unwrap_err().code,
            "invalid_type"
        );
    }
}
