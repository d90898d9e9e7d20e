//! Campaign messages (README "Campaigns"): the outbox entries that an applied command's
//! firings ask for, and the delivery worker that sends them.
//!
//! A firing is part of the member's state change, so the engine writes its outbox entries in
//! the same commit as the state ([`firing_effects`], [`crate::ports::EffectBatch::outbox`]):
//! a firing without its message, or a message without its firing, cannot be stored. Entry ids
//! are deterministic (member, campaign, trigger occurrence, channel), so a replay finds the
//! entry there and adds nothing.
//!
//! Every partition worker runs a [`Delivery`] task for its partition, next to its batches:
//! it reads the partition's due entries ([`StateStore::outbox_due`]), builds each message from
//! the entry (which holds no personal data), the program version that fired it and the
//! member's profile as it is *now* (a member who withdrew consent or was erased meanwhile
//! gets nothing), hands it to the channel's [`MessageSender`], and records the attempt with
//! [`StateStore::update_outbox`], fenced by the attempt count so that two nodes during a
//! rebalance record one attempt once. A transient failure is retried with exponential backoff
//! up to [`DeliveryConfig::max_attempts`]; a permanent one, or the last attempt, dead-letters
//! the entry (`failed`, with the adapter's reason).
//!
//! Delivery is at least once: a crash between a receiver's acceptance and the record of it
//! sends the message again on the next run, with the same [`Message::id`] for the receiver
//! to drop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loyalty_domain::campaigns::{fill, render, Channel, TemplateValues};
use loyalty_domain::dashboard::{campaign_series, DashboardDelta};
use loyalty_domain::{CampaignEffects, MemberId, Program, Timestamp};
use tokio::sync::watch;

use crate::command::CommandEnvelope;
use crate::metrics::metrics;
use crate::notify::{Message, MessageSender, SendError};
use crate::ports::{Clock, OutboxEntry, OutboxState, Partition, StateStore, SystemClock};
use crate::programs::ProgramCache;
use crate::{Error, Result};

/// Adds what an applied command did to campaigns: its tallies to the dashboards' series, and
/// one outbox entry per firing and channel. Returns the number of firings.
pub fn firing_effects(
    effects: &CampaignEffects,
    env: &CommandEnvelope,
    member: &MemberId,
    partition: Partition,
    program: &Program,
    dashboard: &mut DashboardDelta,
    outbox: &mut Vec<OutboxEntry>,
) -> u64 {
    let day = program.local_day(env.at());
    for t in &effects.tallies {
        dashboard.add_campaign(&env.franchise_id, t, day);
    }
    for f in &effects.firings {
        for channel in &f.channels {
            outbox.push(OutboxEntry {
                id: outbox_id(member, &f.campaign_id, &f.key, *channel),
                franchise_id: env.franchise_id.clone(),
                member_id: member.clone(),
                partition,
                campaign_id: f.campaign_id.clone(),
                channel: *channel,
                program_version: env.program_version,
                created_at: env.at(),
                attempts: 0,
                next_attempt_at: env.at(),
                last_error: None,
                state: OutboxState::Pending,
            });
        }
    }
    effects.firings.len() as u64
}

/// The outbox id of a firing's message on `channel`: `<member>/<campaign>/<key>/<channel>`.
pub fn outbox_id(member: &MemberId, campaign: &str, key: &str, channel: Channel) -> String {
    format!("{member}/{campaign}/{key}/{}", channel.as_str())
}

