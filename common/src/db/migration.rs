//! Schema migrations (sea-orm-migration), run at start-up by [`super::Db::connect`].

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateJob),
            Box::new(AddUploadColumns),
            Box::new(CreateApiKeys),
        ]
    }
}

#[derive(DeriveMigrationName)]
struct CreateJob;

#[derive(DeriveIden)]
enum Job {
    Table,
    Id,
    Owner,
    Name,
    State,
    ErrorCode,
    ErrorMessage,
    Options,
    OriginalContentType,
    OriginalKey,
    ResultKey,
    ResultContentType,
    Width,
    Height,
    Enqueued,
    Attempts,
    ClaimedUntil,
    CreatedAt,
    UpdatedAt,
    FinishedAt,
    OriginalBytes,
    ClientAddr,
}

#[async_trait::async_trait]
impl MigrationTrait for CreateJob {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Job::Table)
                    .if_not_exists()
                    .col(string_len(Job::Id, 64).primary_key())
                    .col(string_len(Job::Owner, 128))
                    .col(string_len(Job::Name, 255))
                    .col(string_len(Job::State, 16))
                    .col(string_len_null(Job::ErrorCode, 64))
                    .col(text_null(Job::ErrorMessage))
                    .col(json(Job::Options))
                    .col(string_len(Job::OriginalContentType, 64))
                    .col(string_len(Job::OriginalKey, 255))
                    .col(string_len_null(Job::ResultKey, 255))
                    .col(string_len_null(Job::ResultContentType, 64))
                    .col(integer(Job::Width))
                    .col(integer(Job::Height))
                    .col(boolean(Job::Enqueued))
                    .col(integer(Job::Attempts))
                    .col(timestamp_with_time_zone_null(Job::ClaimedUntil))
                    .col(timestamp_with_time_zone(Job::CreatedAt))
                    .col(timestamp_with_time_zone(Job::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Job::FinishedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_job_owner")
                    .table(Job::Table)
                    .col(Job::Owner)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_job_outbox")
                    .table(Job::Table)
                    .col(Job::Enqueued)
                    .col(Job::State)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_job_created_at")
                    .table(Job::Table)
                    .col(Job::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Job::Table).to_owned())
            .await
    }
}

/// The row is written before the original (`original_bytes` stays NULL until the original is
/// stored, and the outbox waits for it), and the client's address prefix is kept for quotas.
struct AddUploadColumns;

// Named by hand: the derive names a migration after its file, which `CreateJob` already took.
impl MigrationName for AddUploadColumns {
    fn name(&self) -> &str {
        "m20261129_000002_upload_columns"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddUploadColumns {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one at a time.
        if !manager.has_column("job", "original_bytes").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Job::Table)
                        .add_column(big_integer_null(Job::OriginalBytes))
                        .to_owned(),
                )
                .await?;
            // Rows from before this migration were written after their original.
            manager
                .exec_stmt(
                    Query::update()
                        .table(Job::Table)
                        .value(Job::OriginalBytes, 0)
                        .and_where(Expr::col(Job::OriginalBytes).is_null())
                        .to_owned(),
                )
                .await?;
        }
        if !manager.has_column("job", "client_addr").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Job::Table)
                        .add_column(string_len_null(Job::ClientAddr, 64))
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_job_client_addr")
                    .table(Job::Table)
                    .col(Job::ClientAddr)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_job_client_addr")
                    .table(Job::Table)
                    .to_owned(),
            )
            .await?;
        for col in [Job::ClientAddr, Job::OriginalBytes] {
            manager
                .alter_table(Table::alter().table(Job::Table).drop_column(col).to_owned())
                .await?;
        }
        Ok(())
    }
}

/// API keys (hash only) and the credits each spends per day.
struct CreateApiKeys;

impl MigrationName for CreateApiKeys {
    fn name(&self) -> &str {
        "m20261129_000003_api_keys"
    }
}

#[derive(DeriveIden)]
enum ApiKey {
    Table,
    Id,
    Name,
    Hash,
    QuotaPerDay,
    CreatedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum ApiKeyUsage {
    Table,
    KeyId,
    Day,
    Credits,
}

#[async_trait::async_trait]
impl MigrationTrait for CreateApiKeys {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApiKey::Table)
                    .if_not_exists()
                    .col(string_len(ApiKey::Id, 64).primary_key())
                    .col(string_len(ApiKey::Name, 100))
                    .col(string_len(ApiKey::Hash, 64).unique_key())
                    .col(big_integer_null(ApiKey::QuotaPerDay))
                    .col(timestamp_with_time_zone(ApiKey::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiKey::RevokedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_api_key_name")
                    .table(ApiKey::Table)
                    .col(ApiKey::Name)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ApiKeyUsage::Table)
                    .if_not_exists()
                    .col(string_len(ApiKeyUsage::KeyId, 64))
                    .col(string_len(ApiKeyUsage::Day, 10))
                    .col(big_integer(ApiKeyUsage::Credits))
                    .primary_key(
                        Index::create()
                            .col(ApiKeyUsage::KeyId)
                            .col(ApiKeyUsage::Day),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ApiKeyUsage::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ApiKey::Table).to_owned())
            .await
    }
}
