//! Load drivers: closed loop (each client sends its next request when the last
//! one is answered: the peak rate) and open loop (requests arrive at a fixed
//! rate whatever the answers do, and latency counts from the arrival, so time a
//! request spends queued behind slow ones is not hidden: no coordinated omission).
//!
//! Both are bounded in time, and in count: the open loop issues exactly
//! `rate * duration` requests, the closed loop stops at `MAX_OPS`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::future::BoxFuture;
use tokio::sync::{Mutex, mpsc};

use crate::metrics::Lat;
use crate::systems::{LockReq, LockSystem};

/// Upper bound on operations of one closed-loop run, whatever its duration.
const MAX_OPS: u64 = 50_000_000;

/// After the open loop's last arrival, how long queued requests may still be
/// started; the rest are counted as dropped.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Service times of one acquire+release pair.
pub struct PairTimes {
    pub acquire: Duration,
    pub release: Duration,
}

/// One operation of logical client `worker`, its `seq`th.
pub type PairOp = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, Result<PairTimes>> + Send + Sync>;

/// An operation that takes and releases `<prefix><worker>/<seq % keys>`, so that
/// every client cycles over its own `keys` resources and never meets another.
pub fn pair_op(sys: Arc<dyn LockSystem>, prefix: String, keys: u64, ttl_ms: u64) -> PairOp {
    Arc::new(move |worker, seq| {
        let sys = sys.clone();
        let req = LockReq {
            resource: format!("{prefix}{worker}/{}", seq % keys),
            client_id: format!("bench-{worker}"),
            ttl_ms,
            wait: Duration::from_secs(2),
        };
        Box::pin(async move {
            let t0 = Instant::now();
            let held = sys.acquire(worker, &req).await?;
            let t1 = Instant::now();
            sys.release(worker, &held).await?;
            Ok(PairTimes {
                acquire: t1 - t0,
                release: t1.elapsed(),
            })
        })
    })
}

/// What a run of either loop measured.
#[derive(Default)]
pub struct LoadResult {
    /// Completed operations in the measured window.
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Open loop only: arrivals not started within [`DRAIN_GRACE`] of the end.
    pub dropped: u64,
    pub elapsed: Duration,
    /// Acquire latency; in the open loop counted from the arrival.
    pub acquire: Lat,
    pub release: Lat,
    /// Open loop only: arrival to release done.
    pub pair: Lat,
    /// Open loop only: acquire from the moment it was sent.
    pub acquire_service: Lat,
    /// Open loop only: how late each batch of arrivals was released against the
    /// schedule. Large values mean the load generator itself was starved of CPU.
    pub dispatch_lag: Lat,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }

    fn merge(&mut self, other: LoadResult) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.dropped += other.dropped;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.acquire.merge(&other.acquire);
        self.release.merge(&other.release);
        self.pair.merge(&other.pair);
        self.acquire_service.merge(&other.acquire_service);
    }

    fn error(&mut self, e: anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }
}

/// `clients` workers run `op` back to back for `warmup + duration`; only the
/// operations started after the warm-up are measured.
pub async fn closed_loop(
    clients: usize,
    warmup: Duration,
    duration: Duration,
    op: PairOp,
) -> LoadResult {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = LoadResult::default();
            let mut seq = 0u64;
            while Instant::now() < end && seq < MAX_OPS / clients as u64 {
                let t = Instant::now();
                seq += 1;
                match op(worker, seq).await {
                    Ok(p) if t >= measure_from => {
                        r.ops += 1;
                        r.acquire.record(p.acquire);
                        r.release.record(p.release);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        r.error(e);
                        // Do not spin on a failing system.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            r
        }));
    }
    let mut total = LoadResult::default();
    for t in tasks {
        if let Ok(r) = t.await {
            total.merge(r);
        }
    }
    total.elapsed = Instant::now().saturating_duration_since(measure_from);
    total
}

/// Requests arrive at `rate` per second for `duration` and are served by
/// `clients` workers, each doing one at a time. Arrivals are released in 1 ms
/// batches (the timer's resolution) and stamped with the batch's release time.
pub async fn open_loop(clients: usize, rate: f64, duration: Duration, op: PairOp) -> LoadResult {
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let (tx, rx) = mpsc::unbounded_channel::<(Instant, u64)>();
    let rx = Arc::new(Mutex::new(rx));
    let start = Instant::now();
    let drain_deadline = start + duration + DRAIN_GRACE;
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let op = op.clone();
        let rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = LoadResult::default();
            loop {
                let next = rx.lock().await.recv().await;
                let Some((arrived, seq)) = next else { break };
                let sent = Instant::now();
                if sent > drain_deadline {
                    r.dropped += 1;
                    continue;
                }
                let queued = sent - arrived;
                match op(worker, seq).await {
                    Ok(p) => {
                        r.ops += 1;
                        r.acquire.record(queued + p.acquire);
                        r.acquire_service.record(p.acquire);
                        r.release.record(p.release);
                        r.pair.record(queued + p.acquire + p.release);
                    }
                    Err(e) => r.error(e),
                }
            }
            r
        }));
    }
    let mut result_lag = Lat::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut issued = 0u64;
    while issued < total {
        tick.tick().await;
        let now = Instant::now();
        let due = ((rate * (now - start).as_secs_f64()) as u64).min(total);
        if due > issued {
            let scheduled = start + Duration::from_secs_f64(issued as f64 / rate);
            // The timer's own 1 ms granularity is expected; count only lateness past it.
            result_lag.record(now.saturating_duration_since(scheduled + Duration::from_millis(1)));
        }
        for seq in issued..due {
            let _ = tx.send((now, seq));
        }
        issued = issued.max(due);
    }
    drop(tx);
    let mut result = LoadResult::default();
    for t in tasks {
        if let Ok(r) = t.await {
            result.merge(r);
        }
    }
    result.elapsed = start.elapsed();
    result.dispatch_lag = result_lag;
    result
}
