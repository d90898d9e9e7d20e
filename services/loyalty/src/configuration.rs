//! Configuration of the `loyalty` processes: one typed struct, read from an optional TOML file,
//! then overridden by `LOYALTY_*` environment variables, then by command-line flags, and
//! validated at startup with a message that names the setting.
//!
//! The defaults run dev mode ([`Profile::Dev`]). The production commands (`node`, `gateway`,
//! `engine`) load with [`Profile::Production`]: no admin key and no demo franchise unless the
//! configuration asks for them, and [`DevConfig::refuse_dev_defaults`] refuses the dev admin
//! key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use loyalty_core::sealing::KeyRing;
use serde::Deserialize;

/// The admin key `loyalty dev` runs with unless told otherwise; refused by every other command.
pub const DEV_ADMIN_KEY: &str = "dev-admin-key";

/// Which defaults a command starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `loyalty dev`: the admin key `dev-admin-key` and the demo franchise by default.
    Dev,
    /// `node`, `gateway`, `engine`, `migrate`, `cache`: no admin key (it must be set) and no
    /// demo franchise unless `LOYALTY_DEMO=true` (or `demo = true`) asks for one.
    Production,
}

/// The shared durable store a configuration names (see [`DevConfig::shared_store`]).
#[derive(Clone, Debug)]
pub enum SharedStore {
    /// PostgreSQL (`LOYALTY_POSTGRES_URL`).
    Postgres(loyalty_postgres::PostgresConfig),
    /// ScyllaDB (`LOYALTY_SCYLLA_NODES`).
    Scylla(loyalty_scylla::ScyllaConfig),
}

impl SharedStore {
    /// What to call the store in messages (never with a password).
    pub fn describe(&self) -> String {
        match self {
            SharedStore::Postgres(c) => format!("PostgreSQL at {}", c.redacted_url()),
            SharedStore::Scylla(c) => format!(
                "ScyllaDB at {} (keyspace {})",
                c.nodes.join(","),
                c.keyspace
            ),
        }
    }
}

