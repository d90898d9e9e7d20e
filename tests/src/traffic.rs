//! POS traffic against running gateways, recorded for the exactly-once checks of
//! [`crate::invariants`].
//!
//! Clients stream purchases (half of them waiting for the effect with `?wait_ms`), refunds of
//! purchases they were told were applied, and redemptions, each for the members it owns (so
//! one member's commands come from one client, in order), through its home gateway. Every
//! command gets a fresh event id; a transport error or a 5xx is retried with the same event id
//! and body, on the next gateway after a transport error (a dead gateway), until a deadline.
//! Every command is recorded with the first definitive answer it got ([`Answer`]): 200 with the
//! outcome told, 202, or a 4xx with its problem code.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What a command is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Purchase { cents: i64 },
    Refund { purchase: String, cents: i64 },
    Redemption { reward: String },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Purchase { .. } => "purchase",
            Kind::Refund { .. } => "refund",
            Kind::Redemption { .. } => "redemption",
        }
    }
}

/// A definitive answer to a command.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// 200: the outcome, and whether the gateway said it was a replay.
    Applied { outcome: Value, replayed: bool },
    /// 202: durable in the log, not applied within the deadline.
    Accepted,
    /// 4xx: the problem's status and code (a rule's rejection, e.g. `insufficient-points`).
    Rejected { status: u16, code: String },
}

impl Answer {
    pub fn is_ack(&self) -> bool {
        matches!(self, Answer::Applied { .. } | Answer::Accepted)
    }
}

/// One command sent by a client.
#[derive(Clone, Debug)]
pub struct Sent {
    pub event_id: String,
    /// Index of the member in [`Traffic::members`].
    pub member: usize,
    pub kind: Kind,
    /// `/v1/purchases`, `/v1/refunds` or `/v1/redemptions`.
    pub path: &'static str,
    /// The query string of the first attempt (`?wait_ms=…` or empty).
    pub query: &'static str,
    pub body: Value,
    /// Index of the store key it was sent with.
    pub store: usize,
    /// The phase of the scenario it was sent in.
    pub phase: usize,
    /// When it was first sent, from the start of the traffic.
    pub sent_at: Duration,
    /// Requests made (1 when the first one was answered).
    pub attempts: u32,
    /// Times it moved to another gateway after a transport error.
    pub switches: u32,
    /// The first definitive answer; `None` if none came before the client's deadline.
    pub answer: Option<Answer>,
}

/// What the clients send to.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// Base URLs of the gateways; client `c`'s home is `c % gateways.len()`.
    pub gateways: Vec<String>,
    /// Store keys; client `c` uses `c % stores.len()`.
    pub stores: Vec<String>,
    pub hq_key: String,
    /// Member ids; client `c` owns the members `m` with `m % clients == c`.
    pub members: Vec<String>,
    pub clients: usize,
    /// The reward redeemed (100 points in the demo program).
    pub reward: String,
    /// How long a client keeps retrying one command.
    pub retry_for: Duration,
    /// The log partition of each member (its commands are keyed by its id).
    pub partition_of: Vec<u32>,
    /// Partitions of the command topic.
    pub partitions: u32,
}

/// A client's memory across phases: where its counters are, and which of its purchases it was
/// told were applied and has not refunded yet.
#[derive(Clone, Debug, Default)]
pub struct ClientState {
    pub id: usize,
    pub n: usize,
    refundable: HashMap<usize, Vec<(String, i64)>>,
}

impl ClientState {
    pub fn new(id: usize) -> ClientState {
        ClientState {
            id,
            ..ClientState::default()
        }
    }
}

/// Counters shared by the clients of one stream.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicUsize,
    /// 200 and 202.
    pub acked: AtomicUsize,
    /// 200 only.
    pub applied: AtomicUsize,
    pub retries: AtomicUsize,
    /// Per partition: when the latest command answered 200 was sent (milliseconds since the
    /// stream started, plus one; 0 for none).
    pub applied_sent: Vec<AtomicU64>,
    notify: Notify,
}

