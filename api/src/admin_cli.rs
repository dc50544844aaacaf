//! Administration commands: access keys, accounts, migrations. Provisioning never goes over HTTP.

use msgcontact::{
    domain::AccountId,
    entities::{access_key, account},
    secrets::{MIN_SECRET_LEN, MasterKey},
    status::AccessKeyStatus,
    time::{format_ms, now_ms},
};
use rand::Rng;
use sea_orm::{
    ActiveValue::Set, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    sea_query::OnConflict,
};
use serde_json::{Value, json};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AccessKeyCommand {
    /// Creates an access key for an account (the account is created if new); prints it as JSON.
    Create {
        #[arg(long)]
        account_id: String,
        /// Chosen id (default: generated).
        #[arg(long)]
        access_key_id: Option<String>,
        /// Chosen secret (default: generated). Prefer `--access-key-secret-stdin`: an argument
        /// stays in the shell's history and the process list.
        #[arg(long, conflicts_with = "access_key_secret_stdin")]
        access_key_secret: Option<String>,
        /// Reads the chosen secret from standard input (its first line).
        #[arg(long)]
        access_key_secret_stdin: bool,
    },
    /// Lists access keys (without secrets) as JSON.
    List,
    /// Disables an access key: its requests get `InvalidAccessKeyId.Inactive`.
    Disable {
        #[arg(long)]
        access_key_id: String,
    },
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AccountCommand {
    /// Sets the account's daily verification limit (overrides MSGCONTACT_DAILY_LIMIT).
    SetDailyLimit {
        #[arg(long)]
        account_id: String,
        #[arg(long)]
        limit: u32,
    },
}

fn random_string(len: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| A[rng.random_range(0..A.len())] as char)
        .collect()
}

async fn ensure_account(db: &DatabaseConnection, id: &AccountId) -> Result<(), sea_orm::DbErr> {
    let r = account::Entity::insert(account::ActiveModel {
        account_id: Set(id.to_string()),
        daily_limit: Set(None),
        created_ms: Set(now_ms()),
    })
    .on_conflict(
        OnConflict::column(account::Column::AccountId)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await;
    match r {
        Ok(_) | Err(sea_orm::DbErr::RecordNotInserted) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates a key and returns its JSON description (secret included, shown only here).
pub async fn create_key(
    db: &DatabaseConnection,
    master: &MasterKey,
    account_id: &str,
    access_key_id: Option<String>,
    secret: Option<String>,
) -> anyhow::Result<Value> {
    let account = AccountId::parse(account_id)
        .map_err(|_| anyhow::anyhow!("--account-id must be 1 to 32 digits"))?;
    let id = access_key_id.unwrap_or_else(|| format!("LTAI{}", random_string(20)));
    let secret = secret.unwrap_or_else(|| random_string(30));
    anyhow::ensure!(
        !id.is_empty() && id.len() <= 64,
        "access key id must be 1 to 64 characters"
    );
    anyhow::ensure!(
        (MIN_SECRET_LEN..=128).contains(&secret.len())
            && secret.bytes().all(|b| b.is_ascii_graphic()),
        "secret must be {MIN_SECRET_LEN} to 128 printable characters without spaces"
    );
    ensure_account(db, &account).await?;
    let now = now_ms();
    access_key::Entity::insert(access_key::ActiveModel {
        access_key_id: Set(id.clone()),
        account_id: Set(account.to_string()),
        secret: Set(master.seal(&secret, &id)),
        status: Set(AccessKeyStatus::Active.as_str().into()),
        created_ms: Set(now),
    })
    .exec_without_returning(db)
    .await
    .map_err(|e| anyhow::anyhow!("cannot create access key {id}: {e}"))?;
    Ok(json!({
        "AccessKeyId": id,
        "AccessKeySecret": secret,
        "AccountId": account.to_string(),
        "Status": AccessKeyStatus::Active.as_str(),
        "CreateDate": format_ms(now),
    }))
}

pub async fn access_key(
    db: &DatabaseConnection,
    master: &MasterKey,
    cmd: AccessKeyCommand,
) -> anyhow::Result<Value> {
    match cmd {
        AccessKeyCommand::Create {
            account_id,
            access_key_id,
            access_key_secret,
            access_key_secret_stdin,
        } => {
            let secret = if access_key_secret_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                access_key_secret
            };
            create_key(db, master, &account_id, access_key_id, secret).await
        }
        AccessKeyCommand::List => {
            let keys = access_key::Entity::find()
                .order_by_asc(access_key::Column::CreatedMs)
                .all(db)
                .await?;
            Ok(Value::Array(
                keys.into_iter()
                    .map(|k| {
                        json!({
                            "AccessKeyId": k.access_key_id,
                            "AccountId": k.account_id,
                            "Status": k.status,
                            "CreateDate": format_ms(k.created_ms),
                        })
                    })
                    .collect(),
            ))
        }
        AccessKeyCommand::Disable { access_key_id } => {
            let key = access_key::Entity::find_by_id(access_key_id.clone())
                .one(db)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no access key {access_key_id}"))?;
            let mut am: access_key::ActiveModel = key.into();
            am.status = Set(AccessKeyStatus::Inactive.as_str().into());
            sea_orm::ActiveModelTrait::update(am, db).await?;
            Ok(
                json!({ "AccessKeyId": access_key_id, "Status": AccessKeyStatus::Inactive.as_str() }),
            )
        }
    }
}

pub async fn account(db: &DatabaseConnection, cmd: AccountCommand) -> anyhow::Result<Value> {
    match cmd {
        AccountCommand::SetDailyLimit { account_id, limit } => {
            let id = AccountId::parse(&account_id)
                .map_err(|_| anyhow::anyhow!("--account-id must be 1 to 32 digits"))?;
            anyhow::ensure!(limit <= i32::MAX as u32, "limit too large");
            ensure_account(db, &id).await?;
            account::Entity::update_many()
                .col_expr(
                    account::Column::DailyLimit,
                    sea_orm::sea_query::Expr::value(limit as i32),
                )
                .filter(sea_orm::ColumnTrait::eq(
                    &account::Column::AccountId,
                    id.as_str(),
                ))
                .exec(db)
                .await?;
            Ok(json!({ "AccountId": id.to_string(), "DailyLimit": limit }))
        }
    }
}

/// On a database with no access key at all, creates a development key and returns it.
pub async fn ensure_dev_key(
    db: &DatabaseConnection,
    master: &MasterKey,
) -> anyhow::Result<Option<Value>> {
    if access_key::Entity::find().count(db).await? > 0 {
        return Ok(None);
    }
    Ok(Some(
        create_key(db, master, "1000000000000001", None, None).await?,
    ))
}