/// Settings of the delivery workers.
#[derive(Clone)]
pub struct DeliveryConfig {
    /// The adapters, one per channel (a channel without one has its messages skipped, with
    /// the reason `no-adapter`).
    pub senders: Vec<Arc<dyn MessageSender>>,
    /// Time between two reads of a partition's due entries; zero turns delivery off.
    pub every: Duration,
    /// Most entries one read takes.
    pub batch: usize,
    /// Attempts before an entry is dead-lettered.
    pub max_attempts: u32,
    /// Wait before the first retry, doubled at each further one, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// The gateway's public base URL, for the opt-out links (`https://loyalty.example.com`).
    pub public_url: String,
    /// What "now" is.
    pub clock: Arc<dyn Clock>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            senders: Vec::new(),
            every: Duration::from_secs(5),
            batch: 64,
            max_attempts: 8,
            backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3_600),
            public_url: "http://127.0.0.1:8080".into(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for DeliveryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let senders: Vec<&str> = self.senders.iter().map(|s| s.name()).collect();
        f.debug_struct("DeliveryConfig")
            .field("senders", &senders)
            .field("every", &self.every)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl DeliveryConfig {
    /// The wait after the failed attempt number `attempts` (from 1).
    pub fn backoff_after(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// What one run of a partition's delivery did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub due: usize,
    pub delivered: usize,
    pub retried: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Attempts another node recorded first.
    pub raced: usize,
}

/// The delivery of a node's partitions' outbox entries.
pub struct Delivery {
    config: DeliveryConfig,
    store: Arc<dyn StateStore>,
    programs: Arc<ProgramCache>,
    senders: HashMap<Channel, Arc<dyn MessageSender>>,
}

/// A message ready to send, or why none is sent.
enum Prepared {
    Send(Box<Message>, Arc<dyn MessageSender>),
    Skip(&'static str),
}

impl Delivery {
    pub fn new(
        config: DeliveryConfig,
        store: Arc<dyn StateStore>,
        programs: Arc<ProgramCache>,
    ) -> Delivery {
        let senders = config
            .senders
            .iter()
            .map(|s| (s.channel(), Arc::clone(s)))
            .collect();
        Delivery {
            config,
            store,
            programs,
            senders,
        }
    }

    /// Delivers `partition`'s due entries every [`DeliveryConfig::every`] until `stop` turns
    /// true. A failed run is logged and left to the next one (it changed nothing it cannot
    /// redo).
    pub async fn run(self: Arc<Self>, partition: Partition, mut stop: watch::Receiver<bool>) {
        if self.config.every.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(self.config.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = tick.tick() => {}
            }
            if *stop.borrow() {
                break;
            }
            match self.run_once(partition).await {
                Ok(r) if r.due > 0 => tracing::info!(
                    partition,
                    due = r.due,
                    delivered = r.delivered,
                    retried = r.retried,
                    failed = r.failed,
                    skipped = r.skipped,
                    "campaign messages delivered"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    partition,
                    error = %e,
                    "campaign delivery run failed; the next run redoes it"
                ),
            }
        }
    }

    /// One run: every entry of `partition` due now, one attempt each.
    pub async fn run_once(&self, partition: Partition) -> Result<DeliveryReport> {
        let now = self.config.clock.now();
        let due = self
            .store
            .outbox_due(partition, now, self.config.batch.max(1))
            .await?;
        let mut report = DeliveryReport {
            due: due.len(),
            ..DeliveryReport::default()
        };
        for entry in due {
            let span = tracing::info_span!(
                "deliver",
                loyalty.campaign = %entry.campaign_id,
                loyalty.channel = entry.channel.as_str(),
                loyalty.attempt = entry.attempts + 1,
                loyalty.result = tracing::field::Empty,
            );
            let result = self.attempt(&entry, now, &span).await?;
            span.record("loyalty.result", result);
            match result {
                "delivered" => report.delivered += 1,
                "retry" => report.retried += 1,
                "failed" => report.failed += 1,
                "skipped" => report.skipped += 1,
                _ => report.raced += 1,
            }
        }
        Ok(report)
    }

    /// One attempt at `entry`, recorded; returns its result's label.
    async fn attempt(
        &self,
        entry: &OutboxEntry,
        now: Timestamp,
        span: &tracing::Span,
    ) -> Result<&'static str> {
        let mut next = entry.clone();
        next.attempts = entry.attempts.saturating_add(1);
        let channel = entry.channel.as_str();
        // The program version that fired the entry: its campaign's templates, and the time
        // zone of the results' day.
        let program = self
            .programs
            .get(&entry.franchise_id, entry.program_version)
            .await?;
        let (result, counter) = match self
            .prepare(entry, program.as_deref(), next.attempts)
            .await?
        {
            Prepared::Skip(reason) => {
                next.state = OutboxState::Skipped {
                    at: now,
                    reason: reason.to_owned(),
                };
                ("skipped", None)
            }
            Prepared::Send(message, sender) => {
                let started = Instant::now();
                let sent = {
                    let _g = span.enter();
                    sender.send(&message).await
                };
                metrics()
                    .campaign_send_seconds
                    .with_label_values(&[channel])
                    .observe(started.elapsed().as_secs_f64());
                self.outcome(&mut next, sent, now)
            }
        };
        let mut delta = DashboardDelta::default();
        if let Some(counter) = counter {
            let day = program.as_ref().map_or(now.day(), |p| p.local_day(now));
            delta.add_segment(
                &entry.franchise_id,
                &campaign_series(&entry.campaign_id, counter),
                day,
                1,
            );
        }
        match self
            .store
            .update_outbox(&next, entry.attempts, &delta)
            .await
        {
            Ok(()) => {}
            // Another node (the partition's previous or next owner) recorded this attempt.
            Err(Error::Conflict(_)) => return Ok("raced"),
            Err(e) => return Err(e),
        }
        metrics()
            .campaign_messages
            .with_label_values(&[channel, result])
            .inc();
        if result == "failed" {
            tracing::warn!(
                campaign = %entry.campaign_id,
                channel,
                attempts = next.attempts,
                error = next.last_error.as_deref().unwrap_or(""),
                "campaign message dead-lettered"
            );
        }
        Ok(result)
    }

    /// `next` after the attempt `sent`: delivered, rescheduled or dead-lettered; the result
    /// label and the results' counter it adds to.
    fn outcome(
        &self,
        next: &mut OutboxEntry,
        sent: std::result::Result<(), SendError>,
        now: Timestamp,
    ) -> (&'static str, Option<&'static str>) {
        match sent {
            Ok(()) => {
                next.state = OutboxState::Delivered { at: now };
                next.last_error = None;
                ("delivered", Some("delivered"))
            }
            Err(SendError::Transient(e)) if next.attempts < self.config.max_attempts => {
                let wait = self.config.backoff_after(next.attempts);
                let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                next.next_attempt_at = Timestamp(now.0.saturating_add(wait_ms));
                next.last_error = Some(e);
                ("retry", None)
            }
            Err(SendError::Transient(e) | SendError::Permanent(e)) => {
                next.state = OutboxState::Failed {
                    at: now,
                    reason: e.clone(),
                };
                next.last_error = Some(e);
                ("failed", Some("failed"))
            }
        }
    }

    /// The message of `entry` (its `attempt`), from the campaign of `program` (the version that
    /// fired it) and the member as stored now; or why it is not sent.
    async fn prepare(
        &self,
        entry: &OutboxEntry,
        program: Option<&Program>,
        attempt: u32,
    ) -> Result<Prepared> {
        let Some(sender) = self.senders.get(&entry.channel) else {
            return Ok(Prepared::Skip("no-adapter"));
        };
        let Some(franchise) = self.store.franchise(&entry.franchise_id).await? else {
            return Ok(Prepared::Skip("unknown-franchise"));
        };
        let campaign = program.and_then(|p| p.campaigns.iter().find(|c| c.id == entry.campaign_id));
        let (Some(program), Some(campaign)) = (program, campaign) else {
            return Ok(Prepared::Skip("no-campaign"));
        };
        let Some((subject, body)) = campaign.template(entry.channel) else {
            return Ok(Prepared::Skip("no-template"));
        };
        let member = match self.store.member(&entry.member_id).await? {
            Some(m) if m.erased_at.is_none() => m,
            _ => return Ok(Prepared::Skip("erased")),
        };
        let p = &member.profile;
        let (consent, to) = match entry.channel {
            Channel::Sms => (p.consent.sms, Some(p.phone.as_str().to_owned())),
            Channel::Email => (p.consent.email, p.email.clone()),
        };
        if !consent {
            return Ok(Prepared::Skip("no-consent"));
        }
        let Some(to) = to else {
            return Ok(Prepared::Skip("no-address"));
        };
        let opt_out_url = format!(
            "{}{}",
            self.config.public_url.trim_end_matches('/'),
            crate::identity::opt_out_path(
                &franchise.id,
                &franchise.secret,
                &member.member_id,
                entry.channel.as_str()
            )
        );
        let offer = campaign.offer.describe(&program.rewards);
        let values = TemplateValues {
            first_name: p
                .name
                .as_deref()
                .and_then(|n| n.split_whitespace().next())
                .unwrap_or(""),
            points: member.points,
            tier: &member.tier,
            offer: &offer,
            franchise: &franchise.name,
            opt_out_url: &opt_out_url,
        };
        let message = Message {
            id: entry.id.clone(),
            franchise_id: entry.franchise_id.clone(),
            member_id: entry.member_id.clone(),
            campaign_id: entry.campaign_id.clone(),
            channel: entry.channel,
            to,
            subject: subject.map(|s| fill(s, &values)),
            body: render(body, &values),
            opt_out_url: opt_out_url.clone(),
            attempt,
        };
        Ok(Prepared::Send(Box::new(message), Arc::clone(sender)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let c = DeliveryConfig {
            backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(300),
            ..DeliveryConfig::default()
        };
        let waits: Vec<u64> = (1..=6).map(|a| c.backoff_after(a).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 300, 300]);
        assert_eq!(c.backoff_after(u32::MAX).as_secs(), 300);
    }
}
