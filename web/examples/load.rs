//! Load generator for BackLess, for loopback use only; every phase stops by itself.
//! `scripts/load.sh` starts the services (web on PostgreSQL + Redis, the emulator, a worker) and
//! runs this against them.
//!
//! ```text
//! load bench --web URL --web-pid PID [--seconds 20] [--concurrency 32] [--watchers 2000] [--h2 N]
//!     Uploads only (run it with the queue paused): uploads/s accepted for a 1 MB JPEG, p50/p99
//!     upload latency; then idle SSE watchers held open on one web process, and its memory per
//!     connection (RSS before and after, from /proc). With `--h2 N` the watchers speak HTTP/2
//!     (h2c), N streams to a connection; without it, HTTP/1.1, a connection each.
//! load soak --web URL --web-pid PID --worker-pid PID [--seconds 60] [--uploaders 200]
//!           [--watchers 1000] [--drain 300]
//!     Issue 8's load test against the full stack: `uploaders` clients each upload, follow their
//!     job to the end over SSE and upload again, for `seconds`, while `watchers` idle SSE streams
//!     stay open. Then every accepted job must be done or failed (none lost), no 5xx but 503,
//!     and the peak RSS of web and worker is reported. Exits 1 when a property fails.
//! ```
//! The last line printed is a JSON summary.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

/// `--key value` arguments.
struct Args(BTreeMap<String, String>);

impl Args {
    fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut map = BTreeMap::new();
        let mut it = args;
        while let Some(k) = it.next() {
            let Some(key) = k.strip_prefix("--") else {
                bail!("unexpected argument {k:?}");
            };
            let v = it
                .next()
                .with_context(|| format!("--{key} needs a value"))?;
            map.insert(key.to_string(), v);
        }
        Ok(Self(map))
    }

    fn string(&self, key: &str) -> anyhow::Result<String> {
        self.0
            .get(key)
            .cloned()
            .with_context(|| format!("--{key} is required"))
    }

    fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> anyhow::Result<T> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("--{key}: cannot parse {v:?}")),
        }
    }
}

/// A photo-like JPEG of about `target` bytes (smooth shapes plus sensor-like noise).
fn jpeg_of_size(target: usize) -> Vec<u8> {
    let encode = |w: u32, h: u32| {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let n = ((seed >> 59) as i32) - 16;
            let (cx, cy) = (x as i32 - w as i32 / 2, y as i32 - h as i32 / 2);
            let inside = cx * cx + cy * cy < (h as i32 / 3).pow(2);
            let base = if inside {
                [200, 120 + (x * 60 / w) as i32, 60]
            } else {
                [40 + (y * 120 / h) as i32, 110, 190]
            };
            image::Rgb(base.map(|c| (c + n).clamp(0, 255) as u8))
        });
        let mut out = Cursor::new(Vec::new());
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
            .encode_image(&img)
            .expect("encode jpeg");
        out.into_inner()
    };
    let (mut w, mut h) = (1200u32, 900u32);
    let mut jpeg = encode(w, h);
    for _ in 0..4 {
        let scale = (target as f64 / jpeg.len() as f64).sqrt();
        if (0.97..1.03).contains(&scale) {
            break;
        }
        w = ((w as f64 * scale) as u32).max(16);
        h = ((h as f64 * scale) as u32).max(16);
        jpeg = encode(w, h);
    }
    jpeg
}

