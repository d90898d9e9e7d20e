//! The tansu broker (a Kafka-compatible broker from crates.io) for tests.
//!
//! Apache Kafka cannot be downloaded on these machines; `tansu` 0.6.0 is installed once by
//! `scripts/install-tansu.sh` into `${LOYALTY_CACHE_DIR:-$HOME/.cache/loyalty}/tansu-0.6.0`.
//! [`TansuBroker::start`] runs it on a free loopback port with the SQLite storage engine
//! (`sqlite:///broker.db`, relative to the broker's working directory, a temporary directory
//! owned by the handle), so [`TansuBroker::kill9`] then [`TansuBroker::restart`] keeps every
//! acknowledged record. The broker is killed when the handle is dropped.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use loyalty_testkit::tansu::TansuBroker;
//! if let Err(why) = TansuBroker::available() {
//!     println!("SKIPPED: {why}");
//!     return Ok(());
//! }
//! let broker = TansuBroker::start().await?;
//! let brokers: String = broker.brokers(); // "127.0.0.1:PORT"
//! # Ok(()) }
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::ports::free_port;

/// The version `scripts/install-tansu.sh` installs.
pub const TANSU_VERSION: &str = "0.6.0";

/// How to get the binary, for skip messages.
pub const INSTALL_HINT: &str = "tansu not installed (scripts/install-tansu.sh)";

/// How long a start waits for the broker to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running tansu broker on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct TansuBroker {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl TansuBroker {
    /// The tansu binary: `$LOYALTY_TANSU_BIN`, else where `scripts/install-tansu.sh` puts it,
    /// else `tansu` on the `PATH`. `Err` (with how to install it) if none exists.
    pub fn binary() -> Result<PathBuf, String> {
        if let Some(bin) = std::env::var_os("LOYALTY_TANSU_BIN") {
            let bin = PathBuf::from(bin);
            return if is_executable(&bin) {
                Ok(bin)
            } else {
                Err(format!(
                    "LOYALTY_TANSU_BIN={} is not an executable file",
                    bin.display()
                ))
            };
        }
        if let Some(bin) = install_path().filter(|b| is_executable(b)) {
            return Ok(bin);
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let bin = dir.join("tansu");
                if is_executable(&bin) {
                    return Ok(bin);
                }
            }
        }
        Err(INSTALL_HINT.to_string())
    }

    /// `Ok` when a tansu binary exists; otherwise the reason, naming the install command.
    pub fn available() -> Result<(), String> {
        Self::binary().map(|_| ()).map_err(crate::missing)
    }

    /// Starts a broker on a free loopback port, in a new temporary directory, and waits until
    /// it answers Kafka requests.
    pub async fn start() -> anyhow::Result<TansuBroker> {
        let bin = Self::binary().map_err(|e| anyhow!(e))?;
        let dir = tempfile::Builder::new()
            .prefix("tansu-")
            .tempdir()
            .context("creating the broker's directory")?;
        let port = free_port().context("finding a free port")?;
        let mut broker = TansuBroker {
            bin,
            port,
            dir,
            child: None,
        };
        // The free port may be taken between the probe and the bind: move on to another.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match broker.spawn_and_wait().await {
                Ok(()) => return Ok(broker),
                Err(e) if attempts >= 3 => return Err(e),
                Err(e) => {
                    broker.kill9();
                    tracing::warn!("tansu did not start on port {}: {e:#}", broker.port);
                    broker.port = free_port().context("finding a free port")?;
                }
            }
        }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's working directory (holding `broker.db` and `tansu.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        crate::ports::running(&mut self.child)
    }

    /// Kills the broker with SIGKILL (no shutdown of any kind) and reaps it. Idempotent.
    pub fn kill9(&mut self) {
        crate::ports::kill(&mut self.child);
    }

    /// Starts the broker again on the same port and directory (its data is kept), killing it
    /// first if it runs.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        let deadline = Instant::now() + START_TIMEOUT;
        // The port may linger for a moment after the kill.
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    self.kill9();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// The broker's output so far (stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    async fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .context("opening tansu.log")?;
        let log_err = log.try_clone().context("opening tansu.log")?;
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite:///broker.db"])
            .current_dir(self.dir.path())
            .env_remove("CLUSTER_ID")
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("DATA_LAKE")
            .env(
                "RUST_LOG",
                std::env::var("LOYALTY_TANSU_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !self.is_running() {
                bail!(
                    "tansu exited during startup on port {}; its output:\n{}",
                    self.port,
                    self.log()
                );
            }
            let probe = tokio::task::spawn_blocking(move || api_versions(addr)).await;
            if let Ok(Ok(())) = probe {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "tansu did not answer on port {} within {START_TIMEOUT:?}; its output:\n{}",
                    self.port,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Where `scripts/install-tansu.sh` installs the binary.
fn install_path() -> Option<PathBuf> {
    let cache = match std::env::var_os("LOYALTY_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?)
            .join(".cache")
            .join("loyalty"),
    };
    Some(
        cache
            .join(format!("tansu-{TANSU_VERSION}"))
            .join("bin")
            .join("tansu"),
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Sends a Kafka ApiVersions v0 request and checks the answer (correlation id, no error): the
/// broker is not only listening but serving the protocol.
fn api_versions(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let client_id = b"loyalty-testkit";
    let correlation: i32 = 0x1057;
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes()); // api key: ApiVersions
    body.extend_from_slice(&0i16.to_be_bytes()); // api version 0
    body.extend_from_slice(&correlation.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut request = (body.len() as i32).to_be_bytes().to_vec();
    request.extend_from_slice(&body);
    stream.write_all(&request)?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size)?;
    let size = i32::from_be_bytes(size);
    if !(6..=1 << 20).contains(&size) {
        bail!("unexpected ApiVersions response size {size}");
    }
    let mut response = vec![0u8; size as usize];
    stream.read_exact(&mut response)?;
    let got = i32::from_be_bytes([response[0], response[1], response[2], response[3]]);
    let error = i16::from_be_bytes([response[4], response[5]]);
    if got != correlation || error != 0 {
        bail!("unexpected ApiVersions response: correlation {got}, error {error}");
    }
    Ok(())
}
