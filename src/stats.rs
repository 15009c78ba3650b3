//! Statistics of this daemon's operations, added to the deployment-wide totals in batches.

use std::sync::{Arc, Mutex};

use lockd_core::{Event, Stats, StatsDelta};

use crate::metrics::Metrics;
use crate::store::Store;

/// How many of its busiest resources a daemon adds to the top list per flush.
const RESOURCES_PER_FLUSH: usize = 32;

/// Counter changes gathered since the last flush.
pub struct StatsRecorder {
    pending: Mutex<StatsDelta>,
    metrics: Arc<Metrics>,
}

impl StatsRecorder {
    pub fn new(metrics: Arc<Metrics>) -> StatsRecorder {
        StatsRecorder {
            pending: Mutex::default(),
            metrics,
        }
    }

    /// Adds the events of one operation on `resource`.
    pub fn record(&self, resource: &str, events: &[Event]) {
        if !events.is_empty() {
            self.metrics.record(events);
            self.lock().record(resource, events);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatsDelta> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds what was gathered to the store's totals; on failure keeps it for the next try.
    pub async fn flush(&self, store: &Store) {
        let mut delta = std::mem::take(&mut *self.lock());
        if delta.is_empty() {
            return;
        }
        delta.keep_top_resources(RESOURCES_PER_FLUSH);
        if let Err(err) = store.add_stats(&delta).await {
            tracing::warn!(error = %err, "flushing statistics failed; will retry");
            self.lock().merge(delta);
        }
    }

    /// The deployment-wide statistics, including what this daemon has not flushed yet.
    pub async fn read(&self, store: &Store) -> Result<Stats, lockd_core::LockError> {
        self.flush(store).await;
        let totals = store.read_stats().await?;
        Ok(Stats::from_totals(&totals))
    }
}