/// A small PNG for the watchers' jobs.
fn small_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(96, 64, |x, y| {
        image::Rgb([(x * 2) as u8, 90, (y * 3) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Resident and peak resident memory of a process, in KiB (`/proc/<pid>/status`).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// HTTP status counts and accepted-upload latencies.
#[derive(Default)]
struct Tally {
    statuses: Mutex<BTreeMap<u16, u64>>,
    /// Transport errors (connection refused or reset, timeouts).
    errors: AtomicU64,
    latencies: Mutex<Vec<Duration>>,
}

impl Tally {
    fn status(&self, s: u16) {
        *self.statuses.lock().unwrap().entry(s).or_default() += 1;
    }

    fn count(&self, pred: impl Fn(u16) -> bool) -> u64 {
        self.statuses
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| pred(**s))
            .map(|(_, n)| n)
            .sum()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.lock().unwrap().clone();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l.sort();
        l[((l.len() - 1) as f64 * p).round() as usize]
    }

    fn statuses_json(&self) -> serde_json::Value {
        let m = self.statuses.lock().unwrap();
        json!(
            m.iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>()
        )
    }
}

struct Created {
    id: String,
    token: String,
    /// Its event stream ended with `done` or `failed`.
    seen_final: bool,
}

/// One upload from a new client (no cookie); `Some` when accepted.
async fn upload(
    client: &reqwest::Client,
    web: &str,
    photo: &Bytes,
    name: &str,
    tally: &Tally,
) -> Option<Created> {
    let part = reqwest::multipart::Part::stream(reqwest::Body::from(photo.clone()))
        .file_name(name.to_string());
    let form = reqwest::multipart::Form::new().part("file", part);
    let start = Instant::now();
    let resp = match client
        .post(format!("{web}/v1/jobs"))
        .multipart(form)
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => {
            tally.errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let status = resp.status().as_u16();
    tally.status(status);
    if status != 201 {
        return None;
    }
    let body: serde_json::Value = resp.json().await.ok()?;
    tally.latencies.lock().unwrap().push(start.elapsed());
    Some(Created {
        id: body["job"]["id"].as_str()?.to_string(),
        token: body["token"].as_str()?.to_string(),
        seen_final: false,
    })
}

/// Follow a job's events until `done`/`failed` (or `limit`); true if a final event came.
async fn follow_to_end(
    client: &reqwest::Client,
    web: &str,
    job: &Created,
    limit: Duration,
) -> bool {
    let Ok(resp) = client
        .get(format!("{web}/v1/jobs/{}/events", job.id))
        .bearer_auth(&job.token)
        .send()
        .await
    else {
        return false;
    };
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
        if text.contains("event: done") || text.contains("event: failed") {
            return true;
        }
        if text.len() > 64 * 1024 {
            text.drain(..32 * 1024);
        }
    }
    false
}

/// The job's state as web reports it (`None` when the request fails).
async fn state_of(client: &reqwest::Client, web: &str, job: &Created) -> Option<String> {
    let resp = client
        .get(format!("{web}/v1/jobs/{}", job.id))
        .bearer_auth(&job.token)
        .send()
        .await
        .ok()?;
    if resp.status() != 200 {
        return Some(format!("http {}", resp.status().as_u16()));
    }
    let v: serde_json::Value = resp.json().await.ok()?;
    v["state"].as_str().map(str::to_string)
}

/// Idle watchers: `n` held SSE streams spread over `jobs`. Returns how many are open now and a
/// counter of streams that ended before `stop`.
async fn open_watchers(
    client: &reqwest::Client,
    web: &str,
    jobs: &[Created],
    n: usize,
    stop: Arc<AtomicBool>,
) -> (usize, Arc<AtomicU64>) {
    let dropped = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let mut starts = Vec::new();
    for i in 0..n {
        let job = &jobs[i % jobs.len()];
        let url = format!("{web}/v1/jobs/{}/events?hold=true", job.id);
        let (client, token) = (client.clone(), job.token.clone());
        let (dropped, opened, stop) = (dropped.clone(), opened.clone(), stop.clone());
        starts.push(tokio::spawn(async move {
            let Ok(resp) = client.get(url).bearer_auth(token).send().await else {
                dropped.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if resp.status() != 200 {
                dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            opened.fetch_add(1, Ordering::Relaxed);
            let mut body = resp.bytes_stream();
            loop {
                tokio::select! {
                    chunk = body.next() => match chunk {
                        Some(Ok(_)) => {}
                        _ => {
                            if !stop.load(Ordering::Relaxed) {
                                dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            return;
                        }
                    },
                    () = tokio::time::sleep(Duration::from_millis(200)) => {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                }
            }
        }));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    settle(n, &opened, dropped).await
}

/// Wait (at most a minute) until each of `n` streams has opened or failed: how many are open,
/// and the counter of those that ended.
async fn settle(n: usize, opened: &AtomicU64, dropped: Arc<AtomicU64>) -> (usize, Arc<AtomicU64>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while (opened.load(Ordering::Relaxed) + dropped.load(Ordering::Relaxed)) < n as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (opened.load(Ordering::Relaxed) as usize, dropped)
}

/// As [`open_watchers`], over cleartext HTTP/2 with prior knowledge (h2c, what a front end such
/// as Cloud Run's with `--use-http2` speaks to the container): `per_conn` streams share each
/// connection, as a proxy multiplexes its clients' streams onto a few connections.
async fn open_watchers_h2(
    web: &str,
    jobs: &[Created],
    n: usize,
    per_conn: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(usize, Arc<AtomicU64>)> {
    let authority = web
        .strip_prefix("http://")
        .context("--h2 needs an http:// web URL")?
        .trim_end_matches('/')
        .to_string();
    let dropped = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    for first in (0..n).step_by(per_conn.max(1)) {
        let tcp = tokio::net::TcpStream::connect(&authority).await?;
        let (sender, conn) = h2::client::handshake(tcp).await?;
        tokio::spawn(conn);
        for i in first..(first + per_conn.max(1)).min(n) {
            let job = &jobs[i % jobs.len()];
            let req = poem::http::Request::get(format!(
                "http://{authority}/v1/jobs/{}/events?hold=true",
                job.id
            ))
            .header("authorization", format!("Bearer {}", job.token))
            .body(())?;
            let mut sender = sender.clone().ready().await?;
            let (response, _) = sender.send_request(req, true)?;
            let (dropped, opened, stop) = (dropped.clone(), opened.clone(), stop.clone());
            tokio::spawn(async move {
                let resp = match response.await {
                    Ok(r) if r.status() == 200 => r,
                    _ => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                opened.fetch_add(1, Ordering::Relaxed);
                let mut body = resp.into_body();
                while let Some(chunk) = body.data().await {
                    match chunk {
                        Ok(c) => {
                            let _ = body.flow_control().release_capacity(c.len());
                        }
                        Err(_) => break,
                    }
                }
                if !stop.load(Ordering::Relaxed) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    Ok(settle(n, &opened, dropped).await)
}

async fn sse_gauge(client: &reqwest::Client, web: &str) -> u64 {
    metric_sum(client, web, "backless_web_sse_connections ").await
}

/// The sum of every sample of web's metric whose line starts with `prefix`.
async fn metric_sum(client: &reqwest::Client, web: &str, prefix: &str) -> u64 {
    let Ok(resp) = client.get(format!("{web}/metrics")).send().await else {
        return 0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// CPU time a process has used (user + system), from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) : utime and stime are the 12th and
    // 13th of them, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    Duration::from_millis(ticks * 10)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(3600))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

async fn bench(a: &Args) -> anyhow::Result<bool> {
    let web = a.string("web")?;
    let web_pid: u32 = a.num("web-pid", 0)?;
    let seconds: u64 = a.num("seconds", 20)?;
    let concurrency: usize = a.num("concurrency", 32)?;
    let watchers: usize = a.num("watchers", 2000)?;
    let h2_per_conn: usize = a.num("h2", 0)?;
    let photo = Bytes::from(jpeg_of_size(1_000_000));
    println!(
        "bench: {} byte JPEG, {concurrency} concurrent uploads for {seconds} s",
        photo.len()
    );
    let client = client();
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, web, photo, tally) =
            (client.clone(), web.clone(), photo.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                upload(&client, &web, &photo, "load.jpg", &tally).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed();
    let accepted = tally.count(|s| s == 201);
    let rate = accepted as f64 / elapsed.as_secs_f64();
    let (p50, p99) = (tally.percentile(0.5), tally.percentile(0.99));
    println!(
        "uploads: {accepted} accepted in {:.1} s = {rate:.1}/s; p50 {} ms, p99 {} ms; statuses {}; transport errors {}",
        elapsed.as_secs_f64(),
        ms(p50),
        ms(p99),
        tally.statuses_json(),
        tally.errors.load(Ordering::Relaxed)
    );

    // Idle SSE: queued jobs (the queue is paused), 20 held streams on each (a client's cap).
    let png = Bytes::from(small_png());
    let mut jobs = Vec::new();
    for _ in 0..watchers.div_ceil(20) {
        jobs.extend(upload(&client, &web, &png, "w.png", &tally).await);
    }
    if jobs.is_empty() {
        bail!("no job for the watchers was accepted");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (before, _) = rss_kib(web_pid);
    let stop = Arc::new(AtomicBool::new(false));
    let (open, dropped) = match h2_per_conn {
        0 => open_watchers(&client, &web, &jobs, watchers, stop.clone()).await,
        per_conn => open_watchers_h2(&web, &jobs, watchers, per_conn, stop.clone()).await?,
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after, peak) = rss_kib(web_pid);
    let gauge = sse_gauge(&client, &web).await;
    // While they sit idle: the queries web makes (one batched read per interval for all the
    // watched jobs, whatever the number of streams) and its CPU. Each scrape adds its own four
    // `count_in_state` queries, taken off.
    let idle = Duration::from_secs(10);
    let (q0, cpu0) = (
        metric_sum(&client, &web, "backless_web_db_queries_total").await,
        cpu_time(web_pid),
    );
    tokio::time::sleep(idle).await;
    let (cpu1, q1) = (
        cpu_time(web_pid),
        metric_sum(&client, &web, "backless_web_db_queries_total").await,
    );
    let (settled, _) = rss_kib(web_pid);
    let queries_per_s = q1.saturating_sub(q0).saturating_sub(4) as f64 / idle.as_secs_f64();
    let cpu_share = (cpu1 - cpu0).as_secs_f64() / idle.as_secs_f64();
    println!(
        "idle SSE for {} s: {queries_per_s:.2} database queries/s, web CPU {:.1}% of a core",
        idle.as_secs(),
        cpu_share * 100.0
    );
    let per_conn = (after.saturating_sub(before) as f64 * 1024.0) / open.max(1) as f64;
    let per_conn_settled = (settled.saturating_sub(before) as f64 * 1024.0) / open.max(1) as f64;
    println!(
        "idle SSE: {open} open (web's gauge {gauge}), {} failed; web RSS {} -> {} MiB, {:.1} KiB per connection; peak {} MiB; after {} s idle {} MiB, {:.1} KiB per connection",
        dropped.load(Ordering::Relaxed),
        before / 1024,
        after / 1024,
        per_conn / 1024.0,
        peak / 1024,
        idle.as_secs(),
        settled / 1024,
        per_conn_settled / 1024.0,
    );
    stop.store(true, Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "mode": "bench",
            "jpeg_bytes": photo.len(),
            "concurrency": concurrency,
            "seconds": elapsed.as_secs_f64(),
            "accepted": accepted,
            "uploads_per_second": rate,
            "p50_ms": ms(p50),
            "p99_ms": ms(p99),
            "statuses": tally.statuses_json(),
            "sse_open": open,
            "sse_h2_streams_per_connection": h2_per_conn,
            "sse_gauge": gauge,
            "web_rss_before_kib": before,
            "web_rss_after_kib": after,
            "web_rss_after_idle_kib": settled,
            "bytes_per_sse_connection": per_conn.round(),
            "idle_db_queries_per_second": queries_per_s,
            "idle_web_cpu_share": cpu_share,
        })
    );
    Ok(open == watchers && gauge >= watchers as u64)
}

async fn soak(a: &Args) -> anyhow::Result<bool> {
    let web = a.string("web")?;
    let web_pid: u32 = a.num("web-pid", 0)?;
    let worker_pid: u32 = a.num("worker-pid", 0)?;
    let seconds: u64 = a.num("seconds", 60)?;
    let uploaders: usize = a.num("uploaders", 200)?;
    let watchers: usize = a.num("watchers", 1000)?;
    let drain: u64 = a.num("drain", 300)?;
    let photo = Bytes::from(jpeg_of_size(a.num("jpeg-bytes", 1_000_000)?));
    let client = client();
    let tally = Arc::new(Tally::default());
    println!(
        "soak: {uploaders} uploaders ({} byte JPEG, each follows its job to the end) + {watchers} idle watchers for {seconds} s",
        photo.len()
    );

    // Watchers first: their jobs go through the worker too, then the streams stay open (held).
    let png = Bytes::from(small_png());
    let mut watched = Vec::new();
    for _ in 0..(watchers / 20).max(1) {
        watched.extend(upload(&client, &web, &png, "w.png", &tally).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (open, dropped) = open_watchers(&client, &web, &watched, watchers, stop.clone()).await;
    println!("watchers: {open} open on {} jobs", watched.len());

    // Memory, sampled every second.
    let samples: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let sampler = {
        let (samples, stop) = (samples.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                samples
                    .lock()
                    .unwrap()
                    .push((rss_kib(web_pid).0, rss_kib(worker_pid).0));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let accepted: Arc<Mutex<Vec<Created>>> = Arc::default();
    let unfinished = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..uploaders {
        let (client, web, photo, tally) =
            (client.clone(), web.clone(), photo.clone(), tally.clone());
        let (accepted, unfinished) = (accepted.clone(), unfinished.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let Some(mut job) = upload(&client, &web, &photo, "load.jpg", &tally).await else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                let limit =
                    (end + Duration::from_secs(drain)).saturating_duration_since(Instant::now());
                job.seen_final = follow_to_end(&client, &web, &job, limit).await;
                if !job.seen_final {
                    unfinished.fetch_add(1, Ordering::Relaxed);
                }
                accepted.lock().unwrap().push(job);
            }
        }));
    }
    let mut last_report = Instant::now();
    while tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let (w, k) = samples.lock().unwrap().last().copied().unwrap_or_default();
            println!(
                "  t={:>4.0}s accepted {} done-or-failed-followed {}; RSS web {} MiB worker {} MiB",
                start.elapsed().as_secs_f64(),
                tally.count(|s| s == 201),
                accepted.lock().unwrap().len(),
                w / 1024,
                k / 1024
            );
        }
    }
    let run = start.elapsed();

    // Every accepted job, the watchers' included, must have reached done or failed: seen in its
    // event stream, or (watchers' jobs) in its record now. A job seen to end and gone now was
    // deleted after its grace window, as designed.
    let mut all: Vec<Created> = std::mem::take(&mut *accepted.lock().unwrap());
    all.extend(watched);
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    let mut lost = 0u64;
    for job in &all {
        let s = state_of(&client, &web, job)
            .await
            .unwrap_or_else(|| "unreachable".into());
        let ended = s == "done" || s == "failed";
        if !ended && !job.seen_final {
            lost += 1;
        }
        let label = if !ended && job.seen_final {
            format!("ended, then {s}")
        } else {
            s
        };
        *states.entry(label).or_default() += 1;
    }
    let gauge = sse_gauge(&client, &web).await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let (_, web_peak) = rss_kib(web_pid);
    let (_, worker_peak) = rss_kib(worker_pid);
    let samples = samples.lock().unwrap().clone();
    let third = samples.len() / 3;
    let max_of = |s: &[(u64, u64)], f: fn(&(u64, u64)) -> u64| s.iter().map(f).max().unwrap_or(0);
    let (web_first, web_last) = (
        max_of(&samples[..third], |s| s.0),
        max_of(&samples[2 * third..], |s| s.0),
    );
    let (wk_first, wk_last) = (
        max_of(&samples[..third], |s| s.1),
        max_of(&samples[2 * third..], |s| s.1),
    );
    let bad_5xx = tally.count(|s| s >= 500 && s != 503);
    let watcher_drops = dropped.load(Ordering::Relaxed);
    println!(
        "uploads: {} accepted, statuses {}, transport errors {}; upload p50 {} ms p99 {} ms",
        tally.count(|s| s == 201),
        tally.statuses_json(),
        tally.errors.load(Ordering::Relaxed),
        ms(tally.percentile(0.5)),
        ms(tally.percentile(0.99))
    );
    println!(
        "jobs: {} accepted -> {:?}; lost {lost}; not followed to the end {}",
        all.len(),
        states,
        unfinished.load(Ordering::Relaxed)
    );
    println!(
        "watchers: {open} opened, {watcher_drops} ended early, {gauge} open at the end (web's gauge)"
    );
    println!(
        "RSS max, first third -> last third: web {} -> {} MiB, worker {} -> {} MiB; peak web {} MiB, worker {} MiB",
        web_first / 1024,
        web_last / 1024,
        wk_first / 1024,
        wk_last / 1024,
        web_peak / 1024,
        worker_peak / 1024
    );
    let ok = lost == 0 && bad_5xx == 0 && open == watchers && watcher_drops == 0 && !all.is_empty();
    println!(
        "{}",
        json!({
            "mode": "soak",
            "ok": ok,
            "seconds": run.as_secs_f64(),
            "uploaders": uploaders,
            "watchers": watchers,
            "jpeg_bytes": photo.len(),
            "accepted": all.len(),
            "states": states,
            "lost": lost,
            "statuses": tally.statuses_json(),
            "unexpected_5xx": bad_5xx,
            "transport_errors": tally.errors.load(Ordering::Relaxed),
            "watchers_open": open,
            "watchers_dropped": watcher_drops,
            "web_rss_peak_kib": web_peak,
            "worker_rss_peak_kib": worker_peak,
            "web_rss_first_third_max_kib": web_first,
            "web_rss_last_third_max_kib": web_last,
            "worker_rss_first_third_max_kib": wk_first,
            "worker_rss_last_third_max_kib": wk_last,
        })
    );
    Ok(ok)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let mode = argv.next().unwrap_or_default();
    let args = Args::parse(argv)?;
    if let Ok(web) = args.string("web")
        && !(web.starts_with("http://127.0.0.1:") || web.starts_with("http://localhost:"))
    {
        bail!("--web must be a loopback URL (http://127.0.0.1:PORT): this tool is for local load");
    }
    let ok = match mode.as_str() {
        "bench" => bench(&args).await?,
        "soak" => soak(&args).await?,
        _ => bail!("usage: load bench|soak --web URL ... (see the file's doc comment)"),
    };
    if !ok {
        eprintln!("load: FAILED (see above)");
        std::process::exit(1);
    }
    Ok(())
}
