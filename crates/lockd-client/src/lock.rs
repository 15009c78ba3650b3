//! Asking for a lock: the [`LockBuilder`], and the [`QueueStream`] of `WaitQueue`.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::stream::{self, BoxStream, StreamExt};
use tonic::Streaming;

use crate::client::{Client, lease_of, millis};
use crate::error::{Error, Result};
use crate::guard::LockGuard;
use crate::pb;
use crate::retry::Retry;
use crate::types::Mode;

/// A lock request being put together; made by [`Client::lock`].
///
/// Unset options take the daemon's defaults: exclusive mode, the default ttl
/// (30 s), a 5 s wait, unlimited renewals, and the client's client_id.
///
/// ```no_run
/// use std::time::Duration;
/// use lockd_client::{Client, Mode};
///
/// # async fn demo() -> lockd_client::Result<()> {
/// let client = Client::connect("127.0.0.1:50051").await?;
/// let guard = client
///     .lock("reports/2024")
///     .mode(Mode::Shared)
///     .ttl(Duration::from_secs(10))
///     .wait(Duration::from_secs(30))
///     .acquire()
///     .await?;
/// println!("fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[must_use = "a LockBuilder does nothing until .acquire() or .queue()"]
pub struct LockBuilder {
    client: Client,
    request: pb::AcquireRequest,
}

impl LockBuilder {
    pub(crate) fn new(client: Client, resource: String) -> LockBuilder {
        let request = pb::AcquireRequest {
            resource,
            client_id: client.client_id().to_owned(),
            ..Default::default()
        };
        LockBuilder { client, request }
    }

    /// How the lock is held (default [`Mode::Exclusive`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.request.set_mode(mode.into());
        self
    }

    /// The lease's time to live; the guard renews it every third of it.
    /// Unset or zero: the daemon's default (30 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.request.ttl_ms = millis(ttl);
        self
    }

    /// How long to wait in line. Unset: the daemon's default (5 s);
    /// zero: try once and fail with `DEADLINE_EXCEEDED` if the lock is busy.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.request.wait_timeout_ms = Some(millis(wait));
        self
    }

    /// Presents `client_id` for this lease instead of the client's own.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.request.client_id = client_id.into();
        self
    }

    /// How many times the lease may be renewed; 0 (the default) means the
    /// daemon's limit, itself unlimited by default. The guard reports the
    /// lease lost when the limit stops a renewal.
    pub fn max_renewals(mut self, max_renewals: u32) -> Self {
        self.request.max_renewals = max_renewals;
        self
    }

    /// The request as it will be sent.
    pub fn request(&self) -> &pb::AcquireRequest {
        &self.request
    }

    /// Takes the lock with `Acquire`, waiting in line as configured.
    ///
    /// A busy lock fails with `DEADLINE_EXCEEDED` once the wait is over. An
    /// attempt that fails with `UNAVAILABLE` (a daemon shutting down, Redis
    /// unreachable for a moment) is made again after a backoff of 50 ms
    /// doubling to 1 s, with jitter, for as long as the wait lasts (an unset
    /// wait counts as the daemon's default, 5 s); the last error is returned
    /// when no time is left. This is safe: the daemon guarantees that an
    /// Acquire answered with an error leaves no lease behind.
    pub async fn acquire(self) -> Result<LockGuard> {
        let LockBuilder {
            client,
            mut request,
        } = self;
        let client_id = request.client_id.clone();
        let mut retry = Retry::start(&request);
        let (lease, sent) = loop {
            // The lease's time counts from the sending of the request that
            // got it, no later than the grant: the answer may come long after
            // (replicas confirming it, a slow network).
            let sent = Instant::now();
            match client.raw().acquire(request.clone()).await {
                Ok(resp) => break (resp.into_inner().lease, sent),
                Err(status) => {
                    let err = Error::from(status);
                    if !retry.again(&err, &mut request).await {
                        return Err(err);
                    }
                }
            }
        };
        Ok(LockGuard::start(client, client_id, lease_of(lease)?, sent))
    }

    /// Takes the lock through `WaitQueue`, which reports the place in line.
    ///
    /// The stream yields [`QueueEvent::Queued`] at once and whenever the
    /// position improves, then [`QueueEvent::Granted`] with the guard, then
    /// ends. Dropping the stream before the grant leaves the queue.
    ///
    /// A call that fails with `UNAVAILABLE` before the grant is made again
    /// within the wait, as [`LockBuilder::acquire`] does; the stream then
    /// goes on with the positions of the new place in line.
    ///
    /// ```no_run
    /// use futures::StreamExt;
    /// use lockd_client::{Client, QueueEvent};
    ///
    /// # async fn demo() -> lockd_client::Result<()> {
    /// let client = Client::connect("127.0.0.1:50051").await?;
    /// let mut events = client.lock("deploy").queue();
    /// while let Some(event) = events.next().await {
    ///     match event? {
    ///         QueueEvent::Queued { position, queue_length } => {
    ///             eprintln!("waiting: {position} ahead of us, {queue_length} in line")
    ///         }
    ///         QueueEvent::Granted(guard) => {
    ///             println!("got it: token {}", guard.fencing_token());
    ///             guard.release().await?;
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn queue(self) -> QueueStream {
        let LockBuilder { client, request } = self;
        let retry = Retry::start(&request);
        let inner = stream::unfold(QueueState::Start(client, request, retry), QueueState::step);
        QueueStream {
            inner: inner.boxed(),
        }
    }
}