/// Settings of every `loyalty` process (named after `loyalty dev`, whose defaults they are).
#[derive(Clone, Deserialize)]
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
    /// POS topic (`LOYALTY_POS_TOPIC`, docs/pos-topic.md) that every process running an engine
    /// ingests, created at startup if absent with its dead-letter topic `<pos_topic>-dlq`.
    /// Empty: no POS ingestion.
    pub pos_topic: String,
    /// HTTP worker threads; 0 means one per core (`LOYALTY_HTTP_WORKERS`).
    pub http_workers: usize,
    /// Engine worker threads the owned partitions are spread over; 0 means one per core
    /// (`LOYALTY_ENGINE_WORKERS`). Each partition is applied by one task on one of them, so a
    /// member's commands keep their order.
    pub engine_workers: usize,
    /// Seconds an idle member actor stays in memory (`LOYALTY_PASSIVATE_AFTER_SECS`).
    pub passivate_after_secs: u64,
    /// Least milliseconds between two engine checkpoints (`LOYALTY_CHECKPOINT_MS`): the store
    /// made durable, then the offsets committed. Shorter: less delivered again after a crash;
    /// longer: fewer fsyncs of the store.
    pub checkpoint_ms: u64,
    /// Seconds between two runs of the scheduler of each owned partition
    /// (`LOYALTY_SCHEDULER_SECS`): how late, at most, a dormant member's points expire or
    /// their tier drops (README "The scheduler"). 0 turns the scheduler off.
    pub scheduler_secs: u64,
    /// Most members one commit of the scheduler advances (`LOYALTY_SCHEDULER_BATCH`).
    pub scheduler_batch: usize,
    /// Member statuses kept in the in-process hot cache (`LOYALTY_CACHE_CAPACITY`): the most
    /// used ones (a miss reads the store and fills the cache). Each costs about 800 bytes, so
    /// this bounds the cache's memory whatever the member count.
    pub cache_capacity: usize,
    /// Page cache of the embedded store, in MiB (`LOYALTY_STORE_CACHE_MIB`): memory it takes
    /// however many members there are; the OS page cache serves the rest.
    pub store_cache_mib: usize,
    /// The address members and printed posters reach the gateway at (`LOYALTY_PUBLIC_URL`),
    /// `http(s)://host[:port][/path]`: the base of the URLs in the stores' enrolment QR codes and
    /// of the links to members' card pages. Unset: `http://` and the address the API listens on
    /// (right on a laptop; behind a load balancer or on a phone, set it).
    pub public_url: Option<String>,
    /// Largest request body in bytes (`LOYALTY_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Milliseconds a client has to send a whole request body (`LOYALTY_BODY_TIMEOUT_MS`); a
    /// slower one is answered 408 and its connection closed, so it cannot hold connections.
    pub body_timeout_ms: u64,
    /// Milliseconds a gateway takes an API key's holder from memory before asking the store
    /// again (`LOYALTY_PRINCIPAL_TTL_MS`, 0 to 300000). A key rotated or revoked through
    /// another gateway is forgotten at once when that gateway's announcement arrives (Redis
    /// pub/sub); this is the bound when it does not.
    pub principal_ttl_ms: u64,
    /// The key ring that seals members' personal data in the log and the stores
    /// (`LOYALTY_PII_KEYS`: `id:base64-key` pairs, comma-separated, the first sealing; README
    /// "Personal data at rest"). Unset: the dev ring, which only `loyalty dev` accepts.
    pub pii_keys: Option<String>,
    /// An internal listener that alone serves `/metrics` (`LOYALTY_METRICS_LISTEN`); the API
    /// listener then answers 404 for it. Unset: `/metrics` is on the API listener.
    pub metrics_listen: Option<SocketAddr>,
    /// A key `/metrics` asks for as `Authorization: Bearer <key>` (`LOYALTY_METRICS_KEY`, at
    /// least 16 characters). Unset: no key.
    pub metrics_key: Option<String>,
    /// Phone lookups a minute per API key (`LOYALTY_LOOKUP_LIMIT_PER_MINUTE`; 0: no limit).
    pub lookup_limit_per_minute: u32,
    /// Phone lookups a minute per client address (`LOYALTY_LOOKUP_ADDRESS_LIMIT_PER_MINUTE`;
    /// 0: no limit).
    pub lookup_address_limit_per_minute: u32,
    /// Lookups a key or an address may make at once after a quiet spell (`LOYALTY_LOOKUP_BURST`).
    pub lookup_burst: u32,
    /// How long a one-time code of the self-enrolment page is valid, in seconds
    /// (`LOYALTY_ENROLMENT_CODE_TTL_SECS`, 1 to 3600).
    pub enrolment_code_ttl_secs: u64,
    /// The header in which a trusted proxy in front writes the client's address
    /// (`LOYALTY_CLIENT_ADDRESS_HEADER`, e.g. `x-forwarded-for`; its last value counts). Unset:
    /// the TCP peer's address.
    pub client_address_header: Option<String>,
    /// Create a demo franchise with three stores on first start (`LOYALTY_DEMO`).
    pub demo: bool,
    /// Give the demo franchise a few months of generated history when `loyalty dev` creates
    /// it (`LOYALTY_DEMO_HISTORY`, flag `--no-demo-history`); only `loyalty dev` uses it.
    pub demo_history: bool,
    /// Kafka bootstrap servers for `loyalty node` (`LOYALTY_KAFKA_BROKERS`), `host:port,...`.
    pub kafka_brokers: Option<String>,
    /// Stable `group.instance.id` of this engine node for static membership, so that a rolling
    /// restart does not rebalance (`LOYALTY_KAFKA_INSTANCE_ID`).
    pub kafka_instance_id: Option<String>,
    /// Replication factor of the topics `loyalty node` creates (`LOYALTY_KAFKA_REPLICATION`).
    pub kafka_replication: i32,
    /// `session.timeout.ms` of the engines' consumers, in milliseconds
    /// (`LOYALTY_KAFKA_SESSION_TIMEOUT_MS`): how long the group waits for a crashed engine
    /// before its partitions move to the others.
    pub kafka_session_timeout_ms: u64,
    /// `heartbeat.interval.ms` of the engines' consumers, in milliseconds
    /// (`LOYALTY_KAFKA_HEARTBEAT_MS`); at most a third of the session timeout. Unset: a tenth
    /// of it.
    pub kafka_heartbeat_ms: Option<u64>,
    /// Redis for the hot cache in `loyalty node` (`LOYALTY_REDIS_URL`), `redis://host:port/`.
    pub redis_url: Option<String>,
    /// PostgreSQL of the shared durable store (`LOYALTY_POSTGRES_URL`), a libpq URL
    /// (`postgres://user:password@host:port/dbname`, or libpq's `key=value` form). Unset (and no `scylla_nodes`): the
    /// embedded store in `data_dir`, which one process owns.
    pub postgres_url: Option<String>,
    /// Connections of the PostgreSQL pool (`LOYALTY_POSTGRES_POOL`); unset: the adapter's
    /// default.
    pub postgres_pool: Option<usize>,
    /// ScyllaDB contact points (`LOYALTY_SCYLLA_NODES`, `host:port,...`): the shared durable
    /// store. Unset (and no `postgres_url`): the embedded store in `data_dir`.
    pub scylla_nodes: Option<String>,
    /// Keyspace of the platform (`LOYALTY_SCYLLA_KEYSPACE`).
    pub scylla_keyspace: String,
    /// Keyspace replication (`LOYALTY_SCYLLA_REPLICATION`): `dc1=3,dc2=3`
    /// (NetworkTopologyStrategy, the default `datacenter1=3`) or `simple=1` (SimpleStrategy, for
    /// a single test node).
    pub scylla_replication: String,
    /// Milliseconds between two reads of each owned partition's campaign outbox
    /// (`LOYALTY_DELIVERY_MS`, README "Campaigns"); 0 turns delivery off.
    pub delivery_ms: u64,
    /// Attempts at a campaign message before it is dead-lettered
    /// (`LOYALTY_DELIVERY_MAX_ATTEMPTS`, 1 to 100).
    pub delivery_max_attempts: u32,
    /// Wait before the first retry of a message, in milliseconds, doubled at each further one
    /// up to an hour (`LOYALTY_DELIVERY_BACKOFF_MS`).
    pub delivery_backoff_ms: u64,
    /// The SMS adapter: the webhook of the SMS gateway (`LOYALTY_SMS_WEBHOOK_URL`, README
    /// "Campaign delivery adapters"), which gets campaign SMS and the self-enrolment page's
    /// one-time codes, signed with `sms_webhook_secret` (`LOYALTY_SMS_WEBHOOK_SECRET`, at least
    /// 32 bytes). Unset: `loyalty dev` keeps messages in memory and logs them; other commands
    /// send no SMS.
    pub sms_webhook_url: Option<String>,
    pub sms_webhook_secret: Option<String>,
    /// The e-mail adapter: an SMTP relay (`LOYALTY_SMTP_HOST`, `LOYALTY_SMTP_PORT`), the
    /// `From` mailbox (`LOYALTY_SMTP_FROM`) and optional credentials (`LOYALTY_SMTP_USERNAME`,
    /// `LOYALTY_SMTP_PASSWORD`). Unset host: as for SMS, no e-mail outside `loyalty dev`.
    pub smtp_host: Option<String>,
    pub smtp_port: u16,
    pub smtp_from: Option<String>,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<String>,
    /// Apple Wallet passes (README "Members without an app"): the Pass Type ID
    /// (`LOYALTY_APPLE_PASS_TYPE_ID`) and team (`LOYALTY_APPLE_TEAM_ID`) they are issued under,
    /// and the PEM files that sign them: the Pass Type ID certificate
    /// (`LOYALTY_APPLE_CERT_PEM`), its unencrypted private key (`LOYALTY_APPLE_KEY_PEM`) and
    /// Apple's WWDR intermediate (`LOYALTY_APPLE_WWDR_PEM`). No files: unsigned passes.
    pub apple_pass_type_id: Option<String>,
    pub apple_team_id: Option<String>,
    pub apple_cert_pem: Option<PathBuf>,
    pub apple_key_pem: Option<PathBuf>,
    pub apple_wwdr_pem: Option<PathBuf>,
    /// Google Wallet save links: the issuer id (`LOYALTY_GOOGLE_WALLET_ISSUER_ID`), the loyalty
    /// class (`LOYALTY_GOOGLE_WALLET_CLASS_ID`), the service account's e-mail
    /// (`LOYALTY_GOOGLE_WALLET_SERVICE_ACCOUNT`) and the PEM file of its RSA key
    /// (`LOYALTY_GOOGLE_WALLET_KEY_PEM`). All four, or none (no Google Wallet link).
    pub google_wallet_issuer_id: Option<String>,
    pub google_wallet_class_id: Option<String>,
    pub google_wallet_service_account: Option<String>,
    pub google_wallet_key_pem: Option<PathBuf>,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            admin_key: DEV_ADMIN_KEY.into(),
            partitions: 8,
            topic: "pos-commands".into(),
            dead_letter_topic: "pos-commands-dlq".into(),
            pos_topic: "pos-events".into(),
            http_workers: 0,
            engine_workers: 0,
            passivate_after_secs: 300,
            checkpoint_ms: 10,
            scheduler_secs: 60,
            scheduler_batch: 512,
            cache_capacity: 20_000,
            store_cache_mib: 64,
            public_url: None,
            max_body_bytes: 16 * 1024,
            body_timeout_ms: 10_000,
            principal_ttl_ms: 1_000,
            pii_keys: None,
            metrics_listen: None,
            metrics_key: None,
            lookup_limit_per_minute: 300,
            lookup_address_limit_per_minute: 600,
            lookup_burst: 30,
            enrolment_code_ttl_secs: 600,
            client_address_header: None,
            demo: true,
            demo_history: true,
            kafka_brokers: None,
            kafka_instance_id: None,
            kafka_replication: 1,
            kafka_session_timeout_ms: 10_000,
            kafka_heartbeat_ms: None,
            redis_url: None,
            postgres_url: None,
            postgres_pool: None,
            scylla_nodes: None,
            scylla_keyspace: "loyalty".into(),
            scylla_replication: "datacenter1=3".into(),
            delivery_ms: 5_000,
            delivery_max_attempts: 8,
            delivery_backoff_ms: 30_000,
            sms_webhook_url: None,
            sms_webhook_secret: None,
            smtp_host: None,
            smtp_port: 25,
            smtp_from: None,
            smtp_username: None,
            smtp_password: None,
            apple_pass_type_id: None,
            apple_team_id: None,
            apple_cert_pem: None,
            apple_key_pem: None,
            apple_wwdr_pem: None,
            google_wallet_issuer_id: None,
            google_wallet_class_id: None,
            google_wallet_service_account: None,
            google_wallet_key_pem: None,
        }
    }
}

