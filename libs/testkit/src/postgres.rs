//! A real PostgreSQL server for tests: a cluster made by `initdb` in a temporary directory,
//! started with `pg_ctl` on a free 127.0.0.1 port (its Unix socket in that directory too), and
//! torn down (`pg_ctl stop -m immediate`, directory removed) when the [`PostgresServer`] is
//! dropped.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use loyalty_testkit::postgres::PostgresServer;
//! if let Err(reason) = PostgresServer::available() {
//!     println!("SKIPPED: {reason}");
//!     return Ok(());
//! }
//! let server = PostgresServer::start()?;
//! let url = server.url(); // postgres://loyalty@127.0.0.1:PORT/postgres
//! let db = server.create_database("my_test")?; // postgres://loyalty@127.0.0.1:PORT/my_test
//! # let _ = (url, db);
//! # Ok(())
//! # }
//! ```
//!
//! **Root.** `initdb` refuses to run as root, and CI runs as root: then the cluster belongs to
//! the `postgres` system user of Debian's package (the temporary directory is chowned to it)
//! and `initdb` / `pg_ctl` run through `runuser -u postgres --`. The directory is made in the
//! system temporary directory, which that user must be able to enter (`/tmp` is).
//!
//! **Settings.** The cluster trusts local connections (`-A trust`, user `loyalty`), listens on
//! 127.0.0.1 only and is tuned to start and run fast: `fsync = off` and `full_page_writes =
//! off` (what reached the WAL survives a crash of the server's processes, which the OS page
//! cache outlives, but not a power cut, which no test simulates); `synchronous_commit` stays
//! `on`, so a commit returns only after its WAL is written, as in production, and
//! [`PostgresServer::kill`] then [`PostgresServer::restart`] keeps every acknowledged commit.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Environment variable naming the directory of the server binaries (`initdb`, `pg_ctl`,
/// `postgres`), e.g. `/usr/lib/postgresql/15/bin`.
pub const BIN_ENV: &str = "LOYALTY_POSTGRES_BIN";

/// The database user every test cluster has (the `initdb -U` superuser).
pub const USER: &str = "loyalty";

/// How to get the server, for skip messages.
pub const INSTALL_HINT: &str = "apt-get install -y postgresql";

/// How long a start may take (`pg_ctl -w -t`).
const START_TIMEOUT_SECS: u64 = 60;

/// Settings appended to the cluster's `postgresql.conf` (see the module docs).
const TEST_SETTINGS: &str = "
# loyalty test cluster (libs/testkit/src/postgres.rs)
fsync = off
full_page_writes = off
synchronous_commit = on
max_connections = 200
shared_buffers = 64MB
max_wal_size = 1GB
checkpoint_timeout = 30min
logging_collector = off
log_min_messages = warning
log_min_error_statement = panic
";

/// A running PostgreSQL cluster owned by a test.
pub struct PostgresServer {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    /// Set when running as root: the cluster belongs to this (uid, gid), the `postgres` user.
    owner: Option<(u32, u32)>,
    started: bool,
}

impl PostgresServer {
    /// The directory of the server binaries: `$LOYALTY_POSTGRES_BIN` if set, else the directory
    /// of the `initdb` found on `PATH` (symlinks resolved), else the newest
    /// `/usr/lib/postgresql/*/bin`. The error says why none was found and how to get one (and,
    /// as root, that the `postgres` user and `runuser` are needed), for a test to print as its
    /// skip reason; with `LOYALTY_REQUIRE_SERVERS=1` it panics instead.
    pub fn available() -> Result<PathBuf, String> {
        Self::find().map_err(crate::missing)
    }

    fn find() -> Result<PathBuf, String> {
        let bin = Self::find_bin()?;
        if is_root() {
            if postgres_user().is_none() {
                return Err(format!(
                    "PostgreSQL test cluster: running as root, and there is no `postgres` \
                     system user to own it ({INSTALL_HINT} creates it)"
                ));
            }
            if !Path::new("/usr/sbin/runuser").is_file() && which("runuser").is_none() {
                return Err(
                    "PostgreSQL test cluster: running as root, and `runuser` (util-linux) is \
                     missing"
                        .to_owned(),
                );
            }
        }
        Ok(bin)
    }

