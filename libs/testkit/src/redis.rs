//! A real `redis-server` for tests: started on a free loopback port with its own temporary
//! directory, no persistence, and killed when the [`RedisServer`] is dropped.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use loyalty_testkit::redis::RedisServer;
//! if let Err(reason) = RedisServer::available() {
//!     println!("SKIPPED: {reason}");
//!     return Ok(());
//! }
//! let server = RedisServer::start()?;
//! let url = server.url(); // redis://127.0.0.1:PORT/
//! # let _ = url;
//! # Ok(())
//! # }
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Environment variable naming the `redis-server` binary to use.
pub const SERVER_ENV: &str = "LOYALTY_REDIS_SERVER";

/// How long a server may take to answer its first `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `redis-server` owned by a test.
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// The `redis-server` binary to run: `$LOYALTY_REDIS_SERVER` if set, else the first one on
    /// `PATH`, else `/usr/bin/redis-server`. The error says why none was found and how to get
    /// one, for a test to print as its skip reason.
    pub fn available() -> Result<PathBuf, String> {
        Self::find().map_err(crate::missing)
    }

    fn find() -> Result<PathBuf, String> {
        if let Some(p) = std::env::var_os(SERVER_ENV) {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "redis-server not found: {SERVER_ENV}={} is not a file \
                     (apt-get install -y redis-server, or unset {SERVER_ENV})",
                    p.display()
                ))
            };
        }
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("redis-server"))
                .find(|p| p.is_file())
        });
        if let Some(p) = on_path {
            return Ok(p);
        }
        let usual = PathBuf::from("/usr/bin/redis-server");
        if usual.is_file() {
            return Ok(usual);
        }
        Err("redis-server not found: apt-get install -y redis-server".to_owned())
    }

    /// Starts a server on a free loopback port and waits (at most 10 s) until it answers
    /// `PING`. Retries with another port if the chosen one was taken in between.
    pub fn start() -> anyhow::Result<RedisServer> {
        let binary = Self::available().map_err(anyhow::Error::msg)?;
        let mut last = None;
        for _ in 0..3 {
            let port = crate::ports::free_port().context("finding a free port")?;
            match Self::start_with(binary.clone(), port) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// Starts a server on `port` (loopback), for a test that needs a known port.
    pub fn start_on(port: u16) -> anyhow::Result<RedisServer> {
        let binary = Self::available().map_err(anyhow::Error::msg)?;
        Self::start_with(binary, port)
    }

    fn start_with(binary: PathBuf, port: u16) -> anyhow::Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("loyalty-redis-")
            .tempdir()
            .context("creating the server's directory")?;
        let mut server = RedisServer {
            binary,
            port,
            dir,
            child: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (it holds `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server process is running (it was started and has not exited).
    pub fn is_running(&mut self) -> bool {
        crate::ports::running(&mut self.child)
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown) and waits for it to exit. Its
    /// port and directory are kept for [`RedisServer::restart`]. Does nothing if it is stopped.
    pub fn stop(&mut self) {
        crate::ports::kill(&mut self.child);
    }

    /// Same as [`RedisServer::stop`].
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Starts the server again on the same port (stopping it first if it runs), empty (there
    /// is no persistence), and waits until it answers `PING`.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let log = self.dir.path().join("redis.log");
        let child = Command::new(&self.binary)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("running {}", self.binary.display()))?;
        self.child = Some(child);
        if let Err(e) = self.wait_ready() {
            self.stop();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "redis-server on port {}: {e:#}; its log ends with:\n{}",
                self.port,
                tail.join("\n")
            );
        }
        Ok(())
    }

    /// Polls the port with `PING` until `+PONG` comes back, the process exits, or the start
    /// timeout passes.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("waiting for redis-server")? {
                    bail!("exited during startup ({status})");
                }
            }
            // A PONG counts only while our process runs (not another server on a reused port).
            if ping(&addr).is_ok() && self.is_running() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("no PONG within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One `PING` over a fresh connection.
fn ping(addr: &SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.set_write_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)?;
    if &buf == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&buf)
        )))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("binary", &self.binary)
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("running", &self.child.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_stops_and_restarts_on_its_port() {
        if let Err(reason) = RedisServer::available() {
            println!("SKIPPED: {reason}");
            return;
        }
        let mut server = RedisServer::start().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port()));
        assert!(server.url().starts_with("redis://127.0.0.1:"));
        assert!(server.is_running());
        ping(&addr).unwrap();

        server.stop();
        assert!(!server.is_running());
        assert!(ping(&addr).is_err());

        let port = server.port();
        server.restart().unwrap();
        assert_eq!(server.port(), port);
        ping(&addr).unwrap();
        drop(server);
        assert!(ping(&addr).is_err());
    }
}
