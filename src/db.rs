//! Database connection: SQLite (WAL) or PostgreSQL, migrations at startup, shared settings.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, EntityTrait, QueryResult, SqliteTransactionMode, Statement, StatementBuilder,
    TransactionOptions, TransactionTrait,
};

use crate::{Error, entities::setting};

/// Starts a write transaction. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`), so a
/// transaction that reads before it writes waits for its turn instead of failing with BUSY.
pub async fn write_txn(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// Connects, creating the SQLite file's directory if needed, and applies pending migrations.
pub fn connect(
    url: &str,
    pool: u32,
) -> std::pin::Pin<Box<dyn Future<Output = Result<DatabaseConnection, Error>> + Send + '_>> {
    // Boxed so that callers in other crates do not compile the migrator's async tree again.
    Box::pin(connect_and_migrate(url, pool))
}

async fn connect_and_migrate(url: &str, pool: u32) -> Result<DatabaseConnection, Error> {
    // Processes opening a fresh SQLite file at once race to switch it to WAL, which needs the
    // file to themselves; the losers see "database is locked" and simply try again.
    let mut attempt = 0;
    let db = loop {
        match open(url, pool).await {
            Ok(db) => break db,
            Err(e) if attempt < 5 && sqlite_path(url).is_some() => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "opening the database failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    };
    migrate(&db).await?;
    Ok(db)
}

/// One connection of its own for a single writer task (after `connect` migrated the database).
/// On SQLite a connection's page cache is dropped whenever another connection wrote to the file,
/// so the one writer keeps its cache warm only on a connection nothing else writes through (nor is
/// it closed for being idle or old, which would throw that cache away).
///
/// It leaves checkpoints to [`checkpoint`], run beside it. SQLite's automatic checkpoint runs
/// inside the commit that crosses its threshold (1,000 pages), copying the WAL back and syncing the
/// file while the batch's callers wait: measured at c=32, 4–8 % of the writer's batches took
/// 10–25 ms that way, 0.05–0.6 % with the checkpoints beside it. Its own automatic checkpoint stays
/// as a backstop, at ten times the usual threshold; what keeps the WAL from reaching it under a
/// steady load is the writer's own short checkpoint at [`WAL_RESTART_FRAMES`].
pub async fn connect_single(url: &str) -> Result<DatabaseConnection, Error> {
    open_with(url, 1, true).await
}

async fn open(url: &str, pool: u32) -> Result<DatabaseConnection, Error> {
    open_with(url, pool, false).await
}

async fn open_with(url: &str, pool: u32, single: bool) -> Result<DatabaseConnection, Error> {
    if let Some(path) = sqlite_path(url)
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(pool)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    if single {
        opts.idle_timeout(None).max_lifetime(None);
    }
    if url.starts_with("sqlite:") {
        // A SQLite connection is a handle in this process: nothing at the other end can hang up,
        // and the ping before every acquire is one more round trip to the connection's thread.
        opts.test_before_acquire(false);
    }
    opts.map_sqlx_sqlite_opts(move |o| {
        // WAL lets readers run beside the single writer; NORMAL is durable across process
        // crashes in WAL mode; a busy timeout makes concurrent writers wait instead of failing.
        let o = o
            .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(15))
            // Statement journals (a multi-row write inside a transaction keeps one, to undo just
            // that statement) stay in memory. By default one that outgrows 64 KiB moves to a temp
            // file: a batch of sends created, wrote and deleted a file in its transaction, 2 % of
            // the API's CPU at c=32 in a profile.
            .pragma("temp_store", "memory");
        if single {
            // A 32 MiB page cache (the default is 2 MiB) holds the hot index pages of contacts,
            // counters, nonces and requests for a busy accept path: this connection's cache stays
            // warm because nothing else writes through it. A pool's connections keep the
            // default: each drops its cache whenever another connection has written, so a large
            // one bought no reads, while each kept the memory it had grown to (16 connections at
            // 32 MiB: a held SQLite run's worker grew by 11 MiB a minute).
            //
            // A backstop, not the rule: should the checkpoint task stop or fall behind, the writer
            // copies the WAL back itself once it holds 10,000 pages (40 MiB) rather than let it
            // grow without end.
            o.pragma("cache_size", "-32768")
                .pragma("wal_autocheckpoint", "10000")
        } else {
            o
        }
    })
    .map_sqlx_sqlite_pool_opts(|p| {
        p.after_connect(|conn, _| {
            Box::pin(async move {
                let mut handle = conn.lock_handle().await?;
                busy::install(handle.as_raw_handle());
                Ok(())
            })
        })
    });
    Ok(Database::connect(opts).await?)
}

/// SQLite's own busy handler sleeps 1, 2, 5, 10 … up to 100 ms between tries for the write lock.
/// With the API's writer and a worker in separate processes taking turns at a high rate, a waiter
/// that has backed off to 25–100 ms keeps missing the short gaps between the other's transactions:
/// measured, a worker's single writer connection starved (accept→Sent p50 2.5 s at 465 sends/s).
/// This handler polls every 100 µs at first and backs off only after long waits, within the same
/// overall limit (~15 s) before `SQLITE_BUSY` reaches the caller.
mod busy {
    use std::{
        ffi::{c_int, c_void},
        ptr::NonNull,
        time::Duration,
    };

    use libsqlite3_sys::{sqlite3, sqlite3_busy_handler};

    /// Tries before giving up: 100 × 100 µs, 1,000 × 1 ms, 2,800 × 5 ms ≈ 15 s.
    const TRIES: c_int = 3_900;

    fn pause(tries: c_int) -> Duration {
        match tries {
            0..100 => Duration::from_micros(100),
            100..1_100 => Duration::from_millis(1),
            _ => Duration::from_millis(5),
        }
    }

    extern "C" fn on_busy(_: *mut c_void, tries: c_int) -> c_int {
        if tries >= TRIES {
            return 0;
        }
        // This runs on the connection's own worker thread (sqlx), as SQLite's default handler
        // does: the wait blocks only that connection.
        std::thread::sleep(pause(tries));
        1
    }

    pub(super) fn install(db: NonNull<sqlite3>) {
        // SAFETY: `db` is a live handle, locked for our exclusive use by sqlx for the duration of
        // this call; the handler has no user data and is valid for the program's lifetime.
        unsafe {
            sqlite3_busy_handler(db.as_ptr(), Some(on_busy), std::ptr::null_mut());
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn waits_about_fifteen_seconds_in_all() {
            let total: Duration = (0..TRIES).map(pause).sum();
            assert!(
                total > Duration::from_secs(14) && total < Duration::from_secs(16),
                "{total:?}"
            );
            assert_eq!(pause(0), Duration::from_micros(100));
        }
    }
}

/// A PostgreSQL `text[]` bind value: hand-written statements take a batch as arrays, so their text
/// (and prepared statement) is the same whatever the batch's size. Its elements cannot be NULL (the
/// driver binds none inside an array).
pub fn text_array<'s>(items: impl IntoIterator<Item = &'s str>) -> sea_orm::Value {
    items
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<String>>()
        .into()
}

/// The `n`th (from 1) bind placeholder of a hand-written statement: PostgreSQL numbers them,
/// SQLite's `?` takes the values in order.
pub fn placeholder(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    }
}

