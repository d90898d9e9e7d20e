//! Request-reply between the gateway and the member actors.
//!
//! Commands that need an answer at the till travel the log like every other command; once the
//! owning actor's effects are durable, the engine publishes an [`EventReply`] through a
//! [`ReplySink`]. In one process (dev mode) the sink is [`ReplyWaiters`] itself: the gateway
//! registered a waiter for the event before appending it, and awaits it with a deadline.
//! Past the deadline the command is still applied exactly once; the caller just got 202.

use std::sync::Arc;

use dashmap::DashMap;
use loyalty_domain::{EventId, Fingerprint, FranchiseId, Outcome};
use tokio::sync::oneshot;

use crate::ports::CachedStatus;

/// How the engine dealt with an event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", content = "outcome", rename_all = "snake_case")]
pub enum ReplyResult {
    /// Applied now, with this outcome (which may be a rejection).
    Applied(Outcome),
    /// Already applied before: the recorded outcome, nothing changed.
    Replayed(Outcome),
    /// The id was already used by an event with different content: nothing changed.
    Conflict,
}

/// The engine's answer about one event (also its wire format between processes).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EventReply {
    pub franchise_id: FranchiseId,
    pub event_id: EventId,
    /// The fingerprint of the delivery this reply is about.
    pub fingerprint: Fingerprint,
    pub result: ReplyResult,
    /// The request id of the delivery this reply is about.
    pub request_id: Option<String>,
    /// The gateway instance waiting for it, when gateway and engine are separate processes.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The member's status once the effects are durable, for the receipt.
    pub status: Option<CachedStatus>,
}

/// Where the engine sends replies (in process, a reply topic, Redis pub/sub...).
pub trait ReplySink: Send + Sync + 'static {
    fn publish(&self, replies: Vec<EventReply>);
}

type Key = (FranchiseId, EventId);

/// One registered wait: the delivery it is about and where to send the reply.
type Pending = (Fingerprint, oneshot::Sender<Arc<EventReply>>);

/// Waiters for event replies, keyed by franchise and event id.
#[derive(Default)]
pub struct ReplyWaiters {
    waiting: DashMap<Key, Vec<Pending>>,
}

impl ReplyWaiters {
    pub fn new() -> Arc<ReplyWaiters> {
        Arc::new(ReplyWaiters::default())
    }

    /// Registers interest in the reply for the delivery `fingerprint` of `event_id`. Register
    /// before appending the command, or the reply may come first.
    pub fn register(
        self: &Arc<Self>,
        franchise_id: &FranchiseId,
        event_id: &EventId,
        fingerprint: Fingerprint,
    ) -> Waiter {
        let (tx, rx) = oneshot::channel();
        let key = (franchise_id.clone(), event_id.clone());
        self.waiting
            .entry(key.clone())
            .or_default()
            .push((fingerprint, tx));
        Waiter {
            rx,
            key,
            waiters: Arc::clone(self),
        }
    }

    /// Number of keys with someone waiting (for metrics and tests).
    pub fn pending(&self) -> usize {
        self.waiting.len()
    }
}

impl ReplySink for ReplyWaiters {
    fn publish(&self, replies: Vec<EventReply>) {
        if self.waiting.is_empty() {
            return;
        }
        for reply in replies {
            let key = (reply.franchise_id.clone(), reply.event_id.clone());
            let Some(mut entry) = self.waiting.get_mut(&key) else {
                continue;
            };
            let reply = Arc::new(reply);
            let waiters = std::mem::take(entry.value_mut());
            for (fp, tx) in waiters {
                if fp == reply.fingerprint {
                    let _ = tx.send(Arc::clone(&reply));
                } else if !tx.is_closed() {
                    entry.value_mut().push((fp, tx));
                }
            }
            let empty = entry.value().is_empty();
            drop(entry);
            if empty {
                self.waiting.remove_if(&key, |_, v| v.is_empty());
            }
        }
    }
}

/// A registered wait; dropping it withdraws the registration.
pub struct Waiter {
    rx: oneshot::Receiver<Arc<EventReply>>,
    key: Key,
    waiters: Arc<ReplyWaiters>,
}

impl Waiter {
    /// Waits for the reply until `deadline`; `None` if it did not come in time.
    pub async fn wait(mut self, deadline: std::time::Duration) -> Option<Arc<EventReply>> {
        tokio::time::timeout(deadline, &mut self.rx)
            .await
            .ok()?
            .ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.rx.close();
        if let Some(mut e) = self.waiters.waiting.get_mut(&self.key) {
            e.value_mut().retain(|(_, tx)| !tx.is_closed());
            let empty = e.value().is_empty();
            drop(e);
            if empty {
                self.waiters
                    .waiting
                    .remove_if(&self.key, |_, v| v.is_empty());
            }
        }
    }
}
