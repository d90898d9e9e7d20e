//! The load itself: an open model (arrivals at fixed intervals from the start, latency measured
//! from the scheduled time) or a closed model (N users, each waiting for its answer), the
//! checkout operations, and what the generator expects each member's balance to become.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail};
use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::api::{encode_query, Answer, Api};
use crate::model::{Mix, Op, Zipf};
use crate::setup::State;

/// How load is offered.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "model", rename_all = "lowercase")]
pub enum LoadModel {
    /// `rate` requests per second at fixed intervals from the start, whatever the answers
    /// take; at most `max_in_flight` outstanding, the others are dropped (and counted).
    Open { rate: f64, max_in_flight: usize },
    /// `users` simulated tills, each sending its next request when the previous is answered.
    Closed { users: usize },
}

/// Settings of `run`.
#[derive(Debug, Clone, Serialize)]
pub struct RunOptions {
    pub model: LoadModel,
    /// Linear ramp from 0 to the full rate (open) or user count (closed); not measured.
    #[serde(serialize_with = "ser_secs")]
    pub ramp_up: Duration,
    /// The measured steady state, after the ramp-up.
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
    #[serde(serialize_with = "ser_display")]
    pub mix: Mix,
    /// Percentage of purchases that name no member (anonymous sales).
    pub anonymous_pct: f64,
    /// Zipf exponent of member popularity (0: uniform).
    pub zipf_s: f64,
    /// `wait_ms` of purchases (0 to 5000).
    pub wait_ms: u32,
    /// Percentage of purchases sent without `wait_ms` (answered 202 once durable in the
    /// log, like a POS that does not print the balance); the check resolves them by resending.
    pub no_wait_pct: f64,
    pub seed: u64,
    #[serde(skip)]
    pub progress: bool,
    /// How long the end-of-run check may resend requests whose outcome is unknown.
    #[serde(serialize_with = "ser_secs")]
    pub resolve_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            model: LoadModel::Open {
                rate: 500.0,
                max_in_flight: 1000,
            },
            ramp_up: Duration::ZERO,
            duration: Duration::from_secs(30),
            mix: Mix::default(),
            anonymous_pct: 10.0,
            zipf_s: 1.0,
            wait_ms: 2000,
            no_wait_pct: 0.0,
            seed: 42,
            progress: true,
            resolve_timeout: Duration::from_secs(60),
        }
    }
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn ser_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// What one operation did over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpResult {
    /// Requests sent.
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Of which 202 (deadline passed; resolved by the check).
    pub accepted_202: u64,
    /// Answers the model expects (e.g. `409 insufficient-points` for a redemption).
    pub expected_rejections: BTreeMap<String, u64>,
    /// Everything else, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Requests answered during the steady state (the throughput's numerator).
    pub steady_answered: u64,
    /// Latency of the answers in the steady state, in microseconds.
    #[serde(skip)]
    pub latency: Option<Histogram<u64>>,
}

/// The raw result of a run, before the correctness check.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub ops: BTreeMap<Op, OpResult>,
    /// Open model: arrivals not sent because `max_in_flight` were outstanding.
    pub dropped: u64,
    /// Requests still outstanding when the run gave up waiting for them.
    pub abandoned: u64,
    pub steady_secs: f64,
    pub total_secs: f64,
    /// Purchases answered 200 whose `points_earned` differed from the generator's.
    pub earn_mismatches: u64,
}

/// How the member named by a purchase is identified.
#[derive(Debug, Clone, Copy)]
enum By {
    Id,
    Phone,
    Qr,
}

#[derive(Debug)]
enum Plan {
    IdentifyPhone(usize),
    IdentifyQr(usize),
    Status(usize),
    Purchase {
        event_id: String,
        store: usize,
        member: Option<(usize, By)>,
        amount: i64,
        wait_ms: u32,
    },
    Redeem {
        event_id: String,
        store: usize,
        member: usize,
        reward: usize,
    },
    Enrol {
        store: usize,
        phone: String,
    },
}

