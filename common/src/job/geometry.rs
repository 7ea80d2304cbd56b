//! Lengths and rectangles as clients write them (remove.bg's forms): `30`, `30px` or `10%`.
//! Percentages are of a reference length known only once the image is decoded (the image's
//! side for a region, the subject's for a margin), so they are kept as given and resolved by
//! the worker; every resolved value is at most its reference or a checked pixel bound.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest width or height `resize` may ask for, and largest length in pixels.
pub const MAX_TARGET_SIDE: u32 = 10_000;
/// Smallest `place` scale, in percent of the image (remove.bg's).
pub const MIN_PLACE_SCALE: f32 = 10.0;

/// A length in pixels, or a percentage (0 to 100) of a reference length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    Px(u32),
    Percent(f32),
}

impl Length {
    /// The length in pixels, a percentage taken of `of` (rounded; never more than `of`).
    pub fn resolve(self, of: u32) -> u32 {
        match self {
            Length::Px(px) => px,
            Length::Percent(p) => {
                let px = (f64::from(of) * f64::from(p) / 100.0).round();
                // p is checked to be 0..=100 at parse, so px <= of; min() keeps that true for
                // values built by code.
                (px.max(0.0) as u32).min(of)
            }
        }
    }
}

impl FromStr for Length {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<f32>() {
                Ok(p) if p.is_finite() && (0.0..=100.0).contains(&p) => Ok(Length::Percent(p)),
                _ => Err(format!("{s:?} must be a percentage from 0% to 100%")),
            };
        }
        match s.strip_suffix("px").unwrap_or(s).trim().parse::<u32>() {
            Ok(px) if px <= MAX_TARGET_SIDE => Ok(Length::Px(px)),
            _ => Err(format!(
                "{s:?} must be 0 to {MAX_TARGET_SIDE} pixels (30 or 30px) or a percentage (10%)"
            )),
        }
    }
}

impl fmt::Display for Length {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Length::Px(px) => write!(f, "{px}"),
            Length::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Whitespace-separated lengths.
fn lengths(s: &str) -> Result<Vec<Length>, String> {
    s.split_whitespace().map(str::parse).collect()
}

/// Space around the subject when cropping: one value (every side), two (top and bottom, left
/// and right) or four (top, right, bottom, left), as in CSS and remove.bg's `crop_margin`.
/// Percentages are of the subject's height (top, bottom) or width (left, right).
///
/// Stored as a number when it is the same pixels on every side (how jobs recorded margins before
/// percentages), as text otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Margin([Length; 4]);

impl Margin {
    /// The same pixels on every side.
    pub const fn px(px: u32) -> Self {
        Margin([Length::Px(px); 4])
    }

    /// Pixels (top, right, bottom, left) around a subject of `width` x `height`.
    pub fn resolve(&self, width: u32, height: u32) -> [u32; 4] {
        let [t, r, b, l] = self.0;
        [
            t.resolve(height),
            r.resolve(width),
            b.resolve(height),
            l.resolve(width),
        ]
    }

    /// Whether every side is in range: pixels up to [`MAX_TARGET_SIDE`], percentages 0 to 100.
    pub fn check(&self) -> Result<(), String> {
        for side in self.0 {
            let ok = match side {
                Length::Px(px) => px <= MAX_TARGET_SIDE,
                Length::Percent(p) => p.is_finite() && (0.0..=100.0).contains(&p),
            };
            if !ok {
                return Err(format!(
                    "margin {side} is out of range: 0 to {MAX_TARGET_SIDE} pixels or 0% to 100%"
                ));
            }
        }
        Ok(())
    }

    /// The sides: top, right, bottom, left.
    pub fn sides(&self) -> [Length; 4] {
        self.0
    }

    /// The same pixels on every side, if it is that.
    fn uniform_px(&self) -> Option<u32> {
        match self.0 {
            [Length::Px(a), ..] if self.0.iter().all(|l| *l == Length::Px(a)) => Some(a),
            _ => None,
        }
    }
}

impl Default for Margin {
    fn default() -> Self {
        Self::px(0)
    }
}

impl FromStr for Margin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match lengths(s)?.as_slice() {
            [a] => Ok(Margin([*a; 4])),
            [v, h] => Ok(Margin([*v, *h, *v, *h])),
            [t, r, b, l] => Ok(Margin([*t, *r, *b, *l])),
            _ => Err(format!(
                "{s:?} must be one, two or four lengths (30, 30px, 10%, \"10% 20px\")"
            )),
        }
    }
}

