//! Image storage on `object_store`, chosen by URL: `file://dir` (relative or absolute, created if
//! missing), `memory://`, and with the `s3` / `gcs` features `s3://bucket/prefix`, `gs://bucket/prefix`.
//!
//! Keys derive only from the job id (`originals/<id>`, `results/<id>`): nothing a client sends
//! ever becomes part of a path.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::config::StorageConfig;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsupported storage URL {0:?} (use file://, memory://, s3:// or gs://)")]
    UnsupportedUrl(String),
    #[error("storage backend {scheme}:// needs the `{feature}` feature of backless-common")]
    FeatureDisabled {
        scheme: &'static str,
        feature: &'static str,
    },
    #[error("cannot prepare storage directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("storage {0} cannot sign URLs (only s3:// and gs:// can)")]
    CannotSign(String),
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object store error: {0}")]
    Store(#[from] object_store::Error),
}

/// An object being read.
pub struct ObjectStream {
    /// Its length in bytes.
    pub size: u64,
    pub body: futures::stream::BoxStream<'static, Result<Bytes, StorageError>>,
}

impl std::fmt::Debug for ObjectStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Key of a job's uploaded original.
pub fn original_key(job_id: &str) -> String {
    format!("originals/{job_id}")
}

/// Key of a job's background image (remove.bg's `bg_image_file` / `bg_image_url`), which the
/// `backdrop` operation paints behind the subject.
pub fn background_key(job_id: &str) -> String {
    format!("backgrounds/{job_id}")
}

/// Key of a job's result.
pub fn result_key(job_id: &str) -> String {
    format!("results/{job_id}")
}

/// The object store holding originals and results.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// The same store's URL signer, where the backend has one (S3, GCS).
    signer: Option<DynSigner>,
    url: String,
}

/// How a signed download should be answered by the store.
#[derive(Debug, Clone, Default)]
pub struct DownloadHeaders {
    /// `Content-Type` of the response (`response-content-type`).
    pub content_type: Option<String>,
    /// `Content-Disposition` of the response (`response-content-disposition`).
    pub content_disposition: Option<String>,
}

impl Storage {
    pub fn from_config(cfg: &StorageConfig) -> Result<Self, StorageError> {
        Self::from_url(&cfg.url)
    }