/// Clients streaming until [`Stream::stop`].
pub struct Stream {
    stop: Arc<AtomicBool>,
    pub counters: Arc<Counters>,
    handles: Vec<JoinHandle<(ClientState, Vec<Sent>)>>,
    started: Instant,
}

/// An HTTP client for POS traffic: short idle time for pooled connections (below actix-web's
/// keep-alive, so a pooled connection is not found closed by the server), bounded requests.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .expect("HTTP client")
}

/// One POST; `Err` on a transport error.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
) -> Result<(u16, Value), reqwest::Error> {
    let r = http.post(url).bearer_auth(key).json(body).send().await?;
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(Value::Null);
    Ok((status, v))
}

/// Classifies a response: `None` for what must be retried (5xx, other statuses).
pub fn classify(status: u16, v: &Value) -> Option<Answer> {
    match status {
        200 => Some(Answer::Applied {
            outcome: v["outcome"].clone(),
            replayed: v["replayed"] == true,
        }),
        202 => Some(Answer::Accepted),
        400..=499 => Some(Answer::Rejected {
            status,
            code: v["code"].as_str().unwrap_or("").to_owned(),
        }),
        _ => None,
    }
}

impl Stream {
    /// Starts one task per client state, sending commands of `phase` until stopped.
    pub fn start(traffic: Arc<Traffic>, states: Vec<ClientState>, phase: usize) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters {
            // A partition no member maps to has nothing to wait for.
            applied_sent: (0..traffic.partitions)
                .map(|p| {
                    let used = traffic.partition_of.contains(&p);
                    AtomicU64::new(if used { 0 } else { u64::MAX })
                })
                .collect(),
            ..Counters::default()
        });
        let started = Instant::now();
        let handles = states
            .into_iter()
            .map(|state| {
                let (traffic, stop, counters) = (
                    Arc::clone(&traffic),
                    Arc::clone(&stop),
                    Arc::clone(&counters),
                );
                tokio::spawn(client(traffic, state, phase, stop, counters, started))
            })
            .collect();
        Stream {
            stop,
            counters,
            handles,
            started,
        }
    }

    /// Time since the stream started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the clients have `n` acknowledgements (200 or 202) in this stream, or fails
    /// after `timeout`.
    pub async fn wait_acked(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for(|c| c.acked.load(Ordering::Relaxed) >= n, timeout)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} acknowledgements within {timeout:?}, waited for {n}",
                    self.counters.acked.load(Ordering::Relaxed)
                )
            })
    }

    /// Waits until the clients have `n` answers 200 (applied) in this stream.
    pub async fn wait_applied(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for(|c| c.applied.load(Ordering::Relaxed) >= n, timeout)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} answers 200 within {timeout:?}, waited for {n}",
                    self.counters.applied.load(Ordering::Relaxed)
                )
            })
    }

    /// Waits until every partition has a command answered 200 that was sent after `since`
    /// (stream time): every partition is applying again, whoever owns it now. Returns how long
    /// after `since` that was.
    pub async fn wait_partitions_applied_since(
        &self,
        since: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let after = since.as_millis() as u64 + 1;
        let all = |c: &Counters| {
            c.applied_sent
                .iter()
                .all(|t| t.load(Ordering::Relaxed) > after)
        };
        self.wait_for(all, timeout).await.map_err(|_| {
            let behind: Vec<usize> = self
                .counters
                .applied_sent
                .iter()
                .enumerate()
                .filter(|(_, t)| t.load(Ordering::Relaxed) <= after)
                .map(|(p, _)| p)
                .collect();
            anyhow::anyhow!(
                "partitions {behind:?} applied nothing sent in the {timeout:?} after the fault"
            )
        })?;
        Ok(self.elapsed().saturating_sub(since))
    }

    async fn wait_for(
        &self,
        done: impl Fn(&Counters) -> bool,
        timeout: Duration,
    ) -> Result<(), ()> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.counters.notify.notified();
            if done(&self.counters) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return if done(&self.counters) {
                    Ok(())
                } else {
                    Err(())
                };
            }
        }
    }

    /// Stops the clients (each finishes the command in hand, retries included) and returns
    /// their states and what they sent.
    pub async fn stop(self) -> (Vec<ClientState>, Vec<Sent>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut states = Vec::new();
        let mut sent = Vec::new();
        for h in self.handles {
            let (s, list) = h.await.expect("client task");
            states.push(s);
            sent.extend(list);
        }
        states.sort_by_key(|s| s.id);
        (states, sent)
    }
}

