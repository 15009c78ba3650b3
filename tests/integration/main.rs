//! End-to-end tests: real redis-server, real daemons, real gRPC clients.
//! One test binary, one module per area.

mod harness;

mod api;
mod basics;
mod config_file;
mod contracts;
mod failover;
mod failures;
mod ha;
mod http;
mod lock_ids;
mod logging;
mod metrics;
mod model;
mod notifications;
mod replicas;
mod startup;
mod startup_without_redis;
