//! Real `loyalty` binaries as OS processes, and a [`Cluster`] of them on real servers.
//!
//! [`LoyaltyProcess::spawn`] starts `loyalty <mode>` on a free loopback port
//! (`LOYALTY_LISTEN=127.0.0.1:0`; the port is read from the `listening on http://…` line the
//! binary prints on stdout), with its stdout and stderr written to files in a log directory.
//! The test then drives it like an operator would: [`LoyaltyProcess::wait_ready`] polls
//! `/readyz` until a deadline, [`LoyaltyProcess::kill9`] sends SIGKILL, [`LoyaltyProcess::sigterm`]
//! asks for a graceful stop and [`LoyaltyProcess::wait_exit`] waits for it, and
//! [`LoyaltyProcess::metrics`] scrapes `/metrics`. A process still running when its handle is
//! dropped is killed. When the handle is dropped during a panic (a failed test), the end of its
//! logs is printed and its log directory is kept.
//!
//! [`Cluster`] puts the distributed shape together: a PostgreSQL cluster (the shared store),
//! a redis-server, the tansu broker, `loyalty migrate`, then N `loyalty gateway` and M
//! `loyalty engine` processes; engines and gateways can be added, killed (`kill -9`) or stopped
//! (SIGTERM) one by one, and [`Cluster::provision`] sets a franchise up over HTTP with the admin
//! key.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use loyalty_testkit::process::Cluster;
//! if let Err(why) = Cluster::available() {
//!     println!("SKIPPED: {why}");
//!     return Ok(());
//! }
//! let mut cluster = Cluster::builder().gateways(2).engines(1).start().await?;
//! let franchise = cluster
//!     .provision("Demo", serde_json::json!({"currency": "EUR", "points_per_unit": 1,
//!         "tier_qualification": {"metric": "spend_cents", "window_days": 365},
//!         "tiers": [{"name": "Bronze", "threshold": 0, "multiplier_pct": 100}]}), 2)
//!     .await?;
//! let e = cluster.add_engine().await?;
//! cluster.kill9_engine(e);
//! # let _ = franchise;
//! # Ok(()) }
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::postgres::PostgresServer;
use crate::redis::RedisServer;
use crate::tansu::TansuBroker;

/// How long a process may take to print its `listening on` line.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`Cluster`] waits for a new process to answer `/readyz` with 200 (an engine is
/// ready once the consumer group gave it partitions: a rebalance on tansu takes seconds).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Lines of each log printed when a test fails.
const TAIL_LINES: usize = 40;

/// The `loyalty` binary to run: `$LOYALTY_BIN`, else the one in the target directory of the
/// running test executable (`target/<profile>/loyalty`, built by `cargo build --bin loyalty`,
/// which `scripts/test.sh` runs first). `Err` says how to get it.
pub fn loyalty_binary() -> Result<PathBuf, String> {
    find_binary().map_err(crate::missing)
}

fn find_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LOYALTY_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("LOYALTY_BIN={} is not a file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/deps/<test> -> target/<profile>/loyalty
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} has no target directory", exe.display()))?;
    let bin = dir.join("loyalty");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} does not exist: build it with `cargo build --bin loyalty` (same profile as the \
             tests) or set LOYALTY_BIN",
            bin.display()
        ))
    }
}

/// Where a process's logs go: its own temporary directory, or one shared with others (a
/// cluster's), which then owns its lifetime.
enum LogDir {
    Own(Option<tempfile::TempDir>),
    Shared(PathBuf),
}

impl LogDir {
    fn path(&self) -> &Path {
        match self {
            LogDir::Own(Some(d)) => d.path(),
            LogDir::Own(None) => Path::new(""),
            LogDir::Shared(p) => p,
        }
    }
}

/// A `loyalty` process started by a test. Killed (SIGKILL) when dropped.
pub struct LoyaltyProcess {
    name: String,
    mode: String,
    child: Child,
    url: String,
    port: u16,
    status: Option<ExitStatus>,
    logs: LogDir,
    http: reqwest::Client,
}

