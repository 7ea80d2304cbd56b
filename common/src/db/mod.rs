//! Job records (sea-orm): SQLite by default, Postgres by URL.
//!
//! Every state change the worker makes is one conditional `UPDATE`, so two concurrent deliveries of
//! the same task cannot both own a job: [`Db::try_claim`] moves `queued` (or `processing` whose lease
//! has run out) to `processing` and reports whether this caller won.

pub mod api_key;
pub mod job;
pub mod migration;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectOptions, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use sea_orm_migration::MigratorTrait;

pub use crate::job::{is_valid_job_id, new_job_id};
pub use api_key::ApiKey;
pub use job::{JobOptions, JobState, OutputFormat};
/// A job record.
pub type Job = job::Model;

use crate::config::DatabaseConfig;
use crate::storage;

/// Database failures.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error(
        "{} database migration(s) pending ({}) and BACKLESS_MIGRATE_ON_START is off: \
         run `web migrate` first",
        .0.len(),
        .0.join(", ")
    )]
    Pending(Vec<String>),
    /// The record conflicts with one that exists.
    #[error("{0}")]
    Conflict(String),
    #[error("cannot prepare the database directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
}

/// A new job as web records it.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub owner: String,
    pub name: String,
    pub options: JobOptions,
    pub original_content_type: String,
    pub width: u32,
    pub height: u32,
    /// The uploader's address prefix, for per-address quotas.
    pub client_addr: Option<String>,
}

/// What one client address holds ([`Db::usage_by_addr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrUsage {
    pub live_jobs: u64,
    pub stored_bytes: u64,
}

/// `migrate` subcommands (web and worker): connect, apply what is pending, close. Returns the
/// names applied.
pub async fn migrate(cfg: &DatabaseConfig) -> Result<Vec<String>, DbError> {
    let db = Db::open(cfg).await?;
    let applied = db.migrate().await;
    let _ = db.conn.close().await;
    applied
}

/// Print what `migrate` did, one line per migration, to stdout.
pub fn report_migrations(applied: &[String]) {
    if applied.is_empty() {
        println!("database is up to date");
    }
    for name in applied {
        println!("applied {name}");
    }
}

/// Called with a query's kind (the [`Db`] method's name) before each query, for metrics.
pub type QueryObserver = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The job table.
#[derive(Clone)]
pub struct Db {
    conn: DatabaseConnection,
    observer: Option<QueryObserver>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// Connect and, as configured, run pending migrations or refuse to start while any are
    /// pending.
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Self, DbError> {
        let db = Self::open(cfg).await?;
        if cfg.migrate_on_start {
            db.migrate().await?;
        } else {
            let pending = db.pending_migrations().await?;
            if !pending.is_empty() {
                return Err(DbError::Pending(pending));
            }
        }
        Ok(db)
    }

    /// Run the pending migrations; returns their names, in order (empty: already up to date).
    /// Safe to run while services are up and from several processes at once.
    pub async fn migrate(&self) -> Result<Vec<String>, DbError> {
        let pending = self.pending_migrations().await?;
        migration::Migrator::up(&self.conn, None).await?;
        Ok(pending)
    }

    /// Names of the migrations not yet applied.
    pub async fn pending_migrations(&self) -> Result<Vec<String>, DbError> {
        Ok(migration::Migrator::get_pending_migrations(&self.conn)
            .await?
            .iter()
            .map(|m| m.name().to_string())
            .collect())
    }