impl Plan {
    fn op(&self) -> Op {
        match self {
            Plan::IdentifyPhone(_) | Plan::IdentifyQr(_) => Op::Identify,
            Plan::Status(_) => Op::Status,
            Plan::Purchase { .. } => Op::Purchase,
            Plan::Redeem { .. } => Op::Redeem,
            Plan::Enrol { .. } => Op::Enrol,
        }
    }
}

/// A request whose outcome is not known yet (202, 5xx or transport error): the check resends
/// it, with the same event id and body, until it is answered.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub kind: PendingKind,
    pub path: &'static str,
    pub store: usize,
    pub body: Value,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum PendingKind {
    Purchase { member: usize, amount: i64 },
    Redeem { member: usize },
    Enrol,
}

struct OpStats {
    hist: Mutex<Histogram<u64>>,
    sent: AtomicU64,
    ok: AtomicU64,
    accepted: AtomicU64,
    steady: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    rejections: Mutex<BTreeMap<String, u64>>,
}

fn new_hist() -> Histogram<u64> {
    // 1 µs to 1 h, 3 significant digits; `saturating_record` clamps outliers.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything the tasks of a run share.
pub(crate) struct Shared {
    pub api: Api,
    pub state: State,
    pub wait_ms: u32,
    no_wait_pct: f64,
    mix: Mix,
    anonymous_pct: f64,
    zipf: Zipf,
    run_tag: String,
    phone_nonce: u32,
    seq: AtomicU64,
    ops: Vec<OpStats>,
    window: Mutex<Histogram<u64>>,
    answered: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    pub earn_mismatches: AtomicU64,
    /// Points the generator expects each setup member to have gained (or lost) in this run.
    pub delta: Vec<AtomicI64>,
    /// Members named by a purchase or redemption in this run.
    pub touched: Vec<AtomicBool>,
    pub pending: Mutex<Vec<Pending>>,
    /// Members created by the run's enrolments (expected: the signup bonus).
    pub enrolled: Mutex<Vec<String>>,
}

impl Shared {
    pub(crate) fn new(api: Api, state: State, opts: &RunOptions) -> anyhow::Result<Self> {
        let n = state.members.len();
        if n == 0 {
            bail!("no member: run `setup` first");
        }
        if state.stores.is_empty() {
            bail!("no store: run `setup` first");
        }
        if opts.wait_ms > 5000 {
            bail!("--wait-ms must be at most 5000");
        }
        if !(0.0..=100.0).contains(&opts.anonymous_pct) {
            bail!("--anonymous-pct must be between 0 and 100");
        }
        if !(0.0..=100.0).contains(&opts.no_wait_pct) {
            bail!("--no-wait-pct must be between 0 and 100");
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let nonce = now.as_nanos() as u64 ^ opts.seed.rotate_left(17);
        Ok(Shared {
            api,
            wait_ms: opts.wait_ms,
            no_wait_pct: opts.no_wait_pct,
            mix: opts.mix.clone(),
            anonymous_pct: opts.anonymous_pct,
            zipf: Zipf::new(n, opts.zipf_s)?,
            run_tag: format!("lt{:x}", nonce & 0xffff_ffff_ffff),
            phone_nonce: (nonce % 100_000) as u32,
            seq: AtomicU64::new(0),
            ops: Op::ALL
                .iter()
                .map(|_| OpStats {
                    hist: Mutex::new(new_hist()),
                    sent: AtomicU64::new(0),
                    ok: AtomicU64::new(0),
                    accepted: AtomicU64::new(0),
                    steady: AtomicU64::new(0),
                    errors: Mutex::new(BTreeMap::new()),
                    rejections: Mutex::new(BTreeMap::new()),
                })
                .collect(),
            window: Mutex::new(new_hist()),
            answered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            earn_mismatches: AtomicU64::new(0),
            delta: (0..n).map(|_| AtomicI64::new(0)).collect(),
            touched: (0..n).map(|_| AtomicBool::new(false)).collect(),
            pending: Mutex::new(Vec::new()),
            enrolled: Mutex::new(Vec::new()),
            state,
        })
    }

    /// The points a purchase of `amount` cents earns: every tier has multiplier 100, so
    /// `floor(amount × points_per_unit × 100 / 10000)`.
    pub(crate) fn expected_earn(&self, amount: i64) -> i64 {
        amount * self.state.points_per_unit * 100 / 10_000
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn plan<R: Rng>(&self, rng: &mut R) -> Plan {
        let stores = self.state.stores.len();
        let store = rng.random_range(0..stores);
        match self.mix.sample(rng) {
            Op::Identify => {
                let m = self.zipf.sample(rng);
                if rng.random_bool(0.5) {
                    Plan::IdentifyPhone(m)
                } else {
                    Plan::IdentifyQr(m)
                }
            }
            Op::Status => Plan::Status(self.zipf.sample(rng)),
            Op::Purchase => {
                let member = if rng.random_range(0.0..100.0) < self.anonymous_pct {
                    None
                } else {
                    let m = self.zipf.sample(rng);
                    self.touched[m].store(true, Ordering::Relaxed);
                    let by = match rng.random_range(0..10) {
                        0..=5 => By::Id,
                        6 | 7 => By::Phone,
                        _ => By::Qr,
                    };
                    Some((m, by))
                };
                Plan::Purchase {
                    event_id: format!("{}-p{}", self.run_tag, self.next_seq()),
                    store,
                    member,
                    amount: rng.random_range(50..=8000),
                    wait_ms: if rng.random_range(0.0..100.0) < self.no_wait_pct {
                        0
                    } else {
                        self.wait_ms
                    },
                }
            }
            Op::Redeem => {
                let m = self.zipf.sample(rng);
                self.touched[m].store(true, Ordering::Relaxed);
                Plan::Redeem {
                    event_id: format!("{}-r{}", self.run_tag, self.next_seq()),
                    store,
                    member: m,
                    reward: rng.random_range(0..self.state.rewards.len().max(1)),
                }
            }
            Op::Enrol => Plan::Enrol {
                store,
                phone: format!(
                    "+37{:05}{:07}",
                    self.phone_nonce,
                    self.next_seq() % 10_000_000
                ),
            },
        }
    }

    fn key(&self, store: usize) -> &str {
        &self.state.stores[store % self.state.stores.len()].api_key
    }

    /// Sends `plan`; `origin` is when it was due (open model) or sent (closed model).
    async fn execute(&self, plan: Plan, origin: Instant, steady: bool) {
        let op = plan.op();
        self.ops[op.index()].sent.fetch_add(1, Ordering::Relaxed);
        let members = &self.state.members;
        let (answer, pending) = match plan {
            Plan::IdentifyPhone(m) => {
                let path = format!(
                    "/v1/members/lookup?phone={}",
                    encode_query(&members[m].phone)
                );
                (self.api.get(&path, self.key(0)).await, None)
            }
            Plan::IdentifyQr(m) => {
                let path = format!("/v1/members/lookup?qr={}", encode_query(&members[m].qr));
                (self.api.get(&path, self.key(1)).await, None)
            }
            Plan::Status(m) => {
                let path = format!("/v1/members/{}", members[m].id);
                (self.api.get(&path, self.key(2)).await, None)
            }
            Plan::Purchase {
                event_id,
                store,
                member,
                amount,
                wait_ms,
            } => {
                let mut body = json!({
                    "event_id": event_id,
                    "amount_cents": amount,
                    "currency": self.state.currency,
                });
                if let Some((m, by)) = member {
                    let (field, value) = match by {
                        By::Id => ("member_id", &members[m].id),
                        By::Phone => ("phone", &members[m].phone),
                        By::Qr => ("qr", &members[m].qr),
                    };
                    body[field] = json!(value);
                }
                let path = format!("/v1/purchases?wait_ms={wait_ms}");
                let a = self.api.post(&path, self.key(store), &body).await;
                let pending = member.map(|(m, _)| Pending {
                    kind: PendingKind::Purchase { member: m, amount },
                    path: "/v1/purchases",
                    store,
                    body,
                });
                (a, pending)
            }
            Plan::Redeem {
                event_id,
                store,
                member,
                reward,
            } => {
                let reward_id = self
                    .state
                    .rewards
                    .get(reward)
                    .map(|r| r.id.as_str())
                    .unwrap_or("free-coffee");
                let body = json!({
                    "event_id": event_id,
                    "member_id": members[member].id,
                    "reward_id": reward_id,
                });
                let a = self
                    .api
                    .post("/v1/redemptions", self.key(store), &body)
                    .await;
                let pending = Pending {
                    kind: PendingKind::Redeem { member },
                    path: "/v1/redemptions",
                    store,
                    body,
                };
                (a, Some(pending))
            }
            Plan::Enrol { store, phone } => {
                let body = json!({ "phone": phone });
                let a = self.api.post("/v1/members", self.key(store), &body).await;
                let pending = Pending {
                    kind: PendingKind::Enrol,
                    path: "/v1/members",
                    store,
                    body,
                };
                (a, Some(pending))
            }
        };
        let latency = origin.elapsed();
        self.account(op, &answer, pending, latency, steady);
    }

    /// Counts `answer` and applies what it says to the expected balances.
    fn account(
        &self,
        op: Op,
        answer: &Answer,
        pending: Option<Pending>,
        latency: Duration,
        steady: bool,
    ) {
        let stats = &self.ops[op.index()];
        self.answered.fetch_add(1, Ordering::Relaxed);
        if answer.status().is_some() {
            let us = latency.as_micros().max(1) as u64;
            lock(&self.window).saturating_record(us);
            if steady {
                lock(&stats.hist).saturating_record(us);
            }
        }
        if steady {
            stats.steady.fetch_add(1, Ordering::Relaxed);
        }
        match self.settle(op, answer, pending) {
            Settled::Ok => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
            }
            Settled::Accepted => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                stats.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Settled::Rejected => {
                *lock(&stats.rejections).entry(answer.kind()).or_default() += 1;
            }
            Settled::Error => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                *lock(&stats.errors).entry(answer.kind()).or_default() += 1;
            }
        }
    }

    /// What `answer` means for the expected balances; a request whose outcome is unknown is
    /// queued for the check.
    pub(crate) fn settle(&self, op: Op, answer: &Answer, pending: Option<Pending>) -> Settled {
        let status = answer.status();
        let unknown = matches!(status, None | Some(202) | Some(500..));
        if unknown {
            if let Some(p) = pending {
                lock(&self.pending).push(p);
            }
            return if status == Some(202) {
                Settled::Accepted
            } else {
                Settled::Error
            };
        }
        let Some(status) = status else {
            return Settled::Error;
        };
        match (op, status) {
            (Op::Identify | Op::Status, 200) => Settled::Ok,
            (Op::Purchase, 200) => {
                if let Some(Pending {
                    kind: PendingKind::Purchase { member, amount },
                    ..
                }) = pending
                {
                    let expected = self.expected_earn(amount);
                    let outcome = answer.body().get("outcome");
                    let earned = outcome
                        .and_then(|o| o.get("points_earned"))
                        .and_then(Value::as_i64);
                    if earned != Some(expected) {
                        self.earn_mismatches.fetch_add(1, Ordering::Relaxed);
                    }
                    self.delta[member].fetch_add(expected, Ordering::Relaxed);
                }
                Settled::Ok
            }
            (Op::Redeem, 200) => {
                if let Some(p) = pending {
                    if let PendingKind::Redeem { member } = p.kind {
                        let spent = answer
                            .body()
                            .get("outcome")
                            .and_then(|o| o.get("points_spent"))
                            .and_then(Value::as_i64);
                        match spent {
                            Some(spent) => {
                                self.delta[member].fetch_sub(spent, Ordering::Relaxed);
                            }
                            None => {
                                // The effect is unknown: the check resends it (a replay
                                // answers the original outcome).
                                lock(&self.pending).push(p);
                                return Settled::Error;
                            }
                        }
                    }
                }
                Settled::Ok
            }
            (Op::Redeem, 409) if answer.problem_code() == Some("insufficient-points") => {
                Settled::Rejected
            }
            (Op::Enrol, 200 | 201) => {
                if status == 201 {
                    if let Some(id) = answer.str_field("member_id") {
                        lock(&self.enrolled).push(id.to_owned());
                    }
                }
                Settled::Ok
            }
            _ => Settled::Error,
        }
    }

    fn snapshot(&self) -> BTreeMap<Op, OpResult> {
        Op::ALL
            .iter()
            .map(|&op| {
                let s = &self.ops[op.index()];
                (
                    op,
                    OpResult {
                        sent: s.sent.load(Ordering::Relaxed),
                        ok: s.ok.load(Ordering::Relaxed),
                        accepted_202: s.accepted.load(Ordering::Relaxed),
                        expected_rejections: lock(&s.rejections).clone(),
                        errors: lock(&s.errors).clone(),
                        steady_answered: s.steady.load(Ordering::Relaxed),
                        latency: Some(lock(&s.hist).clone()),
                    },
                )
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    Ok,
    Accepted,
    Rejected,
    Error,
}

/// When the `i`-th arrival is due, in seconds from the start, for a rate that grows linearly
/// from 0 to `rate` over `ramp` seconds and then stays at `rate`.
pub fn arrival_offset(i: u64, rate: f64, ramp: f64) -> f64 {
    let i = i as f64;
    let ramp_arrivals = rate * ramp / 2.0;
    if ramp > 0.0 && i < ramp_arrivals {
        (2.0 * ramp * i / rate).sqrt()
    } else {
        ramp + (i - ramp_arrivals) / rate
    }
}

/// Reads every setup member's current points (the baseline the expected deltas add to).
pub(crate) async fn read_baseline(shared: &Shared) -> anyhow::Result<Vec<i64>> {
    let key = shared.key(0).to_owned();
    let results: Vec<anyhow::Result<i64>> = stream::iter(shared.state.members.iter())
        .map(|m| {
            let key = key.clone();
            async move { read_points(&shared.api, &key, &m.id).await }
        })
        .buffered(64)
        .collect()
        .await;
    results.into_iter().collect()
}

/// A member's points, retrying transport errors and 5xx for a while.
pub(crate) async fn read_points(api: &Api, key: &str, member_id: &str) -> anyhow::Result<i64> {
    let mut last = String::new();
    for attempt in 0..10u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        }
        let a = api.get(&format!("/v1/members/{member_id}"), key).await;
        match a.status() {
            Some(200) => {
                return a
                    .body()
                    .get("points")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| anyhow!("status of {member_id} without points"))
            }
            None | Some(500..) => last = a.kind(),
            Some(_) => bail!("status of {member_id} answered {}", a.kind()),
        }
    }
    bail!("status of {member_id}: still {last} after 10 attempts")
}

/// Runs the load; the expected balances and pending requests stay in `shared` for the check.
pub(crate) async fn drive(shared: Arc<Shared>, opts: &RunOptions) -> anyhow::Result<RunResult> {
    let ramp = opts.ramp_up.as_secs_f64();
    let total = ramp + opts.duration.as_secs_f64();
    if opts.duration.is_zero() {
        bail!("--duration must be positive");
    }
    let pb = if opts.progress {
        let pb = ProgressBar::new((total * 10.0).ceil() as u64);
        pb.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:20}] {percent:>3}% {msg}")
                .map_err(|e| anyhow!("progress template: {e}"))?
                .progress_chars("=> "),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let steady_from = start + opts.ramp_up;
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (shared, pb, done) = (shared.clone(), pb.clone(), done.clone());
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = Instant::now();
                let answered = shared.answered.load(Ordering::Relaxed);
                let rate = (answered - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-9);
                last = (now, answered);
                let p99 = {
                    let mut w = lock(&shared.window);
                    let p = w.value_at_quantile(0.99);
                    w.reset();
                    p
                };
                pb.set_position(((now - start).as_secs_f64() * 10.0) as u64);
                pb.set_message(format!(
                    "{rate:>6.0} req/s err {} drop {} p99 {:.1} ms",
                    shared.errors.load(Ordering::Relaxed),
                    shared.dropped.load(Ordering::Relaxed),
                    p99 as f64 / 1000.0
                ));
            }
        })
    };

    let mut abandoned = 0;
    match opts.model {
        LoadModel::Open {
            rate,
            max_in_flight,
        } => {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--rate must be positive");
            }
            let max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
            let sem = Arc::new(Semaphore::new(max_in_flight));
            let mut rng = SmallRng::seed_from_u64(opts.seed);
            let mut i = 0u64;
            loop {
                let t = arrival_offset(i, rate, ramp);
                if t >= total {
                    break;
                }
                i += 1;
                let due = start + Duration::from_secs_f64(t);
                if due > Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
                let plan = shared.plan(&mut rng);
                match sem.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = shared.clone();
                        let steady = due >= steady_from;
                        tokio::spawn(async move {
                            shared.execute(plan, due, steady).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // Wait for the outstanding requests (each is bounded by the client's timeout).
            let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
            let drained =
                tokio::time::timeout(Duration::from_secs(30), sem.acquire_many(all)).await;
            if drained.is_err() {
                abandoned = (max_in_flight - sem.available_permits()) as u64;
            }
        }
        LoadModel::Closed { users } => {
            if users == 0 {
                bail!("--users must be at least 1");
            }
            let end = start + Duration::from_secs_f64(total);
            let mut handles = Vec::with_capacity(users);
            for u in 0..users {
                let shared = shared.clone();
                let begin = start + opts.ramp_up.mul_f64(u as f64 / users as f64);
                let seed = opts.seed.wrapping_add(u as u64);
                handles.push(tokio::spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(seed);
                    tokio::time::sleep_until(begin).await;
                    while Instant::now() < end {
                        let plan = shared.plan(&mut rng);
                        let t0 = Instant::now();
                        shared.execute(plan, t0, t0 >= steady_from).await;
                    }
                }));
            }
            for h in handles {
                if h.await.is_err() {
                    abandoned += 1;
                }
            }
        }
    }
    let total_secs = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    pb.finish_and_clear();
    Ok(RunResult {
        ops: shared.snapshot(),
        dropped: shared.dropped.load(Ordering::Relaxed),
        abandoned,
        steady_secs: opts.duration.as_secs_f64(),
        total_secs,
        earn_mismatches: shared.earn_mismatches.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_ramp_then_steady() {
        // No ramp: i / rate.
        assert_eq!(arrival_offset(0, 100.0, 0.0), 0.0);
        assert!((arrival_offset(50, 100.0, 0.0) - 0.5).abs() < 1e-12);
        // A 2 s ramp to 100/s holds 100 arrivals; then one every 10 ms.
        assert!((arrival_offset(100, 100.0, 2.0) - 2.0).abs() < 1e-9);
        assert!((arrival_offset(25, 100.0, 2.0) - 1.0).abs() < 1e-9);
        assert!((arrival_offset(110, 100.0, 2.0) - 2.1).abs() < 1e-9);
    }
}
