//! A shard: the member actors of one partition owned by this engine node, and the batch
//! pipeline that turns records of that partition into effects in the store.
//!
//! For each batch of records the shard decides, per event, whether it is new, a replay or an
//! idempotency conflict (from the store's records and the batch's own), has the member's actor
//! apply new ones, writes every effect of the batch in one conditional store commit, and only
//! then updates the hot cache, answers waiting gateways and lets the engine queue the offset for
//! its next checkpoint.
//! If the commit fails, the actors touched by the batch hold effects the store does not have:
//! they are stopped, and the batch is processed again from the store's truth.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use loyalty_domain::dashboard::{DashboardDelta, EventFacts};
use loyalty_domain::{
    classify, Delivery, EventId, Fingerprint, FranchiseId, MemberCommand, MemberId, MemberState,
    MemberStatus, Outcome, ProcessedEvent, Program, RedemptionRecord, Rejection, Timestamp,
};

use crate::command::{CommandEnvelope, PosCommand};
use crate::engine::member::{Apply, MemberActor, Passivate, Snapshot};
use crate::engine::records::BatchRecords;
use crate::metrics::metrics;
use crate::ports::{
    CachedStatus, Due, DueWrite, EffectBatch, EventClaim, MemberWrite, OutboxEntry, Partition,
    Record, StateStore,
};
use crate::programs::ProgramCache;
use crate::replies::{EventReply, ReplyResult};
use crate::{Error, Result};

struct MemberSlot {
    addr: Addr<MemberActor>,
    /// The version the store holds for this member (what the next write must expect).
    stored_version: u64,
    last_used: Instant,
}

/// A record that could not be turned into a command, bound for the dead-letter topic.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub record: Record,
    /// Short machine-readable reason (`undecodable`, `unknown-program`...).
    pub reason: &'static str,
    pub detail: String,
}

/// What became of a command, as `loyalty_engine_commands_total` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counted {
    Applied,
    /// Refused by the rules, with the rejection's code.
    Rejected(&'static str),
    Replayed,
    Conflict,
    DeadLettered,
}

impl Counted {
    fn result(self) -> &'static str {
        match self {
            Counted::Applied => "applied",
            Counted::Rejected(_) => "rejected",
            Counted::Replayed => "replayed",
            Counted::Conflict => "conflict",
            Counted::DeadLettered => "dead-lettered",
        }
    }
}

/// What a batch's commands came to, and when they were sent, counted in the metrics only once
/// the store has the batch: a batch tried again after a failed commit is counted once.
#[derive(Default)]
struct Tally {
    /// (command kind, what became of it, how many).
    counts: Vec<(&'static str, Counted, u64)>,
    /// When the gateways received the new commands (the time they entered the log).
    received: Vec<Timestamp>,
    /// When the POS says the new commands happened, for those that said.
    occurred: Vec<Timestamp>,
}

impl Tally {
    fn add(&mut self, kind: &'static str, counted: Counted) {
        match self
            .counts
            .iter_mut()
            .find(|(k, c, _)| *k == kind && *c == counted)
        {
            Some((_, _, n)) => *n += 1,
            None => self.counts.push((kind, counted, 1)),
        }
    }

    /// A new command (applied or rejected) whose effect goes in this batch.
    fn new_command(&mut self, env: &CommandEnvelope, counted: Counted) {
        self.add(env.command.kind(), counted);
        self.received.push(env.received_at);
        self.occurred.extend(env.occurred_at);
    }