/// Refuses a `public_url` that is not `http(s)://host[:port][/path]`: a scheme, a host of
/// letters, digits, `.` and `-` (or an IPv6 literal in brackets), an optional port, an optional
/// path; no user, query or fragment, no space.
fn check_public_url(url: &str) -> anyhow::Result<()> {
    let fail = |why: &str| {
        anyhow::anyhow!(
            "public_url (LOYALTY_PUBLIC_URL) must be http(s)://host[:port][/path], got {url:?}: {why}"
        )
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| fail("the scheme must be http or https"))?;
    if url.len() > 200 {
        return Err(fail("at most 200 characters"));
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| fail("an unclosed IPv6 literal"))?;
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(fail("not an IPv6 literal"));
        }
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && (authority.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')));
    if !host_ok {
        return Err(fail("the host must be a name or an address"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(fail("the port must be 1 to 65535"));
        }
    }
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~' | b'%'));
    if !path_ok {
        return Err(fail(
            "no query, fragment or space; the path of [A-Za-z0-9/._~%-] only",
        ));
    }
    Ok(())
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

/// The content of the PEM file of `setting`.
fn read_pem(path: &Path, setting: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{setting}: reading {}", path.display()))
}

impl std::fmt::Debug for DevConfig {
    /// Every setting, with the secrets (admin key, PostgreSQL password) hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field(
                "admin_key",
                &if self.admin_key.is_empty() {
                    "(unset)"
                } else {
                    "(hidden)"
                },
            )
            .field("partitions", &self.partitions)
            .field("topic", &self.topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("pos_topic", &self.pos_topic)
            .field("http_workers", &self.http_workers)
            .field("engine_workers", &self.engine_workers)
            .field("passivate_after_secs", &self.passivate_after_secs)
            .field("checkpoint_ms", &self.checkpoint_ms)
            .field("scheduler_secs", &self.scheduler_secs)
            .field("scheduler_batch", &self.scheduler_batch)
            .field("cache_capacity", &self.cache_capacity)
            .field("store_cache_mib", &self.store_cache_mib)
            .field("public_url", &self.public_url)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("body_timeout_ms", &self.body_timeout_ms)
            .field("principal_ttl_ms", &self.principal_ttl_ms)
            .field(
                "pii_keys",
                // The key ids only, read off the setting (never a key).
                &self.pii_keys.as_deref().map(|spec| {
                    spec.split(',')
                        .filter_map(|p| p.split_once(':').map(|(id, _)| id.trim()))
                        .collect::<Vec<_>>()
                        .join(",")
                }),
            )
            .field("metrics_listen", &self.metrics_listen)
            .field("metrics_key", &self.metrics_key.as_ref().map(|_| "(set)"))
            .field("lookup_limit_per_minute", &self.lookup_limit_per_minute)
            .field(
                "lookup_address_limit_per_minute",
                &self.lookup_address_limit_per_minute,
            )
            .field("lookup_burst", &self.lookup_burst)
            .field("enrolment_code_ttl_secs", &self.enrolment_code_ttl_secs)
            .field("client_address_header", &self.client_address_header)
            .field("demo", &self.demo)
            .field("demo_history", &self.demo_history)
            .field("kafka_brokers", &self.kafka_brokers)
            .field("kafka_instance_id", &self.kafka_instance_id)
            .field("kafka_replication", &self.kafka_replication)
            .field("kafka_session_timeout_ms", &self.kafka_session_timeout_ms)
            .field("kafka_heartbeat_ms", &self.kafka_heartbeat_ms)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field(
                "postgres_url",
                &self.postgres_url.as_deref().map(redact_url),
            )
            .field("postgres_pool", &self.postgres_pool)
            .field("scylla_nodes", &self.scylla_nodes)
            .field("scylla_keyspace", &self.scylla_keyspace)
            .field("scylla_replication", &self.scylla_replication)
            .field("delivery_ms", &self.delivery_ms)
            .field("delivery_max_attempts", &self.delivery_max_attempts)
            .field("delivery_backoff_ms", &self.delivery_backoff_ms)
            .field(
                "sms_webhook_url",
                &self.sms_webhook_url.as_deref().map(redact_url),
            )
            .field(
                "sms_webhook_secret",
                &self.sms_webhook_secret.as_ref().map(|_| "(set)"),
            )
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("smtp_from", &self.smtp_from)
            .field("smtp_username", &self.smtp_username)
            .field(
                "smtp_password",
                &self.smtp_password.as_ref().map(|_| "(set)"),
            )
            // Paths of the key files, never their content.
            .field("apple_pass_type_id", &self.apple_pass_type_id)
            .field("apple_team_id", &self.apple_team_id)
            .field("apple_cert_pem", &self.apple_cert_pem)
            .field("apple_key_pem", &self.apple_key_pem)
            .field("apple_wwdr_pem", &self.apple_wwdr_pem)
            .field("google_wallet_issuer_id", &self.google_wallet_issuer_id)
            .field("google_wallet_class_id", &self.google_wallet_class_id)
            .field(
                "google_wallet_service_account",
                &self.google_wallet_service_account,
            )
            .field("google_wallet_key_pem", &self.google_wallet_key_pem)
            .finish()
    }
}

impl DevConfig {
    /// The defaults of `profile`: [`DevConfig::default`] for dev; for production the same
    /// without an admin key (it must be set) and without the demo franchise.
    pub fn defaults(profile: Profile) -> DevConfig {
        match profile {
            Profile::Dev => DevConfig::default(),
            Profile::Production => DevConfig {
                admin_key: String::new(),
                demo: false,
                ..DevConfig::default()
            },
        }
    }

    /// Reads `file` (if given), then the environment, over the dev defaults.
    pub fn load(file: Option<&Path>) -> anyhow::Result<DevConfig> {
        Self::load_as(file, Profile::Dev)
    }

    /// Reads `file` (if given), then the environment, over the defaults of `profile`.
    pub fn load_as(file: Option<&Path>, profile: Profile) -> anyhow::Result<DevConfig> {
        let mut c = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("reading the configuration file {}", path.display())
                })?;
                let in_file = || format!("in the configuration file {}", path.display());
                let mut c: DevConfig = toml::from_str(&text).with_context(in_file)?;
                // The file's absent settings take the profile's defaults, not dev's.
                let keys: toml::Table = toml::from_str(&text).with_context(in_file)?;
                let base = DevConfig::defaults(profile);
                if !keys.contains_key("admin_key") {
                    c.admin_key = base.admin_key;
                }
                if !keys.contains_key("demo") {
                    c.demo = base.demo;
                }
                c
            }
            None => DevConfig::defaults(profile),
        };
        env_parse("LOYALTY_LISTEN", &mut c.listen)?;
        env_parse("LOYALTY_DATA_DIR", &mut c.data_dir)?;
        if let Ok(k) = std::env::var("LOYALTY_ADMIN_KEY") {
            c.admin_key = k;
        }
        env_parse("LOYALTY_PARTITIONS", &mut c.partitions)?;
        env_parse("LOYALTY_TOPIC", &mut c.topic)?;
        env_parse("LOYALTY_DEAD_LETTER_TOPIC", &mut c.dead_letter_topic)?;
        env_parse("LOYALTY_POS_TOPIC", &mut c.pos_topic)?;
        env_parse("LOYALTY_HTTP_WORKERS", &mut c.http_workers)?;
        env_parse("LOYALTY_ENGINE_WORKERS", &mut c.engine_workers)?;
        env_parse("LOYALTY_PASSIVATE_AFTER_SECS", &mut c.passivate_after_secs)?;
        env_parse("LOYALTY_CHECKPOINT_MS", &mut c.checkpoint_ms)?;
        env_parse("LOYALTY_SCHEDULER_SECS", &mut c.scheduler_secs)?;
        env_parse("LOYALTY_SCHEDULER_BATCH", &mut c.scheduler_batch)?;
        env_parse("LOYALTY_CACHE_CAPACITY", &mut c.cache_capacity)?;
        env_parse("LOYALTY_STORE_CACHE_MIB", &mut c.store_cache_mib)?;
        if let Ok(v) = std::env::var("LOYALTY_PUBLIC_URL") {
            c.public_url = Some(v).filter(|v| !v.trim().is_empty());
        }
        env_parse("LOYALTY_MAX_BODY_BYTES", &mut c.max_body_bytes)?;
        env_parse("LOYALTY_BODY_TIMEOUT_MS", &mut c.body_timeout_ms)?;
        env_parse("LOYALTY_PRINCIPAL_TTL_MS", &mut c.principal_ttl_ms)?;
        if let Ok(v) = std::env::var("LOYALTY_PII_KEYS") {
            c.pii_keys = Some(v).filter(|v| !v.trim().is_empty());
        }
        if let Ok(v) = std::env::var("LOYALTY_METRICS_LISTEN") {
            c.metrics_listen = Some(v.parse().map_err(|e| {
                anyhow::anyhow!("environment variable LOYALTY_METRICS_LISTEN={v:?} is invalid: {e}")
            })?);
        }
        if let Ok(v) = std::env::var("LOYALTY_METRICS_KEY") {
            c.metrics_key = Some(v);
        }
        env_parse(
            "LOYALTY_LOOKUP_LIMIT_PER_MINUTE",
            &mut c.lookup_limit_per_minute,
        )?;
        env_parse(
            "LOYALTY_LOOKUP_ADDRESS_LIMIT_PER_MINUTE",
            &mut c.lookup_address_limit_per_minute,
        )?;
        env_parse("LOYALTY_LOOKUP_BURST", &mut c.lookup_burst)?;
        env_parse(
            "LOYALTY_ENROLMENT_CODE_TTL_SECS",
            &mut c.enrolment_code_ttl_secs,
        )?;
        if let Ok(v) = std::env::var("LOYALTY_CLIENT_ADDRESS_HEADER") {
            c.client_address_header = Some(v);
        }
        env_parse("LOYALTY_DEMO", &mut c.demo)?;
        env_parse("LOYALTY_DEMO_HISTORY", &mut c.demo_history)?;
        if let Ok(v) = std::env::var("LOYALTY_KAFKA_BROKERS") {
            c.kafka_brokers = Some(v);
        }
        if let Ok(v) = std::env::var("LOYALTY_KAFKA_INSTANCE_ID") {
            c.kafka_instance_id = Some(v);
        }
        env_parse("LOYALTY_KAFKA_REPLICATION", &mut c.kafka_replication)?;
        env_parse(
            "LOYALTY_KAFKA_SESSION_TIMEOUT_MS",
            &mut c.kafka_session_timeout_ms,
        )?;
        if let Ok(v) = std::env::var("LOYALTY_KAFKA_HEARTBEAT_MS") {
            let ms = v.parse().map_err(|e| {
                anyhow::anyhow!(
                    "environment variable LOYALTY_KAFKA_HEARTBEAT_MS={v:?} is invalid: {e}"
                )
            })?;
            c.kafka_heartbeat_ms = Some(ms);
        }
        if let Ok(v) = std::env::var("LOYALTY_REDIS_URL") {
            c.redis_url = Some(v);
        }
        if let Ok(v) = std::env::var("LOYALTY_POSTGRES_URL") {
            c.postgres_url = Some(v).filter(|v| !v.trim().is_empty());
        }
        if let Ok(v) = std::env::var("LOYALTY_POSTGRES_POOL") {
            let n = v.parse().map_err(|e| {
                anyhow::anyhow!("environment variable LOYALTY_POSTGRES_POOL={v:?} is invalid: {e}")
            })?;
            c.postgres_pool = Some(n);
        }
        if let Ok(v) = std::env::var("LOYALTY_SCYLLA_NODES") {
            c.scylla_nodes = Some(v).filter(|v| !v.trim().is_empty());
        }
        env_parse("LOYALTY_SCYLLA_KEYSPACE", &mut c.scylla_keyspace)?;
        env_parse("LOYALTY_SCYLLA_REPLICATION", &mut c.scylla_replication)?;
        env_parse("LOYALTY_DELIVERY_MS", &mut c.delivery_ms)?;
        env_parse(
            "LOYALTY_DELIVERY_MAX_ATTEMPTS",
            &mut c.delivery_max_attempts,
        )?;
        env_parse("LOYALTY_DELIVERY_BACKOFF_MS", &mut c.delivery_backoff_ms)?;
        for (name, into) in [
            ("LOYALTY_SMS_WEBHOOK_URL", &mut c.sms_webhook_url),
            ("LOYALTY_SMS_WEBHOOK_SECRET", &mut c.sms_webhook_secret),
            ("LOYALTY_SMTP_HOST", &mut c.smtp_host),
            ("LOYALTY_SMTP_FROM", &mut c.smtp_from),
            ("LOYALTY_SMTP_USERNAME", &mut c.smtp_username),
            ("LOYALTY_SMTP_PASSWORD", &mut c.smtp_password),
        ] {
            if let Ok(v) = std::env::var(name) {
                *into = Some(v).filter(|v| !v.trim().is_empty());
            }
        }
        env_parse("LOYALTY_SMTP_PORT", &mut c.smtp_port)?;
        for (name, into) in [
            ("LOYALTY_APPLE_PASS_TYPE_ID", &mut c.apple_pass_type_id),
            ("LOYALTY_APPLE_TEAM_ID", &mut c.apple_team_id),
            (
                "LOYALTY_GOOGLE_WALLET_ISSUER_ID",
                &mut c.google_wallet_issuer_id,
            ),
            (
                "LOYALTY_GOOGLE_WALLET_CLASS_ID",
                &mut c.google_wallet_class_id,
            ),
            (
                "LOYALTY_GOOGLE_WALLET_SERVICE_ACCOUNT",
                &mut c.google_wallet_service_account,
            ),
        ] {
            if let Ok(v) = std::env::var(name) {
                *into = Some(v).filter(|v| !v.trim().is_empty());
            }
        }
        for (name, into) in [
            ("LOYALTY_APPLE_CERT_PEM", &mut c.apple_cert_pem),
            ("LOYALTY_APPLE_KEY_PEM", &mut c.apple_key_pem),
            ("LOYALTY_APPLE_WWDR_PEM", &mut c.apple_wwdr_pem),
            (
                "LOYALTY_GOOGLE_WALLET_KEY_PEM",
                &mut c.google_wallet_key_pem,
            ),
        ] {
            if let Ok(v) = std::env::var(name) {
                *into = Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty());
            }
        }
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
        if let Some(dlq) = self.pos_dead_letter_topic() {
            let t = &self.pos_topic;
            let ok = t.len() <= 196
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                bail!("pos_topic (LOYALTY_POS_TOPIC) must be empty (no POS ingestion) or 1 to 196 characters of [A-Za-z0-9._-], got {t:?}");
            }
            if [t, &dlq]
                .iter()
                .any(|x| **x == self.topic || **x == self.dead_letter_topic)
            {
                bail!("pos_topic (LOYALTY_POS_TOPIC) and its dead-letter topic {dlq} must differ from topic and dead_letter_topic");
            }
        }
        if self.http_workers > 256 {
            bail!("http_workers (LOYALTY_HTTP_WORKERS) must be at most 256");
        }
        if self.engine_workers > 256 {
            bail!("engine_workers (LOYALTY_ENGINE_WORKERS) must be at most 256");
        }
        if !(1..=60_000).contains(&self.checkpoint_ms) {
            bail!("checkpoint_ms (LOYALTY_CHECKPOINT_MS) must be between 1 and 60000");
        }
        if self.scheduler_secs > 86_400 {
            bail!("scheduler_secs (LOYALTY_SCHEDULER_SECS) must be at most 86400 (0: off)");
        }
        if !(1..=10_000).contains(&self.scheduler_batch) {
            bail!("scheduler_batch (LOYALTY_SCHEDULER_BATCH) must be between 1 and 10000");
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
        if let Some(url) = &self.public_url {
            check_public_url(url)?;
        }
        if !(1024..=1024 * 1024).contains(&self.max_body_bytes) {
            bail!("max_body_bytes (LOYALTY_MAX_BODY_BYTES) must be between 1024 and 1048576");
        }
        if !(100..=300_000).contains(&self.body_timeout_ms) {
            bail!("body_timeout_ms (LOYALTY_BODY_TIMEOUT_MS) must be between 100 and 300000");
        }
        if self.principal_ttl_ms > 300_000 {
            bail!("principal_ttl_ms (LOYALTY_PRINCIPAL_TTL_MS) must be between 0 and 300000");
        }
        self.keys()?;
        if !(1..=100_000).contains(&self.lookup_burst) {
            bail!("lookup_burst (LOYALTY_LOOKUP_BURST) must be between 1 and 100000");
        }
        if !(1..=3600).contains(&self.enrolment_code_ttl_secs) {
            bail!(
                "enrolment_code_ttl_secs (LOYALTY_ENROLMENT_CODE_TTL_SECS) must be between 1 and \
                 3600"
            );
        }
        if let Some(h) = &self.client_address_header {
            if actix_web::http::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                bail!("client_address_header (LOYALTY_CLIENT_ADDRESS_HEADER) {h:?} is not a header name");
            }
        }
        if self
            .metrics_key
            .as_ref()
            .is_some_and(|k| k.trim().len() < 16)
        {
            bail!("metrics_key (LOYALTY_METRICS_KEY) must be at least 16 characters");
        }
        if let Some(m) = self.metrics_listen {
            if m == self.listen && m.port() != 0 {
                bail!(
                    "metrics_listen (LOYALTY_METRICS_LISTEN) must differ from listen \
                     (LOYALTY_LISTEN): it is the internal listener of /metrics"
                );
            }
        }
        self.shared_store()?;
        if self.delivery_ms > 3_600_000 {
            bail!("delivery_ms (LOYALTY_DELIVERY_MS) must be at most 3600000 (0: off)");
        }
        if !(1..=100).contains(&self.delivery_max_attempts) {
            bail!(
                "delivery_max_attempts (LOYALTY_DELIVERY_MAX_ATTEMPTS) must be between 1 and 100"
            );
        }
        if !(1..=3_600_000).contains(&self.delivery_backoff_ms) {
            bail!(
                "delivery_backoff_ms (LOYALTY_DELIVERY_BACKOFF_MS) must be between 1 and 3600000"
            );
        }
        self.sms_webhook()?;
        self.smtp()?;
        self.wallet()?;
        Ok(())
    }

    /// The SMS adapter's settings, validated; `None` when unset.
    pub fn sms_webhook(&self) -> anyhow::Result<Option<loyalty_webhook::WebhookConfig>> {
        match (&self.sms_webhook_url, &self.sms_webhook_secret) {
            (None, None) => Ok(None),
            (Some(url), Some(secret)) => {
                let c = loyalty_webhook::WebhookConfig::new(url.trim(), secret.as_str());
                c.validate()
                    .map_err(|e| anyhow::anyhow!("LOYALTY_SMS_WEBHOOK_* settings: {e}"))?;
                Ok(Some(c))
            }
            _ => bail!(
                "sms_webhook_url (LOYALTY_SMS_WEBHOOK_URL) and sms_webhook_secret \
                 (LOYALTY_SMS_WEBHOOK_SECRET) go together: set both, or neither"
            ),
        }
    }

    /// The e-mail adapter's settings, validated; `None` when no host is set.
    pub fn smtp(&self) -> anyhow::Result<Option<loyalty_smtp::SmtpConfig>> {
        let Some(host) = &self.smtp_host else {
            if self.smtp_from.is_some() || self.smtp_username.is_some() {
                bail!("smtp_from and smtp_username (LOYALTY_SMTP_*) need smtp_host (LOYALTY_SMTP_HOST)");
            }
            return Ok(None);
        };
        let Some(from) = &self.smtp_from else {
            bail!("smtp_host (LOYALTY_SMTP_HOST) needs smtp_from (LOYALTY_SMTP_FROM), the From mailbox of campaign e-mails");
        };
        let mut c = loyalty_smtp::SmtpConfig::new(host.trim(), self.smtp_port, from.trim());
        c.username = self.smtp_username.clone();
        c.password = self.smtp_password.clone();
        c.validate()
            .map_err(|e| anyhow::anyhow!("LOYALTY_SMTP_* settings: {e}"))?;
        Ok(Some(c))
    }

    /// The wallet passes' settings, with their PEM files read and checked: unsigned Apple
    /// passes and no Google link unless configured. Names the setting that is wrong.
    pub fn wallet(&self) -> anyhow::Result<loyalty_wallet::WalletConfig> {
        Ok(loyalty_wallet::WalletConfig {
            apple: self.apple_passes()?,
            google: self.google_wallet()?,
        })
    }

    fn apple_passes(&self) -> anyhow::Result<loyalty_wallet::ApplePasses> {
        let mut apple = loyalty_wallet::ApplePasses::default();
        let ids = (&self.apple_pass_type_id, &self.apple_team_id);
        let files = (
            &self.apple_cert_pem,
            &self.apple_key_pem,
            &self.apple_wwdr_pem,
        );
        if let Some(id) = ids.0 {
            let id = id.trim();
            if !id.starts_with("pass.") || id.len() > 200 || id.contains(char::is_whitespace) {
                bail!("apple_pass_type_id (LOYALTY_APPLE_PASS_TYPE_ID) must be a Pass Type ID such as pass.com.example.card, got {id:?}");
            }
            apple.pass_type_id = id.to_owned();
        }
        if let Some(team) = ids.1 {
            let team = team.trim();
            if team.len() != 10 || !team.chars().all(|c| c.is_ascii_alphanumeric()) {
                bail!("apple_team_id (LOYALTY_APPLE_TEAM_ID) must be the 10-character Apple team id, got {team:?}");
            }
            apple.team_id = team.to_owned();
        }
        match files {
            (None, None, None) => Ok(apple),
            (Some(cert), Some(key), Some(wwdr)) => {
                if ids.0.is_none() || ids.1.is_none() {
                    bail!("signed Apple passes (LOYALTY_APPLE_CERT_PEM…) need apple_pass_type_id (LOYALTY_APPLE_PASS_TYPE_ID) and apple_team_id (LOYALTY_APPLE_TEAM_ID), those of the certificate");
                }
                let signer = loyalty_wallet::PassSigner::from_pem(
                    &read_pem(cert, "apple_cert_pem (LOYALTY_APPLE_CERT_PEM)")?,
                    &read_pem(key, "apple_key_pem (LOYALTY_APPLE_KEY_PEM)")?,
                    &read_pem(wwdr, "apple_wwdr_pem (LOYALTY_APPLE_WWDR_PEM)")?,
                )
                .map_err(|e| anyhow::anyhow!("LOYALTY_APPLE_*_PEM: {e}"))?;
                apple.signer = Some(std::sync::Arc::new(signer));
                Ok(apple)
            }
            _ => bail!("apple_cert_pem, apple_key_pem and apple_wwdr_pem (LOYALTY_APPLE_CERT_PEM, LOYALTY_APPLE_KEY_PEM, LOYALTY_APPLE_WWDR_PEM) go together: set all three, or none (unsigned passes)"),
        }
    }

    fn google_wallet(&self) -> anyhow::Result<Option<loyalty_wallet::GoogleWallet>> {
        match (
            &self.google_wallet_issuer_id,
            &self.google_wallet_class_id,
            &self.google_wallet_service_account,
            &self.google_wallet_key_pem,
        ) {
            (None, None, None, None) => Ok(None),
            (Some(issuer), Some(class), Some(account), Some(key)) => {
                let key = read_pem(key, "google_wallet_key_pem (LOYALTY_GOOGLE_WALLET_KEY_PEM)")?;
                loyalty_wallet::GoogleWallet::new(issuer, class, account, &key)
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("LOYALTY_GOOGLE_WALLET_*: {e}"))
            }
            _ => bail!("google_wallet_issuer_id, google_wallet_class_id, google_wallet_service_account and google_wallet_key_pem (LOYALTY_GOOGLE_WALLET_ISSUER_ID, _CLASS_ID, _SERVICE_ACCOUNT, _KEY_PEM) go together: set all four, or none (no Google Wallet link)"),
        }
    }

    /// The delivery workers' settings (the adapters and the public URL are the caller's).
    pub fn delivery(&self) -> loyalty_core::engine::delivery::DeliveryConfig {
        loyalty_core::engine::delivery::DeliveryConfig {
            every: Duration::from_millis(self.delivery_ms),
            max_attempts: self.delivery_max_attempts,
            backoff: Duration::from_millis(self.delivery_backoff_ms),
            ..Default::default()
        }
    }

    /// The rule of the production commands (`node`, `gateway`, `engine`): they refuse the dev
    /// defaults. The platform admin's key must be set explicitly and must not be the dev key
    /// `dev-admin-key`, which anyone who read the README knows. (The demo franchise is off by
    /// default outside dev: [`Profile::Production`] leaves it to `LOYALTY_DEMO=true`.)
    pub fn refuse_dev_defaults(&self, command: &str) -> anyhow::Result<()> {
        let key = self.admin_key.trim();
        if key.is_empty() {
            bail!(
                "`loyalty {command}` needs the platform admin's key: set LOYALTY_ADMIN_KEY (or \
                 admin_key) to a secret of at least 8 characters. Only `loyalty dev` has a default"
            );
        }
        if key == DEV_ADMIN_KEY {
            bail!(
                "admin_key (LOYALTY_ADMIN_KEY) is the dev default `{DEV_ADMIN_KEY}`, which \
                 `loyalty {command}` refuses: set LOYALTY_ADMIN_KEY to a secret of your own"
            );
        }
        if self.keys()?.is_dev() {
            bail!(
                "`loyalty {command}` needs the key ring that seals members' personal data: set \
                 LOYALTY_PII_KEYS (or pii_keys) to `id:base64-key` (`loyalty privacy new-key \
                 ID` makes one; README \"Personal data at rest\"). Only `loyalty dev` has a \
                 default"
            );
        }
        Ok(())
    }

    /// The key ring of `pii_keys`, or the dev ring when it is unset (which production
    /// commands refuse, [`DevConfig::refuse_dev_defaults`]).
    pub fn keys(&self) -> anyhow::Result<KeyRing> {
        match self.pii_keys.as_deref() {
            None => Ok(KeyRing::dev()),
            Some(spec) => KeyRing::parse(spec)
                .map_err(|e| anyhow::anyhow!("pii_keys (LOYALTY_PII_KEYS): {e}")),
        }
    }

    /// The engines' Kafka session timeout (`kafka_session_timeout_ms`).
    pub fn kafka_session_timeout(&self) -> Duration {
        Duration::from_millis(self.kafka_session_timeout_ms)
    }

    /// The engines' Kafka heartbeat interval: `kafka_heartbeat_ms`, else a tenth of the session
    /// timeout.
    pub fn kafka_heartbeat(&self) -> Duration {
        self.kafka_heartbeat_ms
            .map_or(self.kafka_session_timeout() / 10, Duration::from_millis)
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
        let session = self.kafka_session_timeout_ms;
        if !(1_000..=300_000).contains(&session) {
            bail!(
                "kafka_session_timeout_ms (LOYALTY_KAFKA_SESSION_TIMEOUT_MS) must be between 1000 \
                 and 300000 (5 min, the consumers' max.poll.interval.ms), got {session}"
            );
        }
        let heartbeat = self.kafka_heartbeat().as_millis() as u64;
        if heartbeat == 0 || heartbeat * 3 > session {
            bail!(
                "kafka_heartbeat_ms (LOYALTY_KAFKA_HEARTBEAT_MS) must be between 1 and a third of \
                 the session timeout ({} ms for {session} ms), got {heartbeat}",
                session / 3
            );
        }
        Ok(())
    }

    /// The shared durable store, if one is configured: PostgreSQL (`postgres_url`) or
    /// ScyllaDB (`scylla_nodes`), never both. `None`: the embedded store in `data_dir`, which
    /// one process owns.
    pub fn shared_store(&self) -> anyhow::Result<Option<SharedStore>> {
        match (self.postgres()?, self.scylla()?) {
            (Some(_), Some(_)) => bail!(
                "both postgres_url (LOYALTY_POSTGRES_URL) and scylla_nodes (LOYALTY_SCYLLA_NODES) \
                 are set: the platform runs on one shared store; unset one of them"
            ),
            (Some(p), None) => Ok(Some(SharedStore::Postgres(p))),
            (None, Some(s)) => Ok(Some(SharedStore::Scylla(s))),
            (None, None) => Ok(None),
        }
    }

    /// The PostgreSQL settings, if a URL is configured. Errors name the setting and never
    /// show the URL's password.
    pub fn postgres(&self) -> anyhow::Result<Option<loyalty_postgres::PostgresConfig>> {
        let Some(url) = self.postgres_url.as_deref().map(str::trim) else {
            if self.postgres_pool.is_some() {
                bail!("postgres_pool (LOYALTY_POSTGRES_POOL) is set without postgres_url (LOYALTY_POSTGRES_URL)");
            }
            return Ok(None);
        };
        let mut c = loyalty_postgres::PostgresConfig::new(url.to_owned());
        if let Some(n) = self.postgres_pool {
            if !(1..=MAX_POSTGRES_POOL).contains(&n) {
                bail!("postgres_pool (LOYALTY_POSTGRES_POOL) must be between 1 and {MAX_POSTGRES_POOL}, got {n}");
            }
            c.pool_size = n;
        }
        c.validate().map_err(|e| {
            anyhow::anyhow!(
                "postgres_url (LOYALTY_POSTGRES_URL): {}",
                scrub_password(&e.to_string(), url)
            )
        })?;
        Ok(Some(c))
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

    /// The dead-letter topic of the POS topic, `None` when POS ingestion is off.
    pub fn pos_dead_letter_topic(&self) -> Option<String> {
        (!self.pos_topic.is_empty()).then(|| format!("{}-dlq", self.pos_topic))
    }

    /// The base of the URLs handed to members ([`DevConfig::public_url`]), without a trailing
    /// `/`: the configured one, else `http://` and `listening` (the API's bound address; the
    /// loopback address for a wildcard one such as `0.0.0.0`, which no browser can open).
    pub fn public_base_url(&self, listening: SocketAddr) -> String {
        match &self.public_url {
            Some(u) => u.trim().trim_end_matches('/').to_owned(),
            None => {
                let mut addr = listening;
                if addr.ip().is_unspecified() {
                    addr.set_ip(match addr {
                        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                    });
                }
                format!("http://{addr}")
            }
        }
    }

    pub fn checkpoint_every(&self) -> Duration {
        Duration::from_millis(self.checkpoint_ms)
    }

    pub fn passivate_after(&self) -> Duration {
        Duration::from_secs(self.passivate_after_secs)
    }

    /// The engine's scheduler settings, on the system clock.
    pub fn scheduler(&self) -> loyalty_core::engine::scheduler::SchedulerConfig {
        loyalty_core::engine::scheduler::SchedulerConfig {
            every: Duration::from_secs(self.scheduler_secs),
            batch: self.scheduler_batch,
            ..Default::default()
        }
    }
}

