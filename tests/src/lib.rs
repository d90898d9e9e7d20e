//! The shared test harness: starts the real platform (in process with [`spawn_app`], or as the
//! real `loyalty` binary with [`DevProcess`]) on a free loopback port with its own data
//! directory, and offers the API calls scenarios are written with.

pub mod bench;
pub mod cluster;
pub mod dashboard_data;
pub mod demo_history;
pub mod invariants;
pub mod otlp;
pub mod ownership;
pub mod traffic;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use loyalty::configuration::DevConfig;
use loyalty::startup::Application;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

pub const ADMIN_KEY: &str = "test-admin-key";

/// The demo program, as JSON (what HQ sends).
pub fn demo_program() -> Value {
    json!({
        "currency": "EUR", "points_per_unit": 1, "signup_bonus": 50,
        "stamp_card": {"size": 10, "reward_id": "free-coffee"},
        "tier_qualification": {"metric": "spend_cents", "window_days": 365},
        "tiers": [{"name": "Bronze", "threshold": 0, "multiplier_pct": 100},
                  {"name": "Silver", "threshold": 25000, "multiplier_pct": 150},
                  {"name": "Gold", "threshold": 100000, "multiplier_pct": 200}],
        "rewards": [{"id": "free-coffee", "name": "Free coffee", "cost_points": 100},
                    {"id": "free-pastry", "name": "Free pastry", "cost_points": 150}],
        "points_expiry_days": 365
    })
}

/// A platform running in this process.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub data_dir: tempfile::TempDir,
    pub store: std::sync::Arc<loyalty_embedded::EmbeddedStore>,
    pub cache: std::sync::Arc<loyalty_embedded::EmbeddedCache>,
    pub log: std::sync::Arc<loyalty_embedded::log::EmbeddedLog>,
    /// The `dev` notifier: the one-time codes the platform "sent" (a fresh one, never used,
    /// when the test configured an SMS webhook instead).
    pub notifier: std::sync::Arc<loyalty_embedded::EmbeddedNotifier>,
    /// The `dev` senders of campaign messages, for the channels with no adapter configured.
    pub messages: Vec<std::sync::Arc<loyalty_embedded::EmbeddedMessages>>,
}

/// A franchise set up through the API, with its HQ key and one store key.
pub struct TestFranchise {
    pub id: String,
    pub hq_key: String,
    pub store_id: String,
    pub store_key: String,
}

