//! Room for sealed access key secrets: `enc1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>` is
//! 230-odd characters for the longest (128-character) secret, past the column's old 128.
//!
//! SQLite does not enforce a varchar length, so only PostgreSQL changes. Widening a varchar is a
//! catalog change there (no table rewrite), and idempotent, so concurrent migrators agree.

use sea_orm_migration::{
    prelude::*,
    sea_orm::{ConnectionTrait, DatabaseBackend},
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == DatabaseBackend::Postgres {
            m.get_connection()
                .execute_unprepared("ALTER TABLE access_keys ALTER COLUMN secret TYPE varchar(512)")
                .await?;
        }
        Ok(())
    }

    async fn down(&self, _m: &SchemaManager) -> Result<(), DbErr> {
        // Narrowing back would fail on sealed values; the wider column is harmless.
        Ok(())
    }
}
