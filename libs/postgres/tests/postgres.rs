//! What the PostgreSQL adapter promises beyond the shared contract suite, on a real server:
//! migrations (idempotent, safe when concurrent, refused when edited; `connect` needs them),
//! event-id claims (first wins, durable across kill -9 of the server, one owner under
//! concurrency), fencing under a real race, whole-batch atomicity, large batches, and outages
//! reported as `Unavailable` with the pool recovering by itself.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use common::{fp, fresh, raw, server, store, Sim};
use loyalty_core::ports::{EffectBatch, EventClaim, StateStore};
use loyalty_core::Error;
use loyalty_domain::{EventId, FranchiseId};
use loyalty_postgres::{migrate, PostgresStore, MIGRATIONS};

fn versions() -> Vec<u32> {
    MIGRATIONS.iter().map(|m| m.version).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_before_migrate_fails_naming_the_fix() -> anyhow::Result<()> {
    let Some(server) = server() else {
        return Ok(());
    };
    let config = fresh(&server, "unmigrated")?;
    let err = PostgresStore::connect(&config, loyalty_core::sealing::KeyRing::dev())
        .await
        .err()
        .context("connect before migrate succeeded")?;
    let text = err.to_string();
    ensure!(matches!(err, Error::Invalid(_)), "{err:?}");
    ensure!(text.contains("run `loyalty migrate`"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_recorded() -> anyhow::Result<()> {
    let Some(server) = server() else {
        return Ok(());
    };
    let config = fresh(&server, "idempotent")?;
    ensure!(migrate(&config).await? == versions(), "first migrate");
    ensure!(
        migrate(&config).await?.is_empty(),
        "second migrate applied something"
    );
    ensure!(
        migrate(&config).await?.is_empty(),
        "third migrate applied something"
    );
    let store = PostgresStore::connect(&config, loyalty_core::sealing::KeyRing::dev()).await?;
    ensure!(store.franchises().await?.is_empty());

    let client = raw(&config).await?;
    let rows = client
        .query(
            "SELECT version, name, checksum, applied_at IS NOT NULL FROM schema_migrations \
             ORDER BY version",
            &[],
        )
        .await?;
    ensure!(
        rows.len() == MIGRATIONS.len(),
        "{} rows recorded",
        rows.len()
    );
    for (row, m) in rows.iter().zip(MIGRATIONS) {
        ensure!(row.get::<_, i32>(0) == m.version as i32);
        ensure!(row.get::<_, String>(1) == m.name);
        ensure!(row.get::<_, String>(2) == m.checksum());
        ensure!(row.get::<_, bool>(3));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_each_version_once() -> anyhow::Result<()> {
    let Some(server) = server() else {
        return Ok(());
    };
    let config = fresh(&server, "concurrent")?;
    let runs = futures::future::join_all((0..6).map(|_| {
        let config = config.clone();
        tokio::spawn(async move { migrate(&config).await })
    }))
    .await;
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run??);
    }
    applied.sort_unstable();
    ensure!(
        applied == versions(),
        "six concurrent migrate calls applied {applied:?} in all"
    );
    PostgresStore::connect(&config, loyalty_core::sealing::KeyRing::dev()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_migrated_or_edited_schema_is_refused() -> anyhow::Result<()> {
    let Some(server) = server() else {
        return Ok(());
    };
    let config = fresh(&server, "edited")?;
    migrate(&config).await?;
    let client = raw(&config).await?;

    // As if this build were newer than the schema: 0004_api_key_ids (and every migration
    // after it) is pending, and a key was stored the way the schema before it stored them.
    let last = MIGRATIONS
        .iter()
        .find(|m| m.name == "api_key_ids")
        .context("no api_key_ids migration")?;
    let later: Vec<u32> = MIGRATIONS
        .iter()
        .map(|m| m.version)
        .filter(|v| *v >= last.version)
        .collect();
    ensure!(later == [4, 5, 6, 7, 8], "undo {later:?} here");
    client
        .batch_execute(&format!(
            "DROP TABLE outbox; DROP TABLE reindex_marks; DROP TABLE dashboard_segments; \
             DROP TABLE member_due; DROP TABLE api_key_records; \
             DELETE FROM schema_migrations WHERE version >= {}; \
             INSERT INTO api_keys (key_hash, body) VALUES ('legacy-hash', \
             convert_to('{{\"role\":\"store\",\"franchise_id\":\"f_legacy\",\"store_id\":\"s_legacy\"}}', 'UTF8'))",
            last.version
        ))
        .await?;
    let err = PostgresStore::connect(&config, loyalty_core::sealing::KeyRing::dev())
        .await
        .err()
        .context("connect to a partly migrated schema succeeded")?
        .to_string();
    ensure!(
        err.contains(&last.label()) && err.contains("run `loyalty migrate`"),
        "{err}"
    );
    ensure!(migrate(&config).await? == later);
    let store = PostgresStore::connect(&config, loyalty_core::sealing::KeyRing::dev()).await?;
    // The older key got its record under the id the other stores derive for it, and works.
    let id = loyalty_core::identity::legacy_api_key_id("legacy-hash");
    let p = store
        .api_key("legacy-hash")
        .await?
        .context("the older key no longer works")?;
    ensure!(p.key_id.as_deref() == Some(id.as_str()), "{p:?}");
    ensure!(p.role == loyalty_core::model::Role::Store, "{p:?}");
    let franchise = FranchiseId::parse("f_legacy")?;
    let keys = store.api_keys_of(&franchise).await?;
    ensure!(keys.len() == 1, "{keys:?}");
    ensure!(keys[0].id == id && keys[0].key_hash == "legacy-hash" && keys[0].version == 1);
    ensure!(
        keys[0].prefix == "lk_store_"
            && keys[0].store_id.as_ref().map(|s| s.as_str()) == Some("s_legacy")
    );
    drop(store);

    // A recorded migration whose text changed is refused by migrate and by connect.
    client
        .execute(
            "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1",
            &[],
        )
        .await?;
    let err = migrate(&config)
        .await
        .err()
        .context("migrate accepted an edited migration")?;
    ensure!(matches!(err, Error::Invalid(_)), "{err:?}");
    ensure!(
        err.to_string().contains("changed after it was applied"),
        "{err}"
    );
    ensure!(
        PostgresStore::connect(&config, loyalty_core::sealing::KeyRing::dev())
            .await
            .is_err()
    );
    Ok(())
}

fn claims(franchise: &FranchiseId, n: usize, tag: &str) -> anyhow::Result<Vec<EventClaim>> {
    (0..n)
        .map(|i| {
            Ok(EventClaim {
                franchise_id: franchise.clone(),
                event_id: EventId::parse(&format!("claim-{i}"))
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
                fingerprint: fp(&format!("{tag}-{i}")),
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_first_wins_and_survive_kill_9() -> anyhow::Result<()> {
    let Some(mut server) = server() else {
        return Ok(());
    };
    let (config, store) = store(&server, "claims").await?;
    let f = FranchiseId::parse("pg-claims").map_err(|e| anyhow::anyhow!("{e}"))?;
    let g = FranchiseId::parse("pg-claims-other").map_err(|e| anyhow::anyhow!("{e}"))?;

    // A thousand claims in one call, with duplicates inside it: the first of each id wins.
    let mut first = claims(&f, 1000, "a")?;
    let dups: Vec<EventClaim> = claims(&f, 10, "dup")?;
    first.extend(dups);
    let owners = store.claim_events(&first).await?;
    ensure!(owners.len() == first.len());
    for (i, o) in owners.iter().enumerate() {
        ensure!(*o == fp(&format!("a-{}", i % 1000)), "owner of claim {i}");
    }
    // The same ids in another franchise are other ids.
    let other = store.claim_events(&claims(&g, 3, "g")?).await?;
    ensure!(other == vec![fp("g-0"), fp("g-1"), fp("g-2")]);

    // And a commit, acknowledged just before the crash.
    let mut sim = Sim::new("claims")?;
    let m = sim.member(1)?;
    let enrolled = sim.enrol(&m)?;
    store.commit(enrolled.batch(0)).await?;

    // kill -9 of the whole server right after the claims were acknowledged.
    server.kill();
    ensure!(!server.is_running());
    let down = store.claim_events(&claims(&f, 1, "late")?).await;
    ensure!(
        matches!(down, Err(Error::Unavailable(_))),
        "a claim while the server is down: {down:?}"
    );
    server.restart()?;

    // Every claim is still there: later claims get the first owners, whoever asks.
    let again = PostgresStore::connect(&config, loyalty_core::sealing::KeyRing::dev()).await?;
    let owners = again.claim_events(&claims(&f, 1000, "b")?).await?;
    for (i, o) in owners.iter().enumerate() {
        ensure!(
            *o == fp(&format!("a-{i}")),
            "claim {i} lost or changed by the crash"
        );
    }
    ensure!(
        again.member(&m).await?.as_ref() == enrolled.state.as_ref(),
        "a commit acknowledged before the crash was lost"
    );
    // The old store's pool recovers by itself once the server is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.claim_events(&claims(&g, 3, "h")?).await {
            Ok(o) => {
                ensure!(o == vec![fp("g-0"), fp("g-1"), fp("g-2")]);
                break;
            }
            Err(Error::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_agree_on_one_owner() -> anyhow::Result<()> {
    let Some(server) = server() else {
        return Ok(());
    };
    let (config, a) = store(&server, "claim_race").await?;
    let b = PostgresStore::connect(&config, loyalty_core::sealing::KeyRing::dev()).await?;
    let f = FranchiseId::parse("pg-race").map_err(|e| anyhow::anyhow!("{e}"))?;
    for round in 0..5 {
        // Same ids, different fingerprints, claimed at once by two stores, in opposite orders.
        let tag = format!("r{round}");
        let mut ca = claims(&f, 400, &format!("{tag}-a"))?;
        let mut cb = claims(&f, 400, &format!("{tag}-b"))?;
        for c in ca.iter_mut().chain(cb.iter_mut()) {
            c.event_id = EventId::parse(&format!("{tag}-{}", c.event_id))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        cb.reverse();
        let (ra, rb) = tokio::join!(a.claim_events(&ca), b.claim_events(&cb));
        let (ra, mut rb) = (ra?, rb?);
        rb.reverse();
        ensure!(
            ra == rb,
            "round {round}: the two callers disagree on owners"
        );
        for (i, o) in ra.iter().enumerate() {
            ensure!(
                *o == ca[i].fingerprint || *o == cb[cb.len() - 1 - i].fingerprint,
                "round {round}: claim {i} owned by neither"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_race_on_each_member_and_exactly_one_wins() -> anyhow::Result<()> {
    let Some(server) = server() else {
        return Ok(());
    };
    let (config, first) = store(&server, "fencing").await?;
    // Two processes' worth of stores: separate pools, separate connections.
    let writers = [
        Arc::new(first),
        Arc::new(PostgresStore::connect(&config, loyalty_core::sealing::KeyRing::dev()).await?),
    ];
    let mut sim = Sim::new("fence")?;
    const MEMBERS: u32 = 40;

    // Enrolment race: two writers create the same new member (expected version 0).
    let mut tasks = Vec::new();
    for n in 0..MEMBERS {
        let m = sim.member(n)?;
        for w in &writers {
            let e = sim.enrol(&m)?;
            let w = Arc::clone(w);
            tasks.push(tokio::spawn(async move {
                let r = w.commit(e.batch(0)).await;
                (e, r)
            }));
        }
    }
    let mut states = Vec::new();
    for pair in futures::future::join_all(tasks).await.chunks(2) {
        let [Ok((ea, ra)), Ok((eb, rb))] = pair else {
            anyhow::bail!("a task panicked");
        };
        let winner = match (ra, rb) {
            (Ok(()), Err(Error::Conflict(_))) => ea,
            (Err(Error::Conflict(_)), Ok(())) => eb,
            other => anyhow::bail!("enrolment race: {other:?}"),
        };
        let state = winner.state.clone().context("no state")?;
        ensure!(writers[0].member(&state.member_id).await?.as_ref() == Some(&state));
        states.push(state);
    }

    // Purchase race: two owners (one a zombie) both read version 1 and write version 2.
    let mut tasks = Vec::new();
    for s in &states {
        for (i, w) in writers.iter().enumerate() {
            let e = sim.purchase(s, 1000 + i as i64 * 500)?;
            let w = Arc::clone(w);
            let v = s.version;
            tasks.push(tokio::spawn(async move {
                let r = w.commit(e.batch(v)).await;
                (e, r)
            }));
        }
    }
    let (mut wins, mut losses) = (0, 0);
    for pair in futures::future::join_all(tasks).await.chunks(2) {
        let [Ok((ea, ra)), Ok((eb, rb))] = pair else {
            anyhow::bail!("a task panicked");
        };
        let (winner, loser) = match (ra, rb) {
            (Ok(()), Err(Error::Conflict(_))) => (ea, eb),
            (Err(Error::Conflict(_)), Ok(())) => (eb, ea),
            other => anyhow::bail!("purchase race: {other:?}"),
        };
        wins += 1;
        losses += 1;
        let state = winner.state.clone().context("no state")?;
        let m = &state.member_id;
        ensure!(
            writers[1].member(m).await?.as_ref() == Some(&state),
            "{m}: state"
        );
        let ledger = writers[1].ledger(m, None, 100).await?;
        let seqs: Vec<u64> = ledger.iter().map(|e| e.seq).collect();
        ensure!(
            seqs == (1..=state.last_seq).rev().collect::<Vec<_>>(),
            "{m}: ledger {seqs:?}"
        );
        ensure!(ledger.iter().all(|e| e.event_id != loser.record.event_id));
        let recs = writers[1]
            .processed(
                &sim.franchise,
                &[
                    winner.record.event_id.clone(),
                    loser.record.event_id.clone(),
                ],
            )
            .await?;
        ensure!(
            recs == vec![Some(winner.record.clone()), None],
            "{m}: records"
        );
    }
    ensure!(wins == MEMBERS && losses == MEMBERS);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_writes_nothing_at_all() -> anyhow::Result<()> {
    let Some(server) = server() else {
        return Ok(());
    };
    let (_, store) = store(&server, "whole_batch").await?;
    let mut sim = Sim::new("whole")?;
    let (a, b, c) = (sim.member(1)?, sim.member(2)?, sim.member(3)?);
    let ea = sim.enrol(&a)?;
    let eb = sim.enrol(&b)?;
    let mut batch = EffectBatch::default();
    ea.add_to(&mut batch, 0);
    eb.add_to(&mut batch, 0);
    store.commit(batch).await?;
    let a1 = ea.state.clone().context("a")?;
    let b1 = eb.state.clone().context("b")?;

    // a: a good purchase; c: a new member; b: a zombie's write at a wrong version.
    let good = sim.purchase(&a1, 1500)?;
    let new = sim.enrol(&c)?;
    let stale = sim.purchase(&b1, 700)?;
    let mut batch = EffectBatch::default();
    good.add_to(&mut batch, a1.version);
    new.add_to(&mut batch, 0);
    stale.add_to(&mut batch, b1.version + 1);
    let r = store.commit(batch).await;
    ensure!(matches!(r, Err(Error::Conflict(_))), "{r:?}");

    // Whole batch or nothing: neither a's purchase nor c's enrolment was written.
    ensure!(store.member(&a).await?.as_ref() == Some(&a1));
    ensure!(store.member(&c).await?.is_none());
    ensure!(
        store.ledger(&a, None, 100).await? == ea.entries.iter().rev().cloned().collect::<Vec<_>>()
    );
    ensure!(store.ledger(&c, None, 100).await?.is_empty());
    let recs = store
        .processed(
            &sim.franchise,
            &[
                good.record.event_id.clone(),
                new.record.event_id.clone(),
                stale.record.event_id.clone(),
            ],
        )
        .await?;
    ensure!(recs == vec![None, None, None], "{recs:?}");

    // A member written twice in one batch is a caller's bug.
    let mut twice = good.batch(a1.version);
    good.add_to(&mut twice, a1.version);
    ensure!(matches!(store.commit(twice).await, Err(Error::Invalid(_))));

    // Without the zombie's share, the rest goes through.
    let mut batch = EffectBatch::default();
    good.add_to(&mut batch, a1.version);
    new.add_to(&mut batch, 0);
    store.commit(batch).await?;
    ensure!(store.member(&a).await?.as_ref() == good.state.as_ref());
    ensure!(store.member(&c).await?.as_ref() == new.state.as_ref());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_2000_events_commits_in_one_statement() -> anyhow::Result<()> {
    let Some(server) = server() else {
        return Ok(());
    };
    let (_, store) = store(&server, "large").await?;
    let mut sim = Sim::new("large")?;

    // 1000 enrolments, then one purchase each plus 1000 anonymous-looking rejections: 2000
    // events per batch, as the engine commits them.
    let mut batch = EffectBatch::default();
    let mut states = Vec::new();
    for n in 0..1000 {
        let m = sim.member(n)?;
        let e = sim.enrol(&m)?;
        e.add_to(&mut batch, 0);
        states.push(e.state.clone().context("state")?);
    }
    store.commit(batch).await?;
    let mut batch = EffectBatch::default();
    let mut events = Vec::new();
    for s in &states {
        let e = sim.purchase(s, 990)?;
        e.add_to(&mut batch, s.version);
        events.push(e.record.event_id.clone());
        let ghost = sim.member(50_000 + events.len() as u32)?;
        let r = sim.purchase(s, 1)?; // reuse the rules to get an event id and record
        let mut rec = r.record.clone();
        rec.member_id = Some(ghost);
        rec.outcome = loyalty_domain::Outcome::Rejected(loyalty_domain::Rejection::UnknownMember);
        batch.processed.push(loyalty_core::ports::ProcessedWrite {
            record: rec,
            insert: true,
        });
        events.push(r.record.event_id.clone());
    }
    ensure!(batch.processed.len() == 2000);
    let started = Instant::now();
    store.commit(batch).await?;
    let took = started.elapsed();
    println!("a batch of 2000 events (1000 members) committed in {took:?}");

    let found = store.processed(&sim.franchise, &events).await?;
    ensure!(found.iter().all(Option::is_some), "records missing");
    let mut seen = HashSet::new();
    let mut after = None;
    loop {
        let page = store.members_after(after.as_ref(), 300).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.member_id.clone());
        for s in &page {
            ensure!(s.version == 2, "{} at version {}", s.member_id, s.version);
            ensure!(seen.insert(s.member_id.clone()), "{} twice", s.member_id);
        }
        if page.len() < 300 {
            break;
        }
    }
    ensure!(seen.len() == 1000, "{} members scanned", seen.len());
    let ids: Vec<_> = seen.iter().cloned().collect();
    let mut sorted = ids.clone();
    sorted.sort();
    let scanned: Vec<_> = store
        .members_after(None, 2000)
        .await?
        .into_iter()
        .map(|s| s.member_id)
        .collect();
    ensure!(scanned == sorted, "members_after is in member-id order");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_blocked_past_the_statement_timeout_is_unavailable() -> anyhow::Result<()> {
    let Some(server) = server() else {
        return Ok(());
    };
    let (mut config, store) = store(&server, "timeout").await?;
    let mut sim = Sim::new("timeout")?;
    let m = sim.member(1)?;
    let enrolled = sim.enrol(&m)?;
    store.commit(enrolled.batch(0)).await?;
    let v1 = enrolled.state.clone().context("state")?;

    // Another session holds the member's row lock and does not let go.
    let mut holder = raw(&config).await?;
    let tx = holder.transaction().await?;
    tx.execute(
        "SELECT 1 FROM members WHERE member_id = $1 FOR UPDATE",
        &[&m.as_str()],
    )
    .await?;

    config.statement_timeout = Duration::from_millis(300);
    let impatient = PostgresStore::connect(&config, loyalty_core::sealing::KeyRing::dev()).await?;
    let buy = sim.purchase(&v1, 1000)?;
    let started = Instant::now();
    let r = impatient.commit(buy.batch(v1.version)).await;
    ensure!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // Once the lock is released the same commit goes through: nothing was half-written.
    tx.rollback().await?;
    impatient.commit(buy.batch(v1.version)).await?;
    ensure!(store.member(&m).await?.as_ref() == buy.state.as_ref());
    Ok(())
}

/// Dashboard increments of many concurrent commits on the same rows (one franchise's stores
/// and days, as every engine of a cluster writes them) all add up, without a deadlock: the
/// rows are locked in key order. A visit count brought to 0 is deleted, not kept at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_dashboard_increments_add_up_and_zero_visits_are_deleted() -> anyhow::Result<()>
{
    use loyalty_domain::dashboard::{DashboardDelta, DayTotals, Scope, VisitKey};
    use loyalty_domain::{Day, StoreId};

    let Some(server) = server() else {
        return Ok(());
    };
    let (config, store) = store(&server, "dashboards").await?;
    let store = Arc::new(store);
    let f = FranchiseId::parse("dash-hot")?;
    let stores: Vec<StoreId> = (0..4)
        .map(|i| StoreId::parse(&format!("hot-{i}")))
        .collect::<Result<_, _>>()?;
    let key = |g: u16| VisitKey {
        prev: Some(g),
        prev2: None,
    };
    const TASKS: usize = 6;
    const COMMITS: usize = 15;
    let delta = |t: usize| {
        let mut d = DashboardDelta::default();
        for (i, s) in stores.iter().enumerate() {
            for day in [Day(20_000), Day(20_001)] {
                d.totals.insert(
                    (f.clone(), s.clone(), day),
                    DayTotals {
                        member_purchases: 1,
                        member_revenue_cents: (100 * (i + 1)) as u64,
                        ..DayTotals::default()
                    },
                );
                d.visits.insert(
                    (f.clone(), Scope::Store(s.clone()), day),
                    [(key(1), 1), (key(2 + t as u16 % 2), 1)].into(),
                );
            }
        }
        d.visits.insert(
            (f.clone(), Scope::Franchise, Day(20_000)),
            [(key(1), 2)].into(),
        );
        d.tiers.insert((f.clone(), "gold".into()), 1);
        d.tiers.insert((f.clone(), "silver".into()), -1);
        d
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            let d = delta(t);
            tokio::spawn(async move {
                for _ in 0..COMMITS {
                    store
                        .commit(EffectBatch {
                            dashboard: d.clone(),
                            ..EffectBatch::default()
                        })
                        .await?;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for t in futures::future::join_all(tasks).await {
        t??;
    }
    let n = (TASKS * COMMITS) as u64;
    let rows = store.dashboard_rows(&f, Day(20_000), Day(20_001)).await?;
    ensure!(rows.totals.len() == 8, "{} totals rows", rows.totals.len());
    for (s, _, t) in &rows.totals {
        let i: u64 = s.as_str()[4..].parse()?;
        ensure!(
            t.member_purchases == n && t.member_revenue_cents == n * 100 * (i + 1),
            "{s}: {t:?}"
        );
    }
    ensure!(rows.visits.len() == 9, "{} visit rows", rows.visits.len());
    for (scope, _, row) in &rows.visits {
        let want = match scope {
            Scope::Franchise => [(key(1), 2 * n as i64)].into(),
            Scope::Store(_) => [
                (key(1), n as i64),
                (key(2), n as i64 / 2),
                (key(3), n as i64 / 2),
            ]
            .into(),
        };
        ensure!(*row == want, "{scope:?}: {row:?}");
    }
    let mut tiers = store.tier_counts(&f).await?;
    tiers.sort();
    ensure!(
        tiers == vec![("gold".into(), n as i64), ("silver".into(), -(n as i64))],
        "{tiers:?}"
    );

    // Taking every count of one store's day back to 0 deletes its rows.
    let s0 = stores[0].clone();
    let mut back = DashboardDelta::default();
    back.visits.insert(
        (f.clone(), Scope::Store(s0.clone()), Day(20_000)),
        [
            (key(1), -(n as i64)),
            (key(2), -(n as i64) / 2),
            (key(3), -(n as i64) / 2),
        ]
        .into(),
    );
    back.tiers.insert((f.clone(), "silver".into()), n as i64);
    store
        .commit(EffectBatch {
            dashboard: back,
            ..EffectBatch::default()
        })
        .await?;
    let client = raw(&config).await?;
    let zeros: i64 = client
        .query_one("SELECT count(*) FROM dashboard_visits WHERE n = 0", &[])
        .await?
        .get(0);
    ensure!(zeros == 0, "{zeros} visit counts kept at 0");
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM dashboard_visits WHERE scope = $1 AND day = 20000",
            &[&s0.as_str()],
        )
        .await?
        .get(0);
    ensure!(left == 0, "{left} visit counts left for {s0}");
    let rows = store.dashboard_rows(&f, Day(20_000), Day(20_001)).await?;
    ensure!(rows.visits.len() == 8, "{} visit rows", rows.visits.len());
    ensure!(store.tier_counts(&f).await? == vec![("gold".into(), n as i64)]);
    Ok(())
}
