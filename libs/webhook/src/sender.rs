//! [`WebhookSender`]: the HTTP client, the bodies, and the classification of answers.

use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use loyalty_core::notify::{mask_phone, Channel, Message, MessageSender, Notifier, SendError};
use loyalty_domain::Phone;
use reqwest::{StatusCode, Url};
use serde::Serialize;
use tracing::Instrument;

use crate::signature::{sign, unix_secs, MESSAGE_ID_HEADER, SIGNATURE_HEADER};
use crate::{Error, WebhookConfig};

/// `type` of a campaign message's body.
pub const CAMPAIGN_MESSAGE: &str = "campaign_message";
/// `type` of a one-time code's body.
pub const ENROLMENT_CODE: &str = "enrolment_code";

/// Longest `Retry-After` text kept in an error.
const MAX_RETRY_AFTER: usize = 64;

/// Posts signed webhooks to one receiver. Cheap to share (`Arc`): one connection pool.
pub struct WebhookSender {
    client: reqwest::Client,
    url: Url,
    secret: Vec<u8>,
    channel: Channel,
}

#[derive(Serialize)]
struct CampaignBody<'a> {
    r#type: &'static str,
    id: &'a str,
    franchise_id: &'a str,
    member_id: &'a str,
    campaign_id: &'a str,
    channel: Channel,
    to: &'a str,
    subject: Option<&'a str>,
    body: &'a str,
    opt_out_url: &'a str,
    attempt: u32,
}

#[derive(Serialize)]
struct CodeBody<'a> {
    r#type: &'static str,
    id: &'a str,
    channel: Channel,
    to: &'a str,
    code: &'a str,
    lang: &'a str,
    body: &'a str,
}

impl WebhookSender {
    /// A sender of `channel`'s campaign messages (and of one-time codes) to `config`'s URL,
    /// after [`WebhookConfig::validate`].
    pub fn new(config: &WebhookConfig, channel: Channel) -> Result<WebhookSender, Error> {
        config.validate()?;
        let url = config.parsed_url()?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A redirected POST would become a GET, or go where the secret's owner did not say.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("loyalty-webhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Client(e.to_string()))?;
        Ok(WebhookSender {
            client,
            url,
            secret: config.secret.as_bytes().to_vec(),
            channel,
        })
    }

    /// Signs and posts `body`; classifies the outcome.
    async fn deliver(&self, kind: &'static str, id: &str, body: Vec<u8>) -> Result<(), SendError> {
        let signature = sign(&self.secret, unix_secs(SystemTime::now()), &body);
        let started = Instant::now();
        let answer = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(MESSAGE_ID_HEADER, id)
            .body(body)
            .send()
            .await;
        let outcome = match answer {
            Ok(r) => classify(r.status(), r.headers().get(reqwest::header::RETRY_AFTER)),
            Err(e) => Err(request_error(e)),
        };
        let m = crate::metrics::metrics();
        m.seconds
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        let result = match &outcome {
            Ok(()) => "ok",
            Err(SendError::Transient(_)) => "transient",
            Err(SendError::Permanent(_)) => "permanent",
        };
        m.deliveries.with_label_values(&[kind, result]).inc();
        match &outcome {
            Ok(()) => tracing::debug!(result, "webhook delivered"),
            Err(e) => tracing::warn!(result, error = %e, "webhook not delivered"),
        }
        outcome
    }
}

/// What an answer's status means to the delivery worker.
pub(crate) fn classify(
    status: StatusCode,
    retry_after: Option<&reqwest::header::HeaderValue>,
) -> Result<(), SendError> {
    if status.is_success() {
        return Ok(());
    }
    let code = status.as_u16();
    let transient = matches!(code, 408 | 425 | 429) || status.is_server_error();
    if !transient {
        return Err(SendError::Permanent(format!(
            "receiver answered HTTP {code}"
        )));
    }
    let retry_after = retry_after
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| {
            let v: String = v.chars().take(MAX_RETRY_AFTER).collect();
            format!(" (Retry-After: {v})")
        })
        .unwrap_or_default();
    Err(SendError::Transient(format!(
        "receiver answered HTTP {code}{retry_after}"
    )))
}

/// A request that got no answer: transient, unless the request itself could not be built.
fn request_error(e: reqwest::Error) -> SendError {
    // The URL may carry a token of the receiver: never in an error.
    let e = e.without_url();
    let why = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_builder() {
        return SendError::Permanent(format!("request not built: {e}"));
    } else {
        "request failed"
    };
    SendError::Transient(format!("{why}: {}", error_chain(&e)))
}

