//! Clock helpers: epoch milliseconds in storage, `YYYY-MM-DD HH:MM:SS` UTC on the wire.

use chrono::{DateTime, Utc};

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The wire format of dates: `YYYY-MM-DD HH:MM:SS`, UTC.
pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// The UTC day a quota counts against.
pub fn utc_day(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}