/// Starts the platform on a free port with a fresh data directory.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the platform with settings adjusted by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut DevConfig)) -> TestApp {
    loyalty::telemetry::init_with_default("warn");
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut config = DevConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: data_dir.path().to_path_buf(),
        admin_key: ADMIN_KEY.into(),
        partitions: 4,
        http_workers: 2,
        demo: false,
        ..DevConfig::default()
    };
    tweak(&mut config);
    let app = Application::build(config)
        .await
        .expect("application starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let embedded = app
        .embedded
        .clone()
        .expect("dev mode runs the embedded adapters");
    let (store, cache, log) = (embedded.store, embedded.cache, embedded.log);
    let notifier = app.notifier.clone().unwrap_or_default();
    let messages = app.messages.clone();
    tokio::spawn(app.run_until_stopped());
    let t = TestApp {
        address,
        client: reqwest::Client::new(),
        data_dir,
        store,
        cache,
        log,
        notifier,
        messages,
    };
    t.wait_ready().await;
    t
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Waits until `/readyz` answers 200 (the engine consumes).
    pub async fn wait_ready(&self) {
        wait_ready(&self.client, &self.address)
            .await
            .expect("platform ready");
    }

    pub async fn post(
        &self,
        path: &str,
        key: &str,
        body: impl std::borrow::Borrow<Value>,
    ) -> Response {
        self.send_json(reqwest::Method::POST, path, key, body.borrow())
            .await
    }

    pub async fn put(
        &self,
        path: &str,
        key: &str,
        body: impl std::borrow::Borrow<Value>,
    ) -> Response {
        self.send_json(reqwest::Method::PUT, path, key, body.borrow())
            .await
    }

    async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: &Value,
    ) -> Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str, key: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("request sent")
    }

    /// A franchise with the demo program and one store.
    pub async fn franchise(&self, name: &str) -> TestFranchise {
        self.franchise_with(name, demo_program()).await
    }

    pub async fn franchise_with(&self, name: &str, program: Value) -> TestFranchise {
        let r = self
            .post(
                "/v1/franchises",
                ADMIN_KEY,
                &json!({"name": name, "program": program}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let f: Value = r.json().await.expect("json");
        let id = f["id"].as_str().expect("id").to_owned();
        let hq_key = f["hq_api_key"].as_str().expect("key").to_owned();
        let r = self
            .post(
                &format!("/v1/franchises/{id}/stores"),
                &hq_key,
                &json!({"name": "Store 1"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let s: Value = r.json().await.expect("json");
        TestFranchise {
            id,
            hq_key,
            store_id: s["id"].as_str().expect("id").to_owned(),
            store_key: s["api_key"].as_str().expect("key").to_owned(),
        }
    }

    /// Enrols `phone` at the franchise's store; returns the enrolment answer.
    pub async fn enrol(&self, f: &TestFranchise, phone: &str) -> Value {
        let r = self
            .post("/v1/members", &f.store_key, &json!({"phone": phone}))
            .await;
        assert!(r.status().is_success(), "enrolment answered {}", r.status());
        r.json().await.expect("json")
    }

    /// Enrols `phone` at the franchise's store; returns the member's id.
    pub async fn enrol_id(&self, f: &TestFranchise, phone: &str) -> String {
        self.enrol(f, phone).await["member_id"]
            .as_str()
            .expect("member id")
            .to_owned()
    }

    /// A redemption of `reward_id` by `member_id` at the franchise's store, waiting for it.
    pub async fn redeem(
        &self,
        f: &TestFranchise,
        event_id: &str,
        member_id: &str,
        reward_id: &str,
    ) -> Response {
        let body = json!({ "event_id": event_id, "member_id": member_id, "reward_id": reward_id });
        self.post("/v1/redemptions?wait_ms=5000", &f.store_key, &body)
            .await
    }

    /// A purchase for `member_id`, waiting for its effect.
    pub async fn purchase(
        &self,
        f: &TestFranchise,
        event_id: &str,
        member_id: &str,
        cents: i64,
    ) -> Response {
        self.post(
            "/v1/purchases?wait_ms=5000",
            &f.store_key,
            &json!({"event_id": event_id, "member_id": member_id, "amount_cents": cents, "currency": "EUR"}),
        )
        .await
    }

    /// The member's status as the till sees it.
    pub async fn status(&self, f: &TestFranchise, member_id: &str) -> Value {
        let r = self
            .get(&format!("/v1/members/{member_id}"), &f.store_key)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("json")
    }

    /// The member's ledger (HQ view), newest first.
    pub async fn ledger(&self, f: &TestFranchise, member_id: &str) -> Vec<Value> {
        let r = self
            .get(
                &format!("/v1/members/{member_id}/ledger?limit=500"),
                &f.hq_key,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.expect("json");
        v["entries"].as_array().cloned().unwrap_or_default()
    }
}

/// Asserts `r` is a problem+json with `status` and `code`; returns the problem.
pub async fn assert_problem(r: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status, "status");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(ct, "application/problem+json", "content type");
    let p: Value = r.json().await.expect("problem json");
    assert_eq!(p["code"], code, "problem {p}");
    assert_eq!(p["status"], status.as_u16());
    assert!(p["type"].as_str().is_some_and(|t| t.ends_with(code)));
    assert!(p["title"].is_string() && p["detail"].is_string());
    p
}

async fn wait_ready(client: &reqwest::Client, address: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{address}/readyz")).send().await {
            if r.status() == StatusCode::OK {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{address} not ready after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `loyalty` binary: `LOYALTY_BIN`, or the one built beside the test executable
/// (`cargo build --bin loyalty`, which `scripts/test.sh` runs first).
/// What `loyalty audit` said: whether it exited 0 (nothing differs) and its output.
#[derive(Debug)]
pub struct AuditRun {
    pub clean: bool,
    pub stdout: String,
}

/// Runs `loyalty audit` with `args` and the environment `env` (a stopped node's
/// `--data-dir`, or the shared store's and Redis's URLs), and returns what it said. Anything
/// but a clean run (exit 0) or differences found (exit 1 after the summary) is an error.
pub fn run_audit(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<AuditRun> {
    let out = Command::new(loyalty_bin()?)
        .arg("audit")
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .context("running loyalty audit")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(0) => Ok(AuditRun {
            clean: true,
            stdout,
        }),
        // Differences found: the summary was printed (an error exits 1 without it).
        Some(1) if stdout.contains("audited ") => Ok(AuditRun {
            clean: false,
            stdout,
        }),
        _ => bail!(
            "loyalty audit failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

pub fn loyalty_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("LOYALTY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target dir")?;
    let bin = dir.join("loyalty");
    if !bin.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --bin loyalty` or set LOYALTY_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// A real `loyalty dev` process on a free port.
pub struct DevProcess {
    child: Child,
    pub address: String,
    pub keys: std::collections::HashMap<String, String>,
    /// What it printed before it listened, keys aside (e.g. the demo history's counts).
    pub banner: Vec<String>,
}

impl DevProcess {
    /// Starts `loyalty dev` on `data_dir` and waits until it is ready. The demo franchise gets
    /// no generated history (`LOYALTY_DEMO_HISTORY=false`), so tests start fast on an empty
    /// dashboard; [`DevProcess::start_with`] runs it as configured.
    pub async fn start(data_dir: &Path) -> anyhow::Result<DevProcess> {
        Self::start_with(data_dir, |c| {
            c.env("LOYALTY_DEMO_HISTORY", "false");
        })
        .await
    }

    /// Starts `loyalty dev` on `data_dir` with `configure` adding flags or environment (the
    /// demo history is on unless it turns it off), and waits until it is ready.
    pub async fn start_with(
        data_dir: &Path,
        configure: impl FnOnce(&mut Command),
    ) -> anyhow::Result<DevProcess> {
        let mut command = Command::new(loyalty_bin()?);
        command
            .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("LOYALTY_PARTITIONS", "4")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        configure(&mut command);
        let mut child = command.spawn().context("starting loyalty dev")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (address, banner) =
            tokio::task::spawn_blocking(move || -> anyhow::Result<(String, Vec<String>)> {
                let mut lines = BufReader::new(stdout).lines();
                let mut banner = Vec::new();
                while let Some(line) = lines.next().transpose()? {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let addr = rest.trim().to_owned();
                        // Keep draining stdout so the process never blocks on a full pipe.
                        std::thread::spawn(move || for _ in lines.by_ref() {});
                        return Ok((addr, banner));
                    }
                    if !line.contains("_KEY=") {
                        banner.push(line);
                    }
                }
                bail!("loyalty dev exited before listening")
            })
            .await??;
        let text = std::fs::read_to_string(data_dir.join("demo-keys.env"))?;
        let keys = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        wait_ready(&reqwest::Client::new(), &address).await?;
        Ok(DevProcess {
            child,
            address,
            keys,
            banner,
        })
    }

    pub fn key(&self, name: &str) -> String {
        self.keys.get(name).cloned().unwrap_or_default()
    }

    /// The process id (to signal it, or to change its resource limits).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for the process to exit (its shutdown makes everything durable and
    /// releases the data directory); `Ok(true)` when it exited with status 0.
    pub fn stop(mut self) -> anyhow::Result<bool> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("sending SIGTERM")?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(self.child.wait()?.success())
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The balance (`data-points`) the member's card page shows in `b`, once it is loaded.
pub async fn card_page_points(
    b: &loyalty_testkit::chromium::Browser,
    wait: std::time::Duration,
) -> u64 {
    let v = b
        .wait_for(
            "const e = document.getElementById('balance'); return e && e.dataset.points",
            wait,
        )
        .await
        .expect("the balance");
    v.as_str()
        .and_then(|s| s.parse().ok())
        .expect("data-points is a number")
}
