//! The HTTP server that web and the worker run their poem routes on.
//!
//! poem's own `Server` gives hyper no timer, so a client that sends its request head one byte at
//! a time, or trickles a body, holds a connection (and, for an upload, a handler) for as long as
//! it likes. This server is hyper's, with the two bounds Apache's `mod_reqtimeout` applies:
//!
//! - the request head must arrive within [`HttpLimits::header_timeout`], or the connection is
//!   closed;
//! - a body gets [`HttpLimits::body_timeout`] from the moment the handler starts reading it, plus
//!   one second for every [`HttpLimits::body_min_rate`] bytes received. A body that falls behind
//!   is cut off and the client gets `408 request_timeout`, whatever the handler made of the
//!   broken body.
//!
//! At shutdown it stops accepting, lets open requests finish for the drain period, then closes
//! what is left.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use poem::http::header;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Body, Endpoint, Request, Response};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

/// Bounds on how slowly a client may send a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time to send the whole request head (also closes keep-alive connections idle that long).
    pub header_timeout: Duration,
    /// Time to send a body, before the allowance its size earns.
    pub body_timeout: Duration,
    /// Bytes per second a body must keep up on average; 0 turns the body deadline off.
    pub body_min_rate: u64,
    /// Connections open at once; further clients wait in the kernel's accept queue until one
    /// closes (`BACKLESS_MAX_CONNECTIONS`).
    pub max_connections: u32,
}

impl Default for HttpLimits {
    /// `mod_reqtimeout`'s defaults for bodies; a shorter head allowance than its 40 s.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(20),
            body_min_rate: 500,
            max_connections: 20_000,
        }
    }
}

/// A bound listener, not yet serving.
pub struct Listener {
    inner: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl Listener {
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let inner = tokio::net::TcpListener::bind(addr).await?;
        let addr = inner.local_addr()?;
        Ok(Self { inner, addr })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve `ep` until `shutdown` resolves, then drain for at most `drain`.
    pub async fn serve<E>(
        self,
        ep: E,
        limits: HttpLimits,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) -> io::Result<()>
    where
        E: Endpoint + 'static,
    {
        let ep = Arc::new(ep);
        let local = LocalAddr(Addr::SocketAddr(self.addr));
        let graceful = GracefulShutdown::new();
        let mut conns = JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(limits.max_connections).unwrap_or(usize::MAX),
        ));
        tokio::pin!(shutdown);
        loop {
            // At the cap, stop accepting: new clients queue in the kernel until one leaves.
            let slot = tokio::select! {
                _ = &mut shutdown => break,
                slot = Arc::clone(&slots).acquire_owned() => slot,
            };
            let Ok(slot) = slot else { break };
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = self.inner.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let service = service(Arc::clone(&ep), local.clone(), peer, limits);
                    let watcher = graceful.watcher();
                    conns.spawn(async move {
                        let _slot = slot;
                        // Until hyper knows the protocol it has no timer running: a client that
                        // connects and sends nothing (or a few bytes) is closed here.
                        if !protocol_known(&stream, limits.header_timeout).await {
                            tracing::debug!(%peer, "nothing recognisable sent in time; closing");
                            return;
                        }
                        let mut builder = auto::Builder::new(TokioExecutor::new());
                        builder
                            .http1()
                            .timer(TokioTimer::new())
                            .header_read_timeout(limits.header_timeout);
                        // HTTP/2 peers that stop answering pings are dropped.
                        builder
                            .http2()
                            .timer(TokioTimer::new())
                            .keep_alive_interval(Some(limits.header_timeout))
                            .keep_alive_timeout(limits.header_timeout)
                            .max_concurrent_streams(100);
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
            }
        }
        drop(self.inner);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(drain) => {
                tracing::warn!(open = conns.len(), "drain period over; closing open connections");
            }
        }
        conns.abort_all();
        while conns.join_next().await.is_some() {}
        Ok(())
    }
}

