//! `held`: an offered rate above the provider's for minutes, then the drain.

use std::time::{Duration, Instant};

use crate::{
    args::*,
    disk,
    fake_provider::FakeProvider,
    load::{self, Stats, Target},
    report::*,
    stack::Stack,
};

pub async fn held(a: HeldArgs) -> anyhow::Result<()> {
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
            .map(crate::procstat::rss_mib)
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
        let served = crate::metrics_text::bound_ms(
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
