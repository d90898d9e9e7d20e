//! Idempotent setup: a franchise with a program, S stores and M members, all through the API,
//! remembered in a state file so that a second `setup` (or `run`) reuses them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{Answer, Api};

/// What setup made, as saved in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The platform these ids belong to.
    pub url: String,
    pub franchise_id: String,
    pub hq_key: String,
    pub points_per_unit: i64,
    pub signup_bonus: i64,
    pub currency: String,
    pub rewards: Vec<Reward>,
    pub stores: Vec<StoreCred>,
    pub members: Vec<MemberRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reward {
    pub id: String,
    pub cost_points: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreCred {
    pub id: String,
    pub api_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRef {
    pub phone: String,
    pub id: String,
    pub qr: String,
}

/// Settings of `setup`.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    pub url: String,
    pub admin_key: String,
    /// Where the state is kept; `None` keeps it in memory only (a fresh franchise every time).
    pub state_path: Option<PathBuf>,
    pub stores: usize,
    pub members: usize,
    /// Enrolments in flight at once.
    pub concurrency: usize,
    pub franchise_name: String,
    /// Print progress lines to stderr.
    pub verbose: bool,
}

impl Default for SetupOptions {
    fn default() -> Self {
        SetupOptions {
            url: "http://127.0.0.1:8080".into(),
            admin_key: "dev-admin-key".into(),
            state_path: Some(PathBuf::from("loadtest-state.json")),
            stores: 5,
            members: 10_000,
            concurrency: 128,
            franchise_name: "Loadtest Coffee".into(),
            verbose: true,
        }
    }
}

/// The program of the load test. Every tier has `multiplier_pct` 100, so the points a purchase
/// earns do not depend on the member's tier, hence not on the order in which concurrent
/// purchases of one member are applied: the generator can compute the expected balance.
/// No points expiry, for the same reason. The stamp card stays (a full card gives a voucher,
/// which a redemption uses before points: the generator counts the `points_spent` reported).
pub fn program() -> Value {
    json!({
        "currency": "EUR",
        "points_per_unit": 1,
        "signup_bonus": 50,
        "stamp_card": {"size": 10, "reward_id": "free-coffee"},
        "tier_qualification": {"metric": "spend_cents", "window_days": 365},
        "tiers": [
            {"name": "Bronze", "threshold": 0, "multiplier_pct": 100},
            {"name": "Silver", "threshold": 25000, "multiplier_pct": 100},
            {"name": "Gold", "threshold": 100000, "multiplier_pct": 100}
        ],
        "rewards": [
            {"id": "free-coffee", "name": "Free coffee", "cost_points": 100},
            {"id": "free-pastry", "name": "Free pastry", "cost_points": 150}
        ]
    })
}

/// The deterministic phone number of setup member `i`.
pub fn member_phone(i: usize) -> String {
    format!("+336{:08}", i % 100_000_000)
}

/// Creates (or reuses, through the state file) the franchise, stores and members.
pub async fn setup(api: &Api, opts: &SetupOptions) -> anyhow::Result<State> {
    if opts.stores == 0 {
        bail!("--stores must be at least 1");
    }
    let mut state = match &opts.state_path {
        Some(p) if p.exists() => match load_state(p)? {
            s if s.url != api.base() => {
                log(
                    opts,
                    &format!("state file {} is for {}: new franchise", p.display(), s.url),
                );
                None
            }
            s => match check_franchise(api, &s).await {
                Ok(()) => {
                    log(
                        opts,
                        &format!("reusing franchise {} from {}", s.franchise_id, p.display()),
                    );
                    Some(s)
                }
                Err(e) => {
                    log(
                        opts,
                        &format!(
                            "franchise of {} not usable ({e:#}): new franchise",
                            p.display()
                        ),
                    );
                    None
                }
            },
        },
        _ => None,
    };
    if state.is_none() {
        state = Some(create_franchise(api, opts).await?);
    }
    let mut state = state.ok_or_else(|| anyhow!("no state"))?;
    save(opts, &state)?;

    while state.stores.len() < opts.stores {
        let n = state.stores.len() + 1;
        let a = api
            .post(
                &format!("/v1/franchises/{}/stores", state.franchise_id),
                &state.hq_key,
                &json!({"name": format!("Store {n}")}),
            )
            .await;
        if a.status() != Some(201) {
            bail!("creating store {n} answered {}", a.kind());
        }
        let id = a
            .str_field("id")
            .ok_or_else(|| anyhow!("store without id"))?;
        let key = a
            .str_field("api_key")
            .ok_or_else(|| anyhow!("store without api_key"))?;
        state.stores.push(StoreCred {
            id: id.to_owned(),
            api_key: key.to_owned(),
        });
    }
    save(opts, &state)?;

    if state.members.len() < opts.members {
        let from = state.members.len();
        log(opts, &format!("enrolling members {from}..{}", opts.members));
        let started = std::time::Instant::now();
        let stores = state.stores.clone();
        let results: Vec<anyhow::Result<MemberRef>> = stream::iter(from..opts.members)
            .map(|i| {
                let key = stores[i % stores.len()].api_key.clone();
                async move { enrol(api, &key, &member_phone(i)).await }
            })
            .buffered(opts.concurrency.max(1))
            .collect()
            .await;
        for r in results {
            state.members.push(r?);
        }
        let secs = started.elapsed().as_secs_f64();
        log(
            opts,
            &format!(
                "enrolled {} members in {secs:.1} s ({:.0}/s)",
                opts.members - from,
                (opts.members - from) as f64 / secs.max(1e-9)
            ),
        );
    }
    save(opts, &state)?;
    Ok(state)
}

fn log(opts: &SetupOptions, msg: &str) {
    if opts.verbose {
        eprintln!("setup: {msg}");
    }
}

fn load_state(p: &Path) -> anyhow::Result<State> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

fn save(opts: &SetupOptions, state: &State) -> anyhow::Result<()> {
    let Some(p) = &opts.state_path else {
        return Ok(());
    };
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, p).with_context(|| format!("renaming to {}", p.display()))?;
    Ok(())
}