async fn client(
    traffic: Arc<Traffic>,
    mut state: ClientState,
    phase: usize,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    started: Instant,
) -> (ClientState, Vec<Sent>) {
    let http = http_client();
    let c = state.id;
    let own: Vec<usize> = (0..traffic.members.len())
        .filter(|m| m % traffic.clients == c)
        .collect();
    let mut out = Vec::new();
    if own.is_empty() {
        return (state, out);
    }
    let store = c % traffic.stores.len();
    let key = traffic.stores[store].clone();
    let mut gateway = c % traffic.gateways.len();
    while !stop.load(Ordering::Relaxed) {
        let n = state.n;
        state.n += 1;
        let member = own[n % own.len()];
        let event_id = format!("mp-{c}-{n}");
        let refundable = state.refundable.entry(member).or_default();
        let (kind, path, query) = if n % 7 == 3 && !refundable.is_empty() {
            let (purchase, cents) = refundable.remove(0);
            (
                Kind::Refund {
                    purchase,
                    cents: (cents / 2).max(1),
                },
                "/v1/refunds",
                if n.is_multiple_of(2) {
                    "?wait_ms=2000"
                } else {
                    ""
                },
            )
        } else if n % 5 == 4 {
            (
                Kind::Redemption {
                    reward: traffic.reward.clone(),
                },
                "/v1/redemptions",
                "?wait_ms=2000",
            )
        } else {
            (
                Kind::Purchase {
                    cents: 100 + ((c * 31 + n * 17) % 4900) as i64,
                },
                "/v1/purchases",
                if n % 2 == 1 { "?wait_ms=2000" } else { "" },
            )
        };
        let body = match &kind {
            Kind::Purchase { cents } => json!({"event_id": event_id,
                "member_id": traffic.members[member], "amount_cents": cents, "currency": "EUR"}),
            Kind::Refund { purchase, cents } => json!({"event_id": event_id,
                "purchase_event_id": purchase, "amount_cents": cents}),
            Kind::Redemption { reward } => json!({"event_id": event_id,
                "member_id": traffic.members[member], "reward_id": reward}),
        };
        let mut sent = Sent {
            event_id,
            member,
            kind,
            path,
            query,
            body,
            store,
            phase,
            sent_at: started.elapsed(),
            attempts: 0,
            switches: 0,
            answer: None,
        };
        counters.sent.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + traffic.retry_for;
        let mut delay = Duration::from_millis(20);
        loop {
            sent.attempts += 1;
            if sent.attempts > 1 {
                counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            let url = format!("{}{}{}", traffic.gateways[gateway], sent.path, sent.query);
            match post(&http, &url, &key, &sent.body).await {
                Ok((status, v)) => {
                    if let Some(a) = classify(status, &v) {
                        sent.answer = Some(a);
                        break;
                    }
                }
                Err(_) => {
                    // The gateway may be gone: the same command, on the next one.
                    gateway = (gateway + 1) % traffic.gateways.len();
                    sent.switches += 1;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
        match &sent.answer {
            Some(Answer::Applied { outcome, .. }) => {
                if let Kind::Purchase { cents } = &sent.kind {
                    if outcome["type"] == "purchase" {
                        state
                            .refundable
                            .entry(member)
                            .or_default()
                            .push((sent.event_id.clone(), *cents));
                    }
                }
                let sent_ms = sent.sent_at.as_millis() as u64 + 1;
                counters.applied_sent[traffic.partition_of[member] as usize]
                    .fetch_max(sent_ms, Ordering::Relaxed);
                counters.applied.fetch_add(1, Ordering::Relaxed);
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            Some(Answer::Accepted) => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        counters.notify.notify_waiters();
        out.push(sent);
    }
    (state, out)
}
