//! The faults the suite injects, one at a time, each healed before the next.

use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use crate::deploy::Deployment;
use crate::history::History;
use crate::proxy::Link;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// kill -9 of a daemon, restarted after the hold.
    DaemonKill,
    /// SIGSTOP of a daemon, SIGCONT after the hold.
    DaemonStop,
    /// SIGTERM of a daemon (graceful shutdown), restarted after the hold.
    DaemonTerm,
    /// SIGSTOP of redis-server.
    RedisStop,
    /// kill -9 of redis-server and a restart from its append-only file.
    RedisRestart,
    /// kill -9 of redis-server and a restart with no data at all.
    RedisLoseData,
    /// One daemon cut from Redis (bytes held).
    RedisPartition,
    /// 20-150 ms added each way between one daemon and Redis.
    RedisDelay,
    /// The clients cut from one daemon.
    ClientPartition,
    /// 20-150 ms added each way between the clients and one daemon.
    ClientDelay,
    /// One daemon's wall clock an hour ahead or behind.
    ClockJump,
    /// Redis answers nothing for the hold (CLIENT PAUSE), as a slow server.
    RedisSlow,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::DaemonKill => "daemon-kill",
            Fault::DaemonStop => "daemon-stop",
            Fault::DaemonTerm => "daemon-term",
            Fault::RedisStop => "redis-stop",
            Fault::RedisRestart => "redis-restart",
            Fault::RedisLoseData => "redis-lose-data",
            Fault::RedisPartition => "redis-partition",
            Fault::RedisDelay => "redis-delay",
            Fault::ClientPartition => "client-partition",
            Fault::ClientDelay => "client-delay",
            Fault::ClockJump => "clock-jump",
            Fault::RedisSlow => "redis-slow",
        }
    }

    /// Whether the clients of the target daemon may see calls hang or fail.
    fn disturbs_clients(self) -> bool {
        matches!(
            self,
            Fault::DaemonKill
                | Fault::DaemonStop
                | Fault::DaemonTerm
                | Fault::ClientPartition
                | Fault::ClientDelay
        )
    }
}

/// Injects faults of `kinds` until `until`, each held 0.5-3 s (shorter
/// than --waiter-liveness, so queue entries outlive them) with 0.5-1.5 s of
/// calm between.
pub async fn inject(
    deploy: &mut Deployment,
    kinds: &[Fault],
    until: Instant,
    history: &History,
    rng: &mut fastrand::Rng,
) -> Result<()> {
    if kinds.is_empty() {
        tokio::time::sleep_until(until).await;
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_millis(rng.u64(500..1500))).await;
        if Instant::now() + Duration::from_secs(3) >= until {
            break;
        }
        let fault = kinds[rng.usize(..kinds.len())];
        let target = rng.usize(..deploy.daemons.len());
        let hold = Duration::from_millis(rng.u64(500..3000));
        tracing::info!(fault = fault.name(), daemon = target, ?hold, "fault");
        history.count_fault(fault.name());
        let disturbs = fault.disturbs_clients();
        if disturbs {
            deploy.disturbances.bump(target);
        }
        apply(deploy, fault, target, hold, rng).await?;
        if disturbs {
            deploy.disturbances.bump(target);
        }
        if fault == Fault::RedisLoseData {
            // Requests sent before the loss may find their queue gone.
            history.note_data_loss();
        }
    }
    tokio::time::sleep_until(until).await;
    Ok(())
}

async fn apply(
    deploy: &mut Deployment,
    fault: Fault,
    target: usize,
    hold: Duration,
    rng: &mut fastrand::Rng,
) -> Result<()> {
    let pause = || tokio::time::sleep(hold);
    let delay = Link::Delay(Duration::from_millis(rng.u64(20..150)));
    match fault {
        Fault::DaemonKill => {
            deploy.daemons[target].kill();
            pause().await;
            deploy.daemons[target].start().await?;
        }
        Fault::DaemonStop => {
            deploy.daemons[target].pause();
            pause().await;
            deploy.daemons[target].resume();
        }
        Fault::DaemonTerm => {
            deploy.daemons[target].terminate().await;
            pause().await;
            deploy.daemons[target].start().await?;
        }
        Fault::RedisStop => {
            deploy.redis.pause();
            pause().await;
            deploy.redis.resume();
        }
        Fault::RedisRestart => {
            deploy.redis.kill();
            pause().await;
            blocking(|r| r.restart(), &mut deploy.redis).await;
        }
        Fault::RedisLoseData => {
            deploy.redis.kill();
            pause().await;
            blocking(|r| r.restart_empty(), &mut deploy.redis).await;
        }
        Fault::RedisPartition | Fault::RedisDelay => {
            let link = &deploy.daemons[target].redis_link;
            link.set(if fault == Fault::RedisDelay {
                delay
            } else {
                Link::Blackhole
            });
            pause().await;
            link.set(Link::Pass);
        }
        Fault::ClientPartition | Fault::ClientDelay => {
            let link = &deploy.daemons[target].client_link;
            link.set(if fault == Fault::ClientDelay {
                delay
            } else {
                Link::Blackhole
            });
            pause().await;
            link.set(Link::Pass);
        }
        Fault::ClockJump => {
            let offset = if rng.bool() { 3600 } else { -3600 };
            deploy.daemons[target].set_clock(offset)?;
            pause().await;
            deploy.daemons[target].set_clock(0)?;
        }
        Fault::RedisSlow => {
            let ms = hold.as_millis().to_string();
            let redis = &deploy.redis;
            let mut conn = redis.connection();
            redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(&ms)
                .arg("ALL")
                .query::<()>(&mut conn)?;
            pause().await;
        }
    }
    Ok(())
}

/// Runs a blocking testkit call on the runtime's blocking pool, without
/// moving the server out: `block_in_place` keeps other tasks running.
async fn blocking<T>(f: impl FnOnce(&mut T), target: &mut T) {
    tokio::task::block_in_place(|| f(target));
}
