//! The REST API: one `#[OpenApi]` struct per resource, combined in a tuple.

pub mod config;
pub mod health;
pub mod image_body;
pub mod jobs;
