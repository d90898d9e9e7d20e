//! The contract of the [`StateStore`] port: one suite that every adapter runs (the embedded
//! redb store always, ScyllaDB when a node is available), so that the engine cannot tell them
//! apart.
//!
//! [`run_all`] expects an empty store and runs every check in turn; each check is also public,
//! uses its own franchise and members, and returns an error naming what did not hold. Domain
//! values are built with the real rules ([`loyalty_domain::apply`] on [`Program::demo`]), so
//! the states, ledger entries and records written are the ones the engine writes.
//!
//! What it pins down:
//! - configuration round trips (franchises, programs, stores, API keys), programs write-once;
//! - a commit's member state, ledger entries and idempotency records are all readable after it;
//! - version fencing: a stale `expected_version` (or 0 for an existing member) is a
//!   [`Error::Conflict`] and nothing of that member's batch is written, ledger rows and records
//!   included;
//! - inserting a record that exists is a `Conflict` and writes nothing; `insert: false`
//!   replaces a record; records of anonymous events work the same way;
//! - the ledger reads newest first, pages with `before`, honours `limit`;
//! - `members_after` pages through every member exactly once and skips records that have no
//!   member state;
//! - event id claims: the first claim owns the id for good;
//! - a refused batch is atomic per member: the fenced member's share is not written, the others'
//!   are each wholly written or wholly absent;
//! - dashboards: the deltas of commits add up (counters added, visit keys added and a key that
//!   reaches 0 gone, tiers added), `dashboard_rows` answers exactly the days of its range and
//!   the franchise asked; a refused batch adds nothing to them; `stores_of` lists the
//!   franchise's stores only;
//! - the scheduler's due index: written with the member's state, replaced, read by partition
//!   and time, untouched by a refused batch;
//! - the re-index: a partition's members listed by franchise with their due entries (nothing
//!   due included, members stored without an entry left out), in pages; due entries written
//!   alone, fenced by the member's version; the partition marks round trip.
//! - the campaign outbox: entries written with the batch (the first of an id kept), due by
//!   partition and time, earliest first; an attempt's update fenced on the stored attempts,
//!   with its dashboard delta added once; a fenced member's entries never written.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Context};
use loyalty_core::model::{ApiKey, Franchise, Principal, Role, Store};
use loyalty_core::ports::{
    DashboardRows, Due, DueMember, EffectBatch, EventClaim, MemberWrite, OutboxEntry, OutboxState,
    ProcessedWrite, StateStore,
};
use loyalty_core::Error;
use loyalty_domain::dashboard::{DashboardDelta, DayTotals, PackedRow, Scope, VisitKey};
use loyalty_domain::{
    apply, Cents, Day, EventContext, EventId, Fingerprint, FranchiseId, LedgerEntry, MemberCommand,
    MemberId, MemberState, Outcome, Phone, ProcessedEvent, Profile, Program, Rejection, RewardId,
    StoreId, Timestamp,
};

type R = anyhow::Result<()>;

const T0: i64 = 1_700_000_000_000;

/// Runs every check of the contract against `store`, which must be empty.
pub async fn run_all(store: Arc<dyn StateStore>) -> R {
    let s = store.as_ref();
    config_round_trips(s).await.context("config_round_trips")?;
    programs_are_write_once(s)
        .await
        .context("programs_are_write_once")?;
    commit_is_readable(s).await.context("commit_is_readable")?;
    versions_fence_writes(s)
        .await
        .context("versions_fence_writes")?;
    existing_records_refuse_inserts(s)
        .await
        .context("existing_records_refuse_inserts")?;
    records_can_be_replaced(s)
        .await
        .context("records_can_be_replaced")?;
    anonymous_records(s).await.context("anonymous_records")?;
    ledger_pages_newest_first(s)
        .await
        .context("ledger_pages_newest_first")?;
    ledger_pages_across_batches_of_many_entries(s)
        .await
        .context("ledger_pages_across_batches_of_many_entries")?;
    members_scan_once(s).await.context("members_scan_once")?;
    sync_keeps_every_commit(s)
        .await
        .context("sync_keeps_every_commit")?;
    claims_first_wins(s).await.context("claims_first_wins")?;
    commit_is_the_claim(s)
        .await
        .context("commit_is_the_claim")?;
    refused_batches_are_atomic_per_member(s)
        .await
        .context("refused_batches_are_atomic_per_member")?;
    dashboard_deltas_add_up(s)
        .await
        .context("dashboard_deltas_add_up")?;
    refused_batches_add_nothing_to_dashboards(s)
        .await
        .context("refused_batches_add_nothing_to_dashboards")?;
    stores_of_lists_the_franchise_stores(s)
        .await
        .context("stores_of_lists_the_franchise_stores")?;
    rebuild_scans_and_replaces(s)
        .await
        .context("rebuild_scans_and_replaces")?;
    api_keys_rotate_and_revoke(s)
        .await
        .context("api_keys_rotate_and_revoke")?;
    erasures_persist(s).await.context("erasures_persist")?;
    due_index_follows_the_state(s)
        .await
        .context("due_index_follows_the_state")?;
    segment_changes_add_up(s)
        .await
        .context("segment_changes_add_up")?;
    reindex_lists_fences_and_marks(s)
        .await
        .context("reindex_lists_fences_and_marks")?;
    outbox_entries_are_due_by_partition_and_time(s)
        .await
        .context("outbox_entries_are_due_by_partition_and_time")?;
    outbox_updates_are_fenced(s)
        .await
        .context("outbox_updates_are_fenced")?;
    refused_batches_write_no_outbox_entry(s)
        .await
        .context("refused_batches_write_no_outbox_entry")?;
    Ok(())
}

const MINUTE: i64 = 60_000;

/// A pending outbox entry of `member` (firing `n` of campaign `welcome`, by SMS) in
/// `partition`, due `minutes` after [`T0`].
fn outbox_entry(
    sc: &Scenario,
    member: &MemberId,
    n: u32,
    partition: u32,
    minutes: i64,
) -> OutboxEntry {
    OutboxEntry {
        id: format!("{member}/welcome/{n}/sms"),
        franchise_id: sc.franchise.clone(),
        member_id: member.clone(),
        partition,
        campaign_id: "welcome".into(),
        channel: loyalty_domain::campaigns::Channel::Sms,
        program_version: 1,
        created_at: Timestamp(T0),
        attempts: 0,
        next_attempt_at: Timestamp(T0 + minutes * MINUTE),
        last_error: None,
        state: OutboxState::Pending,
    }
}

/// `batch` with `entries` in its outbox.
fn with_outbox(mut batch: EffectBatch, entries: &[OutboxEntry]) -> EffectBatch {
    batch.outbox.extend_from_slice(entries);
    batch
}

/// The campaign outbox ([`StateStore::outbox_due`], [`StateStore::outbox_entry`]): entries
/// committed with a member's batch read back as written, are due at their time and not
/// before, by partition, earliest first (then by id), at most `limit`; a batch that brings an
/// id again keeps the stored entry as it is.
pub async fn outbox_entries_are_due_by_partition_and_time(store: &dyn StateStore) -> R {
    let (p, other) = (8_001, 8_002);
    let mut sc = Scenario::new("outbox-due")?;
    let (a, b) = (sc.member(1)?, sc.member(2)?);
    let late = outbox_entry(&sc, &a, 1, p, 10);
    let early_a = outbox_entry(&sc, &a, 2, p, 5);
    let early_b = outbox_entry(&sc, &b, 1, p, 5);
    let elsewhere = outbox_entry(&sc, &b, 2, other, 1);
    let enrol_a = sc.enrol(&a)?;
    store
        .commit(with_outbox(
            enrol_a.batch(0),
            &[late.clone(), early_a.clone()],
        ))
        .await?;
    let enrol_b = sc.enrol(&b)?;
    store
        .commit(with_outbox(
            enrol_b.batch(0),
            &[elsewhere.clone(), early_b.clone()],
        ))
        .await?;
    let due = |partition: u32, minutes: i64, limit: usize| {
        store.outbox_due(partition, Timestamp(T0 + minutes * MINUTE), limit)
    };
    // Same time: by id (member 1's before member 2's).
    let all = vec![early_a.clone(), early_b.clone(), late.clone()];
    ensure!(
        due(p, 20, 10).await? == all,
        "earliest first: {:?}",
        due(p, 20, 10).await?
    );
    ensure!(due(p, 5, 10).await? == all[..2], "until is inclusive");
    ensure!(due(p, 4, 10).await?.is_empty(), "due before its time");
    ensure!(due(p, 20, 2).await? == all[..2], "limit");
    ensure!(
        due(other, 20, 10).await? == vec![elsewhere.clone()],
        "by partition"
    );
    ensure!(due(9_999, 20, 10).await?.is_empty(), "another partition's");
    ensure!(
        store.outbox_entry(&late.id).await? == Some(late.clone()),
        "read by id"
    );
    ensure!(
        store.outbox_entry("nobody/x/1/sms").await?.is_none(),
        "unknown id"
    );

    // The same id again (a replay of the firing, here with another time): the first is kept.
    let a1 = enrol_a.state.ok_or_else(|| anyhow!("no state"))?;
    let again = OutboxEntry {
        next_attempt_at: Timestamp(T0),
        program_version: 2,
        ..late.clone()
    };
    let bought = sc.purchase(&a1, 100)?;
    store
        .commit(with_outbox(bought.batch(a1.version), &[again]))
        .await?;
    ensure!(
        store.outbox_entry(&late.id).await? == Some(late),
        "the first entry replaced"
    );
    ensure!(due(p, 20, 10).await? == all, "the index moved by a replay");
    Ok(())
}

