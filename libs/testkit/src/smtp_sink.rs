//! A real SMTP server for e-mail tests: PyPI `aiosmtpd` (a small handler script, `smtp_sink.py`
//! beside this file) on a free loopback port, with its own temporary directory where each
//! accepted message is saved as `<n>.eml`, killed when the [`SmtpSink`] is dropped.
//!
//! The script announces each message as one JSON line on its stdout (the envelope, the headers
//! decoded, the text body decoded by Python's `email` package); a reader thread turns them into
//! [`ReceivedMail`]s and wakes [`SmtpSink::wait_for`] (a watch channel, no polling).
//! Recipients whose local part starts with `reject-550` are refused with `550`, those starting
//! with `defer-451` with `451`, to test how a sender classifies them.
//!
//! Python: `$LOYALTY_PYTHON` if set, else the test venv (`$LOYALTY_CACHE_DIR/venv`, by default
//! `~/.cache/loyalty/venv`) that `scripts/test.sh` fills, pinned by
//! `scripts/python-constraints.txt`.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use loyalty_testkit::smtp_sink::SmtpSink;
//! if let Err(reason) = SmtpSink::available() {
//!     println!("SKIPPED: {reason}");
//!     return Ok(());
//! }
//! let sink = SmtpSink::start()?;
//! let port = sink.port(); // send to 127.0.0.1:port
//! let mails = sink.wait_for(1, Duration::from_secs(10)).await?;
//! assert_eq!(mails[0].header("List-Unsubscribe-Post"), Some("List-Unsubscribe=One-Click"));
//! # let _ = port; Ok(()) }
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::watch;

/// Environment variable naming the Python interpreter that has `aiosmtpd`.
pub const PYTHON_ENV: &str = "LOYALTY_PYTHON";

/// The version `scripts/test.sh` installs (pinned in `scripts/python-constraints.txt`).
pub const AIOSMTPD_VERSION: &str = "1.4.6";

/// The handler script, written into each sink's directory.
const SCRIPT: &str = include_str!("smtp_sink.py");

/// How long the server may take to say `READY`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One message the sink accepted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct ReceivedMail {
    /// The envelope's sender (`MAIL FROM`).
    pub from: String,
    /// The envelope's accepted recipients (`RCPT TO`).
    pub to: Vec<String>,
    /// The `Subject`, decoded (RFC 2047).
    pub subject: String,
    /// Every header, decoded, in order.
    pub headers: Vec<(String, String)>,
    /// The text/plain body, decoded (quoted-printable, base64, charset), line breaks as `\n`.
    pub body: String,
    /// Where the raw message was saved.
    pub file: PathBuf,
}

impl ReceivedMail {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The message as received, byte for byte.
    pub fn raw(&self) -> anyhow::Result<Vec<u8>> {
        std::fs::read(&self.file).with_context(|| format!("reading {}", self.file.display()))
    }
}

/// A running aiosmtpd owned by a test.
pub struct SmtpSink {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    received: watch::Receiver<Vec<ReceivedMail>>,
}

impl SmtpSink {
    /// The Python to run (one that imports `aiosmtpd`), or why there is none and how to get it.
    pub fn available() -> Result<PathBuf, String> {
        find_python().map_err(crate::missing)
    }

