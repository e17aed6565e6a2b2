//! What a user needs of a model: its service-level objective (P95 latency, and for generation
//! time to first token and inter-token latency), the load it must carry, and how to size for it
//! (headroom, minimum replicas, memory, the pricing tier, a provisioned-throughput offer to
//! compare with). Read from a TOML file of `[[workloads]]`, or built from `inferd advise`'s
//! flags for one model.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::catalogue::Tier;

/// A provisioned-throughput offer to compare with (a managed endpoint sold by capacity units,
/// such as Azure OpenAI's provisioned throughput units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provisioned {
    /// What it is called in the report.
    pub name: String,
    /// Tokens per minute one unit carries.
    pub tokens_per_minute_per_unit: f64,
    /// Price of one unit per hour.
    pub usd_per_unit_hour: f64,
    /// Units sold at least.
    #[serde(default = "one")]
    pub minimum_units: u32,
}

fn one() -> u32 {
    1
}

/// One model's requirements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// The model, as the benchmarks and load tests name it.
    pub model: String,
    /// 95th-percentile latency of a whole request.
    #[serde(default, with = "humantime_serde")]
    pub p95: Option<Duration>,
    /// 95th-percentile time to first token (generation).
    #[serde(default, with = "humantime_serde")]
    pub ttft_p95: Option<Duration>,
    /// 95th-percentile inter-token latency (generation).
    #[serde(default, with = "humantime_serde")]
    pub itl_p95: Option<Duration>,
    /// Requests per second to carry (tabular and embedding models; generation may give it too).
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Requests per minute (generation): with the token counts, the tokens per minute to carry.
    #[serde(default)]
    pub requests_per_minute: Option<f64>,
    /// Tokens per minute to carry (generation), prompt and completion together.
    #[serde(default)]
    pub tokens_per_minute: Option<f64>,
    /// Prompt tokens per request (generation; embeddings: tokens per text).
    #[serde(default)]
    pub prompt_tokens: Option<f64>,
    /// Completion tokens per request (generation).
    #[serde(default)]
    pub completion_tokens: Option<f64>,
    /// Share of requests sent again after a failure or timeout: the load is the requests (or
    /// the TPM formula's tokens) × (1 + retry rate). Not applied to a `tokens_per_minute` given
    /// outright, which is taken as the whole load.
    #[serde(default)]
    pub retry_rate: f64,
    /// Rows (tabular) or texts (embeddings) per request.
    #[serde(default = "one_f64")]
    pub rows_per_request: f64,
    /// The busiest share of its capacity a replica may run at (0.7: 30% headroom).
    #[serde(default = "default_headroom")]
    pub utilisation: f64,
    /// Replicas at least (2 for a service that must survive losing one).
    #[serde(default = "one")]
    pub min_replicas: u32,
    /// Memory the model needs on its device, GiB: sizes with less are left out.
    #[serde(default)]
    pub memory_gib: Option<f64>,
    /// The pricing tier.
    #[serde(default = "default_tier")]
    pub tier: Tier,
    /// A provisioned-throughput offer to compare with.
    #[serde(default)]
    pub provisioned: Option<Provisioned>,
}

fn one_f64() -> f64 {
    1.0
}

fn default_headroom() -> f64 {
    0.7
}

fn default_tier() -> Tier {
    Tier::Payg
}

/// A workloads file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadsFile {
    /// The workloads.
    pub workloads: Vec<Workload>,
}

/// What a workload's load comes to, in the unit its capacity is counted in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    /// Units per second: requests (tabular, embeddings) or tokens (generation).
    pub per_second: f64,
    /// `requests` or `tokens`.
    pub unit: &'static str,
    /// How it was computed, for the report (`TPM = 120 RPM × (500 + 200) × 1.05 = 88,200`);
    /// empty when it is the figure the workload gave.
    pub formula: String,
}

/// Why a workload cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The file cannot be read or parsed.
    #[error("workloads file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A workload lacks something or contradicts itself.
    #[error("workload '{model}': {reason}")]
    Invalid {
        /// Its model.
        model: String,
        /// What is wrong.
        reason: String,
    },
}

