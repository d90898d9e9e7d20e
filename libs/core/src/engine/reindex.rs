//! The re-index: makes every member's due entry agree with their franchise's current program,
//! for members no write has indexed (stored before the due index existed) and after a program
//! change (points that start expiring, a birthday reward, segment thresholds), so that a
//! dormant member is advanced on time without an event of theirs.
//!
//! Each partition worker runs the re-index of its partition, on the worker's task (the
//! members' single writer), beside its scheduler ([`crate::engine::scheduler`]):
//! - at every scheduler interval, and first on assignment, [`Reindexer::check`] reads the
//!   partition's stored mark ([`ReindexMark`]) once, then the franchises' current program
//!   versions, and queues a sweep for what the mark does not cover: every member of the
//!   partition once (`all`), and the franchise's members for each current version the mark
//!   does not name (`program`). It also tells the shard the current programs, so that a
//!   command of an older version, still in the log, writes its member's due time with the
//!   current one ([`Shard::index_with`]);
//! - a sweep goes page by page ([`SchedulerConfig::batch`] members), one page between two of
//!   the worker's batches, so POS records keep flowing: `all` reads every stored member
//!   ([`StateStore::members_after`]) and keeps those of this partition ([`partition_for`] of
//!   the member id, the log's key); `program` reads the franchise's members of this partition
//!   from the due index ([`StateStore::partition_members`]). For each it computes
//!   [`MemberState::next_due`](loyalty_domain::MemberState::next_due) with the current program
//!   and writes the due entry alone ([`StateStore::put_due`], fenced by the member's version
//!   as read), only where it differs from the stored one (`program`; `all` does not know the
//!   stored entry and writes each, once per partition ever);
//! - when a sweep's last page is written (durable on return), the mark records it: then a
//!   restart, a rebalance or another tick with nothing changed reads one mark and the
//!   franchise list, and no member.
//!
//! Why it is safe: the due time written is a function of the stored state and the program, so
//! a sweep repeated after a crash (the mark is written only at the end, so the next owner
//! starts the sweep again) writes the same entries, or (`program`) none where they agree; only
//! a partition's owner sweeps it, and a zombie's write fails the member-version fence as soon
//! as the new owner has written the member. A due time earlier than needed only makes the
//! scheduler advance the member to it, which writes the right one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use loyalty_domain::{FranchiseId, MemberId, MemberState, Program, Timestamp};
use tracing::Instrument;

#[cfg(doc)]
use crate::engine::scheduler::SchedulerConfig;
use crate::engine::shard::{Shard, ShardDeps};
use crate::metrics::metrics;
#[cfg(doc)]
use crate::ports::StateStore;
use crate::ports::{partition_for, Due, DueWrite, Partition, ReindexMark};
use crate::Result;

/// What a sweep covers.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// Every member of the partition, with each franchise's current program.
    All,
    /// The partition's members of one franchise, with that version of its program.
    Program(FranchiseId, u32),
}

impl Target {
    fn kind(&self) -> &'static str {
        match self {
            Target::All => "all",
            Target::Program(..) => "program",
        }
    }
}

/// A sweep under way.
struct Sweep {
    target: Target,
    /// The programs it computes with (for `all`, every franchise's current one at its start).
    programs: HashMap<FranchiseId, (u32, Arc<Program>)>,
    after: Option<MemberId>,
    pages: u64,
    scanned: u64,
    written: u64,
    started: Instant,
}

/// What one page did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageReport {
    pub scanned: usize,
    pub written: usize,
    /// The page ended its sweep.
    pub finished: bool,
}

/// The re-index of one partition, kept by its worker.
pub struct Reindexer {
    partition: Partition,
    /// The topic's partition count.
    partitions: u32,
    /// The stored mark, once read.
    mark: Option<ReindexMark>,
    queue: VecDeque<Target>,
    sweep: Option<Sweep>,
    /// A page failed: nothing more until the next check.
    blocked: bool,
}

impl Reindexer {
    pub fn new(partition: Partition, partitions: u32) -> Reindexer {
        Reindexer {
            partition,
            partitions: partitions.max(1),
            mark: None,
            queue: VecDeque::new(),
            sweep: None,
            blocked: false,
        }
    }

