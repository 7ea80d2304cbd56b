//! Parity with onnxruntime on the original ONNX files. Fixtures come from
//! `worker/tests/golden/make_golden.py` (its docstring has the exact command).

use backless_worker::model::Segmenter;
use backless_worker::model::io::{model_pixels, normalise};
use image::{GrayImage, ImageBuffer, Luma};

const PHOTOS: [&str; 2] = ["astronaut", "chelsea"];

fn golden(model: &str, photo: &str, kind: &str) -> image::DynamicImage {
    image::open(crate::fixture(&format!(
        "golden/{model}/{photo}.{kind}.png"
    )))
    .unwrap_or_else(|e| panic!("golden fixture {model}/{photo}.{kind}.png: {e}"))
}

fn photo(name: &str) -> image::DynamicImage {
    image::open(crate::fixture(&format!("fixtures/photos/{name}.png"))).unwrap()
}

fn iou(a: &[f32], b: &[f32]) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x > 0.5, *y > 0.5);
        inter += usize::from(x && y);
        union += usize::from(x || y);
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Pre-processing reproduces the reference tool's resize exactly.
fn check_input(seg: &Segmenter, model: &str) {
    for name in PHOTOS {
        let ours = model_pixels(&photo(name), &seg.info);
        let theirs = golden(model, name, "input").to_rgb8();
        let differing = ours
            .as_raw()
            .iter()
            .zip(theirs.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "{model}/{name}: resized input differs from Pillow's"
        );
    }
}

/// The network on the reference input matches onnxruntime's output.
fn check_output(seg: &Segmenter, model: &str) {
    for name in PHOTOS {
        let input = normalise(&golden(model, name, "input").to_rgb8(), &seg.info).unwrap();
        let ours = seg
            .forward(&input)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let theirs: Vec<f32> = golden(model, name, "output")
            .to_luma16()
            .as_raw()
            .iter()
            .map(|&v| f32::from(v) / 65535.0)
            .collect();
        assert_eq!(ours.len(), theirs.len());
        let max_diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let iou = iou(&ours, &theirs);
        eprintln!(
            "{model}/{name}: max |candle - onnxruntime| = {max_diff:.2e}, IoU@0.5 = {iou:.5}"
        );
        assert!(max_diff <= 1e-3, "{model}/{name}: max abs diff {max_diff}");
        assert!(iou >= 0.999, "{model}/{name}: IoU {iou}");
    }
}

/// The full-resolution mask matches the reference post-processing of the reference output.
fn check_mask(seg: &Segmenter, model: &str) {
    for name in PHOTOS {
        let ours: GrayImage = seg.mask(&photo(name)).unwrap();
        let theirs: ImageBuffer<Luma<u8>, Vec<u8>> = golden(model, name, "mask").to_luma8();
        assert_eq!(ours.dimensions(), theirs.dimensions());
        let diffs: Vec<i32> = ours
            .as_raw()
            .iter()
            .zip(theirs.as_raw())
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .collect();
        let max = diffs.iter().copied().max().unwrap();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        eprintln!("{model}/{name}: full-size mask vs reference: max diff {max}, mean {mean:.4}");
        // An output within 1e-3 can flip u8 truncation at a boundary, and the Lanczos upscale
        // spreads that one step over a few pixels.
        assert!(max <= 3, "{model}/{name}: mask differs by {max}");
        assert!(mean <= 0.1, "{model}/{name}: mean mask difference {mean}");
    }
}

fn check_model(model: &str) {
    if !crate::weights_present(model) {
        return;
    }
    let seg = crate::load(model);
    check_input(&seg, model);
    check_output(&seg, model);
    check_mask(&seg, model);
}

#[test]
fn u2netp_matches_onnxruntime() {
    check_model("u2netp");
}

#[test]
fn u2net_matches_onnxruntime() {
    check_model("u2net");
}

#[test]
fn isnet_matches_onnxruntime() {
    check_model("isnet");
}