impl fmt::Display for Margin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [t, r, b, l] = self.0;
        if t == r && r == b && b == l {
            write!(f, "{t}")
        } else if t == b && r == l {
            write!(f, "{t} {r}")
        } else {
            write!(f, "{t} {r} {b} {l}")
        }
    }
}

/// A margin as stored: a number of pixels, or text.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum MarginRepr {
    Px(u32),
    Text(String),
}

impl Serialize for Margin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.uniform_px() {
            Some(px) => MarginRepr::Px(px),
            None => MarginRepr::Text(self.to_string()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Margin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A number is read as it is, so a record with a margin out of range is refused by the
        // pipeline's checks (`bad_parameter`), as every other parameter is.
        match MarginRepr::deserialize(d)? {
            MarginRepr::Px(px) => Ok(Margin::px(px)),
            MarginRepr::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A rectangle `x1 y1 x2 y2` (remove.bg's `roi`): x values of the image's width, y values of
/// its height; the right and bottom edges are exclusive, so `0% 0% 100% 100%` is the whole
/// image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Region([Length; 4]);

impl Region {
    /// The rectangle in pixels of a `width` x `height` image, clamped to it: `(x0, y0, x1, y1)`
    /// with `x0 <= x1 <= width` and `y0 <= y1 <= height` (empty when the corners are crossed).
    pub fn resolve(&self, width: u32, height: u32) -> (u32, u32, u32, u32) {
        let [x1, y1, x2, y2] = self.0;
        let x0 = x1.resolve(width).min(width);
        let y0 = y1.resolve(height).min(height);
        let x1 = x2.resolve(width).clamp(x0, width);
        let y1 = y2.resolve(height).clamp(y0, height);
        (x0, y0, x1, y1)
    }
}

impl FromStr for Region {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match lengths(s)?.as_slice() {
            [a, b, c, d] => {
                let region = Region([*a, *b, *c, *d]);
                // Crossed corners of the same unit can be told now; mixed units only per image.
                for (lo, hi) in [(a, c), (b, d)] {
                    let crossed = match (lo, hi) {
                        (Length::Px(lo), Length::Px(hi)) => lo >= hi,
                        (Length::Percent(lo), Length::Percent(hi)) => lo >= hi,
                        _ => false,
                    };
                    if crossed {
                        return Err(format!(
                            "{s:?}: x2 and y2 must be right of and below x1 and y1"
                        ));
                    }
                }
                Ok(region)
            }
            _ => Err(format!(
                "{s:?} must be four lengths \"x1 y1 x2 y2\" (e.g. \"10% 0% 90% 100%\" or \"0 0 400px 300px\")"
            )),
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a} {b} {c} {d}")
    }
}

impl TryFrom<String> for Region {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Region> for String {
    fn from(r: Region) -> String {
        r.to_string()
    }
}

/// A percentage written `80%` or `80`.
fn percent(v: &str) -> Option<f32> {
    let v = v.trim();
    v.strip_suffix('%').unwrap_or(v).trim().parse().ok()
}

/// `place`'s scale, in percent of the image: [`MIN_PLACE_SCALE`] to 100.
pub fn check_scale(s: f32) -> Result<f32, String> {
    if s.is_finite() && (MIN_PLACE_SCALE..=100.0).contains(&s) {
        Ok(s)
    } else {
        Err(format!(
            "scale must be {MIN_PLACE_SCALE}% to 100%, not {s}%"
        ))
    }
}

/// `place`'s position, in percent of the free space across and down: 0 to 100 each.
pub fn check_position(p: [f32; 2]) -> Result<[f32; 2], String> {
    if p.iter().all(|v| v.is_finite() && (0.0..=100.0).contains(v)) {
        Ok(p)
    } else {
        Err(format!(
            "position must be 0% to 100% across and down, not {}% {}%",
            p[0], p[1]
        ))
    }
}

/// `place`'s scale as remove.bg writes it: `original` (none) or a percentage in range.
pub fn parse_scale(v: &str) -> Result<Option<f32>, String> {
    if v.trim().eq_ignore_ascii_case("original") {
        return Ok(None);
    }
    let s = percent(v)
        .ok_or_else(|| format!("scale must be original or a percentage (80%), not {v:?}"))?;
    check_scale(s).map(Some)
}

/// `place`'s position as remove.bg writes it: `original` (none), `center`, or one or two
/// percentages (across, down) in range.
pub fn parse_position(v: &str) -> Result<Option<[f32; 2]>, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "original" => return Ok(None),
        "center" | "centre" => return Ok(Some([50.0, 50.0])),
        _ => {}
    }
    let values: Option<Vec<f32>> = v.split_whitespace().map(percent).collect();
    match values.as_deref() {
        Some([both]) => check_position([*both, *both]).map(Some),
        Some([x, y]) => check_position([*x, *y]).map(Some),
        _ => Err(format!(
            "position must be original, center, or one or two percentages (50% 100%), not {v:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_parse_resolve_and_refuse() {
        assert_eq!("30".parse::<Length>().unwrap(), Length::Px(30));
        assert_eq!(" 30px ".parse::<Length>().unwrap(), Length::Px(30));
        assert_eq!("12.5%".parse::<Length>().unwrap(), Length::Percent(12.5));
        assert_eq!(Length::Percent(12.5).resolve(200), 25);
        assert_eq!(Length::Percent(100.0).resolve(u32::MAX), u32::MAX);
        for bad in [
            "-1",
            "10001",
            "101%",
            "-5%",
            "NaN%",
            "inf%",
            "x",
            "18446744073709551615",
        ] {
            assert!(bad.parse::<Length>().is_err(), "{bad}");
        }
    }

    #[test]
    fn margins_take_one_two_or_four_values_and_store_as_before() {
        let m: Margin = "10% 20px".parse().unwrap();
        assert_eq!(m.resolve(300, 100), [10, 20, 10, 20]);
        let m: Margin = "1 2 3 4%".parse().unwrap();
        assert_eq!(m.resolve(50, 10), [1, 2, 3, 2]);
        assert_eq!(m.to_string(), "1 2 3 4%");
        assert!("1 2 3".parse::<Margin>().is_err());
        assert!("".parse::<Margin>().is_err());
        // Pixels on every side are a number, as jobs recorded them before percentages.
        assert_eq!(serde_json::to_string(&Margin::px(16)).unwrap(), "16");
        assert_eq!(
            serde_json::from_str::<Margin>("16").unwrap(),
            Margin::px(16)
        );
        let m: Margin = "5%".parse().unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, "\"5%\"");
        assert_eq!(serde_json::from_str::<Margin>(&json).unwrap(), m);
        // Read as stored; the pipeline's checks refuse it (see `Margin::check`).
        let huge = serde_json::from_str::<Margin>("4294967295").unwrap();
        assert!(huge.check().is_err());
        assert!(Margin::px(MAX_TARGET_SIDE).check().is_ok());
    }

    #[test]
    fn regions_resolve_within_the_image() {
        let r: Region = "10% 0 90% 100%".parse().unwrap();
        assert_eq!(r.resolve(200, 50), (20, 0, 180, 50));
        let r: Region = "0 0 5000px 5000px".parse().unwrap();
        assert_eq!(r.resolve(200, 50), (0, 0, 200, 50));
        // Mixed units that cross on this image: empty, not negative.
        let r: Region = "150px 0 50% 100%".parse().unwrap();
        let (x0, _, x1, _) = r.resolve(200, 50);
        assert_eq!(x0, x1);
        assert!("50% 0 10% 100%".parse::<Region>().is_err());
        assert!("0 0 100%".parse::<Region>().is_err());
        let json = serde_json::to_string(&"0 0 50% 100%".parse::<Region>().unwrap()).unwrap();
        assert_eq!(json, "\"0 0 50% 100%\"");
    }
}
