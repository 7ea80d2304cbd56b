//! Real servers for tests (feature `test-support`): a Redis the test starts and can restart
//! mid-test, and fresh databases on the PostgreSQL server `scripts/test.sh` starts (named by
//! `BACKLESS_TEST_POSTGRES_URL`). Both fail loudly when the server is missing rather than skip.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start Debian's `redis-server` (installed by `scripts/test.sh`).
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            port,
            child: None,
            _dir: tempfile::tempdir().unwrap(),
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: scripts/test.sh installs it (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill the server and start a fresh one (empty: no persistence) on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Create an empty database on the test PostgreSQL server and return its URL.
pub async fn postgres_database() -> String {
    use sea_orm::ConnectionTrait;
    let server = std::env::var("BACKLESS_TEST_POSTGRES_URL").expect(
        "BACKLESS_TEST_POSTGRES_URL is not set: scripts/test.sh starts PostgreSQL and sets it",
    );
    let admin = sea_orm::Database::connect(server.as_str())
        .await
        .expect("connect to the test PostgreSQL server");
    let name = format!("backless_test_{}", crate::db::new_job_id());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    let _ = admin.close().await;
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An S3-protocol server (`s3s-fs`, which `scripts/test-services.sh` installs and names in
/// `BACKLESS_TEST_S3FS`) on a free loopback port, serving buckets from a temp dir; killed on drop.
pub struct S3Server {
    port: u16,
    child: Child,
    root: tempfile::TempDir,
}

impl S3Server {
    pub const ACCESS_KEY: &'static str = "backless";
    pub const SECRET_KEY: &'static str = "backless-secret";

    /// Start it with one empty bucket, `bucket`.
    pub fn start(bucket: &str) -> Self {
        let bin = std::env::var("BACKLESS_TEST_S3FS")
            .expect("BACKLESS_TEST_S3FS is not set: scripts/test.sh installs s3s-fs and sets it");
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(bucket)).unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", Self::ACCESS_KEY])
            .args(["--secret-key", Self::SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        wait_for_port(port, "s3s-fs");
        Self { port, child, root }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the server keeps its buckets (one folder each).
    pub fn root(&self) -> &std::path::Path {
        self.root.path()
    }

    /// The `AWS_*` variables object_store's S3 builder reads to reach this server.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private PostgreSQL cluster (Debian's `postgresql` package, `initdb` + `pg_ctl` from
/// `/usr/lib/postgresql/*/bin`) in a temp dir on a free loopback port, so a test can stop and
/// start it without disturbing the shared test server. Runs as the `postgres` user when the test
/// runs as root (PostgreSQL refuses root). Stopped on drop.
pub struct PostgresServer {
    port: u16,
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    running: bool,
}

impl PostgresServer {
    /// `initdb` a fresh cluster (superuser `backless`, trust auth on loopback) and start it.
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed: scripts/test.sh installs Debian's postgresql")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").is_file())
            .max()
            .expect("no initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().unwrap();
        let server = Self {
            port: free_port(),
            bin,
            dir,
            running: false,
        };
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(server.dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "cannot hand the cluster dir to postgres");
        }
        let status = server
            .command("initdb")
            .args(["-U", "backless", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .arg("-D")
            .arg(server.data())
            .stdout(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        let mut server = server;
        server.start_again();
        server
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// `postgres://` URL of the `postgres` database.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    pub fn database_url(&self, db: &str) -> String {
        format!("postgres://backless@127.0.0.1:{}/{db}", self.port)
    }

    /// Start the (stopped) server again on the same port and data.
    pub fn start_again(&mut self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &opts, "-w", "-t", "60", "-l"])
            .arg(self.dir.path().join("log"))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl start");
        assert!(status.success(), "pg_ctl start failed");
        self.running = true;
        wait_for_port(self.port, "postgres");
    }

    /// Stop the server the hard way (`-m immediate`: connections cut, as in a crash).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .status();
        self.running = false;
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// An object store with switches, wrapping a real one: the next writes under a prefix or the next
/// deletes can be made to fail, and reads can be held until the test lets them through.
#[derive(Debug)]
pub struct FaultyStore {
    inner: std::sync::Arc<dyn object_store::ObjectStore>,
    put_faults: std::sync::Mutex<Vec<(String, u32)>>,
    delete_faults: std::sync::atomic::AtomicU32,
    /// Each read takes a permit (returned when the read is answered).
    reads: tokio::sync::Semaphore,
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected {what} failure").into(),
    }
}

impl FaultyStore {
    /// Pass everything through to `inner`.
    pub fn new(inner: std::sync::Arc<dyn object_store::ObjectStore>) -> Self {
        Self {
            inner,
            put_faults: std::sync::Mutex::default(),
            delete_faults: std::sync::atomic::AtomicU32::new(0),
            reads: tokio::sync::Semaphore::new(tokio::sync::Semaphore::MAX_PERMITS),
        }
    }

    /// Let only `n` reads through at once until [`Self::allow_reads`] adds more.
    pub fn with_read_permits(mut self, n: usize) -> Self {
        self.reads = tokio::sync::Semaphore::new(n);
        self
    }

    pub fn allow_reads(&self, n: usize) {
        self.reads.add_permits(n);
    }

    /// Hold every read that starts from now on, until [`Self::allow_reads`].
    pub fn hold_reads(&self) {
        self.reads
            .forget_permits(tokio::sync::Semaphore::MAX_PERMITS);
    }

    /// Fail the next `n` writes of keys starting with `prefix`.
    pub fn fail_puts(&self, prefix: &str, n: u32) {
        self.put_faults
            .lock()
            .expect("faults lock")
            .push((prefix.to_string(), n));
    }

    /// Fail the next `n` deletes.
    pub fn fail_deletes(&self, n: u32) {
        self.delete_faults
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Injected failures not yet spent.
    pub fn faults_left(&self) -> u32 {
        let puts: u32 = self
            .put_faults
            .lock()
            .expect("faults lock")
            .iter()
            .map(|(_, n)| n)
            .sum();
        puts + self.delete_faults.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn put_fails(&self, location: &object_store::path::Path) -> bool {
        let mut faults = self.put_faults.lock().expect("faults lock");
        faults
            .iter_mut()
            .find(|(prefix, n)| *n > 0 && location.as_ref().starts_with(prefix.as_str()))
            .map(|(_, n)| *n -= 1)
            .is_some()
    }
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        if self.put_fails(location) {
            return Err(injected("write"));
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        if self.put_fails(location) {
            return Err(injected("write"));
        }
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let _permit = self.reads.acquire().await.expect("never closed");
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        use futures::StreamExt;
        let fail = self
            .delete_faults
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if fail {
            return futures::stream::once(async { Err(injected("delete")) }).boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
