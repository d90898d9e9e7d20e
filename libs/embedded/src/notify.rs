//! The `dev` [`Notifier`]: sends nothing. It logs each one-time code at INFO with the phone
//! masked but for its last two digits (the code itself is fine to log in `dev`, where nothing
//! else could deliver it; no other personal data is logged), and keeps the last code sent to
//! each phone in memory so that tests can read it ([`EmbeddedNotifier::last_code`]).

use std::collections::HashMap;

use async_trait::async_trait;
use loyalty_core::notify::{mask_phone, Notifier};
use loyalty_core::Result;
use loyalty_domain::Phone;
use parking_lot::Mutex;

/// Phones remembered at most (the oldest code is forgotten past it).
const REMEMBERED: usize = 10_000;

/// The embedded notifier of `loyalty dev`.
#[derive(Default)]
pub struct EmbeddedNotifier {
    last: Mutex<HashMap<String, String>>,
}

impl EmbeddedNotifier {
    pub fn new() -> EmbeddedNotifier {
        EmbeddedNotifier::default()
    }

    /// The last code sent to `phone` (as the member typed it, e.g. `+33612345678`).
    pub fn last_code(&self, phone: &str) -> Option<String> {
        self.last.lock().get(phone).cloned()
    }
}

#[async_trait]
impl Notifier for EmbeddedNotifier {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn send_code(&self, phone: &Phone, code: &str, lang: &str) -> Result<()> {
        tracing::info!(
            phone = %mask_phone(phone.as_str()),
            code,
            lang,
            "one-time code (dev notifier: not sent, shown here)"
        );
        let mut last = self.last.lock();
        if last.len() >= REMEMBERED && !last.contains_key(phone.as_str()) {
            last.clear();
        }
        last.insert(phone.as_str().to_owned(), code.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_last_code_per_phone() {
        let n = EmbeddedNotifier::new();
        let a = Phone::parse("+33612345678").unwrap();
        let b = Phone::parse("+33687654321").unwrap();
        assert_eq!(n.last_code("+33612345678"), None);
        n.send_code(&a, "111111", "fr").await.unwrap();
        n.send_code(&b, "222222", "en").await.unwrap();
        n.send_code(&a, "333333", "fr").await.unwrap();
        assert_eq!(n.last_code("+33612345678").as_deref(), Some("333333"));
        assert_eq!(n.last_code("+33687654321").as_deref(), Some("222222"));
        assert_eq!(n.name(), "embedded");
    }
}
