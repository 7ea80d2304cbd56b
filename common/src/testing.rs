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
