use crate::helpers::*;

fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
}

async fn scrape(app: &TestApp) -> String {
    let res = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    res.text().await.unwrap()
}

#[tokio::test]
async fn metrics_follow_jobs_streams_and_deletions() {
    let app = spawn_app(&[]).await;
    let alice = browser();
    let first = app.create_job(&alice).await;
    let _second = app.create_job(&alice).await;
    app.finish_job(&first).await;

    let m = scrape(&app).await;
    assert_eq!(
        sample(&m, "backless_web_jobs_created_total "),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "backless_jobs{state=\"done\"} "),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "backless_jobs{state=\"queued\"} "),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "backless_web_sse_connections "),
        Some(0.0),
        "{m}"
    );

    // An open progress stream is counted while it lasts.
    let stream = alice
        .get(app.url(&format!("/v1/jobs/{_second}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let m = scrape(&app).await;
    assert_eq!(
        sample(&m, "backless_web_sse_connections "),
        Some(1.0),
        "{m}"
    );
    drop(stream);

    let res = alice
        .delete(app.url(&format!("/v1/jobs/{first}")))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let m = scrape(&app).await;
    assert_eq!(
        sample(&m, "backless_web_deletions_total{reason=\"api\"} "),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "backless_jobs{state=\"done\"} "),
        Some(0.0),
        "{m}"
    );
}
