//! The `api_key` and `api_key_usage` tables: keys for the remove.bg-compatible API and `/v1`
//! (only a SHA-256 hash of each key is stored), and the credits each key has spent per UTC day.

use sea_orm::entity::prelude::*;

/// One API key.
pub mod key {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_key")]
    pub struct Model {
        /// 16 random bytes as hex; jobs made with the key are owned by `key:<id>`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// Unique among keys that are not revoked; what `web keys revoke` takes.
        pub name: String,
        /// SHA-256 of the key, hex.
        #[sea_orm(unique)]
        pub hash: String,
        /// Credits the key may spend per UTC day; `None` = unlimited.
        pub quota_per_day: Option<i64>,
        pub created_at: DateTimeUtc,
        pub revoked_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Credits one key spent on one UTC day.
pub mod usage {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_key_usage")]
    pub struct Model {
        /// The key's id (`env:<name>` for keys from `BACKLESS_API_KEYS`).
        #[sea_orm(primary_key, auto_increment = false)]
        pub key_id: String,
        /// `YYYY-MM-DD`, UTC.
        #[sea_orm(primary_key, auto_increment = false)]
        pub day: String,
        pub credits: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// An API key as the service uses it.
pub type ApiKey = key::Model;
