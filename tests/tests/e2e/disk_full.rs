//! A full disk under the embedded store (issue "Faults, audit and bad input", fault matrix):
//! `loyalty dev` runs with a file size limit (`RLIMIT_FSIZE`, set on the running process with
//! prlimit(2): a write past it fails with EFBIG exactly where a full disk fails with ENOSPC,
//! without a mount this machine may not allow) while purchases stream. The writes fail; the
//! process must neither die (SIGXFSZ) nor acknowledge what it cannot keep: from the fault on it
//! answers 503 (with Retry-After). Then, as the runbook says, it is restarted with room on the
//! disk, and every command is sent again: each acknowledged one answers as a replay with the
//! outcome told, and each member's ledger holds every applied purchase exactly once, its
//! balance the ledger's sum.

use std::collections::HashMap;

use loyalty_tests::invariants::ledger;
use loyalty_tests::traffic::{http_client, post};
use loyalty_tests::DevProcess;
use serde_json::{json, Value};

const MEMBERS: usize = 8;
/// Purchases sent at most while the limit holds.
const MAX_SENT: usize = 600;
/// Refusals in a row that show the process stopped accepting.
const REFUSED_IN_A_ROW: usize = 10;

/// Sets the soft file size limit of process `pid` to `bytes`, keeping its hard limit (raising
/// a hard limit needs a privilege the test may not have; the soft one can go back up).
fn limit_file_size(pid: u32, bytes: u64) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) reading the limits of a process this test started, into a local.
    if unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut old) } != 0 {
        anyhow::bail!("prlimit (read): {}", std::io::Error::last_os_error());
    }
    let new = libc::rlimit {
        rlim_cur: bytes.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit(2) setting the soft limit of the same process from a local.
    if unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &new, std::ptr::null_mut()) } != 0 {
        anyhow::bail!("prlimit (set): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The size of the largest file under `dir`.
fn largest_file(dir: &std::path::Path) -> u64 {
    let mut largest = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(m) = entry.metadata() {
                largest = largest.max(m.len());
            }
        }
    }
    largest
}

struct Sent {
    event_id: String,
    member: usize,
    body: Value,
    status: u16,
    answer: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_commands_and_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(dir.path()).await?;
    let (base, store_key, hq_key) = (
        dev.address.clone(),
        dev.key("STORE1_KEY"),
        dev.key("HQ_KEY"),
    );
    let http = http_client();
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let url = format!("{base}/v1/members?wait_ms=5000");
        let (status, v) = post(
            &http,
            &url,
            &store_key,
            &json!({"phone": format!("+3361000{i:04}")}),
        )
        .await?;
        anyhow::ensure!(status == 201, "enrolment answered {status}: {v}");
        members.push(v["member_id"].as_str().unwrap_or_default().to_owned());
    }
    // Room for what is there and a little more: the store's next growth fails.
    limit_file_size(dev.pid(), largest_file(dir.path()) + 16 * 1024)?;

    let mut sent: Vec<Sent> = Vec::new();
    let mut in_a_row = 0;
    while sent.len() < MAX_SENT && in_a_row < REFUSED_IN_A_ROW {
        let (i, member) = (sent.len(), sent.len() % MEMBERS);
        let event_id = format!("full-{i:04}");
        let body = json!({"event_id": event_id, "member_id": members[member],
            "amount_cents": 1000 + i, "currency": "EUR"});
        let url = format!("{base}/v1/purchases?wait_ms=1000");
        let r = http
            .post(&url)
            .bearer_auth(&store_key)
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        if status == 503 {
            anyhow::ensure!(
                r.headers().contains_key("retry-after"),
                "a 503 without Retry-After"
            );
        }
        let answer: Value = r.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(
            matches!(status, 200 | 202 | 503),
            "purchase {event_id} answered {status}: {answer}"
        );
        in_a_row = if status == 503 { in_a_row + 1 } else { 0 };
        sent.push(Sent {
            event_id,
            member,
            body,
            status,
            answer,
        });
    }
    let count = |s: u16| sent.iter().filter(|x| x.status == s).count();
    println!(
        "with the file size limit: sent {}, 200: {}, 202: {}, 503: {}",
        sent.len(),
        count(200),
        count(202),
        count(503)
    );
    anyhow::ensure!(
        in_a_row == REFUSED_IN_A_ROW,
        "the process never stopped accepting within {MAX_SENT} purchases (the limit did not bite?)"
    );

    // The runbook: make room, restart. The process may be wedged: kill it.
    let mut dev = dev;
    dev.kill9()?;
    drop(dev);
    let dev = DevProcess::start(dir.path()).await?;
    let base = dev.address.clone();
    let mut applied: HashMap<String, i64> = HashMap::new();
    for s in &sent {
        let url = format!("{base}/v1/purchases?wait_ms=5000");
        let (status, v) = post(&http, &url, &store_key, &s.body).await?;
        anyhow::ensure!(
            status == 200,
            "resend of {} answered {status}: {v}",
            s.event_id
        );
        match s.status {
            200 => {
                anyhow::ensure!(v["replayed"] == true, "{}: applied again: {v}", s.event_id);
                anyhow::ensure!(
                    v["outcome"] == s.answer["outcome"],
                    "{}: told {}, now {}",
                    s.event_id,
                    s.answer["outcome"],
                    v["outcome"]
                );
            }
            // Accepted: in the log, so applied after the restart, before this resend.
            202 => anyhow::ensure!(v["replayed"] == true, "{}: a 202 was lost: {v}", s.event_id),
            _ => {}
        }
        applied.insert(
            s.event_id.clone(),
            v["outcome"]["points_earned"].as_i64().unwrap_or(-1),
        );
    }
    for (i, m) in members.iter().enumerate() {
        let entries = ledger(&http, &base, &hq_key, m).await?;
        let mut seen = HashMap::new();
        for e in &entries {
            *seen
                .entry(e["event_id"].as_str().unwrap_or("").to_owned())
                .or_insert(0) += 1;
        }
        for s in sent.iter().filter(|s| s.member == i) {
            let n = seen.get(&s.event_id).copied().unwrap_or(0);
            anyhow::ensure!(n == 1, "member {m}: {} {n} times in the ledger", s.event_id);
        }
        let sum: i64 = entries
            .iter()
            .map(|e| e["points"].as_i64().unwrap_or(0))
            .sum();
        let balance = entries
            .first()
            .and_then(|e| e["balance_after"].as_i64())
            .unwrap_or(0);
        anyhow::ensure!(
            sum == balance,
            "member {m}: balance {balance}, ledger sums to {sum}"
        );
    }
    println!(
        "after the restart: {} purchases each once in the ledger",
        applied.len()
    );
    dev.stop()?;
    Ok(())
}
