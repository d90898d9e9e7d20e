//! The exactly-once checks of a multi-process run, and the figures they print.
//!
//! After the traffic of [`crate::traffic`] has stopped and the engines have caught up:
//! - [`resend`]: every command of a phase is sent again with its event id and body (and
//!   `?wait_ms=5000`); an acknowledged one must be answered as a replay with the outcome told
//!   (a purchase's `refunded_cents` / `reversed_points` follow its refunds, the rest must not
//!   change), a rejected one with the same problem; one never answered gets its outcome now;
//! - [`check_members`]: each member's ledger (every page, from the store through the HQ API)
//!   holds exactly one entry per applied command that moves points (the signup bonus, each
//!   purchase's earn, each refund's reversal, each redemption) with the points of its outcome,
//!   and nothing else; the balance is the sum of the ledger; the store's member (visits, spend)
//!   is what the outcomes add up to; the Redis status equals the store's member;
//! - [`consumer_lag`]: the engines' committed offsets equal the end offsets of every partition.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use loyalty_core::ports::{HotCache, StateStore};
use loyalty_domain::MemberId;
use serde_json::Value;
use tokio::time::Instant;

use crate::traffic::{classify, http_client, post, Answer, Kind, Sent, Traffic};

/// Differences found, each with a one-line description (the first few are printed).
#[derive(Clone, Debug, Default)]
pub struct Differences {
    pub count: BTreeMap<&'static str, usize>,
    pub examples: Vec<String>,
}

impl Differences {
    pub fn add(&mut self, what: &'static str, detail: String) {
        *self.count.entry(what).or_default() += 1;
        if self.examples.len() < 12 {
            self.examples.push(format!("{what}: {detail}"));
        }
    }

    pub fn total(&self) -> usize {
        self.count.values().sum()
    }

    pub fn extend(&mut self, other: Differences) {
        for (k, v) in other.count {
            *self.count.entry(k).or_default() += v;
        }
        for e in other.examples {
            if self.examples.len() < 12 {
                self.examples.push(e);
            }
        }
    }

    pub fn summary(&self) -> String {
        if self.count.is_empty() {
            return "none".into();
        }
        self.count
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What the resend of a phase's commands found.
#[derive(Clone, Debug, Default)]
pub struct ResendReport {
    pub resent: usize,
    /// Acknowledged commands answered as replays with the outcome told.
    pub acked_replayed: usize,
    /// Rejected commands answered with the same problem again.
    pub rejected_same: usize,
    /// Commands never answered during the stream, and how they turned out.
    pub unanswered_applied_before: usize,
    pub unanswered_applied_now: usize,
    pub unanswered_rejected: usize,
    /// Acknowledged with a 202 (no outcome promised), then refused by the rules (e.g. not
    /// enough points by the time the engine applied it): an outcome, not a loss.
    pub accepted_then_refused: usize,
    pub differences: Differences,
}

/// Compares an outcome told with one answered later: a purchase's refund fields move with
/// its refunds; everything else must be equal.
fn same_outcome(told: &Value, now: &Value) -> bool {
    if told["type"] == "purchase" && now["type"] == "purchase" {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("refunded_cents");
                o.remove("reversed_points");
            }
            v
        };
        return strip(told) == strip(now);
    }
    told == now
}

