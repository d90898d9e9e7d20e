//! A process whose engine cannot apply commands does not accept them: when the engine stops on
//! an error (here, a corrupt offsets file of the embedded log), the real `loyalty dev` stops
//! serving and exits non-zero, naming the error, instead of answering `202` to commands it
//! will never apply.

use std::process::{Command, Stdio};
use std::time::Duration;

use loyalty_tests::{loyalty_bin, DevProcess};
use serde_json::json;

/// Every offsets file of the embedded log under `dir`.
fn offsets_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".offsets.json"))
            {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_fails_takes_its_process_down() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut dev = DevProcess::start(dir.path()).await.expect("loyalty dev");
    // One command applied, so that the engine's group has committed offsets.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/members?wait_ms=5000", dev.address))
        .bearer_auth(dev.key("STORE1_KEY"))
        .json(&json!({"phone": "+33611112222"}))
        .send()
        .await
        .expect("enrol");
    assert!(r.status().is_success(), "{}", r.status());
    let files = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let f: Vec<_> = offsets_files(dir.path())
                .into_iter()
                .filter(|p| p.to_string_lossy().contains("loyalty-engine"))
                .collect();
            if !f.is_empty() {
                break f;
            }
            assert!(tokio::time::Instant::now() < deadline, "no offsets file");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    dev.kill9().expect("kill");
    for f in &files {
        std::fs::write(f, b"{\"offsets\": [garbage").expect("corrupt the offsets file");
    }

    // Restarted on the damaged directory: it must not keep serving.
    let child = Command::new(loyalty_bin().expect("binary"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("LOYALTY_PARTITIONS", "4")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let out = match out {
        Ok(o) => o.expect("join").expect("wait"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("loyalty dev kept running with an engine that cannot read its offsets");
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exited successfully: {stderr}");
    assert!(
        stderr.contains("corrupt") && stderr.contains("offsets"),
        "the error names the damage: {stderr}"
    );
}
