//! From the machines measured to the sizes listed: an explicit scaling model, and every figure
//! labelled *measured*, *published* or *projected* with how.
//!
//! - A CPU size: measured on that very size (a load test with `--measured-on`), else projected
//!   from a CPU measurement by vCPUs, throughput per vCPU × the size's vCPUs with the latency of
//!   the measurement (a batch computes on as many threads as were measured). End-to-end load
//!   tests are preferred to criterion's compute times, and a measurement on the same vector
//!   instruction set family to one on another; across families the estimate is flagged, since a
//!   measurement on AVX2 does not speak for AVX-512, nor the reverse.
//! - A GPU size: measured on that size; else projected from a measurement on the same GPU model
//!   by the share of GPU the size gets (count × fraction); else a published figure for that GPU
//!   and model (other software's); else projected from a measurement, then from a published
//!   figure, on another GPU by `r = min(FLOPS ratio, memory-bandwidth ratio)` (FP16 tensor FLOPS,
//!   FP32 for tabular models and for `f32`/`f64` engines): throughput × r × share, latency ÷ r.
//!
//! A partial GPU (NVadsA10 v5's 1/6, 1/3, 1/2 of an A10) gets its share of the throughput; its
//! latency is taken as the whole GPU's, which holds while the other slices are idle.

use std::fmt;

use serde::Serialize;

use crate::catalogue::{Catalogue, Size};
use crate::evidence::{Evidence, Kind, Machine, Method, OperatingPoint};
use crate::workload::number;

/// Where a size's figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// Measured on that size.
    Measured,
    /// Published for that GPU and model (not by inferd).
    Published,
    /// Projected from a measurement or a published figure elsewhere.
    Projected,
}

impl fmt::Display for Basis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Measured => "measured",
            Self::Published => "published",
            Self::Projected => "projected",
        })
    }
}

/// A size's operating points, and where they come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// Measured, published or projected.
    pub basis: Basis,
    /// How, in a sentence (`projected from 2 vCPUs of AMD EPYC (AVX-512) measured by inferd
    /// bench: throughput × 4/2 vCPUs, latency as measured`).
    pub how: String,
    /// The scaling alone, for tables: `as measured`, `× 4/2 vCPUs`, `× 1/6 GPU share`,
    /// `× 0.066 (T4 / H200)`.
    pub scaling: String,
    /// The measurement it rests on, by index into the evidence it was made from (none for a
    /// published figure).
    pub evidence: Option<usize>,
    /// End to end or compute only (none for a published figure).
    pub method: Option<Method>,
    /// The engine variant measured, when not the default.
    pub variant: Option<String>,
    /// The points, scaled to the size.
    pub points: Vec<OperatingPoint>,
    /// What to keep in mind: the evidence's notes and the projection's caveats.
    pub notes: Vec<String>,
}

/// The estimate for `size` from `evidence` (all of one model) and the catalogue's published
/// figures, by the rules of this module; `None` when nothing speaks for the size.
pub fn estimate(
    name: &str,
    size: &Size,
    catalogue: &Catalogue,
    model: &str,
    kind: Kind,
    evidence: &[Evidence],
) -> Option<Estimate> {
    if let Some(index) = evidence.iter().position(|e| e.machine.size() == Some(name)) {
        let found = &evidence[index];
        return Some(Estimate {
            basis: Basis::Measured,
            how: format!("measured on {name} by {}", found.method.tool()),
            scaling: "as measured".to_string(),
            evidence: Some(index),
            method: Some(found.method),
            variant: found.variant.clone(),
            points: found.points.clone(),
            notes: found.notes.clone(),
        });
    }
    match &size.gpu {
        None => cpu_estimate(size, evidence),
        Some(_) => gpu_estimate(size, catalogue, model, kind, evidence),
    }
}