impl Workload {
    /// A workload with every optional field unset and the defaults (70% utilisation, one
    /// replica at least, pay-as-you-go).
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_string(),
            p95: None,
            ttft_p95: None,
            itl_p95: None,
            requests_per_second: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            prompt_tokens: None,
            completion_tokens: None,
            retry_rate: 0.0,
            rows_per_request: 1.0,
            utilisation: default_headroom(),
            min_replicas: 1,
            memory_gib: None,
            tier: Tier::Payg,
            provisioned: None,
        }
    }

    /// Reads a workloads file.
    pub fn load_file(path: &Path) -> Result<Vec<Self>, WorkloadError> {
        let failed = |reason: String| WorkloadError::File { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|err| failed(err.to_string()))?;
        let file: WorkloadsFile = toml::from_str(&text).map_err(|err| failed(err.to_string()))?;
        for workload in &file.workloads {
            workload.validate()?;
        }
        Ok(file.workloads)
    }

    /// Checks the bounds and figures that every workload needs.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        let invalid = |reason: &str| WorkloadError::Invalid { model: self.model.clone(), reason: reason.to_string() };
        if self.p95.is_none() && self.ttft_p95.is_none() && self.itl_p95.is_none() {
            return Err(invalid("give a latency objective: p95 (and for generation ttft_p95, itl_p95)"));
        }
        if !(self.utilisation > 0.0 && self.utilisation <= 1.0) {
            return Err(invalid("utilisation must be in (0, 1]"));
        }
        if !(self.retry_rate >= 0.0 && self.retry_rate.is_finite() && self.rows_per_request >= 1.0) {
            return Err(invalid("retry_rate must be 0 or more and rows_per_request at least 1"));
        }
        let figures = [
            self.requests_per_second,
            self.requests_per_minute,
            self.tokens_per_minute,
            self.prompt_tokens,
            self.completion_tokens,
            self.memory_gib,
        ];
        if figures.into_iter().flatten().any(|value| !(value.is_finite() && value > 0.0)) {
            return Err(invalid("rates, token counts and memory must be positive"));
        }
        if let Some(offer) = &self.provisioned {
            let figures = [offer.tokens_per_minute_per_unit, offer.usd_per_unit_hour];
            if !(offer.tokens_per_minute_per_unit > 0.0 && offer.usd_per_unit_hour >= 0.0)
                || figures.iter().any(|figure| !figure.is_finite())
            {
                return Err(invalid("the provisioned offer needs tokens_per_minute_per_unit > 0 and a price ≥ 0"));
            }
            if self.tokens_per_request().is_none() && self.tokens_per_minute.is_none() {
                return Err(invalid("a provisioned offer is in tokens: it compares with generation workloads only"));
            }
        }
        if self.requests_per_second.is_none() && self.requests_per_minute.is_none() && self.tokens_per_minute.is_none()
        {
            return Err(invalid(
                "give the load: requests_per_second, or for generation requests_per_minute (with prompt_tokens and \
                 completion_tokens) or tokens_per_minute",
            ));
        }
        Ok(())
    }

    /// Prompt and completion tokens per request, when both are known.
    pub fn tokens_per_request(&self) -> Option<(f64, f64)> {
        Some((self.prompt_tokens?, self.completion_tokens?))
    }

    /// The load in the unit capacity is counted in: requests per second for tabular and
    /// embedding models, tokens per second (prompt and completion) for generation, where
    /// TPM = RPM × (prompt + completion tokens) × (1 + retry rate).
    pub fn demand(&self, generates: bool) -> Result<Demand, WorkloadError> {
        let invalid = |reason: &str| WorkloadError::Invalid { model: self.model.clone(), reason: reason.to_string() };
        let retries = 1.0 + self.retry_rate;
        if !generates {
            let rps = match (self.requests_per_second, self.requests_per_minute) {
                (Some(rps), _) => rps,
                (None, Some(rpm)) => rpm / 60.0,
                (None, None) => return Err(invalid("give requests_per_second for a model that does not generate")),
            };
            return Ok(Demand {
                per_second: rps * retries,
                unit: "requests",
                formula: if self.retry_rate > 0.0 {
                    format!(
                        "{} req/s × (1 + {} retries) = {} req/s",
                        number(rps),
                        self.retry_rate,
                        number(rps * retries)
                    )
                } else {
                    String::new()
                },
            });
        }
        if let Some(tpm) = self.tokens_per_minute {
            return Ok(Demand { per_second: tpm / 60.0, unit: "tokens", formula: String::new() });
        }
        let rpm = self.requests_per_minute.or(self.requests_per_second.map(|rps| rps * 60.0));
        let (Some(rpm), Some((prompt, completion))) = (rpm, self.tokens_per_request()) else {
            return Err(invalid(
                "for generation give tokens_per_minute, or requests_per_minute with prompt_tokens and completion_tokens",
            ));
        };
        let tpm = rpm * (prompt + completion) * retries;
        Ok(Demand {
            per_second: tpm / 60.0,
            unit: "tokens",
            formula: format!(
                "TPM = {} RPM × ({} + {} tokens) × (1 + {}) = {} tokens per minute",
                number(rpm),
                number(prompt),
                number(completion),
                self.retry_rate,
                number(tpm)
            ),
        })
    }
}

