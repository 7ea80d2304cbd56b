//! `s3://` storage against a real S3-protocol server: `s3s-fs`, which `scripts/test-services.sh`
//! installs (`cargo install s3s-fs`) and names in `BACKLESS_TEST_S3FS`. Run by scripts/test.sh
//! with `--features s3`; the object_store S3 client reads its endpoint and keys from the standard
//! `AWS_*` variables, exactly as in production.
#![cfg(feature = "s3")]

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backless_common::storage::{Storage, StorageError};

#[test]
fn s3_round_trip_against_a_real_server() {
    let bin = std::env::var("BACKLESS_TEST_S3FS")
        .expect("BACKLESS_TEST_S3FS is not set: scripts/test.sh installs s3s-fs and sets it");
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("backless-test")).unwrap(); // the bucket
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--access-key",
            "backless",
            "--secret-key",
            "backless-secret",
        ])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: the only test in this binary, before any other thread exists.
    unsafe {
        std::env::set_var("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"));
        std::env::set_var("AWS_ACCESS_KEY_ID", "backless");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "backless-secret");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ALLOW_HTTP", "true");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let storage = Storage::from_url("s3://backless-test/images").unwrap();
        let id = backless_common::db::new_job_id();
        let photo: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        storage
            .put_original(&id, photo.clone().into())
            .await
            .unwrap();
        storage
            .put_result(&id, b"result bytes".to_vec().into())
            .await
            .unwrap();
        assert_eq!(storage.get_original(&id).await.unwrap().to_vec(), photo);
        assert_eq!(
            storage.get_result(&id).await.unwrap().to_vec(),
            b"result bytes"
        );
        // It really is on the server: under the bucket's folder, with the URL's prefix.
        let on_disk = root
            .path()
            .join("backless-test/images")
            .join(backless_common::storage::original_key(&id));
        assert_eq!(std::fs::read(&on_disk).unwrap(), photo);
        assert_eq!(storage.list_keys().await.unwrap().len(), 2);

        storage.delete_job(&id).await.unwrap();
        assert!(matches!(
            storage.get_original(&id).await,
            Err(StorageError::NotFound(_))
        ));
        assert!(storage.list_keys().await.unwrap().is_empty());
        // Bad credentials are an error, not an empty answer.
        let wrong = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name("backless-test")
            .with_secret_access_key("wrong")
            .build()
            .unwrap();
        use object_store::ObjectStore;
        let denied = wrong
            .get_opts(&"images/x".into(), object_store::GetOptions::default())
            .await;
        assert!(denied.is_err());
    });
    let _ = server.kill();
    let _ = server.wait();
}
