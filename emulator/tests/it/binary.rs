//! The binary: the Go emulator's flags, initial queues, and SIGTERM as the one shutdown path.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test]
async fn binary_takes_go_emulator_flags_and_stops_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_backless-emulator"))
        .args(["-host", "127.0.0.1", "-port", &port.to_string()])
        .args([
            "-queue",
            &queue_name("bin-a"),
            "-queue",
            &queue_name("bin-b"),
        ])
        .args(["-openid-issuer", "http://tasks.test:8123"])
        .kill_on_drop(true)
        .spawn()
        .expect("spawn emulator binary");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http
            .get(format!("{base}/v2/{}", queue_name("bin-b")))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("emulator binary did not come up: {other:?}"),
        }
    }
    let list: serde_json::Value = http
        .get(format!("{base}/v2/{PARENT}/queues"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["queues"].as_array().unwrap().len(), 2, "{list}");
    let disco: serde_json::Value = http
        .get(format!("{base}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(disco["issuer"], "http://tasks.test:8123");

    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("emulator exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