    /// Connect (creating a SQLite file's directory if needed), without migrating.
    pub async fn open(cfg: &DatabaseConfig) -> Result<Self, DbError> {
        if let Some(path) = sqlite_file_path(&cfg.url)
            && let Some(parent) = std::path::Path::new(&path).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|source| DbError::Dir {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let mut opts = ConnectOptions::new(cfg.url.clone());
        opts.max_connections(cfg.max_connections)
            .connect_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        if cfg.url.starts_with("sqlite::memory:") || cfg.url.contains("mode=memory") {
            // Each connection to an in-memory SQLite database is a separate database.
            opts.max_connections(1).min_connections(1);
        }
        let conn = sea_orm::Database::connect(opts).await?;
        Ok(Self {
            conn,
            observer: None,
        })
    }

    /// The same database, reporting each query's kind to `observer` (web counts them).
    pub fn observed(mut self, observer: QueryObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    fn note(&self, kind: &'static str) {
        if let Some(o) = &self.observer {
            o(kind);
        }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.note("ping");
        Ok(self.conn.ping().await?)
    }

    /// Record a new job, before its original is stored ([`Db::mark_stored`] follows).
    pub async fn insert(&self, new: NewJob) -> Result<Job, DbError> {
        self.note("insert");
        let now = Utc::now();
        let model = job::ActiveModel {
            original_key: Set(storage::original_key(&new.id)),
            id: Set(new.id),
            owner: Set(new.owner),
            name: Set(new.name),
            state: Set(JobState::Queued),
            error_code: Set(None),
            error_message: Set(None),
            options: Set(new.options),
            original_content_type: Set(new.original_content_type),
            result_key: Set(None),
            result_content_type: Set(None),
            width: Set(i32::try_from(new.width).unwrap_or(i32::MAX)),
            height: Set(i32::try_from(new.height).unwrap_or(i32::MAX)),
            enqueued: Set(false),
            attempts: Set(0),
            claimed_until: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            finished_at: Set(None),
            original_bytes: Set(None),
            client_addr: Set(new.client_addr),
        };
        Ok(model.insert(&self.conn).await?)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Job>, DbError> {
        self.note("get");
        Ok(job::Entity::find_by_id(id.to_string())
            .one(&self.conn)
            .await?)
    }

    /// The job if `owner` created it (anyone else sees nothing).
    pub async fn get_owned(&self, id: &str, owner: &str) -> Result<Option<Job>, DbError> {
        self.note("get_owned");
        Ok(job::Entity::find_by_id(id.to_string())
            .filter(job::Column::Owner.eq(owner))
            .one(&self.conn)
            .await?)
    }

    /// The jobs among `ids` that exist, in one query (web's stream watcher reads every watched job
    /// this way).
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Job>, DbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.note("get_many");
        Ok(job::Entity::find()
            .filter(job::Column::Id.is_in(ids.iter().cloned()))
            .all(&self.conn)
            .await?)
    }

    /// The original is stored: `bytes` long. `false` if the row is gone.
    pub async fn mark_stored(&self, id: &str, bytes: u64) -> Result<bool, DbError> {
        self.note("mark_stored");
        let res = job::Entity::update_many()
            .col_expr(
                job::Column::OriginalBytes,
                Expr::value(i64::try_from(bytes).unwrap_or(i64::MAX)),
            )
            .filter(job::Column::Id.eq(id))
            .exec(&self.conn)
            .await?;
        Ok(res.rows_affected > 0)
    }

    /// Whether the row exists (tells a job deleted from one another delivery finished).
    pub async fn exists(&self, id: &str) -> Result<bool, DbError> {
        self.note("exists");
        Ok(job::Entity::find_by_id(id.to_string())
            .count(&self.conn)
            .await?
            > 0)
    }

    /// The owner's jobs whose upload completed, newest first.
    pub async fn list_by_owner(&self, owner: &str) -> Result<Vec<Job>, DbError> {
        self.note("list_by_owner");
        Ok(job::Entity::find()
            .filter(job::Column::Owner.eq(owner))
            .filter(job::Column::OriginalBytes.is_not_null())
            .order_by_desc(job::Column::CreatedAt)
            .all(&self.conn)
            .await?)
    }

    /// How many of the owner's jobs are queued or processing.
    pub async fn count_live_by_owner(&self, owner: &str) -> Result<u64, DbError> {
        self.note("count_live_by_owner");
        Ok(job::Entity::find()
            .filter(job::Column::Owner.eq(owner))
            .filter(job::Column::State.is_in([JobState::Queued, JobState::Processing]))
            .count(&self.conn)
            .await?)
    }

    /// What jobs from one address hold now: how many are queued or processing, and the bytes of
    /// every original still stored (live or finished, until deleted).
    pub async fn usage_by_addr(&self, addr: &str) -> Result<AddrUsage, DbError> {
        self.note("usage_by_addr");
        let live = job::Entity::find()
            .filter(job::Column::ClientAddr.eq(addr))
            .filter(job::Column::State.is_in([JobState::Queued, JobState::Processing]))
            .count(&self.conn)
            .await?;
        let stored: Option<i64> = job::Entity::find()
            .select_only()
            // SUM of a BIGINT is NUMERIC on PostgreSQL: cast back.
            .column_as(Expr::cust("CAST(SUM(original_bytes) AS BIGINT)"), "stored")
            .filter(job::Column::ClientAddr.eq(addr))
            .into_tuple::<Option<i64>>()
            .one(&self.conn)
            .await?
            .flatten();
        Ok(AddrUsage {
            live_jobs: live,
            stored_bytes: stored.map_or(0, |b| u64::try_from(b).unwrap_or(0)),
        })
    }

    /// Rename the owner's job; `None` if it is not theirs.
    pub async fn rename(&self, id: &str, owner: &str, name: &str) -> Result<Option<Job>, DbError> {
        self.note("rename");
        let res = job::Entity::update_many()
            .col_expr(job::Column::Name, Expr::value(name))
            .col_expr(job::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(job::Column::Id.eq(id))
            .filter(job::Column::Owner.eq(owner))
            .exec(&self.conn)
            .await?;
        if res.rows_affected == 0 {
            return Ok(None);
        }
        self.get(id).await
    }

    /// Delete the record; whether it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, DbError> {
        self.note("delete");
        let res = job::Entity::delete_by_id(id.to_string())
            .exec(&self.conn)
            .await?;
        Ok(res.rows_affected > 0)
    }

    /// Outbox: the task for this job exists.
    pub async fn mark_enqueued(&self, id: &str) -> Result<bool, DbError> {
        self.note("mark_enqueued");
        let res = job::Entity::update_many()
            .col_expr(job::Column::Enqueued, Expr::value(true))
            .filter(job::Column::Id.eq(id))
            .exec(&self.conn)
            .await?;
        Ok(res.rows_affected > 0)
    }

    /// Outbox: queued jobs whose original is stored and whose task was never created, oldest
    /// first.
    pub async fn pending_enqueue(&self, limit: u64) -> Result<Vec<Job>, DbError> {
        self.note("pending_enqueue");
        Ok(job::Entity::find()
            .filter(job::Column::Enqueued.eq(false))
            .filter(job::Column::OriginalBytes.is_not_null())
            .filter(job::Column::State.eq(JobState::Queued))
            .order_by_asc(job::Column::CreatedAt)
            .limit(limit)
            .all(&self.conn)
            .await?)
    }

    /// Atomically take the job for processing: `queued` -> `processing`, or `processing` whose lease
    /// expired -> `processing` again. `true` means this caller owns it until `now + lease`; `false`
    /// means it is missing, final, or someone else holds a live lease (do not run the model).
    pub async fn try_claim(&self, id: &str, lease: Duration) -> Result<bool, DbError> {
        self.note("try_claim");
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let res = job::Entity::update_many()
            .col_expr(job::Column::State, Expr::value(JobState::Processing))
            .col_expr(job::Column::ClaimedUntil, Expr::value(until))
            .col_expr(
                job::Column::Attempts,
                Expr::col(job::Column::Attempts).add(1),
            )
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(job::Column::Id.eq(id))
            .filter(
                Condition::any()
                    .add(job::Column::State.eq(JobState::Queued))
                    .add(
                        Condition::all()
                            .add(job::Column::State.eq(JobState::Processing))
                            .add(
                                Condition::any()
                                    .add(job::Column::ClaimedUntil.is_null())
                                    .add(job::Column::ClaimedUntil.lt(now)),
                            ),
                    ),
            )
            .exec(&self.conn)
            .await?;
        Ok(res.rows_affected == 1)
    }

    /// Give a claimed job back (`processing` -> `queued`, lease cleared) after a transient failure,
    /// so the queue's retry can claim it at once instead of waiting for the lease to run out. The
    /// claim's attempt is given back too: `attempts` counts deliveries that died holding the job.
    pub async fn release(&self, id: &str) -> Result<bool, DbError> {
        self.note("release");
        let res = job::Entity::update_many()
            .col_expr(job::Column::State, Expr::value(JobState::Queued))
            .col_expr(
                job::Column::Attempts,
                Expr::col(job::Column::Attempts).sub(1),
            )
            .col_expr(
                job::Column::ClaimedUntil,
                Expr::value(Option::<chrono::DateTime<Utc>>::None),
            )
            .col_expr(job::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(job::Column::Id.eq(id))
            .filter(job::Column::State.eq(JobState::Processing))
            .exec(&self.conn)
            .await?;
        Ok(res.rows_affected == 1)
    }

    /// `processing` -> `done` with the stored result. `false` if the job is gone or not processing.
    pub async fn mark_done(
        &self,
        id: &str,
        result_key: &str,
        result_content_type: &str,
    ) -> Result<bool, DbError> {
        self.note("mark_done");
        let now = Utc::now();
        let res = job::Entity::update_many()
            .col_expr(job::Column::State, Expr::value(JobState::Done))
            .col_expr(job::Column::ResultKey, Expr::value(result_key))
            .col_expr(
                job::Column::ResultContentType,
                Expr::value(result_content_type),
            )
            .col_expr(
                job::Column::ClaimedUntil,
                Expr::value(Option::<chrono::DateTime<Utc>>::None),
            )
            .col_expr(job::Column::FinishedAt, Expr::value(now))
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(job::Column::Id.eq(id))
            .filter(job::Column::State.eq(JobState::Processing))
            .exec(&self.conn)
            .await?;
        Ok(res.rows_affected == 1)
    }

    /// Any non-final state -> `failed` with a stable code and a message safe to show the user.
    /// `false` if the job is gone or already final.
    pub async fn mark_failed(&self, id: &str, code: &str, message: &str) -> Result<bool, DbError> {
        self.note("mark_failed");
        let now = Utc::now();
        let res = job::Entity::update_many()
            .col_expr(job::Column::State, Expr::value(JobState::Failed))
            .col_expr(job::Column::ErrorCode, Expr::value(code))
            .col_expr(job::Column::ErrorMessage, Expr::value(message))
            .col_expr(
                job::Column::ClaimedUntil,
                Expr::value(Option::<chrono::DateTime<Utc>>::None),
            )
            .col_expr(job::Column::FinishedAt, Expr::value(now))
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(job::Column::Id.eq(id))
            .filter(job::Column::State.is_in([JobState::Queued, JobState::Processing]))
            .exec(&self.conn)
            .await?;
        Ok(res.rows_affected == 1)
    }

    /// Jobs created before `cutoff`, oldest first, `limit` at a time: pass the last job of a page
    /// as `after` for the next (for the unwatched-job sweep, which pages through all of them).
    pub async fn created_before(
        &self,
        cutoff: chrono::DateTime<Utc>,
        after: Option<&Job>,
        limit: u64,
    ) -> Result<Vec<Job>, DbError> {
        self.note("created_before");
        let mut q = job::Entity::find().filter(job::Column::CreatedAt.lt(cutoff));
        if let Some(last) = after {
            q = q.filter(
                Condition::any()
                    .add(job::Column::CreatedAt.gt(last.created_at))
                    .add(
                        Condition::all()
                            .add(job::Column::CreatedAt.eq(last.created_at))
                            .add(job::Column::Id.gt(last.id.clone())),
                    ),
            );
        }
        Ok(q.order_by_asc(job::Column::CreatedAt)
            .order_by_asc(job::Column::Id)
            .limit(limit)
            .all(&self.conn)
            .await?)
    }

    /// Every job id (tests and diagnostics).
    pub async fn count(&self) -> Result<u64, DbError> {
        self.note("count");
        Ok(job::Entity::find().count(&self.conn).await?)
    }

    /// How many jobs are in `state` (metrics).
    pub async fn count_in_state(&self, state: JobState) -> Result<u64, DbError> {
        self.note("count_in_state");
        Ok(job::Entity::find()
            .filter(job::Column::State.eq(state))
            .count(&self.conn)
            .await?)
    }
}

/// The file behind a `sqlite://path?...` URL, if it names one.
fn sqlite_file_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path.starts_with(":memory:") || url.contains("mode=memory") {
        return None;
    }
    Some(path.to_string())
}

/// API keys and their daily credits.
impl Db {
    /// Record a key (its hash only). Fails when a key that is not revoked has this name.
    pub async fn insert_key(
        &self,
        name: &str,
        hash: &str,
        quota_per_day: Option<u64>,
    ) -> Result<ApiKey, DbError> {
        use api_key::key;
        self.note("insert_key");
        let taken = key::Entity::find()
            .filter(key::Column::Name.eq(name))
            .filter(key::Column::RevokedAt.is_null())
            .count(&self.conn)
            .await?;
        if taken > 0 {
            return Err(DbError::Conflict(format!("a key named {name:?} exists")));
        }
        let model = key::ActiveModel {
            id: Set(hex::encode(rand::random::<[u8; 16]>())),
            name: Set(name.to_string()),
            hash: Set(hash.to_string()),
            quota_per_day: Set(quota_per_day.map(|q| i64::try_from(q).unwrap_or(i64::MAX))),
            created_at: Set(Utc::now()),
            revoked_at: Set(None),
        };
        Ok(model.insert(&self.conn).await?)
    }

    /// The key with this hash, unless revoked.
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, DbError> {
        use api_key::key;
        self.note("key_by_hash");
        Ok(key::Entity::find()
            .filter(key::Column::Hash.eq(hash))
            .filter(key::Column::RevokedAt.is_null())
            .one(&self.conn)
            .await?)
    }

    /// Every key, revoked ones included, oldest first.
    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, DbError> {
        use api_key::key;
        self.note("list_keys");
        Ok(key::Entity::find()
            .order_by_asc(key::Column::CreatedAt)
            .all(&self.conn)
            .await?)
    }

    /// Revoke the live key named `name`; whether there was one.
    pub async fn revoke_key(&self, name: &str) -> Result<bool, DbError> {
        use api_key::key;
        self.note("revoke_key");
        let res = key::Entity::update_many()
            .col_expr(key::Column::RevokedAt, Expr::value(Some(Utc::now())))
            .filter(key::Column::Name.eq(name))
            .filter(key::Column::RevokedAt.is_null())
            .exec(&self.conn)
            .await?;
        Ok(res.rows_affected > 0)
    }

    /// Spend `credits` of key `key_id` on `day` if that keeps the day within `quota` (`None`:
    /// no quota); whether they were spent. One conditional `UPDATE`, so concurrent requests
    /// cannot overspend together.
    pub async fn spend_credits(
        &self,
        key_id: &str,
        day: &str,
        credits: u64,
        quota: Option<u64>,
    ) -> Result<bool, DbError> {
        use api_key::usage;
        self.note("spend_credits");
        let n = i64::try_from(credits).unwrap_or(i64::MAX);
        usage::Entity::insert(usage::ActiveModel {
            key_id: Set(key_id.to_string()),
            day: Set(day.to_string()),
            credits: Set(0),
        })
        .on_conflict_do_nothing()
        .exec_without_returning(&self.conn)
        .await?;
        let mut update = usage::Entity::update_many()
            .col_expr(
                usage::Column::Credits,
                Expr::col(usage::Column::Credits).add(n),
            )
            .filter(usage::Column::KeyId.eq(key_id))
            .filter(usage::Column::Day.eq(day));
        if let Some(q) = quota {
            let room = i64::try_from(q).unwrap_or(i64::MAX).saturating_sub(n);
            update = update.filter(usage::Column::Credits.lte(room));
        }
        Ok(update.exec(&self.conn).await?.rows_affected > 0)
    }

    /// Give back credits spent on a request that produced nothing.
    pub async fn refund_credits(
        &self,
        key_id: &str,
        day: &str,
        credits: u64,
    ) -> Result<(), DbError> {
        use api_key::usage;
        self.note("refund_credits");
        let n = i64::try_from(credits).unwrap_or(i64::MAX);
        usage::Entity::update_many()
            .col_expr(
                usage::Column::Credits,
                Expr::col(usage::Column::Credits).sub(n),
            )
            .filter(usage::Column::KeyId.eq(key_id))
            .filter(usage::Column::Day.eq(day))
            .filter(usage::Column::Credits.gte(n))
            .exec(&self.conn)
            .await?;
        Ok(())
    }

    /// Credits key `key_id` has spent on `day`.
    pub async fn credits_spent(&self, key_id: &str, day: &str) -> Result<u64, DbError> {
        use api_key::usage;
        self.note("credits_spent");
        let row = usage::Entity::find_by_id((key_id.to_string(), day.to_string()))
            .one(&self.conn)
            .await?;
        Ok(row.map_or(0, |r| u64::try_from(r.credits).unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn memory_db() -> Db {
        Db::connect(&DatabaseConfig {
            url: "sqlite::memory:".into(),
            max_connections: 1,
            migrate_on_start: true,
        })
        .await
        .unwrap()
    }

    fn new_job(owner: &str) -> NewJob {
        NewJob {
            id: new_job_id(),
            owner: owner.into(),
            name: "cat".into(),
            options: JobOptions::default(),
            original_content_type: "image/png".into(),
            width: 10,
            height: 20,
            client_addr: None,
        }
    }

    #[tokio::test]
    async fn keys_are_stored_by_hash_and_credits_never_overspent() {
        check_keys(memory_db().await).await;
    }

    #[tokio::test]
    async fn postgres_keys_and_concurrent_credits() {
        let db = postgres_db(8).await;
        check_keys(db.clone()).await;
        // 20 requests at once against a quota of 5: exactly 5 are charged.
        let key = db
            .insert_key("race", &"12".repeat(32), Some(5))
            .await
            .unwrap();
        let spent = futures::future::join_all((0..20).map(|_| {
            let db = db.clone();
            let id = key.id.clone();
            async move {
                db.spend_credits(&id, "2026-11-29", 1, Some(5))
                    .await
                    .unwrap()
            }
        }))
        .await;
        assert_eq!(spent.iter().filter(|s| **s).count(), 5);
        assert_eq!(db.credits_spent(&key.id, "2026-11-29").await.unwrap(), 5);
    }

    async fn check_keys(db: Db) {
        let k = db
            .insert_key("shop", "ab".repeat(32).as_str(), Some(3))
            .await
            .unwrap();
        assert!(matches!(
            db.insert_key("shop", "cd".repeat(32).as_str(), None).await,
            Err(DbError::Conflict(_))
        ));
        assert_eq!(
            db.key_by_hash(&"ab".repeat(32)).await.unwrap(),
            Some(k.clone())
        );
        let day = "2026-11-29";
        assert!(db.spend_credits(&k.id, day, 2, Some(3)).await.unwrap());
        assert!(!db.spend_credits(&k.id, day, 2, Some(3)).await.unwrap());
        assert!(db.spend_credits(&k.id, day, 1, Some(3)).await.unwrap());
        assert!(!db.spend_credits(&k.id, day, 1, Some(3)).await.unwrap());
        assert_eq!(db.credits_spent(&k.id, day).await.unwrap(), 3);
        // Another day is another budget; a refund gives room back.
        assert!(
            db.spend_credits(&k.id, "2026-11-30", 3, Some(3))
                .await
                .unwrap()
        );
        db.refund_credits(&k.id, day, 1).await.unwrap();
        assert_eq!(db.credits_spent(&k.id, day).await.unwrap(), 2);
        // No quota: any amount.
        assert!(db.spend_credits("env:ci", day, 1000, None).await.unwrap());
        // Revoked: gone for lookups, and the name is free again.
        assert!(db.revoke_key("shop").await.unwrap());
        assert!(!db.revoke_key("shop").await.unwrap());
        assert_eq!(db.key_by_hash(&"ab".repeat(32)).await.unwrap(), None);
        db.insert_key("shop", "ef".repeat(32).as_str(), None)
            .await
            .unwrap();
        assert_eq!(db.list_keys().await.unwrap().len(), 2);
    }

    #[test]
    fn ids_are_random_hex() {
        let a = new_job_id();
        assert!(is_valid_job_id(&a));
        assert_ne!(a, new_job_id());
        assert!(!is_valid_job_id("../etc/passwd"));
        assert!(!is_valid_job_id(&a.to_uppercase()));
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_file_path("sqlite://data/backless.db?mode=rwc").as_deref(),
            Some("data/backless.db")
        );
        assert_eq!(sqlite_file_path("sqlite::memory:"), None);
        assert_eq!(sqlite_file_path("postgres://x/y"), None);
    }

    async fn postgres_db(max_connections: u32) -> Db {
        Db::connect(&DatabaseConfig {
            url: crate::testing::postgres_database().await,
            max_connections,
            migrate_on_start: true,
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn lifecycle_claim_done_and_delete() {
        check_lifecycle(memory_db().await).await;
    }

    #[tokio::test]
    async fn postgres_lifecycle_claim_done_and_delete() {
        check_lifecycle(postgres_db(2).await).await;
    }

    async fn check_lifecycle(db: Db) {
        let job = db.insert(new_job("alice")).await.unwrap();
        assert_eq!(job.state, JobState::Queued);
        assert!(!job.enqueued);
        assert_eq!(job.original_key, format!("originals/{}", job.id));

        assert!(
            db.pending_enqueue(10).await.unwrap().is_empty(),
            "the outbox waits for the original"
        );
        assert!(db.list_by_owner("alice").await.unwrap().is_empty());
        assert!(db.mark_stored(&job.id, 1234).await.unwrap());
        assert_eq!(db.pending_enqueue(10).await.unwrap().len(), 1);
        assert!(db.mark_enqueued(&job.id).await.unwrap());
        assert!(db.pending_enqueue(10).await.unwrap().is_empty());

        assert!(db.get_owned(&job.id, "bob").await.unwrap().is_none());
        assert_eq!(db.count_live_by_owner("alice").await.unwrap(), 1);
        let many = db.get_many(&[new_job_id(), job.id.clone()]).await.unwrap();
        assert_eq!(many.len(), 1, "only the jobs that exist");
        assert_eq!(many[0].id, job.id);

        // Two deliveries: only the first owns the job.
        assert!(
            db.try_claim(&job.id, Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert!(
            !db.try_claim(&job.id, Duration::from_secs(60))
                .await
                .unwrap()
        );
        let j = db.get(&job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Processing);
        assert_eq!(j.attempts, 1);

        assert!(
            db.mark_done(&job.id, "results/x", "image/png")
                .await
                .unwrap()
        );
        let j = db.get(&job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Done);
        assert_eq!(j.result_key.as_deref(), Some("results/x"));
        assert!(j.finished_at.is_some());
        // Final jobs cannot be claimed or failed again.
        assert!(
            !db.try_claim(&job.id, Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert!(!db.mark_failed(&job.id, "x", "y").await.unwrap());
        assert_eq!(db.count_live_by_owner("alice").await.unwrap(), 0);

        let renamed = db.rename(&job.id, "alice", "dog").await.unwrap().unwrap();
        assert_eq!(renamed.name, "dog");
        assert!(db.rename(&job.id, "bob", "evil").await.unwrap().is_none());

        assert_eq!(db.list_by_owner("alice").await.unwrap().len(), 1);
        assert!(db.exists(&job.id).await.unwrap());
        let mut from_addr = new_job("carol");
        from_addr.client_addr = Some("2001:db8::/64".into());
        let other = db.insert(from_addr).await.unwrap();
        assert!(db.mark_stored(&other.id, 5000).await.unwrap());
        let usage = db.usage_by_addr("2001:db8::/64").await.unwrap();
        assert_eq!((usage.live_jobs, usage.stored_bytes), (1, 5000));
        assert!(db.mark_failed(&other.id, "x", "y").await.unwrap());
        let usage = db.usage_by_addr("2001:db8::/64").await.unwrap();
        assert_eq!(
            (usage.live_jobs, usage.stored_bytes),
            (0, 5000),
            "a finished job's original counts until it is deleted"
        );
        assert!(db.delete(&other.id).await.unwrap());
        let none = db.usage_by_addr("192.0.2.1").await.unwrap();
        assert_eq!((none.live_jobs, none.stored_bytes), (0, 0));
        assert!(db.delete(&job.id).await.unwrap());
        assert!(!db.delete(&job.id).await.unwrap());
        assert!(!db.exists(&job.id).await.unwrap());
        assert_eq!(db.count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn pages_of_old_jobs_cover_every_one_once() {
        check_pages(memory_db().await).await;
    }

    #[tokio::test]
    async fn postgres_pages_of_old_jobs_cover_every_one_once() {
        check_pages(postgres_db(2).await).await;
    }

    async fn check_pages(db: Db) {
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(db.insert(new_job("alice")).await.unwrap().id);
        }
        let cutoff = Utc::now() + chrono::Duration::seconds(1);
        let mut seen = Vec::new();
        let mut after: Option<Job> = None;
        loop {
            let page = db.created_before(cutoff, after.as_ref(), 2).await.unwrap();
            assert!(page.len() <= 2);
            seen.extend(page.iter().map(|j| j.id.clone()));
            match page.last() {
                Some(last) if page.len() == 2 => after = Some(last.clone()),
                _ => break,
            }
        }
        let (mut seen_sorted, mut ids) = (seen.clone(), ids);
        seen_sorted.sort();
        seen_sorted.dedup();
        ids.sort();
        assert_eq!(seen.len(), 5, "no job twice");
        assert_eq!(seen_sorted, ids, "every job once");
        let past = Utc::now() - chrono::Duration::hours(1);
        assert!(db.created_before(past, None, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_observer_is_told_each_query_by_kind() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let db = memory_db()
            .await
            .observed(Arc::new(move |kind| log.lock().unwrap().push(kind)));
        let job = db.insert(new_job("alice")).await.unwrap();
        db.get_many(&[]).await.unwrap();
        db.get_many(std::slice::from_ref(&job.id)).await.unwrap();
        db.rename(&job.id, "alice", "dog").await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            ["insert", "get_many", "rename", "get"],
            "an empty id list costs no query; a rename reads the job back"
        );
    }

    #[tokio::test]
    async fn expired_lease_can_be_reclaimed_and_failed() {
        check_expired_lease(memory_db().await).await;
    }

    #[tokio::test]
    async fn postgres_expired_lease_can_be_reclaimed_and_failed() {
        check_expired_lease(postgres_db(2).await).await;
    }

    async fn check_expired_lease(db: Db) {
        let job = db.insert(new_job("alice")).await.unwrap();
        assert!(db.try_claim(&job.id, Duration::ZERO).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            db.try_claim(&job.id, Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert_eq!(db.get(&job.id).await.unwrap().unwrap().attempts, 2);
        // A delivery that gives the job back does not count against it.
        assert!(db.release(&job.id).await.unwrap());
        assert_eq!(db.get(&job.id).await.unwrap().unwrap().attempts, 1);
        assert!(!db.release(&job.id).await.unwrap());
        assert!(
            db.try_claim(&job.id, Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert_eq!(db.get(&job.id).await.unwrap().unwrap().attempts, 2);
        assert!(
            db.mark_failed(&job.id, "decode_failed", "bad image")
                .await
                .unwrap()
        );
        let j = db.get(&job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(j.error_code.as_deref(), Some("decode_failed"));
        assert!(!db.mark_done(&job.id, "r", "image/png").await.unwrap());
    }

    /// With migration on start off, a fresh database is refused until `migrate` ran; `migrate`
    /// applies everything once and then has nothing left to do.
    async fn check_migrate_before_start(url: String) {
        let cfg = DatabaseConfig {
            url,
            max_connections: 2,
            migrate_on_start: false,
        };
        let err = Db::connect(&cfg).await.unwrap_err();
        assert!(
            matches!(&err, DbError::Pending(p) if !p.is_empty()),
            "{err}"
        );
        assert!(err.to_string().contains("web migrate"), "{err}");
        let db = Db::open(&cfg).await.unwrap();
        let applied = db.migrate().await.unwrap();
        assert!(!applied.is_empty());
        assert!(db.migrate().await.unwrap().is_empty());
        let db = Db::connect(&cfg).await.unwrap();
        assert_eq!(db.count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn migrate_before_start_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        check_migrate_before_start(format!("sqlite://{}/m.db?mode=rwc", dir.path().display()))
            .await;
    }

    #[tokio::test]
    async fn postgres_migrate_before_start() {
        check_migrate_before_start(crate::testing::postgres_database().await).await;
    }

    #[tokio::test]
    async fn concurrent_claims_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let db = Db::connect(&DatabaseConfig {
            url,
            max_connections: 4,
            migrate_on_start: true,
        })
        .await
        .unwrap();
        check_one_claim_wins(db).await;
    }

    #[tokio::test]
    async fn postgres_concurrent_claims_have_one_winner() {
        check_one_claim_wins(postgres_db(8).await).await;
    }

    async fn check_one_claim_wins(db: Db) {
        let job = db.insert(new_job("alice")).await.unwrap();
        let mut handles = Vec::new();
        for _ in 0..8 {
            let db = db.clone();
            let id = job.id.clone();
            handles.push(tokio::spawn(async move {
                db.try_claim(&id, Duration::from_secs(60)).await.unwrap()
            }));
        }
        let mut wins = 0;
        for h in handles {
            wins += usize::from(h.await.unwrap());
        }
        assert_eq!(wins, 1);
    }
}