/// An attempt's result ([`StateStore::update_outbox`]): a delivered entry leaves the due
/// entries, a retried one is due at its new time only; each adds its dashboard delta; an
/// update with a stale `expected_attempts` (another node recorded that attempt), of an entry
/// no longer pending, or of an unknown id, is a `Conflict` that changes nothing and adds
/// nothing.
pub async fn outbox_updates_are_fenced(store: &dyn StateStore) -> R {
    let p = 8_101;
    let mut sc = Scenario::new("outbox-update")?;
    let f = sc.franchise.clone();
    let m = sc.member(1)?;
    let sent = outbox_entry(&sc, &m, 1, p, 1);
    let retried = outbox_entry(&sc, &m, 2, p, 2);
    let e = sc.enrol(&m)?;
    store
        .commit(with_outbox(e.batch(0), &[sent.clone(), retried.clone()]))
        .await?;
    let due = |minutes: i64| store.outbox_due(p, Timestamp(T0 + minutes * MINUTE), 10);
    let counted = |what: &str| {
        let mut d = DashboardDelta::default();
        d.add_segment(&f, what, Day(D0), 1);
        d
    };
    let counts = || segments_of(store, &f);
    let at = Timestamp(T0 + 3 * MINUTE);

    let delivered = OutboxEntry {
        attempts: 1,
        state: OutboxState::Delivered { at },
        ..sent.clone()
    };
    store
        .update_outbox(&delivered, 0, &counted("delivered"))
        .await?;
    ensure!(
        store.outbox_entry(&sent.id).await? == Some(delivered.clone()),
        "delivered"
    );
    ensure!(
        due(60).await? == vec![retried.clone()],
        "a delivered entry is still due"
    );
    let one = vec![("delivered".to_owned(), D0, 1)];
    ensure!(counts().await? == one, "delta: {:?}", counts().await?);
    // The same attempt recorded again (by a node that lost the race): refused, adds nothing.
    let r = store
        .update_outbox(&delivered, 0, &counted("delivered"))
        .await;
    ensure!(is_conflict(&r), "a second update of attempt 0: {r:?}");
    ensure!(counts().await? == one, "a refused update added its delta");
    ensure!(
        store.outbox_entry(&sent.id).await? == Some(delivered),
        "a refused update wrote"
    );

    // A failed attempt, retried later: due at the new time only.
    let later = OutboxEntry {
        attempts: 1,
        next_attempt_at: Timestamp(T0 + 30 * MINUTE),
        last_error: Some("receiver unavailable".into()),
        ..retried.clone()
    };
    store.update_outbox(&later, 0, &counted("retried")).await?;
    ensure!(due(29).await?.is_empty(), "due at its old time");
    ensure!(due(30).await? == vec![later.clone()], "due at its new time");
    let r = store.update_outbox(&later, 0, &counted("retried")).await;
    ensure!(is_conflict(&r), "a stale expected_attempts: {r:?}");
    ensure!(
        due(30).await? == vec![later.clone()],
        "a refused update moved the entry"
    );
    let failed = OutboxEntry {
        attempts: 2,
        state: OutboxState::Failed {
            at,
            reason: "permanent".into(),
        },
        ..later.clone()
    };
    store.update_outbox(&failed, 1, &counted("failed")).await?;
    ensure!(due(60).await?.is_empty(), "a failed entry is still due");
    ensure!(store.outbox_entry(&failed.id).await? == Some(failed.clone()));
    let r = store.update_outbox(&failed, 2, &counted("failed")).await;
    ensure!(is_conflict(&r), "an update of a dead-lettered entry: {r:?}");
    let unknown = OutboxEntry {
        id: format!("{m}/welcome/99/sms"),
        ..later
    };
    let r = store.update_outbox(&unknown, 0, &counted("unknown")).await;
    ensure!(is_conflict(&r), "an update of an unknown entry: {r:?}");
    ensure!(
        store.outbox_entry(&unknown.id).await?.is_none(),
        "an unknown entry created"
    );
    let want = vec![
        ("delivered".to_owned(), D0, 1),
        ("failed".to_owned(), D0, 1),
        ("retried".to_owned(), D0, 1),
    ];
    ensure!(counts().await? == want, "deltas: {:?}", counts().await?);
    Ok(())
}

/// A batch whose member fails its fence writes none of that member's outbox entries (they are
/// the member's share); another member's entries follow its share, written or not.
pub async fn refused_batches_write_no_outbox_entry(store: &dyn StateStore) -> R {
    let p = 8_201;
    let mut sc = Scenario::new("outbox-refused")?;
    let (a, b) = (sc.member(1)?, sc.member(2)?);
    let a1 = sc.enrolled(store, &a).await?;
    let b1 = sc.enrolled(store, &b).await?;
    sc.bought(store, &b1, 900).await?;

    // `b` alone, stale.
    let ob = outbox_entry(&sc, &b, 1, p, 1);
    let stale = sc.purchase(&b1, 3000)?;
    let r = store
        .commit(with_outbox(
            stale.batch(b1.version),
            std::slice::from_ref(&ob),
        ))
        .await;
    ensure!(is_conflict(&r), "stale expected_version: {r:?}");
    ensure!(
        store.outbox_entry(&ob.id).await?.is_none(),
        "a fenced member's entry written"
    );
    ensure!(
        store
            .outbox_due(p, Timestamp(T0 + MINUTE), 10)
            .await?
            .is_empty(),
        "a fenced member's entry due"
    );

    // `a` fresh and `b` stale in one batch.
    let oa = outbox_entry(&sc, &a, 1, p, 1);
    let good = sc.purchase(&a1, 1200)?;
    let mut batch = with_outbox(good.batch(a1.version), std::slice::from_ref(&oa));
    stale.add_to(&mut batch, b1.version);
    batch.outbox.push(ob.clone());
    let r = store.commit(batch).await;
    ensure!(is_conflict(&r), "a batch with a stale member: {r:?}");
    ensure!(
        store.outbox_entry(&ob.id).await?.is_none(),
        "a fenced member's entry written"
    );
    let a_written = store.member(&a).await?.as_ref() == good.state.as_ref();
    let due = store.outbox_due(p, Timestamp(T0 + MINUTE), 10).await?;
    let stored = store.outbox_entry(&oa.id).await?;
    if a_written {
        ensure!(
            stored == Some(oa.clone()) && due == vec![oa],
            "a's share without its entry"
        );
    } else {
        ensure!(
            stored.is_none() && due.is_empty(),
            "a's entry without its share"
        );
    }
    Ok(())
}

/// Segment changes of `franchise`, sorted.
async fn segments_of(
    store: &dyn StateStore,
    franchise: &FranchiseId,
) -> anyhow::Result<Vec<(String, u32, i64)>> {
    let mut rows: Vec<(String, u32, i64)> = store
        .segment_rows(franchise)
        .await?
        .into_iter()
        .map(|(s, d, n)| (s, d.0, n))
        .collect();
    rows.sort();
    Ok(rows)
}

/// The changes of segment sizes ([`StateStore::segment_rows`]): the commits' deltas add up by
/// (segment, day), a sum of 0 is not read, another franchise's are apart, a refused batch
/// adds nothing, and a replacement of the dashboards replaces them (when the store supports
/// it).
pub async fn segment_changes_add_up(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("segments")?;
    let f = sc.franchise.clone();
    let other = id(FranchiseId::parse("contract-segments-other"))?;
    let delta = |rows: &[(&FranchiseId, &str, u32, i64)]| {
        let mut d = DashboardDelta::default();
        for (f, s, day, n) in rows {
            d.add_segment(f, s, Day(*day), *n);
        }
        d
    };
    let commit = |d: DashboardDelta| {
        store.commit(EffectBatch {
            dashboard: d,
            ..EffectBatch::default()
        })
    };
    commit(delta(&[
        (&f, "new", D0, 3),
        (&f, "new", D0 + 1, -1),
        (&f, "loyal", D0, 2),
        (&other, "new", D0, 7),
    ]))
    .await?;
    commit(delta(&[(&f, "new", D0 + 1, 1), (&f, "loyal", D0 + 2, 1)])).await?;
    let want = vec![
        ("loyal".to_owned(), D0, 2),
        ("loyal".to_owned(), D0 + 2, 1),
        ("new".to_owned(), D0, 3),
    ];
    ensure!(
        segments_of(store, &f).await? == want,
        "added up: {:?}",
        segments_of(store, &f).await?
    );
    let theirs = vec![("new".to_owned(), D0, 7)];
    ensure!(
        segments_of(store, &other).await? == theirs,
        "another franchise's"
    );

    // A refused batch (a stale member) adds nothing.
    let b = sc.member(1)?;
    let b1 = sc.enrolled(store, &b).await?;
    sc.bought(store, &b1, 900).await?;
    let stale = sc.purchase(&b1, 3000)?;
    let r = store
        .commit(stale.batch_with(b1.version, delta(&[(&f, "new", D0, 5)])))
        .await;
    ensure!(is_conflict(&r), "stale expected_version: {r:?}");
    ensure!(
        segments_of(store, &f).await? == want,
        "a refused batch added its segments"
    );

    match store
        .replace_dashboard(
            &f,
            &delta(&[(&f, "lapsed", D0 + 5, 4), (&other, "x", D0, 1)]),
        )
        .await
    {
        Err(Error::Invalid(why)) => {
            println!("replacing dashboards not supported by this store: {why}");
            return Ok(());
        }
        other => other?,
    }
    let replaced = vec![("lapsed".to_owned(), D0 + 5, 4)];
    ensure!(segments_of(store, &f).await? == replaced, "replaced");
    ensure!(
        segments_of(store, &other).await? == theirs,
        "another franchise's, replaced"
    );
    Ok(())
}

const DAY: i64 = 86_400_000;

/// `batch` with each member's due entry set to `at` in `partition`.
fn due_in(mut batch: EffectBatch, partition: u32, at: Option<i64>) -> EffectBatch {
    for w in &mut batch.members {
        w.due = Some(Due {
            partition,
            at: at.map(Timestamp),
        });
    }
    batch
}

/// The scheduler's due index ([`StateStore::due_members`]): written in the member's commit,
/// one entry per member (a new due time replaces the old one), read by partition, up to and
/// including `until`, earliest first, at most `limit`; a refused batch leaves it as it was;
/// `due: None` leaves an entry, a due time of `None` removes it.
pub async fn due_index_follows_the_state(store: &dyn StateStore) -> R {
    let (p, other) = (7_001, 7_002);
    let mut sc = Scenario::new("due")?;
    let dues = [
        (1, p, Some(10)),
        (2, p, Some(5)),
        (3, p, None),
        (4, other, Some(1)),
    ];
    let mut states = Vec::new();
    for (n, partition, day) in dues {
        let m = sc.member(n)?;
        let e = sc.enrol(&m)?;
        let at = day.map(|d| T0 + d * DAY);
        store.commit(due_in(e.batch(0), partition, at)).await?;
        states.push(e.state.ok_or_else(|| anyhow!("no state"))?);
    }
    let franchise = sc.franchise.clone();
    let due = |n: u32, day: i64| -> anyhow::Result<DueMember> {
        Ok(DueMember {
            member_id: id(MemberId::parse(&format!("{franchise}-m{n:05}")))?,
            franchise_id: franchise.clone(),
            at: Timestamp(T0 + day * DAY),
        })
    };
    let read = |partition: u32, day: i64, limit: usize| {
        store.due_members(partition, Timestamp(T0 + day * DAY), limit)
    };
    ensure!(
        read(p, 20, 10).await? == vec![due(2, 5)?, due(1, 10)?],
        "earliest first"
    );
    ensure!(
        read(p, 5, 10).await? == vec![due(2, 5)?],
        "until is inclusive"
    );
    ensure!(
        read(p, 4, 10).await?.is_empty(),
        "nothing due before the first"
    );
    ensure!(read(p, 20, 1).await? == vec![due(2, 5)?], "limit");
    ensure!(
        read(other, 20, 10).await? == vec![due(4, 1)?],
        "by partition"
    );

    // A new due time replaces the member's entry.
    let bought = sc.purchase(&states[1], 100)?;
    store
        .commit(due_in(
            bought.batch(states[1].version),
            p,
            Some(T0 + 30 * DAY),
        ))
        .await?;
    ensure!(
        read(p, 20, 10).await? == vec![due(1, 10)?],
        "old entry left behind"
    );
    ensure!(read(p, 40, 10).await? == vec![due(1, 10)?, due(2, 30)?]);

    // A refused batch moves nothing; `due: None` leaves the entry; `at: None` removes it.
    let m1 = &states[0];
    let stale = sc.purchase(m1, 100)?;
    let r = store
        .commit(due_in(stale.batch(m1.version + 3), p, Some(T0 + DAY)))
        .await;
    ensure!(is_conflict(&r), "stale write: {r:?}");
    ensure!(
        read(p, 20, 10).await? == vec![due(1, 10)?],
        "a refused batch moved the index"
    );
    let kept = sc.purchase(m1, 100)?;
    store.commit(kept.batch(m1.version)).await?;
    ensure!(
        read(p, 20, 10).await? == vec![due(1, 10)?],
        "due: None removed the entry"
    );
    let m1 = kept.state.ok_or_else(|| anyhow!("no state"))?;
    let cleared = sc.purchase(&m1, 100)?;
    store
        .commit(due_in(cleared.batch(m1.version), p, None))
        .await?;
    ensure!(
        read(p, 20, 10).await?.is_empty(),
        "a cleared entry is still due"
    );
    ensure!(read(p, 40, 10).await? == vec![due(2, 30)?]);
    Ok(())
}

