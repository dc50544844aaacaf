//! The requests this process is working on, so a redelivered copy waits for its running original.

use std::sync::Arc;

/// Requests this process is working on. After a broker loss the broker redelivers the lost
/// session's deliveries while their jobs still run here (waiting on the provider, say); such a
/// copy waits for the running job instead of taking the request, found `Sending`, for an
/// interrupted attempt and sending a second SMS.
#[derive(Default)]
pub(crate) struct InFlight(
    std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
);

impl InFlight {
    pub(crate) async fn enter(&self, request_id: &str) -> InFlightGuard<'_> {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(request_id.to_owned())
            .or_default()
            .clone();
        let held = lock.clone().lock_owned().await;
        InFlightGuard {
            map: self,
            request_id: request_id.to_owned(),
            lock,
            held: Some(held),
        }
    }
}

pub(crate) struct InFlightGuard<'a> {
    pub(crate) map: &'a InFlight,
    pub(crate) request_id: String,
    pub(crate) lock: Arc<tokio::sync::Mutex<()>>,
    pub(crate) held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut map = self.map.0.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map's reference and ours left: nobody is waiting, the entry goes.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.request_id);
        }
    }
}