impl std::fmt::Debug for LoyaltyProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoyaltyProcess")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("pid", &self.child.id())
            .field("url", &self.url)
            .field("status", &self.status)
            .finish()
    }
}

impl LoyaltyProcess {
    /// Starts `binary <mode>` with `env` (on top of the test's environment, from which every
    /// `LOYALTY_*` variable is removed first) on a free loopback port, and waits until it
    /// prints the address it listens on. Its logs go to a new temporary directory.
    pub async fn spawn(
        binary: &Path,
        mode: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<LoyaltyProcess> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("loyalty-{mode}-"))
            .tempdir()
            .context("creating the log directory")?;
        Self::start(binary, mode, mode, env, LogDir::Own(Some(dir))).await
    }

    /// Like [`LoyaltyProcess::spawn`], named `name` (its log files are `<name>.stdout.log` and
    /// `<name>.stderr.log`) with its logs in `log_dir`, which the caller keeps.
    pub async fn spawn_named(
        binary: &Path,
        mode: &str,
        name: &str,
        env: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<LoyaltyProcess> {
        Self::start(
            binary,
            mode,
            name,
            env,
            LogDir::Shared(log_dir.to_path_buf()),
        )
        .await
    }

    async fn start(
        binary: &Path,
        mode: &str,
        name: &str,
        env: &[(String, String)],
        logs: LogDir,
    ) -> anyhow::Result<LoyaltyProcess> {
        let dir = logs.path().to_path_buf();
        let stdout_path = dir.join(format!("{name}.stdout.log"));
        let stderr_path = dir.join(format!("{name}.stderr.log"));
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))
        };
        let stdout_file = open(&stdout_path)?;
        let stderr_file = open(&stderr_path)?;
        let mut cmd = Command::new(binary);
        cmd.arg(mode);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LOYALTY_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("LOYALTY_LISTEN", "127.0.0.1:0")
            .env(
                "RUST_LOG",
                std::env::var("LOYALTY_TEST_PROCESS_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_file);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} {mode}", binary.display()))?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        // Copies stdout to its file, line by line, and hands over the address once printed.
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || tee_stdout(stdout, stdout_file, tx))
            .context("starting the stdout thread")?;
        let mut p = LoyaltyProcess {
            name: name.to_owned(),
            mode: mode.to_owned(),
            child,
            url: String::new(),
            port: 0,
            status: None,
            logs,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("HTTP client")?,
        };
        let address = match tokio::time::timeout(LISTEN_TIMEOUT, rx).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => {
                let status = p.wait_exit(Duration::from_secs(5)).await.ok();
                bail!(
                    "{name} ({mode}) exited before listening ({}):\n{}",
                    status.map_or("still running".into(), |s| s.to_string()),
                    p.logs_tail(TAIL_LINES)
                );
            }
            Err(_) => bail!(
                "{name} ({mode}) printed no `listening on` line within {LISTEN_TIMEOUT:?}:\n{}",
                p.logs_tail(TAIL_LINES)
            ),
        };
        let port = address
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
            .ok_or_else(|| anyhow!("{name}: cannot read a port in {address:?}"))?;
        p.url = address.trim_end_matches('/').to_owned();
        p.port = port;
        Ok(p)
    }

    /// Runs `binary <args>` to completion with `env` (the test's `LOYALTY_*` variables
    /// removed), within `timeout`; `Err` with its output unless it exits with 0. For one-shot
    /// commands such as `loyalty migrate`.
    pub async fn run(
        binary: &Path,
        args: &[&str],
        env: &[(String, String)],
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let mut cmd = plain_command(binary, args, env);
        let what = format!("{} {}", binary.display(), args.join(" "));
        let out = tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || cmd.output()))
            .await
            .map_err(|_| anyhow!("{what} did not finish within {timeout:?}"))?
            .context("waiting for the command")?
            .with_context(|| format!("running {what}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("{what} failed ({}):\n{text}", out.status);
        }
        Ok(text)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mode(&self) -> &str {
        &self.mode
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding the log files.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    pub fn stdout_path(&self) -> PathBuf {
        self.log_dir().join(format!("{}.stdout.log", self.name))
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.log_dir().join(format!("{}.stderr.log", self.name))
    }

    /// Whether the process is still running (not exited, not reaped).
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(s)) => {
                self.status = Some(s);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// The exit status, once it exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.status
    }

    /// Polls `/readyz` until it answers 200, the process exits, or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                bail!(
                    "{} exited ({}) before it was ready:\n{}",
                    self.name,
                    self.status.map_or(String::new(), |s| s.to_string()),
                    self.logs_tail(TAIL_LINES)
                );
            }
            if self.is_ready().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready within {timeout:?}:\n{}",
                    self.name,
                    self.logs_tail(TAIL_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One `/readyz` probe: 200 or not.
    pub async fn is_ready(&self) -> bool {
        self.http
            .get(format!("{}/readyz", self.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let r = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .with_context(|| format!("scraping {}", self.name))?;
        if !r.status().is_success() {
            bail!("{}: /metrics answered {}", self.name, r.status());
        }
        Ok(r.text().await?)
    }

    /// SIGKILL (no shutdown code runs), then reaps the process. Does nothing if it exited.
    pub fn kill9(&mut self) {
        if self.status.is_some() {
            return;
        }
        let _ = self.child.kill();
        if let Ok(s) = self.child.wait() {
            self.status = Some(s);
        }
    }

    /// SIGTERM: the process finishes its work and exits (see [`LoyaltyProcess::wait_exit`]).
    pub fn sigterm(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGTERM, "TERM")
    }

    /// SIGSTOP: the process is frozen where it stands (no heartbeat, no write, no reply), as
    /// when its host is cut off the network or stalls; [`LoyaltyProcess::resume`] thaws it.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGSTOP, "STOP")
    }

    /// SIGCONT: a paused process goes on from where it stood, with whatever it held in flight.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGCONT, "CONT")
    }

    fn signal(&mut self, signal: libc::c_int, name: &str) -> anyhow::Result<()> {
        if !self.is_running() {
            bail!("{} is not running", self.name);
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid")?;
        // SAFETY: kill(2) with a pid this handle owns and has not reaped.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill -{name} {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until the process exits, polling its status, for at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exit_status() {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} still running {timeout:?} later:\n{}",
                    self.name,
                    self.logs_tail(TAIL_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The last `n` lines of stderr and of stdout, headed by the file names.
    pub fn logs_tail(&self, n: usize) -> String {
        let mut out = String::new();
        for path in [self.stderr_path(), self.stdout_path()] {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            out.push_str(&format!(
                "--- {} (last {} of {} lines)\n",
                path.display(),
                lines.len() - from,
                lines.len()
            ));
            for l in &lines[from..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for LoyaltyProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "== {} ({}, pid {}, {}):\n{}",
                self.name,
                self.mode,
                self.child.id(),
                self.status.map_or("running".into(), |s| s.to_string()),
                self.logs_tail(TAIL_LINES)
            );
            if let LogDir::Own(d) = &mut self.logs {
                if let Some(d) = d.take() {
                    eprintln!("logs kept in {}", d.keep().display());
                }
            }
        }
    }
}

fn plain_command(binary: &Path, args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LOYALTY_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env(
        "RUST_LOG",
        std::env::var("LOYALTY_TEST_PROCESS_LOG").unwrap_or_else(|_| "info".into()),
    )
    .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    .stdin(Stdio::null());
    cmd
}

/// Copies the child's stdout to `file`, and sends the address of the first
/// `listening on <address>` line on `tx`. Returns at end of file (the process exited).
fn tee_stdout(
    stdout: std::process::ChildStdout,
    mut file: std::fs::File,
    tx: tokio::sync::oneshot::Sender<String>,
) {
    let mut tx = Some(tx);
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let _ = file.write_all(&buf);
        if tx.is_some() {
            let line = String::from_utf8_lossy(&buf);
            if let Some(rest) = line.split("listening on ").nth(1) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        }
    }
}

/// The sum of every series of metric `name` (any labels) in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    metric_matching(text, name, "")
}