/// An erasure (README "Privacy") goes through the ordinary state write: the erased state reads
/// back as written (no phone, name or birthday; `erased_at` set; the books as they were), the
/// ledger is untouched, and the erasure's record reads back with its outcome.
pub async fn erasures_persist(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("erasure")?;
    let m = sc.member(1)?;
    let state = sc.enrolled(store, &m).await?;
    let state = sc.bought(store, &state, 2_500).await?;
    let ledger = store.ledger(&m, None, 100).await?;
    let erase = sc.apply(Some(&state), &m, MemberCommand::Erase)?;
    let erased = erase
        .state
        .clone()
        .ok_or_else(|| anyhow!("an erasure changed no state"))?;
    ensure!(erased.profile.phone.is_erased() && erased.profile.name.is_none());
    ensure!(erased.erased_at.is_some() && erased.points == state.points);
    store.commit(erase.batch(state.version)).await?;
    ensure!(
        store.member(&m).await?.as_ref() == Some(&erased),
        "the erased state reads back"
    );
    ensure!(
        store.ledger(&m, None, 100).await? == ledger,
        "the ledger is kept"
    );
    let found = store
        .processed(&sc.franchise, std::slice::from_ref(&erase.record.event_id))
        .await?;
    ensure!(
        found == vec![Some(erase.record.clone())]
            && matches!(erase.record.outcome, Outcome::Erased { .. }),
        "the erasure's record: {found:?}"
    );
    Ok(())
}

/// A key of the scenario's franchise, version 1.
fn contract_key(sc: &Scenario, id: &str, role: Role, hash: &str) -> ApiKey {
    ApiKey {
        id: id.to_owned(),
        franchise_id: sc.franchise.clone(),
        role,
        store_id: (role == Role::Store).then(|| sc.store.clone()),
        key_hash: hash.to_owned(),
        prefix: "lk_store_abcd".into(),
        created_at: Timestamp(T0),
        rotated_at: None,
        revoked_at: None,
        version: 1,
    }
}

/// API keys: a key is found by its current hash only (never by a rotated one, nor once
/// revoked, revoked for good), listed with its franchise's keys only, named by its id; every
/// write is fenced by the version the writer read (a stale writer changes nothing, so a
/// rotation racing a revocation cannot bring the key back).
pub async fn api_keys_rotate_and_revoke(store: &dyn StateStore) -> R {
    let sc = Scenario::new("keys")?;
    let other = Scenario::new("keys-other")?;
    let (id1, id2, id3) = (
        "k_00000000000000000001",
        "k_00000000000000000002",
        "k_00000000000000000003",
    );
    let k1 = contract_key(&sc, id1, Role::Store, "hash-keys-1");
    store.put_api_key(&k1, None).await?;
    ensure!(store.api_key("hash-keys-1").await? == Some(k1.principal()));
    ensure!(
        store.api_key("hash-keys-1").await?.and_then(|p| p.key_id) == Some(id1.to_owned()),
        "a principal names its key"
    );
    ensure!(store.api_key_record(&sc.franchise, id1).await? == Some(k1.clone()));
    ensure!(
        store.api_key_record(&other.franchise, id1).await?.is_none(),
        "a key is found under its own franchise only"
    );
    // A second creation of the same id is a conflict that changes nothing.
    let again = ApiKey {
        key_hash: "hash-keys-1b".into(),
        ..k1.clone()
    };
    ensure!(is_conflict(&store.put_api_key(&again, None).await));
    ensure!(store.api_key("hash-keys-1b").await?.is_none());
    ensure!(store.api_key("hash-keys-1").await? == Some(k1.principal()));

    let k2 = contract_key(&sc, id2, Role::HqReadOnly, "hash-keys-2");
    store.put_api_key(&k2, None).await?;
    let k3 = contract_key(&other, id3, Role::Hq, "hash-keys-3");
    store.put_api_key(&k3, None).await?;
    let listed = store.api_keys_of(&sc.franchise).await?;
    ensure!(listed == vec![k1.clone(), k2.clone()], "listed {listed:?}");
    ensure!(store.api_keys_of(&other.franchise).await? == vec![k3.clone()]);

    // Rotation: the new hash works, the old one no longer does.
    let rotated = ApiKey {
        key_hash: "hash-keys-1r".into(),
        prefix: "lk_store_wxyz".into(),
        rotated_at: Some(Timestamp(T0 + 1)),
        version: 2,
        ..k1.clone()
    };
    store.put_api_key(&rotated, Some(&k1)).await?;
    ensure!(
        store.api_key("hash-keys-1").await?.is_none(),
        "the rotated secret still works"
    );
    ensure!(store.api_key("hash-keys-1r").await? == Some(rotated.principal()));
    ensure!(store.api_key_record(&sc.franchise, id1).await? == Some(rotated.clone()));

    // A writer that read version 1 (a revocation racing the rotation) is refused whole.
    let stale = ApiKey {
        revoked_at: Some(Timestamp(T0 + 2)),
        version: 2,
        ..k1.clone()
    };
    ensure!(is_conflict(&store.put_api_key(&stale, Some(&k1)).await));
    ensure!(store.api_key("hash-keys-1r").await? == Some(rotated.principal()));
    ensure!(store.api_key_record(&sc.franchise, id1).await? == Some(rotated.clone()));
    // A version that does not follow the one read is the caller's bug.
    let skipped = ApiKey {
        version: 5,
        ..rotated.clone()
    };
    ensure!(matches!(
        store.put_api_key(&skipped, Some(&rotated)).await,
        Err(Error::Invalid(_))
    ));

    // Revocation: the key authenticates nothing, its record stays, listed as revoked.
    let revoked = ApiKey {
        revoked_at: Some(Timestamp(T0 + 3)),
        version: 3,
        ..rotated.clone()
    };
    store.put_api_key(&revoked, Some(&rotated)).await?;
    ensure!(
        store.api_key("hash-keys-1r").await?.is_none(),
        "a revoked key still works"
    );
    ensure!(store.api_key("hash-keys-1").await?.is_none());
    ensure!(store.api_key_record(&sc.franchise, id1).await? == Some(revoked.clone()));
    ensure!(store.api_keys_of(&sc.franchise).await? == vec![revoked.clone(), k2.clone()]);
    // The other keys are untouched.
    ensure!(store.api_key("hash-keys-2").await? == Some(k2.principal()));
    ensure!(store.api_key("hash-keys-3").await? == Some(k3.principal()));
    Ok(())
}

/// What the dashboards' rebuild needs: a franchise's idempotency records in pages, in event id
/// order, once each; and a replacement of its aggregates that leaves other franchises' alone.
/// (A store that does not support the rebuild yet must say so with `Invalid`.)
pub async fn rebuild_scans_and_replaces(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("rebuild")?;
    let mut written = Vec::new();
    for _ in 0..7 {
        let (event, at) = sc.next_event()?;
        written.push(sc.record(
            &event,
            at,
            None,
            Outcome::AnonymousSale {
                amount_cents: id(Cents::new(700))?,
            },
        ));
    }
    let batch = EffectBatch {
        processed: written
            .iter()
            .map(|r| ProcessedWrite {
                record: r.clone(),
                insert: true,
            })
            .collect(),
        ..EffectBatch::default()
    };
    store.commit(batch).await?;
    let mut seen = Vec::new();
    let mut after: Option<EventId> = None;
    loop {
        let page = match store
            .processed_after(&sc.franchise, after.as_ref(), 3)
            .await
        {
            Err(Error::Invalid(why)) => {
                println!("rebuild not supported by this store: {why}");
                return Ok(());
            }
            other => other?,
        };
        ensure!(page.len() <= 3, "a page longer than asked: {}", page.len());
        after = page.last().map(|r| r.event_id.clone());
        let last = page.len() < 3;
        seen.extend(page);
        if last {
            break;
        }
    }
    let mut want = written.clone();
    want.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    ensure!(
        seen == want,
        "scan: {:?}",
        seen.iter().map(|r| &r.event_id).collect::<Vec<_>>()
    );

    // Replace: the franchise's old rows go, the new ones are there, another franchise keeps its.
    let other = id(FranchiseId::parse("contract-rebuild-other"))?;
    let row = |f: &FranchiseId, day: u32, n: u64| {
        let mut d = DashboardDelta::default();
        d.totals.insert(
            (f.clone(), sc.store.clone(), Day(day)),
            DayTotals {
                anonymous_purchases: n,
                ..DayTotals::default()
            },
        );
        d.tiers.insert((f.clone(), "Gold".into()), n as i64);
        d
    };
    let mut both = row(&sc.franchise, D0, 5);
    both.merge(row(&other, D0, 9));
    store
        .commit(EffectBatch {
            dashboard: both,
            ..EffectBatch::default()
        })
        .await?;
    store
        .replace_dashboard(&sc.franchise, &row(&sc.franchise, D0 + 2, 4))
        .await?;
    let mine = store
        .dashboard_rows(&sc.franchise, Day(0), Day(D0 + 10))
        .await?;
    let days: Vec<u32> = mine.totals.iter().map(|(_, d, _)| d.0).collect();
    ensure!(days == vec![D0 + 2], "after the replacement: {days:?}");
    ensure!(mine.totals[0].2.anonymous_purchases == 4);
    let tiers = store.tier_counts(&sc.franchise).await?;
    ensure!(tiers == vec![("Gold".to_owned(), 4)], "tiers: {tiers:?}");
    let theirs = store.dashboard_rows(&other, Day(0), Day(D0 + 10)).await?;
    ensure!(
        theirs.totals.len() == 1 && theirs.totals[0].2.anonymous_purchases == 9,
        "another franchise's rows changed: {theirs:?}"
    );
    Ok(())
}

/// A day of the dashboards' tests (around the scenarios' events).
const D0: u32 = 19_700;

fn visit(prev: Option<u16>, prev2: Option<u16>) -> VisitKey {
    VisitKey { prev, prev2 }
}

/// The dashboards' rows of `franchise` over `from..=to`, in a canonical order (the port
/// answers in none).
async fn sorted_rows(
    store: &dyn StateStore,
    franchise: &FranchiseId,
    from: u32,
    to: u32,
) -> anyhow::Result<DashboardRows> {
    let mut rows = store.dashboard_rows(franchise, Day(from), Day(to)).await?;
    rows.totals.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    rows.visits.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    Ok(rows)
}

/// Tier counts of `franchise`, sorted, tiers at 0 left out (a store may keep or drop them).
async fn tiers_of(
    store: &dyn StateStore,
    franchise: &FranchiseId,
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut t: Vec<(String, i64)> = store
        .tier_counts(franchise)
        .await?
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .collect();
    t.sort();
    Ok(t)
}

