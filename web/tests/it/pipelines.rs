//! Jobs as pipelines of operations: the `op` upload fields, validated before anything is stored.

use crate::helpers::*;

/// Upload a small PNG with these `op` fields (and extra plain fields).
async fn upload_ops(
    app: &TestApp,
    c: &reqwest::Client,
    ops: &[&str],
    extra: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(png_bytes(64, 48)).file_name("shoe.png"),
    );
    for op in ops {
        form = form.text("op", op.to_string());
    }
    for (k, v) in extra {
        form = form.text(k.to_string(), v.to_string());
    }
    let res = c
        .post(app.url("/v1/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn a_pipeline_is_recorded_in_order_with_its_output_format() {
    let app = spawn_app(&[]).await;
    let c = browser();
    let (status, body) = upload_ops(
        &app,
        &c,
        &[
            "remove_background:model=u2netp",
            "crop_to_subject:margin=20",
            "resize:width=800",
            "watermark:text=© Shop, Inc.,opacity=0.4",
            "encode:format=webp",
        ],
        &[],
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let job = &body["job"];
    assert_eq!(
        job["pipeline"],
        serde_json::json!([
            "remove_background:model=u2netp",
            "crop_to_subject:threshold=10,margin=20",
            "resize:width=800,fit=contain",
            "watermark:position=bottom_right,opacity=0.4,text=© Shop, Inc.",
            "encode:format=webp"
        ])
    );
    assert_eq!(job["options"]["format"], "webp");
    assert_eq!(job["options"]["model"], "u2netp");
    assert_eq!(job["download_name"], "shoe-nobg.webp");

    // Without remove_background there is no model, and the result is "edited", not "nobg".
    let (status, body) = upload_ops(
        &app,
        &c,
        &["thumbnail:size=256", "encode:format=jpeg,quality=80"],
        &[],
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let job = &body["job"];
    assert_eq!(
        job["pipeline"],
        serde_json::json!(["thumbnail:size=256", "encode:format=jpeg,quality=80"])
    );
    assert!(job["options"]["model"].is_null(), "{job}");
    assert_eq!(job["download_name"], "shoe-edited.jpg");

    // A plain upload shows the pipeline its options describe.
    let (status, body) = app.upload(&c, png_bytes(8, 8), "cat.png").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["job"]["pipeline"],
        serde_json::json!(["remove_background:model=u2netp", "encode:format=png"])
    );
}

/// The plain fields take a quality: lossy WebP (or a JPEG's quality) without writing operations.
#[tokio::test]
async fn a_quality_makes_the_plain_upload_lossy_webp() {
    let app = spawn_app(&[]).await;
    let c = browser();
    let (status, body) = upload_ops(&app, &c, &[], &[("format", "webp"), ("quality", "75")]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["job"]["pipeline"],
        serde_json::json!([
            "remove_background:model=u2netp",
            "encode:format=webp,quality=75"
        ])
    );
    assert_eq!(body["job"]["options"]["format"], "webp");
    let (status, body) = upload_ops(
        &app,
        &c,
        &[],
        &[("format", "jpeg"), ("quality", "60"), ("crop", "true")],
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["job"]["pipeline"],
        serde_json::json!([
            "remove_background:model=u2netp,bg_color=#ffffff",
            "crop_to_subject:threshold=10,margin=0",
            "encode:format=jpeg,quality=60"
        ])
    );
    let rows = app.job_rows().await;
    for extra in [
        &[("format", "png"), ("quality", "50")][..],
        &[("quality", "50")][..],
        &[("format", "webp"), ("quality", "0")][..],
    ] {
        let (status, body) = upload_ops(&app, &c, &[], extra).await;
        assert_eq!(status, 400, "{extra:?}: {body}");
        assert_eq!(body["code"], "invalid_option", "{extra:?}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("quality"),
            "{body}"
        );
    }
    // With operations, quality belongs in `encode`.
    let (status, body) = upload_ops(&app, &c, &["thumbnail:size=64"], &[("quality", "50")]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(app.job_rows().await, rows);
}

#[tokio::test]
async fn each_kind_of_bad_pipeline_is_a_400_with_its_code_and_nothing_is_stored() {
    let app = spawn_app(&[]).await;
    let c = browser();
    let nine = ["filter:grayscale"; 9];
    // (op fields, plain fields, expected code, a word the message names)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (&["sharpie"], &[], "unknown_operation", "sharpie"),
        (&["resize:width=0"], &[], "bad_parameter", "width"),
        (&["resize:width=12,depth=3"], &[], "bad_parameter", "depth"),
        (&["resize"], &[], "bad_parameter", "width"),
        (&["thumbnail:size=99999"], &[], "bad_parameter", "size"),
        (
            &["watermark:text=hi,opacity=7"],
            &[],
            "bad_parameter",
            "opacity",
        ),
        (&["watermark:opacity=0.5"], &[], "bad_parameter", "text"),
        (&["filter:blur=500"], &[], "bad_parameter", "blur"),
        (&["filter:sepia"], &[], "bad_parameter", "sepia"),
        (&["encode:format=gif"], &[], "bad_parameter", "format"),
        (
            &["encode:format=jpeg,quality=101"],
            &[],
            "bad_parameter",
            "quality",
        ),
        (
            &["remove_background:model=sam2"],
            &[],
            "bad_parameter",
            "model",
        ),
        (&nine, &[], "pipeline_too_long", "at most 8"),
        (
            &["thumbnail:size=64", "remove_background"],
            &[],
            "bad_pipeline_order",
            "first",
        ),
        (
            &["crop_to_subject"],
            &[],
            "bad_pipeline_order",
            "remove_background",
        ),
        (
            &["encode:format=png", "thumbnail:size=64"],
            &[],
            "bad_pipeline_order",
            "last",
        ),
        (
            &["remove_background", "encode:format=jpeg"],
            &[],
            "jpeg_needs_background",
            "JPEG",
        ),
        (
            &["thumbnail:size=64"],
            &[("format", "png")],
            "invalid_option",
            "format",
        ),
        // /v1 takes no background image yet: refused, not failed later by the worker.
        (
            &["remove_background", "backdrop"],
            &[],
            "invalid_option",
            "background image",
        ),
        (
            &["remove_background", "place"],
            &[],
            "bad_parameter",
            "scale",
        ),
    ];
    for (ops, extra, code, mentions) in cases {
        let (status, body) = upload_ops(&app, &c, ops, extra).await;
        assert_eq!(status, 400, "{ops:?}: {body}");
        assert_eq!(body["code"], *code, "{ops:?}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{ops:?}: {message}");
    }
    assert_eq!(app.job_rows().await, 0);
    assert!(app.stored_files().is_empty(), "{:?}", app.stored_files());
}

/// A one-colour PNG: a few hundred bytes whatever its size.
fn flat_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(w, h)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// Upload `file` with these `op` fields.
async fn upload_file_ops(
    app: &TestApp,
    c: &reqwest::Client,
    file: Vec<u8>,
    ops: &[&str],
) -> (u16, serde_json::Value) {
    let mut form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(file).file_name("strip.png"),
    );
    for op in ops {
        form = form.text("op", op.to_string());
    }
    let res = c
        .post(app.url("/v1/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

/// Each operation is valid on its own, but on this image the job would produce (or pass
/// through) an image beyond the limits: refused at upload from the header, nothing stored.
#[tokio::test]
async fn a_pipeline_whose_plan_breaks_a_limit_is_a_422_and_nothing_is_stored() {
    let app = spawn_app(&[]).await;
    let c = browser();
    // (width, height, op fields)
    type Case<'a> = (u32, u32, &'a [&'a str]);
    let cases: &[Case] = &[
        // The crash: a tiny 1x20000 PNG, width 10000 -> a derived height of 200,000,000.
        (1, 20_000, &["resize:width=10000"]),
        (20_000, 1, &["resize:height=10000"]),
        (64, 64, &["resize:width=10000,height=10000,fit=fill"]),
        (64, 64, &["resize:width=10000,height=10000,fit=cover"]),
        (64, 48, &["resize:width=5000", "resize:height=9000"]),
        (
            2,
            1,
            &[
                "resize:width=10000,height=10000,fit=fill",
                "watermark:text=big",
            ],
        ),
    ];
    for (w, h, ops) in cases {
        let png = flat_png(*w, *h);
        let (status, body) = upload_file_ops(&app, &c, png, ops).await;
        assert_eq!(status, 422, "{w}x{h} {ops:?}: {body}");
        assert_eq!(body["code"], "output_too_large", "{ops:?}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("megapixels"),
            "{body}"
        );
    }
    // The crash's file is small (one flat column): the limit is on what the job makes, not
    // on what it gets.
    assert!(flat_png(1, 20_000).len() < 100_000);
    // Over the working-memory budget of a small worker.
    let small = spawn_app(&[("BACKLESS_MAX_WORKING_BYTES", "100000")]).await;
    let (status, body) = upload_file_ops(&small, &c, png_bytes(200, 200), &["filter:blur"]).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "over_memory_budget", "{body}");
    // The margin of a crop is bounded, never wrapped.
    let (status, body) = upload_file_ops(
        &app,
        &c,
        png_bytes(8, 8),
        &[
            "remove_background",
            "crop_to_subject:margin=18446744073709551615",
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "bad_parameter", "{body}");
    assert_eq!(app.job_rows().await, 0);
    assert_eq!(small.job_rows().await, 0);
    assert!(app.stored_files().is_empty(), "{:?}", app.stored_files());
    // Within the limits the same kinds of pipeline are accepted.
    let (status, body) = upload_file_ops(&app, &c, png_bytes(1, 200), &["resize:width=50"]).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_model_the_workers_do_not_load_is_refused_at_upload() {
    // The default deployment loads u2netp only: u2net and isnet are known, not installed.
    let app = spawn_app(&[]).await;
    let c = browser();
    let (status, body) = upload_ops(&app, &c, &[], &[("model", "u2net")]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_option");
    assert!(
        body["message"].as_str().unwrap().contains("not installed"),
        "{body}"
    );
    let (status, body) = upload_ops(&app, &c, &["remove_background:model=isnet"], &[]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_parameter")),
        "{body}"
    );
    assert_eq!(app.job_rows().await, 0);

    // Where the workers load it, it is accepted.
    let app = spawn_app(&[("BACKLESS_MODELS", "u2netp,isnet")]).await;
    let (status, body) = upload_ops(&app, &c, &[], &[("model", "isnet")]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["job"]["options"]["model"], "isnet");
    // Where the default is not loaded, a job without a model gets the first that is.
    let app = spawn_app(&[("BACKLESS_MODELS", "isnet")]).await;
    let (status, body) = upload_ops(&app, &c, &[], &[]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["job"]["options"]["model"], "isnet");
}