    pub fn from_url(url: &str) -> Result<Self, StorageError> {
        let mut signer = None;
        let store: Arc<dyn ObjectStore> = if let Some(dir) = url.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(StorageError::UnsupportedUrl(url.into()));
            }
            std::fs::create_dir_all(dir).map_err(|source| StorageError::Dir {
                path: dir.into(),
                source,
            })?;
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir)?)
        } else if url.starts_with("memory://") {
            Arc::new(object_store::memory::InMemory::new())
        } else if url.starts_with("s3://") || url.starts_with("gs://") {
            let (store, s) = cloud_store(url, if url.starts_with("s3://") { "s3" } else { "gs" })?;
            signer = Some(s);
            store
        } else {
            return Err(StorageError::UnsupportedUrl(url.into()));
        };
        Ok(Self {
            store,
            signer,
            url: url.to_string(),
        })
    }

    /// Storage on an already built store (tests wrap a real store to inject faults); `url` only
    /// labels it.
    pub fn from_store(store: Arc<dyn ObjectStore>, url: impl Into<String>) -> Self {
        Self {
            store,
            url: url.into(),
            signer: None,
        }
    }

    /// Whether this store can hand out signed URLs (S3 and GCS can; files and memory cannot).
    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    /// A URL that lets anyone holding it GET `key` directly from the store for `expires_in`,
    /// answered with `headers`; `None` where the backend cannot sign.
    pub async fn signed_get_url(
        &self,
        key: &str,
        expires_in: Duration,
        headers: &DownloadHeaders,
    ) -> Result<Option<url::Url>, StorageError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        #[cfg(not(any(feature = "s3", feature = "gcs")))]
        {
            let _ = (key, expires_in, headers);
            match *signer {}
        }
        #[cfg(any(feature = "s3", feature = "gcs"))]
        {
            signed_url(signer.as_ref(), key, expires_in, headers)
                .await
                .map(Some)
        }
    }

    /// The URL this store was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&Path::from(key), PutPayload::from_bytes(data))
            .await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        match self.store.get(&Path::from(key)).await {
            Ok(r) => Ok(r.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(StorageError::NotFound(key.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Read an object as it arrives, in the store's chunks: memory stays bounded however large
    /// the object and however slow the reader.
    pub async fn get_stream(&self, key: &str) -> Result<ObjectStream, StorageError> {
        match self.store.get(&Path::from(key)).await {
            Ok(r) => Ok(ObjectStream {
                size: r.meta.size,
                body: r.into_stream().map_err(StorageError::from).boxed(),
            }),
            Err(object_store::Error::NotFound { .. }) => Err(StorageError::NotFound(key.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn put_original(&self, job_id: &str, data: Bytes) -> Result<(), StorageError> {
        self.put(&original_key(job_id), data).await
    }

    pub async fn get_original(&self, job_id: &str) -> Result<Bytes, StorageError> {
        self.get(&original_key(job_id)).await
    }

    pub async fn put_result(&self, job_id: &str, data: Bytes) -> Result<(), StorageError> {
        self.put(&result_key(job_id), data).await
    }

    pub async fn get_result(&self, job_id: &str) -> Result<Bytes, StorageError> {
        self.get(&result_key(job_id)).await
    }

    /// Delete everything stored for a job.
    pub async fn delete_job(&self, job_id: &str) -> Result<(), StorageError> {
        self.delete(&original_key(job_id)).await?;
        self.delete(&background_key(job_id)).await?;
        self.delete(&result_key(job_id)).await
    }

    /// Ids of the jobs with an object last written before `before` (the orphan sweep checks each
    /// against the database). Keys that are not a job's are ignored.
    pub async fn job_ids_written_before(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, StorageError> {
        let metas: Vec<_> = self.store.list(None).try_collect().await?;
        let mut ids: Vec<String> = metas
            .into_iter()
            .filter(|m| m.last_modified < before)
            .filter_map(|m| {
                let key = m.location.to_string();
                let (kind, id) = key.split_once('/')?;
                (matches!(kind, "originals" | "backgrounds" | "results")
                    && crate::job::is_valid_job_id(id))
                .then(|| id.to_string())
            })
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Every key in the store (diagnostics and tests).
    pub async fn list_keys(&self) -> Result<Vec<String>, StorageError> {
        let metas: Vec<_> = self.store.list(None).try_collect().await?;
        Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
    }
}

#[cfg(any(feature = "s3", feature = "gcs"))]
fn parse_cloud_url(url: &str) -> Result<(url::Url, String), StorageError> {
    let parsed = url::Url::parse(url).map_err(|_| StorageError::UnsupportedUrl(url.into()))?;
    let prefix = parsed.path().trim_matches('/').to_string();
    Ok((parsed, prefix))
}

/// A URL signer (S3, GCS); nothing can sign without those features.
#[cfg(any(feature = "s3", feature = "gcs"))]
type DynSigner = Arc<dyn object_store::signer::Signer>;
#[cfg(not(any(feature = "s3", feature = "gcs")))]
type DynSigner = std::convert::Infallible;

/// A cloud store and its signer, both under the URL's prefix.
type CloudStore = (Arc<dyn ObjectStore>, DynSigner);

#[cfg(any(feature = "s3", feature = "gcs"))]
async fn signed_url(
    signer: &dyn object_store::signer::Signer,
    key: &str,
    expires_in: Duration,
    headers: &DownloadHeaders,
) -> Result<url::Url, StorageError> {
    use object_store::signer::{Method, SignedUrlOptions};
    let mut query = Vec::new();
    if let Some(ct) = &headers.content_type {
        query.push(("response-content-type", ct.as_str()));
    }
    if let Some(cd) = &headers.content_disposition {
        query.push(("response-content-disposition", cd.as_str()));
    }
    let opts = SignedUrlOptions::default().with_query(query);
    Ok(signer
        .signed_url_opts(Method::GET, &Path::from(key), expires_in, &opts)
        .await?)
}

#[cfg(any(feature = "s3", feature = "gcs"))]
fn with_prefix(
    store: impl ObjectStore + object_store::signer::Signer,
    prefix: String,
) -> CloudStore {
    if prefix.is_empty() {
        let store = Arc::new(store);
        (store.clone(), store)
    } else {
        let store = Arc::new(object_store::prefix::PrefixStore::new(store, prefix));
        (store.clone(), store)
    }
}

fn cloud_store(url: &str, scheme: &'static str) -> Result<CloudStore, StorageError> {
    match scheme {
        #[cfg(feature = "s3")]
        "s3" => {
            let (parsed, prefix) = parse_cloud_url(url)?;
            let bucket = parsed.host_str().unwrap_or_default();
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()?;
            Ok(with_prefix(store, prefix))
        }
        #[cfg(feature = "gcs")]
        "gs" => {
            let (parsed, prefix) = parse_cloud_url(url)?;
            let bucket = parsed.host_str().unwrap_or_default();
            let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .build()?;
            Ok(with_prefix(store, prefix))
        }
        #[cfg(not(feature = "s3"))]
        "s3" => Err(StorageError::FeatureDisabled {
            scheme: "s3",
            feature: "s3",
        }),
        #[cfg(not(feature = "gcs"))]
        "gs" => Err(StorageError::FeatureDisabled {
            scheme: "gs",
            feature: "gcs",
        }),
        other => Err(StorageError::UnsupportedUrl(format!("{other}: {url}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_store_round_trip_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nested/objects");
        let s = Storage::from_url(&format!("file://{}", root.display())).unwrap();
        s.put_original("abc", Bytes::from_static(b"orig"))
            .await
            .unwrap();
        s.put_result("abc", Bytes::from_static(b"res"))
            .await
            .unwrap();
        s.put(&background_key("abc"), Bytes::from_static(b"bg"))
            .await
            .unwrap();
        assert_eq!(s.get_original("abc").await.unwrap(), &b"orig"[..]);
        assert!(root.join("originals/abc").is_file());
        let mut keys = s.list_keys().await.unwrap();
        keys.sort();
        assert_eq!(
            keys,
            vec!["backgrounds/abc", "originals/abc", "results/abc"]
        );
        let streamed = s.get_stream("originals/abc").await.unwrap();
        assert_eq!(streamed.size, 4);
        let chunks: Vec<Bytes> = streamed.body.try_collect().await.unwrap();
        assert_eq!(chunks.concat(), b"orig");
        assert!(matches!(
            s.get_stream("originals/none").await,
            Err(StorageError::NotFound(_))
        ));
        s.delete_job("abc").await.unwrap();
        s.delete_job("abc").await.unwrap();
        assert!(s.list_keys().await.unwrap().is_empty());
        assert!(matches!(
            s.get_result("abc").await,
            Err(StorageError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn memory_store_and_bad_urls() {
        let s = Storage::from_url("memory://").unwrap();
        s.put("results/x", Bytes::from_static(b"1")).await.unwrap();
        assert_eq!(s.get("results/x").await.unwrap(), &b"1"[..]);
        assert!(!s.can_sign());
        let none = s
            .signed_get_url(
                "results/x",
                Duration::from_secs(60),
                &DownloadHeaders::default(),
            )
            .await
            .unwrap();
        assert!(none.is_none());
        assert!(matches!(
            Storage::from_url("ftp://x"),
            Err(StorageError::UnsupportedUrl(_))
        ));
        #[cfg(not(feature = "s3"))]
        assert!(matches!(
            Storage::from_url("s3://bucket/p"),
            Err(StorageError::FeatureDisabled { .. })
        ));
    }
}
