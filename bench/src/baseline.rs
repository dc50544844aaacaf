//! The two baselines, each the least code that does the same broker and database work: (a) an HTTP
//! handler that publishes one persistent message with confirm to a quorum queue and answers; (b) a
//! consumer that inserts one row, POSTs to the fake provider and acks. Both run as child processes
//! of this binary, like the system under test.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, body::Bytes, extract::State, routing::any};
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use sea_orm::{ConnectionTrait, Database};
use tokio::process::{Child, Command};

use crate::{
    fake_provider::{Drain, FakeProvider},
    leftovers::{self, Leftover, Mark},
    procstat::terminate,
};

#[derive(clap::Args)]
pub struct PublishArgs {
    #[arg(long)]
    listen: String,
    #[arg(long)]
    amqp_url: String,
    #[arg(long)]
    queue: String,
}

#[derive(clap::Args)]
pub struct PipelineArgs {
    #[arg(long)]
    amqp_url: String,
    #[arg(long)]
    queue: String,
    #[arg(long)]
    db_url: String,
    #[arg(long)]
    provider_url: String,
    /// The same prefetch as our worker's in the run.
    #[arg(long, default_value_t = 16)]
    prefetch: u16,
}

async fn quorum_queue(ch: &Channel, queue: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    // The same queue type as our work queue: replicated, fsynced before confirming.
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    Ok(())
}

async fn publish(ch: &Channel, queue: &str, body: &[u8]) -> anyhow::Result<()> {
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        )
        .await?
        .await?;
    anyhow::ensure!(confirm.is_ack(), "nacked");
    Ok(())
}

pub async fn serve_publish(a: PublishArgs) -> anyhow::Result<()> {
    let conn = Connection::connect(&a.amqp_url, Default::default()).await?;
    let ch = conn.create_channel().await?;
    quorum_queue(&ch, &a.queue).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let state = Arc::new((ch, a.queue.clone()));
    async fn handle(
        State(s): State<Arc<(Channel, String)>>,
        _body: Bytes,
    ) -> (axum::http::StatusCode, String) {
        let id = uuid::Uuid::new_v4().to_string().to_uppercase();
        let body = format!(r#"{{"v":1,"request_id":"{id}"}}"#);
        match publish(&s.0, &s.1, body.as_bytes()).await {
            Ok(()) => (
                axum::http::StatusCode::OK,
                format!(r#"{{"RequestId":"{id}"}}"#),
            ),
            Err(_) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "{}".into()),
        }
    }
    let app = Router::new().fallback(any(handle)).with_state(state);
    let listener = tokio::net::TcpListener::bind(&a.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Baseline (a) running as a child process.
pub struct PublishServer {
    pub addr: SocketAddr,
    child: Child,
    amqp_url: String,
    queue: String,
    mark: Mark,
}

impl PublishServer {
    pub async fn start(amqp_url: &str) -> anyhow::Result<Self> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let queue = format!(
            "bench-baseline-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let child = Command::new(std::env::current_exe()?)
            .args(["baseline-publish", "--listen", &addr.to_string()])
            .args(["--amqp-url", amqp_url, "--queue", &queue])
            .kill_on_drop(true)
            .spawn()?;
        let mark = leftovers::record(Leftover::Queues {
            amqp_url: amqp_url.to_owned(),
            names: vec![queue.clone()],
        });
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if client
                .post(format!("http://{addr}/"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(Self {
                    addr,
                    child,
                    amqp_url: amqp_url.into(),
                    queue,
                    mark,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("baseline (a) did not start")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn purge(&self) -> anyhow::Result<()> {
        let conn = Connection::connect(&self.amqp_url, Default::default()).await?;
        let ch = conn.create_channel().await?;
        ch.queue_purge(self.queue.as_str().into(), Default::default())
            .await?;
        let _ = conn.close(200, "".into()).await;
        Ok(())
    }

    pub async fn stop(self) {
        terminate(self.child).await;
        leftovers::remove(&Leftover::Queues {
            amqp_url: self.amqp_url,
            names: vec![self.queue],
        })
        .await;
        leftovers::forget(self.mark);
    }
}

pub async fn run_pipeline(a: PipelineArgs) -> anyhow::Result<()> {
    let db = Database::connect(&a.db_url).await?;
    let conn = Connection::connect(&a.amqp_url, Default::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(a.prefetch, BasicQosOptions::default()).await?;
    let client = reqwest::Client::new();
    let mut consumer = ch
        .basic_consume(
            a.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let backend = db.get_database_backend();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let (db, client, url) = (db.clone(), client.clone(), a.provider_url.clone());
        tokio::spawn(async move {
            let id = String::from_utf8_lossy(&delivery.data).into_owned();
            let at = msgcontact::time::now_ms();
            let stmt = sea_orm::Statement::from_sql_and_values(
                backend,
                match backend {
                    sea_orm::DatabaseBackend::Postgres => {
                        "INSERT INTO bench_jobs (id, at) VALUES ($1, $2)"
                    }
                    _ => "INSERT INTO bench_jobs (id, at) VALUES (?, ?)",
                },
                [id.clone().into(), at.into()],
            );
            if db.execute_raw(stmt).await.is_ok()
                && client
                    .post(&url)
                    .json(&serde_json::json!({ "request_id": id, "phone_number": "86-13900000000", "message": "code", "code": "123456" }))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            } else {
                let _ = delivery
                    .nack(lapin::options::BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
            }
        });
    }
    Ok(())
}

/// Fills a quorum queue with `n` jobs, starts baseline (b) and times its drain, from its start
/// until the provider has every SMS.
pub async fn pipeline_drain(
    (amqp_url, db, pg_url, prefetch): (&str, crate::stack::Db, &str, u16),
    provider: &FakeProvider,
    n: usize,
) -> anyhow::Result<Drain> {
    // The same database setup as ours: a fresh SQLite file (WAL) or a fresh PostgreSQL database.
    let stack = crate::stack::Stack::new(db, amqp_url, pg_url, 0, 1_000_000).await?;
    stack
        .db
        .execute_unprepared("CREATE TABLE bench_jobs (id TEXT PRIMARY KEY, at BIGINT NOT NULL)")
        .await?;
    let queue = format!("{}.baseline", stack.prefix);
    let mark = leftovers::record(Leftover::Queues {
        amqp_url: amqp_url.to_owned(),
        names: vec![queue.clone()],
    });
    let conn = Connection::connect(amqp_url, Default::default()).await?;
    let ch = conn.create_channel().await?;
    quorum_queue(&ch, &queue).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut pending = Vec::new();
    for i in 0..n {
        let ch = ch.clone();
        let q = queue.clone();
        pending.push(tokio::spawn(async move {
            publish(&ch, &q, format!("job-{i}").as_bytes()).await
        }));
        if pending.len() >= 256 {
            for p in pending.drain(..) {
                p.await??;
            }
        }
    }
    for p in pending {
        p.await??;
    }
    let started = std::time::Instant::now();
    let child = Command::new(std::env::current_exe()?)
        .arg("baseline-pipeline")
        .args(["--amqp-url", amqp_url, "--queue", &queue])
        .args(["--db-url", &stack.db_url, "--provider-url", &provider.url])
        .args(["--prefetch", &prefetch.to_string()])
        .kill_on_drop(true)
        .spawn()?;
    let done = provider.wait_for(n, Duration::from_secs(600)).await;
    let drain = provider.drain(n, started);
    terminate(child).await;
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = conn.close(200, "".into()).await;
    leftovers::forget(mark);
    stack.stop().await;
    done.context("baseline (b) did not drain")?;
    Ok(drain)
}