    fn find_bin() -> Result<PathBuf, String> {
        let complete = |dir: &Path| {
            ["initdb", "pg_ctl", "postgres", "createdb"]
                .iter()
                .all(|b| dir.join(b).is_file())
        };
        if let Some(dir) = std::env::var_os(BIN_ENV) {
            let dir = PathBuf::from(dir);
            return if complete(&dir) {
                Ok(dir)
            } else {
                Err(format!(
                    "PostgreSQL server not found: {BIN_ENV}={} does not hold initdb, pg_ctl, \
                     postgres and createdb ({INSTALL_HINT}, or unset {BIN_ENV})",
                    dir.display()
                ))
            };
        }
        if let Some(initdb) = which("initdb") {
            if let Some(dir) = std::fs::canonicalize(&initdb)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .filter(|d| complete(d))
            {
                return Ok(dir);
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, d)| complete(d))
            .collect();
        versions.sort();
        versions
            .pop()
            .map(|(_, d)| d)
            .ok_or_else(|| format!("PostgreSQL server not found (initdb, pg_ctl): {INSTALL_HINT}"))
    }

    /// Makes a cluster (`initdb`) and starts it on a free loopback port; retries with another
    /// port if the chosen one was taken in between.
    pub fn start() -> anyhow::Result<PostgresServer> {
        let bin = Self::available().map_err(anyhow::Error::msg)?;
        let dir = tempfile::Builder::new()
            .prefix("loyalty-pg-")
            .tempdir()
            .context("creating the cluster's directory")?;
        let owner = if is_root() {
            let owner = postgres_user().context("no `postgres` user")?;
            std::os::unix::fs::chown(dir.path(), Some(owner.0), Some(owner.1))
                .context("giving the cluster's directory to the postgres user")?;
            Some(owner)
        } else {
            None
        };
        let mut server = PostgresServer {
            bin,
            port: 0,
            dir,
            owner,
            started: false,
        };
        server.initdb()?;
        let mut last = None;
        for _ in 0..3 {
            server.port = crate::ports::free_port().context("finding a free port")?;
            match server.restart() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("PostgreSQL did not start")))
    }

    /// `postgres://loyalty@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of database `name` on this server.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory: `data/` (the cluster), the Unix socket, `server.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Creates database `name` (`[a-z_][a-z0-9_]*`, at most 63 bytes) and returns its URL: one
    /// fresh database per test on a shared server.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let plain = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !plain {
            bail!("database name {name:?} must be [a-z_][a-z0-9_]* (at most 63 bytes)");
        }
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .arg(name)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .context("running createdb")?;
        check(&out, &format!("createdb {name}"))?;
        Ok(self.database_url(name))
    }

    /// The postmaster's pid, from `data/postmaster.pid`, while that process lives.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse::<u32>().ok()?;
        alive(pid).then_some(pid)
    }

    /// Whether the server runs (its postmaster is alive).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`: sessions are ended, a shutdown
    /// checkpoint is written). Its port and data are kept for [`PostgresServer::restart`].
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !self.is_running() {
            self.started = false;
            return Ok(());
        }
        let out = self
            .pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])
            .output()
            .context("running pg_ctl stop")?;
        check(&out, "pg_ctl stop")?;
        self.started = false;
        Ok(())
    }

    /// Kills the server: SIGKILL of the postmaster and of every process of the server at once
    /// (a crash, not a shutdown: no checkpoint, nothing flushed), then waits until they are
    /// gone. Only what reached the WAL survives: every acknowledged commit. Its port and data
    /// are kept for [`PostgresServer::restart`], which recovers from the WAL. Does nothing if
    /// the server is stopped.
    pub fn kill(&mut self) {
        let Some(pid) = self.pid() else {
            self.started = false;
            return;
        };
        let mut victims = children_of(pid);
        victims.push(pid);
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(victims.iter().map(u32::to_string))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Until they are reaped, not only dead: a new postmaster refuses to start while the
        // pid in `postmaster.pid` still exists, even as a zombie (the postmaster's parent is
        // init, or whichever subreaper, which reaps it in its own time).
        let deadline = Instant::now() + Duration::from_secs(10);
        while victims
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.started = false;
    }

    /// Starts the server (again) on its port and waits until it accepts connections; after
    /// [`PostgresServer::kill`] it first recovers from the WAL.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            self.stop()?;
        }
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.log_path();
        let timeout = START_TIMEOUT_SECS.to_string();
        let log_arg = log.display().to_string();
        let out = self
            .pg_ctl(&["start", "-w", "-t", &timeout, "-l", &log_arg, "-o", &opts])
            .output()
            .context("running pg_ctl start")?;
        if let Err(e) = check(&out, "pg_ctl start") {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "PostgreSQL on port {}: {e:#}; its log ends with:\n{}",
                self.port,
                tail.join("\n")
            );
        }
        self.started = true;
        // pg_ctl -w waited for "ready"; check that this server answers on its TCP port.
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() >= deadline {
                bail!("PostgreSQL started but does not accept connections on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let data = self.data_dir().display().to_string();
        let out = self
            .server_command("initdb")
            .args(["-D", &data, "-A", "trust", "-U", USER])
            .args([
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .context("running initdb")?;
        check(&out, "initdb")?;
        let conf = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).context("reading postgresql.conf")?;
        text.push_str(TEST_SETTINGS);
        std::fs::write(&conf, text).context("writing postgresql.conf")?;
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let data = self.data_dir().display().to_string();
        let mut c = self.server_command("pg_ctl");
        c.args(["-D", &data]).args(args);
        c
    }

    /// A server binary, run as the cluster's owner.
    fn server_command(&self, binary: &str) -> Command {
        let path = self.bin.join(binary);
        let mut c = if self.owner.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // The server's user may not enter the caller's working directory.
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        c
    }
}

impl Drop for PostgresServer {
    /// Stops the server at once (`pg_ctl stop -m immediate`, SIGKILL if that fails) and removes
    /// its directory.
    fn drop(&mut self) {
        if self.is_running() {
            let stopped = self
                .pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "20"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !stopped {
                self.kill();
            }
        }
    }
}

impl std::fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresServer")
            .field("bin", &self.bin)
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("as_postgres_user", &self.owner.is_some())
            .field("started", &self.started)
            .finish()
    }
}

