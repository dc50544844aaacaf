//! The initial schema: accounts, keys, contacts, members, send requests, verifications, counters, nonces.
//!
//! Times are epoch milliseconds (`BIGINT`) so comparisons are exact and identical on SQLite and
//! PostgreSQL. Every statement is `IF NOT EXISTS` so two processes migrating at once both succeed.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

fn create(name: &str) -> TableCreateStatement {
    Table::create()
        .table(Alias::new(name))
        .if_not_exists()
        .to_owned()
}

fn index(name: &str, table: &str, cols: &[&str]) -> IndexCreateStatement {
    let mut i = Index::create();
    i.name(name).table(Alias::new(table)).if_not_exists();
    for c in cols {
        i.col(Alias::new(*c));
    }
    i.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            create("accounts")
                .col(string_len("account_id", 32).primary_key())
                .col(integer_null("daily_limit"))
                .col(big_integer("created_ms"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            create("access_keys")
                .col(string_len("access_key_id", 64).primary_key())
                .col(string_len("account_id", 32))
                .col(string_len("secret", 128))
                .col(string_len("status", 16))
                .col(big_integer("created_ms"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            create("contacts")
                .col(string_len("contact_id", 18).primary_key())
                .col(string_len("account_id", 32))
                .col(string_len("name", 64))
                .col(string_len("email", 254))
                .col(string_len("title", 32))
                .col(string_len("message_types", 256))
                .col(string_len_null("phone", 24))
                .col(string_len_null("pending_phone", 24))
                .col(big_integer_null("last_send_ms"))
                .col(big_integer("created_ms"))
                .col(big_integer("updated_ms"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            index(
                "ux_contacts_account_name",
                "contacts",
                &["account_id", "name"],
            )
            .unique()
            .to_owned(),
        )
        .await?;
        m.create_table(
            create("contact_members")
                .col(string_len("contact_id", 18))
                .col(string_len("member_id", 64))
                .col(string_len("account_id", 32))
                .col(big_integer("modify_ms"))
                .primary_key(
                    Index::create()
                        .col(Alias::new("contact_id"))
                        .col(Alias::new("member_id")),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "ix_contact_members_member",
            "contact_members",
            &["account_id", "member_id"],
        ))
        .await?;
        m.create_table(
            create("contact_deletions")
                .col(string_len("contact_id", 18).primary_key())
                .col(string_len("account_id", 32))
                .col(string_len("status", 16))
                .col(string_len("message_types", 256))
                .col(big_integer("deleted_ms"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            create("send_requests")
                .col(string_len("request_id", 36).primary_key())
                .col(string_len("account_id", 32))
                .col(string_len("contact_id", 18))
                .col(string_len("phone", 24))
                .col(string_len("status", 16))
                .col(integer("attempts"))
                .col(integer("ambiguous_attempts").default(0))
                .col(string_len_null("failure_code", 64))
                .col(text_null("failure_message"))
                .col(string_len_null("provider_message_id", 128))
                .col(string_len_null("verification_id", 36))
                .col(string_len("day", 10))
                .col(big_integer("accepted_ms"))
                .col(big_integer_null("sent_ms"))
                .col(big_integer("updated_ms"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "ix_send_requests_target",
            "send_requests",
            &["contact_id", "phone", "accepted_ms"],
        ))
        .await?;
        m.create_index(index(
            "ix_send_requests_status",
            "send_requests",
            &["status", "accepted_ms"],
        ))
        .await?;
        m.create_table(
            create("verifications")
                .col(string_len("verification_id", 36).primary_key())
                .col(string_len("account_id", 32))
                .col(string_len("contact_id", 18))
                .col(string_len("phone", 24))
                .col(string_len("status", 16))
                .col(integer("failed_attempts"))
                .col(big_integer("created_ms"))
                .col(big_integer("expires_ms"))
                .col(string_len_null("live_key", 64))
                .to_owned(),
        )
        .await?;
        // At most one live code per contact and number: concurrent workers cannot mint two codes.
        m.create_index(
            index("ux_verifications_live", "verifications", &["live_key"])
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "ix_verifications_target",
            "verifications",
            &["contact_id", "phone"],
        ))
        .await?;
        m.create_table(
            create("daily_counters")
                .col(string_len("account_id", 32))
                .col(string_len("day", 10))
                .col(integer("count"))
                .primary_key(
                    Index::create()
                        .col(Alias::new("account_id"))
                        .col(Alias::new("day")),
                )
                .to_owned(),
        )
        .await?;
        m.create_table(
            create("signature_nonces")
                .col(string_len("access_key_id", 64))
                .col(string_len("nonce", 128))
                .col(big_integer("expires_ms"))
                .primary_key(
                    Index::create()
                        .col(Alias::new("access_key_id"))
                        .col(Alias::new("nonce")),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "ix_signature_nonces_expiry",
            "signature_nonces",
            &["expires_ms"],
        ))
        .await?;
        // Server-wide settings shared by every process, such as the code-derivation secret.
        m.create_table(
            create("settings")
                .col(string_len("key", 64).primary_key())
                .col(text("value"))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "settings",
            "signature_nonces",
            "daily_counters",
            "verifications",
            "send_requests",
            "contact_deletions",
            "contact_members",
            "contacts",
            "access_keys",
            "accounts",
        ] {
            m.drop_table(Table::drop().table(Alias::new(t)).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
