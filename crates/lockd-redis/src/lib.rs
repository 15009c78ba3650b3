//! The Redis lock store of lockd.
//!
//! Every change of lock state is one Lua script (`lua/`, loaded once and run
//! by SHA) that reads the clock from the Redis server and touches the keys of
//! one resource only, all under the resource's hash tag, so the store also
//! works on Redis Cluster slots.
//!
//! - [`conn`]: [`conn::Connector`], the one place connections are opened: one
//!   server, a primary found through Sentinel, or a Cluster; [`conn::Lane`]s that
//!   replace themselves when their primary fails or moves.
//! - [`keys`]: key names and hash tags.
//! - [`scripts`]: the Lua scripts and the argument head they share.
//! - [`store`]: [`RedisStore`], the lock operations, the reaper and the read-only views.
//! - [`index`]: the per-client lease index behind ListHeld.
//! - [`stats`]: deployment-wide statistics, summed over the buckets.
//! - [`notify`]: keyspace notifications as wake-up hints.
//! - [`flags`]: the notification flags lockd needs, and turning them on.
//! - `reply`: parsing of script replies.
//! - [`error`]: the store's error type, `StoreError`.

pub mod conn;
pub mod error;
pub mod flags;
pub mod index;
pub mod keys;
pub mod notify;
mod reply;
pub mod scripts;
pub mod stats;
pub mod store;

pub use error::StoreError;
pub use flags::NOTIFY_FLAGS;
pub use notify::{Notice, Notifier};
pub use store::{Observer, RedisOptions, RedisStore};