    /// Whether a page is waiting to be run.
    pub fn pending(&self) -> bool {
        !self.blocked && (self.sweep.is_some() || !self.queue.is_empty())
    }

    /// Reads the mark (the first time) and the current programs, tells the shard the latter,
    /// and queues the sweeps they call for. Lets a blocked re-index go on.
    pub async fn check(&mut self, shard: &mut Shard, deps: &ShardDeps<'_>) -> Result<()> {
        if self.mark.is_none() {
            let mark = deps.store.reindex_mark(self.partition).await?;
            self.mark = Some(mark.unwrap_or_default());
        }
        let current = current_programs(deps).await?;
        for (f, (version, program)) in &current {
            shard.index_with(f, *version, Arc::clone(program));
        }
        let mark = self.mark.clone().unwrap_or_default();
        if !mark.all_members && !self.planned(&Target::All) {
            self.queue.push_front(Target::All);
        }
        for (f, (version, _)) in current {
            if mark.programs.get(&f) == Some(&version) {
                continue;
            }
            let target = Target::Program(f, version);
            if !self.planned(&target) {
                self.queue.push_back(target);
            }
        }
        self.blocked = false;
        Ok(())
    }

    fn planned(&self, target: &Target) -> bool {
        self.queue.contains(target) || self.sweep.as_ref().is_some_and(|s| &s.target == target)
    }

    /// Runs one page of the sweep under way (starting the next queued one if none is). On an
    /// error the sweep stays where it was, blocked until the next [`Reindexer::check`].
    pub async fn page(
        &mut self,
        shard: &mut Shard,
        deps: &ShardDeps<'_>,
        limit: usize,
    ) -> Result<PageReport> {
        let limit = limit.max(1);
        if self.sweep.is_none() {
            match self.start(deps).await {
                Ok(true) => {}
                Ok(false) => return Ok(PageReport::default()),
                Err(e) => return Err(self.failed(e)),
            }
        }
        let Some(sweep) = self.sweep.as_mut() else {
            return Ok(PageReport::default());
        };
        let span = crate::trace::reindex_span(self.partition, sweep.target.kind());
        let (p, n) = (self.partition, self.partitions);
        let run = run_page(sweep, shard, deps, p, n, limit)
            .instrument(span.clone())
            .await;
        let report = match run {
            Ok(r) => r,
            Err(e) => return Err(self.failed(e)),
        };
        span.record("loyalty.reindex.scanned", report.scanned);
        span.record("loyalty.reindex.written", report.written);
        if report.finished {
            if let Err(e) = self.finish(deps).await {
                return Err(self.failed(e));
            }
        }
        Ok(report)
    }

    /// Takes the next queued sweep that the mark does not already cover; `false` if none.
    async fn start(&mut self, deps: &ShardDeps<'_>) -> Result<bool> {
        let mark = self.mark.clone().unwrap_or_default();
        while let Some(target) = self.queue.pop_front() {
            let programs = match &target {
                Target::All if mark.all_members => continue,
                Target::All => current_programs(deps).await?,
                Target::Program(f, v) if mark.programs.get(f) == Some(v) => continue,
                Target::Program(f, v) => match deps.programs.get(f, *v).await? {
                    Some(p) => HashMap::from([(f.clone(), (*v, p))]),
                    None => continue,
                },
            };
            self.sweep = Some(Sweep {
                target,
                programs,
                after: None,
                pages: 0,
                scanned: 0,
                written: 0,
                started: Instant::now(),
            });
            return Ok(true);
        }
        Ok(false)
    }

    /// Records the finished sweep in the mark, durably, and reports it.
    async fn finish(&mut self, deps: &ShardDeps<'_>) -> Result<()> {
        let Some(sweep) = self.sweep.as_ref() else {
            return Ok(());
        };
        let mut mark = self.mark.clone().unwrap_or_default();
        if sweep.target == Target::All {
            mark.all_members = true;
        }
        for (f, (version, _)) in &sweep.programs {
            let known = mark.programs.entry(f.clone()).or_insert(*version);
            *known = (*known).max(*version);
        }
        deps.store.put_reindex_mark(self.partition, &mark).await?;
        self.mark = Some(mark);
        let kind = sweep.target.kind();
        metrics()
            .scheduler
            .reindex_sweeps
            .with_label_values(&[kind, "done"])
            .inc();
        let (franchise, version) = match &sweep.target {
            Target::All => (None, None),
            Target::Program(f, v) => (Some(f.as_str()), Some(*v)),
        };
        tracing::info!(
            partition = self.partition,
            kind,
            franchise,
            program_version = version,
            pages = sweep.pages,
            scanned = sweep.scanned,
            written = sweep.written,
            elapsed_ms = sweep.started.elapsed().as_millis() as u64,
            "re-index sweep done"
        );
        self.sweep = None;
        Ok(())
    }