fn scaled(points: &[OperatingPoint], throughput: f64, latency: f64) -> Vec<OperatingPoint> {
    points
        .iter()
        .map(|point| OperatingPoint {
            throughput: point.throughput * throughput,
            latency_p95: point.latency_p95.map(|value| value * latency),
            ttft_p95: point.ttft_p95.map(|value| value * latency),
            itl_p95: point.itl_p95.map(|value| value * latency),
            ..point.clone()
        })
        .collect()
}

/// An estimate projected from `evidence[index]`.
fn projected(
    evidence: &[Evidence],
    index: usize,
    how: String,
    scaling: String,
    throughput: f64,
    latency: f64,
    caveats: &[String],
) -> Estimate {
    let found = &evidence[index];
    let mut notes = found.notes.clone();
    notes.extend(caveats.iter().cloned());
    Estimate {
        basis: Basis::Projected,
        how,
        scaling,
        evidence: Some(index),
        method: Some(found.method),
        variant: found.variant.clone(),
        points: scaled(&found.points, throughput, latency),
        notes,
    }
}

fn cpu_estimate(size: &Size, evidence: &[Evidence]) -> Option<Estimate> {
    // Best first: end to end before compute only, then the same instruction set family, then
    // the default engine.
    let rank = |e: &Evidence| match &e.machine {
        Machine::Cpu { isa, .. } => Some((e.method != Method::EndToEnd, *isa != size.isa, e.variant.is_some())),
        Machine::Gpu { .. } => None,
    };
    let index = (0..evidence.len()).filter(|&i| rank(&evidence[i]).is_some()).min_by_key(|&i| rank(&evidence[i]))?;
    let found = &evidence[index];
    let Machine::Cpu { cpu, isa, vcpus, .. } = &found.machine else { return None };
    let mut caveats = Vec::new();
    let mut scaling = format!("× {}/{vcpus} vCPUs", size.vcpus);
    if *isa != size.isa {
        caveats.push(format!(
            "measured on {isa}, this size is {}: the instruction sets differ, so the projection is unreliable",
            size.isa
        ));
        scaling.push_str(&format!(", {isa} → {}: unreliable", size.isa));
    }
    Some(projected(
        evidence,
        index,
        format!(
            "projected from {vcpus} vCPUs of {cpu} ({isa}) measured by {}: throughput × {}/{vcpus} vCPUs, latency as \
             measured",
            found.method.tool(),
            size.vcpus
        ),
        scaling,
        f64::from(size.vcpus) / f64::from(*vcpus),
        1.0,
        &caveats,
    ))
}

/// The ratio by which a workload on GPU `from` speeds up on GPU `to`: the smaller of the FLOPS
/// and the bandwidth ratios (FP32 FLOPS when `fp32`, FP16 tensor FLOPS otherwise), with the sum
/// in words.
pub fn gpu_ratio(catalogue: &Catalogue, from: &str, to: &str, fp32: bool) -> Option<(f64, String)> {
    let (a, b) = (catalogue.gpus.get(from)?, catalogue.gpus.get(to)?);
    let (flops_a, flops_b, which) =
        if fp32 { (a.fp32_tflops, b.fp32_tflops, "FP32") } else { (a.fp16_tflops, b.fp16_tflops, "FP16") };
    let ratio = (flops_b / flops_a).min(b.bandwidth_gb_s / a.bandwidth_gb_s);
    let how = format!(
        "× {} = min({which} TFLOPS {}/{}, bandwidth {}/{} GB/s)",
        number(ratio),
        number(flops_b),
        number(flops_a),
        number(b.bandwidth_gb_s),
        number(a.bandwidth_gb_s)
    );
    Some((ratio, how))
}

