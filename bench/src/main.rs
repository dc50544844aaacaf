//! msgcontact-bench: drives the real `msgcontact-api` and `msgcontact-worker` binaries with signed
//! sends against the real RabbitMQ and database, and measures the same things for two minimal
//! baselines on the same broker and database in the same run, so the figures are ratios, not
//! absolute claims about a machine.
//!
//! `run`  — accept path at fixed concurrencies, latency at half our max rate, end-to-end drain,
//!          accept→Sent latency, /metrics scrape cost; baselines (a) publish-with-confirm handler and
//!          (b) consume → insert → POST → ack pipeline.
//! `held` — held load: an offered rate above the provider's for minutes; per-minute p99, RSS and
//!          queue depth, 503 latency at the queue's max length, then the drain.
//!
//! Build everything first (`cargo build --release --workspace`): the binaries under test are taken
//! from the directory of this executable.

/// The same allocator as the binaries under test, so the baselines it serves are not handicapped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod baseline;
mod disk;
mod leftovers;
mod load;
mod stack;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use crate::{
    load::{Stats, Target},
    stack::{CpuWatch, Db, Drain, FakeProvider, Stack},
};

#[derive(Parser)]
#[command(
    name = "msgcontact-bench",
    about = "msgcontact benchmark and held-load run"
)]
enum Cmd {
    /// Accept path, end-to-end and scrape-cost figures against the baselines.
    Run(RunArgs),
    /// Held load: offered sends/s above the provider's rate, per-minute table, then the drain.
    Held(HeldArgs),
    /// The cost of scraping /metrics: many alternating unscraped/scraped closed-loop runs.
    Scrape(ScrapeArgs),
    /// End-to-end only: alternating drains of ours and baseline (b), then accept→Sent in flow.
    E2e(E2eArgs),
    /// Baseline (a): an HTTP handler that only publishes one persistent message with confirm.
    #[command(hide = true)]
    BaselinePublish(baseline::PublishArgs),
    /// Baseline (b): consume → insert one row → POST to the fake provider → ack.
    #[command(hide = true)]
    BaselinePipeline(baseline::PipelineArgs),
}

#[derive(clap::Args)]
pub struct Common {
    /// `sqlite` or `postgres`.
    #[arg(long, default_value = "sqlite")]
    db: Db,
    #[arg(
        long,
        env = "MSGCONTACT_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Unacknowledged deliveries held by our worker and by baseline (b) alike (the worker's
    /// `MSGCONTACT_PREFETCH`; 64 is its default).
    #[arg(long, default_value_t = 64)]
    prefetch: u16,
    /// PostgreSQL server (a fresh database is created on it; its query string is kept). Without
    /// TLS by default: on the loopback it protects nothing, and the driver builds its TLS client
    /// afresh for every connection (~90 ms of CPU here), which would be charged to whichever side
    /// opens more connections.
    #[arg(
        long,
        env = "MSGCONTACT_BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    pg_url: String,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Closed-loop concurrencies of the accept-path table.
    #[arg(long, value_delimiter = ',', default_value = "8,32,128")]
    concurrency: Vec<usize>,
    /// Measured seconds per level (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Jobs drained in the end-to-end comparison.
    #[arg(long, default_value_t = 5000)]
    e2e_jobs: usize,
    /// Drains of each (ours, baseline (b)) in alternation; the target uses the median ratio.
    #[arg(long, default_value_t = 3)]
    e2e_rounds: usize,
    /// Only the accept path: the concurrency table and the latency at half our max rate.
    #[arg(long)]
    accept_only: bool,
    /// Rounds of open-loop runs at half our max rate, each ours then base(a) one after the other,
    /// then both side by side; the target uses the median p99 ratio of the rounds apart in which
    /// a probe saw no disk sync stall (side by side only when every round stalled).
    #[arg(long, default_value_t = 3)]
    half_rounds: usize,
}

#[derive(clap::Args)]
struct E2eArgs {
    #[command(flatten)]
    common: Common,
    /// Jobs per drain.
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// Drains of each (ours, baseline) in alternation.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of the accept→Sent flow run.
    #[arg(long, default_value_t = 10)]
    flow_seconds: u64,
}

#[derive(clap::Args)]
struct ScrapeArgs {
    #[command(flatten)]
    common: Common,
    /// Scraped runs; each sits between two unscraped ones.
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Closed-loop concurrency.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Scrapes per second during a scraped run.
    #[arg(long, default_value_t = 10)]
    per_second: u32,
}

