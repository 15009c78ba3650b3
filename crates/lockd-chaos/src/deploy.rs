//! The system under test: one redis-server and several lockd daemons, each behind two proxies.
//!
//! Each daemon reaches Redis through its own proxy and is reached by the
//! clients through another, so a partition or a delay can cut one daemon
//! from Redis, or the clients from one daemon. Every daemon runs under
//! libfaketime with its own clock file, so its wall clock can jump.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use lockd_testkit::{Lockd, LockdCommand, RedisServer, TempDir, faketime_preload};

use crate::proxy::Proxy;

/// The flags every daemon of the run gets: short leases and a short
/// quarantine, so that faults heal within a quick run.
const DAEMON_FLAGS: &[&str] = &[
    "--max-ttl",
    "5s",
    "--default-ttl",
    "5s",
    "--failover-quarantine",
    "5s",
    "--log-level",
    "warn",
];

/// One daemon and its two links.
#[derive(Debug)]
pub struct Daemon {
    process: Option<Lockd>,
    command: LockdCommand,
    /// Daemon to Redis.
    pub redis_link: Proxy,
    /// Clients to daemon.
    pub client_link: Proxy,
    clock_file: PathBuf,
}

/// Counts, per daemon, the starts and ends of faults its clients can see
/// (the daemon stopped or killed, the link to it cut or slowed): a call that
/// saw the count change may hang or fail without that being lockd's fault.
#[derive(Debug)]
pub struct Disturbances(Vec<AtomicU64>);

impl Disturbances {
    pub fn of(&self, daemon: usize) -> u64 {
        self.0[daemon].load(Ordering::SeqCst)
    }

    pub fn bump(&self, daemon: usize) {
        self.0[daemon].fetch_add(1, Ordering::SeqCst);
    }
}

/// Redis and the daemons.
#[derive(Debug)]
pub struct Deployment {
    pub redis: RedisServer,
    pub daemons: Vec<Daemon>,
    pub disturbances: Arc<Disturbances>,
    _scratch: TempDir,
}

impl Deployment {
    /// Starts redis-server (append-only file, fsync every second, so a
    /// kill -9 may lose the last second) and `count` daemons of `bin`.
    pub async fn start(bin: PathBuf, count: usize) -> Result<Deployment> {
        let redis = tokio::task::spawn_blocking(|| {
            RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "everysec"])
        })
        .await
        .context("starting redis-server")?;
        let scratch = TempDir::new("lockd-chaos").context("creating a scratch folder")?;
        let preload = faketime_preload();
        let mut daemons = Vec::new();
        for i in 0..count {
            let redis_link = Proxy::start(redis.addr()).await?;
            let client_link = Proxy::start(redis.addr()).await?;
            let clock_file = scratch.path().join(format!("clock-{i}"));
            std::fs::write(&clock_file, "+0")?;
            let url = format!("redis://{}", redis_link.addr());
            let command = Lockd::command(&bin)
                .args(&["--redis-url", &url])
                .args(DAEMON_FLAGS)
                .env("LD_PRELOAD", &preload)
                .env("FAKETIME_TIMESTAMP_FILE", &clock_file.display().to_string())
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("DONT_FAKE_MONOTONIC", "1");
            let mut daemon = Daemon {
                process: None,
                command,
                redis_link,
                client_link,
                clock_file,
            };
            daemon.start().await?;
            daemons.push(daemon);
        }
        let disturbances = Arc::new(Disturbances(
            (0..count).map(|_| AtomicU64::new(0)).collect(),
        ));
        Ok(Deployment {
            redis,
            daemons,
            disturbances,
            _scratch: scratch,
        })
    }

    /// Where the clients reach each daemon.
    pub fn endpoints(&self) -> Vec<String> {
        self.daemons
            .iter()
            .map(|d| d.client_link.addr().to_string())
            .collect()
    }
}

impl Daemon {
    /// Starts the daemon (again) and points its client link at it.
    pub async fn start(&mut self) -> Result<()> {
        let command = self.command.clone();
        let process = tokio::task::spawn_blocking(move || command.start())
            .await
            .context("starting lockd")?;
        self.client_link.set_upstream(process.addr());
        self.process = Some(process);
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// SIGTERM and waits for the daemon's graceful exit.
    pub async fn terminate(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = tokio::task::spawn_blocking(move || p.terminate()).await;
        }
    }

    pub fn pause(&self) {
        if let Some(p) = &self.process {
            p.pause();
        }
    }

    pub fn resume(&self) {
        if let Some(p) = &self.process {
            p.resume();
        }
    }

    /// Moves the daemon's wall clock `offset_secs` from the real one
    /// (libfaketime rereads the file within a second).
    pub fn set_clock(&self, offset_secs: i64) -> Result<()> {
        std::fs::write(&self.clock_file, format!("{offset_secs:+}"))?;
        Ok(())
    }

    pub fn log(&self) -> String {
        self.process.as_ref().map(Lockd::log).unwrap_or_default()
    }
}
