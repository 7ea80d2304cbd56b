//! Shared test fixtures: an emulator on port 0, the official Rust client pointed at it, and
//! a sink HTTP server that records what Cloud Tasks dispatches and answers as scripted.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use backless_emulator::{Emulator, EmulatorConfig, EmulatorHandle, OidcKey};
use google_cloud_tasks_v2::client::CloudTasks;
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub const PARENT: &str = "projects/test-project/locations/us-central1";

pub fn queue_name(id: &str) -> String {
    format!("{PARENT}/queues/{id}")
}

/// One RSA key for every emulator of the test binary (generating one takes a while).
pub fn key() -> OidcKey {
    static KEY: OnceLock<OidcKey> = OnceLock::new();
    KEY.get_or_init(|| OidcKey::generate().expect("key"))
        .clone()
}

pub async fn start_with(f: impl FnOnce(&mut EmulatorConfig)) -> EmulatorHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = EmulatorConfig {
        key: Some(key()),
        ..EmulatorConfig::default()
    };
    f(&mut config);
    Emulator::start(listener, config)
        .await
        .expect("start emulator")
}

pub async fn start() -> EmulatorHandle {
    start_with(|_| {}).await
}

pub async fn client(emulator: &EmulatorHandle) -> CloudTasks {
    CloudTasks::builder()
        .with_endpoint(emulator.url())
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .build()
        .await
        .expect("client")
}

/// A request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub uri: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// How the sink answers the next request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    RetryAfter(u16, u64),
    /// Waits, then answers 200.
    Hang(Duration),
}

#[derive(Default)]
struct SinkState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    default_delay: Mutex<Duration>,
    arrived: Notify,
    concurrent: AtomicUsize,
    max_concurrent: AtomicUsize,
}

/// The push target of the tests.
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<SinkState>,
}

impl Sink {
    pub async fn start() -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").await.expect("bind sink")).await
    }

    pub async fn on(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(SinkState::default());
        let s = Arc::clone(&state);
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let s = Arc::clone(&s);
                async move { handle(s, method, uri, headers, body).await }
            },
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Every request without a scripted reply waits this long before its 200.
    pub fn set_delay(&self, d: Duration) {
        *self.state.default_delay.lock().unwrap() = d;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn max_concurrent(&self) -> usize {
        self.state.max_concurrent.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests arrived (panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = self.state.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "sink got {} requests, wanted {n}: {got:#?}",
                got.len()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), arrived).await;
        }
    }
}

async fn handle(
    s: Arc<SinkState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = s.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_concurrent.fetch_max(now, Ordering::SeqCst);
    s.received.lock().unwrap().push(Received {
        method,
        uri: uri.to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
    });
    s.arrived.notify_waiters();
    let reply = s.script.lock().unwrap().pop_front();
    let delay = *s.default_delay.lock().unwrap();
    let resp = match reply {
        Some(Reply::Status(code)) => StatusCode::from_u16(code).unwrap().into_response(),
        Some(Reply::RetryAfter(code, secs)) => {
            let mut r = StatusCode::from_u16(code).unwrap().into_response();
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
            r
        }
        Some(Reply::Hang(d)) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
        None => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            StatusCode::OK.into_response()
        }
    };
    s.concurrent.fetch_sub(1, Ordering::SeqCst);
    resp
}

pub fn wkt_duration(d: Duration) -> google_cloud_wkt::Duration {
    google_cloud_wkt::Duration::try_from(d).expect("duration")
}
