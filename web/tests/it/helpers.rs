use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backless_common::config::FromSettings;
use backless_common::events::{Events, InProcessEvents, JobEvent, Stage};
use backless_common::storage::Storage;
use backless_common::testing::FaultyStore;
use backless_web::lifecycle::Shared;
use backless_web::{App, Components, WebConfig};
use futures::StreamExt;

pub struct TestApp {
    pub base: String,
    pub shared: Arc<Shared>,
    pub events: Arc<InProcessEvents>,
    pub dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub async fn spawn_app(extra: &[(&str, &str)]) -> TestApp {
    spawn_app_on(extra, None).await
}

/// A [`FaultyStore`] over the app's objects folder, for [`spawn_app_on`].
pub fn faulty_store(dir: &Path) -> Arc<FaultyStore> {
    let objects = dir.join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    Arc::new(FaultyStore::new(Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(&objects).unwrap(),
    )))
}

/// The app, on `store` when given (made by [`faulty_store`] over the app's folder, which is
/// `dir`).
pub async fn spawn_app_on(
    extra: &[(&str, &str)],
    store: Option<(tempfile::TempDir, Arc<FaultyStore>)>,
) -> TestApp {
    let (dir, storage) = match store {
        Some((dir, store)) => (dir, Some(Storage::from_store(store, "faulty://"))),
        None => (tempfile::tempdir().unwrap(), None),
    };
    let db = format!("sqlite://{}/backless.db?mode=rwc", dir.path().display());
    let objects = format!("file://{}/objects", dir.path().display());
    let tasks = format!("http://127.0.0.1:{}", closed_port());
    let mut pairs: Vec<(String, String)> = vec![
        ("BACKLESS_DATABASE_URL".into(), db),
        ("BACKLESS_STORAGE_URL".into(), objects),
        ("BACKLESS_WEB_ADDR".into(), "127.0.0.1:0".into()),
        ("BACKLESS_TASKS_ENDPOINT".into(), tasks),
        ("BACKLESS_SSE_POLL".into(), "200ms".into()),
        ("BACKLESS_SSE_KEEP_ALIVE".into(), "200ms".into()),
        ("BACKLESS_OUTBOX_INTERVAL".into(), "200ms".into()),
    ];
    for (k, v) in extra {
        pairs.retain(|(pk, _)| pk != k);
        pairs.push(((*k).into(), (*v).into()));
    }
    let config = WebConfig::from_pairs(pairs).unwrap();
    let events = Arc::new(InProcessEvents::default());
    let app = App::build_with(
        config,
        Components {
            events: Some(events.clone() as Arc<dyn Events>),
            storage,
            ..Components::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", app.addr());
    let shared = app.shared();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        base,
        shared,
        events,
        dir,
        _stop: tx,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.dir.path().join("objects")
    }

    /// Every stored file.
    pub fn stored_files(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    let path = e.path();
                    if path.is_dir() {
                        walk(&path, out);
                    } else {
                        out.push(path);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.objects_dir(), &mut out);
        out
    }

    pub async fn job_rows(&self) -> u64 {
        self.shared.db.count().await.unwrap()
    }

    /// What a worker does for a successful job.
    pub async fn finish_job(&self, id: &str) {
        let db = &self.shared.db;
        assert!(db.try_claim(id, Duration::from_secs(60)).await.unwrap());
        self.publish(id, JobEvent::new(Stage::Received, 10)).await;
        self.publish(id, JobEvent::new(Stage::Segmenting, 20)).await;
        self.publish(id, JobEvent::new(Stage::Compositing, 30))
            .await;
        let result = png_bytes(8, 8);
        self.shared
            .storage
            .put_result(id, result.into())
            .await
            .unwrap();
        self.publish(id, JobEvent::new(Stage::Stored, 40)).await;
        let key = backless_common::storage::result_key(id);
        assert!(db.mark_done(id, &key, "image/png").await.unwrap());
        self.publish(id, JobEvent::new(Stage::Done, 50)).await;
    }

    pub async fn publish(&self, id: &str, ev: JobEvent) {
        self.events.publish(id, ev).await.unwrap();
    }

    /// Open `client`'s event stream of job `id` at `query` (e.g. `?hold=true`), check that its
    /// first event is `first`, and wait until the server counts it as a watcher.
    pub async fn watch(
        &self,
        client: &reqwest::Client,
        id: &str,
        query: &str,
        first: &str,
    ) -> SseReader {
        let res = client
            .get(self.url(&format!("/v1/jobs/{id}/events{query}")))
            .send()
            .await
            .unwrap();
        let mut sse = SseReader::new(res);
        assert_eq!(sse.next().await.unwrap().event, first);
        assert!(
            eventually(Duration::from_secs(5), || async {
                self.shared.watchers(id) >= 1
            })
            .await,
            "the stream was never registered as a watcher"
        );
        sse
    }

    /// Upload with `client`, returning (status, JSON body).
    pub async fn upload(
        &self,
        client: &reqwest::Client,
        data: Vec<u8>,
        file_name: &str,
    ) -> (u16, serde_json::Value) {
        let part = reqwest::multipart::Part::bytes(data)
            .file_name(file_name.to_string())
            .mime_str("image/png")
            .unwrap();
        let form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("format", "png");
        let res = client
            .post(self.url("/v1/jobs"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// Upload a small PNG and return the job id.
    pub async fn create_job(&self, client: &reqwest::Client) -> String {
        let (status, body) = self.upload(client, png_bytes(64, 48), "cat.png").await;
        assert_eq!(status, 201, "{body}");
        body["job"]["id"].as_str().unwrap().to_string()
    }
}

/// A browser-like client (keeps cookies).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap()
}

pub fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    // Deterministic noise, so the PNG does not compress away.
    let mut seed = 0x2545_f491_4f6c_dd1du64 ^ u64::from(w) << 32 ^ u64::from(h);
    let img = image::RgbaImage::from_fn(w, h, |_, _| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let b = (seed >> 33).to_le_bytes();
        image::Rgba([b[0], b[1], b[2], 255])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A tiny PNG whose header claims `w` x `h` pixels.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(chunk(b"IHDR", &ihdr));
    out.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    out.extend(chunk(b"IEND", &[]));
    out
}

/// One parsed server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub id: String,
    pub data: serde_json::Value,
}

/// Reads server-sent events from a response.
pub struct SseReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl SseReader {
    pub fn new(res: reqwest::Response) -> Self {
        Self {
            stream: res.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next event, `None` when the stream ended. Panics after 10 s.
    pub async fn next(&mut self) -> Option<Sse> {
        tokio::time::timeout(Duration::from_secs(10), self.next_inner())
            .await
            .expect("timed out waiting for an SSE event")
    }

    async fn next_inner(&mut self) -> Option<Sse> {
        loop {
            while let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..pos + 2).collect();
                let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                return Some(Sse {
                    event,
                    id,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
            match self.stream.next().await {
                Some(Ok(b)) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                Some(Err(e)) => panic!("SSE stream error: {e}"),
                None => return None,
            }
        }
    }
}

/// Poll `f` until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
