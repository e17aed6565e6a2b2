//! The report `inferd advise` writes: the verdict for each workload at the top, then per
//! workload every size with its fit, capacity, replicas and costs, where each figure comes from
//! (measured, published or projected, and how), the measured operating points, and the scaling
//! model. As Markdown, and as one self-contained HTML page with charts (inline SVG, no network
//! at view time).

pub mod charts;
mod html;
mod markdown;

use serde::Serialize;

use crate::catalogue::Catalogue;
use crate::plan::{Assessment, cost_against_p95};

pub use html::html;
pub use markdown::markdown;

/// What the report says about how estimates are made, shown in both formats.
pub const SCALING_MODEL: &[&str] = &[
    "Capacity per replica is the most throughput, among the measured (or modelled) operating points, that meets every \
     bound of the objective with under 1% errors. Replicas = max(minimum, ⌈demand ÷ (capacity × utilisation)⌉); \
     $/h = replicas × price; $/1M = $/h ÷ (demand per second × 3600) × 10⁶.",
    "`inferd bench` figures are end to end (HTTP, queueing, batching). `cargo bench` figures are compute only: a \
     batch of b taking t(b) gives b/t(b) per second at a P95 latency of about 2 × t(b); generation is modelled from \
     the prefill and decode-step times (cycle = C × step + streams × prefill; latency ≈ cycle; TTFT ≈ prefill + \
     step; ITL ≈ step + (streams − 1) × prefill ÷ C).",
    "CPU sizes: measured on that size, else projected from a CPU measurement by vCPUs (throughput per vCPU × the \
     size's vCPUs, latency as measured), preferring end-to-end figures and the same instruction set family; a \
     projection across AVX2 and AVX-512 is flagged.",
    "GPU sizes: measured on that size, else projected from the same GPU model by the share of it the size gets \
     (NVadsA10 v5 sells 1/6, 1/3 and 1/2 of an A10), else a figure published for that GPU and model (other \
     software's, with its source), else projected from another GPU by min(FLOPS ratio, bandwidth ratio): \
     throughput × ratio, latency ÷ ratio.",
];

/// A report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it was made (RFC 3339).
    pub generated: String,
    /// The catalogue's region and currency.
    pub region: String,
    /// The currency.
    pub currency: String,
    /// The measurements it rests on, one line each.
    pub measurements: Vec<String>,
    /// Measurements left out, and why.
    pub skipped: Vec<String>,
    /// The price sources used, one line each.
    pub price_sources: Vec<String>,
    /// One per workload.
    pub assessments: Vec<Assessment>,
    /// Per workload: (P95 bound, cheapest CPU $/1M, cheapest GPU $/1M).
    pub cost_curves: Vec<Vec<crate::plan::CostPoint>>,
}

impl Report {
    /// A report of `assessments`, with the cost-against-objective curves computed.
    pub fn new(
        generated: String,
        catalogue: &Catalogue,
        measurements: Vec<String>,
        skipped: Vec<String>,
        assessments: Vec<Assessment>,
    ) -> Self {
        let cost_curves = assessments.iter().map(cost_curve).collect();
        // The sources of the prices the assessments used: their sizes' prices in their tiers.
        let mut used: Vec<&String> = assessments
            .iter()
            .flat_map(|assessment| {
                assessment.sizes.iter().filter(|size| size.usd_per_hour.is_some()).filter_map(|size| {
                    catalogue.sizes.get(&size.size)?.price(assessment.workload.tier).map(|price| &price.source)
                })
            })
            .collect();
        used.sort();
        used.dedup();
        let price_sources = used
            .into_iter()
            .filter_map(|key| catalogue.sources.get(key))
            .map(|source| format!("{} ({}, {})", source.what, source.url, source.date))
            .collect();
        Self {
            generated,
            region: catalogue.region.clone(),
            currency: catalogue.currency.clone(),
            measurements,
            skipped,
            price_sources,
            assessments,
            cost_curves,
        }
    }
}

/// $/1M against the P95 bound, over bounds spread (evenly in log scale) from half the fastest
/// point's latency to twice the slowest's.
fn cost_curve(assessment: &Assessment) -> Vec<crate::plan::CostPoint> {
    let latencies: Vec<f64> = assessment
        .sizes
        .iter()
        .filter_map(|size| size.estimate.as_ref())
        .flat_map(|estimate| estimate.points.iter().filter_map(|point| point.latency_p95))
        .filter(|latency| *latency > 0.0)
        .collect();
    let (Some(low), Some(high)) =
        (latencies.iter().copied().reduce(f64::min), latencies.iter().copied().reduce(f64::max))
    else {
        return Vec::new();
    };
    let (low, high) = (low / 2.0, high * 2.0);
    let steps = 24;
    let bounds: Vec<f64> = (0..=steps).map(|i| low * (high / low).powf(f64::from(i) / f64::from(steps))).collect();
    cost_against_p95(assessment, &bounds)
}

/// A table: its header and rows of cells, shared by both formats.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// Rows.
    pub rows: Vec<Vec<String>>,
}

