//! A few months of generated history for the demo franchise, so that a new `loyalty dev` shows
//! a living dashboard at once.
//!
//! [`generate`] turns a seed into the [`CommandEnvelope`]s a franchise's tills would have sent
//! over the last `days` days: enrolments (each member at a home store), member purchases with
//! visit patterns (daily regulars, weekly, monthly, one-off visitors; a few members hop between
//! stores), anonymous sales at stores of different sizes, refunds of some purchases, and
//! redemptions of the program's rewards by members who will have earned them. The envelopes are
//! appended to the command topic like POS traffic, so the engine applies them exactly once with
//! every projection; nothing here touches a store.
//!
//! - **Deterministic.** The same franchise, stores, program and [`HistorySpec`] give the same
//!   envelopes; each member and the anonymous traffic draw from their own stream of the seed.
//! - **In the past.** Every event has an `occurred_at` before `spec.now`, on one of the `days`
//!   local days (in the program's time zone) that end with `now`'s, at a plausible shop hour.
//!   Enrolments carry one too (HTTP enrolments do not), on the day the member joins, and each
//!   member's other events come after its enrolment, in the order they are returned.
//! - **Like real traffic.** Member ids come from the franchise secret and the phone number as
//!   for an enrolment at the till ([`identity::member_id`]); the phones are clearly fake
//!   (`+3360000xxxx`). Enrolments have the id an HTTP enrolment gets (`enrol.<member>`), every
//!   other event `demo-<n>`, so appending the history again changes nothing.
//! - **Redemptions that hold.** The generator follows each member's points with a lower bound
//!   of what the engine will credit (the smallest tier multiplier, the stamp card's vouchers,
//!   expiry) and only redeems what that bound covers; were one refused anyway, the engine
//!   records the rejection like any other.

use std::collections::BTreeMap;
use std::fmt;

use loyalty_domain::{
    Cents, Day, EventId, Phone, Points, Profile, Program, RewardId, Timestamp, Zone,
};

use crate::command::{CommandEnvelope, PosCommand};
use crate::identity;
use crate::model::{Franchise, Store};
use crate::{Error, Result};

/// How many days of history `loyalty dev` generates.
pub const DEFAULT_DAYS: u32 = 90;
/// How many members it enrols over them.
pub const DEFAULT_MEMBERS: u32 = 300;
/// Anonymous sales per day over all stores, on average.
pub const DEFAULT_ANONYMOUS_PER_DAY: u32 = 28;
/// The seed of `loyalty dev`'s history.
pub const DEFAULT_SEED: u64 = 20_260_901;
/// The most members one history has (one per fake phone number).
pub const MAX_MEMBERS: u32 = 10_000;
/// The most days one history covers.
pub const MAX_DAYS: u32 = 1_096;
/// Fake phone numbers: this prefix and four digits.
pub const PHONE_PREFIX: &str = "+3360000";
/// Prefix of the generated event ids (but enrolments, `enrol.<member>` as over HTTP).
pub const EVENT_PREFIX: &str = "demo-";
/// Relative traffic of the first stores (a flagship, then smaller ones); later stores get the
/// last weight.
pub const STORE_WEIGHTS: [u32; 5] = [100, 60, 35, 25, 15];

const SECOND_MS: i64 = 1_000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Local opening hours of a café, with how busy each is.
const HOURS: [(u32, u32); 14] = [
    (7, 6),
    (8, 12),
    (9, 10),
    (10, 7),
    (11, 6),
    (12, 10),
    (13, 9),
    (14, 5),
    (15, 4),
    (16, 5),
    (17, 7),
    (18, 7),
    (19, 4),
    (20, 2),
];

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistorySpec {
    pub seed: u64,
    /// When the history ends: every event happened before it (it is also their arrival).
    pub now: Timestamp,
    /// How many local days, ending with `now`'s, the history covers (1 to [`MAX_DAYS`]).
    pub days: u32,
    /// Members enrolled over them (at most [`MAX_MEMBERS`]).
    pub members: u32,
    /// Anonymous sales per day over all stores, on average.
    pub anonymous_per_day: u32,
}

impl HistorySpec {
    /// `loyalty dev`'s history: [`DEFAULT_DAYS`] days, [`DEFAULT_MEMBERS`] members.
    pub fn new(seed: u64, now: Timestamp) -> HistorySpec {
        HistorySpec {
            seed,
            now,
            days: DEFAULT_DAYS,
            members: DEFAULT_MEMBERS,
            anonymous_per_day: DEFAULT_ANONYMOUS_PER_DAY,
        }
    }
}

