//! The embedded data directory belongs to one process, and the real binary says so at startup:
//! a second `loyalty dev` on a live data directory exits non-zero, naming the directory and the
//! holder's pid, with every file of the directory byte-identical, while the first keeps
//! serving; `loyalty gateway` and `loyalty engine` refuse the embedded store; the production
//! commands refuse the dev admin key and a configuration naming two shared stores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use loyalty_tests::{loyalty_bin, DevProcess};
use serde_json::{json, Value};

/// Every file under `dir`, by path relative to it, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("read file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Runs `loyalty <args>` with no `LOYALTY_*` setting but `env`, and waits (bounded) for it
/// to exit.
async fn run_loyalty(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(loyalty_bin().expect("the loyalty binary"));
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("LOYALTY_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn loyalty");
    let pid = child.id();
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    match waited {
        Ok(out) => out.expect("join").expect("wait"),
        Err(_) => {
            // Still running: it did not refuse. Stop it (by its own pid) and fail.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("loyalty {args:?} was still running after 30 s instead of refusing to start");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_dev_process_on_a_live_data_dir_exits_and_touches_nothing() {
    let data = tempfile::tempdir().expect("temp dir");
    let first = DevProcess::start(data.path())
        .await
        .expect("the first loyalty dev starts");
    let client = reqwest::Client::new();
    let store_key = first.key("STORE1_KEY");

    // Some data in the log and the store.
    let r = client
        .post(format!("{}/v1/members", first.address))
        .bearer_auth(&store_key)
        .json(&json!({"phone": "+33610000001"}))
        .send()
        .await
        .expect("enrol");
    assert_eq!(r.status(), 201);
    let member: Value = r.json().await.expect("json");
    let member = member["member_id"].as_str().expect("member id").to_owned();
    let purchase = |event_id: &'static str| {
        let (client, url, key, member) = (
            client.clone(),
            format!("{}/v1/purchases?wait_ms=5000", first.address),
            store_key.clone(),
            member.clone(),
        );
        async move {
            client
                .post(url)
                .bearer_auth(key)
                .json(&json!({"event_id": event_id, "member_id": member, "amount_cents": 1000, "currency": "EUR"}))
                .send()
                .await
                .expect("purchase")
                .status()
        }
    };
    assert_eq!(purchase("lock-1").await, 200);
    // Let the first process reach a checkpoint and go idle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = snapshot(data.path());
    let holder = text(&before[Path::new("LOCK")]).trim().to_owned();
    let holder_pid: u32 = holder.parse().expect("the lock file holds a pid");
    let cmdline = std::fs::read(format!("/proc/{holder_pid}/cmdline")).unwrap_or_default();
    assert!(
        text(&cmdline).contains("loyalty"),
        "the pid in LOCK is the running loyalty dev"
    );
    assert!(
        before.keys().any(|p| p.starts_with("log")),
        "{:?}",
        before.keys()
    );
    assert!(
        before.keys().any(|p| p.starts_with("store")),
        "{:?}",
        before.keys()
    );

    let dir = data.path().to_str().expect("utf-8 temp dir");
    let out = run_loyalty(
        &["dev", "--listen", "127.0.0.1:0", "--data-dir", dir],
        &[("LOYALTY_PARTITIONS", "4")],
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    println!("second process: {}\n{stderr}", out.status);
    assert!(!out.status.success(), "the second process must fail");
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(
        stderr.contains(dir),
        "the message names the directory: {stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {holder_pid}")),
        "the message names the holder: {stderr}"
    );
    assert!(
        stderr.contains("in use by another loyalty process"),
        "{stderr}"
    );

    let after = snapshot(data.path());
    let changed: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    assert!(changed.is_empty(), "the second process changed {changed:?}");

    // The first keeps serving, on its data.
    assert_eq!(purchase("lock-2").await, 200);
    let s: Value = client
        .get(format!("{}/v1/members/{member}", first.address))
        .bearer_auth(&store_key)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(s["visits"], 2, "{s}");
    assert_eq!(s["spend_cents"], 2000, "{s}");
}

/// Kafka and Redis settings that satisfy validation; nothing listens there, and nothing must
/// try to, since every refusal comes first.
const SERVERS: [(&str, &str); 2] = [
    ("LOYALTY_KAFKA_BROKERS", "127.0.0.1:9"),
    ("LOYALTY_REDIS_URL", "redis://127.0.0.1:9/"),
];

