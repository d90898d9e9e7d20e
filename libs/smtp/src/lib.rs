//! The SMTP adapter of the campaign e-mails: [`SmtpSender`] is the [`MessageSender`] of
//! [`Channel::Email`], on `lettre`'s async SMTP client (tokio). Configure it with an
//! [`SmtpConfig`].
//!
//! # The message
//!
//! - `From`: the configured mailbox; `To`: [`Message::to`]; `Subject`: [`Message::subject`]
//!   (line breaks become spaces); `Date`: now.
//! - `Message-ID: <{id}@{the From domain}>`, from the outbox entry's id ([`Message::id`]), the
//!   same on every attempt: a relay or a mailbox that sees it twice can drop the copy (delivery
//!   is at least once). Characters of the id outside `[A-Za-z0-9._-]` become `_`.
//! - `List-Unsubscribe: <opt_out_url>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
//!   (RFC 8058): the mailbox's "unsubscribe" button posts to the signed opt-out link.
//! - `Content-Type: text/plain; charset=utf-8`, the body encoded as lettre chooses (7bit,
//!   quoted-printable or base64: whatever keeps it intact).
//!
//! # Failures, and what the delivery worker does with them
//!
//! | failure | [`SendError`] |
//! | --- | --- |
//! | an SMTP 4xx answer (greylisting, a full queue, `451`) | `Transient` |
//! | connection refused or lost, a timeout, an unreadable answer | `Transient` |
//! | an SMTP 5xx answer (`550` unknown mailbox, `554` refused, `535` bad credentials) | `Permanent` |
//! | an address or a message the client cannot build (invalid `to`, no subject, a bad opt-out URL) | `Permanent` |
//!
//! Transient ones are retried with backoff by the outbox worker, permanent ones dead-lettered.
//! A relay's answers may quote the recipient's address: errors show it as `<recipient>`.
//! Wrong credentials fail every message permanently: watch
//! `loyalty_smtp_deliveries_total{result="permanent"}`.
//!
//! # TLS
//!
//! None: plain SMTP to a relay on a trusted network (the platform's own Postfix, or a
//! provider's relay reached through a local smarthost), which then delivers with TLS; lettre
//! is built without a TLS stack (rustls with ring would add about 20 s of build on a 2-core
//! machine; it waits for a deployment that must reach a relay over an untrusted network).
//! Credentials, when set, go over the plain connection: only to a relay on that network.
//!
//! One connection per message (no pool): simple and enough for a relay beside the platform.
//!
//! # Observability
//!
//! `loyalty_smtp_deliveries_total{result}` (`ok`, `transient`, `permanent`) and
//! `loyalty_smtp_delivery_seconds`, in the platform's registry; each send runs in an
//! `smtp.deliver` span with the message id, campaign and attempt. Logs never show the address,
//! the subject nor the body.

mod config;
mod metrics;
mod sender;

pub use config::{SmtpConfig, DEFAULT_TIMEOUT, MAX_TIMEOUT};
pub use sender::SmtpSender;

#[doc(no_inline)]
pub use loyalty_core::notify::{Channel, Message, MessageSender, SendError};

/// Errors of this crate: its configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A setting is wrong; the text says which and why.
    #[error("invalid SMTP configuration: {0}")]
    Config(String),
}
