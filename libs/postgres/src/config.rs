//! Where the PostgreSQL store lives and how the adapter talks to it.

use std::fmt;
use std::time::Duration;

use loyalty_core::{Error, Result};
use tokio_postgres::config::SslMode;

/// Connection settings of the PostgreSQL store.
///
/// `url` is a libpq connection URL, `postgres://user[:password]@host[:port]/dbname[?param=...]`
/// (libpq's `key=value` form is accepted too). Its `connect_timeout` parameter is overridden by
/// [`PostgresConfig::connect_timeout`]; its `options` parameter is kept and extended with the
/// session settings the adapter needs (see [`PostgresConfig::session_options`]). The password,
/// if any, is never logged nor put in an error message: use [`PostgresConfig::redacted_url`]
/// (the `Debug` impl uses it too).
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    pub url: String,
    /// Connections in the pool, at most (opened lazily). See the crate docs on sizing.
    pub pool_size: usize,
    /// Deadline to open one connection, and to wait for a free one in the pool.
    pub connect_timeout: Duration,
    /// Server-side deadline of one statement (`statement_timeout`); a statement past it is
    /// cancelled by the server and reported as [`Error::Unavailable`].
    pub statement_timeout: Duration,
}

/// Connections in the pool unless configured otherwise.
pub const DEFAULT_POOL_SIZE: usize = 10;
/// Deadline to connect unless configured otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of a statement unless configured otherwise.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

