//! Configuration of `loyalty dev`: one typed struct, read from an optional TOML file, then
//! overridden by `LOYALTY_*` environment variables, then by command-line flags, and validated
//! at startup with a message that names the setting. The defaults run dev mode.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Settings of the all-in-one `dev` process.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevConfig {
    /// Where the HTTP API listens (`LOYALTY_LISTEN`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where the log and the store keep their files (`LOYALTY_DATA_DIR`).
    pub data_dir: PathBuf,
    /// The platform admin's API key (`LOYALTY_ADMIN_KEY`).
    pub admin_key: String,
    /// Partitions of the POS command topic, fixed when the topic is created
    /// (`LOYALTY_PARTITIONS`).
    pub partitions: u32,
    /// Topic of POS commands (`LOYALTY_TOPIC`), created at startup if absent.
    pub topic: String,
    /// Dead-letter topic (`LOYALTY_DEAD_LETTER_TOPIC`), created at startup if absent.
    pub dead_letter_topic: String,
    /// HTTP worker threads; 0 means one per core (`LOYALTY_HTTP_WORKERS`).
    pub http_workers: usize,
    /// Seconds an idle member actor stays in memory (`LOYALTY_PASSIVATE_AFTER_SECS`).
    pub passivate_after_secs: u64,
    /// Least milliseconds between two engine checkpoints (`LOYALTY_CHECKPOINT_MS`): the store
    /// made durable, then the offsets committed. Shorter: less delivered again after a crash;
    /// longer: fewer fsyncs of the store.
    pub checkpoint_ms: u64,
    /// Member statuses kept in the in-process hot cache (`LOYALTY_CACHE_CAPACITY`): the most
    /// used ones (a miss reads the store and fills the cache). Each costs about 800 bytes, so
    /// this bounds the cache's memory whatever the member count.
    pub cache_capacity: usize,
    /// Page cache of the embedded store, in MiB (`LOYALTY_STORE_CACHE_MIB`): memory it takes
    /// however many members there are; the OS page cache serves the rest.
    pub store_cache_mib: usize,
    /// Largest request body in bytes (`LOYALTY_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Create a demo franchise with three stores on first start (`LOYALTY_DEMO`).
    pub demo: bool,
    /// Kafka bootstrap servers for `loyalty node` (`LOYALTY_KAFKA_BROKERS`), `host:port,...`.
    pub kafka_brokers: Option<String>,
    /// Stable `group.instance.id` of this engine node for static membership, so that a rolling
    /// restart does not rebalance (`LOYALTY_KAFKA_INSTANCE_ID`).
    pub kafka_instance_id: Option<String>,
    /// Replication factor of the topics `loyalty node` creates (`LOYALTY_KAFKA_REPLICATION`).
    pub kafka_replication: i32,
    /// Redis for the hot cache in `loyalty node` (`LOYALTY_REDIS_URL`), `redis://host:port/`.
    pub redis_url: Option<String>,
    /// ScyllaDB contact points (`LOYALTY_SCYLLA_NODES`, `host:port,...`): the shared durable
    /// store. Unset: the embedded store in `data_dir` (one engine node).
    pub scylla_nodes: Option<String>,
    /// Keyspace of the platform (`LOYALTY_SCYLLA_KEYSPACE`).
    pub scylla_keyspace: String,
    /// Keyspace replication (`LOYALTY_SCYLLA_REPLICATION`): `dc1=3,dc2=3`
    /// (NetworkTopologyStrategy, the default `datacenter1=3`) or `simple=1` (SimpleStrategy, for
    /// a single test node).
    pub scylla_replication: String,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            admin_key: "dev-admin-key".into(),
            partitions: 8,
            topic: "pos-commands".into(),
            dead_letter_topic: "pos-commands-dlq".into(),
            http_workers: 0,
            passivate_after_secs: 300,
            checkpoint_ms: 10,
            cache_capacity: 20_000,
            store_cache_mib: 64,
            max_body_bytes: 16 * 1024,
            demo: true,
            kafka_brokers: None,
            kafka_instance_id: None,
            kafka_replication: 1,
            redis_url: None,
            scylla_nodes: None,
            scylla_keyspace: "loyalty".into(),
            scylla_replication: "datacenter1=3".into(),
        }
    }
}

fn env_parse<T: std::str::FromStr>(name: &str, into: &mut T) -> anyhow::Result<()>
where
    T::Err: std::fmt::Display,
{
    if let Ok(v) = std::env::var(name) {
        *into = v
            .parse()
            .map_err(|e| anyhow::anyhow!("environment variable {name}={v:?} is invalid: {e}"))?;
    }
    Ok(())
}

