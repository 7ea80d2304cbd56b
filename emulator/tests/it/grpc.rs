//! The gRPC surface through the official Python client (`google-cloud-tasks`), on the same
//! port as REST. CI installs the package; without it this test fails.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn python_client_over_grpc() {
    let emu = start().await;
    let sink = Sink::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_client.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .arg(emu.addr().to_string())
        .arg(format!("http://{}", sink.addr))
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        out.status.success(),
        "python gRPC conformance failed (is google-cloud-tasks installed? `pip install google-cloud-tasks`)\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // RunTask dispatched the named task from the paused queue: check what the target saw.
    let got = sink.wait_for(1, Duration::from_secs(5)).await;
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/py?via=grpc");
    assert_eq!(r.body, br#"{"hello":"grpc"}"#);
    assert_eq!(r.header("x-from"), Some("python"));
    assert_eq!(r.header("x-cloudtasks-queuename"), Some("py-queue"));
    assert_eq!(r.header("x-cloudtasks-taskname"), Some("py-task-1"));
    let token = r
        .header("authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    let claims: serde_json::Value = {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["aud"], format!("http://{}/py?via=grpc", sink.addr));
    assert_eq!(claims["email"], "worker@py-project.iam.gserviceaccount.com");
    emu.shutdown().await;
}