/// The sum of the series of metric `name` whose labels contain `labels` (e.g.
/// `kind="purchase"`; empty: every series).
pub fn metric_matching(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (base, rest) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            if base != name || !rest.contains(labels) {
                return None;
            }
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// A cluster of processes on real servers.

/// A franchise set up over HTTP: its HQ key and its stores' ids and keys.
#[derive(Clone, Debug)]
pub struct Provisioned {
    pub id: String,
    pub hq_key: String,
    /// `(store id, store key)`.
    pub stores: Vec<(String, String)>,
}

/// How to start a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    gateways: usize,
    engines: usize,
    partitions: u32,
    admin_key: String,
    pii_keys: String,
    env: Vec<(String, String)>,
    binary: Option<PathBuf>,
}

impl ClusterBuilder {
    /// Gateways started with the cluster (default 1).
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    /// Engine nodes started with the cluster (default 1).
    pub fn engines(mut self, n: usize) -> Self {
        self.engines = n;
        self
    }

    /// Partitions of the command topic (default 12).
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = n;
        self
    }

    /// The admin key of every process (default: a random one; never `dev-admin-key`, which
    /// the binary refuses outside `dev`).
    pub fn admin_key(mut self, key: &str) -> Self {
        self.admin_key = key.to_owned();
        self
    }

    /// An extra environment variable for every process (e.g. `LOYALTY_CHECKPOINT_MS`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The `loyalty` binary (default: [`loyalty_binary`]).
    pub fn binary(mut self, path: PathBuf) -> Self {
        self.binary = Some(path);
        self
    }

    /// Starts PostgreSQL, redis-server and tansu, runs `loyalty migrate`, then the gateways and
    /// the engines, and waits until every process answers `/readyz` with 200.
    pub async fn start(self) -> anyhow::Result<Cluster> {
        let binary = match self.binary.clone() {
            Some(b) => b,
            None => loyalty_binary().map_err(anyhow::Error::msg)?,
        };
        let dir = tempfile::Builder::new()
            .prefix("loyalty-cluster-")
            .tempdir()
            .context("creating the cluster's directory")?;
        let postgres = PostgresServer::start().context("starting PostgreSQL")?;
        let postgres_url = postgres
            .create_database("loyalty")
            .context("creating the database")?;
        let redis = RedisServer::start().context("starting redis-server")?;
        let broker = TansuBroker::start().await.context("starting tansu")?;
        let mut cluster = Cluster {
            binary,
            builder: self.clone(),
            postgres_url,
            gateways: Vec::new(),
            engines: Vec::new(),
            broker,
            redis,
            postgres,
            dir: Some(dir),
        };
        let out = LoyaltyProcess::run(
            &cluster.binary,
            &["migrate"],
            &cluster.env(),
            Duration::from_secs(120),
        )
        .await
        .context("loyalty migrate")?;
        tracing::info!("loyalty migrate: {}", out.trim());
        // The first gateway creates the topics; the others then start together.
        if self.gateways > 0 {
            cluster.add_gateway().await?;
        }
        let mut starting = Vec::new();
        for _ in 1..self.gateways {
            starting.push(cluster.spawn("gateway").await?);
        }
        for _ in 0..self.engines {
            starting.push(cluster.spawn("engine").await?);
        }
        for (kind, i) in starting {
            let p = match kind {
                "gateway" => cluster.gateways[i].as_mut(),
                _ => cluster.engines[i].as_mut(),
            }
            .expect("just started");
            p.wait_ready(READY_TIMEOUT).await?;
        }
        Ok(cluster)
    }
}

