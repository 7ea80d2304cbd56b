//! Colours as clients write them: one parser for the upload form, the pipeline text, the
//! remove.bg API and the command line, so every one of them takes the same spellings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The colour names accepted wherever a colour is (CSS's basic names, as remove.bg takes them).
const NAMES: &[(&str, [u8; 3])] = &[
    ("white", [255, 255, 255]),
    ("black", [0, 0, 0]),
    ("red", [255, 0, 0]),
    ("green", [0, 128, 0]),
    ("lime", [0, 255, 0]),
    ("blue", [0, 0, 255]),
    ("yellow", [255, 255, 0]),
    ("cyan", [0, 255, 255]),
    ("aqua", [0, 255, 255]),
    ("magenta", [255, 0, 255]),
    ("fuchsia", [255, 0, 255]),
    ("gray", [128, 128, 128]),
    ("grey", [128, 128, 128]),
    ("silver", [192, 192, 192]),
    ("maroon", [128, 0, 0]),
    ("olive", [128, 128, 0]),
    ("navy", [0, 0, 128]),
    ("purple", [128, 0, 128]),
    ("teal", [0, 128, 128]),
    ("orange", [255, 165, 0]),
    ("pink", [255, 192, 203]),
    ("brown", [165, 42, 42]),
];

/// An opaque sRGB colour: `#rgb` or `#rrggbb` (the `#` optional, any case) or a name such as
/// `white`; written `#rrggbb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rgb(pub [u8; 3]);

/// Why a text is not a colour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ColourError {
    /// Hex with an alpha digit (`#rgba`, `#rrggbbaa`): backgrounds are opaque.
    #[error("semi-transparent colours are not supported; give 3 or 6 hex digits")]
    Translucent,
    #[error("{0:?} is not a colour; use #rrggbb, #rgb or a name such as white")]
    Unknown(String),
}

impl FromStr for Rgb {
    type Err = ColourError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some((_, c)) = NAMES.iter().find(|(name, _)| name.eq_ignore_ascii_case(s)) {
            return Ok(Rgb(*c));
        }
        let hex = s.strip_prefix('#').unwrap_or(s);
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ColourError::Unknown(s.to_string()));
        }
        let digit = |i: usize| u8::from_str_radix(&hex[i..=i], 16).expect("checked as hex");
        match hex.len() {
            3 => Ok(Rgb(std::array::from_fn(|i| digit(i) * 17))),
            6 => Ok(Rgb(std::array::from_fn(|i| {
                digit(2 * i) * 16 + digit(2 * i + 1)
            }))),
            4 | 8 => Err(ColourError::Translucent),
            _ => Err(ColourError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for Rgb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, g, b] = self.0;
        write!(f, "#{r:02x}{g:02x}{b:02x}")
    }
}

impl TryFrom<String> for Rgb {
    type Error = ColourError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Rgb> for String {
    fn from(c: Rgb) -> String {
        c.to_string()
    }
}

/// Any accepted spelling of a colour as `#rrggbb`, the form jobs record.
pub fn normalize_color(s: &str) -> Option<String> {
    s.parse::<Rgb>().ok().map(|c| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_colour_is_one_colour() {
        for s in ["#ff8800", "FF8800", "#f80", "f80", " #Ff8800 ", "orange"] {
            let want = if s == "orange" {
                [255, 165, 0]
            } else {
                [255, 136, 0]
            };
            assert_eq!(s.parse::<Rgb>(), Ok(Rgb(want)), "{s:?}");
        }
        assert_eq!(normalize_color("WHITE").as_deref(), Some("#ffffff"));
        assert_eq!(normalize_color("#ABC").as_deref(), Some("#aabbcc"));
        assert_eq!(Rgb([1, 2, 255]).to_string(), "#0102ff");
    }

    #[test]
    fn what_is_not_a_colour_is_refused() {
        assert_eq!("#ff80".parse::<Rgb>(), Err(ColourError::Translucent));
        assert_eq!("#ff880080".parse::<Rgb>(), Err(ColourError::Translucent));
        for bad in [
            "",
            "#",
            "#gg0000",
            "#ff88",
            "ff88001",
            "rebeccapurple",
            "#ｆｆｆ",
            "ûûû",
        ] {
            assert!(bad.parse::<Rgb>().is_err(), "{bad:?}");
            assert_eq!(normalize_color(bad), None, "{bad:?}");
        }
    }
}