/// The deltas of two commits merge in the stored aggregates: counters and rewards are added, a
/// visit key's counts are added and a key that reaches 0 disappears (a row left empty
/// disappears), tiers are added. `dashboard_rows` answers every store and scope of the days
/// `from..=to` of the franchise asked, nothing outside, and `tier_counts` that franchise's
/// tiers.
pub async fn dashboard_deltas_add_up(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("dash")?;
    let f = sc.franchise.clone();
    let other = id(FranchiseId::parse("contract-dash-other"))?;
    let s1 = sc.store.clone();
    let s2 = id(StoreId::parse("store-dash-2"))?;
    let (r1, r2) = (id(RewardId::parse("coffee"))?, id(RewardId::parse("cake"))?);
    let (k1, k2, k3) = (
        visit(None, None),
        visit(Some(3), None),
        visit(Some(1), Some(8)),
    );
    let m = sc.member(1)?;

    let mut d1 = DashboardDelta::default();
    d1.totals.insert(
        (f.clone(), s1.clone(), Day(D0)),
        DayTotals {
            member_purchases: 2,
            member_revenue_cents: 3000,
            enrolments: 1,
            points_issued: 130,
            redemptions: 1,
            reward_cost_cents: 150,
            rewards: [(r1.clone(), 1)].into(),
            ..DayTotals::default()
        },
    );
    d1.totals.insert(
        (f.clone(), s2.clone(), Day(D0 + 1)),
        DayTotals {
            anonymous_purchases: 1,
            anonymous_revenue_cents: 900,
            ..DayTotals::default()
        },
    );
    // Outside the range asked below, on both sides.
    d1.totals.insert(
        (f.clone(), s1.clone(), Day(D0 + 5)),
        DayTotals {
            enrolments: 4,
            ..DayTotals::default()
        },
    );
    d1.totals.insert(
        (f.clone(), s1.clone(), Day(D0 - 1)),
        DayTotals {
            refunded_cents: 70,
            ..DayTotals::default()
        },
    );
    // Another franchise, same store id and day.
    d1.totals.insert(
        (other.clone(), s1.clone(), Day(D0)),
        DayTotals {
            member_purchases: 50,
            ..DayTotals::default()
        },
    );
    d1.visits.insert(
        (f.clone(), Scope::Franchise, Day(D0)),
        [(k1, 1), (k2, 2)].into(),
    );
    d1.visits.insert(
        (f.clone(), Scope::Store(s1.clone()), Day(D0)),
        [(k1, 1)].into(),
    );
    d1.visits.insert(
        (f.clone(), Scope::Store(s2.clone()), Day(D0 + 1)),
        [(k2, 1)].into(),
    );
    d1.visits
        .insert((other.clone(), Scope::Franchise, Day(D0)), [(k1, 7)].into());
    d1.tiers.insert((f.clone(), "silver".into()), 3);
    d1.tiers.insert((f.clone(), "gold".into()), 1);
    d1.tiers.insert((other.clone(), "gold".into()), 9);
    let enrol = sc.enrol(&m)?;
    store.commit(enrol.batch_with(0, d1)).await?;
    let v1 = enrol.state.clone().ok_or_else(|| anyhow!("no state"))?;

    let mut d2 = DashboardDelta::default();
    d2.totals.insert(
        (f.clone(), s1.clone(), Day(D0)),
        DayTotals {
            member_purchases: 1,
            member_revenue_cents: 500,
            points_redeemed: 100,
            redemptions: 3,
            reward_cost_cents: 250,
            rewards: [(r1.clone(), 2), (r2.clone(), 1)].into(),
            ..DayTotals::default()
        },
    );
    // k1 of the franchise and the store's only key reach 0; k3 is new.
    d2.visits.insert(
        (f.clone(), Scope::Franchise, Day(D0)),
        [(k1, -1), (k3, 1)].into(),
    );
    d2.visits.insert(
        (f.clone(), Scope::Store(s1.clone()), Day(D0)),
        [(k1, -1)].into(),
    );
    d2.tiers.insert((f.clone(), "silver".into()), -1);
    d2.tiers.insert((f.clone(), "bronze".into()), 2);
    let buy = sc.purchase(&v1, 1500)?;
    store.commit(buy.batch_with(v1.version, d2)).await?;

    let merged_s1 = DayTotals {
        member_purchases: 3,
        member_revenue_cents: 3500,
        enrolments: 1,
        points_issued: 130,
        points_redeemed: 100,
        redemptions: 4,
        reward_cost_cents: 400,
        rewards: [(r1, 3), (r2, 1)].into(),
        ..DayTotals::default()
    };
    let s2_totals = DayTotals {
        anonymous_purchases: 1,
        anonymous_revenue_cents: 900,
        ..DayTotals::default()
    };
    let rows = sorted_rows(store, &f, D0, D0 + 4).await?;
    let want_totals = vec![
        (s1.clone(), Day(D0), merged_s1.clone()),
        (s2.clone(), Day(D0 + 1), s2_totals.clone()),
    ];
    ensure!(
        rows.totals == want_totals,
        "totals of days {D0}..={}: {:#?}",
        D0 + 4,
        rows.totals
    );
    let want_visits = vec![
        (Scope::Franchise, Day(D0), [(k2, 2), (k3, 1)].into()),
        (Scope::Store(s2.clone()), Day(D0 + 1), [(k2, 1)].into()),
    ];
    ensure!(
        rows.visits == want_visits,
        "visit rows of days {D0}..={} (a key at 0 and an empty row must be gone): {:#?}",
        D0 + 4,
        rows.visits
    );

    // Exactly the days of the range.
    let one = sorted_rows(store, &f, D0 + 1, D0 + 1).await?;
    ensure!(
        one.totals == vec![(s2.clone(), Day(D0 + 1), s2_totals)],
        "totals of day {}: {:?}",
        D0 + 1,
        one.totals
    );
    ensure!(
        one.visits == vec![(Scope::Store(s2.clone()), Day(D0 + 1), [(k2, 1)].into())],
        "visits of day {}: {:?}",
        D0 + 1,
        one.visits
    );
    let day0 = sorted_rows(store, &f, D0, D0).await?;
    ensure!(
        day0.totals == vec![(s1.clone(), Day(D0), merged_s1)],
        "totals of day {D0}: {:?}",
        day0.totals
    );
    let wide = sorted_rows(store, &f, D0 - 1, D0 + 5).await?;
    let mut days: Vec<u32> = wide.totals.iter().map(|t| t.1 .0).collect();
    days.sort_unstable();
    ensure!(
        days == vec![D0 - 1, D0, D0 + 1, D0 + 5],
        "days of the wide range: {days:?}"
    );
    let none = sorted_rows(store, &f, D0 + 6, D0 + 400).await?;
    ensure!(none == DashboardRows::default(), "empty range: {none:?}");
    let reversed = sorted_rows(store, &f, D0 + 4, D0).await?;
    ensure!(
        reversed == DashboardRows::default(),
        "a range with from after to: {reversed:?}"
    );

    // The other franchise sees its own rows only.
    let theirs = sorted_rows(store, &other, D0, D0).await?;
    ensure!(
        theirs.totals
            == vec![(
                s1.clone(),
                Day(D0),
                DayTotals {
                    member_purchases: 50,
                    ..DayTotals::default()
                }
            )]
            && theirs.visits == vec![(Scope::Franchise, Day(D0), [(k1, 7)].into())],
        "rows of another franchise: {theirs:?}"
    );

    let tiers = tiers_of(store, &f).await?;
    ensure!(
        tiers
            == vec![
                ("bronze".into(), 2),
                ("gold".into(), 1),
                ("silver".into(), 2)
            ],
        "tier counts: {tiers:?}"
    );
    ensure!(
        tiers_of(store, &other).await? == vec![("gold".into(), 9)],
        "tier counts of another franchise"
    );
    ensure!(
        tiers_of(store, &id(FranchiseId::parse("contract-dash-none"))?)
            .await?
            .is_empty()
    );
    Ok(())
}

/// A batch refused by the fence (a stale version, an existing member, an event already
/// recorded) adds nothing to the dashboards, and the same events committed right then add
/// their delta once.
///
/// This holds on every store, also one that is atomic per member only: a batch's delta covers
/// all of its members' events, so it must not be added when any of them is refused (they will
/// be applied again, and counted then). A store that writes the other members' shares of a
/// refused batch loses their part of the delta until the aggregates are rebuilt: what the port
/// allows, and the adapter documents.
pub async fn refused_batches_add_nothing_to_dashboards(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("dash-fence")?;
    let f = sc.franchise.clone();
    let s = sc.store.clone();
    let (a, b) = (sc.member(1)?, sc.member(2)?);
    let delta = |purchases: u64, tier: &str| {
        let mut d = DashboardDelta::default();
        d.totals.insert(
            (f.clone(), s.clone(), Day(D0)),
            DayTotals {
                member_purchases: purchases,
                member_revenue_cents: 1000 * purchases,
                ..DayTotals::default()
            },
        );
        d.visits.insert(
            (f.clone(), Scope::Store(s.clone()), Day(D0)),
            [(visit(Some(2), None), purchases as i64)].into(),
        );
        d.tiers.insert((f.clone(), tier.to_owned()), 1);
        d
    };
    let ea = sc.enrol(&a)?;
    store.commit(ea.batch_with(0, delta(1, "base"))).await?;
    let a1 = ea.state.clone().ok_or_else(|| anyhow!("no state"))?;
    let b1 = sc.enrolled(store, &b).await?;
    let b2 = sc.bought(store, &b1, 900).await?;
    let before = sorted_rows(store, &f, D0 - 10, D0 + 10).await?;
    let tiers_before = tiers_of(store, &f).await?;
    ensure!(
        before.totals.len() == 1 && before.visits.len() == 1,
        "baseline rows: {before:?}"
    );
    let unchanged = |what: &'static str| {
        let before = before.clone();
        let tiers_before = tiers_before.clone();
        let f = f.clone();
        async move {
            let now = sorted_rows(store, &f, D0 - 10, D0 + 10).await?;
            ensure!(now == before, "{what}: dashboards changed: {now:?}");
            let tiers = tiers_of(store, &f).await?;
            ensure!(tiers == tiers_before, "{what}: tiers changed: {tiers:?}");
            Ok::<_, anyhow::Error>(())
        }
    };

    // A stale member alone.
    let stale = sc.purchase(&b1, 3000)?;
    let r = store
        .commit(stale.batch_with(b1.version, delta(1, "stale")))
        .await;
    ensure!(is_conflict(&r), "stale expected_version: {r:?}");
    unchanged("a stale member's batch").await?;

    // A member enrolled again.
    let twice = sc.enrol(&a)?;
    let r = store.commit(twice.batch_with(0, delta(1, "twice"))).await;
    ensure!(
        is_conflict(&r),
        "expected_version 0 of an existing member: {r:?}"
    );
    unchanged("an existing member enrolled again").await?;

    // An event already recorded.
    let again = sc.purchase(&a1, 700)?;
    let mut batch = again.batch_with(a1.version, delta(1, "replay"));
    batch.processed = vec![ProcessedWrite {
        record: ea.record.clone(),
        insert: true,
    }];
    let r = store.commit(batch).await;
    ensure!(is_conflict(&r), "re-inserting a record: {r:?}");
    unchanged("an event already recorded").await?;

    // A fresh member and a stale one in one batch, with the delta of both.
    let good = sc.purchase(&a1, 1200)?;
    let zombie = sc.purchase(&b1, 3000)?;
    let mut batch = good.batch_with(a1.version, delta(2, "mixed"));
    zombie.add_to(&mut batch, b1.version);
    let r = store.commit(batch).await;
    ensure!(is_conflict(&r), "a batch with a stale member: {r:?}");
    unchanged("a batch with a stale member").await?;
    ensure!(store.member(&b).await?.as_ref() == Some(&b2));

    // The good member's purchase, committed alone (as the engine's retry does when it was not
    // written), adds its delta once.
    let a_now = store.member(&a).await?;
    if a_now.as_ref() == Some(&a1) {
        store
            .commit(good.batch_with(a1.version, delta(1, "retry")))
            .await?;
        let now = sorted_rows(store, &f, D0 - 10, D0 + 10).await?;
        let mut want = before.clone();
        want.totals[0].2.member_purchases += 1;
        want.totals[0].2.member_revenue_cents += 1000;
        let mut row = want.visits[0].2.row();
        for n in row.values_mut() {
            *n += 1;
        }
        want.visits[0].2 = PackedRow::of(&row);
        ensure!(now == want, "the retried batch's delta: {now:?}");
        let mut tiers = tiers_before.clone();
        tiers.push(("retry".into(), 1));
        tiers.sort();
        ensure!(
            tiers_of(store, &f).await? == tiers,
            "the retried batch's tier"
        );
    } else {
        ensure!(
            a_now.as_ref() == good.state.as_ref(),
            "member a neither at v1 nor at the batch's state"
        );
    }
    Ok(())
}