    /// Counts everything, the batch being in the store now.
    fn publish(self) {
        let m = metrics();
        for (kind, counted, n) in self.counts {
            m.engine_commands
                .with_label_values(&[kind, counted.result()])
                .inc_by(n);
            match counted {
                Counted::Applied => m.events_applied.with_label_values(&[kind]).inc_by(n),
                Counted::Rejected(code) => m.events_rejected.with_label_values(&[code]).inc_by(n),
                Counted::Replayed => m.events_replayed.inc_by(n),
                Counted::Conflict => m.idempotency_conflicts.inc_by(n),
                // Counted by reason when appended (`loyalty_dead_letters_total`).
                Counted::DeadLettered => {}
            }
        }
        let now = crate::provisioning::now();
        let seconds = |at: Timestamp| (now.0 - at.0).max(0) as f64 / 1000.0;
        for at in self.received {
            m.engine_lag_seconds.observe(seconds(at));
        }
        for at in self.occurred {
            m.engine_pos_lag_seconds.observe(seconds(at));
        }
    }
}

/// Refunds of purchases not seen yet in a batch (README "Refunds and voids"): how many were
/// held, and how many purchases arrived with refunds held for them (their record shows a
/// refunded amount as soon as they are applied).
#[derive(Default)]
struct HeldTally {
    held: u64,
    applied: u64,
}

impl HeldTally {
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Held { .. } => self.held += 1,
            Outcome::Purchase(p) if p.held_refunded_cents > 0 => self.applied += 1,
            _ => {}
        }
    }

    /// Counts them, the batch being in the store now; logs carry no personal data (counts).
    fn publish(self) {
        let m = &metrics().held_refunds;
        if self.held > 0 {
            m.with_label_values(&["held"]).inc_by(self.held);
            tracing::info!(held = self.held, "refunds held for purchases not seen yet");
        }
        if self.applied > 0 {
            m.with_label_values(&["applied"]).inc_by(self.applied);
            tracing::info!(
                purchases = self.applied,
                "purchases applied with the refunds held for them"
            );
        }
    }
}

/// What processing a batch produced, once the store has it.
pub struct BatchOutcome {
    pub replies: Vec<EventReply>,
    pub dead_letters: Vec<DeadLetter>,
    pub statuses: Vec<(MemberId, CachedStatus)>,
    /// Members whose state the batch wrote.
    pub changed_members: usize,
}

/// The member actors of one partition.
pub struct Shard {
    pub partition: Partition,
    members: HashMap<MemberId, MemberSlot>,
    /// Per franchise, the program (and version) the partition's re-index computes due times
    /// with ([`crate::engine::reindex`]): a command of an older version, sent before a
    /// program change, still writes its member's due time with this one.
    due_programs: HashMap<FranchiseId, (u32, Arc<Program>)>,
}

/// Things a shard needs from its engine.
pub struct ShardDeps<'a> {
    pub store: &'a Arc<dyn StateStore>,
    pub programs: &'a ProgramCache,
    /// Opens the personal values of the commands read.
    pub keys: &'a crate::sealing::KeyRing,
}

impl Shard {
    pub fn new(partition: Partition) -> Shard {
        Shard {
            partition,
            members: HashMap::new(),
            due_programs: HashMap::new(),
        }
    }

    /// From now on, due times of `franchise`'s members are computed with version `version`
    /// of its program (`program`) whenever a command carries an older one.
    pub fn index_with(&mut self, franchise: &FranchiseId, version: u32, program: Arc<Program>) {
        let newer = self
            .due_programs
            .get(franchise)
            .is_none_or(|(known, _)| *known < version);
        if newer {
            self.due_programs
                .insert(franchise.clone(), (version, program));
        }
    }

