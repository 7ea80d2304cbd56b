//! The cut-out: the mask applied to the photo (with the subject's colour estimated at soft edges,
//! and nothing of the background kept under alpha 0), the subject's box, and the operations that
//! work from the mask (`place`, `backdrop`).

pub mod foreground;
pub mod matting;

use backless_common::job::Region;
use backless_common::limits::ImageLimits;
use image::{DynamicImage, GrayImage, Rgba, RgbaImage};

use super::options::{Crop, OutputFormat, OutputOptions, Rgb};
use super::{PipelineError, Work, eight_bit};

/// Bounding box `(x, y, w, h)` of mask values above `crop.threshold`, grown by the margin
/// (percentages of the subject's box) and clamped to the image.
pub fn subject_box(mask: &GrayImage, crop: &Crop) -> Option<(u32, u32, u32, u32)> {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in mask.enumerate_pixels() {
        if p.0[0] > crop.threshold {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    if x0 == u32::MAX {
        return None;
    }
    let [top, right, bottom, left] = crop.margin.resolve(x1 - x0 + 1, y1 - y0 + 1);
    let x0 = x0.saturating_sub(left);
    let y0 = y0.saturating_sub(top);
    let x1 = x1.saturating_add(right).min(mask.width() - 1);
    let y1 = y1.saturating_add(bottom).min(mask.height() - 1);
    Some((x0, y0, x1 - x0 + 1, y1 - y0 + 1))
}

/// Build the output image from the photo and its full-resolution mask.
pub fn compose(
    img: DynamicImage,
    mask: &GrayImage,
    opts: &OutputOptions,
) -> Result<DynamicImage, PipelineError> {
    let mut out = if opts.mask_only {
        DynamicImage::ImageLuma8(mask.clone())
    } else {
        if opts.format == OutputFormat::Jpeg && opts.bg_color.is_none() {
            return Err(PipelineError::JpegNeedsBackground);
        }
        let mut rgb = img.into_rgb8();
        // Soft edges get the subject's own colour; where the mask is all-or-nothing there is
        // nothing to estimate.
        if opts.decontaminate && mask.pixels().any(|m| !matches!(m.0[0], 0 | 255)) {
            rgb = foreground::estimate_foreground(&rgb, mask, &foreground::Params::default());
        }
        match opts.bg_color {
            Some(Rgb(bg)) => {
                for (p, m) in rgb.pixels_mut().zip(mask.pixels()) {
                    let a = u32::from(m.0[0]);
                    for (v, b) in p.0.iter_mut().zip(bg) {
                        let mixed = u32::from(*v) * a + u32::from(b) * (255 - a);
                        *v = ((mixed + 127) / 255) as u8;
                    }
                }
                DynamicImage::ImageRgb8(rgb)
            }
            None => {
                // The mask as alpha; where it is 0 the colour is 0 too, so nothing of the
                // removed background survives in the file.
                let mut rgba = RgbaImage::new(rgb.width(), rgb.height());
                for ((o, p), m) in rgba.pixels_mut().zip(rgb.pixels()).zip(mask.pixels()) {
                    o.0 = match m.0[0] {
                        0 => [0; 4],
                        a => [p.0[0], p.0[1], p.0[2], a],
                    };
                }
                DynamicImage::ImageRgba8(rgba)
            }
        }
    };
    if let Some(crop) = &opts.crop
        && let Some((x, y, w, h)) = subject_box(mask, crop)
    {
        out = out.crop_imm(x, y, w, h);
    }
    Ok(out)
}

/// True when some fully transparent pixel still carries a colour.
pub fn carries_hidden_colour(img: &DynamicImage) -> bool {
    match img {
        DynamicImage::ImageLumaA8(b) => b.pixels().any(|p| p.0[1] == 0 && p.0[0] != 0),
        DynamicImage::ImageRgba8(b) => b.pixels().any(|p| p.0[3] == 0 && p.0 != [0; 4]),
        _ => false,
    }
}

/// Set the colour of every fully transparent pixel to 0: an image's hidden colours are whatever
/// was there before (the removed background, an upload's own hidden pixels), and anyone who
/// drops the alpha channel would see them.
pub fn clear_hidden_colour(img: &mut DynamicImage) {
    match img {
        DynamicImage::ImageLumaA8(b) => b
            .pixels_mut()
            .filter(|p| p.0[1] == 0)
            .for_each(|p| p.0 = [0; 2]),
        DynamicImage::ImageRgba8(b) => b
            .pixels_mut()
            .filter(|p| p.0[3] == 0)
            .for_each(|p| p.0 = [0; 4]),
        _ => {}
    }
}

/// Paint `background` (an encoded image, decoded under `limits`) behind the cut-out: scaled to
/// cover it and centred, as remove.bg does unless the sizes already match. The result is opaque
/// RGB.
pub(crate) fn backdrop(
    work: &mut Work,
    background: &[u8],
    limits: &ImageLimits,
) -> Result<(), PipelineError> {
    let (w, h) = (work.img.width(), work.img.height());
    let decoded = super::decode::decode_checked(background, limits, |_| Ok(()))
        .map_err(|e| PipelineError::Background(Box::new(e)))?;
    let bg = super::resize::scale(&eight_bit(decoded), w, h, true)
        .map_err(|e| PipelineError::Background(Box::new(e)))?
        .into_rgb8();
    let fg = std::mem::replace(&mut work.img, DynamicImage::new_luma8(0, 0)).into_rgba8();
    let mut out = bg;
    for (o, f) in out.pixels_mut().zip(fg.pixels()) {
        let a = u32::from(f.0[3]);
        for (v, c) in o.0.iter_mut().zip(f.0) {
            *v = ((u32::from(c) * a + u32::from(*v) * (255 - a) + 127) / 255) as u8;
        }
    }
    work.img = DynamicImage::ImageRgb8(out);
    work.mask = None;
    work.background = [0; 4];
    Ok(())
}

/// Clear the mask outside `roi`: nothing there can be subject.
pub(crate) fn keep_region(mask: &mut GrayImage, roi: &Region) {
    let (x0, y0, x1, y1) = roi.resolve(mask.width(), mask.height());
    for (x, y, p) in mask.enumerate_pixels_mut() {
        if !(x0..x1).contains(&x) || !(y0..y1).contains(&y) {
            p.0[0] = 0;
        }
    }
}

/// `img` with its subject (the box of `mask` above the crop threshold) scaled to fit in
/// `scale` percent of the image (its size kept when not given) and moved to `position`
/// (percentages of the free space; centred when not given), on a canvas of `background`.
pub(crate) fn place(
    img: &DynamicImage,
    mask: &GrayImage,
    background: [u8; 4],
    scale: Option<f32>,
    position: Option<[f32; 2]>,
) -> Result<DynamicImage, PipelineError> {
    let Some((bx, by, bw, bh)) = subject_box(mask, &Crop::default()) else {
        return Ok(img.clone());
    };
    let (w, h) = (img.width(), img.height());
    let (nw, nh) = match scale {
        None => (bw, bh),
        Some(s) => {
            let s = f64::from(s) / 100.0;
            let f = (s * f64::from(w) / f64::from(bw)).min(s * f64::from(h) / f64::from(bh));
            // At most the image's sides: the subject's box times the smaller of the two ratios.
            let side = |v: u32, max: u32| ((f64::from(v) * f).round() as u32).clamp(1, max);
            (side(bw, w), side(bh, h))
        }
    };
    // Without a position the operation has a scale (the pipeline checks it has one of them),
    // and a scaled subject is centred.
    let [px, py] = position.unwrap_or([50.0, 50.0]);
    let at = |free: u32, p: f32| (f64::from(free) * f64::from(p) / 100.0).round() as i64;
    let (x, y) = (at(w - nw, px), at(h - nh, py));
    let subject = super::resize::scale(&img.crop_imm(bx, by, bw, bh), nw, nh, false)?;
    let mut canvas = match img {
        DynamicImage::ImageLuma8(_) => {
            DynamicImage::ImageLuma8(GrayImage::from_pixel(w, h, image::Luma([background[0]])))
        }
        DynamicImage::ImageRgb8(_) => DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            w,
            h,
            image::Rgb([background[0], background[1], background[2]]),
        )),
        _ => DynamicImage::ImageRgba8(RgbaImage::from_pixel(w, h, Rgba(background))),
    };
    image::imageops::replace(&mut canvas, &subject, x, y);
    Ok(canvas)
}