/// `stores_of` lists the stores of the franchise asked, and no other's; a store moved to
/// another franchise is listed there only.
pub async fn stores_of_lists_the_franchise_stores(store: &dyn StateStore) -> R {
    let f = id(FranchiseId::parse("contract-stores"))?;
    let g = id(FranchiseId::parse("contract-stores-other"))?;
    let shop = |sid: &str, franchise: &FranchiseId| -> anyhow::Result<Store> {
        Ok(Store {
            id: id(StoreId::parse(sid))?,
            franchise_id: franchise.clone(),
            name: format!("Shop {sid}"),
            created_at: Timestamp(T0),
        })
    };
    let (s1, s2, s3) = (
        shop("stores-a", &f)?,
        shop("stores-b", &f)?,
        shop("stores-c", &g)?,
    );
    for s in [&s2, &s3, &s1] {
        store.put_store(s).await?;
    }
    let sorted = |mut v: Vec<Store>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    let of_f = sorted(store.stores_of(&f).await?);
    ensure!(
        of_f == vec![s1.clone(), s2.clone()],
        "stores of f: {of_f:?}"
    );
    let of_g = sorted(store.stores_of(&g).await?);
    ensure!(of_g == vec![s3.clone()], "stores of g: {of_g:?}");
    let none = id(FranchiseId::parse("contract-stores-none"))?;
    ensure!(
        store.stores_of(&none).await?.is_empty(),
        "stores of an unknown franchise"
    );

    // Renamed and moved to g.
    let moved = Store {
        franchise_id: g.clone(),
        name: "Moved".into(),
        ..s2.clone()
    };
    store.put_store(&moved).await?;
    let of_f = sorted(store.stores_of(&f).await?);
    ensure!(
        of_f == vec![s1.clone()],
        "stores of f after a move: {of_f:?}"
    );
    let of_g = sorted(store.stores_of(&g).await?);
    ensure!(
        of_g == vec![moved, s3],
        "stores of g after a move: {of_g:?}"
    );
    Ok(())
}

/// The first claim of an event id owns it for good: later claims (another command's, or the
/// same again) get the owner's fingerprint; a repeated id in one call resolves to its first
/// claim; ids of two franchises are independent.
pub async fn claims_first_wins(store: &dyn StateStore) -> R {
    let sc = Scenario::new("claims")?;
    let other = Scenario::new("claims-other")?;
    let e1 = id(EventId::parse("claims-e1"))?;
    let e2 = id(EventId::parse("claims-e2"))?;
    let (a, b, c) = (
        Fingerprint::of(&[b"a"]),
        Fingerprint::of(&[b"b"]),
        Fingerprint::of(&[b"c"]),
    );
    let claim = |f: &FranchiseId, e: &EventId, fp| EventClaim {
        franchise_id: f.clone(),
        event_id: e.clone(),
        fingerprint: fp,
    };
    ensure!(store.claim_events(&[]).await?.is_empty(), "empty claim");
    let got = store
        .claim_events(&[claim(&sc.franchise, &e1, a), claim(&sc.franchise, &e1, b)])
        .await?;
    ensure!(
        got == vec![a, a],
        "first claim in one call must win: {got:?}"
    );
    let got = store
        .claim_events(&[
            claim(&sc.franchise, &e1, c),
            claim(&sc.franchise, &e2, b),
            claim(&other.franchise, &e1, c),
        ])
        .await?;
    ensure!(got == vec![a, b, c], "owners after a second call: {got:?}");
    store.sync().await?;
    let got = store
        .claim_events(&[claim(&sc.franchise, &e1, a), claim(&sc.franchise, &e2, a)])
        .await?;
    ensure!(got == vec![a, b], "claims changed: {got:?}");
    Ok(())
}

/// On a store whose commit is the claim of the event ids it records
/// ([`StateStore::commit_claims_events`]; other stores have nothing to check here): a recorded
/// id is owned by its record's command for every later claim; a batch recording an id that
/// another command claimed is refused and writes nothing; one recording an id its own command
/// claimed is written.
pub async fn commit_is_the_claim(store: &dyn StateStore) -> R {
    if !store.commit_claims_events() {
        return Ok(());
    }
    let mut sc = Scenario::new("commit-claims")?;
    let m = sc.member(1)?;
    let v1 = sc.enrolled(store, &m).await?;
    let other = Fingerprint::of(&[b"another command"]);
    let claim = |r: &ProcessedEvent, fingerprint| EventClaim {
        franchise_id: r.franchise_id.clone(),
        event_id: r.event_id.clone(),
        fingerprint,
    };

    let first = sc.purchase(&v1, 1000)?;
    store.commit(first.batch(v1.version)).await?;
    let got = store.claim_events(&[claim(&first.record, other)]).await?;
    ensure!(
        got == vec![first.record.fingerprint],
        "a recorded id is owned by its record's command: {got:?}"
    );

    let v2 = first.state.clone().ok_or_else(|| anyhow!("no state"))?;
    let ledger = store.ledger(&m, None, 100).await?;
    let second = sc.purchase(&v2, 2000)?;
    store.claim_events(&[claim(&second.record, other)]).await?;
    let r = store.commit(second.batch(v2.version)).await;
    ensure!(
        is_conflict(&r),
        "recording an id another command claimed: {r:?}"
    );
    let events = std::slice::from_ref(&second.record.event_id);
    refusal_wrote_nothing(store, "an id claimed by another", &v2, &ledger, events).await?;

    let third = sc.purchase(&v2, 3000)?;
    store
        .claim_events(&[claim(&third.record, third.record.fingerprint)])
        .await?;
    store.commit(third.batch(v2.version)).await?;
    let found = store
        .processed(&sc.franchise, std::slice::from_ref(&third.record.event_id))
        .await?;
    ensure!(
        found == vec![Some(third.record.clone())],
        "an id claimed by its own command is recorded: {found:?}"
    );
    Ok(())
}

/// A batch refused because one member's condition fails leaves that member's share wholly
/// unwritten and every other member's share either wholly written or wholly absent (a store may
/// commit member by member, as ScyllaDB does), never half of one member: the engine re-reads
/// the store after such a failure and relies on it.
pub async fn refused_batches_are_atomic_per_member(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("partial")?;
    let (a, b) = (sc.member(1)?, sc.member(2)?);
    let a1 = sc.enrolled(store, &a).await?;
    let b1 = sc.enrolled(store, &b).await?;
    let b2 = sc.bought(store, &b1, 900).await?;
    let ledger_b = store.ledger(&b, None, 100).await?;
    let ledger_a = store.ledger(&a, None, 100).await?.len();

    // One batch: a fresh purchase of `a`, and a zombie's purchase of `b` fenced at v1.
    let good = sc.purchase(&a1, 1200)?;
    let stale = sc.purchase(&b1, 3000)?;
    let mut batch = good.batch(a1.version);
    let zombie = stale.batch(b1.version);
    batch.members.extend(zombie.members);
    batch.ledger.extend(zombie.ledger);
    batch.processed.extend(zombie.processed);
    let r = store.commit(batch).await;
    ensure!(is_conflict(&r), "a batch with a stale member: {r:?}");

    let events = std::slice::from_ref(&stale.record.event_id);
    refusal_wrote_nothing(store, "the fenced member", &b2, &ledger_b, events).await?;

    // `a`'s share: all or nothing.
    let state = store.member(&a).await?;
    let ledger = store.ledger(&a, None, 100).await?;
    let rec = store
        .processed(&sc.franchise, std::slice::from_ref(&good.record.event_id))
        .await?;
    let written = state.as_ref() == good.state.as_ref()
        && ledger.len() == ledger_a + good.entries.len()
        && rec == vec![Some(good.record.clone())];
    let absent = state.as_ref() == Some(&a1) && ledger.len() == ledger_a && rec == vec![None];
    ensure!(
        written || absent,
        "member a half written: state {:?}, {} ledger entries, record {:?}",
        state.map(|s| s.version),
        ledger.len(),
        rec.first().map(Option::is_some)
    );
    // Whichever it was, the engine's retry (the same effect if absent) is then accepted.
    if absent {
        store.commit(good.batch(a1.version)).await?;
    }
    ensure!(store.member(&a).await?.as_ref() == good.state.as_ref());
    Ok(())
}

/// Enrols one member (scenario `name`) and returns the state the store now holds.
pub async fn enrol_one(store: &dyn StateStore, name: &str) -> anyhow::Result<MemberState> {
    let mut sc = Scenario::new(name)?;
    let m = sc.member(1)?;
    let enrol = sc.enrol(&m)?;
    store.commit(enrol.batch(0)).await?;
    enrol.state.ok_or_else(|| anyhow!("no state"))
}

/// A sync changes nothing readers see, with or without commits before it.
pub async fn sync_keeps_every_commit(store: &dyn StateStore) -> R {
    store.sync().await?;
    let state = enrol_one(store, "sync").await?;
    store.sync().await?;
    ensure!(store.member(&state.member_id).await?.as_ref() == Some(&state));
    store.sync().await?;
    Ok(())
}

/// Builds domain values for one franchise with the demo program, as the engine would (also for
/// adapters' own tests).
pub struct Scenario {
    pub franchise: FranchiseId,
    pub store: StoreId,
    pub program: Program,
    events: u64,
}

/// One applied command: the member's new state, its ledger entries and its record.
pub struct Effect {
    pub state: Option<MemberState>,
    pub entries: Vec<LedgerEntry>,
    pub record: ProcessedEvent,
}

