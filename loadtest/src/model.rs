//! The traffic model: the checkout mix, Zipf member popularity, durations.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail};
use rand::Rng;
use serde::Serialize;

/// The operations of a checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Look the member up by phone or QR token.
    Identify,
    /// Read the member's status by id.
    Status,
    /// A purchase, with `wait_ms`.
    Purchase,
    /// A reward redemption.
    Redeem,
    /// A new member enrols.
    Enrol,
}

impl Op {
    pub const ALL: [Op; 5] = [
        Op::Identify,
        Op::Status,
        Op::Purchase,
        Op::Redeem,
        Op::Enrol,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Identify => "identify",
            Op::Status => "status",
            Op::Purchase => "purchase",
            Op::Redeem => "redeem",
            Op::Enrol => "enrol",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Weights of each operation, e.g. `identify=45,status=20,purchase=25,redeem=5,enrol=5`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mix {
    pub weights: [u32; 5],
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            weights: [45, 20, 25, 5, 5],
        }
    }
}

impl FromStr for Mix {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut weights = [0u32; 5];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part
                .split_once('=')
                .ok_or_else(|| anyhow!("mix entry `{part}` is not op=weight"))?;
            let op = Op::ALL
                .into_iter()
                .find(|o| o.name() == name.trim())
                .ok_or_else(|| {
                    anyhow!("unknown op `{name}` (identify, status, purchase, redeem, enrol)")
                })?;
            weights[op.index()] = w
                .trim()
                .parse()
                .map_err(|_| anyhow!("weight of `{name}` is not a whole number"))?;
        }
        if weights.iter().all(|&w| w == 0) {
            bail!("the mix has no operation with a positive weight");
        }
        Ok(Mix { weights })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Op::ALL
            .iter()
            .map(|o| format!("{}={}", o.name(), self.weights[o.index()]))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Mix {
    /// Draws an operation with probability proportional to its weight.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> Op {
        let total: u32 = self.weights.iter().sum();
        let mut x = rng.random_range(0..total.max(1));
        for op in Op::ALL {
            let w = self.weights[op.index()];
            if x < w {
                return op;
            }
            x -= w;
        }
        Op::Status
    }
}

/// Zipf(s) over ranks `0..n` (rank 0 the most popular), by inverse transform over a
/// precomputed cumulative distribution: O(n) memory, O(log n) per draw.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> anyhow::Result<Self> {
        if n == 0 {
            bail!("Zipf over no member");
        }
        if !(s.is_finite() && s >= 0.0) {
            bail!("the Zipf exponent must be a finite number ≥ 0, got {s}");
        }
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 1..=n {
            acc += 1.0 / (k as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Ok(Zipf { cdf })
    }

    pub fn sample<R: Rng>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow!("`{s}` is not a duration (e.g. 500ms, 10s, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => bail!("unknown duration unit `{u}` (ms, s, m, h)"),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        bail!("`{s}` is not a duration");
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn mix_parses_and_prints() {
        let m: Mix = "identify=45,status=20,purchase=25,redeem=5,enrol=5"
            .parse()
            .expect("mix");
        assert_eq!(m, Mix::default());
        assert_eq!(
            m.to_string(),
            "identify=45,status=20,purchase=25,redeem=5,enrol=5"
        );
        let p: Mix = "purchase=1".parse().expect("mix");
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..100).all(|_| p.sample(&mut rng) == Op::Purchase));
        assert!("purchase=0".parse::<Mix>().is_err());
        assert!("buy=3".parse::<Mix>().is_err());
    }

    #[test]
    fn zipf_is_skewed() {
        let z = Zipf::new(1000, 1.0).expect("zipf");
        let mut rng = SmallRng::seed_from_u64(7);
        let mut hits = vec![0u32; 1000];
        for _ in 0..100_000 {
            hits[z.sample(&mut rng)] += 1;
        }
        // P(rank 0) = 1/H(1000) ≈ 0.1336.
        assert!((12_000..15_000).contains(&hits[0]), "{}", hits[0]);
        assert!(hits[0] > hits[1] && hits[1] > hits[9]);
        let u = Zipf::new(10, 0.0).expect("uniform");
        let mut c = [0u32; 10];
        for _ in 0..10_000 {
            c[u.sample(&mut rng)] += 1;
        }
        assert!(c.iter().all(|&x| (800..1200).contains(&x)));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").expect("d"), Duration::from_secs(10));
        assert_eq!(
            parse_duration("250ms").expect("d"),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("2m").expect("d"), Duration::from_secs(120));
        assert_eq!(parse_duration("3").expect("d"), Duration::from_secs(3));
        assert!(parse_duration("3 parsecs").is_err());
    }
}
