//! The job domain, apart from how jobs are stored: what a job does (its [`Pipeline`] of
//! operations, written `name:key=value` everywhere a person types one), what it will cost on a
//! given image ([`Plan`]), the stages it reports ([`Stage`]), output formats, model names and
//! colours. `db/` stores these; web and the worker both check a job with them, so a limit has one
//! definition and one error code.

mod colour;
mod format;
pub mod geometry;
mod id;
mod model;
pub mod pipeline;
pub mod plan;
mod stage;

pub use colour::{ColourError, Rgb, normalize_color};
pub use format::OutputFormat;
pub use geometry::{Length, Margin, Region, parse_position, parse_scale};
pub use id::{is_valid_job_id, new_job_id};
pub use model::{DEFAULT_MODEL, MODELS, model_label};
pub use pipeline::*;
pub use plan::{Plan, PlanError, PlannedStage, Size, Step, stages};
pub use stage::{OPS_SEQ, Stage};