/// Statements that travel together. SQLite takes a script of several statements in one call to
/// its connection's thread: a group commit then pays one hand-off per script instead of one per
/// statement (measured on 2 cores under load, each hand-off cost 100–300 µs of waiting for the
/// thread to be scheduled, more than most statements take to run). PostgreSQL's extended protocol
/// takes one statement per call, so there they run one after the other, in the same order.
pub struct Script {
    backend: DbBackend,
    statements: Vec<Statement>,
}

impl Script {
    pub fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            statements: Vec::new(),
        }
    }

    pub fn push(&mut self, statement: &impl StatementBuilder) {
        self.statements
            .push(StatementBuilder::build(statement, &self.backend));
    }

    /// Runs every statement in order and returns the rows all of them produced, in order.
    pub async fn rows(self, c: &impl ConnectionTrait) -> Result<Vec<QueryResult>, DbErr> {
        if self.backend == DbBackend::Sqlite {
            return match self.merged() {
                Some(s) => c.query_all_raw(s).await,
                None => Ok(Vec::new()),
            };
        }
        let mut rows = Vec::new();
        for s in self.statements {
            rows.extend(c.query_all_raw(s).await?);
        }
        Ok(rows)
    }

    /// Runs every statement in order.
    pub async fn run(self, c: &impl ConnectionTrait) -> Result<(), DbErr> {
        if self.backend == DbBackend::Sqlite {
            if let Some(s) = self.merged() {
                c.execute_raw(s).await?;
            }
            return Ok(());
        }
        for s in self.statements {
            c.execute_raw(s).await?;
        }
        Ok(())
    }

    /// One SQLite statement text: its `?` placeholders are positional, so the statements' values
    /// simply follow one another.
    fn merged(self) -> Option<Statement> {
        if self.statements.len() <= 1 {
            return self.statements.into_iter().next();
        }
        let mut sql = String::new();
        let mut values = Vec::new();
        for s in self.statements {
            if !sql.is_empty() {
                sql.push_str(";\n");
            }
            sql.push_str(&s.sql);
            if let Some(v) = s.values {
                values.extend(v.0);
            }
        }
        Some(Statement::from_sql_and_values(self.backend, sql, values))
    }
}

/// WAL size (frames of one page) past which the API's checkpoint task asks the writer to finish a
/// checkpoint between two batches (16 MiB with 4 KiB pages).
///
/// Why the writer: SQLite starts its WAL over only when a write transaction begins while every
/// frame is already copied back. Under a steady load the writer commits every millisecond or two,
/// so some batch always commits while the checkpoint task's pass (5–15 ms, most of it syncs) runs,
/// and a transaction never begins on a fully copied WAL: the WAL grew until the writer's automatic
/// checkpoint at 10,000 pages copied 100 ms of frames inside a commit, 20–27 ms about once a second
/// at 2,900 sends/s, and the p99 at half our max rate was 7–8× baseline (a)'s. Between batches the
/// writer has nothing uncommitted, and copying only what the last pass left is the least a restart
/// can cost (its syncs, ~8–12 ms on this disk). Measured at 2,900 sends/s: with 1,000 pages that
/// pause came four times a second, with 16,384 the WAL grew to 80 MiB, the pauses to 17–70 ms and
/// the batches' reads slowed; 4,096 kept the WAL at 13–24 MiB with a pause every 0.4 s.
pub const WAL_RESTART_FRAMES: i64 = 4_096;

