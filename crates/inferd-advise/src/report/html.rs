//! The report as one self-contained HTML page: styles inline, charts as inline SVG, nothing
//! fetched at view time. Rendered with minijinja, which escapes every value but the charts.

use serde::Serialize;

use super::{
    Report, SCALING_MODEL, Table, caveats, charts, evidence_heading, points_table, provisioned_words, sizes_table,
    terms,
};

const TEMPLATE: &str = include_str!("report.html");

#[derive(Serialize)]
struct Measurement {
    heading: String,
    notes: Vec<String>,
    points: Table,
}

#[derive(Serialize)]
struct Section {
    model: String,
    kind: String,
    decision: crate::plan::Decision,
    verdict: String,
    terms: String,
    provisioned: Option<String>,
    charts: Vec<String>,
    sizes: Table,
    measurements: Vec<Measurement>,
    caveats: Vec<String>,
}

/// The report as HTML.
pub fn html(report: &Report) -> Result<String, minijinja::Error> {
    let sections: Vec<Section> = report
        .assessments
        .iter()
        .zip(&report.cost_curves)
        .map(|(assessment, curve)| Section {
            model: assessment.workload.model.clone(),
            kind: assessment.kind.to_string(),
            decision: assessment.verdict.decision,
            verdict: assessment.verdict.text.clone(),
            terms: terms(assessment),
            provisioned: provisioned_words(assessment),
            charts: [
                charts::latency_against_batch(assessment),
                charts::throughput_against_concurrency(assessment),
                charts::cost_against_objective(assessment, curve),
            ]
            .into_iter()
            .flatten()
            .collect(),
            sizes: sizes_table(assessment),
            measurements: assessment
                .evidence
                .iter()
                .enumerate()
                .map(|(index, evidence)| Measurement {
                    heading: evidence_heading(index, evidence),
                    notes: evidence.notes.clone(),
                    points: points_table(evidence),
                })
                .collect(),
            caveats: caveats(assessment),
        })
        .collect();
    let mut environment = minijinja::Environment::new();
    environment.add_template("report.html", TEMPLATE)?;
    environment.get_template("report.html")?.render(minijinja::context! {
        report => minijinja::Value::from(minijinja::value::Serde(report)),
        sections => minijinja::Value::from(minijinja::value::Serde(&sections)),
        scaling_model => minijinja::Value::from(minijinja::value::Serde(SCALING_MODEL)),
    })
}
