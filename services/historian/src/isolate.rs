//! Writing a batch so that one bad row cannot hold back every other device.
//!
//! A batch is one transaction, so one row PostgreSQL refuses would fail it whole, and a
//! batch retried forever stops the historian: every later reading waits unacknowledged in
//! the broker. When the refusal is permanent ([`write::is_permanent`]: a constraint, a
//! value PostgreSQL will not take — not an outage) the batch is split in halves, each
//! written on its own, down to the single refused delivery, which is then kept as a
//! dead letter (`storage_refused`, PostgreSQL's message as detail) instead. A refused
//! reading in a batch of n costs about 2·log2(n) extra transactions.
//!
//! Parts that committed have their record taken (`None`), so when an outage interrupts
//! the splitting, the retry writes only what is left. Acknowledgements stay the caller's:
//! they go out once the whole batch is written, in delivery order.

use std::time::Duration;

use chrono::Utc;
use lentera_db::write::{self, Record, Rejected, Stored};
use lentera_protocol::rejection::excerpt;
use lentera_protocol::{DeviceId, Rejection, Topics};
use sqlx::PgPool;

use crate::consume::Pending;

/// What writing a batch did, beyond [`Stored`].
#[derive(Debug, Default)]
pub struct Written {
    pub stored: Stored,
    /// Deliveries PostgreSQL refused, now dead letters.
    pub refused: u64,
    /// Dead letters that PostgreSQL refused too, logged and dropped.
    pub lost: u64,
    /// Refusals to report on `{prefix}/{device}/error`, as (topic, payload).
    pub reports: Vec<(String, Vec<u8>)>,
}

/// Writes every record left in `batch`; see the module docs. Errors are outages only.
pub async fn write(
    pool: &PgPool,
    topics: &Topics,
    batch: &mut [Pending],
    timeout: Option<Duration>,
) -> Result<Written, sqlx::Error> {
    let mut out = Written::default();
    // Ranges still to write, the next on top; the whole batch first.
    let mut todo = vec![(0, batch.len())];
    while let Some((from, to)) = todo.pop() {
        let part = &mut batch[from..to];
        if part.iter().all(|p| p.record.is_none()) {
            continue;
        }
        let records = part.iter().filter_map(|p| p.record.as_ref());
        match write::store_all_within(pool, records, timeout).await {
            Ok(s) => {
                out.stored.inserted += s.inserted;
                out.stored.replaced += s.replaced;
                out.stored.rejected += s.rejected;
                for p in part.iter_mut() {
                    if let Some(Record::Rejected(r)) = p.record.take()
                        && let Some(report) = report(topics, &r)
                    {
                        out.reports.push(report);
                    }
                }
            }
            Err(e) if !write::is_permanent(&e) => return Err(e),
            Err(e) if to - from > 1 => {
                tracing::debug!(from, to, error = %e, "batch refused; splitting it to find the row");
                let mid = from + (to - from) / 2;
                todo.push((mid, to));
                todo.push((from, mid));
            }
            Err(e) => {
                let p = &mut part[0];
                let topic = p.delivery.publish.topic.clone();
                match p.record.take() {
                    Some(Record::Rejected(r)) => {
                        tracing::error!(%topic, reason = r.reason, error = %e,
                            "PostgreSQL refused even the dead letter; dropped");
                        out.lost += 1;
                    }
                    Some(_) => {
                        tracing::warn!(%topic, error = %e, "PostgreSQL refused a delivery; kept as a dead letter");
                        out.refused += 1;
                        p.record = Some(Record::Rejected(Rejected {
                            device: crate::record::topic_device(topics, &topic),
                            at: Utc::now(),
                            reason: "storage_refused".into(),
                            detail: write::describe(&e),
                            source: "mqtt".into(),
                            topic,
                            payload: p.delivery.publish.payload.to_vec(),
                        }));
                        todo.push((from, to));
                    }
                    None => {}
                }
            }
        }
    }
    Ok(out)
}

/// The error-topic report of a dead letter the historian made (the broker reports its
/// own refusals; repeating them would report them twice).
fn report(topics: &Topics, r: &Rejected) -> Option<(String, Vec<u8>)> {
    if r.source == "broker" {
        return None;
    }
    let device = DeviceId::parse(&r.device).ok()?;
    let rejection = Rejection {
        reason: r.reason.clone(),
        detail: r.detail.clone(),
        source: "historian".into(),
        topic: r.topic.clone(),
        at: r.at,
        payload: excerpt(&r.payload),
    };
    Some((topics.error(&device), rejection.to_payload()))
}