/// The largest PostgreSQL pool the configuration accepts.
pub const MAX_POSTGRES_POOL: usize = 1024;

/// `url` with its password (user-info or `password=` parameter) replaced by `***`, for
/// messages and logs. Works on libpq URLs (`postgres://user:secret@host/db?password=...`),
/// `redis://:secret@host/` URLs and libpq key/value strings (`host=h password=secret`).
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***@{host}"),
                    None => format!("{userinfo}@{host}"),
                },
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        // A key/value connection string: hide every `password=` value.
        None => return redact_key_values(head, ' '),
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(&redact_key_values(q, '&'));
    }
    out
}

/// `k=v` pairs separated by `sep`, with the value of `password` replaced by `***`.
fn redact_key_values(s: &str, sep: char) -> String {
    s.split(sep)
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.trim().eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

/// The password of a libpq URL, if it has one in its user-info or its query.
fn url_password(url: &str) -> Option<&str> {
    let (head, query) = url.split_once('?').unwrap_or((url, ""));
    let rest = head.split_once("://").map_or(head, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if let Some((_, pw)) = userinfo.split_once(':') {
            if !pw.is_empty() {
                return Some(pw);
            }
        }
    }
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.eq_ignore_ascii_case("password") && !v.is_empty()).then_some(v)
    })
}

