//! Campaign results for headquarters (README "Campaigns"): per campaign of the current
//! program, what fired, what the outbox sent and what came of it, over a range of local days,
//! from the daily series the engine's commits and the delivery worker add
//! ([`loyalty_domain::dashboard::campaign_series`]).

use std::collections::BTreeMap;

use loyalty_domain::campaigns::Channel;
use loyalty_domain::dashboard::parse_campaign_series;
use loyalty_domain::{Day, Program};
use serde::Serialize;

use crate::model::Franchise;
use crate::ports::StateStore;
use crate::Result;

/// One campaign's results over the range.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CampaignResult {
    pub id: String,
    pub name: String,
    /// The trigger's type (`enrolled`, `date`, `birthday`, `segment_entered`, `tier_reached`,
    /// `points_reached`).
    pub trigger: String,
    pub channels: Vec<Channel>,
    /// Members the campaign fired for (its offer given).
    pub fired: i64,
    /// Messages put in the outbox (one per consented channel of a firing).
    pub messages: i64,
    /// Messages the channel's receiver accepted.
    pub delivered: i64,
    /// Messages dead-lettered (a permanent failure or the last attempt).
    pub failed: i64,
    /// Firings whose offer was used within the campaign's `redeem_within_days`.
    pub redeemed: i64,
    /// Purchases of members who used the offer, in the 30 days after its firing.
    pub revenue_cents: i64,
    /// `redeemed / fired`, 0 when nothing fired.
    pub redemption_rate: f64,
}

/// Every campaign's results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CampaignResults {
    pub franchise_id: loyalty_domain::FranchiseId,
    pub from: String,
    pub to: String,
    pub time_zone: String,
    pub campaigns: Vec<CampaignResult>,
}

/// The results of the campaigns of `program` (the franchise's current one) on the local days
/// `from..=to`, in the program's order. A campaign removed from the program is not listed
/// (its series stay stored).
pub async fn campaign_results(
    store: &dyn StateStore,
    franchise: &Franchise,
    program: &Program,
    from: Day,
    to: Day,
) -> Result<CampaignResults> {
    let mut sums: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (name, day, n) in store.segment_rows(&franchise.id).await? {
        if day < from || day > to {
            continue;
        }
        if let Some((id, counter)) = parse_campaign_series(&name) {
            let v = sums.entry((id.to_owned(), counter.to_owned())).or_default();
            *v = v.saturating_add(n);
        }
    }
    let get = |id: &str, counter: &str| {
        sums.get(&(id.to_owned(), counter.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    let campaigns = program
        .campaigns
        .iter()
        .map(|c| {
            let fired = get(&c.id, "fired");
            let redeemed = get(&c.id, "redeemed");
            CampaignResult {
                id: c.id.clone(),
                name: c.name.clone(),
                trigger: c.trigger_type().to_owned(),
                channels: c.channels(),
                fired,
                messages: get(&c.id, "messages"),
                delivered: get(&c.id, "delivered"),
                failed: get(&c.id, "failed"),
                redeemed,
                revenue_cents: get(&c.id, "revenue_cents"),
                redemption_rate: if fired > 0 {
                    redeemed as f64 / fired as f64
                } else {
                    0.0
                },
            }
        })
        .collect();
    Ok(CampaignResults {
        franchise_id: franchise.id.clone(),
        from: from.iso(),
        to: to.iso(),
        time_zone: program.time_zone.name().to_owned(),
        campaigns,
    })
}
