//! One delivery from the work queue, from its decoding to its settlement: [`process`] decides,
//! [`claim`] takes the request, [`deliver`] calls the provider and records the answer, [`settle`]
//! acks, dead-letters or schedules the retry.

mod claim;
mod context;
mod deliver;
mod in_flight;
mod outcome;
mod process;
mod settle;

use lapin::message::Delivery;
use msgcontact::{
    job::{self, SendJob},
    retry,
};
use tracing::Instrument;

pub(crate) use context::Shared;
use context::{Disposition, JobCtx};
pub(crate) use in_flight::InFlight;

pub(crate) async fn handle_delivery(shared: &Shared, delivery: Delivery) {
    let request_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    let traceparent =
        job::header_str(&delivery.properties, job::HEADER_TRACEPARENT).unwrap_or_default();
    let attempt = Ord::max(
        job::header_u32(&delivery.properties, job::HEADER_ATTEMPT).unwrap_or(1),
        1,
    );
    // The trace id of the API request that accepted this job (W3C `traceparent`).
    let trace_id = traceparent.split('-').nth(1).unwrap_or_default().to_owned();
    let span = tracing::info_span!("job", request_id = %request_id, trace_id = %trace_id, attempt);
    let disposition = {
        async {
            let job = match SendJob::decode(&delivery.data) {
                Err(reason) => return Disposition::DeadLetter(reason),
                Ok(job) => job,
            };
            let ctx = JobCtx {
                attempt,
                redelivered: delivery.redelivered,
                claimed: Default::default(),
            };
            // A copy of a job still running here waits for it rather than racing it.
            let _in_flight = shared.in_flight.enter(&job.request_id).await;
            // The database is the source of truth: while it is unreachable, hold the delivery
            // (no ack, no requeue loop) and retry; past the schedule, or when stopping, give the
            // delivery back.
            retry::until_ok(
                &retry::DATABASE,
                "database error while processing",
                &shared.shutdown,
                || process::process(shared, &job, &ctx),
            )
            .await
            .unwrap_or(Disposition::Requeue)
        }
        .instrument(span.clone())
        .await
    };
    // Settling awaits too: the span is attached to the future, never held entered across an
    // await (that would leak it into whatever else runs on this thread).
    settle::settle(shared, &delivery, disposition)
        .instrument(span)
        .await;
}