impl Effect {
    /// Adds this effect to `batch`, fenced by `expected_version`.
    pub fn add_to(&self, batch: &mut EffectBatch, expected_version: u64) {
        let b = self.batch(expected_version);
        batch.members.extend(b.members);
        batch.ledger.extend(b.ledger);
        batch.processed.extend(b.processed);
    }

    /// The batch the engine would commit for this effect, fenced by `expected_version`.
    pub fn batch(&self, expected_version: u64) -> EffectBatch {
        let member_id = self.record.member_id.clone();
        EffectBatch {
            members: self
                .state
                .iter()
                .map(|s| MemberWrite {
                    state: s.clone(),
                    expected_version,
                    due: None,
                })
                .collect(),
            ledger: match member_id {
                Some(m) => self
                    .entries
                    .iter()
                    .map(|e| (m.clone(), e.clone()))
                    .collect(),
                None => Vec::new(),
            },
            processed: vec![ProcessedWrite {
                record: self.record.clone(),
                insert: true,
            }],
            dashboard: DashboardDelta::default(),
            outbox: Vec::new(),
        }
    }

    /// [`Effect::batch`] with a dashboard delta.
    pub fn batch_with(&self, expected_version: u64, dashboard: DashboardDelta) -> EffectBatch {
        EffectBatch {
            dashboard,
            ..self.batch(expected_version)
        }
    }
}

fn id<T>(r: Result<T, loyalty_domain::DomainError>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow!("{e}"))
}

fn is_conflict(r: &loyalty_core::Result<()>) -> bool {
    matches!(r, Err(Error::Conflict(_)))
}

/// What a refused batch (`what`) must leave as it was: the member's stored state (`state`),
/// its ledger (`ledger`, read before the batch) and the absence of a record of each of `events`.
async fn refusal_wrote_nothing(
    store: &dyn StateStore,
    what: &str,
    state: &MemberState,
    ledger: &[LedgerEntry],
    events: &[EventId],
) -> R {
    let member = &state.member_id;
    ensure!(
        store.member(member).await?.as_ref() == Some(state),
        "{what}: the member changed"
    );
    ensure!(
        store.ledger(member, None, 100).await? == ledger,
        "{what}: the ledger changed"
    );
    let found = store.processed(&state.franchise_id, events).await?;
    ensure!(
        found == vec![None; events.len()],
        "{what}: records written: {found:?}"
    );
    Ok(())
}

impl Scenario {
    /// A scenario of franchise `contract-<name>`.
    pub fn new(name: &str) -> anyhow::Result<Scenario> {
        Ok(Scenario {
            franchise: id(FranchiseId::parse(&format!("contract-{name}")))?,
            store: id(StoreId::parse(&format!("store-{name}")))?,
            program: Program::demo(),
            events: 0,
        })
    }

    /// Member `n` (ids sort as the numbers do, below 100 000).
    pub fn member(&self, n: u32) -> anyhow::Result<MemberId> {
        id(MemberId::parse(&format!("{}-m{n:05}", self.franchise)))
    }

    /// A new event id and its time, a minute after the previous one.
    pub fn next_event(&mut self) -> anyhow::Result<(EventId, Timestamp)> {
        self.events += 1;
        let e = id(EventId::parse(&format!(
            "{}-e{}",
            self.franchise, self.events
        )))?;
        Ok((e, Timestamp(T0 + self.events as i64 * 60_000)))
    }

    fn record(
        &self,
        event: &EventId,
        at: Timestamp,
        member: Option<&MemberId>,
        outcome: Outcome,
    ) -> ProcessedEvent {
        ProcessedEvent {
            franchise_id: self.franchise.clone(),
            event_id: event.clone(),
            fingerprint: Fingerprint::of(&[event.as_str().as_bytes()]),
            member_id: member.cloned(),
            store_id: self.store.clone(),
            at,
            outcome,
        }
    }

    /// Applies `cmd` to `state` (a copy: the caller's is untouched).
    pub fn apply(
        &mut self,
        state: Option<&MemberState>,
        member: &MemberId,
        cmd: MemberCommand,
    ) -> anyhow::Result<Effect> {
        let (event, at) = self.next_event()?;
        let mut next = state.cloned();
        let ctx = EventContext {
            event_id: &event,
            store_id: &self.store,
            at,
            program: &self.program,
            program_version: 1,
        };
        let (entries, outcome, changed) =
            match apply(&mut next, member, &self.franchise, &cmd, &ctx) {
                Ok(a) => (a.entries, a.outcome, a.changed),
                Err(r) => (Vec::new(), Outcome::Rejected(r), false),
            };
        Ok(Effect {
            state: if changed { next } else { None },
            entries,
            record: self.record(&event, at, Some(member), outcome),
        })
    }

    /// The enrolment of `member`, with a phone number of its own.
    pub fn enrol(&mut self, member: &MemberId) -> anyhow::Result<Effect> {
        let phone = id(Phone::parse(&format!(
            "+336{:08}",
            self.events % 100_000_000
        )))?;
        self.apply(
            None,
            member,
            MemberCommand::Enrol {
                profile: Profile {
                    phone,
                    name: None,
                    birthday: None,
                    consent: Default::default(),
                    email: None,
                },
            },
        )
    }

    /// A purchase of `cents` by the member of `state`.
    pub fn purchase(&mut self, state: &MemberState, cents: i64) -> anyhow::Result<Effect> {
        self.apply(
            Some(state),
            &state.member_id,
            MemberCommand::Purchase {
                amount: id(Cents::new(cents))?,
                currency: self.program.currency.clone(),
                items: Vec::new(),
            },
        )
    }

    /// Enrols `member` and commits it; returns its stored state.
    async fn enrolled(
        &mut self,
        store: &dyn StateStore,
        member: &MemberId,
    ) -> anyhow::Result<MemberState> {
        let e = self.enrol(member)?;
        store.commit(e.batch(0)).await?;
        e.state
            .ok_or_else(|| anyhow!("enrolment of {member} did not create a state"))
    }

    /// Applies and commits a purchase; returns the new stored state.
    async fn bought(
        &mut self,
        store: &dyn StateStore,
        state: &MemberState,
        cents: i64,
    ) -> anyhow::Result<MemberState> {
        let e = self.purchase(state, cents)?;
        store.commit(e.batch(state.version)).await?;
        e.state
            .ok_or_else(|| anyhow!("purchase of {} changed no state", state.member_id))
    }
}

/// Franchises, stores and API keys read back as written; unknown keys read as `None`.
pub async fn config_round_trips(store: &dyn StateStore) -> R {
    let sc = Scenario::new("config")?;
    let franchise = Franchise {
        id: sc.franchise.clone(),
        name: "Café du Moulin".into(),
        secret: "00ff".repeat(8),
        program_version: 1,
        created_at: Timestamp(T0),
    };
    store.put_franchise(&franchise).await?;
    ensure!(store.franchise(&sc.franchise).await?.as_ref() == Some(&franchise));
    let listed = store.franchises().await?;
    ensure!(
        listed.iter().filter(|f| f.id == sc.franchise).count() == 1,
        "franchises() lists the franchise once: {listed:?}"
    );
    let renamed = Franchise {
        name: "Le Moulin".into(),
        program_version: 2,
        ..franchise
    };
    store.put_franchise(&renamed).await?;
    ensure!(store.franchise(&sc.franchise).await?.as_ref() == Some(&renamed));
    ensure!(store
        .franchise(&id(FranchiseId::parse("contract-none"))?)
        .await?
        .is_none());

    let shop = Store {
        id: sc.store.clone(),
        franchise_id: sc.franchise.clone(),
        name: "Gare".into(),
        created_at: Timestamp(T0),
    };
    store.put_store(&shop).await?;
    ensure!(store.store(&sc.store).await?.as_ref() == Some(&shop));
    ensure!(store
        .store(&id(StoreId::parse("store-none"))?)
        .await?
        .is_none());

    let key = contract_key(
        &sc,
        "k_00000000000000000c01",
        Role::Store,
        "hash-contract-1",
    );
    store.put_api_key(&key, None).await?;
    let principal = Principal {
        role: Role::Store,
        franchise_id: Some(sc.franchise.clone()),
        store_id: Some(sc.store.clone()),
        key_id: Some(key.id.clone()),
    };
    ensure!(store.api_key("hash-contract-1").await?.as_ref() == Some(&principal));
    ensure!(store.api_key("hash-contract-none").await?.is_none());
    Ok(())
}

/// A program version is written once: a second write of it is a `Conflict` and changes nothing.
pub async fn programs_are_write_once(store: &dyn StateStore) -> R {
    let sc = Scenario::new("programs")?;
    let demo = Program::demo();
    store.put_program(&sc.franchise, 1, &demo).await?;
    ensure!(store.program(&sc.franchise, 1).await?.as_ref() == Some(&demo));
    let mut other = Program::demo();
    other.signup_bonus = 999;
    let again = store.put_program(&sc.franchise, 1, &other).await;
    ensure!(is_conflict(&again), "second write of version 1: {again:?}");
    ensure!(
        store.program(&sc.franchise, 1).await?.as_ref() == Some(&demo),
        "version 1 changed by a refused write"
    );
    store.put_program(&sc.franchise, 2, &other).await?;
    ensure!(store.program(&sc.franchise, 2).await?.as_ref() == Some(&other));
    ensure!(store.program(&sc.franchise, 3).await?.is_none());
    Ok(())
}

/// After a commit, the member state, its ledger entries and its records are all readable.
pub async fn commit_is_readable(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("commit")?;
    let m = sc.member(1)?;
    ensure!(store.member(&m).await?.is_none());
    let enrol = sc.enrol(&m)?;
    let state = enrol.state.clone().ok_or_else(|| anyhow!("no state"))?;
    ensure!(
        !enrol.entries.is_empty(),
        "the demo program has a signup bonus"
    );
    store.commit(enrol.batch(0)).await?;
    ensure!(store.member(&m).await?.as_ref() == Some(&state));
    ensure!(store.ledger(&m, None, 100).await? == enrol.entries);

    let buy = sc.purchase(&state, 1234)?;
    store.commit(buy.batch(state.version)).await?;
    let after = buy.state.clone().ok_or_else(|| anyhow!("no state"))?;
    ensure!(store.member(&m).await?.as_ref() == Some(&after));
    let mut all: Vec<LedgerEntry> = enrol.entries.iter().chain(&buy.entries).cloned().collect();
    all.reverse();
    ensure!(
        store.ledger(&m, None, 100).await? == all,
        "ledger newest first"
    );

    let unknown = id(EventId::parse("contract-commit-unknown"))?;
    let found = store
        .processed(
            &sc.franchise,
            &[
                buy.record.event_id.clone(),
                unknown,
                enrol.record.event_id.clone(),
            ],
        )
        .await?;
    ensure!(
        found == vec![Some(buy.record.clone()), None, Some(enrol.record.clone())],
        "processed() answers in the order asked: {found:?}"
    );
    let other = id(FranchiseId::parse("contract-other"))?;
    ensure!(
        store
            .processed(&other, std::slice::from_ref(&buy.record.event_id))
            .await?
            == vec![None],
        "records are per franchise"
    );
    ensure!(store.commit(EffectBatch::default()).await.is_ok());
    Ok(())
}

