//! The notifier port: how the platform reaches a member outside the till (issue 13's one-time
//! codes of the self-enrolment page; issue 12's campaigns add their messages to the same port).
//!
//! An adapter is the SMS gateway of a deployment (or, for campaigns, e-mail and webhooks).
//! `loyalty_embedded::EmbeddedNotifier` is the `dev` one: it sends nothing, logs the code with
//! the phone masked, and keeps the last code per phone for tests. A process with no adapter
//! configured has no notifier at all, and the pages that need one say so (503) rather than
//! pretend a code went out.

use async_trait::async_trait;
use loyalty_domain::{FranchiseId, MemberId, Phone};

use crate::Result;

/// Sends messages to members.
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// The adapter's name, for logs and metrics (`embedded`, `sms-…`).
    fn name(&self) -> &'static str;

    /// Sends the one-time `code` (6 digits) that confirms `phone`, worded in `lang` (`fr` or
    /// `en`). An error means the code was not sent.
    async fn send_code(&self, phone: &Phone, code: &str, lang: &str) -> Result<()>;
}

pub use loyalty_domain::campaigns::Channel;

/// One message to one member, rendered and addressed: built by the outbox's delivery worker
/// just before it is handed to a [`MessageSender`], from the outbox entry (which holds no
/// personal data) and the member's profile read at that moment. Never logged whole: `to`,
/// `subject` and `body` hold personal data.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The outbox entry's id: the same on every attempt, so that a receiver can drop a message
    /// delivered twice (delivery is at least once: a crash between the send and the record of
    /// it sends again).
    pub id: String,
    pub franchise_id: FranchiseId,
    pub member_id: MemberId,
    pub campaign_id: String,
    pub channel: Channel,
    /// The member's phone (E.164) for SMS, e-mail address for e-mail.
    pub to: String,
    /// The subject line (e-mail); `None` on SMS.
    pub subject: Option<String>,
    /// The text, the opt-out link included.
    pub body: String,
    /// The signed link that withdraws the member's consent to this channel.
    pub opt_out_url: String,
    /// Attempt number, from 1.
    pub attempt: u32,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("franchise_id", &self.franchise_id)
            .field("campaign_id", &self.campaign_id)
            .field("channel", &self.channel)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Why a message was not delivered: the delivery worker retries a transient failure with
/// backoff and dead-letters the message after its last attempt; a permanent one at once.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// The receiver is down, slow, or asked to retry (HTTP 5xx/429, SMTP 4xx, a timeout, a
    /// refused connection).
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying cannot help (HTTP 4xx, SMTP 5xx, an address the receiver refuses).
    #[error("permanent: {0}")]
    Permanent(String),
}

/// Delivers campaign messages on one channel (the SMS gateway's webhook, an SMTP relay...).
#[async_trait]
pub trait MessageSender: Send + Sync + 'static {
    /// The adapter's name, for logs and metrics (`webhook`, `smtp`, `embedded`).
    fn name(&self) -> &'static str;

    /// The channel it delivers.
    fn channel(&self) -> Channel;

    /// Delivers `message`; returns once the receiver accepted it (HTTP 2xx, SMTP 250).
    async fn send(&self, message: &Message) -> std::result::Result<(), SendError>;
}

/// `phone` with every digit but the last two masked (`+*********42`): what a log may show.
pub fn mask_phone(phone: &str) -> String {
    let n = phone.chars().count();
    phone
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if c.is_ascii_digit() && i + 2 < n {
                '*'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_two_digits_show() {
        assert_eq!(mask_phone("+33612345678"), "+*********78");
        assert_eq!(mask_phone("7"), "7");
    }
}
