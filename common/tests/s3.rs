//! `s3://` storage against a real S3-protocol server: `s3s-fs`, which `scripts/test-services.sh`
//! installs (`cargo install s3s-fs`) and names in `BACKLESS_TEST_S3FS`. Run by scripts/test.sh
//! with `--features s3,test-support`; the object_store S3 client reads its endpoint and keys from
//! the standard `AWS_*` variables, exactly as in production.

use std::time::Duration;

use backless_common::storage::{DownloadHeaders, Storage, StorageError};
use backless_common::testing::S3Server;

#[test]
fn s3_round_trip_against_a_real_server() {
    let server = S3Server::start("backless-test");
    // SAFETY: the only test in this binary, before any other thread exists.
    for (k, v) in server.aws_env() {
        unsafe { std::env::set_var(k, v) };
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
        let on_disk = server
            .root()
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

        // A signed URL reads the object with no credentials, with the response headers it names,
        // and stops working when it expires.
        storage
            .put_result(&id, b"signed bytes".to_vec().into())
            .await
            .unwrap();
        assert!(storage.can_sign());
        let headers = DownloadHeaders {
            content_type: Some("image/png".into()),
            content_disposition: Some("inline; filename=\"cat-nobg.png\"".into()),
        };
        let key = backless_common::storage::result_key(&id);
        let url = storage
            .signed_get_url(&key, Duration::from_secs(2), &headers)
            .await
            .unwrap()
            .expect("s3 signs");
        assert!(url.as_str().starts_with(&server.endpoint()), "{url}");
        assert!(url.query().unwrap().contains("X-Amz-Signature="), "{url}");
        let (status, body) = get(url.as_str()).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(body, b"signed bytes");
        // Tampering with the signed path is refused.
        let other = url
            .as_str()
            .replace(&id, &backless_common::db::new_job_id());
        assert_eq!(get(&other).await.0, 403);
        tokio::time::sleep(Duration::from_millis(3100)).await;
        let expired = get(url.as_str()).await;
        assert_eq!(
            expired.0,
            403,
            "expired URL still served: {}",
            String::from_utf8_lossy(&expired.1)
        );
    });
    drop(server);
}

/// GET `url` with no credentials: (status, body).
async fn get(url: &str) -> (u16, Vec<u8>) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap().to_vec())
}