    /// Starts a sink on a free loopback port and waits until it listens. Retries with another
    /// port if the chosen one was taken in between.
    pub fn start() -> anyhow::Result<SmtpSink> {
        let python = Self::available().map_err(anyhow::Error::msg)?;
        let mut last = None;
        for _ in 0..3 {
            let port = crate::ports::free_port().context("finding a free port")?;
            match Self::start_on(&python, port) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("aiosmtpd did not start")))
    }

    fn start_on(python: &Path, port: u16) -> anyhow::Result<SmtpSink> {
        let dir = tempfile::Builder::new()
            .prefix("loyalty-smtp-")
            .tempdir()
            .context("creating the sink's directory")?;
        let script = dir.path().join("smtp_sink.py");
        std::fs::write(&script, SCRIPT).context("writing smtp_sink.py")?;
        let mails = dir.path().join("mail");
        std::fs::create_dir(&mails)?;
        let log = dir.path().join("aiosmtpd.log");
        let mut child = Command::new(python)
            .arg(&script)
            .arg(port.to_string())
            .arg(&mails)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("running {}", python.display()))?;
        let stdout = child.stdout.take().context("the sink's stdout")?;
        let (tx, received) = watch::channel(Vec::new());
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || read_announcements(stdout, ready_tx, tx));
        let mut sink = SmtpSink {
            port,
            dir,
            child: Some(child),
            received,
        };
        if ready_rx.recv_timeout(START_TIMEOUT).is_err() {
            crate::ports::kill(&mut sink.child);
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "aiosmtpd on port {port} did not start within {START_TIMEOUT:?}; its log ends \
                 with:\n{}",
                tail.join("\n")
            );
        }
        Ok(sink)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The sink's directory (`mail/` holds the saved messages, `aiosmtpd.log` its stderr).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every message accepted so far.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.received.borrow().clone()
    }

    /// Waits until at least `n` messages were accepted (at most `timeout`); returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<ReceivedMail>> {
        let mut rx = self.received.clone();
        let waited = match tokio::time::timeout(timeout, rx.wait_for(|v| v.len() >= n)).await {
            Ok(Ok(v)) => Ok(v.clone()),
            Ok(Err(_)) => Err(anyhow::anyhow!(
                "the SMTP sink stopped (see {})",
                self.dir.path().join("aiosmtpd.log").display()
            )),
            Err(_) => Err(anyhow::anyhow!(
                "{} message(s) accepted within {timeout:?}, {n} expected",
                self.received.borrow().len()
            )),
        };
        waited
    }
}

/// Reads the script's stdout: `READY` once, then one JSON line per accepted message.
fn read_announcements(
    stdout: std::process::ChildStdout,
    ready: mpsc::Sender<()>,
    tx: watch::Sender<Vec<ReceivedMail>>,
) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line == "READY" {
            let _ = ready.send(());
            continue;
        }
        match serde_json::from_str::<ReceivedMail>(&line) {
            Ok(mail) => tx.send_modify(|v| v.push(mail)),
            Err(e) => tracing::warn!(error = %e, "SMTP sink: unreadable announcement"),
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        crate::ports::kill(&mut self.child);
    }
}

/// `$LOYALTY_PYTHON`, else the test venv's python, if it imports `aiosmtpd`.
fn find_python() -> Result<PathBuf, String> {
    let install = format!(
        "install it: <venv>/bin/pip install -c scripts/python-constraints.txt \
         aiosmtpd=={AIOSMTPD_VERSION} (scripts/test.sh does it), or set {PYTHON_ENV}"
    );
    let python = match std::env::var_os(PYTHON_ENV) {
        Some(p) => PathBuf::from(p),
        None => venv_python().ok_or_else(|| format!("aiosmtpd not found: no HOME; {install}"))?,
    };
    if !python.is_file() {
        return Err(format!(
            "aiosmtpd not found: {} does not exist; {install}",
            python.display()
        ));
    }
    let ok = Command::new(&python)
        .args(["-c", "import aiosmtpd.controller"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(python)
    } else {
        Err(format!(
            "aiosmtpd not found: {} cannot import it; {install}",
            python.display()
        ))
    }
}

/// `$LOYALTY_CACHE_DIR/venv/bin/python`, by default under `~/.cache/loyalty` (scripts/test.sh).
fn venv_python() -> Option<PathBuf> {
    let cache = match std::env::var_os("LOYALTY_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/loyalty"),
    };
    Some(cache.join("venv/bin/python"))
}

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish()
    }
}