#[derive(clap::Args)]
struct HeldArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Signed sends offered per second (open loop).
    #[arg(long, default_value_t = 200)]
    offered: u32,
    /// SMS per second the fake provider accepts (beyond it answers 429); the worker is told the same.
    #[arg(long, default_value_t = 20)]
    provider_rate: u32,
    /// The work queue's max length (reached during the run, so 503s are measured).
    #[arg(long, default_value_t = 60_000)]
    queue_max_length: u32,
    /// Longest wait for the backlog to drain after the load stops.
    #[arg(long, default_value_t = 30)]
    drain_minutes: u64,
    /// API processes; the load takes turns between them.
    #[arg(long, default_value_t = 1)]
    apis: usize,
    /// Worker processes, sharing the provider's rate (`MSGCONTACT_PROVIDER_TOTAL_RATE` with
    /// `MSGCONTACT_WORKER_COUNT`): the provider's 429s say whether the budget held in total.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn main() -> anyhow::Result<()> {
    let cmd = Cmd::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let measured = match cmd {
            // The baselines' child processes: what they use belongs to the run that started them.
            Cmd::BaselinePublish(a) => return baseline::serve_publish(a).await,
            Cmd::BaselinePipeline(a) => return baseline::run_pipeline(a).await,
            // Stops itself on a signal (in a load minute or in the drain); stopped in the drain it
            // still prints the outcomes so far.
            Cmd::Held(a) => held(a).await,
            Cmd::Run(a) => until_stopped(run(a)).await,
            Cmd::Scrape(a) => until_stopped(scrape(a)).await,
            Cmd::E2e(a) => until_stopped(e2e(a)).await,
        };
        // Whatever ended the run (an error, a signal), nothing it made stays behind. Dropping a
        // stopped run's future killed its child processes first (`kill_on_drop`).
        leftovers::remove_all().await;
        measured
    })
}