/// Foreground colours match pymatting's `estimate_foreground_ml` on the same photo and alpha
/// (fixtures from `worker/tests/golden/make_foreground.py`), where they matter: the pixels the
/// mask leaves partly transparent. Where alpha is a few levels above 0 the foreground is barely
/// determined by the photo (and barely visible), so the colour is compared where alpha is at
/// least 0.05, and what a viewer sees (the difference times alpha) everywhere.
#[test]
fn foreground_matches_pymatting() {
    use backless_worker::imaging::cutout::foreground::{Params, estimate_foreground};
    for name in PHOTOS {
        let image = photo(name).to_rgb8();
        let alpha = golden("u2netp", name, "mask").to_luma8();
        let theirs = image::open(crate::fixture(&format!("golden/foreground/{name}.fg.png")))
            .unwrap()
            .to_rgb8();
        let ours = estimate_foreground(&image, &alpha, &Params::default());
        let (mut diffs, mut visible_max, mut soft) = (Vec::new(), 0f64, 0usize);
        for ((o, t), a) in ours.pixels().zip(theirs.pixels()).zip(alpha.pixels()) {
            if matches!(a.0[0], 0 | 255) {
                continue;
            }
            soft += 1;
            let a = f64::from(a.0[0]) / 255.0;
            for c in 0..3 {
                let d = (f64::from(o.0[c]) - f64::from(t.0[c])).abs();
                visible_max = visible_max.max(d * a);
                if a >= 0.05 {
                    diffs.push(d);
                }
            }
        }
        assert!(soft > 1000, "{name}: only {soft} soft-edge pixels");
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        diffs.sort_by(f64::total_cmp);
        let p99 = diffs[diffs.len() * 99 / 100];
        let max = diffs[diffs.len() - 1];
        eprintln!(
            "{name}: foreground vs pymatting over {soft} soft-edge pixels: colour where alpha >= 0.05 mean {mean:.3}, p99 {p99:.1}, max {max:.0}; colour x alpha max {visible_max:.2} (8-bit levels)"
        );
        assert!(mean <= 0.1, "{name}: mean difference {mean:.3} levels");
        assert!(
            p99 <= 1.0,
            "{name}: 99th percentile difference {p99:.1} levels"
        );
        assert!(max <= 2.0, "{name}: a difference of {max:.0} levels");
        assert!(
            visible_max <= 2.0,
            "{name}: a visible difference of {visible_max:.2} levels"
        );
    }
}

/// Closed-form matting against pymatting's `estimate_alpha_cf` on the same photo and trimap
/// (fixtures from `worker/tests/golden/make_matting.py`, which builds the trimap as rembg does):
/// our trimap from the same U²-NetP mask is the same pixel for pixel, and our alpha agrees over
/// the unknown band. Ours stops at a relative residual of 1e-6 (pymatting's at 1e-7, with an
/// incomplete-Cholesky preconditioner where ours is Jacobi), so the two are compared in 8-bit
/// levels.
#[test]
fn matting_matches_pymatting() {
    use backless_worker::imaging::cutout::matting::{Params, UNKNOWN, solve, trimap};
    for name in PHOTOS {
        let image = photo(name).to_rgb8();
        let mask = golden("u2netp", name, "mask").to_luma8();
        let load = |kind: &str| {
            image::open(crate::fixture(&format!("golden/matting/{name}.{kind}.png")))
                .unwrap()
                .to_luma8()
        };
        let (their_trimap, theirs) = (load("trimap"), load("alpha"));
        let params = Params {
            tolerance: 1e-6,
            max_iterations: 5000,
            ..Params::default()
        };
        let ours_trimap = trimap(&mask, &params);
        assert!(ours_trimap == their_trimap, "{name}: the trimaps differ");
        let (alpha, report) = solve(&image, &ours_trimap, Some(&mask), &params);
        assert!(report.residual <= 1e-6, "{name}: {report:?}");
        let mut diffs: Vec<f64> = Vec::new();
        for ((a, t), tri) in alpha.iter().zip(theirs.pixels()).zip(ours_trimap.pixels()) {
            let ours = f64::from(*a) * 255.0;
            let d = (ours - f64::from(t.0[0])).abs();
            if tri.0[0] == UNKNOWN {
                diffs.push(d);
            } else {
                assert!(d < 0.5, "{name}: a known pixel moved");
            }
        }
        assert!(
            diffs.len() > 5000,
            "{name}: only {} unknown pixels",
            diffs.len()
        );
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        diffs.sort_by(f64::total_cmp);
        let p99 = diffs[diffs.len() * 99 / 100];
        let max = diffs[diffs.len() - 1];
        eprintln!(
            "{name}: alpha vs pymatting over {} unknown pixels ({} iterations): mean {mean:.3}, p99 {p99:.2}, max {max:.2} (8-bit levels)",
            diffs.len(),
            report.iterations
        );
        assert!(mean <= 0.3, "{name}: mean difference {mean:.3} levels");
        assert!(
            p99 <= 0.75,
            "{name}: 99th percentile difference {p99:.2} levels"
        );
        assert!(max <= 1.5, "{name}: a difference of {max:.2} levels");
    }
}