impl PostgresConfig {
    /// `url` with the defaults: 10 connections, 5 s to connect, 30 s per statement.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
        }
    }

    /// Checks the URL (it parses, names a database host, asks for no TLS, which this build does
    /// not have) and the sizes, with a message that names the setting.
    pub fn validate(&self) -> Result<()> {
        self.pg_config().map(|_| ())
    }

    /// The URL with its password (in the user info or a `password=` parameter) replaced by
    /// `***`: what logs and error messages show.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// The `options` the adapter's sessions run with: the URL's own `options` followed by
    /// `-c statement_timeout=<ms>` and, unless the URL's options set it, `-c
    /// synchronous_commit=on` (so that a server whose default is `off` cannot make a
    /// returned commit lose data on a crash; a URL may ask for `remote_apply` instead).
    pub fn session_options(&self, url_options: Option<&str>) -> String {
        let mut opts = url_options.unwrap_or("").trim().to_owned();
        let mut push = |s: String| {
            if !opts.is_empty() {
                opts.push(' ');
            }
            opts.push_str(&s);
        };
        push(format!(
            "-c statement_timeout={}",
            self.statement_timeout.as_millis().max(1)
        ));
        if !url_options.is_some_and(|o| o.contains("synchronous_commit")) {
            push("-c synchronous_commit=on".to_owned());
        }
        opts
    }

    /// The driver's configuration: the URL plus the timeouts and session options.
    pub(crate) fn pg_config(&self) -> Result<tokio_postgres::Config> {
        let invalid = |what: String| Error::Invalid(format!("postgres: {what}"));
        if self.url.trim().is_empty() {
            return Err(invalid(
                "no URL given (LOYALTY_POSTGRES_URL=postgres://user@host:5432/db)".into(),
            ));
        }
        let mut pg: tokio_postgres::Config = self.url.parse().map_err(|e| {
            invalid(format!(
                "cannot parse the URL {} ({e}); expected postgres://user@host:port/db",
                self.redacted_url()
            ))
        })?;
        if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
            return Err(invalid(format!(
                "the URL {} names no host",
                self.redacted_url()
            )));
        }
        if pg.get_user().is_none() {
            return Err(invalid(format!(
                "the URL {} names no user (postgres://USER@host/db)",
                self.redacted_url()
            )));
        }
        if pg.get_ssl_mode() == SslMode::Require {
            return Err(invalid(format!(
                "the URL {} asks for sslmode=require, but this build has no TLS support; use \
                 sslmode=disable (or prefer), over a trusted network or a local socket",
                self.redacted_url()
            )));
        }
        if self.pool_size == 0 {
            return Err(invalid("pool_size must be at least 1".into()));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout must be more than 0".into()));
        }
        if self.statement_timeout < Duration::from_millis(1) {
            return Err(invalid("statement_timeout must be at least 1 ms".into()));
        }
        let options = self.session_options(pg.get_options());
        pg.options(options);
        pg.connect_timeout(self.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("loyalty");
        }
        Ok(pg)
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// Replaces the password of a libpq URL or key=value string with `***`.
fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    // postgres://user:password@host
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    // ?password=... or password=... (key=value form), up to the next separator.
    let mut search_from = 0;
    while let Some(i) = out[search_from..].find("password=") {
        let start = search_from + i;
        let before_ok = start == 0 || matches!(out.as_bytes()[start - 1], b'?' | b'&' | b' ');
        let value_start = start + "password=".len();
        if !before_ok {
            search_from = value_start;
            continue;
        }
        let quoted = out[value_start..].starts_with('\'');
        let value_end = if quoted {
            out[value_start + 1..]
                .find('\'')
                .map_or(out.len(), |j| value_start + 1 + j + 1)
        } else {
            out[value_start..]
                .find(['&', ' '])
                .map_or(out.len(), |j| value_start + j)
        };
        out.replace_range(value_start..value_end, "***");
        search_from = value_start + 3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (url, want) in [
            (
                "postgres://loyalty:s3cret@db:5432/loyalty",
                "postgres://loyalty:***@db:5432/loyalty",
            ),
            (
                "postgresql://u:p%40ss@h/d?sslmode=disable",
                "postgresql://u:***@h/d?sslmode=disable",
            ),
            (
                "postgres://u@h/d?password=hunter2&sslmode=disable",
                "postgres://u@h/d?password=***&sslmode=disable",
            ),
            (
                "host=h user=u password='a b' dbname=d",
                "host=h user=u password=*** dbname=d",
            ),
            ("postgres://u@h:5/d", "postgres://u@h:5/d"),
        ] {
            assert_eq!(redact(url), want, "{url}");
        }
        let c = PostgresConfig::new("postgres://u:topsecret@h/d");
        assert!(!format!("{c:?}").contains("topsecret"));
        let bad = PostgresConfig::new("postgres://u:topsecret@h:notaport/d");
        let e = bad.validate().unwrap_err().to_string();
        assert!(!e.contains("topsecret"), "{e}");
    }

    #[test]
    fn validation_names_the_setting() {
        assert!(
            PostgresConfig::new("postgres://loyalty@127.0.0.1:5432/postgres")
                .validate()
                .is_ok()
        );
        assert!(PostgresConfig::new("host=/tmp user=u dbname=d")
            .validate()
            .is_ok());
        for (url, needle) in [
            ("", "no URL"),
            ("postgres://loyalty@h/d?sslmode=require", "TLS"),
            ("mysql://x", "parse"),
        ] {
            let e = PostgresConfig::new(url).validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
        }
        let mut c = PostgresConfig::new("postgres://u@h/d");
        c.pool_size = 0;
        assert!(c.validate().unwrap_err().to_string().contains("pool_size"));
        let mut c = PostgresConfig::new("postgres://u@h/d");
        c.connect_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
    }

    #[test]
    fn session_options_keep_the_urls() {
        let mut c = PostgresConfig::new("postgres://u@h/d");
        c.statement_timeout = Duration::from_secs(2);
        assert_eq!(
            c.session_options(None),
            "-c statement_timeout=2000 -c synchronous_commit=on"
        );
        assert_eq!(
            c.session_options(Some("-c search_path=loyalty")),
            "-c search_path=loyalty -c statement_timeout=2000 -c synchronous_commit=on"
        );
        assert_eq!(
            c.session_options(Some("-c synchronous_commit=remote_apply")),
            "-c synchronous_commit=remote_apply -c statement_timeout=2000"
        );
        let pg = PostgresConfig::new("postgres://u@h/d?options=-c%20search_path%3Dx")
            .pg_config()
            .unwrap();
        assert_eq!(
            pg.get_options(),
            Some("-c search_path=x -c statement_timeout=30000 -c synchronous_commit=on")
        );
        assert_eq!(pg.get_application_name(), Some("loyalty"));
    }
}
