//! Schema migrations, applied at startup by both binaries and by `msgcontact-api migrate`.

pub use sea_orm_migration::prelude::*;

mod m20261201_000001_initial;
mod m20261202_000001_hot_status_updates;
mod m20261205_000001_sealed_secrets;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261201_000001_initial::Migration),
            Box::new(m20261202_000001_hot_status_updates::Migration),
            Box::new(m20261205_000001_sealed_secrets::Migration),
        ]
    }
}
