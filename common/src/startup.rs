//! What web and the worker both assemble at start-up: the database, storage and event bus,
//! each either supplied by the caller (tests; the dev runner sharing one in-process bus) or built
//! from the configuration.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::CommonConfig;
use crate::db::{Db, DbError};
use crate::events::{self, Events, EventsError};
use crate::storage::{Storage, StorageError};

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Events(#[from] EventsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Components the caller may supply instead of having them built from the config.
#[derive(Debug, Default, Clone)]
pub struct Components {
    pub events: Option<Arc<dyn Events>>,
    pub db: Option<Db>,
    pub storage: Option<Storage>,
}

/// The backends a service runs on.
#[derive(Debug, Clone)]
pub struct Backends {
    pub db: Db,
    pub storage: Storage,
    pub events: Arc<dyn Events>,
}

impl Components {
    /// Use what was supplied and build the rest from `config` (connecting and migrating the
    /// database if it is built here).
    pub async fn resolve(self, config: &CommonConfig) -> Result<Backends, StartError> {
        let db = match self.db {
            Some(db) => db,
            None => Db::connect(&config.database).await?,
        };
        let storage = match self.storage {
            Some(s) => s,
            None => Storage::from_config(&config.storage)?,
        };
        let events = match self.events {
            Some(e) => e,
            None => events::from_config(&config.events).await?,
        };
        Ok(Backends {
            db,
            storage,
            events,
        })
    }
}
