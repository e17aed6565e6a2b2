//! The report as Markdown.

use comfy_table::presets::ASCII_MARKDOWN;

use super::{
    Report, SCALING_MODEL, Table, caveats, evidence_heading, points_table, provisioned_words, sizes_table, terms,
};

fn table(table: &Table) -> String {
    let escape = |cell: &String| cell.replace('|', "\\|");
    let mut out = comfy_table::Table::new();
    out.load_style(ASCII_MARKDOWN)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(table.header.iter().map(escape).collect::<Vec<_>>());
    for row in &table.rows {
        out.add_row(row.iter().map(escape).collect::<Vec<_>>());
    }
    out.to_string()
}

/// The report as Markdown.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    out.push_str("# inferd advise: CPU or GPU?\n\n");
    out.push_str(&format!(
        "Generated {}. Prices: {}, {} per hour.\n\n",
        report.generated, report.region, report.currency
    ));
    out.push_str("## Verdicts\n\n");
    for assessment in &report.assessments {
        out.push_str(&format!("- **{}**: {}\n", assessment.workload.model, assessment.verdict.text));
    }
    out.push_str("\n## Measurements\n\n");
    for line in &report.measurements {
        out.push_str(&format!("- {line}\n"));
    }
    for line in &report.skipped {
        out.push_str(&format!("- left out: {line}\n"));
    }
    out.push_str("\nPrices from:\n\n");
    for line in &report.price_sources {
        out.push_str(&format!("- {line}\n"));
    }
    for assessment in &report.assessments {
        out.push_str(&format!("\n## {} ({})\n\n", assessment.workload.model, assessment.kind));
        out.push_str(&format!("**Verdict.** {}\n\n", assessment.verdict.text));
        out.push_str(&format!("Objective: {}.\n\n", terms(assessment)));
        if let Some(words) = provisioned_words(assessment) {
            out.push_str(&format!("Provisioned throughput: {words}.\n\n"));
        }
        out.push_str(&table(&sizes_table(assessment)));
        out.push_str("\n\n### Measurements\n");
        for (index, evidence) in assessment.evidence.iter().enumerate() {
            out.push_str(&format!("\n**{}**\n\n", evidence_heading(index, evidence)));
            for note in &evidence.notes {
                out.push_str(&format!("- {note}\n"));
            }
            out.push('\n');
            out.push_str(&table(&points_table(evidence)));
            out.push('\n');
        }
        let caveats = caveats(assessment);
        if !caveats.is_empty() {
            out.push_str("\nCaveats of the estimates:\n\n");
            for caveat in caveats {
                out.push_str(&format!("- {caveat}\n"));
            }
        }
    }
    out.push_str("\n## How the estimates are made\n\n");
    for paragraph in SCALING_MODEL {
        out.push_str(&format!("- {paragraph}\n"));
    }
    out
}
