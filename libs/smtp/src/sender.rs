//! [`SmtpSender`]: the message as built for the relay, and the classification of failures.

use std::time::Instant;

use async_trait::async_trait;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::extension::ClientId;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use loyalty_core::notify::{Channel, Message, MessageSender, SendError};
use tracing::Instrument;

use crate::{Error, SmtpConfig};

const LIST_UNSUBSCRIBE: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe");
const LIST_UNSUBSCRIBE_POST: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe-Post");

/// Sends campaign e-mails through one SMTP relay. Cheap to share (`Arc`).
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: std::time::Duration,
}

impl SmtpSender {
    /// A sender through `config`'s relay, after [`SmtpConfig::validate`].
    pub fn new(config: &SmtpConfig) -> Result<SmtpSender, Error> {
        config.validate()?;
        let from = config.mailbox()?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .timeout(Some(config.timeout))
            .hello_name(ClientId::Domain(from.email.domain().to_owned()));
        if let (Some(u), Some(p)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(SmtpSender {
            transport: builder.build(),
            from,
            timeout: config.timeout,
        })
    }

    /// The e-mail of `m`, or why it cannot be built (permanent: the same message would fail
    /// the same way on every attempt).
    fn build(&self, m: &Message) -> Result<lettre::Message, SendError> {
        let to: Address = m.to.parse().map_err(|e| {
            SendError::Permanent(format!("the recipient is not an e-mail address ({e})"))
        })?;
        let subject = m
            .subject
            .as_deref()
            .ok_or_else(|| SendError::Permanent("an e-mail without a subject".into()))?
            .replace(['\r', '\n'], " ");
        let url = &m.opt_out_url;
        if url.is_empty()
            || !url
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'>' && b != b'<')
        {
            return Err(SendError::Permanent(
                "the opt-out URL is empty or not a plain ASCII URL".into(),
            ));
        }
        lettre::Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(subject)
            .message_id(Some(message_id(&m.id, self.from.email.domain())))
            .raw_header(HeaderValue::new(LIST_UNSUBSCRIBE, format!("<{url}>")))
            .raw_header(HeaderValue::new(
                LIST_UNSUBSCRIBE_POST,
                "List-Unsubscribe=One-Click".to_owned(),
            ))
            .header(ContentType::TEXT_PLAIN)
            .body(m.body.clone())
            .map_err(|e| SendError::Permanent(format!("the e-mail cannot be built ({e})")))
    }
}

/// `<{id}@{domain}>`, the id kept to `[A-Za-z0-9._-]`.
fn message_id(id: &str, domain: &str) -> String {
    let id: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("<{id}@{domain}>")
}

/// What a failed send means to the delivery worker. `to` is masked out of the relay's text.
fn classify(e: &lettre::transport::smtp::Error, to: &str) -> SendError {
    let text = error_chain(e).replace(to, "<recipient>");
    if e.is_permanent() {
        SendError::Permanent(format!("relay refused: {text}"))
    } else if e.is_transient() {
        SendError::Transient(format!("relay deferred: {text}"))
    } else if e.is_timeout() {
        SendError::Transient(format!("timed out: {text}"))
    } else if e.is_client() {
        SendError::Permanent(format!("client: {text}"))
    } else {
        // The connection (refused, reset), an unreadable answer, the transport shut down.
        SendError::Transient(format!("connection: {text}"))
    }
}

/// The error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[async_trait]
impl MessageSender for SmtpSender {
    fn name(&self) -> &'static str {
        "smtp"
    }

    fn channel(&self) -> Channel {
        Channel::Email
    }

    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let span = tracing::info_span!(
            "smtp.deliver",
            message_id = %message.id,
            campaign_id = %message.campaign_id,
            attempt = message.attempt,
        );
        async {
            if message.channel != Channel::Email {
                return Err(SendError::Permanent(format!(
                    "a {} message given to the SMTP sender",
                    message.channel.as_str()
                )));
            }
            let email = self.build(message)?;
            let started = Instant::now();
            // lettre bounds the connection and each command's answer, not the wait for the
            // greeting: the whole exchange is bounded here.
            let outcome = match tokio::time::timeout(self.timeout, self.transport.send(email)).await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(classify(&e, &message.to)),
                Err(_) => Err(SendError::Transient(format!(
                    "timed out: no answer from the relay within {:?}",
                    self.timeout
                ))),
            };
            let m = crate::metrics::metrics();
            m.seconds.observe(started.elapsed().as_secs_f64());
            let result = match &outcome {
                Ok(()) => "ok",
                Err(SendError::Transient(_)) => "transient",
                Err(SendError::Permanent(_)) => "permanent",
            };
            m.deliveries.with_label_values(&[result]).inc();
            match &outcome {
                Ok(()) => tracing::debug!(result, "e-mail accepted by the relay"),
                Err(e) => tracing::warn!(result, error = %e, "e-mail not delivered"),
            }
            outcome
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_keep_to_safe_characters() {
        assert_eq!(
            message_id("out-42.a_b", "x.example"),
            "<out-42.a_b@x.example>"
        );
        assert_eq!(message_id("a b<c>@d", "x.example"), "<a_b_c__d@x.example>");
    }
}
