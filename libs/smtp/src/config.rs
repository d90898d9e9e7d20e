//! Where the e-mails go, and as whom.

use std::time::Duration;

use lettre::message::Mailbox;

use crate::Error;

/// The timeout of [`SmtpConfig::new`]: 10 s for one whole delivery.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// The relay and the sender.
#[derive(Clone)]
pub struct SmtpConfig {
    /// The relay's host name or IP address.
    pub host: String,
    /// Its port: 25 (a relay), 587 (submission), 2525...
    pub port: u16,
    /// The `From` mailbox, `offers@cafe-bleu.example` or `Café Bleu <offers@cafe-bleu.example>`;
    /// its domain also names this client in `EHLO` and ends every `Message-ID`.
    pub from: String,
    /// `AUTH` user name, when the relay asks for one (with [`SmtpConfig::password`]).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Bound on one whole delivery (connection, greeting, every command and its answer): past
    /// it the attempt is transient.
    pub timeout: Duration,
}

impl SmtpConfig {
    pub fn new(host: impl Into<String>, port: u16, from: impl Into<String>) -> SmtpConfig {
        SmtpConfig {
            host: host.into(),
            port,
            from: from.into(),
            username: None,
            password: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Checks the settings; the error says which one is wrong and how, never the password.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: &str, why: String| Error::Config(format!("smtp {what}: {why}"));
        let host = self.host.trim();
        if host.is_empty() || host != self.host {
            return Err(bad("host", "empty, or with spaces around it".into()));
        }
        if host.contains(['/', ':', '@']) && !host.starts_with('[') {
            return Err(bad(
                "host",
                format!("{host:?} is not a host name (no scheme, port or path: the port is its own setting)"),
            ));
        }
        if self.port == 0 {
            return Err(bad("port", "0 is not a port".into()));
        }
        self.mailbox()?;
        match (&self.username, &self.password) {
            (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => {}
            (None, None) => {}
            _ => {
                return Err(bad(
                    "credentials",
                    "a username and a password, both or neither".into(),
                ))
            }
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(bad(
                "timeout",
                format!(
                    "{:?}, must be more than 0 and at most {MAX_TIMEOUT:?}",
                    self.timeout
                ),
            ));
        }
        Ok(())
    }

    /// The `From` mailbox, parsed.
    pub(crate) fn mailbox(&self) -> Result<Mailbox, Error> {
        self.from.parse::<Mailbox>().map_err(|e| {
            Error::Config(format!(
                "smtp from: {:?} is not a mailbox such as `Name <offers@example.com>` ({e})",
                self.from
            ))
        })
    }
}

/// Never shows the password.
impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("from", &self.from)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(c: &SmtpConfig) -> String {
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn a_good_config_passes() {
        SmtpConfig::new("relay.internal", 25, "Café Bleu <offers@cafe-bleu.example>")
            .validate()
            .unwrap();
        let mut c = SmtpConfig::new("10.0.0.5", 587, "offers@cafe-bleu.example");
        c.username = Some("u".into());
        c.password = Some("p".into());
        c.validate().unwrap();
    }

    #[test]
    fn bad_settings_say_which() {
        assert!(err(&SmtpConfig::new("", 25, "a@b.example")).contains("smtp host"));
        assert!(err(&SmtpConfig::new("smtp://relay", 25, "a@b.example")).contains("not a host"));
        assert!(err(&SmtpConfig::new("relay:25", 25, "a@b.example")).contains("not a host"));
        assert!(err(&SmtpConfig::new("relay", 0, "a@b.example")).contains("smtp port"));
        assert!(err(&SmtpConfig::new("relay", 25, "not an address")).contains("smtp from"));
        let mut c = SmtpConfig::new("relay", 25, "a@b.example");
        c.username = Some("u".into());
        assert!(err(&c).contains("both or neither"));
        c.username = None;
        c.timeout = Duration::ZERO;
        assert!(err(&c).contains("smtp timeout"));
    }

    #[test]
    fn debug_hides_the_password() {
        let mut c = SmtpConfig::new("relay", 25, "a@b.example");
        c.username = Some("u".into());
        c.password = Some("hunter2-secret".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