/// A key ring of one key (32 bytes 0..31), which production commands accept.
const PII_KEYS: (&str, &str) = (
    "LOYALTY_PII_KEYS",
    "t1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_engine_refuse_the_embedded_store() {
    for command in ["gateway", "engine"] {
        let data = tempfile::tempdir().expect("temp dir");
        let dir = data.path().join("data");
        let dir = dir.to_str().expect("utf-8 temp dir");
        let mut env = SERVERS.to_vec();
        env.push(("LOYALTY_ADMIN_KEY", "a-real-admin-secret"));
        env.push(PII_KEYS);
        let out = run_loyalty(
            &[command, "--listen", "127.0.0.1:0", "--data-dir", dir],
            &env,
        )
        .await;
        let stderr = text(&out.stderr);
        println!("loyalty {command}: {}\n{stderr}", out.status);
        assert!(!out.status.success(), "loyalty {command} must refuse");
        for hint in [
            "LOYALTY_POSTGRES_URL",
            "LOYALTY_SCYLLA_NODES",
            "loyalty node",
            "loyalty dev",
        ] {
            assert!(
                stderr.contains(hint),
                "loyalty {command}: no {hint:?} in {stderr}"
            );
        }
        assert!(
            !Path::new(dir).exists(),
            "loyalty {command} created its data directory before refusing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_commands_refuse_the_dev_defaults() {
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().join("data");
    let dir = dir.to_str().expect("utf-8 temp dir");
    for command in ["node", "gateway", "engine"] {
        for key in [None, Some("dev-admin-key")] {
            let mut env = SERVERS.to_vec();
            env.push((
                "LOYALTY_POSTGRES_URL",
                "postgres://loyalty@127.0.0.1:9/loyalty",
            ));
            if let Some(k) = key {
                env.push(("LOYALTY_ADMIN_KEY", k));
            }
            let out = run_loyalty(
                &[command, "--listen", "127.0.0.1:0", "--data-dir", dir],
                &env,
            )
            .await;
            let stderr = text(&out.stderr);
            assert!(!out.status.success(), "loyalty {command} with key {key:?}");
            assert!(
                stderr.contains("LOYALTY_ADMIN_KEY"),
                "loyalty {command} with key {key:?}: {stderr}"
            );
        }
    }
    // A real admin key, but no key ring for personal data (the dev ring is refused), or a
    // malformed one: named, with what to do.
    for (ring, says) in [
        (None, "loyalty privacy new-key"),
        (Some("k1:short"), "32 bytes in base64"),
        (
            Some("dev:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
            "dev key ring",
        ),
    ] {
        let mut env = SERVERS.to_vec();
        env.extend([
            ("LOYALTY_ADMIN_KEY", "a-real-admin-secret"),
            (
                "LOYALTY_POSTGRES_URL",
                "postgres://loyalty@127.0.0.1:9/loyalty",
            ),
        ]);
        if let Some(r) = ring {
            env.push(("LOYALTY_PII_KEYS", r));
        }
        let out = run_loyalty(
            &["node", "--listen", "127.0.0.1:0", "--data-dir", dir],
            &env,
        )
        .await;
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "loyalty node with the ring {ring:?}");
        assert!(
            stderr.contains("LOYALTY_PII_KEYS") && stderr.contains(says),
            "loyalty node with the ring {ring:?}: {stderr}"
        );
    }
    assert!(!Path::new(dir).exists(), "nothing was created");

    // Two shared stores: named, and the password is not shown.
    let mut env = SERVERS.to_vec();
    env.extend([
        PII_KEYS,
        ("LOYALTY_ADMIN_KEY", "a-real-admin-secret"),
        (
            "LOYALTY_POSTGRES_URL",
            "postgres://loyalty:pw-do-not-show@127.0.0.1:9/loyalty",
        ),
        ("LOYALTY_SCYLLA_NODES", "127.0.0.1:9"),
    ]);
    let out = run_loyalty(&["engine", "--data-dir", dir], &env).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("LOYALTY_POSTGRES_URL") && stderr.contains("LOYALTY_SCYLLA_NODES"),
        "{stderr}"
    );
    assert!(!stderr.contains("pw-do-not-show"), "{stderr}");

    // `loyalty migrate` on the embedded store: nothing to do, said plainly.
    let out = run_loyalty(&["migrate", "--data-dir", dir], &[]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("embedded store needs no migration"),
        "{stdout}"
    );
}
