//! A load test's results for people (a table) and for tools (CSV; JSON is the [`BenchReport`]
//! itself).

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use super::summary::format_seconds;
use super::{BenchReport, Load};

/// The points as a table: throughput, latency percentiles and errors; generation timings when
/// the API generates; goodput when an SLO was given; the schedule kept when a point was an open
/// loop.
pub fn table(report: &BenchReport) -> String {
    let generates = report.api.generates();
    let open = report.points.iter().any(|point| point.summary.schedule.is_some());
    let mut header = vec!["profile", "load", "req/s", "ok", "errors", "p50", "p95", "p99"];
    if generates {
        header.extend(["TTFT p50", "TTFT p95", "ITL p50", "ITL p95", "out tok/s", "tok/min"]);
    }
    if report.slo.is_some() {
        header.push("goodput");
    }
    if open {
        header.extend(["sent/s", "late p99"]);
    }
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Disabled).set_header(header);
    let time = |value: Option<f64>| value.map_or_else(|| "-".to_string(), format_seconds);
    for point in &report.points {
        let summary = &point.summary;
        let mut row = vec![
            point.profile.clone(),
            point.load.to_string(),
            format!("{:.1}", summary.requests_per_s),
            summary.succeeded.to_string(),
            summary.errors_text(),
            time(summary.latency.map(|d| d.p50)),
            time(summary.latency.map(|d| d.p95)),
            time(summary.latency.map(|d| d.p99)),
        ];
        if generates {
            row.extend([
                time(summary.ttft.map(|d| d.p50)),
                time(summary.ttft.map(|d| d.p95)),
                time(summary.itl.map(|d| d.p50)),
                time(summary.itl.map(|d| d.p95)),
                summary.output_tokens_per_s.map_or_else(|| "-".into(), |rate| format!("{rate:.1}")),
                summary.tokens_per_minute.map_or_else(|| "-".into(), |rate| format!("{rate:.0}")),
            ]);
        }
        if report.slo.is_some() {
            row.push(summary.goodput.map_or_else(
                || "-".into(),
                |goodput| format!("{:.1}/s ({:.0}%)", goodput.requests_per_s, goodput.fraction * 100.0),
            ));
        }
        if open {
            match &summary.schedule {
                Some(schedule) => row.extend([format!("{:.1}", schedule.sent_rate), format_seconds(schedule.lag.p99)]),
                None => row.extend(["-".to_string(), "-".to_string()]),
            }
        }
        table.add_row(row);
    }
    table.to_string()
}

/// The CSV columns, one row per point; times in seconds, empty where a figure does not apply.
const COLUMNS: &[&str] = &[
    "model",
    "api",
    "profile",
    "loop",
    "concurrency",
    "rate",
    "requests",
    "succeeded",
    "errors",
    "duration_s",
    "requests_per_s",
    "latency_mean_s",
    "latency_p50_s",
    "latency_p90_s",
    "latency_p95_s",
    "latency_p99_s",
    "latency_max_s",
    "ttft_p50_s",
    "ttft_p95_s",
    "ttft_p99_s",
    "itl_p50_s",
    "itl_p95_s",
    "itl_p99_s",
    "output_tokens_per_s",
    "tokens_per_minute",
    "goodput_requests_per_s",
    "goodput_fraction",
    "sent_rate",
    "lag_p99_s",
    "lag_max_s",
    "waited_for_slot",
];

/// The points as CSV, with a header row.
pub fn csv(report: &BenchReport) -> Result<String, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(COLUMNS)?;
    let number = |value: Option<f64>| value.map_or_else(String::new, |value| value.to_string());
    for point in &report.points {
        let summary = &point.summary;
        let (kind, concurrency, rate) = match point.load {
            Load::Closed { concurrency } => ("closed", concurrency.to_string(), String::new()),
            Load::Open { rate, poisson } => {
                (if poisson { "poisson" } else { "constant" }, String::new(), rate.to_string())
            }
        };
        let schedule = summary.schedule.as_ref();
        let errors =
            summary.errors.iter().map(|(label, count)| format!("{label}:{count}")).collect::<Vec<_>>().join(";");
        writer.write_record([
            report.model.clone(),
            report.api.to_string(),
            point.profile.clone(),
            kind.to_string(),
            concurrency,
            rate,
            summary.requests.to_string(),
            summary.succeeded.to_string(),
            errors,
            summary.duration.to_string(),
            summary.requests_per_s.to_string(),
            number(summary.latency.map(|d| d.mean)),
            number(summary.latency.map(|d| d.p50)),
            number(summary.latency.map(|d| d.p90)),
            number(summary.latency.map(|d| d.p95)),
            number(summary.latency.map(|d| d.p99)),
            number(summary.latency.map(|d| d.max)),
            number(summary.ttft.map(|d| d.p50)),
            number(summary.ttft.map(|d| d.p95)),
            number(summary.ttft.map(|d| d.p99)),
            number(summary.itl.map(|d| d.p50)),
            number(summary.itl.map(|d| d.p95)),
            number(summary.itl.map(|d| d.p99)),
            number(summary.output_tokens_per_s),
            number(summary.tokens_per_minute),
            number(summary.goodput.map(|g| g.requests_per_s)),
            number(summary.goodput.map(|g| g.fraction)),
            number(schedule.map(|s| s.sent_rate)),
            number(schedule.map(|s| s.lag.p99)),
            number(schedule.map(|s| s.lag.max)),
            schedule.map_or_else(String::new, |s| s.waited_for_slot.to_string()),
        ])?;
    }
    let bytes = writer.into_inner().map_err(|err| err.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
