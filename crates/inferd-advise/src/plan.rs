//! The decision: for one workload, which sizes meet its objective, how many replicas each needs
//! at the utilisation allowed, what that costs per hour and per million requests or tokens, and a
//! plain verdict.
//!
//! A size's capacity is the most throughput of its [`Estimate`]'s points that meet every bound
//! of the objective with under 1% errors. Replicas = max(minimum, ⌈demand ÷ (capacity ×
//! utilisation)⌉); $/h = replicas × the tier's price; $/1M = $/h ÷ (demand per second × 3600) ×
//! 10⁶.

use std::fmt;

use serde::Serialize;

use crate::capacity::{Estimate, estimate};
use crate::catalogue::Catalogue;
use crate::evidence::{Evidence, Kind, OperatingPoint};
use crate::load::summary::format_seconds;
use crate::workload::{Demand, Workload, WorkloadError, money, number};

/// How a size fares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "fit", content = "detail")]
pub enum Fit {
    /// Some operating point meets the objective.
    Meets,
    /// No operating point does.
    TooSlow,
    /// Its figures lack a measure the objective bounds (a published throughput has no latency,
    /// an answer that was not streamed no time to first token): whether it meets is not known.
    ThroughputOnly,
    /// Nothing speaks for it.
    NoEstimate,
    /// It has less memory (on the GPU, for GPU sizes) than the workload needs, GiB.
    TooLittleMemory(f64),
    /// The catalogue has no price for it in the chosen tier.
    NoPrice,
}

impl fmt::Display for Fit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Meets => f.write_str("meets"),
            Self::TooSlow => f.write_str("too slow"),
            Self::ThroughputOnly => f.write_str("no latency figure"),
            Self::NoEstimate => f.write_str("not measured"),
            Self::TooLittleMemory(gib) => write!(f, "{} GiB is too little", number(*gib)),
            Self::NoPrice => f.write_str("no price"),
        }
    }
}

/// One size, assessed for one workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeAssessment {
    /// Its name.
    pub size: String,
    /// Whether it has a GPU.
    pub gpu: bool,
    /// `4 vCPUs, AVX-512`, `T4`, `1/6 A10`.
    pub hardware: String,
    /// Its estimate, when something speaks for it.
    pub estimate: Option<Estimate>,
    /// How it fares.
    pub fit: Fit,
    /// Units per second one replica carries within the objective (or, for a throughput-only
    /// figure, at all).
    pub capacity: Option<f64>,
    /// The operating point that gives the capacity.
    pub at: Option<String>,
    /// Replicas needed.
    pub replicas: Option<u32>,
    /// Price of one replica per hour.
    pub price_per_hour: Option<f64>,
    /// All replicas, per hour.
    pub usd_per_hour: Option<f64>,
    /// Per million units at the demand.
    pub usd_per_million: Option<f64>,
}

/// The plain answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// A CPU size meets the objective.
    CpuIsEnough,
    /// No CPU size does; a GPU size does.
    GpuNeeded,
    /// No size meets it with the figures given.
    NothingMeets,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// The decision.
    pub decision: Decision,
    /// In words, first the answer, then what it rests on.
    pub text: String,
    /// The cheapest CPU size that meets, by index into [`Assessment::sizes`].
    pub best_cpu: Option<usize>,
    /// The cheapest GPU size that meets.
    pub best_gpu: Option<usize>,
}

/// A provisioned-throughput offer, costed for the demand.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProvisionedCost {
    /// Its name.
    pub name: String,
    /// Units to buy.
    pub units: u32,
    /// Per hour.
    pub usd_per_hour: f64,
    /// Per million tokens at the demand.
    pub usd_per_million: f64,
}

/// One workload, assessed on every size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    /// The workload.
    pub workload: Workload,
    /// What its model does.
    pub kind: Kind,
    /// Its load.
    pub demand: Demand,
    /// The objective in words.
    pub objective: String,
    /// Every size: those that meet first, cheapest first; then the others.
    pub sizes: Vec<SizeAssessment>,
    /// The answer.
    pub verdict: Verdict,
    /// The provisioned offer, when the workload gave one.
    pub provisioned: Option<ProvisionedCost>,
    /// The measurements it rests on.
    pub evidence: Vec<Evidence>,
}

/// Whether `point` meets the workload's bounds: `None` when it lacks a measure a bound needs.
pub fn point_fits(point: &OperatingPoint, workload: &Workload) -> Option<bool> {
    if point.error_rate >= 0.01 || !(point.throughput.is_finite() && point.throughput > 0.0) {
        return Some(false);
    }
    let mut known = true;
    for (bound, value) in
        [(workload.p95, point.latency_p95), (workload.ttft_p95, point.ttft_p95), (workload.itl_p95, point.itl_p95)]
    {
        let Some(bound) = bound else { continue };
        match value {
            Some(value) if value > bound.as_secs_f64() => return Some(false),
            Some(_) => {}
            None => known = false,
        }
    }
    known.then_some(true)
}