/// Resends every command of `sent` (concurrently, `wait_ms=5000`, on `gateways` in turn,
/// retrying transport errors, 5xx and 202 until `timeout`), compares each answer with the one
/// told, and returns the final answer of each (in the order of `sent`; `None`: no answer).
pub async fn resend(
    traffic: &Traffic,
    gateways: &[String],
    sent: &[Sent],
    timeout: Duration,
) -> (Vec<Option<Answer>>, ResendReport) {
    let http = http_client();
    let deadline = Instant::now() + timeout;
    let finals: Vec<Option<Answer>> = stream::iter(sent.iter().enumerate())
        .map(|(i, s)| {
            let http = http.clone();
            let key = traffic.stores[s.store].clone();
            async move {
                let mut g = i % gateways.len();
                let mut last = None;
                loop {
                    let url = format!("{}{}?wait_ms=5000", gateways[g], s.path);
                    match post(&http, &url, &key, &s.body).await {
                        Ok((status, v)) => match classify(status, &v) {
                            Some(Answer::Accepted) => last = Some(Answer::Accepted),
                            Some(a) => return Some(a),
                            None => {}
                        },
                        Err(_) => g = (g + 1) % gateways.len(),
                    }
                    if Instant::now() >= deadline {
                        return last;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
        .buffered(32)
        .collect()
        .await;
    let mut r = ResendReport {
        resent: sent.len(),
        ..ResendReport::default()
    };
    for (s, now) in sent.iter().zip(&finals) {
        let id = &s.event_id;
        match (&s.answer, now) {
            (_, None) | (_, Some(Answer::Accepted)) => r.differences.add(
                "never applied",
                format!("{id} ({}): no outcome on resend", s.kind.name()),
            ),
            (
                Some(Answer::Applied { outcome: told, .. }),
                Some(Answer::Applied { outcome, replayed }),
            ) => {
                if !same_outcome(told, outcome) {
                    r.differences.add(
                        "outcome changed",
                        format!("{id}: told {told}, now {outcome}"),
                    );
                } else if !replayed {
                    r.differences
                        .add("applied twice", format!("{id}: resend applied it again"));
                } else {
                    r.acked_replayed += 1;
                }
            }
            (Some(Answer::Accepted), Some(Answer::Applied { replayed, .. })) => {
                if *replayed {
                    r.acked_replayed += 1;
                } else {
                    r.differences.add(
                        "lost",
                        format!("{id}: acknowledged 202, but applied only by its resend"),
                    );
                }
            }
            (Some(Answer::Accepted), Some(Answer::Rejected { .. })) => {
                // A 202 promises no effect; the rule decided (e.g. not enough points).
                r.acked_replayed += 1;
                r.accepted_then_refused += 1;
            }
            (Some(Answer::Applied { outcome, .. }), Some(Answer::Rejected { status, code })) => {
                r.differences.add(
                    "outcome changed",
                    format!("{id}: told {outcome}, now {status} {code}"),
                )
            }
            (Some(Answer::Rejected { status, code }), Some(a)) => {
                if let Answer::Rejected {
                    status: s2,
                    code: c2,
                } = a
                {
                    if (status, code) == (s2, c2) {
                        r.rejected_same += 1;
                        continue;
                    }
                }
                r.differences.add(
                    "outcome changed",
                    format!("{id}: told {status} {code}, now {a:?}"),
                );
            }
            (None, Some(Answer::Applied { replayed: true, .. })) => {
                r.unanswered_applied_before += 1
            }
            (None, Some(Answer::Applied { .. })) => r.unanswered_applied_now += 1,
            (None, Some(Answer::Rejected { .. })) => r.unanswered_rejected += 1,
        }
    }
    (finals, r)
}

/// The effect of a command on its member's ledger and counters, from its outcome.
#[derive(Clone, Debug, Default)]
struct Expected {
    /// Event id → points of its one ledger entry.
    entries: HashMap<String, i64>,
    visits: u64,
    spend: i64,
    applied: usize,
}

/// What [`check_members`] found.
#[derive(Clone, Debug, Default)]
pub struct MembersReport {
    pub members: usize,
    pub ledger_entries: usize,
    /// Applied commands whose entry is in the ledger exactly once, with the right points.
    pub applied_once: usize,
    /// Applied commands that move no points (a refund whose points were all forgiven).
    pub applied_without_entry: usize,
    pub balances_ok: usize,
    /// Members whose Redis status equals the store's member.
    pub redis_ok: usize,
    /// Whether the store was read directly (else through the ledger and the model).
    pub store_direct: bool,
    pub differences: Differences,
}

/// What is read of one member: its ledger (newest first), its state in the store (when read
/// directly) and its status in Redis.
type MemberViews = (
    Vec<Value>,
    Option<loyalty_domain::MemberState>,
    Option<Value>,
);

/// A member's ledger, every page, newest first, through the HQ API.
pub async fn ledger(
    http: &reqwest::Client,
    gateway: &str,
    hq_key: &str,
    member: &str,
) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut url = format!("{gateway}/v1/members/{member}/ledger?limit=500");
        if let Some(b) = before {
            url.push_str(&format!("&before={b}"));
        }
        let r = http.get(&url).bearer_auth(hq_key).send().await?;
        anyhow::ensure!(r.status() == 200, "ledger of {member}: {}", r.status());
        let v: Value = r.json().await?;
        out.extend(v["entries"].as_array().cloned().unwrap_or_default());
        match v["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => return Ok(out),
        }
    }
}

/// Checks every member against the outcomes of every command sent so far (`sent`, with
/// `finals` the answers of their resends): the ledger, the balance, the store and Redis.
pub async fn check_members(
    traffic: &Traffic,
    gateway: &str,
    sent: &[Sent],
    finals: &[Option<Answer>],
    store: Option<&Arc<dyn StateStore>>,
    redis: &Arc<dyn HotCache>,
) -> anyhow::Result<MembersReport> {
    let mut expected: Vec<Expected> = vec![Expected::default(); traffic.members.len()];
    for (i, m) in traffic.members.iter().enumerate() {
        expected[i].entries.insert(format!("enrol.{m}"), 50);
    }
    let mut without_entry = 0;
    for (s, a) in sent.iter().zip(finals) {
        let Some(Answer::Applied { outcome, .. }) = a else {
            continue;
        };
        let e = &mut expected[s.member];
        e.applied += 1;
        let int = |k: &str| outcome[k].as_i64().unwrap_or(0);
        match &s.kind {
            Kind::Purchase { cents } => {
                e.entries.insert(s.event_id.clone(), int("points_earned"));
                e.visits += 1;
                e.spend += cents;
            }
            Kind::Refund { cents, .. } => {
                let reversed = int("points_reversed");
                if reversed > 0 {
                    e.entries.insert(s.event_id.clone(), -reversed);
                } else {
                    without_entry += 1;
                }
                e.spend -= cents;
            }
            Kind::Redemption { .. } => {
                e.entries.insert(s.event_id.clone(), -int("points_spent"));
            }
        }
    }
    let http = http_client();
    let mut report = MembersReport {
        members: traffic.members.len(),
        store_direct: store.is_some(),
        applied_without_entry: without_entry,
        ..MembersReport::default()
    };
    let results: Vec<anyhow::Result<MemberViews>> = stream::iter(traffic.members.iter())
        .map(|m| {
            let http = http.clone();
            async move {
                let entries = ledger(&http, gateway, &traffic.hq_key, m).await?;
                let id = MemberId::parse(m).map_err(|e| anyhow::anyhow!("{m}: {e}"))?;
                let state = match store {
                    Some(s) => s.member(&id).await?,
                    None => None,
                };
                let cached = redis
                    .status(&id)
                    .await?
                    .map(|c| serde_json::from_slice::<Value>(&c.json))
                    .transpose()?;
                Ok((entries, state, cached))
            }
        })
        .buffered(16)
        .collect()
        .await;
    for (i, r) in results.into_iter().enumerate() {
        let (entries, state, cached) = r?;
        let m = &traffic.members[i];
        let e = &expected[i];
        let d = &mut report.differences;
        report.ledger_entries += entries.len();
        // Each entry names one applied command, once, with its outcome's points.
        let mut seen: HashSet<&str> = HashSet::new();
        let mut sum = 0i64;
        for entry in &entries {
            let id = entry["event_id"].as_str().unwrap_or("");
            let points = entry["points"].as_i64().unwrap_or(0);
            sum += points;
            // A tier move is an entry of its own (0 points) naming the command that caused it
            // (README "Tiers"): not a second application of that command.
            if entry["kind"] == "tier" {
                if points != 0 {
                    d.add(
                        "wrong points",
                        format!("member {m}: tier entry of {id} moves {points}"),
                    );
                }
                continue;
            }
            if !seen.insert(id) {
                d.add(
                    "applied twice",
                    format!("member {m}: {id} twice in the ledger"),
                );
                continue;
            }
            match e.entries.get(id) {
                None => d.add(
                    "unexpected entry",
                    format!("member {m}: {id} ({points} points) is no applied command's"),
                ),
                Some(p) if *p != points => d.add(
                    "wrong points",
                    format!("member {m}: {id} has {points} points, its outcome says {p}"),
                ),
                Some(_) => report.applied_once += 1,
            }
        }
        for id in e.entries.keys() {
            if !seen.contains(id.as_str()) {
                d.add(
                    "missing entry",
                    format!("member {m}: no ledger entry for {id}"),
                );
            }
        }
        // Newest first: the first entry's balance is the member's.
        let newest = entries
            .first()
            .and_then(|x| x["balance_after"].as_i64())
            .unwrap_or(0);
        let balance = state.as_ref().map_or(newest, |s| s.points as i64);
        if balance == sum && newest == sum {
            report.balances_ok += 1;
        } else {
            d.add(
                "balance is not the ledger's sum",
                format!(
                    "member {m}: balance {balance} (newest entry {newest}), ledger sums to {sum}"
                ),
            );
        }
        let (visits, spend, version) = match &state {
            Some(s) => (
                s.visits as i64,
                s.spend_cents as i64,
                Some(s.version as i64),
            ),
            None => match &cached {
                Some(c) => (
                    c["visits"].as_i64().unwrap_or(-1),
                    c["spend_cents"].as_i64().unwrap_or(-1),
                    None,
                ),
                None => (-1, -1, None),
            },
        };
        if (visits, spend) != (e.visits as i64, e.spend) {
            d.add(
                "store differs from the outcomes",
                format!(
                    "member {m}: visits {visits}, spend {spend}; outcomes add up to {} and {}",
                    e.visits, e.spend
                ),
            );
        }
        match &cached {
            None => d.add(
                "Redis differs from the store",
                format!("member {m}: no status in Redis"),
            ),
            Some(c) => {
                let same = c["points"].as_i64() == Some(balance)
                    && c["visits"].as_i64() == Some(visits)
                    && c["spend_cents"].as_i64() == Some(spend)
                    && version.is_none_or(|v| c["version"].as_i64() == Some(v));
                if same {
                    report.redis_ok += 1;
                } else {
                    d.add(
                        "Redis differs from the store",
                        format!(
                            "member {m}: Redis points {} visits {} spend {} version {}; store \
                             points {balance} visits {visits} spend {spend} version {version:?}",
                            c["points"], c["visits"], c["spend_cents"], c["version"]
                        ),
                    );
                }
            }
        }
    }
    Ok(report)
}

/// Lag of a consumer group on one partition.
#[derive(Clone, Copy, Debug)]
pub struct PartitionLag {
    pub partition: u32,
    pub committed: Option<u64>,
    pub end: u64,
}

impl PartitionLag {
    pub fn lag(&self) -> u64 {
        self.end.saturating_sub(self.committed.unwrap_or(0))
    }
}

/// The group's committed offset and the end offset of every partition of `topic`, from the
/// broker (an `OffsetFetch` and a `ListOffsets`: no member joins the group).
pub async fn consumer_lag(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: u32,
) -> anyhow::Result<Vec<PartitionLag>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let (brokers, group, topic) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p as i32);
        }
        let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
        let mut out = Vec::new();
        for p in 0..partitions {
            let committed =
                committed
                    .find_partition(&topic, p as i32)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(n) if n >= 0 => Some(n as u64),
                        _ => None,
                    });
            let (_, high) = c.fetch_watermarks(&topic, p as i32, Duration::from_secs(10))?;
            out.push(PartitionLag {
                partition: p,
                committed,
                end: high.max(0) as u64,
            });
        }
        Ok(out)
    })
    .await?
}