/// A stale or wrong `expected_version` is a `Conflict` and writes nothing of the batch.
pub async fn versions_fence_writes(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("fence")?;
    let m = sc.member(1)?;
    let v1 = sc.enrolled(store, &m).await?;
    let v2 = sc.bought(store, &v1, 1000).await?;
    let ledger_before = store.ledger(&m, None, 100).await?;

    // A zombie writer that still believes the member is at v1: same seq numbers as v2's.
    let stale = sc.purchase(&v1, 5000)?;
    let r = store.commit(stale.batch(v1.version)).await;
    ensure!(is_conflict(&r), "stale expected_version: {r:?}");
    // Enrolling an existing member again (expected 0), its signup bonus at seq 1 again.
    let twice = sc.enrol(&m)?;
    let r = store.commit(twice.batch(0)).await;
    ensure!(
        is_conflict(&r),
        "expected_version 0 of an existing member: {r:?}"
    );
    // A version from the future.
    let future = sc.purchase(&v2, 700)?;
    let r = store.commit(future.batch(v2.version + 5)).await;
    ensure!(
        is_conflict(&r),
        "expected_version ahead of the store: {r:?}"
    );

    let refused = [
        stale.record.event_id.clone(),
        twice.record.event_id.clone(),
        future.record.event_id.clone(),
    ];
    refusal_wrote_nothing(store, "fenced batches", &v2, &ledger_before, &refused).await?;

    // The right version still goes through, and the refused events can then be applied.
    let retry = sc.purchase(&v2, 700)?;
    store.commit(retry.batch(v2.version)).await?;
    ensure!(store.member(&m).await?.as_ref() == retry.state.as_ref());
    Ok(())
}

/// Inserting a record that already exists is a `Conflict`, and the member's batch is refused
/// whole.
pub async fn existing_records_refuse_inserts(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("dup")?;
    let m = sc.member(1)?;
    let v1 = sc.enrolled(store, &m).await?;
    let first = sc.purchase(&v1, 1000)?;
    store.commit(first.batch(v1.version)).await?;
    let v2 = first.state.clone().ok_or_else(|| anyhow!("no state"))?;
    let ledger_before = store.ledger(&m, None, 100).await?;

    // A new purchase, correctly fenced, whose batch also re-inserts the first purchase's record.
    let second = sc.purchase(&v2, 2000)?;
    let mut batch = second.batch(v2.version);
    let mut replayed = first.record.clone();
    replayed.store_id = id(StoreId::parse("store-elsewhere"))?;
    batch.processed.push(ProcessedWrite {
        record: replayed,
        insert: true,
    });
    let r = store.commit(batch).await;
    ensure!(is_conflict(&r), "re-inserting a record: {r:?}");
    ensure!(store.member(&m).await?.as_ref() == Some(&v2));
    ensure!(store.ledger(&m, None, 100).await? == ledger_before);
    let found = store
        .processed(
            &sc.franchise,
            &[
                first.record.event_id.clone(),
                second.record.event_id.clone(),
            ],
        )
        .await?;
    ensure!(
        found == vec![Some(first.record.clone()), None],
        "a refused batch changed records: {found:?}"
    );

    // The same event applied again (a redelivery processed without its record) is refused too.
    let again = sc.purchase(&v2, 2000)?;
    let mut batch = again.batch(v2.version);
    batch.processed = vec![ProcessedWrite {
        record: first.record.clone(),
        insert: true,
    }];
    let r = store.commit(batch).await;
    ensure!(is_conflict(&r), "re-applying a recorded event: {r:?}");
    ensure!(store.member(&m).await?.as_ref() == Some(&v2));

    // Without the duplicate, the second purchase goes through.
    store.commit(second.batch(v2.version)).await?;
    ensure!(store.member(&m).await?.as_ref() == second.state.as_ref());
    Ok(())
}

/// `insert: false` replaces a record (a purchase updated by a refund).
pub async fn records_can_be_replaced(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("replace")?;
    let m = sc.member(1)?;
    let v1 = sc.enrolled(store, &m).await?;
    let buy = sc.purchase(&v1, 1000)?;
    store.commit(buy.batch(v1.version)).await?;
    let mut updated = buy.record.clone();
    match &mut updated.outcome {
        Outcome::Purchase(p) => {
            p.refunded_cents = 400;
            p.reversed_points = 4;
        }
        other => bail!("a purchase recorded {other:?}"),
    }
    store
        .commit(EffectBatch {
            processed: vec![ProcessedWrite {
                record: updated.clone(),
                insert: false,
            }],
            ..EffectBatch::default()
        })
        .await?;
    ensure!(
        store
            .processed(&sc.franchise, std::slice::from_ref(&buy.record.event_id))
            .await?
            == vec![Some(updated)]
    );
    Ok(())
}

/// Records of events without a member (anonymous sales) and of unknown members are kept and
/// refused twice like any other.
pub async fn anonymous_records(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("anon")?;
    let (event, at) = sc.next_event()?;
    let sale = sc.record(
        &event,
        at,
        None,
        Outcome::AnonymousSale {
            amount_cents: id(Cents::new(1500))?,
        },
    );
    let batch = EffectBatch {
        processed: vec![ProcessedWrite {
            record: sale.clone(),
            insert: true,
        }],
        ..EffectBatch::default()
    };
    store.commit(batch.clone()).await?;
    ensure!(
        store
            .processed(&sc.franchise, std::slice::from_ref(&event))
            .await?
            == vec![Some(sale)]
    );
    let r = store.commit(batch).await;
    ensure!(is_conflict(&r), "anonymous record inserted twice: {r:?}");

    // A purchase for a member who never enrolled: rejected, recorded, no state.
    let ghost = sc.member(404)?;
    let rejected = sc.apply(
        None,
        &ghost,
        MemberCommand::Purchase {
            amount: id(Cents::new(100))?,
            currency: sc.program.currency.clone(),
            items: Vec::new(),
        },
    )?;
    ensure!(rejected.state.is_none());
    ensure!(rejected.record.outcome == Outcome::Rejected(Rejection::UnknownMember));
    store.commit(rejected.batch(0)).await?;
    ensure!(store.member(&ghost).await?.is_none());
    ensure!(
        store
            .processed(
                &sc.franchise,
                std::slice::from_ref(&rejected.record.event_id)
            )
            .await?
            == vec![Some(rejected.record.clone())]
    );
    Ok(())
}

/// The ledger reads newest first, pages with `before`, and honours `limit`.
pub async fn ledger_pages_newest_first(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("ledger")?;
    let m = sc.member(1)?;
    let mut state = sc.enrolled(store, &m).await?;
    for i in 0..24 {
        state = sc.bought(store, &state, 100 + i).await?;
    }
    let last = state.last_seq;
    ensure!(last >= 25, "expected at least 25 entries, got {last}");

    let page = store.ledger(&m, None, 10).await?;
    let seqs: Vec<u64> = page.iter().map(|e| e.seq).collect();
    ensure!(
        seqs == (last - 9..=last).rev().collect::<Vec<_>>(),
        "first page: {seqs:?}"
    );
    let next = store.ledger(&m, Some(last - 9), 10).await?;
    let seqs: Vec<u64> = next.iter().map(|e| e.seq).collect();
    ensure!(
        seqs == (last - 19..=last - 10).rev().collect::<Vec<_>>(),
        "second page: {seqs:?}"
    );
    ensure!(store.ledger(&m, Some(1), 10).await?.is_empty());
    ensure!(store.ledger(&m, None, 0).await?.is_empty());
    ensure!(store.ledger(&sc.member(2)?, None, 10).await?.is_empty());

    // A full walk in pages of 7 sees every entry once, in descending order, summing to the
    // balance.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store.ledger(&m, before, 7).await?;
        let Some(oldest) = page.last() else { break };
        before = Some(oldest.seq);
        seen.extend(page);
    }
    whole_ledger(&seen, &state).context("full walk")
}

/// `entries` are all of `state`'s member's ledger, newest first (`state.last_seq` down to 1),
/// summing to its balance.
fn whole_ledger(entries: &[LedgerEntry], state: &MemberState) -> R {
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    ensure!(
        seqs == (1..=state.last_seq).rev().collect::<Vec<_>>(),
        "sequences {seqs:?}"
    );
    let sum: i64 = entries.iter().map(|e| e.points).sum();
    ensure!(
        u64::try_from(sum).ok() == Some(state.points),
        "ledger sums to {sum}, balance is {}",
        state.points
    );
    Ok(())
}