/// The saved franchise still exists on this platform, its HQ key works and its program is
/// still one whose points do not depend on the order of events.
async fn check_franchise(api: &Api, s: &State) -> anyhow::Result<()> {
    let a = api
        .get(
            &format!("/v1/franchises/{}/program", s.franchise_id),
            &s.hq_key,
        )
        .await;
    if a.status() != Some(200) {
        bail!("reading its program answered {}", a.kind());
    }
    let p = a
        .body()
        .get("program")
        .ok_or_else(|| anyhow!("no program"))?;
    let (ppu, bonus, _, _) = read_program(p)?;
    if ppu != s.points_per_unit || bonus != s.signup_bonus {
        bail!("its program changed");
    }
    Ok(())
}

/// `(points_per_unit, signup_bonus, currency, rewards)` of a program, which must have every
/// tier at multiplier 100 and no expiry.
fn read_program(p: &Value) -> anyhow::Result<(i64, i64, String, Vec<Reward>)> {
    let ppu = p
        .get("points_per_unit")
        .and_then(Value::as_i64)
        .ok_or_else(|| anyhow!("no points_per_unit"))?;
    let bonus = p.get("signup_bonus").and_then(Value::as_i64).unwrap_or(0);
    let currency = p
        .get("currency")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no currency"))?
        .to_owned();
    let tiers = p
        .get("tiers")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no tiers"))?;
    if tiers
        .iter()
        .any(|t| t.get("multiplier_pct").and_then(Value::as_i64) != Some(100))
    {
        bail!("a tier has a multiplier other than 100");
    }
    if p.get("points_expiry_days").is_some_and(|v| !v.is_null()) {
        bail!("points expire");
    }
    let rewards = p
        .get("rewards")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .filter_map(|r| {
                    Some(Reward {
                        id: r.get("id")?.as_str()?.to_owned(),
                        cost_points: r.get("cost_points")?.as_i64()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((ppu, bonus, currency, rewards))
}

async fn create_franchise(api: &Api, opts: &SetupOptions) -> anyhow::Result<State> {
    let program = program();
    let a = api
        .post(
            "/v1/franchises",
            &opts.admin_key,
            &json!({"name": opts.franchise_name, "program": program}),
        )
        .await;
    if a.status() != Some(201) {
        bail!("creating the franchise answered {}", a.kind());
    }
    let id = a
        .str_field("id")
        .ok_or_else(|| anyhow!("franchise without id"))?;
    let hq = a
        .str_field("hq_api_key")
        .ok_or_else(|| anyhow!("franchise without hq_api_key"))?;
    log(opts, &format!("created franchise {id}"));
    let (points_per_unit, signup_bonus, currency, rewards) = read_program(&program)?;
    Ok(State {
        url: api.base().to_owned(),
        franchise_id: id.to_owned(),
        hq_key: hq.to_owned(),
        points_per_unit,
        signup_bonus,
        currency,
        rewards,
        stores: Vec::new(),
        members: Vec::new(),
    })
}

/// Enrols (or finds) the member with `phone`, retrying a deadline miss or a transport error.
pub async fn enrol(api: &Api, store_key: &str, phone: &str) -> anyhow::Result<MemberRef> {
    let mut last = String::new();
    for attempt in 0..20u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50 * attempt.min(10))).await;
        }
        let a = api
            .post(
                "/v1/members?wait_ms=5000",
                store_key,
                &json!({"phone": phone}),
            )
            .await;
        match a.status() {
            Some(200 | 201) => return member_ref(&a, phone),
            Some(202) | Some(500..) | None => last = a.kind(),
            Some(_) => bail!("enrolling {phone} answered {}", a.kind()),
        }
    }
    bail!("enrolling {phone}: still {last} after 20 attempts")
}

fn member_ref(a: &Answer, phone: &str) -> anyhow::Result<MemberRef> {
    let id = a
        .str_field("member_id")
        .ok_or_else(|| anyhow!("enrolment answer without member_id"))?;
    let qr = a
        .str_field("qr_token")
        .ok_or_else(|| anyhow!("enrolment answer without qr_token"))?;
    Ok(MemberRef {
        phone: phone.to_owned(),
        id: id.to_owned(),
        qr: qr.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_order_independent() {
        let (ppu, bonus, cur, rewards) = read_program(&program()).expect("valid");
        assert_eq!((ppu, bonus, cur.as_str()), (1, 50, "EUR"));
        assert_eq!(rewards.len(), 2);
    }

    #[test]
    fn phones_are_e164() {
        assert_eq!(member_phone(42), "+33600000042");
    }
}