    /// The program a member's due time is computed with after a command of `version`: the
    /// command's, unless the re-index knows a newer one.
    fn due_program<'p>(
        &'p self,
        franchise: &FranchiseId,
        version: u32,
        program: &'p Program,
    ) -> &'p Program {
        match self.due_programs.get(franchise) {
            Some((known, p)) if *known > version => p,
            _ => program,
        }
    }

    /// Writes the due entries of a re-index page ([`StateStore::put_due`]), each fenced by
    /// the version its member was read at, on the worker's task (the members' single
    /// writer), between batches, so no command of theirs is in flight. A conflict means
    /// that another node wrote one of them: the actors of the page are stopped, so that the
    /// next command rehydrates them from the store.
    pub async fn put_due(&mut self, deps: &ShardDeps<'_>, writes: &[DueWrite]) -> Result<()> {
        let result = deps.store.put_due(writes).await;
        if result.is_err() {
            let members: Vec<MemberId> = writes.iter().map(|w| w.member_id.clone()).collect();
            self.forget(&members);
        }
        result
    }

    /// Number of active member actors.
    pub fn active(&self) -> usize {
        self.members.len()
    }

    /// Stops every actor (the partition is revoked or the engine stops).
    pub fn stop_all(&mut self) {
        for (_, slot) in self.members.drain() {
            slot.addr.do_send(Passivate);
            metrics().actors_active.dec();
            metrics().actors_passivated.inc();
        }
    }

    /// Stops the actors idle for longer than `idle`, so memory stays bounded.
    pub fn passivate_idle(&mut self, idle: Duration) -> usize {
        let now = Instant::now();
        let before = self.members.len();
        self.members.retain(|_, slot| {
            let keep = now.duration_since(slot.last_used) < idle;
            if !keep {
                slot.addr.do_send(Passivate);
                metrics().actors_active.dec();
                metrics().actors_passivated.inc();
            }
            keep
        });
        before - self.members.len()
    }

    fn forget(&mut self, members: &[MemberId]) {
        for m in members {
            if let Some(slot) = self.members.remove(m) {
                slot.addr.do_send(Passivate);
                metrics().actors_active.dec();
            }
        }
    }

    /// The actor of `member`, activated (rehydrated from the store) if needed.
    async fn actor(&mut self, deps: &ShardDeps<'_>, member: &MemberId) -> Result<&mut MemberSlot> {
        if !self.members.contains_key(member) {
            let state = deps.store.member(member).await?;
            let stored_version = state.as_ref().map_or(0, |s| s.version);
            let addr = MemberActor::new(member.clone(), state).start();
            metrics().actors_active.inc();
            metrics().actors_activated.inc();
            self.members.insert(
                member.clone(),
                MemberSlot {
                    addr,
                    stored_version,
                    last_used: Instant::now(),
                },
            );
        }
        match self.members.get_mut(member) {
            Some(slot) => {
                slot.last_used = Instant::now();
                Ok(slot)
            }
            None => Err(Error::Invalid("member slot vanished".into())),
        }
    }

    /// The state of `member`'s actor (activated if needed).
    async fn snapshot(
        &mut self,
        deps: &ShardDeps<'_>,
        member: &MemberId,
    ) -> Result<Option<MemberState>> {
        let slot = self.actor(deps, member).await?;
        slot.addr
            .send(Snapshot)
            .await
            .map_err(|e| Error::Unavailable(format!("member actor: {e}")))
    }

    /// Processes `records` (this partition's, in offset order) until the store has their
    /// effects. On `Err`, the actors it touched are stopped and the caller retries the same
    /// records: nothing of the batch is written, or (with a store that commits member by member)
    /// some members' part is, which the retry finds as replays.
    pub async fn process(
        &mut self,
        deps: &ShardDeps<'_>,
        records: &[Record],
    ) -> Result<BatchOutcome> {
        let mut touched: Vec<MemberId> = Vec::new();
        let result = self.process_inner(deps, records, &mut touched).await;
        if result.is_err() {
            self.forget(&touched);
        }
        result
    }

    async fn process_inner(
        &mut self,
        deps: &ShardDeps<'_>,
        records: &[Record],
        touched: &mut Vec<MemberId>,
    ) -> Result<BatchOutcome> {
        metrics().engine_batch_records.observe(records.len() as f64);
        let mut tally = Tally::default();
        let mut dead_letters = Vec::new();
        // Each command with its program and its fingerprint (computed once: a hash of the command).
        let mut commands: Vec<(CommandEnvelope, Arc<Program>, Fingerprint)> =
            Vec::with_capacity(records.len());
        // Each command's trace parent, in the order of `commands`.
        let mut parents = Vec::with_capacity(records.len());
        for r in records {
            let env = match CommandEnvelope::decode(&r.payload, deps.keys) {
                Ok(env) => env,
                Err(e) => {
                    tally.add("unknown", Counted::DeadLettered);
                    dead_letters.push(DeadLetter {
                        record: r.clone(),
                        reason: "undecodable",
                        detail: e.to_string(),
                    });
                    continue;
                }
            };
            match deps
                .programs
                .get(&env.franchise_id, env.program_version)
                .await?
            {
                Some(p) => {
                    parents.push(crate::trace::command_parent(r, records.len()));
                    let fp = env.fingerprint();
                    commands.push((env, p, fp));
                }
                None => {
                    tally.add(env.command.kind(), Counted::DeadLettered);
                    dead_letters.push(DeadLetter {
                        record: r.clone(),
                        reason: "unknown-program",
                        detail: format!(
                            "franchise {} has no program version {}",
                            env.franchise_id, env.program_version
                        ),
                    });
                }
            }
        }

        self.apply_commands(deps, commands, parents, tally, dead_letters, touched)
            .await
    }

    /// Runs the scheduler's time-only commands (built by [`crate::engine::scheduler`], one
    /// per due member) through the same path as the log's commands: idempotency by their
    /// event id, the member actors, one fenced commit with the due index. On `Err`, the
    /// actors it touched are stopped, as for [`Shard::process`].
    pub async fn process_scheduled(
        &mut self,
        deps: &ShardDeps<'_>,
        commands: Vec<(CommandEnvelope, Arc<Program>)>,
    ) -> Result<BatchOutcome> {
        let mut touched: Vec<MemberId> = Vec::new();
        let parents = commands
            .iter()
            .map(|_| crate::trace::current_parent())
            .collect();
        let commands = commands
            .into_iter()
            .map(|(env, p)| {
                let fp = env.fingerprint();
                (env, p, fp)
            })
            .collect();
        let result = self
            .apply_commands(
                deps,
                commands,
                parents,
                Tally::default(),
                Vec::new(),
                &mut touched,
            )
            .await;
        if result.is_err() {
            self.forget(&touched);
        }
        result
    }

    /// Applies decoded commands (in log order) and commits their effects in one batch.
    async fn apply_commands(
        &mut self,
        deps: &ShardDeps<'_>,
        commands: Vec<(CommandEnvelope, Arc<Program>, Fingerprint)>,
        parents: Vec<crate::trace::Context>,
        mut tally: Tally,
        dead_letters: Vec<DeadLetter>,
        touched: &mut Vec<MemberId>,
    ) -> Result<BatchOutcome> {
        // Idempotency records the batch needs: its own events and the purchases it refunds.
        let mut wanted: HashMap<FranchiseId, Vec<EventId>> = HashMap::new();
        for (env, _, _) in &commands {
            let ids = wanted.entry(env.franchise_id.clone()).or_default();
            ids.push(env.event_id.clone());
            if let PosCommand::Refund {
                purchase_event_id, ..
            } = &env.command
            {
                ids.push(purchase_event_id.clone());
            }
            if let PosCommand::CancelRedemption {
                redemption_event_id,
                ..
            } = &env.command
            {
                ids.push(redemption_event_id.clone());
            }
        }
        // The batch's records: those read here, then the new events' and the updated ones.
        let mut known = BatchRecords::with_capacity(2 * commands.len());
        for (f, ids) in wanted {
            let found = deps.store.processed(&f, &ids).await?;
            for rec in found.into_iter().flatten() {
                known.read(rec);
            }
        }

        // Every event id not recorded yet is claimed, durably, before anything is applied or
        // told: the claim decides once and for all which command owns an id that a client
        // used twice (for two members, or for a member purchase and an anonymous sale), so a
        // replay in another order after a crash cannot change an outcome already told. On a
        // store whose commit is the claim, nothing is claimed here: the batch's durable commit
        // decides, and a batch that lost an id to another partition's commit is refused and
        // processed again, finding the owner's record.
        // Each claim with the position of its command; `owners[i]`: the owner of command i's
        // event id, if it was claimed here.
        let claim_first = !deps.store.commit_claims_events();
        let (claimed, claims): (Vec<usize>, Vec<EventClaim>) = commands
            .iter()
            .enumerate()
            .filter(|(_, (env, _, _))| {
                claim_first && !known.contains(&env.franchise_id, &env.event_id)
            })
            .map(|(i, (env, _, fp))| {
                let claim = EventClaim {
                    franchise_id: env.franchise_id.clone(),
                    event_id: env.event_id.clone(),
                    fingerprint: *fp,
                };
                (i, claim)
            })
            .unzip();
        let mut owners: Vec<Option<Fingerprint>> = vec![None; commands.len()];
        if !claims.is_empty() {
            let claimed_owners = deps.store.claim_events(&claims).await?;
            let lost = claims
                .iter()
                .zip(&claimed_owners)
                .filter(|(c, owner)| c.fingerprint != **owner)
                .count();
            let m = &metrics().event_claims;
            m.with_label_values(&["won"])
                .inc_by((claims.len() - lost) as u64);
            m.with_label_values(&["lost"]).inc_by(lost as u64);
            for (i, owner) in claimed.into_iter().zip(claimed_owners) {
                owners[i] = Some(owner);
            }
        }

        let mut ledger = Vec::with_capacity(commands.len());
        // Each changed member with the program (and its version) of its last command.
        let mut states: HashMap<MemberId, Changed> = HashMap::with_capacity(commands.len());
        // Which command is each member's last of the batch: its reply carries the member's
        // state, so a batch copies a member's state once, however many commands it has.
        let last_of_member = last_of_member(&commands);
        let mut pending_replies: Vec<(EventReply, Option<MemberId>)> =
            Vec::with_capacity(commands.len());
        // Members only replayed in this batch: their durable state, to republish.
        let mut replayed_states: HashMap<MemberId, (MemberState, Arc<Program>, u32)> =
            HashMap::new();
        // What the new events add to the dashboards, committed with them.
        let mut dashboard = DashboardDelta::default();
        // Messages the batch's campaign firings ask for, committed with them.
        let mut outbox: Vec<OutboxEntry> = Vec::new();
        let mut fired = 0u64;
        // Members erased by this batch (README "Privacy"), counted and logged once committed.
        let mut erased: Vec<MemberId> = Vec::new();
        // Refunds held, and purchases that took held refunds, counted once committed.
        let mut held = HeldTally::default();

        for (i, ((env, program, fp), parent)) in commands.into_iter().zip(parents).enumerate() {
            let delivery = classify(known.get(&env.franchise_id, &env.event_id), fp);
            // New here, but claimed by another command: a conflict, for good.
            let lost_claim =
                matches!(delivery, Delivery::New) && owners[i].is_some_and(|owner| owner != fp);
            match delivery {
                Delivery::Replay(rec) => {
                    tally.add(env.command.kind(), Counted::Replayed);
                    // A store that writes a batch member by member (ScyllaDB) may hold this
                    // effect from an attempt whose status never reached the cache: republish.
                    if let Some(m) = rec.member_id.as_ref().filter(|m| !states.contains_key(*m)) {
                        if let Some(state) = self.snapshot(deps, m).await? {
                            replayed_states.insert(
                                m.clone(),
                                (state, Arc::clone(&program), env.program_version),
                            );
                        }
                    }
                    pending_replies.push((
                        EventReply {
                            franchise_id: env.franchise_id,
                            event_id: env.event_id,
                            fingerprint: fp,
                            request_id: env.request_id,
                            reply_to: env.reply_to,
                            result: ReplyResult::Replayed(rec.outcome.clone()),
                            status: None,
                        },
                        rec.member_id.clone(),
                    ));
                    continue;
                }
                Delivery::New if !lost_claim => {}
                Delivery::Conflict(_) | Delivery::New => {
                    tally.add(env.command.kind(), Counted::Conflict);
                    pending_replies.push((
                        EventReply {
                            franchise_id: env.franchise_id,
                            event_id: env.event_id,
                            fingerprint: fp,
                            request_id: env.request_id,
                            reply_to: env.reply_to,
                            result: ReplyResult::Conflict,
                            status: None,
                        },
                        None,
                    ));
                    continue;
                }
            }

            let member_id = env.command.member_id().cloned();
            let outcome = match (&env.command, &member_id) {
                (PosCommand::Purchase { amount_cents, .. }, None) => {
                    let outcome = Outcome::AnonymousSale {
                        amount_cents: *amount_cents,
                    };
                    dashboard.add_event(&EventFacts {
                        franchise: &env.franchise_id,
                        store: &env.store_id,
                        day: program.local_day(env.at()),
                        program: &program,
                        outcome: &outcome,
                        entries: &[],
                        visits: &[],
                        tier: None,
                        segments: None,
                    });
                    outcome
                }
                // Only sales and refunds can lack a member: anonymous refunds are not supported.
                (_, None) => Outcome::Rejected(Rejection::UnknownMember),
                (cmd, Some(m)) => {
                    let command = match cmd {
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
                        } => {
                            let recorded = known.get(&env.franchise_id, purchase_event_id);
                            let purchase = recorded
                                .filter(|r| r.member_id.as_ref() == Some(m))
                                .and_then(|r| match &r.outcome {
                                    Outcome::Purchase(p) => Some(p.clone()),
                                    _ => None,
                                });
                            MemberCommand::Refund {
                                purchase_event_id: purchase_event_id.clone(),
                                amount: *amount_cents,
                                purchase,
                                // No event has the id yet: held for the purchase (offline
                                // tills); an id of another event is refused.
                                purchase_unseen: recorded.is_none(),
                            }
                        }
                        PosCommand::Redemption {
                            reward_id,
                            code: None,
                            ..
                        } => MemberCommand::Redemption {
                            reward_id: reward_id.clone(),
                        },
                        PosCommand::Redemption {
                            reward_id,
                            code: Some(code),
                            ..
                        } => MemberCommand::RedemptionAsCode {
                            reward_id: reward_id.clone(),
                            code: code.clone(),
                        },
                        PosCommand::ConsumeCode { code, .. } => {
                            MemberCommand::ConsumeCode { code: code.clone() }
                        }
                        PosCommand::CancelRedemption {
                            redemption_event_id,
                            ..
                        } => MemberCommand::CancelRedemption {
                            redemption_event_id: redemption_event_id.clone(),
                            redemption: known
                                .get(&env.franchise_id, redemption_event_id)
                                .filter(|r| r.member_id.as_ref() == Some(m))
                                .and_then(RedemptionRecord::of),
                        },
                        PosCommand::Erase { .. } => MemberCommand::Erase,
                        PosCommand::Advance { .. } => MemberCommand::Advance,
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
                    };
                    if !touched.contains(m) {
                        touched.push(m.clone());
                    }
                    let slot = self.actor(deps, m).await?;
                    let reply = slot
                        .addr
                        .send(Apply {
                            franchise_id: env.franchise_id.clone(),
                            event_id: env.event_id.clone(),
                            store_id: env.store_id.clone(),
                            at: env.at(),
                            program: Arc::clone(&program),
                            program_version: env.program_version,
                            command,
                            trace: parent,
                            want_state: last_of_member[i],
                        })
                        .await
                        .map_err(|e| Error::Unavailable(format!("member actor: {e}")))?;
                    let final_state = reply.state;
                    let outcome = match reply.result {
                        Ok(applied) => {
                            dashboard.add_event(&EventFacts {
                                franchise: &env.franchise_id,
                                store: &env.store_id,
                                day: program.local_day(env.at()),
                                program: &program,
                                outcome: &applied.outcome,
                                entries: &applied.entries,
                                visits: &applied.visits,
                                tier: applied.tier.as_ref(),
                                segments: applied.segments.as_ref(),
                            });
                            fired += crate::engine::delivery::firing_effects(
                                &applied.campaigns,
                                &env,
                                m,
                                self.partition,
                                &program,
                                &mut dashboard,
                                &mut outbox,
                            );
                            if applied.changed && matches!(applied.outcome, Outcome::Erased { .. })
                            {
                                erased.push(m.clone());
                            }
                            if applied.changed {
                                Changed::note(&mut states, m, &program, env.program_version);
                            }
                            ledger.extend(applied.entries.into_iter().map(|e| (m.clone(), e)));
                            applied.outcome
                        }
                        Err(rejection) => Outcome::Rejected(rejection),
                    };
                    // The member's last command: its state is the one the batch writes (a
                    // refusal or a command that changed nothing leaves it as it was).
                    if let (Some(state), Some(changed)) = (final_state, states.get_mut(m)) {
                        changed.state = Some(state);
                    }
                    outcome
                }
            };

            held.add(&outcome);
            let counted = match &outcome {
                Outcome::Rejected(r) => Counted::Rejected(r.code()),
                _ => Counted::Applied,
            };
            tally.new_command(&env, counted);

            // A refund updates the purchase it refunds, so later refunds see what is left.
            if let Outcome::Refund {
                purchase_event_id,
                purchase,
                ..
            } = &outcome
            {
                known.update(&env.franchise_id, purchase_event_id, |rec| {
                    rec.outcome = Outcome::Purchase(purchase.clone());
                });
            }

            // A cancellation marks the redemption it cancels, so a second one is refused.
            if let Outcome::RedemptionCancelled {
                redemption_event_id,
                ..
            } = &outcome
            {
                known.update(&env.franchise_id, redemption_event_id, |rec| {
                    if let Outcome::Redemption { cancelled_by, .. } = &mut rec.outcome {
                        *cancelled_by = Some(env.event_id.clone());
                    }
                });
            }

            let record = ProcessedEvent {
                franchise_id: env.franchise_id.clone(),
                event_id: env.event_id.clone(),
                fingerprint: fp,
                member_id: member_id.clone(),
                store_id: env.store_id.clone(),
                at: env.at(),
                outcome: outcome.clone(),
            };
            known.insert_new(record);
            // The envelope's last use: the reply takes its ids.
            pending_replies.push((
                EventReply {
                    franchise_id: env.franchise_id,
                    event_id: env.event_id,
                    fingerprint: fp,
                    request_id: env.request_id,
                    reply_to: env.reply_to,
                    result: ReplyResult::Applied(outcome),
                    status: None,
                },
                member_id,
            ));
        }

        // Each changed member's state (asked of its actor when the member's last command
        // was not applied here: a replay or a conflict), its status and its write.
        let changed_members = states.len();
        let mut members = Vec::with_capacity(changed_members);
        let mut statuses = Vec::with_capacity(changed_members);
        let mut versions = Vec::with_capacity(changed_members);
        for (m, changed) in states {
            let state = match changed.state {
                Some(state) => state,
                None => self.snapshot(deps, &m).await?.ok_or_else(|| {
                    Error::Invalid(format!("member {m} changed but has no state"))
                })?,
            };
            let expected_version = self.members.get(&m).map_or(0, |s| s.stored_version);
            let due_program =
                self.due_program(&state.franchise_id, changed.version, &changed.program);
            let due = Some(Due {
                partition: self.partition,
                // The member's next due time, from the state written with it.
                at: state.next_due(due_program),
            });
            statuses.push((
                m.clone(),
                render_status(&state, &changed.program, changed.version),
            ));
            versions.push((m, state.version));
            members.push(MemberWrite {
                state,
                expected_version,
                due,
            });
        }
        dashboard.tidy();
        let updates = [
            ("totals", dashboard.totals.len()),
            ("visits", dashboard.visits.len()),
            ("tiers", dashboard.tiers.len()),
            ("segments", dashboard.segments.len()),
        ];
        let batch = EffectBatch {
            members,
            ledger,
            processed: known.into_writes(),
            dashboard,
            outbox,
        };
        deps.store.commit(batch).await?;
        metrics().campaign_firings.inc_by(fired);
        for (kind, n) in updates {
            metrics()
                .dashboard_updates
                .with_label_values(&[kind])
                .inc_by(n as u64);
        }
        // The dashboards' rows were in the same commit: the projection's lag is the apply lag.
        tally.publish();
        held.publish();
        for m in &erased {
            metrics().member_erasures.inc();
            // The member id only: the personal data is gone, and never logged anyway.
            tracing::info!(member = %m, "member's personal data erased");
        }

        // Written: the actors' memory and the store agree again.
        for (m, version) in versions {
            if let Some(slot) = self.members.get_mut(&m) {
                slot.stored_version = version;
            }
            replayed_states.remove(&m);
        }
        let mut rendered: HashMap<MemberId, CachedStatus> = statuses.iter().cloned().collect();
        for (m, (state, program, version)) in replayed_states {
            let status = render_status(&state, &program, version);
            rendered.insert(m.clone(), status.clone());
            statuses.push((m, status));
        }
        let replies = pending_replies
            .into_iter()
            .map(|(mut reply, member)| {
                reply.status = member.and_then(|m| rendered.get(&m).cloned());
                reply
            })
            .collect();
        Ok(BatchOutcome {
            replies,
            dead_letters,
            statuses,
            changed_members,
        })
    }
}

