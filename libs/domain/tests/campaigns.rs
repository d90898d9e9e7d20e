//! Property and example tests of automated campaigns (README "Campaigns"): each trigger fires
//! at its time or on its change, once per member and occurrence, within the frequency cap and
//! the campaign's dates, for its audience only; the offer is given exactly once; its use and
//! the redeemers' revenue are counted; messages are asked for only on consented channels.

mod common;

use common::{purchase, Member};
use loyalty_domain::campaigns::{render, Channel, TemplateValues};
use loyalty_domain::{
    Applied, Consent, LedgerKind, MemberCommand, Phone, Profile, Program, RewardId,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const DAY: i64 = 86_400_000;
/// 2026-01-05T10:00:00Z, a Monday.
const T0: i64 = 1_767_607_200_000;

fn program_with(campaigns: Value, extra: Value) -> Result<Program, serde_json::Error> {
    let mut p = serde_json::to_value(Program::demo()).unwrap();
    p["campaigns"] = campaigns;
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            p[k] = v;
        }
    }
    serde_json::from_value::<Program>(p)
}

fn program(campaigns: Value) -> Program {
    program_with(campaigns, json!({})).expect("a valid program")
}

fn consenting(sms: bool, email: bool, birthday: Option<&str>) -> MemberCommand {
    MemberCommand::Enrol {
        profile: Profile {
            phone: Phone::parse("+33612345678").unwrap(),
            name: Some("Ana".into()),
            birthday: birthday.map(str::to_owned),
            consent: Consent { sms, email },
            email: email.then(|| "ana@example.com".to_owned()),
        },
    }
}

/// A member driver that keeps every firing and tally the commands returned.
struct Run {
    m: Member,
    applied: Vec<Applied>,
}

impl Run {
    fn enrol(p: Program, cmd: MemberCommand, at: i64) -> Run {
        let mut r = Run {
            m: Member::new(p),
            applied: Vec::new(),
        };
        r.cmd(cmd, at).expect("the enrolment is applied");
        r
    }

    fn cmd(&mut self, cmd: MemberCommand, at: i64) -> Option<()> {
        let a = self.m.apply(cmd, at).ok()?;
        self.applied.push(a);
        Some(())
    }

    fn buy(&mut self, cents: u64, at: i64) {
        self.cmd(purchase(cents), at)
            .expect("the purchase is applied");
    }

    /// The scheduler on time up to `until`.
    fn advance_on_time(&mut self, until: i64) {
        let mut runs = 0;
        while let Some(due) = self.m.state().next_due(&self.m.program) {
            if due.0 > until {
                break;
            }
            runs += 1;
            assert!(runs < 10_000, "the due time never moves past {due:?}");
            self.cmd(MemberCommand::Advance, due.0).unwrap();
        }
        self.cmd(MemberCommand::Advance, until).unwrap();
    }

    /// (campaign, key, channels) of every firing, in order.
    fn firings(&self) -> Vec<(String, String, Vec<Channel>)> {
        self.applied
            .iter()
            .flat_map(|a| a.campaigns.firings.iter())
            .map(|f| (f.campaign_id.clone(), f.key.clone(), f.channels.clone()))
            .collect()
    }

    /// Sums of (fired, messages, redeemed, revenue) of `campaign`'s tallies.
    fn results(&self, campaign: &str) -> (i64, i64, i64, i64) {
        self.applied
            .iter()
            .flat_map(|a| a.campaigns.tallies.iter())
            .filter(|t| t.campaign_id == campaign)
            .fold((0, 0, 0, 0), |a, t| {
                (
                    a.0 + t.fired,
                    a.1 + t.messages,
                    a.2 + t.redeemed,
                    a.3 + t.revenue_cents,
                )
            })
    }

    fn campaign_points(&self, campaign: &str) -> i64 {
        let detail = format!("campaign:{campaign}");
        self.m
            .ledger
            .iter()
            .filter(|e| e.kind == LedgerKind::Earn && e.detail == detail)
            .map(|e| e.points)
            .sum()
    }
}

