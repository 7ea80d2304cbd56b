//! The `worker remove` and `worker process` command lines on real files, with the real U²-NetP.

use std::process::Command;

fn worker() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker"));
    cmd.env("BACKLESS_MODELS_DIR", crate::models_dir());
    cmd
}

/// `worker remove ARGS -o OUT PHOTO`: its exit code and what it wrote on stderr.
fn remove(args: &[&str], out: &std::path::Path, photo: &std::path::Path) -> (Option<i32>, String) {
    let result = worker()
        .arg("remove")
        .args(args)
        .arg("-o")
        .arg(out)
        .arg(photo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr).to_string();
    (result.status.code(), stderr)
}

#[test]
fn batch_continues_past_bad_files_and_reports_them() {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(input.join("nested")).unwrap();
    std::fs::copy(
        crate::fixture("fixtures/photos/astronaut.png"),
        input.join("nested/astronaut.png"),
    )
    .unwrap();
    std::fs::write(input.join("notes.png"), b"not an image").unwrap();
    let out = dir.path().join("out");
    let result = worker()
        .args(["remove", "--crop", "-o"])
        .arg(&out)
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("notes.png"), "{stderr}");
    assert!(stderr.contains("not an image"), "{stderr}");
    let cut = image::open(out.join("nested/astronaut.png")).unwrap();
    assert!(cut.color().has_alpha());
    // Cropped to the subject: smaller than the photo in at least one direction.
    assert!(cut.width() <= 256 && cut.height() <= 256);
    assert!(cut.width() * cut.height() < 256 * 256);
}

