//! Typed configuration shared by the services, read once at start-up.
//!
//! Every value comes from a `BACKLESS_*` environment variable with a default that runs locally with
//! no setup. Parsing takes any iterator of `(key, value)` pairs so tests never touch the process
//! environment: `CommonConfig::from_env()` in binaries, `CommonConfig::from_pairs([...])` in tests, both
//! given by [`FromSettings`] to every service's configuration.

use std::collections::HashMap;
use std::time::Duration;

use crate::limits::ImageLimits;
use crate::serve::HttpLimits;

/// Why configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl ConfigError {
    fn invalid(key: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            message: message.into(),
        }
    }
}

/// A configuration read from [`Settings`]: implement [`FromSettings::from_settings`] and get
/// `from_env()` for binaries and `from_pairs([...])` for tests (bring the trait into scope).
pub trait FromSettings: Sized {
    fn from_settings(s: &Settings) -> Result<Self, ConfigError>;

    /// Read the process environment once.
    fn from_env() -> Result<Self, ConfigError> {
        Self::from_settings(&Settings::from_env())
    }

    /// From explicit pairs, never the process environment.
    fn from_pairs<I, K, V>(pairs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::from_settings(&Settings::from_pairs(pairs))
    }
}

/// A snapshot of `(key, value)` settings, typically the process environment.
#[derive(Debug, Clone, Default)]
pub struct Settings(HashMap<String, String>);

impl Settings {
    /// Read the process environment (only the `BACKLESS_*` variables are kept).
    pub fn from_env() -> Self {
        Self::from_pairs(std::env::vars().filter(|(k, _)| k.starts_with("BACKLESS_")))
    }

    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The same settings with `key` set to `value` (the dev runner wires one service's bound
    /// address into another's configuration).
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0.insert(key.to_string(), value.into());
        self
    }

    /// The same settings with `key` set to `value` unless it is already set.
    #[must_use]
    pub fn with_default(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0
            .entry(key.to_string())
            .or_insert_with(|| value.into());
        self
    }

    /// A set, non-blank value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    pub fn string(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or(default).to_string()
    }

    pub fn parse<T>(&self, key: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| ConfigError::invalid(key, format!("cannot parse {v:?}: {e}"))),
        }
    }

    /// A duration: plain seconds (`30`, `0.5`) or with a unit suffix `ms`, `s`, `m`, `h`.
    pub fn duration(&self, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_duration(v).ok_or_else(|| {
                ConfigError::invalid(
                    key,
                    format!("cannot parse {v:?} as a duration (e.g. 30s, 500ms, 1h)"),
                )
            }),
        }
    }

    pub fn bool(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some("0" | "false" | "no" | "off") => Ok(false),
            Some(v) => Err(ConfigError::invalid(key, format!("{v:?} is not a boolean"))),
        }
    }
}

/// Parse `500ms`, `30s`, `30`, `5m`, `1h`, `1.5s`.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (v, 1.0)
    };
    let n: f64 = num.trim().parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(n * scale))
}

/// Where job records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// `sqlite://path?mode=rwc`, `sqlite::memory:` or `postgres://...`.
    pub url: String,
    pub max_connections: u32,
    /// Run pending migrations when a service starts (`BACKLESS_MIGRATE_ON_START`, default true).
    /// Off: the service refuses to start while migrations are pending; run `web migrate` (or
    /// `worker migrate`) before the rollout instead.
    pub migrate_on_start: bool,
}

/// Where images live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// `file://relative/or/absolute/dir`, `memory://`, `s3://bucket/prefix`, `gs://bucket/prefix`.
    pub url: String,
}

/// How progress events travel between worker and web.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsConfig {
    /// One process (or web and worker embedded together): a tokio broadcast bus.
    InProcess,
    /// Across processes through Redis pub/sub.
    Redis { url: String },
}

/// The Cloud Tasks queue jobs are pushed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TasksConfig {
    /// An emulator's base URL (`http://127.0.0.1:8123`, anonymous credentials); `None` = the real
    /// service with Application Default Credentials.
    pub endpoint: Option<String>,
    pub project: String,
    pub location: String,
    pub queue: String,
    /// Base URL of the worker; tasks POST to `{worker_url}/v1/tasks/remove-background`.
    pub worker_url: String,
    /// Service account that signs the OIDC token on each push (none = no token).
    pub service_account: Option<String>,
    /// Audience of that token (none = the task URL, as Cloud Tasks does).
    pub audience: Option<String>,
    /// Create the queue at start-up if it is missing (dev/emulator).
    pub ensure_queue: bool,
    /// Shared secret web puts on every task (header `X-BackLess-Push-Secret`) and the worker
    /// requires (`BACKLESS_PUSH_SECRET`): the fallback where OIDC tokens are not available.
    pub push_secret: Option<String>,
}

impl TasksConfig {
    /// `projects/{p}/locations/{l}`.
    pub fn location_path(&self) -> String {
        format!("projects/{}/locations/{}", self.project, self.location)
    }

