//! Load profiles, named as GuideLLM names them: `synchronous` (one request at a time),
//! `concurrent` (closed loops at several concurrencies), `constant` and `poisson` (open loops at
//! request rates), and `sweep` (synchronous, then the most the server takes, then rates between).

use std::fmt;

use serde::{Deserialize, Serialize};

/// How requests are offered in one point of a load test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "loop")]
pub enum Load {
    /// `concurrency` clients, each sending its next request when its last one is answered.
    Closed {
        /// Clients.
        concurrency: usize,
    },
    /// Requests sent at a rate whatever the answers, evenly spaced or as a Poisson process.
    Open {
        /// Requests per second.
        rate: f64,
        /// Exponential gaps between requests (a Poisson process) instead of even ones.
        poisson: bool,
    },
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed { concurrency } => write!(f, "concurrency {concurrency}"),
            Self::Open { rate, poisson: false } => write!(f, "{} req/s constant", round(*rate)),
            Self::Open { rate, poisson: true } => write!(f, "{} req/s poisson", round(*rate)),
        }
    }
}

/// A rate rounded for people (3 significant digits).
fn round(rate: f64) -> String {
    if rate >= 100.0 {
        format!("{rate:.0}")
    } else if rate >= 10.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.2}")
    }
}

/// A load profile: which points to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Profile {
    /// One request at a time.
    Synchronous,
    /// A closed loop at each concurrency.
    Concurrent(Vec<usize>),
    /// An open loop at each rate, evenly spaced requests.
    Constant(Vec<f64>),
    /// An open loop at each rate, exponential gaps.
    Poisson(Vec<f64>),
    /// Synchronous; then a closed loop at `max_concurrency` (the "throughput" point) for the most
    /// the server answers; then `rates` constant-rate points evenly between the two rates.
    Sweep {
        /// Constant-rate points between the synchronous and the throughput rate.
        rates: usize,
        /// Clients of the throughput point.
        max_concurrency: usize,
    },
}

impl Profile {
    /// The profile named `name` with the given concurrencies and rates (each used where its
    /// profile needs it; a missing one is an error that says which flag to give).
    pub fn new(
        name: &str,
        concurrencies: &[usize],
        rates: &[f64],
        sweep_rates: usize,
        max_concurrency: usize,
    ) -> Result<Self, String> {
        let positive_rates = || {
            if rates.is_empty() {
                Err(format!("the {name} profile needs --rate (requests per second, e.g. --rate 5,10,20)"))
            } else if rates.iter().any(|rate| !(rate.is_finite() && *rate > 0.0)) {
                Err("rates must be positive".to_string())
            } else {
                Ok(rates.to_vec())
            }
        };
        match name {
            "synchronous" => Ok(Self::Synchronous),
            "concurrent" => {
                if concurrencies.is_empty() || concurrencies.contains(&0) {
                    Err("the concurrent profile needs --concurrency, each at least 1 (e.g. --concurrency 1,4,16)"
                        .to_string())
                } else {
                    Ok(Self::Concurrent(concurrencies.to_vec()))
                }
            }
            "constant" => positive_rates().map(Self::Constant),
            "poisson" => positive_rates().map(Self::Poisson),
            "sweep" => {
                if max_concurrency == 0 {
                    Err("--max-concurrency must be at least 1".to_string())
                } else {
                    Ok(Self::Sweep { rates: sweep_rates, max_concurrency })
                }
            }
            other => {
                Err(format!("unknown profile '{other}': expected synchronous, concurrent, constant, poisson or sweep"))
            }
        }
    }

    /// The points to run before any result is known (a sweep's rates come later, from
    /// [`sweep_rates`]).
    pub fn initial_points(&self) -> Vec<(&'static str, Load)> {
        match self {
            Self::Synchronous => vec![("synchronous", Load::Closed { concurrency: 1 })],
            Self::Concurrent(concurrencies) => {
                concurrencies.iter().map(|&concurrency| ("concurrent", Load::Closed { concurrency })).collect()
            }
            Self::Constant(rates) => {
                rates.iter().map(|&rate| ("constant", Load::Open { rate, poisson: false })).collect()
            }
            Self::Poisson(rates) => rates.iter().map(|&rate| ("poisson", Load::Open { rate, poisson: true })).collect(),
            Self::Sweep { max_concurrency, .. } => vec![
                ("synchronous", Load::Closed { concurrency: 1 }),
                ("throughput", Load::Closed { concurrency: *max_concurrency }),
            ],
        }
    }
}

/// A sweep's constant rates: `count` rates evenly spaced strictly between the synchronous rate
/// and the throughput rate (none when the throughput rate is not above the synchronous one).
pub fn sweep_rates(synchronous: f64, throughput: f64, count: usize) -> Vec<f64> {
    if !(throughput > synchronous && synchronous >= 0.0) {
        return Vec::new();
    }
    (1..=count).map(|i| synchronous + (throughput - synchronous) * i as f64 / (count + 1) as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_need_their_flags() {
        assert_eq!(Profile::new("synchronous", &[], &[], 0, 1).unwrap(), Profile::Synchronous);
        assert!(Profile::new("concurrent", &[], &[], 0, 1).unwrap_err().contains("--concurrency"));
        assert!(Profile::new("constant", &[4], &[], 0, 1).unwrap_err().contains("--rate"));
        assert!(Profile::new("poisson", &[], &[0.0], 0, 1).is_err());
        assert!(Profile::new("ramp", &[], &[], 0, 1).unwrap_err().contains("unknown profile"));
        let concurrent = Profile::new("concurrent", &[1, 8], &[], 0, 1).unwrap();
        assert_eq!(concurrent.initial_points().len(), 2);
        let sweep = Profile::new("sweep", &[], &[], 3, 32).unwrap();
        assert_eq!(sweep.initial_points()[1], ("throughput", Load::Closed { concurrency: 32 }));
    }

    #[test]
    fn sweep_rates_lie_strictly_between() {
        assert_eq!(sweep_rates(10.0, 50.0, 3), vec![20.0, 30.0, 40.0]);
        assert!(sweep_rates(50.0, 40.0, 3).is_empty());
        assert_eq!(Load::Open { rate: 12.345, poisson: true }.to_string(), "12.3 req/s poisson");
    }
}