/// `message` with the URL's password (if it appears) replaced by `***`: for errors of
/// libraries that may quote the URL they were given.
pub fn scrub_password(message: &str, url: &str) -> String {
    match url_password(url) {
        Some(pw) => message.replace(pw, "***"),
        None => message.to_owned(),
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
    fn pos_topic_is_on_by_default_and_checked() {
        let c = DevConfig::default();
        assert_eq!(c.pos_dead_letter_topic().as_deref(), Some("pos-events-dlq"));
        let off = DevConfig {
            pos_topic: String::new(),
            ..DevConfig::default()
        };
        off.validate().unwrap();
        assert_eq!(off.pos_dead_letter_topic(), None);
        for bad in ["pos events", "pos-commands", "pos-commands-dlq"] {
            let c = DevConfig {
                pos_topic: bad.into(),
                ..DevConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("LOYALTY_POS_TOPIC"), "{bad}: {e}");
        }
    }

    #[test]
    fn public_url_is_checked_and_defaults_to_the_listen_address() {
        let addr: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let c = DevConfig::default();
        assert_eq!(c.public_base_url(addr), "http://127.0.0.1:4321");
        let any: SocketAddr = "0.0.0.0:4321".parse().unwrap();
        assert_eq!(c.public_base_url(any), "http://127.0.0.1:4321");
        let any6: SocketAddr = "[::]:4321".parse().unwrap();
        assert_eq!(c.public_base_url(any6), "http://[::1]:4321");
        for ok in [
            "https://loyalty.example.com",
            "https://loyalty.example.com/",
            "http://127.0.0.1:8080",
            "http://[::1]:8080/loyalty",
        ] {
            let c = DevConfig {
                public_url: Some(ok.into()),
                ..DevConfig::default()
            };
            c.validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(!c.public_base_url(addr).ends_with('/'), "{ok}");
        }
        for bad in [
            "loyalty.example.com",
            "ftp://example.com",
            "https://",
            "https://exa mple.com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://user@example.com",
            "https://example.com/?a=1",
            "https://example.com/#x",
            "https://[zz]:80",
        ] {
            let c = DevConfig {
                public_url: Some(bad.into()),
                ..DevConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("LOYALTY_PUBLIC_URL"), "{bad}: {e}");
        }
    }

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
    fn kafka_session_and_heartbeat_are_checked() {
        let node = DevConfig {
            kafka_brokers: Some("127.0.0.1:9092".into()),
            redis_url: Some("redis://127.0.0.1:6379/".into()),
            ..DevConfig::default()
        };
        // Defaults: 10 s, and a heartbeat of a tenth of it.
        assert_eq!(node.kafka_session_timeout(), Duration::from_secs(10));
        assert_eq!(node.kafka_heartbeat(), Duration::from_secs(1));
        let c = DevConfig {
            kafka_session_timeout_ms: 6_000,
            ..node.clone()
        };
        c.validate_node().unwrap();
        assert_eq!(c.kafka_heartbeat(), Duration::from_millis(600));
        let c = DevConfig {
            kafka_heartbeat_ms: Some(2_000),
            ..c
        };
        c.validate_node().unwrap();
        for (session, heartbeat, named) in [
            (6_000, Some(2_001), "LOYALTY_KAFKA_HEARTBEAT_MS"),
            (6_000, Some(0), "LOYALTY_KAFKA_HEARTBEAT_MS"),
            (999, None, "LOYALTY_KAFKA_SESSION_TIMEOUT_MS"),
            (300_001, None, "LOYALTY_KAFKA_SESSION_TIMEOUT_MS"),
        ] {
            let c = DevConfig {
                kafka_session_timeout_ms: session,
                kafka_heartbeat_ms: heartbeat,
                ..node.clone()
            };
            let e = c.validate_node().unwrap_err().to_string();
            assert!(e.contains(named), "{session} {heartbeat:?}: {e}");
        }
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
    fn production_refuses_the_dev_defaults() {
        // Unset (the production default): named, with what to do.
        let c = DevConfig::defaults(Profile::Production);
        let e = c.refuse_dev_defaults("gateway").unwrap_err().to_string();
        assert!(
            e.contains("LOYALTY_ADMIN_KEY") && e.contains("loyalty gateway"),
            "{e}"
        );
        // The dev key, however it was set.
        let c = DevConfig {
            admin_key: DEV_ADMIN_KEY.into(),
            ..DevConfig::defaults(Profile::Production)
        };
        let e = c.refuse_dev_defaults("node").unwrap_err().to_string();
        assert!(
            e.contains("LOYALTY_ADMIN_KEY") && e.contains(DEV_ADMIN_KEY),
            "{e}"
        );
        let c = DevConfig {
            admin_key: format!(" {DEV_ADMIN_KEY} "),
            ..DevConfig::defaults(Profile::Production)
        };
        assert!(c.refuse_dev_defaults("engine").is_err());
        // A key of one's own passes (its length is checked by `validate`).
        // A key of one's own, but the dev key ring: refused, naming the setting.
        let c = DevConfig {
            admin_key: "s3cret-admin-key".into(),
            ..DevConfig::defaults(Profile::Production)
        };
        let e = c.refuse_dev_defaults("engine").unwrap_err().to_string();
        assert!(
            e.contains("LOYALTY_PII_KEYS") && e.contains("new-key"),
            "{e}"
        );
        let c = DevConfig {
            pii_keys: Some("k1:not-base64".into()),
            ..c
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("pii_keys (LOYALTY_PII_KEYS)") && e.contains("32 bytes"),
            "{e}"
        );
        let c = DevConfig {
            pii_keys: Some(KeyRing::new_key_spec("k1").unwrap()),
            ..c
        };
        c.refuse_dev_defaults("engine").unwrap();
        c.validate().unwrap();
        assert_eq!(c.keys().unwrap().current(), "k1");
        assert!(
            !format!("{c:?}").contains(c.pii_keys.as_deref().unwrap()),
            "never shown"
        );
        // Dev keeps its defaults.
        assert_eq!(DevConfig::defaults(Profile::Dev).admin_key, DEV_ADMIN_KEY);
        assert!(DevConfig::defaults(Profile::Dev).demo);
    }

    #[test]
    fn production_creates_demo_data_only_when_asked() {
        assert!(!DevConfig::defaults(Profile::Production).demo);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        // A file that does not mention them leaves the production defaults.
        std::fs::write(&p, "partitions = 3\n").unwrap();
        let c = DevConfig::load_as(Some(&p), Profile::Production).unwrap();
        assert!(!c.demo);
        assert!(c.admin_key.is_empty());
        let c = DevConfig::load_as(Some(&p), Profile::Dev).unwrap();
        assert!(c.demo);
        assert_eq!(c.admin_key, DEV_ADMIN_KEY);
        // Asked for explicitly.
        let ring = KeyRing::new_key_spec("k1").unwrap();
        std::fs::write(
            &p,
            format!("demo = true\nadmin_key = \"k-0123456789\"\npii_keys = \"{ring}\"\n"),
        )
        .unwrap();
        let c = DevConfig::load_as(Some(&p), Profile::Production).unwrap();
        assert!(c.demo);
        assert_eq!(c.admin_key, "k-0123456789");
        c.refuse_dev_defaults("node").unwrap();
    }

    #[test]
    fn one_shared_store_at_most() {
        assert!(DevConfig::default().shared_store().unwrap().is_none());
        let both = DevConfig {
            postgres_url: Some("postgres://loyalty:pw-secret@127.0.0.1:5432/loyalty".into()),
            scylla_nodes: Some("127.0.0.1:9042".into()),
            ..DevConfig::default()
        };
        let e = both.shared_store().unwrap_err().to_string();
        assert!(
            e.contains("LOYALTY_POSTGRES_URL") && e.contains("LOYALTY_SCYLLA_NODES"),
            "{e}"
        );
        assert!(both.validate().is_err());
        let pg = DevConfig {
            postgres_url: Some("postgres://loyalty:pw-secret@127.0.0.1:5432/loyalty".into()),
            postgres_pool: Some(4),
            ..DevConfig::default()
        };
        match pg.shared_store().unwrap() {
            Some(SharedStore::Postgres(c)) => {
                assert_eq!(c.pool_size, 4);
                let d = SharedStore::Postgres(c).describe();
                assert!(!d.contains("pw-secret"), "{d}");
            }
            other => panic!("expected PostgreSQL, got {other:?}"),
        }
        let scylla = DevConfig {
            scylla_nodes: Some("127.0.0.1:9042".into()),
            ..DevConfig::default()
        };
        assert!(matches!(
            scylla.shared_store().unwrap(),
            Some(SharedStore::Scylla(_))
        ));
    }

    #[test]
    fn postgres_settings_are_checked_without_showing_the_password() {
        let c = DevConfig {
            postgres_url: Some("mysql://root:pw-secret@db/x".into()),
            ..DevConfig::default()
        };
        let e = c.postgres().unwrap_err().to_string();
        assert!(e.contains("LOYALTY_POSTGRES_URL"), "{e}");
        assert!(!e.contains("pw-secret"), "{e}");
        let c = DevConfig {
            postgres_url: Some("postgres://u:pw-secret@db/x".into()),
            postgres_pool: Some(0),
            ..DevConfig::default()
        };
        let e = c.postgres().unwrap_err().to_string();
        assert!(e.contains("LOYALTY_POSTGRES_POOL"), "{e}");
        let c = DevConfig {
            postgres_pool: Some(8),
            ..DevConfig::default()
        };
        let e = c.postgres().unwrap_err().to_string();
        assert!(e.contains("LOYALTY_POSTGRES_URL"), "{e}");
        let c = DevConfig {
            postgres_url: Some("postgres://u:pw-secret@db/x".into()),
            admin_key: "an-admin-secret".into(),
            ..DevConfig::default()
        };
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("pw-secret") && !debug.contains("an-admin-secret"),
            "{debug}"
        );
    }

    #[test]
    fn urls_are_redacted() {
        for (url, shown) in [
            (
                "postgres://loyalty:s3cr3t@10.0.0.1:5432/loyalty",
                "postgres://loyalty:***@10.0.0.1:5432/loyalty",
            ),
            (
                "postgresql://loyalty:p@ss:w@rd@db/x?sslmode=disable",
                "postgresql://loyalty:***@db/x?sslmode=disable",
            ),
            (
                "postgres://loyalty@db/x?password=s3cr3t&application_name=gw",
                "postgres://loyalty@db/x?password=***&application_name=gw",
            ),
            ("postgres://db:5432", "postgres://db:5432"),
            (
                "redis://:s3cr3t@127.0.0.1:6379/",
                "redis://:***@127.0.0.1:6379/",
            ),
            (
                "host=db user=loyalty password=s3cr3t",
                "host=db user=loyalty password=***",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        assert_eq!(
            scrub_password(
                "cannot parse postgres://u:s3cr3t@h/x",
                "postgres://u:s3cr3t@h/x"
            ),
            "cannot parse postgres://u:***@h/x"
        );
        assert_eq!(
            scrub_password("bad password=s3cr3t", "postgres://u@h/x?password=s3cr3t"),
            "bad password=***"
        );
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

    /// The wallet settings: unset is unsigned Apple passes and no Google link; partial sets and
    /// unreadable or mismatched files are refused naming the setting; the fixtures sign.
    #[test]
    fn wallet_settings_are_checked() {
        let fixtures =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../libs/wallet/tests/fixtures");
        let w = DevConfig::default().wallet().unwrap();
        assert!(!w.apple.signed() && w.google.is_none());
        let apple = DevConfig {
            apple_pass_type_id: Some("pass.com.example.card".into()),
            apple_team_id: Some("ABCDE12345".into()),
            apple_cert_pem: Some(fixtures.join("pass-cert.pem")),
            apple_key_pem: Some(fixtures.join("pass-key.pem")),
            apple_wwdr_pem: Some(fixtures.join("wwdr.pem")),
            ..DevConfig::default()
        };
        let w = apple.wallet().unwrap();
        assert!(w.apple.signed());
        assert_eq!(w.apple.team_id, "ABCDE12345");
        let google = DevConfig {
            google_wallet_issuer_id: Some("3388000000012345678".into()),
            google_wallet_class_id: Some("card".into()),
            google_wallet_service_account: Some("w@example.iam.gserviceaccount.com".into()),
            google_wallet_key_pem: Some(fixtures.join("google-key.pem")),
            ..DevConfig::default()
        };
        assert!(google.wallet().unwrap().google.is_some());
        for (c, says) in [
            (
                DevConfig {
                    apple_key_pem: None,
                    ..apple.clone()
                },
                "go together",
            ),
            (
                DevConfig {
                    apple_team_id: None,
                    ..apple.clone()
                },
                "LOYALTY_APPLE_TEAM_ID",
            ),
            (
                DevConfig {
                    apple_team_id: Some("short".into()),
                    ..apple.clone()
                },
                "10-character",
            ),
            (
                DevConfig {
                    apple_pass_type_id: Some("card".into()),
                    ..apple.clone()
                },
                "Pass Type ID",
            ),
            (
                DevConfig {
                    apple_key_pem: Some(fixtures.join("google-key.pem")),
                    ..apple.clone()
                },
                "not the key",
            ),
            (
                DevConfig {
                    apple_wwdr_pem: Some(fixtures.join("absent.pem")),
                    ..apple.clone()
                },
                "LOYALTY_APPLE_WWDR_PEM",
            ),
            (
                DevConfig {
                    google_wallet_class_id: None,
                    ..google.clone()
                },
                "set all four",
            ),
            (
                DevConfig {
                    google_wallet_issuer_id: Some("x1".into()),
                    ..google.clone()
                },
                "issuer id",
            ),
        ] {
            let e = format!("{:#}", c.validate().unwrap_err());
            assert!(e.contains(says), "{e} should say {says}");
        }
        // Paths only in Debug, never a key.
        assert!(!format!("{apple:?}").contains("PRIVATE KEY"));
    }
}