/// The same photo as PNG, lossless WebP, lossy WebP and with alpha matting: one matte shape,
/// colour 0 under every transparent pixel of the lossless files, the lossy file far smaller with
/// the same alpha; `--quality` with PNG is a usage error.
#[test]
fn every_cut_out_format_keeps_the_promise() {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let photo = crate::fixture("fixtures/photos/chelsea.png");
    let run = |args: &[&str], sub: &str| remove(args, &dir.path().join(sub), &photo);
    let file = |sub: &str, name: &str| {
        let path = dir.path().join(sub).join(name);
        (
            std::fs::metadata(&path).unwrap().len(),
            image::open(path).unwrap().to_rgba8(),
        )
    };
    for (args, sub) in [
        (&[][..], "png"),
        (&["--format", "webp"][..], "webp"),
        (&["--format", "webp", "--quality", "70"][..], "lossy"),
        (&["--matting"][..], "matting"),
    ] {
        let (code, stderr) = run(args, sub);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
    let (png_bytes, png) = file("png", "chelsea.png");
    let (_, webp) = file("webp", "chelsea.webp");
    let (lossy_bytes, lossy) = file("lossy", "chelsea.webp");
    let (_, matted) = file("matting", "chelsea.png");
    assert_eq!(png, webp, "lossless WebP holds the PNG's pixels");
    for img in [&png, &matted] {
        let transparent = img.pixels().filter(|p| p.0[3] == 0).count();
        assert!(transparent > 10_000, "{transparent}");
        assert!(img.pixels().all(|p| p.0[3] != 0 || p.0 == [0; 4]));
    }
    assert!(
        png.pixels()
            .zip(lossy.pixels())
            .all(|(a, b)| a.0[3] == b.0[3]),
        "lossy WebP keeps the exact alpha"
    );
    assert!(lossy_bytes * 3 < png_bytes, "{lossy_bytes} vs {png_bytes}");
    // Matting settles the trimap's known regions to exactly 0 and 255 and solves the band
    // between: more of the matte is decided, and it differs from the network's.
    let decided = |img: &image::RgbaImage| img.pixels().filter(|p| p.0[3] % 255 == 0).count();
    assert!(
        decided(&matted) > decided(&png),
        "{} vs {}",
        decided(&matted),
        decided(&png)
    );
    assert!(
        png.pixels()
            .zip(matted.pixels())
            .any(|(a, b)| a.0[3] != b.0[3])
    );
    let (code, stderr) = run(&["--quality", "50"], "bad");
    assert_eq!(code, Some(2), "a usage error: {stderr}");
    assert!(stderr.contains("--quality"), "{stderr}");
}

/// Matting never makes subject of what `roi` excludes: the region is applied after it.
#[test]
fn matting_stays_inside_the_region_of_interest() {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let result = worker()
        .args(["process", "-o"])
        .arg(&out)
        .args(["--op", "remove_background:matting=true,roi=0 0 50% 100%"])
        .arg(crate::fixture("fixtures/photos/chelsea.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let cut = image::open(out.join("chelsea.png")).unwrap().to_rgba8();
    let inside = cut
        .enumerate_pixels()
        .filter(|(x, _, p)| *x < 150 && p.0[3] > 0)
        .count();
    assert!(inside > 1000, "{inside}");
    assert!(
        cut.enumerate_pixels()
            .all(|(x, _, p)| x < 151 || p.0 == [0; 4])
    );
}

#[test]
fn mask_only_and_background_colour_outputs() {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let photo = crate::fixture("fixtures/photos/chelsea.png");
    let run = |args: &[&str], sub: &str| {
        let out = dir.path().join(sub);
        let (code, stderr) = remove(args, &out, &photo);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        out
    };
    let mask = image::open(run(&["--mask-only"], "mask").join("chelsea.png")).unwrap();
    assert_eq!(mask.color(), image::ColorType::L8);
    assert_eq!((mask.width(), mask.height()), (301, 200));
    let jpeg = run(&["--bg-color", "#00ff00", "--format", "jpeg"], "bg").join("chelsea.jpg");
    let bg = image::open(jpeg).unwrap().to_rgb8();
    assert_eq!(bg.dimensions(), (301, 200));
    // A corner is background: painted green.
    let px = bg.get_pixel(0, 0).0;
    assert!(px[1] > 200 && px[0] < 60 && px[2] < 60, "{px:?}");
    // JPEG with transparency is a usage error, refused before any file is read.
    let (code, stderr) = remove(&["--format", "jpeg"], &dir.path().join("bad"), &photo);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("JPEG has no transparency"), "{stderr}");
}

/// A batch with several photos in flight writes exactly what one photo at a time writes, also
/// with a memory budget smaller than one photo (each then runs alone).
#[test]
fn photos_in_flight_write_what_one_at_a_time_writes() {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for (i, name) in ["astronaut.png", "chelsea.png"]
        .iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        std::fs::copy(
            crate::fixture(&format!("fixtures/photos/{name}")),
            input.join(format!("{i}-{name}")),
        )
        .unwrap();
    }
    let run = |flags: &[&str], out: &str| {
        let out = dir.path().join(out);
        let (code, stderr) = remove(flags, &out, &input);
        assert_eq!(code, Some(0), "{stderr}");
        let mut files: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                (
                    path.file_name().unwrap().to_owned(),
                    std::fs::read(&path).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let one = run(&["--jobs", "1"], "one");
    assert_eq!(one.len(), 6);
    assert_eq!(run(&["--jobs", "4"], "four"), one);
    assert_eq!(run(&["--jobs", "3", "--memory-mb", "1"], "tight"), one);
    let (code, stderr) = remove(&["--jobs", "0"], &dir.path().join("bad"), &input);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn process_places_the_subject_on_a_background_image() {
    assert!(crate::weights_present("u2netp"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ops = [
        "remove_background",
        "place:scale=50%,position=0% 100%",
        "backdrop",
        "encode:format=png",
    ];
    let mut cmd = worker();
    cmd.arg("process").arg("-o").arg(&out);
    for op in ops {
        cmd.args(["--op", op]);
    }
    let result = cmd
        .arg("--background")
        .arg(crate::fixture("fixtures/photos/chelsea.png"))
        .arg(crate::fixture("fixtures/photos/astronaut.png"))
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let png = image::open(out.join("astronaut.png")).unwrap();
    assert_eq!(
        png.color(),
        image::ColorType::Rgb8,
        "opaque: the background fills it"
    );
    assert_eq!((png.width(), png.height()), (256, 256));
    // backdrop without a background image is a usage error, before any file is read.
    let mut cmd = worker();
    cmd.arg("process").arg("-o").arg(dir.path().join("none"));
    for op in ops {
        cmd.args(["--op", op]);
    }
    let result = cmd
        .arg(crate::fixture("fixtures/photos/astronaut.png"))
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&result.stderr).contains("--background"));
}

#[test]
fn large_photo_at_full_resolution() {
    assert!(crate::weights_present("u2netp"));
    let seg = crate::load("u2netp");
    // 6000x4000, 24 megapixels: a dark square subject on a light background.
    let img = image::RgbImage::from_fn(6000, 4000, |x, y| {
        if (2000..4000).contains(&x) && (1000..3000).contains(&y) {
            image::Rgb([30, 40, 160])
        } else {
            image::Rgb([235, 235, 225])
        }
    });
    let mask = seg.mask(&image::DynamicImage::ImageRgb8(img)).unwrap();
    assert_eq!(mask.dimensions(), (6000, 4000));
}

#[test]
fn migrate_creates_the_schema_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/jobs.db?mode=rwc", dir.path().display());
    let run = || {
        let out = worker()
            .arg("migrate")
            .env("BACKLESS_DATABASE_URL", &url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run();
    assert!(first.lines().any(|l| l.starts_with("applied ")), "{first}");
    assert!(dir.path().join("jobs.db").is_file());
    assert_eq!(run().trim(), "database is up to date");
}
