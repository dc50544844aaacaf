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

impl TempDb {
    /// A fresh file name in the temp directory.
    pub(crate) fn new(what: &str) -> Self {
        Self(std::env::temp_dir().join(format!("msgcontact-{what}-{}.db", uuid::Uuid::new_v4())))
    }

    pub(crate) fn url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.0.display())
    }
}