/// Copies SQLite's WAL back into the database file, for the [`connect_single`] writer that leaves
/// it to others (the API runs it every 100 ms). Passive: it never waits for a writer or a reader,
/// and what it cannot copy now is copied next time; the next write transaction after a complete
/// copy starts the WAL over, so it stays small. Returns the frames in the WAL and how many of them
/// are copied; `None` on PostgreSQL, where it does nothing.
pub async fn checkpoint(db: &DatabaseConnection) -> Result<Option<(i64, i64)>, DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(None);
    }
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA wal_checkpoint(PASSIVE)",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("wal_checkpoint returned no row".into()))?;
    Ok(Some((row.try_get_by_index(1)?, row.try_get_by_index(2)?)))
}

/// The tables the hot statements read and join; see [`refresh_statistics`].
const HOT_TABLES: [&str; 5] = [
    "send_requests",
    "verifications",
    "contacts",
    "daily_counters",
    "signature_nonces",
];

/// A table is re-analyzed once it holds at least this many rows and twice the planner's count.
const STALE_MIN_ROWS: i64 = 1_000;

/// Re-analyzes every hot table that has at least doubled (and holds 1,000 rows or more) since the
/// planner last counted it, so the prepared statements are planned again; returns the tables
/// analyzed. Nothing on SQLite.
///
/// Why: each connection prepares a statement once and PostgreSQL keeps its generic plan until the
/// table's statistics change. A plan made while a table was new and small hashes or scans the whole
/// table, and keeps doing so as it grows: the worker's snapshot read took 13 ms at 40,000 codes
/// and a fresh database's drain ran at 0.42× the baseline. Autovacuum's first analyze of a table
/// can be a minute away (its nap time), a long time for a batch on a new deployment; after a
/// doubling or two its own 10 % rule keeps up. `SKIP_LOCKED`: another process analyzing the same
/// table is as good.
pub async fn refresh_statistics(db: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(Vec::new());
    }
    let stale = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT s.relname::text AS name FROM pg_stat_user_tables s \
             JOIN pg_class c ON c.oid = s.relid \
             WHERE s.schemaname = current_schema() AND s.relname = ANY($1::text[]) \
               AND s.n_live_tup >= $2 AND s.n_live_tup > 2 * GREATEST(c.reltuples, 0)",
            [text_array(HOT_TABLES), STALE_MIN_ROWS.into()],
        ))
        .await?;
    let mut analyzed = Vec::new();
    for row in stale {
        let name: String = row.try_get("", "name")?;
        // The name comes from the fixed list above, never from outside.
        db.execute_unprepared(&format!("ANALYZE (SKIP_LOCKED) \"{name}\""))
            .await?;
        analyzed.push(name);
    }
    Ok(analyzed)
}

/// Runs [`refresh_statistics`] every two seconds until `stop`, on PostgreSQL; `None` elsewhere.
pub fn statistics_upkeep(
    db: &DatabaseConnection,
    stop: tokio_util::sync::CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    (db.get_database_backend() == DbBackend::Postgres).then(|| {
        let db = db.clone();
        crate::time::every(Duration::from_secs(2), stop, move || {
            let db = db.clone();
            async move {
                match refresh_statistics(&db).await {
                    Ok(tables) if !tables.is_empty() => {
                        tracing::debug!(?tables, "planner statistics refreshed");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "refreshing planner statistics failed"),
                }
            }
        })
    })
}

/// Applies pending migrations. Two processes starting at once may race on the bookkeeping table;
/// every DDL statement is idempotent, so the loser simply tries again.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), Error> {
    let mut attempt = 0;
    loop {
        match Migrator::up(db, None).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "migration raced or failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// The code secrets (see [`crate::secrets`]). A secret an earlier version kept in the `settings`
/// table moves into the generated file (codes already sent stay valid) and leaves the database.
pub async fn code_secrets(
    db: &DatabaseConnection,
    config: &crate::secrets::SecretsConfig,
) -> Result<crate::secrets::CodeSecrets, Error> {
    let legacy = setting::Entity::find_by_id("code_secret".to_owned())
        .one(db)
        .await?
        .and_then(|row| hex::decode(row.value).ok());
    let secrets = config.code_secrets(legacy.as_deref())?;
    if legacy.is_some() {
        setting::Entity::delete_by_id("code_secret".to_owned())
            .exec(db)
            .await?;
        tracing::warn!("moved the code secret out of the database");
    }
    if config.code_secret_generated() && db.get_database_backend() == DbBackend::Postgres {
        tracing::warn!(
            "MSGCONTACT_CODE_SECRET is not set: using a generated file; every API and worker process must share it"
        );
    }
    Ok(secrets)
}
