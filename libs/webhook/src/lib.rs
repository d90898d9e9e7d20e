//! The webhook adapter of the notifier ports ([`loyalty_core::notify`]): every campaign
//! message ([`MessageSender`]) and every one-time code of the self-enrolment page
//! ([`Notifier`]) becomes one signed JSON `POST` to a configured URL. It is the reference SMS
//! adapter: an SMS provider's bridge, or the franchise's own system, receives the webhook and
//! delivers the text. Configure it with a [`WebhookConfig`], build a [`WebhookSender`].
//!
//! # The request
//!
//! `POST <url>` with these headers:
//!
//! | header | value |
//! | --- | --- |
//! | `Content-Type` | `application/json` |
//! | `Loyalty-Message-Id` | the message's stable id: the same on every attempt |
//! | `Loyalty-Signature` | `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>` |
//! | `User-Agent` | `loyalty-webhook/<version>` |
//!
//! A campaign message (`type` `campaign_message`):
//!
//! ```json
//! {"type": "campaign_message", "id": "out-01J…", "franchise_id": "cafe-bleu",
//!  "member_id": "m-3f…", "campaign_id": "winback-may", "channel": "sms",
//!  "to": "+33612345678", "subject": null, "body": "Vous nous manquez… STOP: https://…",
//!  "opt_out_url": "https://…/opt-out/…", "attempt": 1}
//! ```
//!
//! `channel` is `sms` or `email`; `to` the phone (E.164) or the e-mail address; `subject` is
//! `null` for SMS; `body` is the whole text, the opt-out link included; `attempt` counts from 1.
//!
//! A one-time code of the self-enrolment page (`type` `enrolment_code`):
//!
//! ```json
//! {"type": "enrolment_code", "id": "c-5b0e…", "channel": "sms", "to": "+33612345678",
//!  "code": "042917", "lang": "fr", "body": "Votre code de confirmation : 042917"}
//! ```
//!
//! Both carry `type`, `id`, `channel`, `to` and `body`: a bridge that only forwards `body` to
//! `to` by SMS handles both without reading `type`.
//!
//! # What the receiver does
//!
//! 1. Verifies `Loyalty-Signature` over the raw body with the shared secret and refuses a
//!    request whose timestamp is more than a few minutes away ([`verify_signature`] does both).
//! 2. Drops a `Loyalty-Message-Id` it has already accepted: delivery is *at least once* (a
//!    crash between the send and its record, or an answer lost on the way back, sends again).
//! 3. Answers 2xx once it has taken the message on.
//!
//! # Answers, and what the delivery worker does with them
//!
//! | answer | [`SendError`] | the outbox worker |
//! | --- | --- | --- |
//! | 2xx | — (delivered) | records it |
//! | 408, 425, 429, 5xx, connection refused or reset, timeout | `Transient` (the `Retry-After` text kept in its message) | retries with backoff, dead-letters after its last attempt |
//! | any other status (400, 401, 403, 404, 410, 422, 3xx: redirects are not followed) | `Permanent` | dead-letters at once |
//!
//! # TLS
//!
//! None in this build: `reqwest` is compiled without TLS, so only `http://` URLs are accepted
//! ([`WebhookConfig::validate`] refuses `https://` with that reason). Send to a receiver on a
//! trusted network (the bridge beside the platform), or to a TLS-terminating egress proxy
//! there. The body is signed either way, so a proxy cannot alter it unnoticed; it can read it
//! (phone numbers and texts), hence the trusted network. (Adding rustls with ring costs about
//! 20 s of build on a 2-core machine; it waits for a receiver that needs it.)
//!
//! # Observability
//!
//! `loyalty_webhook_deliveries_total{type, result}` (`result`: `ok`, `transient`, `permanent`)
//! and `loyalty_webhook_delivery_seconds{type}`, in the platform's registry. Each request runs
//! in a `webhook.deliver` span with the message id, campaign and attempt; logs never show `to`,
//! `body` nor the code.

mod config;
mod metrics;
mod sender;
mod signature;

pub use config::{WebhookConfig, DEFAULT_TIMEOUT, MAX_TIMEOUT, MIN_SECRET_LEN};
pub use sender::{WebhookSender, CAMPAIGN_MESSAGE, ENROLMENT_CODE};
pub use signature::{
    sign, unix_secs, verify_signature, DEFAULT_TOLERANCE, MESSAGE_ID_HEADER, SIGNATURE_HEADER,
};

#[doc(no_inline)]
pub use loyalty_core::notify::{Channel, Message, MessageSender, Notifier, SendError};

/// Errors of this crate: its configuration, and the receivers' signature checks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A setting is wrong; the text says which and why.
    #[error("invalid webhook configuration: {0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("webhook client: {0}")]
    Client(String),
    /// The `Loyalty-Signature` header is not `t=<digits>,v1=<64 hex>`.
    #[error("malformed signature header: {0}")]
    SignatureMalformed(String),
    /// The signed timestamp is too far from now (a replay, or a clock far off).
    #[error("signature timestamp {age_secs} s away from now")]
    SignatureExpired { age_secs: u64 },
    /// No `v1` MAC matches the body under the secret.
    #[error("signature does not match")]
    SignatureMismatch,
}
