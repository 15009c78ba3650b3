//! Statistics: Prometheus counters of this daemon's operations, and the
//! deployment-wide totals read from the store, which counts as it changes
//! state (exact, and the same from every replica).

use std::sync::Arc;

use lockd_core::{Event, Stats};

use crate::metrics::Metrics;
use crate::store::Store;

/// Feeds operation events to the metrics and reads the store's totals.
pub struct StatsRecorder {
    metrics: Arc<Metrics>,
}

impl StatsRecorder {
    pub fn new(metrics: Arc<Metrics>) -> StatsRecorder {
        StatsRecorder { metrics }
    }

    /// Adds the events of one operation to this daemon's metrics.
    pub fn record(&self, events: &[Event]) {
        if !events.is_empty() {
            self.metrics.record(events);
        }
    }

    /// The deployment-wide statistics.
    pub async fn read(&self, store: &Store) -> Result<Stats, lockd_core::LockError> {
        let totals = store.read_stats().await?;
        Ok(Stats::from_totals(&totals))
    }
}