/// PostgreSQL, redis-server, tansu, and `loyalty` gateways and engines as OS processes, all on
/// loopback ports. Dropping it kills every process and stops the servers; on a failed test the
/// directory of the processes' logs is kept and the end of each log printed.
pub struct Cluster {
    binary: PathBuf,
    builder: ClusterBuilder,
    postgres_url: String,
    /// Indexed by the order they were started; a stopped process stays (its logs are kept).
    gateways: Vec<Option<LoyaltyProcess>>,
    engines: Vec<Option<LoyaltyProcess>>,
    pub broker: TansuBroker,
    pub redis: RedisServer,
    pub postgres: PostgresServer,
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            gateways: 1,
            engines: 1,
            partitions: 12,
            admin_key: format!(
                "test-admin-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ),
            // A fresh key per cluster: `loyalty gateway` and `engine` refuse the dev ring.
            pii_keys: loyalty_core::sealing::KeyRing::new_key_spec("cluster")
                .unwrap_or_else(|e| panic!("a key spec: {e}")),
            env: Vec::new(),
            binary: None,
        }
    }

    /// `Ok` when everything a cluster needs is on this machine (the `loyalty` binary,
    /// PostgreSQL, redis-server, tansu); otherwise the first thing missing and how to get it.
    pub fn available() -> Result<(), String> {
        loyalty_binary()?;
        PostgresServer::available().map(|_| ())?;
        RedisServer::available().map(|_| ())?;
        TansuBroker::available()?;
        Ok(())
    }

    /// The environment every process of the cluster gets.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("LOYALTY_KAFKA_BROKERS".to_owned(), self.broker.brokers()),
            ("LOYALTY_REDIS_URL".to_owned(), self.redis.url()),
            ("LOYALTY_POSTGRES_URL".to_owned(), self.postgres_url.clone()),
            (
                "LOYALTY_ADMIN_KEY".to_owned(),
                self.builder.admin_key.clone(),
            ),
            ("LOYALTY_PII_KEYS".to_owned(), self.builder.pii_keys.clone()),
            (
                "LOYALTY_PARTITIONS".to_owned(),
                self.builder.partitions.to_string(),
            ),
            ("LOYALTY_DEMO".to_owned(), "false".to_owned()),
            ("LOYALTY_HTTP_WORKERS".to_owned(), "2".to_owned()),
        ];
        env.extend(self.builder.env.iter().cloned());
        env
    }

    /// The shared store's URL (`postgres://…`).
    pub fn postgres_url(&self) -> &str {
        &self.postgres_url
    }

    /// The key ring every process seals personal data with (`LOYALTY_PII_KEYS`).
    pub fn pii_keys(&self) -> &str {
        &self.builder.pii_keys
    }

    pub fn admin_key(&self) -> &str {
        &self.builder.admin_key
    }

    pub fn partitions(&self) -> u32 {
        self.builder.partitions
    }

    /// Every engine started so far (running or not), by name, with its stderr log.
    pub fn engine_logs(&self) -> Vec<(String, PathBuf)> {
        self.engines
            .iter()
            .flatten()
            .map(|e| (e.name().to_string(), e.stderr_path()))
            .collect()
    }

    /// Where the processes' logs are.
    pub fn log_dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Starts one more process of `mode` (`gateway` or `engine`) without waiting for it to be
    /// ready; returns its kind and index.
    async fn spawn(&mut self, mode: &'static str) -> anyhow::Result<(&'static str, usize)> {
        let list = if mode == "gateway" {
            &self.gateways
        } else {
            &self.engines
        };
        let i = list.len();
        let name = format!("{mode}-{i}");
        let data = self.log_dir().join(format!("{name}-data"));
        std::fs::create_dir_all(&data)?;
        let mut env = self.env();
        env.push(("LOYALTY_DATA_DIR".into(), data.display().to_string()));
        let p = LoyaltyProcess::spawn_named(&self.binary, mode, &name, &env, self.log_dir())
            .await
            .with_context(|| format!("starting {name}"))?;
        tracing::info!(name, url = p.url(), pid = p.pid(), "started");
        if mode == "gateway" {
            self.gateways.push(Some(p));
        } else {
            self.engines.push(Some(p));
        }
        Ok((mode, i))
    }

    /// Starts one more engine node and waits until it is ready (it joined the group and got
    /// partitions); returns its index.
    pub async fn add_engine(&mut self) -> anyhow::Result<usize> {
        let (_, i) = self.spawn("engine").await?;
        self.engines[i]
            .as_mut()
            .expect("started")
            .wait_ready(READY_TIMEOUT)
            .await?;
        Ok(i)
    }

    /// Starts one more engine node without waiting for it to be ready (a rebalance starts).
    pub async fn start_engine(&mut self) -> anyhow::Result<usize> {
        Ok(self.spawn("engine").await?.1)
    }

    /// Starts one more gateway and waits until it is ready; returns its index.
    pub async fn add_gateway(&mut self) -> anyhow::Result<usize> {
        let (_, i) = self.spawn("gateway").await?;
        self.gateways[i]
            .as_mut()
            .expect("started")
            .wait_ready(READY_TIMEOUT)
            .await?;
        Ok(i)
    }

    /// Engine `i` (also once it stopped: its logs and status stay readable).
    pub fn engine(&mut self, i: usize) -> &mut LoyaltyProcess {
        self.engines[i].as_mut().expect("engine handle")
    }

    pub fn gateway(&mut self, i: usize) -> &mut LoyaltyProcess {
        self.gateways[i].as_mut().expect("gateway handle")
    }

    /// Indexes of the engines still running.
    pub fn live_engines(&mut self) -> Vec<usize> {
        live(&mut self.engines)
    }

    /// Indexes of the gateways still running.
    pub fn live_gateways(&mut self) -> Vec<usize> {
        live(&mut self.gateways)
    }

    /// Base URLs of the gateways still running.
    pub fn gateway_urls(&mut self) -> Vec<String> {
        self.live_gateways()
            .into_iter()
            .map(|i| self.gateway(i).url().to_owned())
            .collect()
    }

    /// `kill -9` of engine `i`.
    pub fn kill9_engine(&mut self, i: usize) {
        self.engine(i).kill9();
        tracing::info!(engine = i, "engine killed (SIGKILL)");
    }

    /// SIGTERM to engine `i`, then waits (at most `timeout`) until it has drained and exited.
    pub async fn sigterm_engine(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let e = self.engine(i);
        e.sigterm()?;
        let status = e.wait_exit(timeout).await?;
        tracing::info!(engine = i, %status, "engine stopped (SIGTERM)");
        if !status.success() {
            bail!(
                "engine-{i} exited with {status} after SIGTERM:\n{}",
                e.logs_tail(TAIL_LINES)
            );
        }
        Ok(())
    }

    /// `kill -9` of gateway `i`.
    pub fn kill9_gateway(&mut self, i: usize) {
        self.gateway(i).kill9();
        tracing::info!(gateway = i, "gateway killed (SIGKILL)");
    }

    /// The `/metrics` text of every live engine, by index.
    pub async fn engine_metrics(&mut self) -> Vec<(usize, anyhow::Result<String>)> {
        let mut out = Vec::new();
        for i in self.live_engines() {
            let m = self.engine(i).metrics().await;
            out.push((i, m));
        }
        out
    }

    /// Creates a franchise with `program` (admin key) and `stores` stores (HQ key) through the
    /// first live gateway.
    pub async fn provision(
        &mut self,
        name: &str,
        program: Value,
        stores: usize,
    ) -> anyhow::Result<Provisioned> {
        let url = self
            .gateway_urls()
            .into_iter()
            .next()
            .context("no gateway is running")?;
        provision(&url, self.admin_key(), name, program, stores).await
    }
}

