//! What a run has made in the broker, the database server and the temporary directory, recorded
//! as it is made, so that a run that ends early (an error, Ctrl-C, a timeout's SIGTERM) still
//! removes it: a killed bench used to leave queues holding tens of thousands of messages and
//! databases behind.

use std::{
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use sea_orm::{ConnectionTrait, Database};

#[derive(Debug, Clone)]
pub enum Leftover {
    Queues {
        amqp_url: String,
        names: Vec<String>,
    },
    Database {
        admin_url: String,
        name: String,
    },
    Dir(PathBuf),
}

/// Handle of a recorded leftover: [`forget`] it once it is removed the ordinary way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(u64);

static LEFT: Mutex<Vec<(Mark, Leftover)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

pub fn record(l: Leftover) -> Mark {
    let mark = Mark(NEXT.fetch_add(1, Ordering::Relaxed));
    LEFT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((mark, l));
    mark
}

pub fn forget(mark: Mark) {
    LEFT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(m, _)| *m != mark);
}

/// Removes everything still recorded, newest first (queues before the database they fed), and
/// says what it removed.
pub async fn remove_all() {
    let left: Vec<(Mark, Leftover)> =
        std::mem::take(&mut *LEFT.lock().unwrap_or_else(|e| e.into_inner()));
    for (_, l) in left.into_iter().rev() {
        remove(&l).await;
        eprintln!("removed {l:?}");
    }
}

pub async fn remove(l: &Leftover) {
    match l {
        Leftover::Queues { amqp_url, names } => {
            if let Ok(conn) = lapin::Connection::connect(amqp_url, Default::default()).await {
                for q in names {
                    // A channel per queue: deleting one that is gone already closes its channel.
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                    }
                }
                let _ = conn.close(200, "".into()).await;
            }
        }
        Leftover::Database { admin_url, name } => {
            if let Ok(admin) = Database::connect(admin_url.as_str()).await {
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
            }
        }
        Leftover::Dir(dir) => {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