fn welcome(after_days: i64) -> Value {
    json!([{
        "id": "welcome",
        "name": "Welcome back",
        "trigger": { "type": "enrolled", "after_days": after_days },
        "offer": { "type": "bonus_points", "points": 25 },
        "messages": {
            "sms": "{first_name}, 25 points are waiting at {franchise}!",
            "email": { "subject": "A gift", "body": "Hello {first_name}: {offer}. {opt_out_url}" }
        }
    }])
}

#[test]
fn enrolled_plus_n_days_fires_once_at_its_time_with_the_consented_channels() {
    let mut r = Run::enrol(program(welcome(14)), consenting(true, false, None), T0);
    assert_eq!(r.m.state().next_due(&r.m.program).unwrap().0, T0 + 14 * DAY);
    r.advance_on_time(T0 + 14 * DAY - 1);
    assert!(r.firings().is_empty(), "not before its day");
    r.advance_on_time(T0 + 60 * DAY);
    assert_eq!(
        r.firings(),
        [("welcome".into(), "enrolled".into(), vec![Channel::Sms])]
    );
    assert_eq!(r.campaign_points("welcome"), 25);
    assert_eq!(r.results("welcome"), (1, 1, 0, 0));
    let fired_at =
        r.m.ledger
            .iter()
            .find(|e| e.detail == "campaign:welcome")
            .unwrap()
            .at;
    assert_eq!(fired_at.0, T0 + 14 * DAY, "on time, by the scheduler");
    // Purchases and more time never fire it again.
    r.buy(1_000, T0 + 61 * DAY);
    r.advance_on_time(T0 + 400 * DAY);
    assert_eq!(r.firings().len(), 1);
}

#[test]
fn at_enrolment_and_without_consent_it_fires_silently() {
    let r = Run::enrol(program(welcome(0)), consenting(false, false, None), T0);
    assert_eq!(r.firings(), [("welcome".into(), "enrolled".into(), vec![])]);
    assert_eq!(r.results("welcome"), (1, 0, 0, 0));
    assert_eq!(
        r.m.state().points,
        50 + 25,
        "signup bonus and the campaign's"
    );
}

#[test]
fn a_time_trigger_missed_by_more_than_the_catch_up_days_does_not_fire() {
    // The member's next event comes 30 days late (no scheduler): too late for the welcome.
    let mut r = Run::enrol(program(welcome(14)), consenting(true, true, None), T0);
    r.buy(1_000, T0 + 44 * DAY);
    assert!(r.firings().is_empty());
    // Within the catch-up days it does.
    let mut r = Run::enrol(program(welcome(14)), consenting(true, true, None), T0);
    r.buy(1_000, T0 + 20 * DAY);
    assert_eq!(r.firings().len(), 1);
}

#[test]
fn a_date_campaign_reaches_dormant_members_enrolled_by_then_only() {
    let p = program(json!([{
        "id": "xmas",
        "name": "Christmas",
        "trigger": { "type": "date", "on": "2026-12-24" },
        "offer": { "type": "voucher", "reward_id": "free-pastry" },
        "messages": { "sms": "Merry Christmas: {offer}" }
    }]));
    let mut before = Run::enrol(p.clone(), consenting(true, false, None), T0);
    before.advance_on_time(T0 + 400 * DAY);
    assert_eq!(before.firings().len(), 1);
    assert_eq!(
        before
            .m
            .state()
            .vouchers
            .get(&RewardId::parse("free-pastry").unwrap()),
        Some(&1)
    );
    let mut after = Run::enrol(p, consenting(true, false, None), T0 + 360 * DAY);
    after.advance_on_time(T0 + 400 * DAY);
    assert!(after.firings().is_empty(), "enrolled after the date");
}