    /// `projects/{p}/locations/{l}/queues/{q}`.
    pub fn queue_path(&self) -> String {
        format!("{}/queues/{}", self.location_path(), self.queue)
    }

    /// `{queue}/tasks/{job_id}`: deterministic, so a retried enqueue cannot duplicate.
    pub fn task_name(&self, job_id: &str) -> String {
        format!("{}/tasks/{}", self.queue_path(), job_id)
    }

    /// The push target.
    pub fn task_url(&self) -> String {
        format!(
            "{}/v1/tasks/remove-background",
            self.worker_url.trim_end_matches('/')
        )
    }
}

/// Job lifetime rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobsConfig {
    /// How long a finished job's files survive after its last watcher leaves.
    pub grace: Duration,
    /// Jobs nobody watches are swept this long after creation.
    pub unwatched_ttl: Duration,
    /// Most jobs one client may have queued or processing at once.
    pub max_live_per_client: u64,
    /// How long a worker owns a job after claiming it (a crashed worker's job is re-claimable after).
    pub claim_lease: Duration,
    /// Deliveries that may claim one job; the next one fails it with `too_many_attempts`, so a
    /// job that kills its worker cannot be redelivered into the same crash forever.
    pub max_attempts: u32,
}

/// Everything web and worker share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonConfig {
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub events: EventsConfig,
    pub tasks: TasksConfig,
    pub jobs: JobsConfig,
    pub limits: ImageLimits,
    /// How slowly a client may send a request (slowloris).
    pub http: HttpLimits,
}

impl Default for CommonConfig {
    fn default() -> Self {
        Self::from_settings(&Settings::default()).expect("defaults are valid")
    }
}