impl DevConfig {
    /// Reads `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<DevConfig> {
        let mut c = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("reading the configuration file {}", path.display())
                })?;
                toml::from_str(&text)
                    .with_context(|| format!("in the configuration file {}", path.display()))?
            }
            None => DevConfig::default(),
        };
        env_parse("LOYALTY_LISTEN", &mut c.listen)?;
        env_parse("LOYALTY_DATA_DIR", &mut c.data_dir)?;
        if let Ok(k) = std::env::var("LOYALTY_ADMIN_KEY") {
            c.admin_key = k;
        }
        env_parse("LOYALTY_PARTITIONS", &mut c.partitions)?;
        env_parse("LOYALTY_TOPIC", &mut c.topic)?;
        env_parse("LOYALTY_DEAD_LETTER_TOPIC", &mut c.dead_letter_topic)?;
        env_parse("LOYALTY_HTTP_WORKERS", &mut c.http_workers)?;
        env_parse("LOYALTY_PASSIVATE_AFTER_SECS", &mut c.passivate_after_secs)?;
        env_parse("LOYALTY_CHECKPOINT_MS", &mut c.checkpoint_ms)?;
        env_parse("LOYALTY_CACHE_CAPACITY", &mut c.cache_capacity)?;
        env_parse("LOYALTY_STORE_CACHE_MIB", &mut c.store_cache_mib)?;
        env_parse("LOYALTY_MAX_BODY_BYTES", &mut c.max_body_bytes)?;
        env_parse("LOYALTY_DEMO", &mut c.demo)?;
        if let Ok(v) = std::env::var("LOYALTY_KAFKA_BROKERS") {
            c.kafka_brokers = Some(v);
        }
        if let Ok(v) = std::env::var("LOYALTY_KAFKA_INSTANCE_ID") {
            c.kafka_instance_id = Some(v);
        }
        env_parse("LOYALTY_KAFKA_REPLICATION", &mut c.kafka_replication)?;
        if let Ok(v) = std::env::var("LOYALTY_REDIS_URL") {
            c.redis_url = Some(v);
        }
        if let Ok(v) = std::env::var("LOYALTY_SCYLLA_NODES") {
            c.scylla_nodes = Some(v).filter(|v| !v.trim().is_empty());
        }
        env_parse("LOYALTY_SCYLLA_KEYSPACE", &mut c.scylla_keyspace)?;
        env_parse("LOYALTY_SCYLLA_REPLICATION", &mut c.scylla_replication)?;
        Ok(c)
    }

    /// Refuses settings the platform cannot run with, naming the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.admin_key.trim().len() < 8 {
            bail!("admin_key (LOYALTY_ADMIN_KEY) must be at least 8 characters");
        }
        if !(1..=1024).contains(&self.partitions) {
            bail!("partitions (LOYALTY_PARTITIONS) must be between 1 and 1024");
        }
        for (name, env, t) in [
            ("topic", "LOYALTY_TOPIC", &self.topic),
            (
                "dead_letter_topic",
                "LOYALTY_DEAD_LETTER_TOPIC",
                &self.dead_letter_topic,
            ),
        ] {
            let ok = !t.is_empty()
                && t.len() <= 200
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                bail!("{name} ({env}) must be 1 to 200 characters of [A-Za-z0-9._-], got {t:?}");
            }
        }
        if self.topic == self.dead_letter_topic {
            bail!("topic and dead_letter_topic (LOYALTY_TOPIC, LOYALTY_DEAD_LETTER_TOPIC) must differ");
        }
        if self.http_workers > 256 {
            bail!("http_workers (LOYALTY_HTTP_WORKERS) must be at most 256");
        }
        if !(1..=60_000).contains(&self.checkpoint_ms) {
            bail!("checkpoint_ms (LOYALTY_CHECKPOINT_MS) must be between 1 and 60000");
        }
        if self.passivate_after_secs == 0 {
            bail!("passivate_after_secs (LOYALTY_PASSIVATE_AFTER_SECS) must be at least 1");
        }
        if !(1..=1 << 20).contains(&self.store_cache_mib) {
            bail!("store_cache_mib (LOYALTY_STORE_CACHE_MIB) must be between 1 and 1048576");
        }
        if self.cache_capacity == 0 {
            bail!("cache_capacity (LOYALTY_CACHE_CAPACITY) must be at least 1");
        }
        if !(1024..=1024 * 1024).contains(&self.max_body_bytes) {
            bail!("max_body_bytes (LOYALTY_MAX_BODY_BYTES) must be between 1024 and 1048576");
        }
        Ok(())
    }

    /// Refuses a `loyalty node` configuration without its servers, naming what is missing.
    pub fn validate_node(&self) -> anyhow::Result<()> {
        self.validate()?;
        match &self.kafka_brokers {
            Some(b) if !b.trim().is_empty() => {}
            _ => bail!("loyalty node needs Kafka: set LOYALTY_KAFKA_BROKERS (e.g. 127.0.0.1:9092) or kafka_brokers"),
        }
        match &self.redis_url {
            Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {}
            Some(u) => bail!("LOYALTY_REDIS_URL must be a redis:// URL, got {u:?}"),
            None => bail!("loyalty node needs Redis: set LOYALTY_REDIS_URL (e.g. redis://127.0.0.1:6379/) or redis_url"),
        }
        if !(1..=32).contains(&self.kafka_replication) {
            bail!("kafka_replication (LOYALTY_KAFKA_REPLICATION) must be between 1 and 32");
        }
        Ok(())
    }

    /// The ScyllaDB settings, if a node is configured.
    pub fn scylla(&self) -> anyhow::Result<Option<loyalty_scylla::ScyllaConfig>> {
        let Some(nodes) = &self.scylla_nodes else {
            return Ok(None);
        };
        let mut c = loyalty_scylla::ScyllaConfig::new(
            loyalty_scylla::ScyllaConfig::parse_nodes(nodes),
            self.scylla_keyspace.clone(),
        );
        c.replication = parse_replication(&self.scylla_replication)?;
        c.validate()
            .map_err(|e| anyhow::anyhow!("LOYALTY_SCYLLA_* settings: {e}"))?;
        Ok(Some(c))
    }

    pub fn checkpoint_every(&self) -> Duration {
        Duration::from_millis(self.checkpoint_ms)
    }

    pub fn passivate_after(&self) -> Duration {
        Duration::from_secs(self.passivate_after_secs)
    }
}