#[test]
fn the_voucher_s_use_counts_as_redeemed_with_the_revenue_that_follows() {
    let p = program(json!([{
        "id": "pastry",
        "name": "Pastry on us",
        "trigger": { "type": "enrolled", "after_days": 7 },
        "offer": { "type": "voucher", "reward_id": "free-pastry" },
        "redeem_within_days": 10
    }]));
    let mut r = Run::enrol(p, consenting(true, false, None), T0);
    r.advance_on_time(T0 + 7 * DAY);
    r.buy(2_000, T0 + 8 * DAY);
    assert_eq!(
        r.results("pastry"),
        (1, 0, 0, 0),
        "bought, voucher not used yet"
    );
    r.cmd(
        MemberCommand::Redemption {
            reward_id: RewardId::parse("free-pastry").unwrap(),
        },
        T0 + 9 * DAY,
    )
    .unwrap();
    assert_eq!(
        r.results("pastry"),
        (1, 0, 1, 2_000),
        "its earlier revenue counts now"
    );
    r.buy(3_000, T0 + 20 * DAY);
    r.buy(5_000, T0 + 40 * DAY);
    assert_eq!(
        r.results("pastry"),
        (1, 0, 1, 5_000),
        "within the 30 days after the firing only"
    );
}

#[test]
fn a_multiplier_offer_multiplies_purchases_in_its_window_only() {
    let p = program(json!([{
        "id": "double",
        "name": "Double points week",
        "trigger": { "type": "enrolled", "after_days": 1 },
        "offer": { "type": "multiplier", "multiplier_pct": 200, "days": 7 }
    }]));
    let mut r = Run::enrol(p, consenting(false, false, None), T0);
    r.advance_on_time(T0 + DAY);
    let before = r.m.state().points;
    r.buy(1_000, T0 + 2 * DAY);
    assert_eq!(r.m.state().points - before, 20, "10 € at 200 %");
    let before = r.m.state().points;
    r.buy(1_000, T0 + 9 * DAY);
    assert_eq!(r.m.state().points - before, 10, "the window is over");
    assert_eq!(r.results("double"), (1, 0, 1, 2_000));
}

#[test]
fn tier_segment_and_points_triggers_fire_on_their_change() {
    let p = program_with(
        json!([
            { "id": "silver", "name": "Silver!", "trigger": { "type": "tier_reached", "tier": "Silver" },
              "offer": { "type": "bonus_points", "points": 10 } },
            { "id": "p500", "name": "500 points", "trigger": { "type": "points_reached", "points": 500 },
              "offer": { "type": "none" }, "messages": { "sms": "{points} points!" } },
            { "id": "risk", "name": "Miss you", "trigger": { "type": "segment_entered", "segment": "at_risk" },
              "offer": { "type": "bonus_points", "points": 30 }, "frequency_cap": { "max": 1, "days": 365 } }
        ]),
        json!({ "segments": {} }),
    )
    .unwrap();
    let mut r = Run::enrol(p, consenting(true, false, None), T0);
    r.buy(10_000, T0 + DAY);
    r.buy(10_000, T0 + 2 * DAY);
    assert!(r.firings().is_empty());
    r.buy(10_000, T0 + 3 * DAY); // 300 € of spend: Silver; 50 + 100 + 100 + 150 points
    let f = r.firings();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].0, "silver");
    r.buy(10_000, T0 + 4 * DAY);
    assert!(
        r.firings().iter().any(|f| f.0 == "p500"),
        "{:?}",
        r.firings()
    );
    // Two regular visits, then 60 days without one: at risk, by the scheduler.
    r.advance_on_time(T0 + 100 * DAY);
    let risk: Vec<_> = r.firings().into_iter().filter(|f| f.0 == "risk").collect();
    assert_eq!(risk.len(), 1, "{risk:?}");
    assert!(risk[0].1.starts_with("segment:at_risk:"));
    assert_eq!(r.campaign_points("risk"), 30);
}