impl fmt::Debug for LockBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockBuilder")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// One step of waiting in a [`QueueStream`].
// A stream yields at most one `Granted`: boxing the guard would cost every
// caller a deref for no measurable saving.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum QueueEvent {
    /// The place in line: `position` 0 means next; `queue_length` counts every
    /// waiter of the resource, this one included.
    Queued {
        /// Waiters ahead of this one.
        position: u64,
        /// All waiters of the resource.
        queue_length: u64,
    },
    /// The lock is ours; the last event of the stream.
    Granted(LockGuard),
}

/// The events of a `WaitQueue` call; see [`LockBuilder::queue`].
///
/// Ends after [`QueueEvent::Granted`] or after the first error (for example
/// `DEADLINE_EXCEEDED` when the wait ran out).
#[must_use = "streams do nothing unless polled"]
pub struct QueueStream {
    inner: BoxStream<'static, Result<QueueEvent>>,
}

impl QueueStream {
    /// Waits for the grant, calling `on_queued(position, queue_length)` for
    /// every position update on the way.
    pub async fn granted(mut self, mut on_queued: impl FnMut(u64, u64)) -> Result<LockGuard> {
        while let Some(event) = self.next().await {
            match event? {
                QueueEvent::Queued {
                    position,
                    queue_length,
                } => on_queued(position, queue_length),
                QueueEvent::Granted(guard) => return Ok(guard),
            }
        }
        Err(Error::Protocol("WaitQueue ended without a grant".into()))
    }
}

impl Stream for QueueStream {
    type Item = Result<QueueEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl fmt::Debug for QueueStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueStream").finish_non_exhaustive()
    }
}

/// Where a [`QueueStream`] is: the call not made yet, the response stream
/// open, or finished. Dropping `Open` cancels the call, which the daemon
/// takes as leaving the queue. The request and its [`Retry`] are kept while
/// open, to ask again if the call ends UNAVAILABLE.
enum QueueState {
    Start(Client, pb::AcquireRequest, Retry),
    // Boxed: the open call is the largest part, and moves with every event.
    Open(
        Client,
        pb::AcquireRequest,
        Retry,
        Box<Streaming<pb::WaitEvent>>,
    ),
    Done,
}

impl QueueState {
    async fn step(self) -> Option<(Result<QueueEvent>, QueueState)> {
        let mut state = self;
        'call: loop {
            let (client, mut request, mut retry, mut events) = match state {
                QueueState::Done => return None,
                QueueState::Open(client, request, retry, events) => {
                    (client, request, retry, events)
                }
                QueueState::Start(client, mut request, mut retry) => {
                    match client.raw().wait_queue(request.clone()).await {
                        Ok(resp) => (client, request, retry, Box::new(resp.into_inner())),
                        Err(status) => {
                            let err = Error::from(status);
                            if retry.again(&err, &mut request).await {
                                state = QueueState::Start(client, request, retry);
                                continue 'call;
                            }
                            return Some((Err(err), QueueState::Done));
                        }
                    }
                }
            };
            let event = loop {
                match events.message().await {
                    Ok(Some(pb::WaitEvent { event: Some(event) })) => break event,
                    // An empty event carries nothing to report: read on.
                    Ok(Some(pb::WaitEvent { event: None })) => continue,
                    Ok(None) => {
                        let err = Error::Protocol("WaitQueue ended without a grant".into());
                        return Some((Err(err), QueueState::Done));
                    }
                    Err(status) => {
                        // Before the grant: the daemon left no entry behind,
                        // so waiting again is safe (see `retry`).
                        let err = Error::from(status);
                        if retry.again(&err, &mut request).await {
                            state = QueueState::Start(client, request, retry);
                            continue 'call;
                        }
                        return Some((Err(err), QueueState::Done));
                    }
                }
            };
            return Some(match event {
                pb::wait_event::Event::Queued(q) => (
                    Ok(QueueEvent::Queued {
                        position: q.position,
                        queue_length: q.queue_length,
                    }),
                    QueueState::Open(client, request, retry, events),
                ),
                pb::wait_event::Event::Granted(g) => {
                    // When in the wait the grant came is not known here; the
                    // lease's expires_at on this machine's clock bounds it too.
                    let received = Instant::now();
                    let client_id = request.client_id;
                    let event = lease_of(g.lease).map(|lease| {
                        QueueEvent::Granted(LockGuard::start(client, client_id, lease, received))
                    });
                    // Read the call to its end rather than cancel it: a daemon
                    // may take a cancelled call for a waiter that left, and
                    // release the grant it had just sent.
                    drain(&mut events).await;
                    (event, QueueState::Done)
                }
            });
        }
    }
}

/// How long to wait for the daemon to close a `WaitQueue` call after `Granted`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads what follows `Granted` until the call ends; the protocol says it
/// ends OK at once.
async fn drain(events: &mut Streaming<pb::WaitEvent>) {
    let rest = async {
        loop {
            match events.message().await {
                Ok(Some(extra)) => tracing::debug!(?extra, "WaitQueue sent an event after Granted"),
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(%status, "WaitQueue ended with an error after Granted");
                    return;
                }
            }
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, rest).await.is_err() {
        tracing::debug!("WaitQueue stayed open after Granted; dropping it");
    }
}
