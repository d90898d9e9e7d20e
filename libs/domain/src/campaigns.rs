//! Automated campaigns (README "Campaigns"): a trigger, an audience, an offer, messages per
//! channel, a frequency cap and validity dates, all part of the program.

use serde::{Deserialize, Serialize};

/// A channel a campaign message goes out on. Each needs the member's consent
/// ([`crate::Consent`]) and an address in the profile (a phone, an e-mail).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Sms,
    Email,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Sms, Channel::Email];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}
