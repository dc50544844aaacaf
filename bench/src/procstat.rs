//! The processes under test: finding, starting checks and stopping them, and their memory and CPU
//! time from /proc.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::process::Child;

/// Directory holding the binaries under test (next to this executable).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .context("executable directory")?
        .to_path_buf();
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} not found; build the workspace first (cargo build --release --workspace)",
            p.display()
        );
    }
    Ok(p)
}

pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Resident set size of a process in MiB, from /proc.
pub fn rss_mib(pid: Option<u32>) -> String {
    let Some(pid) = pid else {
        return "-".into();
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or("-".into(), |kb| format!("{:.1} MiB", kb / 1024.0))
}

/// CPU time (user + system, all threads) a process has used so far, from /proc.
pub fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    proc_stat(pid?).map(|(_, ticks)| from_ticks(ticks))
}

/// A process's command name and CPU clock ticks so far, from `/proc/{pid}/stat`.
fn proc_stat(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised (and may hold spaces); utime and stime are the 14th and
    // 15th fields overall.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((stat[open + 1..close].to_owned(), ticks))
}

/// Clock ticks are 1/100 s on Linux.
fn from_ticks(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

/// Who used the machine's CPU during a measurement: every process's user + system time from /proc
/// at its start and at its end, so the figures of ours and a baseline can be split by process.
pub struct CpuWatch {
    start: std::collections::HashMap<u32, (String, u64)>,
    at: Instant,
}

/// CPU time used during a [`CpuWatch`], by role.
pub struct CpuSplit {
    pub elapsed: Duration,
    pub roles: Vec<(&'static str, Duration)>,
}

impl CpuSplit {
    pub fn total(&self) -> Duration {
        self.roles.iter().map(|(_, d)| *d).sum()
    }

    /// `role µs, …` per `n` units of work (accepted sends), and how busy the machine was.
    pub fn per(&self, n: u64) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
        let mut out: Vec<String> = self
            .roles
            .iter()
            .map(|(role, d)| format!("{role} {:.0}", us(*d)))
            .collect();
        out.push(format!(
            "total {:.0} µs; machine {:.0} % busy",
            us(self.total()),
            100.0 * self.total().as_secs_f64() / (cores * self.elapsed.as_secs_f64().max(1e-9))
        ));
        out.join(", ")
    }
}

fn ticks_by_pid() -> std::collections::HashMap<u32, (String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .collect()
}

impl CpuWatch {
    pub fn start() -> Self {
        Self {
            start: ticks_by_pid(),
            at: Instant::now(),
        }
    }

    /// CPU time since the start of each of `own` (role, pid), then of the broker (`beam.smp`),
    /// PostgreSQL's processes and everything else. A process that ended meanwhile is not counted
    /// (the pools here keep their connections); one that started meanwhile counts whole.
    pub fn split(&self, own: &[(&'static str, Option<u32>)]) -> CpuSplit {
        let end = ticks_by_pid();
        let mut roles: Vec<(&'static str, u64)> = own.iter().map(|(r, _)| (*r, 0)).collect();
        let (mut broker, mut database, mut other) = (0, 0, 0);
        for (pid, (comm, ticks)) in &end {
            let used = ticks - self.start.get(pid).map_or(0, |(_, t)| (*t).min(*ticks));
            if let Some(i) = own.iter().position(|(_, p)| *p == Some(*pid)) {
                roles[i].1 += used;
            } else if comm == "beam.smp" || comm == "erl_child_setup" {
                broker += used;
            } else if comm == "postgres" {
                database += used;
            } else {
                other += used;
            }
        }
        roles.extend([
            ("broker", broker),
            ("PostgreSQL", database),
            ("other", other),
        ]);
        CpuSplit {
            elapsed: self.at.elapsed(),
            roles: roles.into_iter().map(|(r, t)| (r, from_ticks(t))).collect(),
        }
    }
}

/// SIGTERM, then a kill if it does not exit within 30 s.
pub async fn terminate(mut child: Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

pub async fn wait_healthy(addr: SocketAddr) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("process at {addr} did not become ready (see its log)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