/// Runs a measurement until it ends or Ctrl-C / SIGTERM arrives.
async fn until_stopped(run: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::select! {
        r = run => r,
        _ = msgcontact::signal::shutdown() => {
            eprintln!("interrupted: removing this run's queues, database and files");
            // Not a success: a script or a timeout that stopped the run sees it did not finish.
            Err(anyhow::anyhow!("interrupted before the run finished"))
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn ratio(ours: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}x", ours / base)
    } else {
        "n/a".into()
    }
}

/// One run of `scrape`: scraped?, sends/s, p99, API CPU ms per 1000 accepted sends.
type RunFigures = (bool, f64, Duration, f64);

/// Unscraped and scraped runs alternate (P S P S … P); each scraped run is compared with the mean
/// of the unscraped runs on either side of it, which cancels a linear drift (the database grows
/// through the whole run). The same comparison of each inner unscraped run with its unscraped
/// neighbours is the control: it shows how far two runs of the same thing differ here.
async fn scrape(a: ScrapeArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let dur = Duration::from_secs(a.seconds);
    println!(
        "msgcontact-bench scrape: database {:?}, c={}, {} pairs of {} s, /metrics {}×/s while scraped, {} cores",
        c.db,
        a.concurrency,
        a.pairs,
        a.seconds,
        a.per_second,
        std::thread::available_parallelism()?
    );
    let mut stack = Stack::new(c.db, &c.amqp_url, &c.pg_url, 20_000, 1_000_000_000).await?;
    stack.start_api(&[]).await?;
    let target = Target::ours(&stack);
    let _ = load::closed_loop(&target, a.concurrency, Duration::from_secs(3)).await;

    let mut runs: Vec<RunFigures> = Vec::new();
    let mut scrape_n = 0u32;
    let mut scrape_total = Duration::ZERO;
    println!(
        "{:>4} | {:>8} | {:>9} | {:>9} | {:>22}",
        "run", "scraped", "r/s", "p99 ms", "API CPU ms / 1000 sends"
    );
    for i in 0..(2 * a.pairs + 1) {
        let scraped = i % 2 == 1;
        stack.purge_work_queue().await?;
        let cpu0 = crate::stack::cpu_time(stack.api_pid());
        let scraper = scraped
            .then(|| stack.scrape_metrics_every(Duration::from_secs(1) / a.per_second.max(1)));
        let r = load::closed_loop(&target, a.concurrency, dur).await;
        if let Some(s) = scraper {
            let (n, avg) = s.stop().await;
            scrape_n += n;
            scrape_total += avg * n;
        }
        let cpu = match (cpu0, crate::stack::cpu_time(stack.api_pid())) {
            (Some(a), Some(b)) => (b - a).as_secs_f64() * 1000.0 / (r.ok.max(1) as f64 / 1000.0),
            _ => f64::NAN,
        };
        println!(
            "{:>4} | {:>8} | {:>9.0} | {:>9} | {:>22.1}",
            i,
            if scraped { "yes" } else { "no" },
            r.ok_rate(),
            ms(r.p(0.99)),
            cpu
        );
        runs.push((scraped, r.ok_rate(), r.p(0.99), cpu));
    }
    stack.stop().await;

    // "median m (range lo…hi)" of a set of ratios, "-" when there are none.
    let summary = |v: &[f64]| {
        if v.is_empty() {
            return "-".to_owned();
        }
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        format!(
            "median {:.3} (range {:.3}…{:.3})",
            median(&v).unwrap_or_default(),
            v[0],
            v[v.len() - 1]
        )
    };
    // Ratio of run i to the mean of runs i-d and i+d, for a field.
    let rel = |i: usize, d: usize, f: &dyn Fn(&RunFigures) -> f64| {
        f(&runs[i]) / ((f(&runs[i - d]) + f(&runs[i + d])) / 2.0)
    };
    let rate = |r: &RunFigures| r.1;
    let cpu = |r: &RunFigures| r.3;
    let scraped_idx: Vec<usize> = (1..runs.len()).step_by(2).collect();
    let control_idx: Vec<usize> = (2..runs.len() - 2).step_by(2).collect();
    let ratios = |idx: &[usize], d: usize, f: &dyn Fn(&RunFigures) -> f64| -> Vec<f64> {
        idx.iter().map(|&i| rel(i, d, f)).collect()
    };
    println!("\n== Scraped vs the unscraped runs either side (ratio; 1.000 = no change) ==");
    println!(
        "send rate: {} | control, unscraped vs unscraped: {}",
        summary(&ratios(&scraped_idx, 1, &rate)),
        summary(&ratios(&control_idx, 2, &rate)),
    );
    println!(
        "API CPU per send: {} | control: {}",
        summary(&ratios(&scraped_idx, 1, &cpu)),
        summary(&ratios(&control_idx, 2, &cpu)),
    );
    println!(
        "{} scrapes, {} ms each on average (wall time of the request)",
        scrape_n,
        ms(scrape_total / scrape_n.max(1))
    );
    Ok(())
}

/// PostgreSQL's checkpoints completed between two readings, for a window's line; empty on SQLite.
fn checkpoints_since(before: Option<(i64, i64)>, after: Option<(i64, i64)>) -> String {
    match (before, after) {
        (Some((req0, timed0)), Some((req1, timed1))) => format!(
            "; PostgreSQL checkpoints {} forced by WAL volume, {} timed",
            req1 - req0,
            timed1 - timed0
        ),
        _ => String::new(),
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let dur = Duration::from_secs(a.seconds);
    let contacts = 20_000;
    println!(
        "msgcontact-bench run: database {:?}, {} s per level, {} cores",
        c.db,
        a.seconds,
        std::thread::available_parallelism()?
    );

    // --- Accept path: ours (API only, so the worker does not compete) vs baseline (a). ---
    let provider = FakeProvider::start(None).await?;
    let mut stack = Stack::new(c.db, &c.amqp_url, &c.pg_url, contacts, 2_000_000).await?;
    stack.start_api(&[]).await?;
    let base_a = baseline::PublishServer::start(&c.amqp_url).await?;
    let ours_target = Target::ours(&stack);
    let base_target = Target::plain(base_a.addr);

    println!("\n== Accept path: closed loop, signed SendPhoneVerificationForMessageContact ==");
    println!(
        "{:>5} | {:>9} {:>9} {:>6} | {:>26} | {:>26}",
        "conc", "ours r/s", "base(a)", "ratio", "ours p50/p99/p99.9 ms", "base(a) p50/p99/p99.9 ms"
    );
    let mut best = 0.0f64;
    let mut at32 = None;
    let mut cpu_lines = Vec::new();
    let mut stage_lines = Vec::new();
    let load_pid = Some(std::process::id());
    for &conc in &a.concurrency {
        stack.purge_work_queue().await?;
        let _ = load::closed_loop(&ours_target, conc, Duration::from_secs(1)).await;
        let watch = CpuWatch::start();
        let before = stack.stages().await?;
        let ours = load::closed_loop(&ours_target, conc, dur).await;
        let after = stack.stages().await?;
        let ours_stages = after.since(&before);
        let ours_cpu = watch.split(&[("API", stack.api_pid()), ("load", load_pid)]);
        base_a.purge().await?;
        let _ = load::closed_loop(&base_target, conc, Duration::from_secs(1)).await;
        let watch = CpuWatch::start();
        let base = load::closed_loop(&base_target, conc, dur).await;
        let base_cpu = watch.split(&[("handler", base_a.pid()), ("load", load_pid)]);
        cpu_lines.push(format!(
            "{conc:>5} | ours: {}\n      | base(a): {}",
            ours_cpu.per(ours.ok + ours.errors),
            base_cpu.per(base.ok + base.errors)
        ));
        stage_lines.push(format!(
            "{conc:>5} | ours: {ours_stages}\n      | base(a): request {} ms (its publish to confirm, as measured by the load)",
            ms(base.mean())
        ));
        println!(
            "{:>5} | {:>9.0} {:>9.0} {:>6} | {:>26} | {:>26}",
            conc,
            ours.ok_rate(),
            base.ok_rate(),
            ratio(ours.ok_rate(), base.ok_rate()),
            ours.percentiles(),
            base.percentiles()
        );
        if ours.errors > 0 || base.errors > 0 {
            println!(
                "      errors: ours {} {:?}, base {} {:?}",
                ours.errors, ours.error_kinds, base.errors, base.error_kinds
            );
        }
        best = best.max(ours.ok_rate());
        if conc == 32 {
            at32 = Some((
                ours.ok_rate(),
                base.ok_rate(),
                after.means_since(&before),
                base.mean(),
            ));
        }
    }

    // Where each side's CPU went: at a level where the machine is busy, the sum says how far
    // the rate could go on these cores whatever the code did.
    println!(
        "\n== CPU per request by process (µs; the API holds SQLite's work, PostgreSQL's is its own) =="
    );
    for line in cpu_lines {
        println!("{line}");
    }
    // In a closed loop a level's rate is its concurrency over its mean latency: where our
    // latency goes, against base(a)'s single publish, says what bounds the ratio.
    println!(
        "\n== Where a send's time went, mean per accepted send (ours from the API's /metrics) =="
    );
    for line in stage_lines {
        println!("{line}");
    }

    // --- Latency at half our max rate, open loop, the same rate for both. ---
    // Each round measures the two systems one after the other, then side by side in the same
    // moments, with a probe of the disk beside each window: on a shared virtual disk a sync can
    // stall for hundreds of milliseconds with nothing of ours running, and a p99 is then set by
    // whichever window the stall fell in. The target takes the rounds measured apart in which
    // the probe saw no stall in either window; side by side a stall costs both, but the machine
    // also carries both loads at once, so it stands in only when every round was disturbed.
    let half = (best / 2.0).max(1.0);
    println!("\n== Latency at half our max rate ({half:.0} req/s offered, open loop) ==");
    let mut apart_ratios = Vec::new();
    let mut side_ratios = Vec::new();
    let p99_ratio =
        |o: &Stats, b: &Stats| o.p(0.99).as_secs_f64() / b.p(0.99).as_secs_f64().max(1e-9);
    for round in 1..=a.half_rounds.max(1) {
        stack.purge_work_queue().await?;
        let probe = disk::DiskProbe::start(stack.dir());
        let stages_before = stack.stage_buckets().await.unwrap_or_default();
        let checkpoints = stack.checkpoints().await;
        let ours = load::open_loop(&ours_target, half, dur).await;
        let ours_disk = probe.stop();
        let stages = stack.stage_buckets().await.unwrap_or_default();
        let ours_checkpoints = checkpoints_since(checkpoints, stack.checkpoints().await);
        base_a.purge().await?;
        let probe = disk::DiskProbe::start(stack.dir());
        let checkpoints = stack.checkpoints().await;
        let base = load::open_loop(&base_target, half, dur).await;
        let base_disk = probe.stop();
        let base_checkpoints = checkpoints_since(checkpoints, stack.checkpoints().await);
        let r = p99_ratio(&ours, &base);
        let clean = ours_disk.stalls == 0 && base_disk.stalls == 0;
        println!(
            "round {round} one after the other: ours p50/p99/p99.9 {} ms ({ours_disk}{ours_checkpoints}) | base(a) {} ms ({base_disk}{base_checkpoints}) | p99 ratio {r:.2}x{}",
            ours.percentiles(),
            base.percentiles(),
            if clean { "" } else { " (disk stalled)" }
        );
        // Which stage the tail is in, by the API's own histograms (their bucket bounds).
        println!(
            "        ours' own p99 by stage: {}",
            stages.quantiles_since(&stages_before, 0.99)
        );
        if clean {
            apart_ratios.push(r);
        }
        stack.purge_work_queue().await?;
        base_a.purge().await?;
        let probe = disk::DiskProbe::start(stack.dir());
        let (ours, base) =
            load::open_loop_side_by_side(&ours_target, &base_target, half, dur).await;
        let both_disk = probe.stop();
        let r = p99_ratio(&ours, &base);
        println!(
            "round {round} side by side:       ours p50/p99/p99.9 {} ms | base(a) {} ms | p99 ratio {r:.2}x ({both_disk})",
            ours.percentiles(),
            base.percentiles(),
        );
        side_ratios.push(r);
    }
    let rounds = side_ratios.len();
    let clean_rounds = apart_ratios.len();
    let apart_ratio = median(&apart_ratios);
    let side_ratio = median(&side_ratios).unwrap_or(f64::NAN);
    println!(
        "median p99 ratio: one after the other {} over the {clean_rounds} of {rounds} rounds without a disk stall; side by side {side_ratio:.2}x over {rounds}",
        apart_ratio.map_or("-".into(), |r| format!("{r:.2}x"))
    );
    let (half_ratio, half_basis) = match apart_ratio {
        Some(r) => (
            r,
            format!("median of {clean_rounds} rounds apart without a disk stall"),
        ),
        None => (
            side_ratio,
            format!("the disk stalled in every round apart: median of {rounds} side by side"),
        ),
    };

    if a.accept_only {
        base_a.stop().await;
        stack.stop().await;
        provider.stop().await;
        return Ok(());
    }

    // --- Scrape cost: the same c=32 level with and without /metrics scraped 10 times a second,
    // interleaved three times so drift (database growth, checkpoints) hits both sides alike. ---
    let (mut plain_rates, mut scraped_rates) = (Vec::new(), Vec::new());
    let (mut plain_p99, mut scraped_p99) = (Vec::new(), Vec::new());
    let (mut scrapes, mut scrape_time) = (0u32, Duration::ZERO);
    for _ in 0..3 {
        stack.purge_work_queue().await?;
        let plain = load::closed_loop(&ours_target, 32, dur / 2).await;
        plain_rates.push(plain.ok_rate());
        plain_p99.push(plain.p(0.99));
        let scraper = stack.scrape_metrics_every(Duration::from_millis(100));
        stack.purge_work_queue().await?;
        let scraped = load::closed_loop(&ours_target, 32, dur / 2).await;
        let (n, avg) = scraper.stop().await;
        scrapes += n;
        scrape_time += avg * n;
        scraped_rates.push(scraped.ok_rate());
        scraped_p99.push(scraped.p(0.99));
    }
    let median_d = |v: &[Duration]| {
        Duration::from_secs_f64(
            median(&v.iter().map(Duration::as_secs_f64).collect::<Vec<_>>()).unwrap_or_default(),
        )
    };
    let (plain_rate, scraped_rate) = (
        median(&plain_rates).unwrap_or_default(),
        median(&scraped_rates).unwrap_or_default(),
    );
    println!("\n== /metrics scrape cost (c=32, 3 interleaved pairs, medians) ==");
    println!(
        "without scraping {:.0} r/s p99 {} ms | scraped 10/s ({} scrapes, avg {} ms each) {:.0} r/s p99 {} ms | ratio {}",
        plain_rate,
        ms(median_d(&plain_p99)),
        scrapes,
        ms(scrape_time / scrapes.max(1)),
        scraped_rate,
        ms(median_d(&scraped_p99)),
        ratio(scraped_rate, plain_rate)
    );
    base_a.stop().await;
    stack.stop().await;

    // --- End-to-end: drains of a pre-filled queue of N jobs; ours and baseline (b) alternating. ---
    let n = a.e2e_jobs;
    println!(
        "\n== End to end: drains of {n} pre-filled jobs, provider unlimited, {} rounds ==",
        a.e2e_rounds
    );
    let drains = alternating_drains(c, &provider, n, a.e2e_rounds).await?;
    let flow_rate = (drains.ours_median / 2.0).max(1.0);
    let sent_lat = accept_to_sent(c, &provider, flow_rate, dur).await?;
    println!(
        "accept→Sent at {flow_rate:.0} sends/s (worker running): p50 {} ms, p99 {} ms over {} requests",
        sent_lat.0, sent_lat.1, sent_lat.2
    );

    println!("\n== Targets ==");
    if let Some((o, b, (_, wait, publish), base_mean)) = at32 {
        println!(
            "accepted r/s at c=32 ≥ 0.8× base(a): {} ({:.2})",
            if o >= 0.8 * b { "met" } else { "NOT met" },
            o / b
        );
        // A closed loop's rate is its concurrency over its mean latency, so the ratio is
        // base(a)'s request over ours: a send's shared transaction and then its publish, in
        // series (the reservation is durable before the job exists), against a publish alone.
        let base_ms = base_mean.as_secs_f64() * 1000.0;
        println!(
            "      latency composition: base(a) request {base_ms:.2} ms / ours (shared transaction {wait:.2} + publish {publish:.2}) = {:.2}; the transaction alone is {:.2}× base(a)'s whole request",
            base_ms / (wait + publish).max(1e-9),
            wait / base_ms.max(1e-9)
        );
    }
    println!(
        "p99 at half max ≤ 2× base(a) p99: {} ({half_ratio:.2}, {half_basis})",
        if half_ratio <= 2.0 { "met" } else { "NOT met" },
    );
    println!(
        "end-to-end jobs/s (running) ≥ 0.8× base(b): {} ({:.2}, median of {} rounds)",
        if drains.ratio >= 0.8 {
            "met"
        } else {
            "NOT met"
        },
        drains.ratio,
        a.e2e_rounds.max(1)
    );
    provider.stop().await;
    Ok(())
}

fn prefetch_env(c: &Common) -> [(&'static str, String); 1] {
    [("MSGCONTACT_PREFETCH", c.prefetch.to_string())]
}

/// Our drain: `n` sends accepted with the worker stopped, then the worker started on the full
/// queue; timed from the worker's start until the provider has every SMS.
async fn ours_drain(c: &Common, provider: &FakeProvider, n: usize) -> anyhow::Result<Drain> {
    let mut stack = Stack::new(c.db, &c.amqp_url, &c.pg_url, n, 2_000_000).await?;
    stack.start_api(&[]).await?;
    let target = Target::ours(&stack);
    let filled = load::fill_distinct(&target, n, 32).await;
    anyhow::ensure!(filled == n, "only {filled} of {n} sends were accepted");
    provider.reset();
    let t0 = Instant::now();
    stack.start_worker(provider, &prefetch_env(c)).await?;
    provider
        .wait_for(n, Duration::from_secs(600))
        .await
        .context("our worker did not deliver every job")?;
    let drain = provider.drain(n, t0);
    stack.wait_terminal(n, Duration::from_secs(60)).await?;
    stack.stop().await;
    Ok(drain)
}

/// accept→Sent latency (p50, p99 ms, requests) in flow: sends offered at `rate` for `dur` with the
/// worker running beside the API.
async fn accept_to_sent(
    c: &Common,
    provider: &FakeProvider,
    rate: f64,
    dur: Duration,
) -> anyhow::Result<(i64, i64, usize)> {
    let mut stack = Stack::new(c.db, &c.amqp_url, &c.pg_url, 20_000, 2_000_000).await?;
    stack.start_api(&[]).await?;
    stack.start_worker(provider, &prefetch_env(c)).await?;
    let target = Target::ours(&stack);
    let since = msgcontact::time::now_ms();
    let flow = load::open_loop(&target, rate, dur).await;
    stack
        .wait_terminal(flow.ok as usize, Duration::from_secs(120))
        .await?;
    let lat = stack.accept_to_sent_ms(since).await?;
    stack.stop().await;
    Ok(lat)
}

/// The medians of alternating drains: ours over baseline (b) (first SMS to last), and ours.
struct Drains {
    ratio: f64,
    ours_median: f64,
}

/// `rounds` drains of `jobs` pre-filled jobs each, ours then baseline (b), printed as a table;
/// a drain of a few seconds is one coin toss on this disk's sync stalls, so the figures are the
/// medians of the rounds.
async fn alternating_drains(
    c: &Common,
    provider: &FakeProvider,
    jobs: usize,
    rounds: usize,
) -> anyhow::Result<Drains> {
    let mut ratios = Vec::new();
    let mut ours_all = Vec::new();
    println!(
        "{:>5} | {:>10} {:>11} {:>6} | {:>10} {:>11} {:>6} | {:>14}",
        "round",
        "ours j/s",
        "base(b) j/s",
        "ratio",
        "whole ours",
        "whole base",
        "ratio",
        "start-up ms o/b"
    );
    for round in 1..=rounds.max(1) {
        let ours = ours_drain(c, provider, jobs).await?;
        provider.reset();
        let base = baseline::pipeline_drain(c, provider, jobs).await?;
        println!(
            "{round:>5} | {:>10.0} {:>11.0} {:>6} | {:>10.0} {:>11.0} {:>6} | {:>6}/{}",
            ours.steady_rate(),
            base.steady_rate(),
            ratio(ours.steady_rate(), base.steady_rate()),
            ours.rate(),
            base.rate(),
            ratio(ours.rate(), base.rate()),
            ms(ours.start_up),
            ms(base.start_up)
        );
        ratios.push(ours.steady_rate() / base.steady_rate());
        ours_all.push(ours.steady_rate());
    }
    ratios.sort_by(f64::total_cmp);
    ours_all.sort_by(f64::total_cmp);
    let mid = |v: &[f64]| median(v).unwrap_or_default();
    println!(
        "median ratio {:.2} (range {:.2}…{:.2}), ours median {:.0} jobs/s (first SMS to last)",
        mid(&ratios),
        ratios[0],
        ratios[ratios.len() - 1],
        mid(&ours_all)
    );
    Ok(Drains {
        ratio: mid(&ratios),
        ours_median: mid(&ours_all),
    })
}

/// End-to-end only: ours and baseline (b) drains alternate, then accept→Sent in flow.
async fn e2e(a: E2eArgs) -> anyhow::Result<()> {
    let c = &a.common;
    println!(
        "msgcontact-bench e2e: database {:?}, {} jobs per drain, {} rounds, prefetch {}, {} cores",
        c.db,
        a.jobs,
        a.rounds,
        c.prefetch,
        std::thread::available_parallelism()?
    );
    let provider = FakeProvider::start(None).await?;
    let drains = alternating_drains(c, &provider, a.jobs, a.rounds).await?;
    let rate = (drains.ours_median / 2.0).max(1.0);
    let (p50, p99, n) =
        accept_to_sent(c, &provider, rate, Duration::from_secs(a.flow_seconds)).await?;
    println!(
        "accept→Sent at {rate:.0} sends/s (worker running): p50 {p50} ms, p99 {p99} ms over {n} requests"
    );
    provider.stop().await;
    Ok(())
}

async fn held(a: HeldArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let offered = a.offered as f64;
    let minutes = a.minutes;
    // Distinct contacts for every send, so superseding does not hide work from the provider.
    let contacts = (a.offered as u64 * 60 * minutes) as usize + 1000;
    println!(
        "msgcontact-bench held: database {:?}, {offered:.0} sends/s offered for {minutes} min, provider {} SMS/s, queue max length {}",
        c.db, a.provider_rate, a.queue_max_length
    );
    let provider = FakeProvider::start(Some(a.provider_rate)).await?;
    let mut stack = Stack::new(c.db, &c.amqp_url, &c.pg_url, contacts, a.queue_max_length).await?;
    for _ in 0..a.apis.max(1) {
        stack.start_api(&[]).await?;
    }
    let workers = a.workers.max(1);
    for _ in 0..workers {
        stack
            .start_worker(
                &provider,
                &[
                    (
                        "MSGCONTACT_PROVIDER_TOTAL_RATE",
                        a.provider_rate.to_string(),
                    ),
                    ("MSGCONTACT_WORKER_COUNT", workers.to_string()),
                ],
            )
            .await?;
    }
    let target = Target::ours_all(&stack);
    let rss = |pids: Vec<Option<u32>>| {
        pids.into_iter()
            .map(stack::rss_mib)
            .collect::<Vec<_>>()
            .join(" + ")
    };
    if a.apis > 1 || workers > 1 {
        println!(
            "{} API and {workers} worker processes; RSS columns list each process",
            a.apis.max(1)
        );
    }
    println!(
        "{:>3} | {:>7} {:>6} {:>6} | {:>9} {:>9} {:>9} | {:>10} {:>10} | {:>7} | {:>6} {:>5} | {:>10}",
        "min",
        "200s",
        "503s",
        "other",
        "p99 200",
        "p99 503",
        "API's 503",
        "API RSS",
        "worker RSS",
        "depth",
        "SMS",
        "429s",
        "worst sync"
    );
    // A held run is long: one cut short (Ctrl-C, or a timeout's SIGTERM) still removes its
    // queues, whose backlog would otherwise sit in the broker, and its database.
    let stop = msgcontact::signal::shutdown();
    tokio::pin!(stop);
    let started = Instant::now();
    let mut total_ok = 0u64;
    for minute in 1..=minutes {
        // The disk's worst fsync of the minute: a 200's tail follows the disk's (its commit and
        // the broker's confirm wait on a sync), a 503's should not (it waits on neither).
        let probe = disk::DiskProbe::start(stack.dir());
        // The API's own histogram says how much of a 503's time the API spent on it: the rest
        // was the client's and the machine's (scheduling on 2 shared cores).
        let served_before = stack.send_latency(503).await.unwrap_or_default();
        let throttled_before = provider.throttled();
        let s: Stats = tokio::select! {
            s = load::open_loop(&target, offered, Duration::from_secs(60)) => s,
            _ = &mut stop => {
                println!("interrupted in minute {minute}: removing the queues and the database");
                stack.stop().await;
                provider.stop().await;
                return Ok(());
            }
        };
        let syncs = probe.stop();
        total_ok += s.ok;
        let depth = stack.work_depth().await.unwrap_or(0);
        let served = stack::bound_ms(
            stack
                .send_latency(503)
                .await
                .unwrap_or_default()
                .quantile_since(&served_before, 0.99),
        );
        println!(
            "{:>3} | {:>7} {:>6} {:>6} | {:>9} {:>9} {:>9} | {:>10} {:>10} | {:>7} | {:>6} {:>5} | {:>7} ms",
            minute,
            s.ok,
            s.unavailable,
            s.errors - s.unavailable,
            ms(s.p(0.99)),
            ms(s.p_unavailable(0.99)),
            served,
            rss(stack.api_pids()),
            rss(stack.worker_pids()),
            depth,
            provider.count(),
            provider.throttled() - throttled_before,
            ms(syncs.worst)
        );
    }
    println!(
        "load stopped after {:.0} s; {total_ok} accepted. Draining…",
        started.elapsed().as_secs_f64()
    );
    let drain_start = Instant::now();
    let sms_at_stop = provider.count();
    let mut last = Instant::now();
    loop {
        let (terminal, live) = stack.terminal_and_live().await?;
        if last.elapsed() >= Duration::from_secs(60) || live == 0 {
            let secs = drain_start.elapsed().as_secs_f64().max(1e-3);
            println!(
                "drain {:>5.0} s: terminal {terminal}, live {live}, depth {}, SMS since stop {} ({:.1}/s)",
                secs,
                stack.work_depth().await.unwrap_or(0),
                provider.count() - sms_at_stop,
                (provider.count() - sms_at_stop) as f64 / secs
            );
            last = Instant::now();
        }
        if live == 0 {
            break;
        }
        if drain_start.elapsed() > Duration::from_secs(a.drain_minutes * 60) {
            println!("drain did not finish within {} min", a.drain_minutes);
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = &mut stop => {
                println!("interrupted during the drain");
                break;
            }
        }
    }
    let summary = stack.outcome_summary().await?;
    let by_worker = stack.sent_by_worker().await;
    println!(
        "outcomes: {summary:?}; provider accepted {} SMS (the workers counted {} as sent), answered {} requests with 429, {} duplicate RequestIds",
        provider.count(),
        by_worker
            .iter()
            .map(|n| n.map_or("?".into(), |n| n.to_string()))
            .collect::<Vec<_>>()
            .join(" + "),
        provider.throttled(),
        provider.duplicates()
    );
    stack.stop().await;
    provider.stop().await;
    Ok(())
}

/// The median of a set of figures; of an even number, the mean of the middle two (of two rounds,
/// the upper one alone would be the worse round, not a middle).
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_of_an_even_count_is_the_middle_pairs_mean() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[11.5, 2.5]), Some(7.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