/// The objective in words: `P95 ≤ 50.0 ms`, `P95 ≤ 5.00 s, TTFT P95 ≤ 500.0 ms`.
pub fn objective(workload: &Workload) -> String {
    [("P95", workload.p95), ("TTFT P95", workload.ttft_p95), ("ITL P95", workload.itl_p95)]
        .into_iter()
        .filter_map(|(name, bound)| bound.map(|bound| format!("{name} ≤ {}", format_seconds(bound.as_secs_f64()))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The load in words: `400 requests/s`, `88,200 tokens/min`.
pub fn load_words(demand: &Demand) -> String {
    if demand.unit == "tokens" {
        format!("{} tokens/min", number(demand.per_second * 60.0))
    } else {
        format!("{} requests/s", number(demand.per_second))
    }
}

/// Works out how `size` fares from its estimate and price: its fit, capacity, replicas and
/// costs (a size with too little memory keeps that fit).
fn fit(size: &mut SizeAssessment, workload: &Workload, demand: &Demand) {
    if matches!(size.fit, Fit::TooLittleMemory(_)) {
        return;
    }
    (size.fit, size.capacity, size.at, size.replicas, size.usd_per_hour, size.usd_per_million) =
        (Fit::NoEstimate, None, None, None, None, None);
    let Some(estimate) = &size.estimate else { return };
    let best_where = |fits: Option<bool>| {
        estimate
            .points
            .iter()
            .filter(|point| point_fits(point, workload) == fits)
            .max_by(|a, b| a.throughput.total_cmp(&b.throughput))
    };
    match (best_where(Some(true)), best_where(None)) {
        (Some(best), _) => {
            size.capacity = Some(best.throughput);
            size.at = Some(best.label.clone());
            let Some(price) = size.price_per_hour else {
                size.fit = Fit::NoPrice;
                return;
            };
            let needed = (demand.per_second / (best.throughput * workload.utilisation)).ceil();
            let replicas = (needed.min(f64::from(u32::MAX)) as u32).max(workload.min_replicas);
            let per_hour = f64::from(replicas) * price;
            size.fit = Fit::Meets;
            size.replicas = Some(replicas);
            size.usd_per_hour = Some(per_hour);
            size.usd_per_million = Some(per_hour / (demand.per_second * 3600.0) * 1e6);
        }
        (None, Some(unknown)) => {
            size.fit = Fit::ThroughputOnly;
            size.capacity = Some(unknown.throughput);
            size.at = Some(unknown.label.clone());
        }
        (None, None) => size.fit = Fit::TooSlow,
    }
}

/// Assesses `workload` on every size of `catalogue` from `evidence` (all of its model).
pub fn assess(
    workload: &Workload,
    kind: Kind,
    catalogue: &Catalogue,
    evidence: Vec<Evidence>,
) -> Result<Assessment, WorkloadError> {
    workload.validate()?;
    let demand = workload.demand(kind == Kind::Generation)?;
    let mut sizes: Vec<SizeAssessment> = catalogue
        .sizes
        .iter()
        .map(|(name, size)| {
            let estimate = estimate(name, size, catalogue, &workload.model, kind, &evidence);
            let price_per_hour = size.price(workload.tier).map(|price| price.usd);
            let memory = if size.gpu.is_some() { size.gpu_memory_gib(catalogue) } else { Some(size.memory_gib) };
            let mut assessed = SizeAssessment {
                size: name.clone(),
                gpu: size.gpu.is_some(),
                hardware: size.hardware(),
                estimate: None,
                fit: Fit::NoEstimate,
                capacity: None,
                at: None,
                replicas: None,
                price_per_hour,
                usd_per_hour: None,
                usd_per_million: None,
            };
            assessed.estimate = estimate;
            if let (Some(need), Some(memory)) = (workload.memory_gib, memory)
                && memory < need
            {
                assessed.fit = Fit::TooLittleMemory(memory);
                return assessed;
            }
            fit(&mut assessed, workload, &demand);
            assessed
        })
        .collect();
    // Meets first, cheapest first; then by fit, then by name.
    let order = |fit: &Fit| match fit {
        Fit::Meets => 0,
        Fit::ThroughputOnly => 1,
        Fit::TooSlow => 2,
        Fit::NoPrice => 3,
        Fit::TooLittleMemory(_) => 4,
        Fit::NoEstimate => 5,
    };
    sizes.sort_by(|a, b| {
        order(&a.fit)
            .cmp(&order(&b.fit))
            .then(a.usd_per_hour.unwrap_or(f64::MAX).total_cmp(&b.usd_per_hour.unwrap_or(f64::MAX)))
            .then(a.size.cmp(&b.size))
    });
    let objective = objective(workload);
    let verdict = verdict(&sizes, &objective, &demand);
    let provisioned = workload.provisioned.as_ref().map(|offer| {
        let tpm = demand.per_second * 60.0;
        let units = ((tpm / offer.tokens_per_minute_per_unit).ceil() as u32).max(offer.minimum_units);
        let usd_per_hour = f64::from(units) * offer.usd_per_unit_hour;
        ProvisionedCost {
            name: offer.name.clone(),
            units,
            usd_per_hour,
            usd_per_million: usd_per_hour / (demand.per_second * 3600.0) * 1e6,
        }
    });
    Ok(Assessment { workload: workload.clone(), kind, demand, objective, sizes, verdict, provisioned, evidence })
}

/// A size that meets, in a verdict: `Standard_D2as_v6 (2 vCPUs, AVX-512) meets P95 ≤ 50.0 ms at
/// 400 requests/s with 2 replicas for $0.19 per million requests ($0.18/h). Projected from ...`.
fn offer(size: &SizeAssessment, objective: &str, load: &str, unit: &str) -> String {
    let basis = size.estimate.as_ref().map_or(String::new(), |estimate| {
        let mut how = estimate.how.clone();
        if let Some(first) = how.get(..1) {
            how.replace_range(..1, &first.to_uppercase());
        }
        format!(" {how}.")
    });
    format!(
        "{} ({}) meets {objective} at {load} with {} replica{} for {} per million {unit} ({}/h).{basis}",
        size.size,
        size.hardware,
        size.replicas.unwrap_or(0),
        if size.replicas == Some(1) { "" } else { "s" },
        money(size.usd_per_million.unwrap_or(0.0)),
        money(size.usd_per_hour.unwrap_or(0.0)),
    )
}

fn verdict(sizes: &[SizeAssessment], objective: &str, demand: &Demand) -> Verdict {
    let best = |gpu: bool| sizes.iter().position(|size| size.fit == Fit::Meets && size.gpu == gpu);
    let (best_cpu, best_gpu) = (best(false), best(true));
    let unit = demand.unit;
    let load = load_words(demand);
    let gpu_figures = sizes.iter().any(|size| size.gpu && size.estimate.is_some());
    let cpu_figures = sizes.iter().any(|size| !size.gpu && size.estimate.is_some());
    let throughput_only = sizes.iter().any(|size| size.gpu && size.fit == Fit::ThroughputOnly);
    let (decision, mut text) = match (best_cpu, best_gpu) {
        (Some(cpu), gpu) => {
            let mut text = format!("CPU is enough: {}", offer(&sizes[cpu], objective, &load, unit));
            if let Some(gpu) = gpu
                && sizes[gpu].usd_per_hour < sizes[cpu].usd_per_hour
            {
                text.push_str(&format!(" A GPU would cost less: {}", offer(&sizes[gpu], objective, &load, unit)));
            }
            (Decision::CpuIsEnough, text)
        }
        (None, Some(gpu)) if cpu_figures => (
            Decision::GpuNeeded,
            format!(
                "GPU needed: no CPU size meets {objective} at {load}; {}",
                offer(&sizes[gpu], objective, &load, unit)
            ),
        ),
        (None, Some(gpu)) => (
            Decision::GpuNeeded,
            format!(
                "GPU needed as far as measured: CPU sizes were not assessed (nothing was measured on a CPU); {}",
                offer(&sizes[gpu], objective, &load, unit)
            ),
        ),
        (None, None) => {
            (Decision::NothingMeets, format!("No listed size meets {objective} at {load} with the figures given."))
        }
    };
    if best_gpu.is_none() {
        if throughput_only {
            text.push_str(
                " GPU sizes have published throughput figures but no latency: measure on one to check the objective.",
            );
        } else if !gpu_figures {
            text.push_str(
                " GPU sizes were not assessed: nothing was measured on a GPU (run `cargo bench --features cuda` on one, \
                 or `inferd bench --measured-on <size>` against a server on one).",
            );
        }
    }
    Verdict { decision, text, best_cpu, best_gpu }
}

/// A P95 bound with the cheapest CPU and GPU cost per million that meet it.
pub type CostPoint = (f64, Option<f64>, Option<f64>);

/// The cheapest $/1M of a CPU size and of a GPU size that meet P95 ≤ each of `bounds` (the
/// workload's other bounds kept), for the report's cost-against-objective chart: the sizes'
/// estimates are the assessment's, only their fit is worked out again.
pub fn cost_against_p95(assessment: &Assessment, bounds: &[f64]) -> Vec<CostPoint> {
    bounds
        .iter()
        .map(|&bound| {
            let mut workload = assessment.workload.clone();
            workload.p95 = Some(std::time::Duration::from_secs_f64(bound));
            let mut cheapest = (None, None);
            for size in &assessment.sizes {
                let mut size = size.clone();
                fit(&mut size, &workload, &assessment.demand);
                let slot = if size.gpu { &mut cheapest.1 } else { &mut cheapest.0 };
                if let Some(cost) = size.usd_per_million.filter(|_| size.fit == Fit::Meets) {
                    *slot = Some(slot.map_or(cost, |best: f64| best.min(cost)));
                }
            }
            (bound, cheapest.0, cheapest.1)
        })
        .collect()
}