/// How many events of each kind a history has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryCounts {
    pub enrolments: u64,
    pub member_purchases: u64,
    pub anonymous_purchases: u64,
    pub refunds: u64,
    pub redemptions: u64,
}

impl HistoryCounts {
    pub fn total(&self) -> u64 {
        self.enrolments
            + self.member_purchases
            + self.anonymous_purchases
            + self.refunds
            + self.redemptions
    }
}

/// `5210 events (300 enrolments, 1800 member purchases, …)`: counts only, no personal data.
impl fmt::Display for HistoryCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} events ({} enrolments, {} member purchases, {} anonymous sales, {} refunds, {} \
             redemptions)",
            self.total(),
            self.enrolments,
            self.member_purchases,
            self.anonymous_purchases,
            self.refunds,
            self.redemptions
        )
    }
}

/// A generated history: the envelopes in the order to append them, and their counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoHistory {
    pub envelopes: Vec<CommandEnvelope>,
    pub counts: HistoryCounts,
}

/// The fake phone number of the `i`-th generated member.
pub fn phone(i: u32) -> String {
    format!("{PHONE_PREFIX}{i:04}")
}

/// The history of `franchise` at `stores` (in this order: the first is the busiest, see
/// [`STORE_WEIGHTS`]) under `program`, which must be the franchise's current version. Sorted by
/// `occurred_at`, so each member's events come in their order. No stores: no history.
pub fn generate(
    franchise: &Franchise,
    stores: &[Store],
    program: &Program,
    spec: &HistorySpec,
) -> Result<DemoHistory> {
    if spec.days == 0 || spec.days > MAX_DAYS {
        return Err(Error::Invalid(format!(
            "a demo history covers 1 to {MAX_DAYS} days"
        )));
    }
    if spec.members > MAX_MEMBERS {
        return Err(Error::Invalid(format!(
            "a demo history has at most {MAX_MEMBERS} members"
        )));
    }
    let mut g = Generator {
        franchise,
        stores,
        program,
        spec,
        calendar: Calendar::new(&program.time_zone, spec.now, spec.days),
        weights: (0..stores.len())
            .map(|i| STORE_WEIGHTS[i.min(STORE_WEIGHTS.len() - 1)])
            .collect(),
        next_id: 0,
        out: Vec::new(),
        counts: HistoryCounts::default(),
    };
    if !stores.is_empty() {
        for i in 0..spec.members {
            g.member(i)?;
        }
        g.anonymous()?;
    }
    let Generator {
        mut out, counts, ..
    } = g;
    // Stable: a member's events with the same time keep their order.
    out.sort_by_key(|e| e.at());
    Ok(DemoHistory {
        envelopes: out,
        counts,
    })
}

/// SplitMix64: small, fast and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi].
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }

    /// True with probability `pct` percent.
    fn chance(&mut self, pct: f64) -> bool {
        self.unit() * 100.0 < pct
    }

    /// An index drawn with these weights (not all zero).
    fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut x = self.next() % total.max(1);
        for (i, w) in weights.iter().enumerate() {
            if x < u64::from(*w) {
                return i;
            }
            x -= u64::from(*w);
        }
        weights.len().saturating_sub(1)
    }
}

/// The local days of the history and their midnights.
struct Calendar {
    /// The first day's number.
    first: Day,
    /// The instant each day starts where the franchise is.
    midnights: Vec<i64>,
    now: i64,
}

impl Calendar {
    fn new(zone: &Zone, now: Timestamp, days: u32) -> Calendar {
        let today = zone.day(now);
        let first = Day(today.0.saturating_sub(days - 1));
        let midnights = (first.0..=today.0)
            .map(|d| local_midnight(zone, Day(d)))
            .collect();
        Calendar {
            first,
            midnights,
            now: now.0,
        }
    }

    fn days(&self) -> u32 {
        self.midnights.len() as u32
    }

    /// The instant `minute_ms` after local midnight of day `d` of the history.
    fn at(&self, d: u32, since_midnight_ms: i64) -> i64 {
        self.midnights[d as usize] + since_midnight_ms
    }

    /// Whether `t` is far enough before `now` to be history.
    fn past(&self, t: i64) -> bool {
        t < self.now - SECOND_MS
    }

    /// Monday 0 to Sunday 6.
    fn weekday(&self, d: u32) -> u32 {
        // 1970-01-01 was a Thursday.
        (self.first.0 + d + 3) % 7
    }
}