/// The error and its sources on one line (reqwest's own text is only the outermost).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The text of a one-time code's SMS.
fn code_text(code: &str, lang: &str) -> String {
    match lang {
        "fr" => format!("Votre code de confirmation : {code}"),
        _ => format!("Your confirmation code: {code}"),
    }
}

#[async_trait]
impl MessageSender for WebhookSender {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn channel(&self) -> Channel {
        self.channel
    }

    async fn send(&self, message: &Message) -> Result<(), SendError> {
        if message.channel != self.channel {
            return Err(SendError::Permanent(format!(
                "a {} message given to the {} webhook",
                message.channel.as_str(),
                self.channel.as_str()
            )));
        }
        let body = CampaignBody {
            r#type: CAMPAIGN_MESSAGE,
            id: &message.id,
            franchise_id: message.franchise_id.as_str(),
            member_id: message.member_id.as_str(),
            campaign_id: &message.campaign_id,
            channel: message.channel,
            to: &message.to,
            subject: message.subject.as_deref(),
            body: &message.body,
            opt_out_url: &message.opt_out_url,
            attempt: message.attempt,
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| SendError::Permanent(format!("body not serialised: {e}")))?;
        let span = tracing::info_span!(
            "webhook.deliver",
            r#type = CAMPAIGN_MESSAGE,
            message_id = %message.id,
            campaign_id = %message.campaign_id,
            channel = message.channel.as_str(),
            attempt = message.attempt,
        );
        self.deliver(CAMPAIGN_MESSAGE, &message.id, body)
            .instrument(span)
            .await
    }
}

#[async_trait]
impl Notifier for WebhookSender {
    fn name(&self) -> &'static str {
        "webhook"
    }

    /// One webhook of `type` `enrolment_code`, with a fresh id (a code is not retried: the
    /// member asks for another). Transient failures are `Unavailable`, permanent ones `Invalid`.
    async fn send_code(&self, phone: &Phone, code: &str, lang: &str) -> loyalty_core::Result<()> {
        let id = format!("code-{}", uuid::Uuid::new_v4());
        let text = code_text(code, lang);
        let body = CodeBody {
            r#type: ENROLMENT_CODE,
            id: &id,
            channel: Channel::Sms,
            to: phone.as_str(),
            code,
            lang,
            body: &text,
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| loyalty_core::Error::Invalid(format!("body not serialised: {e}")))?;
        let span = tracing::info_span!(
            "webhook.deliver",
            r#type = ENROLMENT_CODE,
            message_id = %id,
            phone = %mask_phone(phone.as_str()),
        );
        match self
            .deliver(ENROLMENT_CODE, &id, body)
            .instrument(span)
            .await
        {
            Ok(()) => Ok(()),
            Err(SendError::Transient(e)) => Err(loyalty_core::Error::Unavailable(e)),
            Err(SendError::Permanent(e)) => Err(loyalty_core::Error::Invalid(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn status(code: u16) -> Result<(), SendError> {
        classify(StatusCode::from_u16(code).unwrap(), None)
    }

    #[test]
    fn statuses_are_classified() {
        for ok in [200, 201, 202, 204] {
            assert_eq!(status(ok), Ok(()), "{ok}");
        }
        for t in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(matches!(status(t), Err(SendError::Transient(_))), "{t}");
        }
        for p in [301, 302, 304, 400, 401, 403, 404, 409, 410, 413, 422] {
            assert!(matches!(status(p), Err(SendError::Permanent(_))), "{p}");
        }
    }

    #[test]
    fn retry_after_is_kept_short() {
        let v = HeaderValue::from_static("120");
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(&v)),
            Err(SendError::Transient(
                "receiver answered HTTP 429 (Retry-After: 120)".into()
            ))
        );
        let long = HeaderValue::from_str(&"9".repeat(500)).unwrap();
        let Err(SendError::Transient(e)) = classify(StatusCode::SERVICE_UNAVAILABLE, Some(&long))
        else {
            panic!("transient expected");
        };
        assert!(e.len() < 120, "{e}");
    }

    #[test]
    fn codes_are_worded_in_the_members_language() {
        assert_eq!(
            code_text("042917", "fr"),
            "Votre code de confirmation : 042917"
        );
        assert_eq!(code_text("042917", "en"), "Your confirmation code: 042917");
    }
}
