//! The remove.bg request parameters, read from whichever body the client sent (multipart, form
//! or JSON, where booleans may be real booleans), checked, and turned into a job's pipeline.
//!
//! Mapping: `size` caps the result's pixels (`thumbnail:pixels=`, never enlarging); `channels=alpha`
//! is `mask_only`; `bg_color` paints the background; `roi` limits where the subject can be
//! (`remove_background:roi=`); `crop`/`crop_margin` add `crop_to_subject`; `scale`/`position`
//! add `place`; a background image (`bg_image_file` / `bg_image_url`, stored with the job) adds
//! `backdrop`; `format` is the final `encode`. `type`, `type_level`, `semitransparency` and the
//! shadow options are accepted and change nothing (one model serves every subject).

use std::collections::HashMap;

use backless_common::db::OutputFormat;
use backless_common::job::{
    ColourError, Length, Margin, Operation, Pipeline, Region, Rgb, parse_position, parse_scale,
};

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
    /// Space kept around the subject when cropping.
    pub crop_margin: Margin,
    /// Only this rectangle can be subject.
    pub roi: Option<Region>,
    /// The subject's size in percent of the image (`place`).
    pub scale: Option<f32>,
    /// Where the subject goes, percent across and down (`place`).
    pub position: Option<[f32; 2]>,
    /// Where to fetch the background image from (`backdrop`).
    pub bg_image_url: Option<String>,
    /// Whether a background image file came with the request (`backdrop`).
    pub bg_image_file: bool,
}