impl FromSettings for CommonConfig {
    fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let database = DatabaseConfig {
            url: s.string(
                "BACKLESS_DATABASE_URL",
                "sqlite://data/backless.db?mode=rwc",
            ),
            max_connections: s.parse("BACKLESS_DATABASE_MAX_CONNECTIONS", 10)?,
            migrate_on_start: s.bool("BACKLESS_MIGRATE_ON_START", true)?,
        };
        if !(database.url.starts_with("sqlite:")
            || database.url.starts_with("postgres://")
            || database.url.starts_with("postgresql://"))
        {
            return Err(ConfigError::invalid(
                "BACKLESS_DATABASE_URL",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        let storage = StorageConfig {
            url: s.string("BACKLESS_STORAGE_URL", "file://data/objects"),
        };
        let events = match s.get("BACKLESS_REDIS_URL") {
            None => EventsConfig::InProcess,
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                EventsConfig::Redis {
                    url: url.to_string(),
                }
            }
            Some(_) => {
                return Err(ConfigError::invalid(
                    "BACKLESS_REDIS_URL",
                    "must start with redis:// or rediss://",
                ));
            }
        };
        let tasks = TasksConfig {
            endpoint: s
                .get("BACKLESS_TASKS_ENDPOINT")
                .map(|v| v.trim_end_matches('/').to_string()),
            project: s.string("BACKLESS_TASKS_PROJECT", "dev"),
            location: s.string("BACKLESS_TASKS_LOCATION", "local"),
            queue: s.string("BACKLESS_TASKS_QUEUE", "backless"),
            worker_url: s.string("BACKLESS_WORKER_URL", "http://127.0.0.1:8081"),
            service_account: s.get("BACKLESS_TASKS_SERVICE_ACCOUNT").map(str::to_string),
            audience: s.get("BACKLESS_TASKS_AUDIENCE").map(str::to_string),
            ensure_queue: s.bool(
                "BACKLESS_TASKS_ENSURE_QUEUE",
                s.get("BACKLESS_TASKS_ENDPOINT").is_some(),
            )?,
            push_secret: s.get("BACKLESS_PUSH_SECRET").map(str::to_string),
        };
        if tasks.push_secret.as_ref().is_some_and(|p| p.len() < 16) {
            return Err(ConfigError::invalid(
                "BACKLESS_PUSH_SECRET",
                "must be at least 16 characters",
            ));
        }
        for (key, v) in [
            ("BACKLESS_TASKS_PROJECT", &tasks.project),
            ("BACKLESS_TASKS_LOCATION", &tasks.location),
            ("BACKLESS_TASKS_QUEUE", &tasks.queue),
        ] {
            if v.contains('/') {
                return Err(ConfigError::invalid(key, "may not contain '/'"));
            }
        }
        if !(tasks.worker_url.starts_with("http://") || tasks.worker_url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "BACKLESS_WORKER_URL",
                "must be an http:// or https:// URL",
            ));
        }
        let jobs = JobsConfig {
            grace: s.duration("BACKLESS_GRACE", Duration::from_secs(30))?,
            unwatched_ttl: s.duration("BACKLESS_UNWATCHED_TTL", Duration::from_secs(3600))?,
            max_live_per_client: s.parse("BACKLESS_MAX_LIVE_JOBS_PER_CLIENT", 5)?,
            claim_lease: s.duration("BACKLESS_CLAIM_LEASE", Duration::from_secs(600))?,
            max_attempts: s.parse("BACKLESS_MAX_ATTEMPTS", 5)?,
        };
        if jobs.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "BACKLESS_MAX_ATTEMPTS",
                "must be at least 1",
            ));
        }
        let d = ImageLimits::default();
        let limits = ImageLimits {
            max_bytes: s.parse("BACKLESS_MAX_UPLOAD_BYTES", d.max_bytes)?,
            max_pixels: s.parse("BACKLESS_MAX_PIXELS", d.max_pixels)?,
            max_side: s.parse("BACKLESS_MAX_SIDE", d.max_side)?,
            max_frames: s.parse("BACKLESS_MAX_FRAMES", d.max_frames)?,
            max_working_bytes: s.parse("BACKLESS_MAX_WORKING_BYTES", d.max_working_bytes)?,
        };
        let d = HttpLimits::default();
        let http = HttpLimits {
            header_timeout: s.duration("BACKLESS_HEADER_TIMEOUT", d.header_timeout)?,
            body_timeout: s.duration("BACKLESS_BODY_TIMEOUT", d.body_timeout)?,
            body_min_rate: s.parse("BACKLESS_BODY_MIN_RATE", d.body_min_rate)?,
            max_connections: s.parse("BACKLESS_MAX_CONNECTIONS", d.max_connections)?,
        };
        Ok(Self {
            database,
            storage,
            events,
            tasks,
            jobs,
            limits,
            http,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_locally() {
        let c = CommonConfig::from_pairs(Vec::<(String, String)>::new()).unwrap();
        assert_eq!(c.database.url, "sqlite://data/backless.db?mode=rwc");
        assert_eq!(c.storage.url, "file://data/objects");
        assert_eq!(c.events, EventsConfig::InProcess);
        assert_eq!(c.tasks.endpoint, None);
        assert!(!c.tasks.ensure_queue);
        assert_eq!(
            c.tasks.queue_path(),
            "projects/dev/locations/local/queues/backless"
        );
        assert_eq!(
            c.tasks.task_name("abc"),
            "projects/dev/locations/local/queues/backless/tasks/abc"
        );
        assert_eq!(
            c.tasks.task_url(),
            "http://127.0.0.1:8081/v1/tasks/remove-background"
        );
        assert_eq!(c.jobs.grace, Duration::from_secs(30));
        assert_eq!(c.jobs.unwatched_ttl, Duration::from_secs(3600));
        assert_eq!(c.limits, ImageLimits::default());
        assert_eq!(c.jobs.max_attempts, 5);
    }

    #[test]
    fn overrides_and_errors() {
        let c = CommonConfig::from_pairs([
            ("BACKLESS_REDIS_URL", "redis://127.0.0.1:6379"),
            ("BACKLESS_TASKS_ENDPOINT", "http://127.0.0.1:8123/"),
            ("BACKLESS_WORKER_URL", "https://worker.example/"),
            ("BACKLESS_GRACE", "250ms"),
            ("BACKLESS_UNWATCHED_TTL", "2m"),
            ("BACKLESS_MAX_UPLOAD_BYTES", "1000"),
            (
                "BACKLESS_TASKS_SERVICE_ACCOUNT",
                "sa@p.iam.gserviceaccount.com",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.events,
            EventsConfig::Redis {
                url: "redis://127.0.0.1:6379".into()
            }
        );
        assert_eq!(c.tasks.endpoint.as_deref(), Some("http://127.0.0.1:8123"));
        assert!(c.tasks.ensure_queue);
        assert_eq!(
            c.tasks.task_url(),
            "https://worker.example/v1/tasks/remove-background"
        );
        assert_eq!(c.jobs.grace, Duration::from_millis(250));
        assert_eq!(c.jobs.unwatched_ttl, Duration::from_secs(120));
        assert_eq!(c.limits.max_bytes, 1000);
        assert_eq!(
            c.tasks.service_account.as_deref(),
            Some("sa@p.iam.gserviceaccount.com")
        );

        let err = CommonConfig::from_pairs([("BACKLESS_GRACE", "soon")]).unwrap_err();
        assert!(err.to_string().contains("BACKLESS_GRACE"), "{err}");
        assert!(CommonConfig::from_pairs([("BACKLESS_DATABASE_URL", "mysql://x")]).is_err());
        assert!(CommonConfig::from_pairs([("BACKLESS_REDIS_URL", "http://x")]).is_err());
        assert!(CommonConfig::from_pairs([("BACKLESS_TASKS_QUEUE", "a/b")]).is_err());
        assert!(CommonConfig::from_pairs([("BACKLESS_MAX_ATTEMPTS", "0")]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("x"), None);
    }
}