/// Whether the client sent, within `timeout`, enough to tell HTTP/1 from HTTP/2 (the 24-byte
/// HTTP/2 preface, or any bytes that depart from it). The bytes are only peeked, not consumed.
async fn protocol_known(stream: &tokio::net::TcpStream, timeout: Duration) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let decided = async {
        let mut buf = [0u8; 24];
        let mut last = 0;
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if n >= PREFACE.len() || buf[..n] != PREFACE[..n] {
                return true;
            }
            if n == last {
                // Nothing new yet: peek returns at once while bytes wait, so give the client a
                // moment rather than spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            last = n;
        }
    };
    tokio::time::timeout(timeout, decided)
        .await
        .unwrap_or(false)
}

/// What the service answers a request with (see [`service`] for why it is boxed).
type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<hyper::Response<BoxBody>, Infallible>> + Send>>;

fn service<E: Endpoint + 'static>(
    ep: Arc<E>,
    local: LocalAddr,
    peer: SocketAddr,
    limits: HttpLimits,
) -> impl hyper::service::Service<
    poem::http::Request<hyper::body::Incoming>,
    Response = hyper::Response<BoxBody>,
    Error = Infallible,
    Future = ServiceFuture,
> + Clone {
    hyper::service::service_fn(
        move |req: poem::http::Request<hyper::body::Incoming>| -> ServiceFuture {
            let ep = Arc::clone(&ep);
            let remote = RemoteAddr(Addr::SocketAddr(peer));
            let local = local.clone();
            // Boxed: hyper keeps a slot the size of the service's future for the whole life of an
            // HTTP/1 connection. Unboxed, the whole middleware chain's state (7.7 KB) stayed
            // allocated for every open connection, an idle event stream's included, long after its
            // request was answered; boxed, the slot is a pointer and the state is freed on answer.
            Box::pin(async move {
                let mut req = Request::from((req, local, remote, Scheme::HTTP));
                let late = (limits.body_min_rate > 0).then(|| {
                    let late = Arc::new(AtomicBool::new(false));
                    let body = req.take_body().into_bytes_stream();
                    req.set_body(Body::from_bytes_stream(Deadline {
                        inner: Box::pin(body),
                        limits,
                        started: None,
                        received: 0,
                        sleep: None,
                        late: Arc::clone(&late),
                        done: false,
                    }));
                    late
                });
                let resp = ep.get_response(req).await;
                let resp = match late {
                    Some(late) if late.load(Ordering::Acquire) => too_slow(),
                    _ => resp,
                };
                Ok(resp.into())
            })
        },
    )
}

/// What a client whose body fell behind gets, whatever the handler answered.
fn too_slow() -> Response {
    Response::builder()
        .status(poem::http::StatusCode::REQUEST_TIMEOUT)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(header::CONNECTION, "close")
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-content-type-options", "nosniff")
        .body(
            serde_json::json!({
                "code": "request_timeout",
                "message": "the request body arrived too slowly",
            })
            .to_string(),
        )
}

/// The body type poem's responses convert into.
type BoxBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;

type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A body that must keep ahead of `started + body_timeout + received / body_min_rate`.
struct Deadline {
    inner: ByteStream,
    limits: HttpLimits,
    started: Option<Instant>,
    received: u64,
    sleep: Option<Pin<Box<Sleep>>>,
    late: Arc<AtomicBool>,
    done: bool,
}

impl Deadline {
    fn deadline(&self, started: Instant) -> Instant {
        let earned =
            Duration::from_secs_f64(self.received as f64 / self.limits.body_min_rate as f64);
        started + self.limits.body_timeout + earned
    }
}

impl Stream for Deadline {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        // The clock starts when the handler first asks for the body, not while it did other work.
        let started = *this.started.get_or_insert_with(Instant::now);
        if this.sleep.is_none() {
            this.sleep = Some(Box::pin(tokio::time::sleep_until(this.deadline(started))));
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.received += chunk.len() as u64;
                let deadline = this.deadline(started);
                if let Some(sleep) = this.sleep.as_mut() {
                    sleep.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(other) => {
                this.done = other.is_none();
                Poll::Ready(other)
            }
            Poll::Pending => {
                let sleep = this.sleep.as_mut().expect("set above");
                if sleep.as_mut().poll(cx).is_ready() {
                    this.done = true;
                    this.late.store(true, Ordering::Release);
                    tracing::info!(
                        received = this.received,
                        "request body arrived too slowly; cut off"
                    );
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request body arrived too slowly",
                    ))));
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::handler;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[handler]
    async fn echo_len(body: Body) -> poem::Result<String> {
        let bytes = body.into_bytes().await?;
        Ok(bytes.len().to_string())
    }