#[cfg(test)]
mod tests {
    use backless_common::job::Margin;
    use image::RgbImage;

    use super::*;

    #[test]
    fn subject_box_with_margin() {
        let mut m = GrayImage::new(20, 10);
        m.put_pixel(5, 3, image::Luma([200]));
        m.put_pixel(8, 6, image::Luma([255]));
        m.put_pixel(19, 9, image::Luma([5])); // haze below the threshold
        let c = Crop {
            threshold: 10,
            margin: Margin::px(2),
        };
        assert_eq!(subject_box(&m, &c), Some((3, 1, 8, 8)));
        assert_eq!(subject_box(&GrayImage::new(4, 4), &c), None);
        // A margin past any image is clamped, never wrapped.
        let wide = Crop {
            threshold: 10,
            margin: "10000".parse().unwrap(),
        };
        assert_eq!(subject_box(&m, &wide), Some((0, 0, 20, 10)));
        // Percentages of the subject (4 wide, 4 high): 50% is 2 on every side; top and bottom
        // of its height, left and right of its width.
        let half = Crop {
            threshold: 10,
            margin: "50% 25%".parse().unwrap(),
        };
        assert_eq!(subject_box(&m, &half), Some((4, 1, 6, 8)));
    }

    #[test]
    fn nothing_of_the_background_survives_under_alpha_0() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 2, image::Rgb([200, 100, 50])));
        let mut mask = GrayImage::new(4, 2);
        mask.put_pixel(1, 0, image::Luma([255]));
        mask.put_pixel(2, 0, image::Luma([128]));
        let out = compose(img, &mask, &OutputOptions::default()).unwrap();
        let px = out.to_rgba8();
        assert_eq!(px.get_pixel(0, 0).0, [0, 0, 0, 0]);
        assert_eq!(px.get_pixel(1, 0).0, [200, 100, 50, 255]);
        assert_eq!(px.get_pixel(2, 0).0[3], 128);
    }

    #[test]
    fn jpeg_without_background_is_refused() {
        let img = DynamicImage::ImageRgb8(RgbImage::new(4, 4));
        let mask = GrayImage::new(4, 4);
        let opts = OutputOptions {
            format: OutputFormat::Jpeg,
            ..Default::default()
        };
        assert!(matches!(
            compose(img, &mask, &opts),
            Err(PipelineError::JpegNeedsBackground)
        ));
    }
}