/// `dc1=3,dc2=2` or `simple=1`.
fn parse_replication(s: &str) -> anyhow::Result<loyalty_scylla::Replication> {
    let bad = || {
        anyhow::anyhow!(
            "scylla_replication (LOYALTY_SCYLLA_REPLICATION) must be `dc=rf[,dc=rf...]` or `simple=rf`, got {s:?}"
        )
    };
    let mut dcs = std::collections::BTreeMap::new();
    for part in s.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or_else(bad)?;
        let rf: u32 = v.trim().parse().map_err(|_| bad())?;
        if k.trim() == "simple" {
            return Ok(loyalty_scylla::Replication::Simple(rf));
        }
        dcs.insert(k.trim().to_owned(), rf);
    }
    Ok(loyalty_scylla::Replication::NetworkTopology(dcs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_dev_mode() {
        let c = DevConfig::default();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn invalid_settings_are_named() {
        let c = DevConfig {
            partitions: 0,
            ..DevConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("LOYALTY_PARTITIONS"));
        let c = DevConfig {
            admin_key: "short".into(),
            ..DevConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("LOYALTY_ADMIN_KEY"));
        let c = DevConfig {
            store_cache_mib: 0,
            ..DevConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("LOYALTY_STORE_CACHE_MIB"));
    }

    #[test]
    fn node_mode_names_the_missing_servers() {
        let c = DevConfig::default();
        assert!(c
            .validate_node()
            .unwrap_err()
            .to_string()
            .contains("LOYALTY_KAFKA_BROKERS"));
        let c = DevConfig {
            kafka_brokers: Some("127.0.0.1:9092".into()),
            ..DevConfig::default()
        };
        assert!(c
            .validate_node()
            .unwrap_err()
            .to_string()
            .contains("LOYALTY_REDIS_URL"));
        let c = DevConfig {
            kafka_brokers: Some("127.0.0.1:9092".into()),
            redis_url: Some("redis://127.0.0.1:6379/".into()),
            ..DevConfig::default()
        };
        c.validate_node().unwrap();
    }

    #[test]
    fn scylla_replication_is_parsed_and_checked() {
        let c = DevConfig {
            scylla_nodes: Some("10.0.0.1:9042,10.0.0.2:9042".into()),
            scylla_replication: "eu=3,us=2".into(),
            ..DevConfig::default()
        };
        let s = c.scylla().unwrap().unwrap();
        assert_eq!(s.nodes.len(), 2);
        assert!(s.replication.cql().contains("'eu': 3"));
        let c = DevConfig {
            scylla_nodes: Some("n1".into()),
            scylla_replication: "simple=1".into(),
            ..DevConfig::default()
        };
        assert_eq!(
            c.scylla().unwrap().unwrap().replication,
            loyalty_scylla::Replication::Simple(1)
        );
        let c = DevConfig {
            scylla_nodes: Some("n1".into()),
            scylla_replication: "three".into(),
            ..DevConfig::default()
        };
        assert!(c
            .scylla()
            .unwrap_err()
            .to_string()
            .contains("LOYALTY_SCYLLA_REPLICATION"));
        assert!(DevConfig::default().scylla().unwrap().is_none());
    }

    #[test]
    fn files_reject_unknown_settings() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "partitons = 3\n").unwrap();
        let e = DevConfig::load(Some(&p)).unwrap_err();
        assert!(format!("{e:#}").contains("partitons"), "{e:#}");
        std::fs::write(&p, "partitions = 3\n").unwrap();
        assert_eq!(DevConfig::load(Some(&p)).unwrap().partitions, 3);
    }
}