fn dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_string())
}

/// Every size of an assessment: fit, capacity, basis, replicas and costs.
pub fn sizes_table(assessment: &Assessment) -> Table {
    let unit = assessment.demand.unit;
    let per = if unit == "tokens" { "tokens/s" } else { "req/s" };
    let header = [
        "size",
        "hardware",
        "fit",
        &format!("{per} per replica"),
        "at",
        "basis",
        "replicas",
        "$/h",
        &format!("$ per 1M {unit}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows = assessment
        .sizes
        .iter()
        .map(|size| {
            let basis = size.estimate.as_ref().map(|estimate| {
                let evidence = estimate.evidence.map_or(String::new(), |index| format!(" [m{}]", index + 1));
                format!("{} {}{evidence}", estimate.basis, estimate.scaling)
            });
            vec![
                size.size.clone(),
                size.hardware.clone(),
                size.fit.to_string(),
                dash(size.capacity.map(crate::workload::number)),
                dash(size.at.clone()),
                dash(basis),
                dash(size.replicas.map(|r| r.to_string())),
                dash(size.usd_per_hour.map(|usd| format!("{usd:.3}"))),
                dash(size.usd_per_million.map(|usd| format!("{usd:.4}"))),
            ]
        })
        .collect();
    Table { header, rows }
}

/// One measurement's operating points.
pub fn points_table(evidence: &crate::evidence::Evidence) -> Table {
    let per = if evidence.kind.unit() == "tokens" { "tokens/s" } else { "req/s" };
    let seconds = |value: Option<f64>| dash(value.map(crate::load::summary::format_seconds));
    Table {
        header: ["operating point", per, "P95", "TTFT P95", "ITL P95", "errors"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        rows: evidence
            .points
            .iter()
            .map(|point| {
                vec![
                    point.label.clone(),
                    crate::workload::number(point.throughput),
                    seconds(point.latency_p95),
                    seconds(point.ttft_p95),
                    seconds(point.itl_p95),
                    format!("{:.1}%", point.error_rate * 100.0),
                ]
            })
            .collect(),
    }
}

/// A measurement's heading: `m1: 2 vCPUs of AMD EPYC (AVX-512), end to end, inferd bench against ...`.
pub fn evidence_heading(index: usize, evidence: &crate::evidence::Evidence) -> String {
    let variant = evidence.variant.as_ref().map_or(String::new(), |variant| format!(" ({variant})"));
    format!("m{}: {}{variant}, {}, {}", index + 1, evidence.machine, evidence.method, evidence.source)
}

/// The workload's sizing terms in a sentence.
pub fn terms(assessment: &Assessment) -> String {
    let workload = &assessment.workload;
    let rows = if workload.rows_per_request > 1.0 {
        format!(", {} rows per request", crate::workload::number(workload.rows_per_request))
    } else {
        String::new()
    };
    let formula =
        if assessment.demand.formula.is_empty() { String::new() } else { format!(" ({})", assessment.demand.formula) };
    format!(
        "{} at {}{formula}{rows}; replicas at most {:.0}% busy, at least {}; {} prices",
        assessment.objective,
        crate::plan::load_words(&assessment.demand),
        workload.utilisation * 100.0,
        workload.min_replicas,
        workload.tier
    )
}

/// The provisioned-throughput comparison in a sentence, when the workload gave an offer.
pub fn provisioned_words(assessment: &Assessment) -> Option<String> {
    let offer = assessment.provisioned.as_ref()?;
    let best = [assessment.verdict.best_cpu, assessment.verdict.best_gpu]
        .into_iter()
        .flatten()
        .filter_map(|index| assessment.sizes.get(index))
        .min_by(|a, b| a.usd_per_hour.unwrap_or(f64::MAX).total_cmp(&b.usd_per_hour.unwrap_or(f64::MAX)));
    let money = crate::workload::money;
    let versus = best.map_or(String::new(), |size| {
        format!(
            "; inferd on {}: {}/h, {} per million tokens",
            size.size,
            money(size.usd_per_hour.unwrap_or(0.0)),
            money(size.usd_per_million.unwrap_or(0.0))
        )
    });
    Some(format!(
        "{}: {} unit{} for {}/h, {} per million tokens{versus}",
        offer.name,
        offer.units,
        if offer.units == 1 { "" } else { "s" },
        money(offer.usd_per_hour),
        money(offer.usd_per_million)
    ))
}

/// The estimates' caveats that are not already a measurement's note (partial GPUs, instruction
/// set mismatches, published figures' sources), each once.
pub fn caveats(assessment: &Assessment) -> Vec<String> {
    let mut caveats: Vec<String> = assessment
        .sizes
        .iter()
        .filter_map(|size| size.estimate.as_ref())
        .flat_map(|estimate| estimate.notes.iter())
        .filter(|note| !assessment.evidence.iter().any(|e| e.notes.contains(note)))
        .cloned()
        .collect();
    caveats.sort();
    caveats.dedup();
    caveats
}