#[test]
fn birthday_campaigns_fire_once_a_year_on_the_day() {
    let p = program(json!([{
        "id": "bday", "name": "Happy birthday", "trigger": { "type": "birthday" },
        "offer": { "type": "bonus_points", "points": 100 },
        "frequency_cap": { "max": 1, "days": 300 },
        "messages": { "email": { "subject": "Happy birthday {first_name}", "body": "{offer}" } }
    }]));
    let mut r = Run::enrol(p, consenting(false, true, Some("1990-03-10")), T0);
    r.advance_on_time(T0 + 800 * DAY);
    let keys: Vec<String> = r.firings().into_iter().map(|f| f.1).collect();
    assert_eq!(keys, ["birthday:2026", "birthday:2027", "birthday:2028"]);
    assert!(r.firings().iter().all(|f| f.2 == [Channel::Email]));
}

#[test]
fn an_erased_member_gets_no_campaign() {
    let mut r = Run::enrol(program(welcome(14)), consenting(true, true, None), T0);
    r.cmd(MemberCommand::Erase, T0 + DAY).unwrap();
    assert_eq!(r.m.state().next_due(&r.m.program), None);
    assert!(r.firings().is_empty());
}

#[test]
fn campaigns_are_validated_with_the_field_named() {
    for (campaign, field) in [
        (
            json!({"id": "a b", "name": "x", "trigger": {"type": "birthday"}, "offer": {"type": "none"}}),
            "campaigns[0].id",
        ),
        (
            json!({"id": "a", "name": "x", "trigger": {"type": "tier_reached", "tier": "Bronze"}, "offer": {"type": "none"}}),
            "campaigns[0].trigger.tier",
        ),
        (
            json!({"id": "a", "name": "x", "trigger": {"type": "segment_entered", "segment": "at_risk"}, "offer": {"type": "none"}}),
            "campaigns[0].trigger.segment",
        ),
        (
            json!({"id": "a", "name": "x", "trigger": {"type": "birthday"}, "offer": {"type": "voucher", "reward_id": "nope"}}),
            "campaigns[0].offer.reward_id",
        ),
        (
            json!({"id": "a", "name": "x", "trigger": {"type": "birthday"}, "offer": {"type": "multiplier", "multiplier_pct": 100, "days": 3}}),
            "campaigns[0].offer.multiplier_pct",
        ),
        (
            json!({"id": "a", "name": "x", "trigger": {"type": "birthday"}, "offer": {"type": "none"}, "messages": {"sms": "Hi {name}"}}),
            "campaigns[0].messages.sms",
        ),
        (
            json!({"id": "a", "name": "x", "trigger": {"type": "date", "on": "2026-02-30"}, "offer": {"type": "none"}}),
            "campaigns[0].trigger.on",
        ),
        (
            json!({"id": "a", "name": "x", "trigger": {"type": "birthday"}, "offer": {"type": "none"}, "frequency_cap": {"max": 0, "days": 3}}),
            "campaigns[0].frequency_cap.max",
        ),
    ] {
        let e = program_with(json!([campaign]), json!({}))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{campaign}: {e}");
    }
    let twice =
        json!({"id": "a", "name": "x", "trigger": {"type": "birthday"}, "offer": {"type": "none"}});
    let e = program_with(json!([twice, twice]), json!({}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("appears twice"), "{e}");
    for (trigger, offer) in [
        (json!({"type": "birthday", "x": 1}), json!({"type": "none"})),
        (
            json!({"type": "birthday"}),
            json!({"type": "none", "points": 3}),
        ),
    ] {
        let c = json!([{"id": "a", "name": "x", "trigger": trigger, "offer": offer}]);
        let e = program_with(c, json!({})).unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
    }
    let positional = json!([["a", "x", {"type": "birthday"}, {"type": "none"}]]);
    let e = program_with(positional, json!({})).unwrap_err().to_string();
    assert!(e.contains("expected a JSON object"), "{e}");
}

#[test]
fn a_program_with_campaigns_reads_back_as_written() {
    let p = program_with(
        json!([
            { "id": "a", "name": "A", "trigger": { "type": "date", "on": "2026-05-01" },
              "audience": { "segments": ["loyal"], "stores": ["s-1"] },
              "offer": { "type": "multiplier", "multiplier_pct": 150, "days": 3 },
              "messages": { "sms": "x {points}", "email": { "subject": "s", "body": "b" } },
              "frequency_cap": { "max": 2, "days": 10 }, "redeem_within_days": 5,
              "valid_from": "2026-04-01", "valid_to": "2026-06-01" }
        ]),
        json!({ "segments": {} }),
    )
    .unwrap();
    let back: Program = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

#[test]
fn templates_render_their_placeholders_and_always_carry_the_opt_out_link() {
    let v = TemplateValues {
        first_name: "Ana",
        points: 120,
        tier: "Gold",
        offer: "25 points",
        franchise: "Café Lune",
        opt_out_url: "https://x/optout",
    };
    assert_eq!(
        render("{first_name}: {points} pts at {franchise}", &v),
        "Ana: 120 pts at Café Lune\n\nhttps://x/optout"
    );
    assert_eq!(render("Stop: {opt_out_url}", &v), "Stop: https://x/optout");
}

/// A random life: purchases, refund-free, and time passing.
fn life() -> impl Strategy<Value = Vec<(u8, u16)>> {
    prop::collection::vec((0u8..3, 1u16..40), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A campaign fires at most once per member and trigger occurrence and within its cap;
    /// what the offers gave is exactly the campaign entries; the balance is the ledger's sum.
    #[test]
    fn a_campaign_fires_at_most_once_per_member_and_trigger(steps in life(), cap_days in 1i64..60) {
        let p = program_with(
            json!([
                { "id": "risk", "name": "R", "trigger": { "type": "segment_entered", "segment": "at_risk" },
                  "offer": { "type": "bonus_points", "points": 7 },
                  "frequency_cap": { "max": 1, "days": cap_days } },
                { "id": "pts", "name": "P", "trigger": { "type": "points_reached", "points": 120 },
                  "offer": { "type": "bonus_points", "points": 3 },
                  "frequency_cap": { "max": 2, "days": cap_days } },
                { "id": "w", "name": "W", "trigger": { "type": "enrolled", "after_days": 3 },
                  "offer": { "type": "bonus_points", "points": 5 } }
            ]),
            json!({ "segments": {}, "points_expiry_days": 30 }),
        ).unwrap();
        let mut r = Run::enrol(p, consenting(true, true, None), T0);
        let mut t = T0;
        for (kind, n) in steps {
            t += i64::from(n) * DAY / 2;
            match kind {
                0 => r.buy(u64::from(n) * 500, t),
                1 => { r.cmd(MemberCommand::Redemption { reward_id: RewardId::parse("free-coffee").unwrap() }, t); }
                _ => r.advance_on_time(t),
            }
        }
        let firings = r.firings();
        let mut keys: Vec<_> = firings.iter().map(|f| (f.0.clone(), f.1.clone())).collect();
        keys.sort();
        let n = keys.len();
        keys.dedup();
        prop_assert_eq!(keys.len(), n, "a key fired twice: {:?}", firings);
        prop_assert!(firings.iter().filter(|f| f.0 == "w").count() <= 1);
        // The cap: firing times of one campaign, at most `max` in any `cap_days` days.
        for (id, max) in [("risk", 1usize), ("pts", 2)] {
            let detail = format!("campaign:{id}");
            let times: Vec<i64> = r.m.ledger.iter().filter(|e| e.detail == detail).map(|e| e.at.0).collect();
            for (i, a) in times.iter().enumerate() {
                let within = times[i..].iter().filter(|b| **b - a < cap_days * DAY).count();
                prop_assert!(within <= max, "{id}: {times:?}");
            }
            let (fired, messages, _, _) = r.results(id);
            prop_assert_eq!(fired as usize, times.len());
            prop_assert_eq!(messages, 0, "these campaigns have no message");
        }
        let sum: i64 = r.m.ledger.iter().map(|e| e.points).sum();
        prop_assert_eq!(sum, r.m.state().points as i64);
    }
}