fn live(list: &mut [Option<LoyaltyProcess>]) -> Vec<usize> {
    list.iter_mut()
        .enumerate()
        .filter_map(|(i, p)| {
            let running = p.as_mut().is_some_and(|p| p.is_running());
            running.then_some(i)
        })
        .collect()
}

/// Creates a franchise with `program` and `stores` stores through the gateway at `base`, as an
/// operator would: `POST /v1/franchises` with the admin key, then `POST
/// /v1/franchises/{id}/stores` with the franchise's HQ key.
pub async fn provision(
    base: &str,
    admin_key: &str,
    name: &str,
    program: Value,
    stores: usize,
) -> anyhow::Result<Provisioned> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let post = |path: String, key: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("{base}{path}"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .with_context(|| format!("POST {path}"))?;
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if status != 201 {
                bail!("POST {path} answered {status}: {v}");
            }
            Ok::<Value, anyhow::Error>(v)
        }
    };
    let f = post(
        "/v1/franchises".into(),
        admin_key.to_owned(),
        json!({"name": name, "program": program}),
    )
    .await?;
    let id = f["id"].as_str().context("franchise id")?.to_owned();
    let hq_key = f["hq_api_key"].as_str().context("hq key")?.to_owned();
    let mut out = Provisioned {
        id: id.clone(),
        hq_key: hq_key.clone(),
        stores: Vec::new(),
    };
    for s in 0..stores {
        let v = post(
            format!("/v1/franchises/{id}/stores"),
            hq_key.clone(),
            json!({"name": format!("Store {}", s + 1)}),
        )
        .await?;
        out.stores.push((
            v["id"].as_str().context("store id")?.to_owned(),
            v["api_key"].as_str().context("store key")?.to_owned(),
        ));
    }
    Ok(out)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Processes first (they print their logs' ends on a failure), then the servers.
        for p in self.engines.iter_mut().chain(self.gateways.iter_mut()) {
            drop(p.take());
        }
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!("cluster logs kept in {}", d.keep().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_by_name_and_labels() {
        let text = "# HELP x y\n# TYPE loyalty_events_applied_total counter\n\
                    loyalty_events_applied_total{kind=\"purchase\"} 12\n\
                    loyalty_events_applied_total{kind=\"refund\"} 3\n\
                    loyalty_events_applied_totals 100\n\
                    loyalty_events_replayed_total 4\n";
        assert_eq!(metric_sum(text, "loyalty_events_applied_total"), 15.0);
        assert_eq!(
            metric_matching(text, "loyalty_events_applied_total", "kind=\"refund\""),
            3.0
        );
        assert_eq!(metric_sum(text, "loyalty_events_replayed_total"), 4.0);
        assert_eq!(metric_sum(text, "absent"), 0.0);
    }

    /// A real `loyalty dev` as a process: port from its stdout, ready, metrics, SIGTERM and a
    /// clean exit; then one killed with SIGKILL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dev_process_is_started_probed_and_stopped() {
        let bin = match find_binary() {
            Ok(b) => b,
            Err(reason) => {
                println!("SKIPPED: {reason}");
                return;
            }
        };
        let data = tempfile::tempdir().unwrap();
        let env = vec![
            (
                "LOYALTY_DATA_DIR".to_owned(),
                data.path().display().to_string(),
            ),
            ("LOYALTY_DEMO".to_owned(), "false".to_owned()),
            ("LOYALTY_PARTITIONS".to_owned(), "2".to_owned()),
        ];
        let mut p = LoyaltyProcess::spawn(&bin, "dev", &env).await.unwrap();
        assert!(p.url().starts_with("http://127.0.0.1:"), "{}", p.url());
        assert_ne!(p.port(), 0);
        p.wait_ready(Duration::from_secs(30)).await.unwrap();
        let m = p.metrics().await.unwrap();
        assert!(m.contains("loyalty_"), "{m}");
        p.sigterm().unwrap();
        let status = p.wait_exit(Duration::from_secs(30)).await.unwrap();
        assert!(status.success(), "{status}");
        assert!(!p.is_running());
        let stdout = std::fs::read_to_string(p.stdout_path()).unwrap();
        assert!(stdout.contains("listening on"), "{stdout}");

        let mut p = LoyaltyProcess::spawn(&bin, "dev", &env).await.unwrap();
        p.wait_ready(Duration::from_secs(30)).await.unwrap();
        p.kill9();
        assert!(!p.is_running());
        assert!(!p.exit_status().unwrap().success());
    }
}