    async fn start(limits: HttpLimits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(listener.serve(
            poem::Route::new().at("/", poem::post(echo_len)),
            limits,
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(1),
        ));
        (addr, tx)
    }

    fn tight() -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_millis(500),
            body_timeout: Duration::from_millis(500),
            body_min_rate: 1000,
            max_connections: 100,
        }
    }

    /// Whether the server closes `s` within `within` (EOF or reset).
    async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_or_half_a_preface_is_closed() {
        let (addr, _stop) = start(tight()).await;
        let began = std::time::Instant::now();
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The start of the HTTP/2 preface: not yet enough to choose a protocol.
        half.write_all(b"PRI * HTTP/2").await.unwrap();
        assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
        assert!(closed_within(&mut half, Duration::from_secs(3)).await);
        assert!(began.elapsed() < Duration::from_secs(3));
        // Cleartext HTTP/2 with its whole preface (and an empty SETTINGS frame) gets the
        // server's SETTINGS frame back.
        let mut h2 = tokio::net::TcpStream::connect(addr).await.unwrap();
        h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let mut frame = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(3), h2.read_exact(&mut frame))
            .await
            .expect("the server answers HTTP/2")
            .unwrap();
        assert_eq!(frame[3], 0x4, "a SETTINGS frame: {frame:?}");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_until_one_closes() {
        let limits = HttpLimits {
            max_connections: 1,
            ..HttpLimits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        first
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\na")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = first.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // The first connection stays open (keep-alive): the second is not served meanwhile.
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        second
            .write_all(
                b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\nconnection: close\r\n\r\nb",
            )
            .await
            .unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
        assert!(waited.is_err(), "served beyond the cap");
        drop(first);
        let resp = read_all(&mut second).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }

    async fn read_all(s: &mut tokio::net::TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_body_sent_in_time_is_read_whole() {
        let (addr, _stop) = start(tight()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = vec![b'x'; 200_000];
        let head = format!(
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let resp = read_all(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with("200000"), "{resp}");
    }

    #[tokio::test]
    async fn a_trickled_body_is_cut_off_with_408() {
        let (addr, _stop) = start(tight()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
            .await
            .unwrap();
        let began = std::time::Instant::now();
        // One byte every 50 ms, far below 1000 B/s, for longer than the allowance.
        let (mut rd, mut wr) = s.into_split();
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if wr.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(4), rd.read_to_end(&mut out)).await;
        let resp = String::from_utf8_lossy(&out);
        assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
        assert!(resp.contains("request_timeout"), "{resp}");
        assert!(began.elapsed() < Duration::from_secs(4));
        trickle.abort();
    }

    #[tokio::test]
    async fn a_trickled_head_is_closed_and_others_are_served() {
        let (addr, _stop) = start(tight()).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        let began = std::time::Instant::now();
        let mut closed = false;
        for b in
            b"POST / HTTP/1.1\r\nhost: x\r\nx-long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        {
            if slow.write_all(&[*b]).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !closed {
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(2), slow.read(&mut buf))
                .await
                .expect("the server closes a head that takes too long");
            closed = matches!(n, Ok(0) | Err(_))
                || String::from_utf8_lossy(&buf[..n.unwrap_or(0)]).starts_with("HTTP/1.1 408");
        }
        assert!(closed, "connection still open after {:?}", began.elapsed());
        // The server is still there for a client that behaves.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc",
        )
        .await
        .unwrap();
        let resp = read_all(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }

    #[tokio::test]
    async fn shutdown_lets_open_requests_finish() {
        let (addr, stop) = start(HttpLimits::default()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\n\r\nabc")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"def").await.unwrap();
        let resp = read_all(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with('6'), "{resp}");
        // No longer accepting.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