/// Polls [`consumer_lag`] until every partition's lag is 0 or `timeout` passes; returns the
/// last reading and how long it took.
pub async fn wait_lag_zero(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: u32,
    timeout: Duration,
) -> (anyhow::Result<Vec<PartitionLag>>, Duration) {
    let start = Instant::now();
    loop {
        let r = consumer_lag(brokers, group, topic, partitions).await;
        let done = r.as_ref().is_ok_and(|l| l.iter().all(|p| p.lag() == 0));
        if done || start.elapsed() >= timeout {
            return (r, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Counts of one phase's stream.
#[derive(Clone, Debug, Default)]
pub struct StreamCounts {
    pub sent: usize,
    pub applied_200: usize,
    pub accepted_202: usize,
    pub rejected: BTreeMap<String, usize>,
    pub unanswered: usize,
    pub retried: usize,
    pub switched: usize,
    pub by_kind: BTreeMap<&'static str, usize>,
}

impl StreamCounts {
    pub fn of<'a>(sent: impl IntoIterator<Item = &'a Sent>) -> StreamCounts {
        let mut c = StreamCounts::default();
        for s in sent {
            c.sent += 1;
            *c.by_kind.entry(s.kind.name()).or_default() += 1;
            if s.attempts > 1 {
                c.retried += 1;
            }
            if s.switches > 0 {
                c.switched += 1;
            }
            match &s.answer {
                Some(Answer::Applied { .. }) => c.applied_200 += 1,
                Some(Answer::Accepted) => c.accepted_202 += 1,
                Some(Answer::Rejected { status, code }) => {
                    *c.rejected.entry(format!("{status} {code}")).or_default() += 1
                }
                None => c.unanswered += 1,
            }
        }
        c
    }

    pub fn acked(&self) -> usize {
        self.applied_200 + self.accepted_202
    }
}

/// One phase's report, printed as it ends.
#[derive(Clone, Debug, Default)]
pub struct PhaseReport {
    pub name: String,
    pub fault: String,
    pub stream: StreamCounts,
    pub resend: ResendReport,
    pub members: MembersReport,
    pub lag: Vec<PartitionLag>,
    pub lag_error: Option<String>,
    pub lag_wait: Duration,
    /// Deliveries of already applied events counted by the engines during the phase (their
    /// `loyalty_events_replayed_total`), and what the phase allows.
    pub engine_replays: f64,
    pub engine_applied: f64,
    pub replays_allowed: bool,
    /// Extra differences found by the scenario (e.g. replays where none may be).
    pub other: Differences,
    /// What the phase saw that is not a difference of ours (e.g. the broker handing a
    /// partition to two engines at once, see [`crate::ownership`]).
    pub notes: Vec<String>,
    pub duration: Duration,
    /// From the end of the fault until every partition applied again, when measured.
    pub recovery: Option<Duration>,
}

fn count(d: &Differences, what: &str) -> usize {
    d.count.get(what).copied().unwrap_or(0)
}

impl PhaseReport {
    pub fn differences(&self) -> usize {
        self.resend.differences.total() + self.members.differences.total() + self.other.total()
    }

    /// Acknowledged commands missing from their member's ledger, applied only by their resend,
    /// or whose resend no longer answers what the client was told (always 0).
    pub fn lost(&self) -> usize {
        count(&self.members.differences, "missing entry")
            + count(&self.resend.differences, "lost")
            + count(&self.resend.differences, "outcome changed")
    }

    /// Commands applied more than once (always 0).
    pub fn doubled(&self) -> usize {
        count(&self.members.differences, "applied twice")
            + count(&self.resend.differences, "applied twice")
    }

    pub fn text(&self) -> String {
        let s = &self.stream;
        let mut t = String::new();
        let _ = writeln!(t, "== {} ({:.1} s)", self.name, self.duration.as_secs_f64());
        let _ = writeln!(t, "   fault: {}", self.fault);
        let kinds: Vec<String> = s.by_kind.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let rejected: Vec<String> = s
            .rejected
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            t,
            "   sent {} ({}); acknowledged {} (200: {}, 202: {}); rejected {} ({}); unanswered {}; \
             retried {} (on the other gateway: {})",
            s.sent,
            kinds.join(", "),
            s.acked(),
            s.applied_200,
            s.accepted_202,
            s.rejected.values().sum::<usize>(),
            if rejected.is_empty() { "none".into() } else { rejected.join(", ") },
            s.unanswered,
            s.retried,
            s.switched
        );
        let r = &self.resend;
        let _ = writeln!(
            t,
            "   resent {}: acknowledged answered as replays with the outcome told {}/{}, \
             rejections unchanged {}/{}; unanswered then applied before {}, applied now {}, \
             rejected {}",
            r.resent,
            r.acked_replayed,
            s.acked(),
            r.rejected_same,
            s.rejected.values().sum::<usize>(),
            r.unanswered_applied_before,
            r.unanswered_applied_now,
            r.unanswered_rejected
        );
        let m = &self.members;
        let _ =
            writeln!(
            t,
            "   ledger (all phases so far): {} members, {} entries, applied commands once with \
             their points {} (+{} refunds with every point forgiven: no entry); balance = sum of \
             ledger {}/{}; Redis = store {}/{} (store read {})",
            m.members,
            m.ledger_entries,
            m.applied_once,
            m.applied_without_entry,
            m.balances_ok,
            m.members,
            m.redis_ok,
            m.members,
            if m.store_direct { "directly" } else { "through the ledger" }
        );
        let lag: u64 = self.lag.iter().map(|p| p.lag()).sum();
        let end: u64 = self.lag.iter().map(|p| p.end).sum();
        match &self.lag_error {
            Some(e) => {
                let _ = writeln!(t, "   consumer lag: not read ({e})");
            }
            None => {
                let _ = writeln!(
                    t,
                    "   consumer lag: {lag} over {} partitions (end offsets sum to {end}), after \
                     {:.1} s",
                    self.lag.len(),
                    self.lag_wait.as_secs_f64()
                );
            }
        }
        let _ = writeln!(
            t,
            "   engines: {} events applied, {} deliveries of already applied events{}",
            self.engine_applied,
            self.engine_replays,
            if self.replays_allowed {
                ""
            } else {
                " (must be 0)"
            }
        );
        for note in &self.notes {
            let _ = writeln!(t, "   note: {note}");
        }
        let mut all = self.resend.differences.clone();
        all.extend(self.members.differences.clone());
        all.extend(self.other.clone());
        let _ = writeln!(t, "   differences: {}", all.summary());
        for e in &all.examples {
            let _ = writeln!(t, "     - {e}");
        }
        t
    }
}