/// remove.bg's `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PNG when the result has transparency, JPEG otherwise (a mask is PNG: it is exact).
    Auto,
    Png,
    Jpg,
    Webp,
    /// `color.jpg` and `alpha.png` in one archive.
    Zip,
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
    match v.parse::<Rgb>() {
        Ok(c) => Ok(c.to_string()),
        Err(ColourError::Translucent) => Err(err(
            "invalid_bg_color",
            "semi-transparent background colours are not supported; give 3 or 6 hex digits",
        )),
        Err(ColourError::Unknown(_)) => Err(err(
            "invalid_bg_color",
            format!(
                "bg_color must be a hex colour (81d4fa, fff) or a colour name, not {:?}",
                v.trim()
            ),
        )),
    }
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
            Some("zip") => Format::Zip,
            Some(other) => {
                return Err(err(
                    "invalid_format",
                    format!("format must be auto, png, jpg, webp or zip, not {other:?}"),
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
            None => Margin::default(),
            Some(v) => {
                let bad = |why: String| err("invalid_crop_margin", format!("crop_margin: {why}"));
                let margin: Margin = v.parse().map_err(bad)?;
                // remove.bg's maximum on each side.
                let too_much = margin.sides().iter().any(|side| match side {
                    Length::Px(px) => *px > MAX_CROP_MARGIN,
                    Length::Percent(p) => *p > 50.0,
                });
                if too_much {
                    return Err(bad(format!(
                        "at most {MAX_CROP_MARGIN}px or 50% on each side, not {v:?}"
                    )));
                }
                margin
            }
        };
        let roi = match get("roi") {
            None => None,
            Some(v) => Some(
                v.parse::<Region>()
                    .map_err(|e| err("invalid_roi", format!("roi {e}")))?,
            ),
        };
        let scale = get("scale")
            .map(parse_scale)
            .transpose()
            .map_err(|e| err("invalid_scale", e))?
            .flatten();
        let position = get("position")
            .map(parse_position)
            .transpose()
            .map_err(|e| err("invalid_position", e))?
            .flatten();
        let bg_image_url = get("bg_image_url").map(str::to_string);
        let bg_image_file = get("bg_image_file").is_some();
        let backgrounds = [bg_color.is_some(), bg_image_url.is_some(), bg_image_file];
        if backgrounds.iter().filter(|b| **b).count() > 1 {
            return Err(err(
                "invalid_parameter",
                "Give at most one of bg_color, bg_image_url and bg_image_file.",
            ));
        }
        if alpha_only && (bg_image_url.is_some() || bg_image_file) {
            return Err(err(
                "invalid_parameter",
                "channels=alpha returns the mask alone; it takes no background image.",
            ));
        }
        Ok(Self {
            max_pixels,
            size,
            format,
            alpha_only,
            bg_color,
            crop,
            crop_margin,
            roi,
            scale,
            position,
            bg_image_url,
            bg_image_file,
        })
    }

    /// Whether a background image goes behind the subject.
    pub fn bg_image(&self) -> bool {
        self.bg_image_url.is_some() || self.bg_image_file
    }

    /// Whether the result has transparent pixels.
    fn transparent(&self) -> bool {
        !self.alpha_only && self.bg_color.is_none() && !self.bg_image()
    }

    /// The output encoding.
    pub fn output_format(&self) -> OutputFormat {
        match self.format {
            Format::Png => OutputFormat::Png,
            Format::Webp => OutputFormat::Webp,
            Format::Jpg => OutputFormat::Jpeg,
            Format::Zip => OutputFormat::Zip,
            Format::Auto if self.transparent() || self.alpha_only => OutputFormat::Png,
            Format::Auto => OutputFormat::Jpeg,
        }
    }

    /// The job: remove the background, crop, cap the size, encode.
    pub fn pipeline(&self, model: &str, models: &[String]) -> Result<Pipeline, ParamError> {
        let format = self.output_format();
        // JPEG has no alpha: a transparent background becomes white, as remove.bg's jpg does.
        let bg_color = match (&self.bg_color, format) {
            (None, OutputFormat::Jpeg) if self.transparent() => Some("#ffffff".to_string()),
            (c, _) => c.clone(),
        };
        let mut ops = vec![Operation::RemoveBackground {
            model: model.to_string(),
            mask_only: self.alpha_only,
            bg_color: if self.alpha_only { None } else { bg_color },
            decontaminate: true,
            matting: false,
            roi: self.roi,
        }];
        if self.crop {
            ops.push(Operation::CropToSubject {
                threshold: 10,
                margin: self.crop_margin,
            });
        }
        if self.scale.is_some() || self.position.is_some() {
            ops.push(Operation::Place {
                scale: self.scale,
                position: self.position,
            });
        }
        if self.bg_image() {
            ops.push(Operation::Backdrop);
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
        // zip keeps transparency in its matte: no background is painted.
        let zip = ops(&[("format", "zip")]);
        assert_eq!(zip[0], "remove_background:model=u2netp");
        assert_eq!(zip.last().unwrap(), "encode:format=zip");
        assert_eq!(colour("#fff").unwrap(), "#ffffff");
        assert_eq!(colour("ff000080").unwrap_err().code, "invalid_bg_color");
        assert_eq!(colour("notacolour").unwrap_err().code, "invalid_bg_color");
        assert_eq!(
            ops(&[("channels", "alpha")])[0],
            "remove_background:model=u2netp,mask_only=true"
        );
    }

    #[test]
    fn crop_roi_scale_and_position_become_operations() {
        assert_eq!(
            ops(&[("crop", "true"), ("crop_margin", "30px")])[1],
            "crop_to_subject:threshold=10,margin=30"
        );
        assert_eq!(
            ops(&[("crop", "true"), ("crop_margin", "10% 20px")])[1],
            "crop_to_subject:threshold=10,margin=10% 20"
        );
        assert_eq!(ops(&[("crop", "false"), ("crop_margin", "30")]).len(), 3);
        for bad in ["501", "51%", "1 2 3", "-4px", "wide"] {
            assert_eq!(
                params(&[("crop_margin", bad)]).unwrap_err().code,
                "invalid_crop_margin",
                "{bad}"
            );
        }
        assert_eq!(
            params(&[("crop", "maybe")]).unwrap_err().code,
            "invalid_parameter"
        );
        assert_eq!(
            ops(&[("roi", "10% 0% 90% 100%")])[0],
            "remove_background:model=u2netp,roi=10% 0% 90% 100%"
        );
        assert_eq!(
            params(&[("roi", "0 0 10")]).unwrap_err().code,
            "invalid_roi"
        );
        // scale implies centred; position alone moves the subject; crop comes first.
        let placed = ops(&[("crop", "true"), ("scale", "80%"), ("position", "original")]);
        assert_eq!(placed[2], "place:scale=80%");
        assert_eq!(ops(&[("position", "0% 100%")])[1], "place:position=0% 100%");
        assert_eq!(ops(&[("position", "center")])[1], "place:position=50% 50%");
        // Defaults add nothing.
        assert_eq!(
            ops(&[
                ("scale", "original"),
                ("position", "original"),
                ("roi", "0% 0% 100% 100%")
            ])
            .len(),
            3
        );
        for (k, v, code) in [
            ("scale", "5%", "invalid_scale"),
            ("scale", "big", "invalid_scale"),
            ("position", "left", "invalid_position"),
            ("position", "50% 150%", "invalid_position"),
        ] {
            assert_eq!(params(&[(k, v)]).unwrap_err().code, code, "{k}={v}");
        }
        // A background image: backdrop after placing, and auto is JPEG (nothing transparent
        // is left, and no white is painted first).
        let url = ("bg_image_url", "http://photos.example/beach.jpg");
        let ops_bg = ops(&[("scale", "50%"), url]);
        assert_eq!(ops_bg[0], "remove_background:model=u2netp");
        assert_eq!(ops_bg[1..3], ["place:scale=50%", "backdrop"]);
        assert_eq!(ops_bg.last().unwrap(), "encode:format=jpeg");
        assert_eq!(
            ops(&[("bg_image_file", "given"), ("format", "png")]).len(),
            4
        );
        for clash in [
            &[url, ("bg_color", "red")][..],
            &[url, ("bg_image_file", "given")],
            &[url, ("channels", "alpha")],
        ] {
            assert_eq!(
                params(clash).unwrap_err().code,
                "invalid_parameter",
                "{clash:?}"
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
