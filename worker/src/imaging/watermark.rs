//! `watermark`: text drawn over the image.

use backless_common::job::Position;
use image::{DynamicImage, Rgba, RgbaImage};

/// The watermark's typeface: DejaVu Sans Bold (free licence, see assets/fonts/LICENSE-DejaVu.txt).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf");

/// Draw `text` near the `position` corner: white glyphs over a soft dark shadow, so it reads on
/// light and dark photos alike. Its height is 5% of the shorter side (at least 12 px), reduced
/// until it fits within 90% of the width.
pub(crate) fn watermark(img: &mut DynamicImage, text: &str, position: Position, opacity: f32) {
    use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};

    let font = FontRef::try_from_slice(FONT).expect("the embedded font parses");
    let (iw, ih) = (img.width() as f32, img.height() as f32);
    let mut px = (iw.min(ih) * 0.05).max(12.0);
    let layout = |px: f32| {
        let scaled = font.as_scaled(PxScale::from(px));
        let mut caret = 0.0f32;
        let mut glyphs = Vec::new();
        let mut prev = None;
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(p) = prev {
                caret += scaled.kern(p, id);
            }
            glyphs.push(id.with_scale_and_position(px, point(caret, scaled.ascent())));
            caret += scaled.h_advance(id);
            prev = Some(id);
        }
        (glyphs, caret, scaled.ascent() - scaled.descent())
    };
    let (mut glyphs, mut width, mut height) = layout(px);
    if width > iw * 0.9 && width > 0.0 {
        px = (px * iw * 0.9 / width).max(4.0);
        (glyphs, width, height) = layout(px);
    }
    let margin = (px * 0.5).round();
    let x0 = match position {
        Position::TopLeft | Position::BottomLeft => margin,
        Position::TopRight | Position::BottomRight => iw - margin - width,
        Position::Center => (iw - width) / 2.0,
    };
    let y0 = match position {
        Position::TopLeft | Position::TopRight => margin,
        Position::BottomLeft | Position::BottomRight => ih - margin - height,
        Position::Center => (ih - height) / 2.0,
    };
    let shadow = (px / 16.0).max(1.0);

    // Coverage of the text (and of its shadow), accumulated over all glyphs, kept for the box
    // they cover only: the working memory follows the text, not the canvas.
    let outlined: Vec<_> = glyphs
        .into_iter()
        .filter_map(|g| font.outline_glyph(g))
        .collect();
    let (w, h) = (img.width(), img.height());
    let (mut bx0, mut by0, mut bx1, mut by1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for o in &outlined {
        let b = o.px_bounds();
        bx0 = bx0.min(x0 + b.min.x);
        by0 = by0.min(y0 + b.min.y);
        bx1 = bx1.max(x0 + b.max.x + shadow);
        by1 = by1.max(y0 + b.max.y + shadow);
    }
    let clamp = |v: f32, max: u32| v.clamp(0.0, max as f32) as u32;
    let (bx0, by0) = (clamp(bx0.floor() - 1.0, w), clamp(by0.floor() - 1.0, h));
    let (bx1, by1) = (clamp(bx1.ceil() + 1.0, w), clamp(by1.ceil() + 1.0, h));
    if bx1 <= bx0 || by1 <= by0 {
        return;
    }
    let (bw, bh) = ((bx1 - bx0) as usize, (by1 - by0) as usize);
    let mut text_cov = vec![0f32; bw * bh];
    let mut shadow_cov = vec![0f32; bw * bh];
    for outlined in &outlined {
        let b = outlined.px_bounds();
        outlined.draw(|gx, gy, c| {
            for (cov, dx) in [(&mut text_cov, 0.0), (&mut shadow_cov, shadow)] {
                let x = (x0 + b.min.x + gx as f32 + dx).round();
                let y = (y0 + b.min.y + gy as f32 + dx).round();
                if x >= bx0 as f32 && y >= by0 as f32 && x < bx1 as f32 && y < by1 as f32 {
                    let i = (y as u32 - by0) as usize * bw + (x as u32 - bx0) as usize;
                    cov[i] = (cov[i] + c).min(1.0);
                }
            }
        });
    }
    let mut rgba: RgbaImage = img.to_rgba8();
    for (row, y) in (by0..by1).enumerate() {
        for (col, x) in (bx0..bx1).enumerate() {
            let i = row * bw + col;
            let (t, s) = (text_cov[i], shadow_cov[i]);
            let p = rgba.get_pixel_mut(x, y);
            if s > 0.0 {
                over(p, [0, 0, 0], s * opacity * 0.6);
            }
            if t > 0.0 {
                over(p, [255, 255, 255], t * opacity);
            }
        }
    }
    *img = match img {
        DynamicImage::ImageRgba8(_) | DynamicImage::ImageLumaA8(_) => {
            DynamicImage::ImageRgba8(rgba)
        }
        DynamicImage::ImageLuma8(_) => {
            DynamicImage::ImageLuma8(DynamicImage::ImageRgba8(rgba).to_luma8())
        }
        _ => DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(rgba).to_rgb8()),
    };
}

/// Porter-Duff "over": `colour` at coverage `a` onto `p` (which may be transparent).
fn over(p: &mut Rgba<u8>, colour: [u8; 3], a: f32) {
    let da = f32::from(p.0[3]) / 255.0;
    let out_a = a + da * (1.0 - a);
    if out_a <= 0.0 {
        return;
    }
    for (v, &c) in p.0[..3].iter_mut().zip(&colour) {
        let mixed = (f32::from(c) * a + f32::from(*v) * da * (1.0 - a)) / out_a;
        *v = mixed.round().clamp(0.0, 255.0) as u8;
    }
    p.0[3] = (out_a * 255.0).round() as u8;
}
