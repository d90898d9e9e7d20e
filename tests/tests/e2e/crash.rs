//! Crash and replay of the real binary: `loyalty dev` is killed with SIGKILL while clients
//! stream purchases; after a restart on the same data, every purchase that got a 2xx is applied
//! exactly once, and re-sending every purchase (answered or not) changes nothing more.
//!
//! Half the clients wait for the effect (`?wait_ms`, 200 with the outcome): the outcome told
//! must be the one the platform keeps, whether the kill took the effect back (the log gives it
//! again) or not (the store's commit was durable before it was told).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loyalty_tests::DevProcess;
use serde_json::{json, Value};

const MEMBERS: usize = 12;
const CLIENTS: usize = 6;
/// Kill once this many purchases were acknowledged.
const KILL_AFTER_ACKS: usize = 400;

#[derive(Clone, Debug)]
struct Sent {
    event_id: String,
    member: usize,
    cents: i64,
    /// The outcome a 200 (applied) answer gave.
    outcome: Option<Value>,
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
) -> Option<(u16, Value)> {
    let r = client
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(Value::Null);
    Some((status, v))
}

async fn ledger_ids(client: &reqwest::Client, dev: &DevProcess, member: &str) -> Vec<String> {
    let r = client
        .get(format!(
            "{}/v1/members/{member}/ledger?limit=500",
            dev.address
        ))
        .bearer_auth(dev.key("HQ_KEY"))
        .send()
        .await
        .expect("ledger request");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("ledger json");
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn status(client: &reqwest::Client, dev: &DevProcess, member: &str) -> Value {
    let r = client
        .get(format!("{}/v1/members/{member}", dev.address))
        .bearer_auth(dev.key("STORE1_KEY"))
        .send()
        .await
        .expect("status request");
    assert_eq!(r.status(), 200);
    r.json().await.expect("status json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_purchases_survive_kill_9_exactly_once() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut dev = DevProcess::start(data.path())
        .await
        .expect("loyalty dev starts");
    let client = reqwest::Client::new();
    let store_key = dev.key("STORE1_KEY");

    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let (code, v) = post(
            &client,
            &format!("{}/v1/members", dev.address),
            &store_key,
            &json!({"phone": format!("+3361000{i:04}")}),
        )
        .await
        .expect("enrolment answered");
        assert_eq!(code, 201, "{v}");
        members.push(v["member_id"].as_str().expect("member id").to_owned());
    }
    let members = Arc::new(members);

    // Clients stream purchases until the process dies under them.
    let acks = Arc::new(AtomicUsize::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let wait = if c % 2 == 1 { "?wait_ms=2000" } else { "" };
        let (client, url, key) = (
            client.clone(),
            format!("{}/v1/purchases{wait}", dev.address),
            store_key.clone(),
        );
        let (members, acks, dead) = (Arc::clone(&members), Arc::clone(&acks), Arc::clone(&dead));
        clients.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut unanswered = Vec::new();
            let mut i = 0usize;
            while !dead.load(Ordering::Relaxed) {
                let member = (c * 7 + i * 5) % MEMBERS;
                let mut sent = Sent {
                    event_id: format!("crash-{c}-{i}"),
                    member,
                    cents: 100 + ((c * 31 + i * 17) % 300) as i64,
                    outcome: None,
                };
                i += 1;
                let body = json!({"event_id": sent.event_id, "member_id": members[member], "amount_cents": sent.cents, "currency": "EUR"});
                match post(&client, &url, &key, &body).await {
                    Some((202, _)) => {
                        acked.push(sent);
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Some((200, v)) => {
                        sent.outcome = Some(v["outcome"].clone());
                        acked.push(sent);
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Some((code, v)) => panic!("purchase answered {code}: {v}"),
                    None => {
                        unanswered.push(sent);
                        if dead.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            }
            (acked, unanswered)
        }));
    }
    while acks.load(Ordering::Relaxed) < KILL_AFTER_ACKS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // No new purchase starts once the kill is decided: those in flight are cut by it (at most
    // one per client). Otherwise clients looping on refused connections during the kill would
    // send thousands more, and the re-sends below would take members past the tier thresholds
    // that the expected points assume they stay under.
    dead.store(true, Ordering::Relaxed);
    dev.kill9().expect("kill -9");
    let mut acked = Vec::new();
    let mut unanswered = Vec::new();
    for c in clients {
        let (a, u) = c.await.expect("client task");
        acked.extend(a);
        unanswered.extend(u);
    }
    println!(
        "killed after {} acknowledged purchases, {} of them applied (200), {} unanswered",
        acked.len(),
        acked.iter().filter(|s| s.outcome.is_some()).count(),
        unanswered.len()
    );
    assert!(acked.len() >= KILL_AFTER_ACKS);
    assert!(
        unanswered.len() <= CLIENTS,
        "at most one purchase per client is cut by the kill"
    );

    let dev = DevProcess::start(data.path())
        .await
        .expect("loyalty dev restarts");

    // Every acknowledged purchase is applied after the restart, without being re-sent: wait
    // (bounded) until the engine has caught up with the log.
    let acked_ids: HashSet<&str> = acked.iter().map(|s| s.event_id.as_str()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let ledgers = loop {
        let mut ledgers = HashMap::new();
        for m in members.iter() {
            ledgers.insert(m.clone(), ledger_ids(&client, &dev, m).await);
        }
        let seen: HashSet<&str> = ledgers.values().flatten().map(String::as_str).collect();
        let missing = acked_ids.iter().filter(|id| !seen.contains(**id)).count();
        if missing == 0 {
            break ledgers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} acknowledged purchases never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // How much the restarted process applied (effects the kill took back or never made).
    let metrics = client
        .get(format!("{}/metrics", dev.address))
        .send()
        .await
        .expect("metrics request")
        .text()
        .await
        .unwrap_or_default();
    let applied = metrics
        .lines()
        .find(|l| l.starts_with("loyalty_events_applied_total{kind=\"purchase\"}"))
        .unwrap_or("none");
    println!("after the restart: {applied}");
    for (m, ids) in &ledgers {
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "member {m} has an event twice in its ledger"
        );
    }

    // Each member's spend is its acknowledged purchases plus some of the unanswered ones.
    let by_member = |list: &[Sent], m: usize| {
        list.iter()
            .filter(|s| s.member == m)
            .map(|s| s.cents)
            .sum::<i64>()
    };
    for (i, m) in members.iter().enumerate() {
        let s = status(&client, &dev, m).await;
        let spend = s["spend_cents"].as_i64().expect("spend");
        let (lo, hi) = (
            by_member(&acked, i),
            by_member(&acked, i) + by_member(&unanswered, i),
        );
        assert!(
            lo <= spend && spend <= hi,
            "member {i}: spend {spend} not in [{lo}, {hi}]"
        );
    }

    // Re-send everything (answered or not), waiting: every purchase is then applied once.
    let all: Vec<Sent> = acked.iter().chain(unanswered.iter()).cloned().collect();
    let url = format!("{}/v1/purchases?wait_ms=5000", dev.address);
    for round in 0..2 {
        let mut replayed = 0;
        for chunk in all.chunks(32) {
            let sends = chunk.iter().map(|s| {
                let body = json!({"event_id": s.event_id, "member_id": members[s.member], "amount_cents": s.cents, "currency": "EUR"});
                let (client, url, key) = (client.clone(), url.clone(), store_key.clone());
                async move { post(&client, &url, &key, &body).await }
            });
            for (s, r) in chunk.iter().zip(futures::future::join_all(sends).await) {
                let (code, v) = r.expect("answered");
                assert_eq!(code, 200, "{v}");
                if v["replayed"] == true {
                    replayed += 1;
                }
                if let Some(told) = &s.outcome {
                    assert_eq!(
                        &v["outcome"], told,
                        "{}: the outcome kept differs from the one acknowledged",
                        s.event_id
                    );
                }
            }
        }
        if round == 1 {
            assert_eq!(replayed, all.len(), "second re-send must only replay");
        } else {
            assert!(
                replayed >= acked.len(),
                "every acknowledged purchase was already applied"
            );
        }
        for (i, m) in members.iter().enumerate() {
            let s = status(&client, &dev, m).await;
            let count = all.iter().filter(|x| x.member == i).count() as i64;
            let points: i64 = 50
                + all
                    .iter()
                    .filter(|x| x.member == i)
                    .map(|x| x.cents / 100)
                    .sum::<i64>();
            assert_eq!(s["spend_cents"], by_member(&all, i), "member {i} spend");
            assert_eq!(s["visits"], count, "member {i} visits");
            assert_eq!(s["points"], points, "member {i} points");
        }
    }

    // Stopped, the data audits clean: each member's state is what its ledger says.
    assert!(
        dev.stop().expect("SIGTERM"),
        "loyalty dev exits 0 on SIGTERM"
    );
    let run = loyalty_tests::run_audit(&["--data-dir", &data.path().to_string_lossy()], &[])
        .expect("loyalty audit runs");
    println!("{}", run.stdout.trim());
    assert!(run.clean, "{}", run.stdout);
}
