//! The development provider: each SMS is appended to a file as a JSON line, code in clear.

use std::{io::Write, sync::Mutex};

use super::message::{FailureClass, ProviderFailure, Sms};

pub(super) fn send(
    file: &std::path::Path,
    lock: &Mutex<()>,
    sms: &Sms,
) -> Result<String, ProviderFailure> {
    // Development only: the code is written out in clear, and says so.
    tracing::warn!(
        request_id = %sms.request_id,
        phone = %sms.phone_number,
        code = %sms.code,
        "DEVELOPMENT log provider: SMS not sent, written to the log and {}",
        file.display()
    );
    let line = serde_json::json!({
        "request_id": sms.request_id,
        "phone_number": sms.phone_number,
        "message": sms.message,
        "code": sms.code,
        "sent_at": msgcontact::time::format_ms(msgcontact::time::now_ms()),
    });
    let write = || -> std::io::Result<()> {
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = file.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)?;
        writeln!(f, "{line}")
    };
    write().map_err(|e| ProviderFailure {
        class: FailureClass::Transient,
        code: "LogWriteFailed".into(),
        message: format!("could not write the development log file ({:?})", e.kind()),
        retry_after: None,
    })?;
    Ok(format!("log-{}", sms.request_id))
}