/// The encoders' size and time trade-off (not a check: `docs/benchmarks.md` records its output).
/// `BACKLESS_BENCH_CUTOUT=path.png` times a cut-out of yours; without it, a 12 MP cut-out made
/// from the chelsea photo and its golden mask.
///
///     cargo test -p backless-worker --test it encoder_tradeoffs -- --ignored --nocapture
#[test]
#[ignore]
fn encoder_tradeoffs() {
    use backless_worker::imaging::encode::{png, webp};
    use image::imageops::FilterType;
    use std::time::Instant;
    let cut = match std::env::var("BACKLESS_BENCH_CUTOUT") {
        Ok(path) => image::open(path).unwrap(),
        Err(_) => {
            let photo = photo("chelsea").resize_exact(4000, 3000, FilterType::Lanczos3);
            let mask =
                image::DynamicImage::ImageLuma8(golden("u2netp", "chelsea", "mask").to_luma8())
                    .resize_exact(4000, 3000, FilterType::Triangle)
                    .to_luma8();
            let mut rgba = photo.to_rgba8();
            for (p, m) in rgba.pixels_mut().zip(mask.pixels()) {
                p.0 = if m.0[0] == 0 {
                    [0; 4]
                } else {
                    [p.0[0], p.0[1], p.0[2], m.0[0]]
                };
            }
            image::DynamicImage::ImageRgba8(rgba)
        }
    };
    let time = |f: &dyn Fn() -> Vec<u8>| {
        let t = Instant::now();
        let bytes = f();
        (bytes.len(), t.elapsed().as_secs_f64() * 1e3)
    };
    println!("| encoder | bytes | ms |\n|---|---:|---:|");
    let (n, ms) = time(&|| {
        let mut out = std::io::Cursor::new(Vec::new());
        cut.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    });
    println!("| `image` crate PNG (before) | {n} | {ms:.0} |");
    for level in 1..=9 {
        let (n, ms) = time(&|| png::encode(&cut, level).unwrap());
        println!("| PNG level {level} | {n} | {ms:.0} |");
    }
    let (n, ms) = time(&|| {
        let mut out = std::io::Cursor::new(Vec::new());
        cut.write_to(&mut out, image::ImageFormat::WebP).unwrap();
        out.into_inner()
    });
    println!("| `image` crate WebP lossless (before) | {n} | {ms:.0} |");
    for (method, q) in [(0, 0.0), (0, 25.0), (1, 25.0), (2, 50.0), (4, 75.0)] {
        let effort = webp::Effort {
            method,
            lossless_quality: q,
        };
        let (n, ms) = time(&|| webp::encode_with(&cut, webp::Mode::Lossless, effort).unwrap());
        println!("| WebP lossless, method {method}, effort {q} | {n} | {ms:.0} |");
    }
    for quality in [50, 80, 90] {
        for method in [2, 4] {
            let mode = webp::Mode::Lossy { quality };
            let effort = webp::Effort {
                method,
                lossless_quality: 0.0,
            };
            let (n, ms) = time(&|| webp::encode_with(&cut, mode, effort).unwrap());
            println!("| WebP lossy q{quality}, method {method} | {n} | {ms:.0} |");
        }
    }
}
