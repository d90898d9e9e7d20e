//! `loyalty audit`: a clean run after real traffic, a forged member state found (and the
//! command's exit status), and a wrong cached status found and repaired in a real Redis.

use std::sync::Arc;

use loyalty_core::audit::{audit, AuditOptions, DifferenceKind};
use loyalty_core::engine::shard::render_status;
use loyalty_core::model::Franchise;
use loyalty_core::ports::{EffectBatch, HotCache, MemberWrite, StateStore};
use loyalty_core::programs::ProgramCache;
use loyalty_domain::audit::Finding;
use loyalty_domain::{MemberId, Timestamp};
use loyalty_embedded::store::EmbeddedStore;
use loyalty_redis::{RedisCache, RedisCacheOptions};
use loyalty_testkit::redis::RedisServer;
use loyalty_testkit::store_contract::Scenario;
use loyalty_tests::{run_audit, DevProcess};
use serde_json::json;

/// Enrols `n` members through the API and buys for each, waiting for the outcomes.
async fn traffic(dev: &DevProcess, n: usize) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::new();
    let key = dev.key("STORE1_KEY");
    let mut members = Vec::new();
    for i in 0..n {
        let r = client
            .post(format!("{}/v1/members", dev.address))
            .bearer_auth(&key)
            .json(&json!({"phone": format!("+3361200{i:04}")}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "enrolment: {}", r.status());
        let v: serde_json::Value = r.json().await?;
        let member = v["member_id"].as_str().unwrap_or_default().to_owned();
        for p in 0..3 {
            let r = client
                .post(format!("{}/v1/purchases?wait_ms=5000", dev.address))
                .bearer_auth(&key)
                .json(
                    &json!({"event_id": format!("audit-{i}-{p}"), "member_id": member,
                              "amount_cents": 1_250 + 100 * p, "currency": "EUR"}),
                )
                .send()
                .await?;
            anyhow::ensure!(r.status() == 200, "purchase: {}", r.status());
        }
        members.push(member);
    }
    Ok(members)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_nodes_data_audits_clean_and_a_forged_balance_is_found() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dev = DevProcess::start(data.path()).await?;
    let members = traffic(&dev, 5).await?;
    assert!(dev.stop()?, "loyalty dev exits 0 on SIGTERM");
    let dir = data.path().to_string_lossy().into_owned();

    let run = run_audit(&["--data-dir", &dir], &[])?;
    assert!(run.clean, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("audited 5 members and 20 ledger entries")
            && run.stdout.contains(": 0 differences"),
        "{}",
        run.stdout
    );

    // Forge one member's balance in the store, as a bug or a bad repair would.
    let member = MemberId::parse(&members[2]).map_err(|e| anyhow::anyhow!("{e}"))?;
    {
        let store = EmbeddedStore::open(
            &data.path().join("store"),
            loyalty_core::sealing::KeyRing::dev(),
        )?;
        let mut state = store
            .member(&member)
            .await?
            .ok_or_else(|| anyhow::anyhow!("member stored"))?;
        let expected_version = state.version;
        state.version += 1;
        state.points += 7;
        store
            .commit(EffectBatch {
                members: vec![MemberWrite {
                    state,
                    expected_version,
                    due: None,
                }],
                ..EffectBatch::default()
            })
            .await?;
    }
    let run = run_audit(&["--data-dir", &dir], &[])?;
    assert!(!run.clean, "a forged balance exits 1: {}", run.stdout);
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("DIFFERENCE"))
        .collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.contains(member.as_str())),
        "only the forged member differs: {}",
        run.stdout
    );
    assert!(
        lines.iter().any(|l| l.contains("in the ledger")),
        "the balance is named: {}",
        run.stdout
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cached_status_is_found_and_repaired_in_redis() -> anyhow::Result<()> {
    if let Err(reason) = RedisServer::available() {
        println!("SKIPPED: {}", loyalty_testkit::missing(reason));
        return Ok(());
    }
    let redis = RedisServer::start()?;
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn StateStore> =
        EmbeddedStore::open(dir.path(), loyalty_core::sealing::KeyRing::dev())?;
    let mut sc = Scenario::new("audit-cache")?;
    store
        .put_franchise(&Franchise {
            id: sc.franchise.clone(),
            name: "Audit".into(),
            secret: "00".repeat(32),
            program_version: 1,
            created_at: Timestamp(0),
        })
        .await?;
    store.put_program(&sc.franchise, 1, &sc.program).await?;
    let (a, b) = (sc.member(1)?, sc.member(2)?);
    let mut states = Vec::new();
    for m in [&a, &b] {
        let enrol = sc.enrol(m)?;
        store.commit(enrol.batch(0)).await?;
        let state = enrol.state.ok_or_else(|| anyhow::anyhow!("state"))?;
        let bought = sc.purchase(&state, 2_000)?;
        store.commit(bought.batch(state.version)).await?;
        states.push(bought.state.ok_or_else(|| anyhow::anyhow!("state"))?);
    }
    let cache = RedisCache::connect(&redis.url(), RedisCacheOptions::default()).await?;
    let programs = ProgramCache::new(Arc::clone(&store));
    // a's status is right; b's claims a newer version with a balance the store never had.
    let right = render_status(&states[0], &sc.program, 1);
    let mut forged_state = states[1].clone();
    forged_state.version += 5;
    forged_state.points += 1_000;
    let forged = render_status(&forged_state, &sc.program, 1);
    cache
        .put_statuses(vec![(a.clone(), right), (b.clone(), forged)])
        .await?;

    let report = audit(
        store.as_ref(),
        &programs,
        Some(&cache),
        &AuditOptions::default(),
    )
    .await?;
    assert_eq!(report.members, 2);
    assert_eq!(report.cache_checked, 2);
    let differences: Vec<_> = report
        .differences
        .iter()
        .map(|d| (&d.member, &d.what))
        .collect();
    assert_eq!(
        differences,
        vec![(
            &b,
            &DifferenceKind::Cache {
                cached: states[1].version + 5,
                stored: states[1].version
            }
        )]
    );

    let options = AuditOptions {
        repair_cache: true,
        ..AuditOptions::default()
    };
    let repaired = audit(store.as_ref(), &programs, Some(&cache), &options).await?;
    assert_eq!(repaired.cache_repaired, 1);
    assert!(repaired.clean_after_repair());
    let again = audit(store.as_ref(), &programs, Some(&cache), &options).await?;
    assert_eq!(again.differences, vec![], "repaired for good");
    let cached = cache
        .status(&b)
        .await?
        .ok_or_else(|| anyhow::anyhow!("cached"))?;
    assert_eq!(cached.json, render_status(&states[1], &sc.program, 1).json);
    // A difference between a state and its ledger is not the cache's, and is not repaired.
    assert!(!again
        .differences
        .iter()
        .any(|d| matches!(d.what, DifferenceKind::Ledger(Finding::Balance { .. }))));
    Ok(())
}
