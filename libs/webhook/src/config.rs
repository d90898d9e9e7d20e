//! Where the webhooks go and how they are signed.

use std::time::Duration;

use reqwest::Url;

use crate::Error;

/// The shortest secret accepted: 32 bytes (256 bits, the size of the MAC).
pub const MIN_SECRET_LEN: usize = 32;
/// The timeout of [`WebhookConfig::new`]: 10 s for the whole request (connect, send, answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest timeout accepted: a delivery worker must not hang on one receiver.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// The receiver of the webhooks.
#[derive(Clone)]
pub struct WebhookConfig {
    /// `http://…` (or `https://…`: see the crate's docs on TLS).
    pub url: String,
    /// The HMAC-SHA256 key shared with the receiver, at least [`MIN_SECRET_LEN`] bytes.
    pub secret: String,
    /// Bound on one request, connection included: past it the attempt is transient.
    pub timeout: Duration,
}

impl WebhookConfig {
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            secret: secret.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Checks the settings; the error says which one is wrong and how, never the secret.
    pub fn validate(&self) -> Result<(), Error> {
        self.parsed_url()?;
        let len = self.secret.len();
        if len < MIN_SECRET_LEN {
            return Err(Error::Config(format!(
                "webhook secret: {len} bytes, at least {MIN_SECRET_LEN} needed \
                 (e.g. `openssl rand -hex 32`)"
            )));
        }
        if self.secret.trim() != self.secret {
            return Err(Error::Config(
                "webhook secret: leading or trailing whitespace (a copy-paste slip?)".into(),
            ));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(Error::Config(format!(
                "webhook timeout: {:?}, must be more than 0 and at most {MAX_TIMEOUT:?}",
                self.timeout
            )));
        }
        Ok(())
    }

    /// The URL, parsed and checked.
    pub(crate) fn parsed_url(&self) -> Result<Url, Error> {
        let bad = |why: String| Error::Config(format!("webhook url: {why}"));
        let url = Url::parse(&self.url).map_err(|e| bad(format!("not a URL ({e})")))?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(bad(
                    "https:// needs TLS, which this build does not include: send to a \
                     TLS-terminating proxy on a trusted network over http:// (crate docs, \"TLS\")"
                        .into(),
                ))
            }
            s => return Err(bad(format!("scheme {s}: only http:// is supported"))),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "credentials in the URL: the receiver authenticates requests by their signature"
                    .into(),
            ));
        }
        if url.fragment().is_some() {
            return Err(bad("a #fragment is never sent: remove it".into()));
        }
        Ok(url)
    }
}

/// Never shows the secret, nor the URL's query (it may carry a token of the receiver).
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.url.split(['?', '#']).next().unwrap_or("");
        f.debug_struct("WebhookConfig")
            .field("url", &url)
            .field("secret", &"***")
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn err(c: &WebhookConfig) -> String {
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn a_good_config_passes() {
        WebhookConfig::new("http://sms-bridge.internal:8080/hooks/loyalty?k=1", SECRET)
            .validate()
            .unwrap();
    }

    #[test]
    fn bad_urls_say_why() {
        let c = |u: &str| WebhookConfig::new(u, SECRET);
        assert!(err(&c("not a url")).contains("not a URL"));
        assert!(err(&c("ftp://x/")).contains("scheme ftp"));
        assert!(err(&c("https://x/")).contains("needs TLS"));
        assert!(err(&c("http://user:pw@x/")).contains("credentials"));
        assert!(err(&c("http://x/#a")).contains("fragment"));
    }

    #[test]
    fn short_secrets_and_bad_timeouts_are_refused() {
        let short = WebhookConfig::new("http://x/", "too short");
        assert!(
            err(&short).contains("9 bytes, at least 32"),
            "{}",
            err(&short)
        );
        assert!(!err(&short).contains("too short"));
        let spaced = WebhookConfig::new("http://x/", format!("{SECRET} "));
        assert!(err(&spaced).contains("whitespace"));
        let mut c = WebhookConfig::new("http://x/", SECRET);
        c.timeout = Duration::ZERO;
        assert!(err(&c).contains("timeout"));
        c.timeout = Duration::from_secs(3600);
        assert!(err(&c).contains("at most"));
    }

    #[test]
    fn debug_hides_the_secret_and_the_query() {
        let c = WebhookConfig::new("http://x/h?token=abc", SECRET);
        let d = format!("{c:?}");
        assert!(!d.contains(SECRET) && !d.contains("abc"), "{d}");
    }
}
