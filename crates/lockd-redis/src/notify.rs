//! Keyspace notifications: wake-up hints for the resources this daemon has waiters on.
//!
//! Notifications can be late or lost (a reconnect drops whatever was published
//! meanwhile), so they only ever make the daemon look sooner; its own timers
//! and periodic syncs are what guarantee progress.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::conn::Connector;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use crate::error::StoreError;
use crate::keys::Namespace;

/// A hint from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A key of this resource changed.
    Changed(String),
    /// The notification connection dropped; anything may have been missed.
    Disconnected,
}

/// Channel name to resource, for the channels currently subscribed.
type Routes = Arc<Mutex<HashMap<String, String>>>;

/// A RESP3 connection subscribed to the keyspace channels of watched resources.
/// It reconnects and resubscribes by itself.
pub struct Notifier {
    conn: ConnectionManager,
    routes: Routes,
    ns: Namespace,
    timeout: Duration,
}

impl Notifier {
    pub(crate) async fn connect(
        connector: &Connector,
        ns: Namespace,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Result<Notifier, StoreError> {
        let routes: Routes = Arc::default();
        let push_routes = Arc::clone(&routes);
        let on_push = move |push: PushInfo| {
            let notice = match push.kind {
                PushKind::Message => {
                    let (channel, event) = match push.data.as_slice() {
                        [Value::BulkString(c), Value::BulkString(e)] => (c, e),
                        _ => return Ok(()),
                    };
                    // Every script refreshes key expiries; an `expire` event is
                    // never a change of holders or queue, and following it would
                    // make each sync wake the next one.
                    if event.as_slice() == b"expire" {
                        return Ok(());
                    }
                    let channel = String::from_utf8_lossy(channel).into_owned();
                    let resource = push_routes
                        .lock()
                        .ok()
                        .and_then(|routes| routes.get(&channel).cloned());
                    match resource {
                        Some(resource) => Notice::Changed(resource),
                        None => return Ok(()),
                    }
                }
                PushKind::Disconnection => Notice::Disconnected,
                _ => return Ok(()),
            };
            notices.send(notice).map_err(|_| redis::aio::SendError)
        };
        let config = ConnectionManagerConfig::new()
            .set_push_sender(on_push)
            .set_automatic_resubscription();
        let conn = connector.subscriber(config).await?;
        Ok(Notifier {
            conn,
            routes,
            ns,
            timeout: connector.timeout(),
        })
    }

    fn channels(&self, resource: &str) -> [String; 2] {
        let keys = self.ns.resource(resource);
        [
            self.ns.keyspace_channel(&keys.holders),
            self.ns.keyspace_channel(&keys.queue),
        ]
    }

    /// Starts delivering changes of `resource`. The caller must look at the
    /// resource once more afterwards: changes before the subscription are not replayed.
    pub async fn watch(&self, resource: &str) -> Result<(), StoreError> {
        let channels = self.channels(resource);
        if let Ok(mut routes) = self.routes.lock() {
            for channel in &channels {
                routes.insert(channel.clone(), resource.to_owned());
            }
        }
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.timeout, conn.subscribe(&channels))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))??;
        Ok(())
    }

    /// Stops delivering changes of `resource`.
    pub async fn unwatch(&self, resource: &str) -> Result<(), StoreError> {
        let channels = self.channels(resource);
        if let Ok(mut routes) = self.routes.lock() {
            for channel in &channels {
                routes.remove(channel);
            }
        }
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.timeout, conn.unsubscribe(&channels))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))??;
        Ok(())
    }

    /// Keeps the connection honest: a failed reconnect is retried only by the next command.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(
            self.timeout,
            redis::cmd("PING").query_async::<Value>(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Timeout(self.timeout))??;
        Ok(())
    }
}
