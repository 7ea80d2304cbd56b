//! Large transfers with bounded memory: the `web` binary as its own process (so its memory is
//! its own to measure), a 25 MiB upload, and 30 clients downloading it slowly at once.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `/proc/<pid>/status` field, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// GET `path` over a raw connection and read the body slowly for `slow`, then at full speed;
/// returns (status line, declared length, bytes read).
async fn slow_download(
    addr: String,
    path: String,
    token: String,
    slow: Duration,
) -> (String, u64, u64) {
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "headers cut short");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.lines().next().unwrap().to_string();
    let length: u64 = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut buf = vec![0u8; 16 * 1024];
    let mut read = 0u64;
    let until = Instant::now() + slow;
    while Instant::now() < until {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        read += n as u64;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    (status, length, read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_slow_downloads_of_a_25_mib_upload_stay_under_256_mib() {
    let dir = tempfile::tempdir().unwrap();
    let port = backless_common::testing::free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_web"))
        .env_clear()
        .env("RUST_LOG", "warn")
        .env(
            "BACKLESS_DATABASE_URL",
            format!("sqlite://{}/backless.db?mode=rwc", dir.path().display()),
        )
        .env(
            "BACKLESS_STORAGE_URL",
            format!("file://{}/objects", dir.path().display()),
        )
        .env("BACKLESS_WEB_ADDR", &addr)
        .env(
            "BACKLESS_TASKS_ENDPOINT",
            format!("http://127.0.0.1:{}", closed_port()),
        )
        .env("BACKLESS_OUTBOX_INTERVAL", "1h")
        .env("TMPDIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("web starts");
    let web = Killed(child);
    let pid = web.0.id();
    let base = format!("http://{addr}");
    let c = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "web did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Noise does not compress: just under the 25 MiB upload limit.
    let photo = png_bytes(2550, 2550);
    assert!(
        photo.len() > 23 * 1024 * 1024 && photo.len() <= 25 * 1024 * 1024,
        "{} bytes",
        photo.len()
    );
    let size = photo.len() as u64;
    let part = reqwest::multipart::Part::bytes(photo)
        .file_name("big.png")
        .mime_str("image/png")
        .unwrap();
    let res = c
        .post(format!("{base}/v1/jobs"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let created: serde_json::Value = res.json().await.unwrap();
    let id = created["job"]["id"].as_str().unwrap().to_string();
    let token = created["token"].as_str().unwrap().to_string();
    let after_upload = status_kib(pid, "VmHWM:");

    let path = format!("/v1/jobs/{id}/original");
    let downloads: Vec<_> = (0..30)
        .map(|_| {
            tokio::spawn(slow_download(
                addr.clone(),
                path.clone(),
                token.clone(),
                Duration::from_secs(4),
            ))
        })
        .collect();
    for d in downloads {
        let (status, length, read) = d.await.unwrap();
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(length, size, "Content-Length is the object's");
        assert_eq!(read, size, "every byte arrived");
    }
    let peak = status_kib(pid, "VmHWM:");
    eprintln!(
        "web peak RSS: {} MiB after the upload, {} MiB after 30 downloads of {} MiB",
        after_upload / 1024,
        peak / 1024,
        size / (1024 * 1024)
    );
    assert!(
        peak < 256 * 1024,
        "web's peak RSS was {} MiB serving 30 downloads of a {} MiB file",
        peak / 1024,
        size / (1024 * 1024)
    );
}

#[tokio::test]
async fn transfers_beyond_the_process_cap_get_503_with_retry_after() {
    let app = spawn_app(&[("BACKLESS_MAX_TRANSFERS", "1")]).await;
    let c = reqwest::Client::new();
    let (status, created) = app.upload(&c, png_bytes(1500, 1500), "big.png").await;
    assert_eq!(status, 201, "{created}");
    let id = created["job"]["id"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();
    let url = app.url(&format!("/v1/jobs/{id}/original"));

    // A 9 MB download nobody reads holds the only transfer slot.
    let held = c.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(held.status(), 200);
    let busy = c.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers()["retry-after"], "5");
    let body: serde_json::Value = busy.json().await.unwrap();
    assert_eq!(body["code"], "busy");
    // Reading other things is not a transfer.
    let job = c
        .get(app.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 200);

    // Once the first download is done, the slot is free again.
    let bytes = held.bytes().await.unwrap();
    assert!(bytes.len() > 8_000_000);
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.get(&url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                == 200
        })
        .await
    );
}
