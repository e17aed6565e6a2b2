//! `inferd advise` as a library call: measurements, a catalogue and workloads in, a [`Report`]
//! out.

use crate::catalogue::Catalogue;
use crate::criterion::CriterionResults;
use crate::evidence::{self, Evidence, Kind};
use crate::load::{BenchReport, MeasuredOn};
use crate::plan::assess;
use crate::report::Report;
use crate::workload::{Workload, WorkloadError};

/// What the advisor reads.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// `cargo bench`'s results, when given.
    pub criterion: Option<CriterionResults>,
    /// `inferd bench` reports, with the file each came from.
    pub benches: Vec<(String, BenchReport)>,
    /// The VM catalogue.
    pub catalogue: Catalogue,
    /// What each model must deliver.
    pub workloads: Vec<Workload>,
    /// When the report is made (RFC 3339).
    pub generated: String,
}

/// Why no report can be made.
#[derive(Debug, thiserror::Error)]
pub enum AdviseError {
    /// A workload is not usable.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// Nothing measured a workload's model.
    #[error("nothing measured model '{model}': {known}")]
    NotMeasured {
        /// The model.
        model: String,
        /// What was measured instead.
        known: String,
    },
}

/// The models the measurements cover.
fn measured_models(inputs: &Inputs) -> Vec<String> {
    let mut models: Vec<String> = inputs
        .criterion
        .iter()
        .flat_map(|results| results.measured.iter())
        .filter(|(measured, _)| Kind::of_family(&measured.id.family).is_some())
        .map(|(measured, _)| measured.id.model.clone())
        .chain(inputs.benches.iter().map(|(_, report)| report.model.clone()))
        .collect();
    models.sort();
    models.dedup();
    models
}

/// Assesses every workload and writes the report.
pub fn advise(inputs: &Inputs) -> Result<Report, AdviseError> {
    let mut measurements = Vec::new();
    if let Some(results) = &inputs.criterion {
        for run in &results.runs {
            let quick = if run.quick { " (quick mode)" } else { "" };
            let skipped =
                run.gpu_skipped.as_ref().map_or(String::new(), |reason| format!("; GPU groups skipped: {reason}"));
            let kernels = run.cpu_kernels.as_ref().map_or(String::new(), |level| format!(", {level} kernels"));
            measurements.push(format!(
                "cargo bench{quick}, {}, on {}; CPU engines on {} threads{kernels}{skipped}",
                run.started,
                run.host.summary(),
                run.cpu_threads
            ));
        }
    }
    for (path, report) in &inputs.benches {
        let on = match &report.measured_on {
            MeasuredOn::Host(host) => format!("a server on {}", host.summary()),
            MeasuredOn::Size(size) => format!("a server on {size}"),
            MeasuredOn::Gpu(product) => format!("a server on a {product} GPU"),
            MeasuredOn::Unknown => "a server on unstated hardware".to_string(),
        };
        let shared = if report.loopback { ", load generator on the same machine" } else { "" };
        measurements.push(format!(
            "inferd bench ({path}): {} over the {} API, {} points, {}, against {on}{shared}",
            report.model,
            report.api,
            report.points.len(),
            report.started
        ));
    }
    let mut skipped = Vec::new();
    let mut assessments = Vec::new();
    for workload in &inputs.workloads {
        workload.validate()?;
        let mut found: Vec<Evidence> = Vec::new();
        for (path, report) in inputs.benches.iter().filter(|(_, report)| report.model == workload.model) {
            match evidence::from_bench(report, &inputs.catalogue, workload) {
                Ok(evidence) => found.push(evidence),
                Err(reason) => skipped.push(format!("{path}: {reason}")),
            }
        }
        if let Some(results) = &inputs.criterion {
            found.extend(evidence::from_criterion(results, &inputs.catalogue, workload));
        }
        let Some(kind) = found.first().map(|evidence| evidence.kind) else {
            let known = measured_models(inputs);
            let mut known = if known.is_empty() {
                "no measurements were given (--criterion, --bench)".to_string()
            } else {
                format!("the measurements cover {}", known.join(", "))
            };
            if known.contains(&workload.model) && workload.tokens_per_request().is_none() {
                known.push_str(
                    "; cargo bench's generation figures need the workload's prompt_tokens and completion_tokens",
                );
            }
            for reason in skipped.iter().filter(|reason| reason.contains(&workload.model)) {
                known.push_str(&format!("; {reason}"));
            }
            return Err(AdviseError::NotMeasured { model: workload.model.clone(), known });
        };
        found.retain(|evidence| evidence.kind == kind);
        if kind == Kind::Generation && workload.tokens_per_request().is_none() {
            skipped.push(format!(
                "{}: cargo bench's figures need the workload's prompt_tokens and completion_tokens",
                workload.model
            ));
        }
        assessments.push(assess(workload, kind, &inputs.catalogue, found)?);
    }
    Ok(Report::new(inputs.generated.clone(), &inputs.catalogue, measurements, skipped, assessments))
}
