//! The `dev` [`MessageSender`]: delivers campaign messages to nobody. Each message is logged
//! at INFO with its id, campaign and channel only (its address and text are personal data),
//! and kept in memory, the latest [`KEPT`], so that tests and `loyalty dev` users can see what
//! would have gone out ([`EmbeddedMessages::sent`]).

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use loyalty_core::notify::{Channel, Message, MessageSender, SendError};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Messages kept at most (the oldest is forgotten past it).
pub const KEPT: usize = 1_000;

/// The embedded sender of one channel.
pub struct EmbeddedMessages {
    channel: Channel,
    sent: Mutex<VecDeque<Message>>,
    arrived: Notify,
}

impl EmbeddedMessages {
    pub fn new(channel: Channel) -> Arc<EmbeddedMessages> {
        Arc::new(EmbeddedMessages {
            channel,
            sent: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
        })
    }

    /// The messages delivered so far, oldest first.
    pub fn sent(&self) -> Vec<Message> {
        self.sent.lock().iter().cloned().collect()
    }

    /// Waits until at least `n` messages were delivered, and returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<Message> {
        loop {
            let notified = self.arrived.notified();
            let sent = self.sent();
            if sent.len() >= n {
                return sent;
            }
            notified.await;
        }
    }
}

#[async_trait]
impl MessageSender for EmbeddedMessages {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn channel(&self) -> Channel {
        self.channel
    }

    async fn send(&self, message: &Message) -> Result<(), SendError> {
        tracing::info!(
            id = %message.id,
            campaign = %message.campaign_id,
            channel = message.channel.as_str(),
            "campaign message (dev sender: not sent, kept in memory)"
        );
        let mut sent = self.sent.lock();
        if sent.len() >= KEPT {
            sent.pop_front();
        }
        sent.push_back(message.clone());
        drop(sent);
        self.arrived.notify_waiters();
        Ok(())
    }
}
