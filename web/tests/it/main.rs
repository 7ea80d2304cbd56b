//! Integration tests: the real web app on 127.0.0.1:0 with SQLite and file storage in a temp dir,
//! driven over HTTP with reqwest. Job progress is driven the way a worker drives it: through the
//! common db API and the shared in-process event bus.

mod helpers;
mod jobs;
mod lifecycle;
mod metrics;
mod migrate;
mod pipelines;
mod queue;
mod removebg;
mod security;
mod sse;
mod transfers;