/// A member a batch changed: the program (and its version) of its last changing command, and
/// its state once its last command of the batch has been applied.
struct Changed {
    state: Option<MemberState>,
    program: Arc<Program>,
    version: u32,
}

impl Changed {
    /// `member` was changed by a command of version `version` of `program` (its state comes
    /// with its last command of the batch).
    fn note(
        states: &mut HashMap<MemberId, Changed>,
        member: &MemberId,
        program: &Arc<Program>,
        version: u32,
    ) {
        let program = Arc::clone(program);
        match states.get_mut(member) {
            Some(changed) => {
                changed.program = program;
                changed.version = version;
            }
            None => {
                let state = None;
                states.insert(
                    member.clone(),
                    Changed {
                        state,
                        program,
                        version,
                    },
                );
            }
        }
    }
}

/// For each command (in batch order), whether it is its member's last of the batch.
fn last_of_member(commands: &[(CommandEnvelope, Arc<Program>, Fingerprint)]) -> Vec<bool> {
    let mut last: HashMap<&MemberId, usize> = HashMap::with_capacity(commands.len());
    for (i, (env, _, _)) in commands.iter().enumerate() {
        if let Some(m) = env.command.member_id() {
            last.insert(m, i);
        }
    }
    let mut is_last = vec![false; commands.len()];
    for i in last.into_values() {
        is_last[i] = true;
    }
    is_last
}

/// The bytes served at the till for a member, rendered with version `program_version` of its
/// franchise's program.
pub fn render_status(state: &MemberState, program: &Program, program_version: u32) -> CachedStatus {
    let status = MemberStatus::of(state, program);
    CachedStatus {
        franchise_id: state.franchise_id.clone(),
        version: state.version,
        program_version,
        // Serializing a plain struct cannot fail.
        json: bytes::Bytes::from(serde_json::to_vec(&status).unwrap_or_default()),
    }
}
