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