/// Batches that hold several commands of one member (the engine's usual batch) page like
/// entries committed one by one: from every `before`, with every page size, whether a page
/// ends inside one batch's entries or between two batches.
pub async fn ledger_pages_across_batches_of_many_entries(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("ledger-batches")?;
    let m = sc.member(1)?;
    let mut state = sc.enrolled(store, &m).await?;
    for purchases in [5, 1, 9, 3] {
        let expected_version = state.version;
        let mut batch = EffectBatch::default();
        for i in 0..purchases {
            let e = sc.purchase(&state, 150 + 10 * i)?;
            let b = e.batch(expected_version);
            batch.ledger.extend(b.ledger);
            batch.processed.extend(b.processed);
            state = e
                .state
                .ok_or_else(|| anyhow!("a purchase changed no state"))?;
        }
        batch.members.push(MemberWrite {
            state: state.clone(),
            expected_version,
            due: None,
        });
        store.commit(batch).await?;
    }
    let last = state.last_seq;
    ensure!(last >= 19, "expected at least 19 entries, got {last}");
    let all = store.ledger(&m, None, 1000).await?;
    whole_ledger(&all, &state).context("whole ledger")?;
    for before in 1..=last + 1 {
        for limit in 1..=4 {
            let page = store.ledger(&m, Some(before), limit).await?;
            let want: Vec<&LedgerEntry> =
                all.iter().filter(|e| e.seq < before).take(limit).collect();
            ensure!(
                page.iter().collect::<Vec<_>>() == want,
                "before {before}, limit {limit}: {:?}",
                page.iter().map(|e| e.seq).collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}

/// `members_after` pages through every member exactly once (in the adapter's scan order),
/// skipping records without a member state.
pub async fn members_scan_once(store: &dyn StateStore) -> R {
    let mut sc = Scenario::new("scan")?;
    let mut mine = HashSet::new();
    for n in 0..23 {
        let m = sc.member(n)?;
        sc.enrolled(store, &m).await?;
        mine.insert(m);
    }
    // State-less partitions in between: an anonymous sale and an unknown member's rejection.
    let (event, at) = sc.next_event()?;
    let sale = sc.record(
        &event,
        at,
        None,
        Outcome::AnonymousSale {
            amount_cents: id(Cents::new(10))?,
        },
    );
    store
        .commit(EffectBatch {
            processed: vec![ProcessedWrite {
                record: sale,
                insert: true,
            }],
            ..EffectBatch::default()
        })
        .await?;
    let ghost = sc.member(999)?;
    let rejected = sc.apply(
        None,
        &ghost,
        MemberCommand::Purchase {
            amount: id(Cents::new(100))?,
            currency: sc.program.currency.clone(),
            items: Vec::new(),
        },
    )?;
    store.commit(rejected.batch(0)).await?;

    for page in [1usize, 5, 23, 1000] {
        let mut seen: Vec<MemberId> = Vec::new();
        let mut after: Option<MemberId> = None;
        for _ in 0..100_000 {
            let members = store.members_after(after.as_ref(), page).await?;
            ensure!(
                members.len() <= page,
                "page of {page} has {}",
                members.len()
            );
            let Some(last) = members.last() else { break };
            after = Some(last.member_id.clone());
            let short = members.len() < page;
            seen.extend(members.into_iter().map(|s| s.member_id));
            if short {
                break;
            }
        }
        let unique: HashSet<&MemberId> = seen.iter().collect();
        ensure!(
            unique.len() == seen.len(),
            "pages of {page}: a member was returned twice"
        );
        for m in &mine {
            ensure!(unique.contains(m), "pages of {page}: {m} never returned");
        }
        ensure!(
            !unique.contains(&ghost),
            "pages of {page}: a member without state was returned"
        );
    }
    ensure!(store.members_after(None, 0).await?.is_empty());
    Ok(())
}

/// The re-index's capabilities: [`StateStore::partition_members`] lists, in member id order
/// and in pages, the members of one franchise whose due entry is of the partition (one with
/// nothing due included; a member stored with `due: None` only, as before the index existed,
/// left out), with their state and due time; [`StateStore::put_due`] writes an entry alone,
/// fenced by the member's version (a stale or missing member is a `Conflict` that writes no
/// entry of theirs), can move a member to another partition or clear its due time; the marks
/// of [`StateStore::put_reindex_mark`] round trip per partition.
pub async fn reindex_lists_fences_and_marks(store: &dyn StateStore) -> R {
    use loyalty_core::ports::{DueWrite, IndexedMember, ReindexMark};
    let (p, other) = (7_101, 7_102);
    let mut sc = Scenario::new("reindex")?;
    let mut theirs = Scenario::new("reindex-other")?;
    let f = sc.franchise.clone();
    let mut states = Vec::new();
    for (n, partition, due) in [
        (1, Some(p), Some(10)),
        (2, Some(p), None),
        (3, Some(other), Some(5)),
        (4, None, None),
    ] {
        let m = sc.member(n)?;
        let e = sc.enrol(&m)?;
        let batch = match partition {
            Some(partition) => due_in(e.batch(0), partition, due.map(|d| T0 + d * DAY)),
            // Stored without an entry, as before the due index existed.
            None => e.batch(0),
        };
        store.commit(batch).await?;
        states.push(e.state.ok_or_else(|| anyhow!("no state"))?);
    }
    let m = theirs.member(1)?;
    let e = theirs.enrol(&m)?;
    store.commit(due_in(e.batch(0), p, Some(T0))).await?;
    let indexed = |i: usize, day: Option<i64>| IndexedMember {
        state: states[i].clone(),
        due: day.map(|d| Timestamp(T0 + d * DAY)),
    };
    let list = |partition: u32, after: Option<MemberId>, limit: usize| {
        let f = f.clone();
        async move {
            store
                .partition_members(partition, &f, after.as_ref(), limit)
                .await
        }
    };
    ensure!(
        list(p, None, 10).await? == vec![indexed(0, Some(10)), indexed(1, None)],
        "the franchise's members of the partition, nothing due included, the unindexed left out"
    );
    ensure!(
        list(p, None, 1).await? == vec![indexed(0, Some(10))],
        "limit"
    );
    let m1 = states[0].member_id.clone();
    ensure!(
        list(p, Some(m1.clone()), 1).await? == vec![indexed(1, None)],
        "after is exclusive"
    );
    ensure!(list(p, Some(states[1].member_id.clone()), 1)
        .await?
        .is_empty());
    ensure!(
        list(other, None, 10).await? == vec![indexed(2, Some(5))],
        "by partition"
    );
    let due_by = |day: i64| store.due_members(p, Timestamp(T0 + day * DAY), 10);
    let due_ids = |d: Vec<DueMember>| d.into_iter().map(|d| d.member_id).collect::<Vec<_>>();
    ensure!(
        due_ids(due_by(20).await?).len() == 2,
        "nothing due is never due (member 2), the other franchise's is"
    );

    // An entry alone: the unindexed member 4 joins the partition, member 2 gets a due time.
    let write = |i: usize, version: u64, partition: u32, day: Option<i64>| DueWrite {
        member_id: states[i].member_id.clone(),
        franchise_id: f.clone(),
        version,
        due: Due {
            partition,
            at: day.map(|d| Timestamp(T0 + d * DAY)),
        },
    };
    store
        .put_due(&[
            write(3, states[3].version, p, Some(3)),
            write(1, states[1].version, p, Some(2)),
        ])
        .await?;
    ensure!(
        list(p, None, 10).await?
            == vec![
                indexed(0, Some(10)),
                indexed(1, Some(2)),
                indexed(3, Some(3))
            ],
        "put_due lists and sets"
    );
    let mine: Vec<MemberId> = due_ids(due_by(20).await?)
        .into_iter()
        .filter(|m| m.as_str().starts_with(f.as_str()) && !m.as_str().contains("other"))
        .collect();
    ensure!(
        mine == vec![
            states[1].member_id.clone(),
            states[3].member_id.clone(),
            m1.clone()
        ],
        "put_due's times are due: {mine:?}"
    );

    // Fenced: a stale version writes nothing of that member; a missing member neither.
    let stale = store
        .put_due(&[write(0, states[0].version + 1, p, Some(1))])
        .await;
    ensure!(is_conflict(&stale), "stale version: {stale:?}");
    let ghost = DueWrite {
        member_id: sc.member(99)?,
        ..write(0, 1, p, Some(1))
    };
    let missing = store.put_due(&[ghost]).await;
    ensure!(is_conflict(&missing), "missing member: {missing:?}");
    ensure!(
        list(p, None, 1).await? == vec![indexed(0, Some(10))],
        "a refused write moved the entry"
    );
    ensure!(
        list(p, Some(sc.member(98)?), 10).await?.is_empty(),
        "a refused write listed a missing member"
    );

    // Cleared: listed with nothing due, no longer due. Moved: listed in its new partition only.
    store
        .put_due(&[write(3, states[3].version, p, None)])
        .await?;
    ensure!(list(p, Some(states[1].member_id.clone()), 10).await? == vec![indexed(3, None)]);
    store
        .put_due(&[write(1, states[1].version, other, Some(4))])
        .await?;
    ensure!(
        list(p, None, 10).await? == vec![indexed(0, Some(10)), indexed(3, None)],
        "a moved member left its old partition"
    );
    ensure!(list(other, None, 10).await? == vec![indexed(1, Some(4)), indexed(2, Some(5))]);
    ensure!(store.put_due(&[]).await.is_ok(), "nothing to write");

    // Marks round trip, per partition.
    ensure!(store.reindex_mark(p).await?.is_none(), "no mark yet");
    let mut mark = ReindexMark {
        all_members: true,
        ..ReindexMark::default()
    };
    mark.programs.insert(f.clone(), 3);
    store.put_reindex_mark(p, &mark).await?;
    ensure!(store.reindex_mark(p).await? == Some(mark.clone()));
    ensure!(store.reindex_mark(other).await?.is_none(), "by partition");
    mark.programs.insert(theirs.franchise.clone(), 1);
    store.put_reindex_mark(p, &mark).await?;
    ensure!(store.reindex_mark(p).await? == Some(mark), "replaced");
    Ok(())
}

/// What a member's profile holds in [`personal_data_is_sealed_and_resealed`]: none of these
/// may appear in the store's bytes.
pub const SEALED_PROFILE_CLEAR: [&str; 4] = [
    "+33687650123",
    "Zephyrine",
    "1987-03-29",
    "zephyrine.q@example.org",
];

/// Personal data at rest (README "Personal data at rest"), on the adapter's own storage:
/// `open(ring)` opens the same data with a key ring, `raw()` returns every stored byte of its
/// members (the file, or the table's rows).
///
/// A member written holds its profile sealed (no clear field in the stored bytes), reads back
/// whole under the same ring and under a rotated one (the new key first, the old one kept);
/// [`loyalty_core::sealing::reseal_members`] writes it again under the new key, after which a
/// ring without the old key reads it; and a ring without the key that sealed a member refuses
/// it loudly ([`Error::Corrupt`]), never reading it as a member without a profile.
pub async fn personal_data_is_sealed_and_resealed<Open, OpenFut, Raw, RawFut>(
    open: Open,
    raw: Raw,
) -> R
where
    Open: Fn(loyalty_core::sealing::KeyRing) -> OpenFut,
    OpenFut: std::future::Future<Output = anyhow::Result<Arc<dyn StateStore>>>,
    Raw: Fn() -> RawFut,
    RawFut: std::future::Future<Output = anyhow::Result<Vec<u8>>>,
{
    use loyalty_core::sealing::{reseal_members, KeyRing};
    let spec = |id: &str| KeyRing::new_key_spec(id).map_err(|e| anyhow!("{e}"));
    let ring = |s: &str| KeyRing::parse(s).map_err(|e| anyhow!("{e}"));
    let (k1, k2) = (spec("k1")?, spec("k2")?);
    let clear_in = |bytes: &[u8]| {
        SEALED_PROFILE_CLEAR
            .iter()
            .filter(|c| bytes.windows(c.len()).any(|w| w == c.as_bytes()))
            .copied()
            .collect::<Vec<_>>()
    };

    let store = open(ring(&k1)?).await?;
    let mut sc = Scenario::new("sealed")?;
    let m = sc.member(1)?;
    let mut enrol = sc.enrol(&m)?;
    let state = enrol.state.as_mut().ok_or_else(|| anyhow!("no state"))?;
    state.profile = Profile {
        phone: id(Phone::parse(SEALED_PROFILE_CLEAR[0]))?,
        name: Some(SEALED_PROFILE_CLEAR[1].into()),
        birthday: Some(SEALED_PROFILE_CLEAR[2].into()),
        consent: loyalty_domain::Consent {
            sms: true,
            email: true,
        },
        email: Some(SEALED_PROFILE_CLEAR[3].into()),
    };
    let state = state.clone();
    store.commit(enrol.batch(0)).await?;
    store.sync().await?;
    ensure!(
        store.member(&m).await?.as_ref() == Some(&state),
        "read back under its ring"
    );
    drop(store);
    let found = clear_in(&raw().await?);
    ensure!(
        found.is_empty(),
        "personal data in clear in the store: {found:?}"
    );

    // Rotated: the new key first, the old one kept.
    let store = open(ring(&format!("{k2},{k1}"))?).await?;
    ensure!(
        store.member(&m).await?.as_ref() == Some(&state),
        "read under the rotated ring"
    );
    let report = reseal_members(store.as_ref()).await?;
    ensure!(
        report.members == 1 && report.changed_meanwhile == 0,
        "{report:?}"
    );
    ensure!(
        store.member(&m).await?.as_ref() == Some(&state),
        "resealing changes nothing"
    );
    drop(store);
    ensure!(
        clear_in(&raw().await?).is_empty(),
        "personal data in clear after the reseal"
    );

    // The old key dropped: the member was resealed under the new one.
    let store = open(ring(&k2)?).await?;
    ensure!(
        store.member(&m).await?.as_ref() == Some(&state),
        "read without the old key"
    );
    drop(store);
    // A ring without the key: refused, loudly.
    let store = open(ring(&k1)?).await?;
    match store.member(&m).await {
        Err(Error::Corrupt(msg)) => ensure!(msg.contains("k2"), "{msg}"),
        other => bail!("a member sealed with a key the ring lacks: {other:?}"),
    }
    Ok(())
}