fn gpu_estimate(
    size: &Size,
    catalogue: &Catalogue,
    model: &str,
    kind: Kind,
    evidence: &[Evidence],
) -> Option<Estimate> {
    let gpu = size.gpu.as_ref()?;
    let share = f64::from(gpu.count) * gpu.fraction;
    let mut partial = Vec::new();
    if gpu.fraction < 1.0 {
        partial.push(format!(
            "a partial GPU (1/{:.0} of an {}): its share of the throughput, latency as on a whole GPU while the other \
             slices are idle",
            1.0 / gpu.fraction,
            gpu.model
        ));
    }
    // GPU measurements, best first: end to end, then the default engine.
    let mut measured: Vec<(usize, Option<String>, f64, String)> = evidence
        .iter()
        .enumerate()
        .filter_map(|(index, e)| match &e.machine {
            Machine::Gpu { model, gpus, product, .. } => Some((index, model.clone(), *gpus, product.clone())),
            Machine::Cpu { .. } => None,
        })
        .collect();
    measured
        .sort_by_key(|(index, ..)| (evidence[*index].method != Method::EndToEnd, evidence[*index].variant.is_some()));
    // The same GPU model, scaled by the share of it.
    for (index, found_model, gpus, product) in &measured {
        if found_model.as_deref() == Some(gpu.model.as_str()) {
            let factor = share / gpus;
            return Some(projected(
                evidence,
                *index,
                format!(
                    "projected from {product} measured by {}: throughput × {} GPU share",
                    evidence[*index].method.tool(),
                    number(factor)
                ),
                format!("× {} GPU share", number(factor)),
                factor,
                1.0,
                &partial,
            ));
        }
    }
    let published_point = |throughput: f64, latency: Option<std::time::Duration>| OperatingPoint {
        label: "published".to_string(),
        axis: "batch",
        x: 1.0,
        throughput,
        latency_p95: latency.map(|latency| latency.as_secs_f64()),
        ttft_p95: None,
        itl_p95: None,
        error_rate: 0.0,
    };
    let published: Vec<_> = catalogue.published.iter().filter(|p| p.model == model && p.unit == kind.unit()).collect();
    if let Some(found) = published.iter().find(|p| p.gpu == gpu.model) {
        let source = &catalogue.sources[&found.source];
        let mut notes = vec![format!("{} ({}, {})", found.note, source.url, source.date)];
        notes.extend(partial);
        return Some(Estimate {
            basis: Basis::Published,
            how: format!("published for {} by {}: {}", gpu.model, source.what, found.note),
            scaling: format!("published, × {} GPU share", number(share)),
            evidence: None,
            method: None,
            variant: None,
            points: scaled(&[published_point(found.throughput, found.latency_p95)], share, 1.0),
            notes,
        });
    }
    // Another GPU, by the ratio of the two GPUs' specifications.
    for (index, found_model, gpus, product) in &measured {
        let Some(found_model) = found_model else { continue };
        let found = &evidence[*index];
        let fp32 =
            found.variant.as_deref().is_some_and(|v| v.contains("f32") || v.contains("f64")) || kind == Kind::Tabular;
        let Some((ratio, ratio_how)) = gpu_ratio(catalogue, found_model, &gpu.model, fp32) else { continue };
        let factor = ratio * share / gpus;
        return Some(projected(
            evidence,
            *index,
            format!(
                "projected from {product} measured by {} {ratio_how}, × {} GPU share; latency ÷ {}",
                found.method.tool(),
                number(share / gpus),
                number(ratio)
            ),
            format!("× {} ({} / {found_model})", number(factor), gpu.model),
            factor,
            1.0 / ratio,
            &partial,
        ));
    }
    for found in published {
        let Some((ratio, ratio_how)) = gpu_ratio(catalogue, &found.gpu, &gpu.model, false) else { continue };
        let source = &catalogue.sources[&found.source];
        let mut notes = vec![format!("{} ({}, {})", found.note, source.url, source.date)];
        notes.extend(partial);
        return Some(Estimate {
            basis: Basis::Projected,
            how: format!(
                "projected from the figure published for {} by {} {ratio_how}, × {} GPU share",
                found.gpu,
                source.what,
                number(share)
            ),
            scaling: format!(
                "published for {}, × {} ({} / {})",
                found.gpu,
                number(ratio * share),
                gpu.model,
                found.gpu
            ),
            evidence: None,
            method: None,
            variant: None,
            points: scaled(&[published_point(found.throughput, found.latency_p95)], ratio * share, 1.0 / ratio),
            notes,
        });
    }
    None
}
