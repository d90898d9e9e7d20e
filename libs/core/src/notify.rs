//! The notifier port: how the platform reaches a member outside the till (issue 13's one-time
//! codes of the self-enrolment page; issue 12's campaigns add their messages to the same port).
//!
//! An adapter is the SMS gateway of a deployment (or, for campaigns, e-mail and webhooks).
//! `loyalty_embedded::EmbeddedNotifier` is the `dev` one: it sends nothing, logs the code with
//! the phone masked, and keeps the last code per phone for tests. A process with no adapter
//! configured has no notifier at all, and the pages that need one say so (503) rather than
//! pretend a code went out.

use async_trait::async_trait;
use loyalty_domain::Phone;

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