/// An amount of money for people: `$1,234`, `$0.42`, `$0.0223`.
pub fn money(usd: f64) -> String {
    if usd >= 100.0 {
        format!("${}", number(usd))
    } else if usd >= 0.1 {
        format!("${usd:.2}")
    } else {
        format!("${usd:.4}")
    }
}

/// A figure for people: `88,200`, `12.5`, `0.42`.
pub fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        let rounded = value.round() as i64;
        let digits = rounded.abs().to_string();
        let mut grouped = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        if rounded < 0 { format!("-{grouped}") } else { grouped }
    } else if value.abs() >= 10.0 {
        if value.fract() == 0.0 { format!("{value:.0}") } else { format!("{value:.1}") }
    } else if value == 0.0 || !value.is_finite() {
        format!("{value}")
    } else {
        // Three significant digits, trailing zeros dropped.
        let decimals = (2 - value.abs().log10().floor() as i32).max(0) as usize;
        let text = format!("{value:.decimals$}");
        if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_string() } else { text }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tpm_formula() {
        let mut llm = Workload::new("llm");
        llm.p95 = Some(Duration::from_secs(5));
        llm.requests_per_minute = Some(120.0);
        llm.prompt_tokens = Some(500.0);
        llm.completion_tokens = Some(200.0);
        llm.retry_rate = 0.05;
        llm.validate().unwrap();
        let demand = llm.demand(true).unwrap();
        assert!((demand.per_second - 120.0 * 700.0 * 1.05 / 60.0).abs() < 1e-9);
        assert_eq!(demand.unit, "tokens");
        assert_eq!(demand.formula, "TPM = 120 RPM × (500 + 200 tokens) × (1 + 0.05) = 88,200 tokens per minute");
        llm.tokens_per_minute = Some(60_000.0);
        assert_eq!(llm.demand(true).unwrap().per_second, 1000.0);
    }

    #[test]
    fn requests_and_checks() {
        let mut tabular = Workload::new("trees");
        assert!(tabular.validate().unwrap_err().to_string().contains("latency objective"));
        tabular.p95 = Some(Duration::from_millis(50));
        assert!(tabular.validate().unwrap_err().to_string().contains("give the load"));
        tabular.requests_per_second = Some(400.0);
        tabular.validate().unwrap();
        assert_eq!(tabular.demand(false).unwrap().per_second, 400.0);
        tabular.utilisation = 1.5;
        assert!(tabular.validate().is_err());
        let mut generation = Workload::new("llm");
        generation.p95 = Some(Duration::from_secs(1));
        generation.requests_per_minute = Some(10.0);
        assert!(generation.demand(true).unwrap_err().to_string().contains("prompt_tokens"));
    }

    #[test]
    fn files_and_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(
            &path,
            "[[workloads]]\nmodel = \"m\"\np95 = \"50ms\"\nrequests_per_second = 400\nmin_replicas = 2\ntier = \"spot\"\n",
        )
        .unwrap();
        let workloads = Workload::load_file(&path).unwrap();
        assert_eq!(workloads[0].p95, Some(Duration::from_millis(50)));
        assert_eq!(workloads[0].tier, Tier::Spot);
        assert_eq!(workloads[0].min_replicas, 2);
        std::fs::write(&path, "[[workloads]]\nmodel = \"m\"\np59 = \"50ms\"\n").unwrap();
        assert!(Workload::load_file(&path).is_err());
        assert_eq!(number(88_200.0), "88,200");
        assert_eq!(number(1_234_567.4), "1,234,567");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(0.4249), "0.425");
        assert_eq!(number(0.05), "0.05");
        assert_eq!(number(0.013888), "0.0139");
        assert_eq!(number(1.5), "1.5");
    }
}