fn check(out: &Output, what: &str) -> anyhow::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )
}

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(binary))
            .find(|p| p.is_file())
    })
}

/// Whether this process runs as root (uid 0), from `/proc/self/status`.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// (uid, gid) of the `postgres` system user, from `/etc/passwd`.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[0] == "postgres" {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The pids whose parent is `pid` (the server's backends and auxiliary processes).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_is_killed_restarts_and_is_removed() {
        if let Err(reason) = PostgresServer::available() {
            println!("SKIPPED: {reason}");
            return;
        }
        let mut server = PostgresServer::start().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port()));
        assert!(server.url().starts_with("postgres://loyalty@127.0.0.1:"));
        assert!(server.is_running());
        let url = server.create_database("harness_test").unwrap();
        assert!(url.ends_with("/harness_test"), "{url}");
        assert!(server.create_database("Bad-Name").is_err());

        server.kill();
        assert!(!server.is_running());
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
        server.restart().unwrap();
        assert!(server.is_running());
        // The database made before the crash is still there.
        assert!(server.create_database("harness_test").is_err());

        server.stop().unwrap();
        assert!(!server.is_running());
        server.restart().unwrap();
        let dir = server.dir().to_path_buf();
        drop(server);
        assert!(!dir.exists(), "the cluster's directory was not removed");
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
    }
}
