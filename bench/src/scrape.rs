//! `scrape`: what scraping /metrics costs the accept path.

use std::time::Duration;

use crate::{
    args::*,
    load::{self, Target},
    report::*,
    stack::Stack,
};

/// One run of `scrape`: scraped?, sends/s, p99, API CPU ms per 1000 accepted sends.
type RunFigures = (bool, f64, Duration, f64);

/// Unscraped and scraped runs alternate (P S P S … P); each scraped run is compared with the mean
/// of the unscraped runs on either side of it, which cancels a linear drift (the database grows
/// through the whole run). The same comparison of each inner unscraped run with its unscraped
/// neighbours is the control: it shows how far two runs of the same thing differ here.
pub async fn scrape(a: ScrapeArgs) -> anyhow::Result<()> {
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
        let cpu0 = crate::procstat::cpu_time(stack.api_pid());
        let scraper = scraped
            .then(|| stack.scrape_metrics_every(Duration::from_secs(1) / a.per_second.max(1)));
        let r = load::closed_loop(&target, a.concurrency, dur).await;
        if let Some(s) = scraper {
            let (n, avg) = s.stop().await;
            scrape_n += n;
            scrape_total += avg * n;
        }
        let cpu = match (cpu0, crate::procstat::cpu_time(stack.api_pid())) {
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
pub fn checkpoints_since(before: Option<(i64, i64)>, after: Option<(i64, i64)>) -> String {
    match (before, after) {
        (Some((req0, timed0)), Some((req1, timed1))) => format!(
            "; PostgreSQL checkpoints {} forced by WAL volume, {} timed",
            req1 - req0,
            timed1 - timed0
        ),
        _ => String::new(),
    }
}
