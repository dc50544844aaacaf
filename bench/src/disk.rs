//! A probe of the disk's sync latency beside a measurement: the broker confirms a message and the
//! database commits only after an fsync, so a disk that stalls its syncs sets every tail measured
//! on it, whoever's window the stall falls in.

use std::{
    io::Write,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How often the probe syncs: a 4 KiB write and `fdatasync` 20 times a second is far below what
/// the broker and the database write, so the probe does not make the stalls it looks for.
const EVERY: Duration = Duration::from_millis(50);
/// A sync slower than this counts as a stall.
pub const STALL: Duration = Duration::from_millis(50);

/// The probe's findings over its window.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskSyncs {
    pub syncs: u32,
    pub worst: Duration,
    pub stalls: u32,
}

impl std::fmt::Display for DiskSyncs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "disk: worst fsync {} ms, {} of {} over {} ms",
            crate::report::ms(self.worst),
            self.stalls,
            self.syncs,
            STALL.as_millis()
        )
    }
}

/// Syncs a small file on a thread of its own until stopped.
pub struct DiskProbe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<DiskSyncs>,
    path: PathBuf,
}

impl DiskProbe {
    /// Starts probing the file system that holds `dir` (the run's own directory, removed with
    /// it; on this kind of machine the broker's and the database's disk too).
    pub fn start(dir: &Path) -> Self {
        let path = dir.join("disk-probe");
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (path.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut found = DiskSyncs::default();
            let Ok(mut file) = std::fs::File::create(&p) else {
                return found;
            };
            let block = [0x5a_u8; 4096];
            let _ = file.write_all(&block);
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                // Rewriting a few blocks in place: the sync writes data, not a growing file's
                // metadata.
                if file.write_at(&block, (i % 16) * 4096).is_err() || file.sync_data().is_err() {
                    break;
                }
                let took = started.elapsed();
                found.syncs += 1;
                found.worst = found.worst.max(took);
                if took > STALL {
                    found.stalls += 1;
                }
                i += 1;
                std::thread::sleep(EVERY.saturating_sub(took));
            }
            found
        });
        Self { stop, thread, path }
    }

    pub fn stop(self) -> DiskSyncs {
        self.stop.store(true, Ordering::Relaxed);
        let found = self.thread.join().unwrap_or_default();
        let _ = std::fs::remove_file(&self.path);
        found
    }
}