    fn failed(&mut self, e: crate::Error) -> crate::Error {
        self.blocked = true;
        let kind = self.sweep.as_ref().map_or("all", |s| s.target.kind());
        metrics()
            .scheduler
            .reindex_sweeps
            .with_label_values(&[kind, "error"])
            .inc();
        e
    }
}

/// Every franchise's current program, with its version; a franchise whose program is missing
/// is left out (warned about by the cache).
async fn current_programs(
    deps: &ShardDeps<'_>,
) -> Result<HashMap<FranchiseId, (u32, Arc<Program>)>> {
    let mut out = HashMap::new();
    for f in deps.store.franchises().await? {
        if let Some(p) = deps.programs.get(&f.id, f.program_version).await? {
            out.insert(f.id, (f.program_version, p));
        }
    }
    Ok(out)
}

/// A page of a sweep as read.
struct Page {
    /// The page's members of this partition, each with its stored due time when known
    /// (`None`: not known, as a sweep of all members reads the states only).
    members: Vec<(MemberState, Option<Option<Timestamp>>)>,
    /// Members the store returned (of every partition): fewer than asked ends the sweep.
    read: usize,
    /// The last member returned, where the next page starts.
    last: Option<MemberId>,
}

/// Reads the next page of `sweep`.
async fn read_page(
    sweep: &Sweep,
    deps: &ShardDeps<'_>,
    partition: Partition,
    partitions: u32,
    limit: usize,
) -> Result<Page> {
    let after = sweep.after.as_ref();
    Ok(match &sweep.target {
        Target::All => {
            let page = deps.store.members_after(after, limit).await?;
            let last = page.last().map(|s| s.member_id.clone());
            let read = page.len();
            let members = page
                .into_iter()
                .filter(|s| partition_for(s.member_id.as_str().as_bytes(), partitions) == partition)
                .map(|s| (s, None))
                .collect();
            Page {
                members,
                read,
                last,
            }
        }
        Target::Program(f, _) => {
            let page = deps
                .store
                .partition_members(partition, f, after, limit)
                .await?;
            let last = page.last().map(|m| m.state.member_id.clone());
            let read = page.len();
            let members = page.into_iter().map(|m| (m.state, Some(m.due))).collect();
            Page {
                members,
                read,
                last,
            }
        }
    })
}

/// Reads one page of `sweep`, writes the due entries that must change, and moves it on.
async fn run_page(
    sweep: &mut Sweep,
    shard: &mut Shard,
    deps: &ShardDeps<'_>,
    partition: Partition,
    partitions: u32,
    limit: usize,
) -> Result<PageReport> {
    let page = read_page(sweep, deps, partition, partitions, limit).await?;
    let mut writes = Vec::new();
    for (state, stored) in &page.members {
        let Some((_, program)) = sweep.programs.get(&state.franchise_id) else {
            continue;
        };
        let at = state.next_due(program);
        if stored.is_some_and(|d| d == at) {
            continue;
        }
        writes.push(DueWrite {
            member_id: state.member_id.clone(),
            franchise_id: state.franchise_id.clone(),
            version: state.version,
            due: Due { partition, at },
        });
    }
    if !writes.is_empty() {
        shard.put_due(deps, &writes).await?;
    }
    let (scanned, written) = (page.members.len(), writes.len());
    let m = &metrics().scheduler;
    m.reindex_scanned.inc_by(scanned as u64);
    m.reindexed_members.inc_by(written as u64);
    sweep.pages += 1;
    sweep.scanned += scanned as u64;
    sweep.written += written as u64;
    if page.last.is_some() {
        sweep.after = page.last;
    }
    Ok(PageReport {
        scanned,
        written,
        finished: page.read < limit,
    })
}