/// The first instant of `day` in `zone` (its local midnight, or the first local time after it
/// on a day that skips it).
pub fn local_midnight(zone: &Zone, day: Day) -> i64 {
    let guess = i64::from(day.0) * DAY_MS;
    // Offsets are within ±14 hours: the day starts in (lo, hi].
    let (mut lo, mut hi) = (guess - 16 * HOUR_MS, guess + 16 * HOUR_MS);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if zone.day(Timestamp(mid)) >= day {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// A time of day in the opening hours, around `hour` if the customer has a habit.
fn time_of_day(r: &mut Rng, hour: Option<u32>) -> i64 {
    let h = match hour {
        Some(h) => (i64::from(h) + r.range(-1, 1)).clamp(7, 20),
        None => i64::from(HOURS[r.weighted(&HOURS.map(|(_, w)| w))].0),
    };
    h * HOUR_MS + r.range(0, 59) * MINUTE_MS + r.range(0, 59) * SECOND_MS
}

fn cents(v: i64) -> Result<Cents> {
    Cents::new(v).map_err(|e| Error::Invalid(e.to_string()))
}

/// A member's basket: 3 to 12 euros (in the program's minor units), 7.50 on average.
fn member_basket(r: &mut Rng) -> i64 {
    10 * (30 + r.range(0, 45) + r.range(0, 45))
}

/// An anonymous basket: 2.50 to 9.50, 6 on average (members spend more: the spend lift).
fn anonymous_basket(r: &mut Rng) -> i64 {
    10 * (25 + r.range(0, 35) + r.range(0, 35))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Most weekdays, some weekends.
    Daily,
    /// Every 5 to 9 days.
    Weekly,
    /// Every 20 to 40 days.
    Monthly,
    /// The day they enrol, sometimes once more.
    Occasional,
}

/// One thing a member does, before events are made of it.
#[derive(Clone, Copy)]
enum Step {
    Enrol,
    /// The index of the visit.
    Purchase(usize),
    /// The index of the visit refunded.
    Refund(usize),
}

struct Visit {
    at: i64,
    store: usize,
    amount: i64,
    /// When and how much of it is refunded.
    refund: Option<(i64, i64)>,
}

/// A lower bound of a member's points and vouchers as the engine will count them.
#[derive(Default)]
struct Wallet {
    /// (UTC day earned, points), oldest first, like the engine's lots.
    lots: Vec<(Day, Points)>,
    stamps: u32,
    vouchers: BTreeMap<RewardId, u32>,
}

impl Wallet {
    fn points(&self) -> Points {
        self.lots.iter().map(|(_, p)| p).sum()
    }

    fn advance(&mut self, program: &Program, at: i64) {
        if let Some(days) = program.points_expiry_days {
            let today = Timestamp(at).day();
            self.lots
                .retain(|(d, _)| d.0.saturating_add(days) > today.0);
        }
    }

    fn earn(&mut self, at: i64, points: Points) {
        if points == 0 {
            return;
        }
        let day = Timestamp(at).day();
        match self.lots.last_mut() {
            Some((d, p)) if *d == day => *p += points,
            _ => self.lots.push((day, points)),
        }
    }

    fn take_oldest(&mut self, mut n: Points) {
        while n > 0 && !self.lots.is_empty() {
            let take = n.min(self.lots[0].1);
            self.lots[0].1 -= take;
            n -= take;
            if self.lots[0].1 == 0 {
                self.lots.remove(0);
            }
        }
    }

    fn take_newest(&mut self, mut n: Points) {
        while n > 0 {
            let Some(last) = self.lots.last_mut() else {
                break;
            };
            let take = n.min(last.1);
            last.1 -= take;
            n -= take;
            if last.1 == 0 {
                self.lots.pop();
            }
        }
    }
}

struct Generator<'a> {
    franchise: &'a Franchise,
    stores: &'a [Store],
    program: &'a Program,
    spec: &'a HistorySpec,
    calendar: Calendar,
    weights: Vec<u32>,
    next_id: u64,
    out: Vec<CommandEnvelope>,
    counts: HistoryCounts,
}

impl Generator<'_> {
    fn event_id(&mut self) -> Result<EventId> {
        self.next_id += 1;
        EventId::parse(&format!("{EVENT_PREFIX}{}", self.next_id))
            .map_err(|e| Error::Invalid(e.to_string()))
    }

    fn push(&mut self, store: usize, event_id: EventId, at: i64, command: PosCommand) {
        match &command {
            PosCommand::Enrol { .. } => self.counts.enrolments += 1,
            PosCommand::Purchase {
                member_id: Some(_), ..
            } => self.counts.member_purchases += 1,
            PosCommand::Purchase {
                member_id: None, ..
            } => self.counts.anonymous_purchases += 1,
            PosCommand::Refund { .. } => self.counts.refunds += 1,
            PosCommand::Redemption { .. } => self.counts.redemptions += 1,
            // The generator sends none.
            PosCommand::Erase { .. }
            | PosCommand::Advance { .. }
            | PosCommand::CancelRedemption { .. }
            | PosCommand::SetConsent { .. }
            | PosCommand::ConsumeCode { .. } => {}
        }
        self.out.push(CommandEnvelope {
            franchise_id: self.franchise.id.clone(),
            store_id: self.stores[store].id.clone(),
            event_id,
            program_version: self.franchise.program_version,
            occurred_at: Some(Timestamp(at)),
            received_at: self.spec.now,
            request_id: None,
            reply_to: None,
            command,
        });
    }

    /// The store of a visit: mostly the member's own, anywhere for a store-hopper.
    fn store_of_visit(&self, r: &mut Rng, home: usize, hopper: bool) -> usize {
        if (hopper && r.chance(60.0)) || r.chance(4.0) {
            r.weighted(&self.weights)
        } else {
            home
        }
    }

    /// The `i`-th member: its enrolment, visits, refunds and redemptions.
    fn member(&mut self, i: u32) -> Result<()> {
        let mut r = Rng::new(self.spec.seed, 1 + u64::from(i));
        let days = self.calendar.days();
        let phone = Phone::parse(&phone(i)).map_err(|e| Error::Invalid(e.to_string()))?;
        let member = identity::member_id(&self.franchise.secret, &phone);
        let home = r.weighted(&self.weights);
        let hopper = r.chance(12.0);
        let roll = r.unit() * 100.0;
        let pattern = match roll {
            x if x < 15.0 => Pattern::Daily,
            x if x < 40.0 => Pattern::Weekly,
            x if x < 65.0 => Pattern::Monthly,
            _ => Pattern::Occasional,
        };
        let habit = matches!(pattern, Pattern::Daily | Pattern::Weekly)
            .then(|| HOURS[r.weighted(&HOURS.map(|(_, w)| w))].0);
        // More members joined early on (the launch), then a steady trickle.
        let join = ((f64::from(days) * r.unit().powf(1.3)) as u32).min(days - 1);
        let enrolled = self.calendar.at(join, time_of_day(&mut r, habit));
        if !self.calendar.past(enrolled) {
            return Ok(());
        }

        // The visits: the first right after enrolling at the till, at the home store.
        let mut visits = Vec::new();
        let mut visit = |r: &mut Rng, at: i64, store: usize| {
            visits.push(Visit {
                at,
                store,
                amount: member_basket(r),
                refund: None,
            })
        };
        let first = enrolled + r.range(1, 4) * MINUTE_MS + r.range(0, 59) * SECOND_MS;
        visit(&mut r, first, home);
        let mut day = join;
        loop {
            day += match pattern {
                Pattern::Daily => 1,
                Pattern::Weekly => r.range(5, 9) as u32,
                Pattern::Monthly => r.range(20, 40) as u32,
                Pattern::Occasional if day == join && r.chance(30.0) => r.range(3, 60) as u32,
                Pattern::Occasional => days,
            };
            if day >= days {
                break;
            }
            if pattern == Pattern::Daily {
                let p = if self.calendar.weekday(day) < 5 {
                    60.0
                } else {
                    20.0
                };
                if !r.chance(p) {
                    continue;
                }
            }
            let at = self.calendar.at(day, time_of_day(&mut r, habit));
            let store = self.store_of_visit(&mut r, home, hopper);
            visit(&mut r, at, store);
        }
        visits.retain(|v| self.calendar.past(v.at));
        for v in &mut visits {
            if r.chance(2.5) {
                let at = v.at + r.range(10 * MINUTE_MS, 48 * HOUR_MS);
                let amount = if r.chance(60.0) {
                    v.amount
                } else {
                    10 * r.range(1, (v.amount / 20).max(1))
                };
                if self.calendar.past(at) {
                    v.refund = Some((at, amount));
                }
            }
        }

        // Its steps in time order, walked with a lower bound of its points.
        let mut steps: Vec<(i64, Step)> = vec![(enrolled, Step::Enrol)];
        for (k, v) in visits.iter().enumerate() {
            steps.push((v.at, Step::Purchase(k)));
            if let Some((at, _)) = v.refund {
                steps.push((at, Step::Refund(k)));
            }
        }
        steps.sort_by_key(|(at, _)| *at);
        let program = self.program;
        let tiers = 0..program.tiers.len().max(1);
        let mut wallet = Wallet::default();
        let mut ids: Vec<Option<EventId>> = vec![None; visits.len()];
        for (n, (at, step)) in steps.iter().enumerate() {
            let at = *at;
            wallet.advance(program, at);
            match *step {
                Step::Enrol => {
                    wallet.earn(at, program.signup_bonus);
                    let event_id = EventId::parse(&format!("enrol.{member}"))
                        .map_err(|e| Error::Invalid(e.to_string()))?;
                    let command = PosCommand::Enrol {
                        member_id: member.clone(),
                        profile: Profile {
                            phone: phone.clone(),
                            name: None,
                            birthday: None,
                            consent: Default::default(),
                            email: None,
                        },
                    };
                    self.push(home, event_id, at, command);
                }
                Step::Purchase(k) => {
                    let v = &visits[k];
                    let earned = tiers
                        .clone()
                        .map(|t| program.points_for(v.amount as u64, t))
                        .min()
                        .unwrap_or(0);
                    wallet.earn(at, earned);
                    if let Some(card) = &program.stamp_card {
                        wallet.stamps += 1;
                        if wallet.stamps >= card.size {
                            wallet.stamps = 0;
                            *wallet.vouchers.entry(card.reward_id.clone()).or_default() += 1;
                        }
                    }
                    let event_id = self.event_id()?;
                    ids[k] = Some(event_id.clone());
                    let command = PosCommand::Purchase {
                        member_id: Some(member.clone()),
                        amount_cents: cents(v.amount)?,
                        currency: program.currency.clone(),
                        items: Vec::new(),
                    };
                    self.push(v.store, event_id, at, command);
                    // A reward at the till, strictly before the member's next step.
                    let next = steps.get(n + 1).map_or(self.calendar.now, |(t, _)| *t);
                    let gap = next - at;
                    if gap > 4 * SECOND_MS {
                        if let Some(reward) = self.pick_reward(&mut r, &wallet) {
                            let at = at + r.range(30 * SECOND_MS, 3 * MINUTE_MS).min(gap / 2);
                            if self.calendar.past(at) {
                                match wallet.vouchers.get_mut(&reward) {
                                    Some(n) if *n > 0 => {
                                        *n -= 1;
                                        if *n == 0 {
                                            wallet.vouchers.remove(&reward);
                                        }
                                    }
                                    _ => {
                                        let cost = program
                                            .reward(&reward)
                                            .map_or(Points::MAX, |rw| rw.cost_points);
                                        wallet.take_oldest(cost);
                                    }
                                }
                                let event_id = self.event_id()?;
                                let command = PosCommand::Redemption {
                                    member_id: member.clone(),
                                    reward_id: reward,
                                    code: None,
                                };
                                self.push(v.store, event_id, at, command);
                            }
                        }
                    }
                }
                Step::Refund(k) => {
                    let v = &visits[k];
                    let Some((_, amount)) = v.refund else {
                        continue;
                    };
                    let Some(purchase) = ids[k].clone() else {
                        continue;
                    };
                    // At most what the best tier would have earned, and a point of rounding.
                    let owed = tiers
                        .clone()
                        .map(|t| program.points_for(amount as u64, t))
                        .max()
                        .unwrap_or(0)
                        + 1;
                    wallet.take_newest(owed);
                    // A refund in full takes the purchase's stamp back: off the card, or (at
                    // worst, for a lower bound) a voucher of the card.
                    if let Some(card) = program.stamp_card.as_ref().filter(|_| amount == v.amount) {
                        if wallet.stamps > 0 {
                            wallet.stamps -= 1;
                        } else if let Some(n) = wallet.vouchers.get_mut(&card.reward_id) {
                            *n = n.saturating_sub(1);
                            if *n == 0 {
                                wallet.vouchers.remove(&card.reward_id);
                            }
                        }
                    }
                    let event_id = self.event_id()?;
                    let command = PosCommand::Refund {
                        member_id: Some(member.clone()),
                        purchase_event_id: purchase,
                        amount_cents: Some(cents(amount)?),
                    };
                    self.push(v.store, event_id, at, command);
                }
            }
        }
        Ok(())
    }

    /// What a member redeems after a purchase, if anything: most stamp-card vouchers, and now
    /// and then a reward its points surely cover.
    fn pick_reward(&self, r: &mut Rng, wallet: &Wallet) -> Option<RewardId> {
        if let Some((reward, _)) = wallet.vouchers.iter().find(|(_, n)| **n > 0) {
            if r.chance(70.0) {
                return Some(reward.clone());
            }
        }
        let points = wallet.points();
        let affordable: Vec<&RewardId> = self
            .program
            .rewards
            .iter()
            .filter(|rw| rw.cost_points > 0 && rw.cost_points <= points)
            .map(|rw| &rw.id)
            .collect();
        if affordable.is_empty() || !r.chance(25.0) {
            return None;
        }
        let i = r.range(0, affordable.len() as i64 - 1) as usize;
        Some(affordable[i].clone())
    }

    /// Sales without a member, each store by its size, busier on Saturdays.
    fn anonymous(&mut self) -> Result<()> {
        let mut r = Rng::new(self.spec.seed, 0);
        let total: u32 = self.weights.iter().sum();
        for day in 0..self.calendar.days() {
            let busy = match self.calendar.weekday(day) {
                5 => 1.15,
                6 => 0.7,
                _ => 1.0,
            };
            for store in 0..self.stores.len() {
                let mean = f64::from(self.spec.anonymous_per_day) * f64::from(self.weights[store])
                    / f64::from(total.max(1))
                    * busy;
                let n = (mean * (0.7 + 0.6 * r.unit())).round() as u32;
                for _ in 0..n {
                    let at = self.calendar.at(day, time_of_day(&mut r, None));
                    let amount = anonymous_basket(&mut r);
                    if !self.calendar.past(at) {
                        continue;
                    }
                    let event_id = self.event_id()?;
                    let command = PosCommand::Purchase {
                        member_id: None,
                        amount_cents: cents(amount)?,
                        currency: self.program.currency.clone(),
                        items: Vec::new(),
                    };
                    self.push(store, event_id, at, command);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use loyalty_domain::{
        apply, EventContext, FranchiseId, MemberCommand, MemberId, MemberState, Outcome,
        PurchaseRecord, StoreId,
    };

    use super::*;

    /// 2026-11-25T15:30:00Z.
    const NOW: Timestamp = Timestamp(1_795_620_600_000);

    fn fixture(zone: &str) -> (Franchise, Vec<Store>, Program) {
        let franchise = Franchise {
            id: FranchiseId::parse("f_demo").unwrap(),
            name: "Demo Coffee".into(),
            secret: "0123456789abcdef".into(),
            program_version: 3,
            created_at: NOW,
        };
        let stores = ["s_a", "s_b", "s_c", "s_d"]
            .iter()
            .map(|id| Store {
                id: StoreId::parse(id).unwrap(),
                franchise_id: franchise.id.clone(),
                name: id.to_string(),
                created_at: NOW,
            })
            .collect();
        let mut program = Program::demo();
        program.time_zone = Zone::parse(zone).unwrap();
        (franchise, stores, program)
    }

    fn history(seed: u64, zone: &str) -> (DemoHistory, Program) {
        let (f, s, p) = fixture(zone);
        let h = generate(&f, &s, &p, &HistorySpec::new(seed, NOW)).unwrap();
        (h, p)
    }

    #[test]
    fn the_same_seed_gives_the_same_history() {
        let (a, _) = history(7, "Europe/Paris");
        let (b, _) = history(7, "Europe/Paris");
        assert_eq!(a, b);
        let (c, _) = history(8, "Europe/Paris");
        assert_ne!(a.envelopes, c.envelopes);
        // Ids are unique and namespaced; the counts are the envelopes'.
        let ids: BTreeSet<_> = a.envelopes.iter().map(|e| e.event_id.clone()).collect();
        assert_eq!(ids.len(), a.envelopes.len());
        assert!(a.envelopes.iter().all(|e| {
            let id = e.event_id.as_str();
            id.starts_with(EVENT_PREFIX) || id.starts_with("enrol.")
        }));
        assert_eq!(a.counts.total(), a.envelopes.len() as u64);
    }

    #[test]
    fn every_event_is_on_a_day_of_the_range_at_shop_hours_before_now() {
        for zone in [
            "UTC",
            "Europe/Paris",
            "America/New_York",
            "Pacific/Auckland",
        ] {
            let (h, p) = history(1, zone);
            let today = p.local_day(NOW);
            let first = Day(today.0 - (DEFAULT_DAYS - 1));
            let mut days = BTreeSet::new();
            for e in &h.envelopes {
                let at = e.occurred_at.expect("every event says when");
                assert!(at < NOW, "{zone}: {e:?} is not in the past");
                assert_eq!(e.received_at, NOW);
                let day = p.local_day(at);
                assert!(
                    first <= day && day <= today,
                    "{zone}: {} out of range",
                    day.iso()
                );
                days.insert(day);
                // Shop hours, give or take a refund or a DST hour; refunds come from anywhere.
                let hour = (at.0 - local_midnight(&p.time_zone, day)) / HOUR_MS;
                if !matches!(e.command, PosCommand::Refund { .. }) {
                    assert!((6..=22).contains(&hour), "{zone}: {e:?} at {hour} h");
                }
            }
            // Most days of the range have sales.
            assert!(
                days.len() as u32 >= DEFAULT_DAYS - 2,
                "{zone}: {}",
                days.len()
            );
            // In time order.
            assert!(h.envelopes.windows(2).all(|w| w[0].at() <= w[1].at()));
        }
    }

    #[test]
    fn members_enrol_before_anything_else_and_refunds_are_of_their_own_purchases() {
        let (h, _) = history(3, "Europe/Paris");
        let (f, ..) = fixture("UTC");
        let mut enrolled: HashMap<MemberId, Timestamp> = HashMap::new();
        let mut purchases: HashMap<EventId, (MemberId, Timestamp, u64)> = HashMap::new();
        let mut refunded: HashMap<EventId, u64> = HashMap::new();
        for e in &h.envelopes {
            assert_eq!(e.franchise_id, f.id);
            assert_eq!(e.program_version, f.program_version);
            let Some(m) = e.command.member_id() else {
                assert!(matches!(e.command, PosCommand::Purchase { .. }), "{e:?}");
                continue;
            };
            match &e.command {
                PosCommand::Enrol { profile, .. } => {
                    assert!(profile.phone.as_str().starts_with(PHONE_PREFIX));
                    // The id a till's enrolment of that phone would give.
                    assert_eq!(m, &identity::member_id(&f.secret, &profile.phone));
                    assert_eq!(e.event_id.as_str(), format!("enrol.{m}"));
                    assert!(
                        enrolled.insert(m.clone(), e.at()).is_none(),
                        "enrolled twice"
                    );
                }
                other => {
                    let since = enrolled.get(m).expect("an event before its enrolment");
                    assert!(e.at() > *since);
                    match other {
                        PosCommand::Purchase { amount_cents, .. } => {
                            purchases.insert(
                                e.event_id.clone(),
                                (m.clone(), e.at(), amount_cents.get()),
                            );
                        }
                        PosCommand::Refund {
                            purchase_event_id,
                            amount_cents,
                            ..
                        } => {
                            let (owner, at, amount) = purchases
                                .get(purchase_event_id)
                                .expect("a refund of a generated purchase before it");
                            assert_eq!(owner, m, "a refund of another member's purchase");
                            assert!(e.at() > *at);
                            let r = refunded.entry(purchase_event_id.clone()).or_default();
                            *r += amount_cents.map_or(0, |a| a.get());
                            assert!(*r <= *amount, "refunded more than bought");
                        }
                        _ => {}
                    }
                }
            }
        }
        assert_eq!(enrolled.len() as u64, h.counts.enrolments);
        assert!(h.counts.enrolments > DEFAULT_MEMBERS as u64 * 9 / 10);
        assert!(!refunded.is_empty());
    }

    #[test]
    fn the_mix_looks_like_a_chain_of_cafes_and_stays_small() {
        let (h, _) = history(DEFAULT_SEED, "Europe/Paris");
        let c = h.counts;
        println!("{c}");
        assert!(
            c.member_purchases > 1_000 && c.anonymous_purchases > 1_500,
            "{c}"
        );
        assert!(c.refunds > 10 && c.redemptions > 30, "{c}");
        assert!(c.total() < 7_000, "{c}");
        // Stores of different sizes, all with members and anonymous customers.
        let mut per_store: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let mut stores_of: HashMap<&MemberId, BTreeSet<&str>> = HashMap::new();
        let mut visits: HashMap<&MemberId, u64> = HashMap::new();
        for e in &h.envelopes {
            if let PosCommand::Purchase { member_id, .. } = &e.command {
                let s = per_store.entry(e.store_id.as_str()).or_default();
                match member_id {
                    Some(m) => {
                        s.0 += 1;
                        stores_of.entry(m).or_default().insert(e.store_id.as_str());
                        *visits.entry(m).or_default() += 1;
                    }
                    None => s.1 += 1,
                }
            }
        }
        assert_eq!(per_store.len(), 4);
        let sizes: Vec<u64> = ["s_a", "s_b", "s_c", "s_d"]
            .iter()
            .map(|s| per_store[s].0 + per_store[s].1)
            .collect();
        assert!(sizes.windows(2).all(|w| w[0] > w[1]), "{sizes:?}");
        assert!(per_store.values().all(|(m, a)| *m > 0 && *a > 0));
        // Regulars and one-off visitors, a few store-hoppers.
        let regulars = visits.values().filter(|n| **n >= 8).count();
        let once = visits.values().filter(|n| **n == 1).count();
        let hoppers = stores_of.values().filter(|s| s.len() > 1).count();
        assert!(
            regulars > 20 && once > 40,
            "{regulars} regulars, {once} one-off"
        );
        assert!(
            hoppers > 10 && hoppers < visits.len() / 2,
            "{hoppers} hoppers"
        );
    }

    /// The domain's own rules, member by member: the generated redemptions are covered.
    #[test]
    fn the_rules_accept_the_generated_history() {
        let (h, p) = history(5, "Europe/Paris");
        let (f, ..) = fixture("UTC");
        let mut states: HashMap<MemberId, Option<MemberState>> = HashMap::new();
        let mut purchases: HashMap<EventId, PurchaseRecord> = HashMap::new();
        let mut rejected = Vec::new();
        for e in &h.envelopes {
            let Some(m) = e.command.member_id() else {
                continue;
            };
            let cmd = match &e.command {
                PosCommand::Enrol { profile, .. } => MemberCommand::Enrol {
                    profile: profile.clone(),
                },
                PosCommand::Purchase {
                    amount_cents,
                    currency,
                    items,
                    ..
                } => MemberCommand::Purchase {
                    amount: *amount_cents,
                    currency: currency.clone(),
                    items: items.clone(),
                },
                PosCommand::Refund {
                    purchase_event_id,
                    amount_cents,
                    ..
                } => MemberCommand::Refund {
                    purchase_event_id: purchase_event_id.clone(),
                    amount: *amount_cents,
                    purchase: purchases.get(purchase_event_id).cloned(),
                    purchase_unseen: false,
                },
                PosCommand::Redemption { reward_id, .. } => MemberCommand::Redemption {
                    reward_id: reward_id.clone(),
                },
                PosCommand::Erase { .. } => MemberCommand::Erase,
                PosCommand::Advance { .. } => MemberCommand::Advance,
                // The generator sends none.
                PosCommand::SetConsent {
                    sms,
                    email,
                    email_address,
                    ..
                } => MemberCommand::SetConsent {
                    sms: *sms,
                    email: *email,
                    email_address: email_address.clone(),
                },
                // The generator sends none: refused as naming no redemption.
                PosCommand::CancelRedemption {
                    redemption_event_id,
                    ..
                } => MemberCommand::CancelRedemption {
                    redemption_event_id: redemption_event_id.clone(),
                    redemption: None,
                },
                // The generator sends none.
                PosCommand::ConsumeCode { code, .. } => {
                    MemberCommand::ConsumeCode { code: code.clone() }
                }
            };
            let ctx = EventContext {
                event_id: &e.event_id,
                store_id: &e.store_id,
                at: e.at(),
                program: &p,
                program_version: e.program_version,
            };
            let state = states.entry(m.clone()).or_default();
            match apply(state, m, &f.id, &cmd, &ctx) {
                Ok(applied) => match applied.outcome {
                    Outcome::Purchase(rec) => {
                        purchases.insert(e.event_id.clone(), rec);
                    }
                    Outcome::Refund {
                        purchase_event_id,
                        purchase,
                        ..
                    } => {
                        purchases.insert(purchase_event_id, purchase);
                    }
                    _ => {}
                },
                Err(r) => rejected.push((e.event_id.clone(), r)),
            }
        }
        assert!(rejected.is_empty(), "{rejected:?}");
        assert!(states.values().all(|s| s.is_some()));
    }
}
