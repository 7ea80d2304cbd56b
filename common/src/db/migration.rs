//! Schema migrations (sea-orm-migration), run at start-up by [`super::Db::connect`].

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateJob)]
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
