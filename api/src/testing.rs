//! Helpers shared by this crate's unit tests.

/// A test's SQLite file, removed with its WAL when the test ends, failed or not.
pub(crate) struct TempDb(pub(crate) std::path::PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}
