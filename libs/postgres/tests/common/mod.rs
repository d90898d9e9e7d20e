//! Shared by the PostgreSQL tests: a real server per test (skipped, with the reason, when this
//! machine has none and `LOYALTY_REQUIRE_SERVERS` is not `1`), fresh databases on it, and
//! domain values built with the real rules, as the engine builds them.

#![allow(dead_code)]

use std::time::Duration;

use anyhow::{anyhow, Context};
use loyalty_core::ports::{EffectBatch, MemberWrite, ProcessedWrite};
use loyalty_domain::{
    apply, Cents, EventContext, EventId, Fingerprint, FranchiseId, LedgerEntry, MemberCommand,
    MemberId, MemberState, Outcome, Phone, ProcessedEvent, Profile, Program, StoreId, Timestamp,
};
use loyalty_postgres::{migrate, PostgresConfig, PostgresStore};
use loyalty_testkit::postgres::PostgresServer;

/// A started server, or `None` after printing why the test is skipped.
pub fn server() -> Option<PostgresServer> {
    if let Err(reason) = PostgresServer::available() {
        println!("SKIPPED: {reason}");
        eprintln!("SKIPPED: {reason}");
        return None;
    }
    match PostgresServer::start() {
        Ok(s) => Some(s),
        Err(e) => panic!("PostgreSQL is installed but did not start: {e:#}"),
    }
}

/// A config for a new database `name` on `server`, with small timeouts for tests.
pub fn fresh(server: &PostgresServer, name: &str) -> anyhow::Result<PostgresConfig> {
    let url = server.create_database(name)?;
    let mut config = PostgresConfig::new(url);
    config.pool_size = 4;
    config.connect_timeout = Duration::from_secs(3);
    config.statement_timeout = Duration::from_secs(20);
    Ok(config)
}

/// A migrated, connected store on a new database `name`.
pub async fn store(
    server: &PostgresServer,
    name: &str,
) -> anyhow::Result<(PostgresConfig, PostgresStore)> {
    let config = fresh(server, name)?;
    migrate(&config).await.context("migrate")?;
    let store = PostgresStore::connect(&config).await.context("connect")?;
    Ok((config, store))
}

/// A raw driver connection (for tests that look behind the adapter).
pub async fn raw(config: &PostgresConfig) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(&config.url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub fn fp(s: &str) -> Fingerprint {
    Fingerprint::of(&[s.as_bytes()])
}

/// Builds domain values for one franchise with the demo program.
pub struct Sim {
    pub franchise: FranchiseId,
    pub store: StoreId,
    pub program: Program,
    events: u64,
}

/// One applied command.
pub struct Effect {
    pub state: Option<MemberState>,
    pub entries: Vec<LedgerEntry>,
    pub record: ProcessedEvent,
}

impl Effect {
    /// The batch the engine would commit for this effect, fenced by `expected_version`.
    pub fn batch(&self, expected_version: u64) -> EffectBatch {
        let mut b = EffectBatch::default();
        self.add_to(&mut b, expected_version);
        b
    }

    pub fn add_to(&self, b: &mut EffectBatch, expected_version: u64) {
        if let Some(s) = &self.state {
            b.members.push(MemberWrite {
                state: s.clone(),
                expected_version,
            });
            b.ledger.extend(
                self.entries
                    .iter()
                    .map(|e| (s.member_id.clone(), e.clone())),
            );
        }
        b.processed.push(ProcessedWrite {
            record: self.record.clone(),
            insert: true,
        });
    }
}

fn id<T>(r: Result<T, loyalty_domain::DomainError>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow!("{e}"))
}

impl Sim {
    pub fn new(name: &str) -> anyhow::Result<Sim> {
        Ok(Sim {
            franchise: id(FranchiseId::parse(&format!("pg-{name}")))?,
            store: id(StoreId::parse(&format!("store-{name}")))?,
            program: Program::demo(),
            events: 0,
        })
    }

    pub fn member(&self, n: u32) -> anyhow::Result<MemberId> {
        id(MemberId::parse(&format!("{}-m{n:05}", self.franchise)))
    }

    pub fn event(&mut self) -> anyhow::Result<(EventId, Timestamp)> {
        self.events += 1;
        let e = id(EventId::parse(&format!(
            "{}-e{}",
            self.franchise, self.events
        )))?;
        Ok((
            e,
            Timestamp(1_700_000_000_000 + self.events as i64 * 60_000),
        ))
    }

    pub fn apply(
        &mut self,
        state: Option<&MemberState>,
        member: &MemberId,
        cmd: MemberCommand,
    ) -> anyhow::Result<Effect> {
        let (event, at) = self.event()?;
        let mut next = state.cloned();
        let ctx = EventContext {
            event_id: &event,
            store_id: &self.store,
            at,
            program: &self.program,
        };
        let (entries, outcome, changed) =
            match apply(&mut next, member, &self.franchise, &cmd, &ctx) {
                Ok(a) => (a.entries, a.outcome, a.changed),
                Err(r) => (Vec::new(), Outcome::Rejected(r), false),
            };
        Ok(Effect {
            state: if changed { next } else { None },
            entries,
            record: ProcessedEvent {
                franchise_id: self.franchise.clone(),
                event_id: event.clone(),
                fingerprint: Fingerprint::of(&[event.as_str().as_bytes()]),
                member_id: Some(member.clone()),
                store_id: self.store.clone(),
                at,
                outcome,
            },
        })
    }

    pub fn enrol(&mut self, member: &MemberId) -> anyhow::Result<Effect> {
        let phone = id(Phone::parse(&format!(
            "+336{:08}",
            self.events % 100_000_000
        )))?;
        self.apply(
            None,
            member,
            MemberCommand::Enrol {
                profile: Profile {
                    phone,
                    name: None,
                    birthday: None,
                },
            },
        )
    }

    pub fn purchase(&mut self, state: &MemberState, cents: i64) -> anyhow::Result<Effect> {
        self.apply(
            Some(state),
            &state.member_id,
            MemberCommand::Purchase {
                amount: id(Cents::new(cents))?,
                currency: self.program.currency.clone(),
            },
        )
    }
}
