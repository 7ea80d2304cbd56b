//! What BackLess's services share: configuration, image limits, job records (sea-orm), image
//! storage (object_store), progress events (pub/sub), the task-queue client (Cloud Tasks) and the
//! plumbing every service needs (listening, shutdown, the metrics page).

pub mod config;
pub mod db;
pub mod events;
pub mod frames;
pub mod job;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod serve;
pub mod shutdown;
pub mod startup;
pub mod storage;
pub mod tasks;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
