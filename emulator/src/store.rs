//! Where queues, queued tasks and tombstones live between restarts: nowhere (the
//! in-memory default: the engine's own maps are the state) or a SQLite file.

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::ApiError;
use crate::model::{epoch_nanos, pb};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt record {name}: {source}")]
    Decode {
        name: String,
        source: prost::DecodeError,
    },
}

/// A task as persisted: the resource plus the counters the dispatch headers need.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTask {
    pub queue: String,
    pub task: pb::Task,
    /// Earlier attempts that got a response other than 5xx.
    pub execution_count: i32,
    /// The HTTP status of the previous attempt (504 after a timeout).
    pub previous_response: Option<u16>,
}

/// Everything a store holds, read once at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub queues: Vec<pb::Queue>,
    pub tasks: Vec<StoredTask>,
    /// Task names that may not be reused, with the time they become free (epoch ns).
    pub tombstones: Vec<(String, i128)>,
}

/// Persistence behind the engine. Every method is called with the engine's lock held, in
/// the order the changes happen.
pub trait Store: Send + Sync + 'static {
    fn put_queue(&self, queue: &pb::Queue) -> Result<(), StoreError>;
    /// Removes a queue and its tasks.
    fn delete_queue(&self, name: &str) -> Result<(), StoreError>;
    fn put_task(&self, task: &StoredTask) -> Result<(), StoreError>;
    /// Removes a task; with `tombstone_until`, its name stays taken until then.
    fn delete_task(
        &self,
        name: &str,
        tombstone_until: Option<SystemTime>,
    ) -> Result<(), StoreError>;
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Forgets everything (test reset).
    fn clear(&self) -> Result<(), StoreError>;
}

/// The in-memory mode: nothing outlives the process.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn put_queue(&self, _: &pb::Queue) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete_queue(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn put_task(&self, _: &StoredTask) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete_task(&self, _: &str, _: Option<SystemTime>) -> Result<(), StoreError> {
        Ok(())
    }
    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::default())
    }
    fn clear(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A SQLite file (WAL mode): queues, queued tasks and tombstones survive a restart.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY, data BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS tasks (
                 name TEXT PRIMARY KEY,
                 queue TEXT NOT NULL,
                 data BLOB NOT NULL,
                 execution_count INTEGER NOT NULL,
                 previous_response INTEGER
             );
             CREATE INDEX IF NOT EXISTS tasks_by_queue ON tasks (queue);
             CREATE TABLE IF NOT EXISTS tombstones (name TEXT PRIMARY KEY, until_ns INTEGER NOT NULL);",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn ns_i64(t: SystemTime) -> i64 {
    epoch_nanos(t).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

impl Store for SqliteStore {
    fn put_queue(&self, queue: &pb::Queue) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO queues (name, data) VALUES (?1, ?2)",
            params![queue.name, queue.encode_to_vec()],
        )?;
        Ok(())
    }

    fn delete_queue(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM tasks WHERE queue = ?1", params![name])?;
        tx.execute("DELETE FROM queues WHERE name = ?1", params![name])?;
        tx.commit()?;
        Ok(())
    }

    fn put_task(&self, t: &StoredTask) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO tasks (name, queue, data, execution_count, previous_response)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                t.task.name,
                t.queue,
                t.task.encode_to_vec(),
                t.execution_count,
                t.previous_response
            ],
        )?;
        Ok(())
    }

    fn delete_task(
        &self,
        name: &str,
        tombstone_until: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM tasks WHERE name = ?1", params![name])?;
        if let Some(until) = tombstone_until {
            tx.execute(
                "INSERT OR REPLACE INTO tombstones (name, until_ns) VALUES (?1, ?2)",
                params![name, ns_i64(until)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let conn = self.conn();
        let now = ns_i64(SystemTime::now());
        conn.execute("DELETE FROM tombstones WHERE until_ns <= ?1", params![now])?;
        let mut snap = Snapshot::default();
        let mut stmt = conn.prepare("SELECT name, data FROM queues ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        for row in rows {
            let (name, data) = row?;
            let q = pb::Queue::decode(data.as_slice())
                .map_err(|source| StoreError::Decode { name, source })?;
            snap.queues.push(q);
        }
        let mut stmt = conn.prepare(
            "SELECT name, queue, data, execution_count, previous_response FROM tasks ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i32>(3)?,
                r.get::<_, Option<u16>>(4)?,
            ))
        })?;
        for row in rows {
            let (name, queue, data, execution_count, previous_response) = row?;
            let task = pb::Task::decode(data.as_slice())
                .map_err(|source| StoreError::Decode { name, source })?;
            snap.tasks.push(StoredTask {
                queue,
                task,
                execution_count,
                previous_response,
            });
        }
        let mut stmt = conn.prepare("SELECT name, until_ns FROM tombstones")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as i128))
        })?;
        for row in rows {
            snap.tombstones.push(row?);
        }
        Ok(snap)
    }

    fn clear(&self) -> Result<(), StoreError> {
        self.conn()
            .execute_batch("DELETE FROM tasks; DELETE FROM queues; DELETE FROM tombstones;")?;
        Ok(())
    }
}

impl SqliteStore {
    /// Whether a task row exists (for tests and diagnostics).
    pub fn has_task(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM tasks WHERE name = ?1", params![name], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }
}

/// A store failure is an internal error to clients; its detail goes to the log only.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "state store failed");
        ApiError::internal("Internal error encountered.")
    }
}
