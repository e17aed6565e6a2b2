//! The report's charts, drawn with plotters as SVG text to inline in the HTML page: latency
//! against batch size per device, throughput against concurrency, and cost per million against
//! the latency objective.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::evidence::{Evidence, Method};
use crate::plan::Assessment;

/// Line colours, distinct in print and for the common colour blindnesses (Okabe and Ito's).
const COLORS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
];

const WIDTH: u32 = 560;
const HEIGHT: u32 = 340;

/// One line of a chart.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// The range of `values` widened for a log axis (a decade each side of a single value).
fn log_range(values: impl Iterator<Item = f64>) -> Option<std::ops::Range<f64>> {
    let positive: Vec<f64> = values.filter(|v| v.is_finite() && *v > 0.0).collect();
    let low = positive.iter().copied().reduce(f64::min)?;
    let high = positive.iter().copied().reduce(f64::max)?;
    Some(if high / low < 1.5 { low / 3.0..high * 3.0 } else { low / 1.3..high * 1.3 })
}

/// How an axis writes its values.
struct Axis<'a> {
    label: &'a str,
    format: fn(&f64) -> String,
}

fn draw(title: &str, x: Axis<'_>, y: Axis<'_>, series: &[Series]) -> Option<String> {
    let x_range = log_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)))?;
    let y_range = log_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)))?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        plot(&root, title, &x, &y, series, x_range, y_range).ok()?;
        root.present().ok()?;
    }
    Some(svg)
}

fn plot(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    x: &Axis<'_>,
    y: &Axis<'_>,
    series: &[Series],
    x_range: std::ops::Range<f64>,
    y_range: std::ops::Range<f64>,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(72)
        .build_cartesian_2d(x_range.log_scale(), y_range.log_scale())?;
    chart
        .configure_mesh()
        .x_desc(x.label)
        .y_desc(y.label)
        .x_label_formatter(&x.format)
        .y_label_formatter(&y.format)
        .draw()?;
    for (index, line) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()].to_rgba();
        chart
            .draw_series(LineSeries::new(line.points.clone(), color.stroke_width(2)))?
            .label(line.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(line.points.iter().map(|&point| Circle::new(point, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

fn seconds(value: &f64) -> String {
    crate::load::summary::format_seconds(*value)
}

fn plain(value: &f64) -> String {
    crate::workload::number(*value)
}

fn dollars(value: &f64) -> String {
    crate::workload::money(*value)
}

fn name(evidence: &Evidence) -> String {
    let variant = evidence.variant.as_ref().map_or(String::new(), |variant| format!(" {variant}"));
    format!("{}{variant}", evidence.machine)
}

/// P95 latency against batch size (streams, for generation) for each device measured by
/// `cargo bench`.
pub fn latency_against_batch(assessment: &Assessment) -> Option<String> {
    let series: Vec<Series> = assessment
        .evidence
        .iter()
        .filter(|evidence| evidence.method == Method::Compute)
        .map(|evidence| Series {
            name: name(evidence),
            points: evidence.points.iter().filter_map(|p| Some((p.x, p.latency_p95?))).collect(),
        })
        .filter(|series| !series.points.is_empty())
        .collect();
    let axis = assessment.evidence.iter().flat_map(|e| e.points.first()).map(|p| p.axis).next().unwrap_or("batch");
    let x_label = if axis == "streams" { "sequences decoding together" } else { "batch size" };
    draw(
        &format!("{}: P95 latency (modelled from cargo bench)", assessment.workload.model),
        Axis { label: x_label, format: plain },
        Axis { label: "P95 latency", format: seconds },
        &series,
    )
}

/// Throughput against concurrency for each closed-loop load test.
pub fn throughput_against_concurrency(assessment: &Assessment) -> Option<String> {
    let series: Vec<Series> = assessment
        .evidence
        .iter()
        .filter(|evidence| evidence.method == Method::EndToEnd)
        .map(|evidence| Series {
            name: name(evidence),
            points: evidence.points.iter().filter(|p| p.axis == "concurrency").map(|p| (p.x, p.throughput)).collect(),
        })
        .filter(|series| !series.points.is_empty())
        .collect();
    let unit = format!("{} per second", assessment.kind.unit());
    draw(
        &format!("{}: throughput against concurrency (inferd bench)", assessment.workload.model),
        Axis { label: "concurrent requests", format: plain },
        Axis { label: &unit, format: plain },
        &series,
    )
}

/// The cheapest CPU and GPU cost per million against the P95 bound.
pub fn cost_against_objective(assessment: &Assessment, curve: &[crate::plan::CostPoint]) -> Option<String> {
    let pick = |gpu: bool| -> Vec<(f64, f64)> {
        curve.iter().filter_map(|&(bound, cpu, gpu_cost)| Some((bound, if gpu { gpu_cost? } else { cpu? }))).collect()
    };
    let series: Vec<Series> = [("cheapest CPU size", pick(false)), ("cheapest GPU size", pick(true))]
        .into_iter()
        .filter(|(_, points)| !points.is_empty())
        .map(|(name, points)| Series { name: name.to_string(), points })
        .collect();
    let unit = format!("$ per million {}", assessment.demand.unit);
    draw(
        &format!("{}: cheapest cost against the P95 objective", assessment.workload.model),
        Axis { label: "P95 latency objective", format: seconds },
        Axis { label: &unit, format: dollars },
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_svg_with_its_labels() {
        let series = [Series { name: "cpu".into(), points: vec![(1.0, 0.001), (8.0, 0.004), (64.0, 0.02)] }];
        let axis = |label| Axis { label, format: seconds };
        let svg = draw("title here", axis("batch size"), axis("P95 latency"), &series).unwrap();
        assert!(svg.starts_with("<svg"));
        for text in ["title here", "batch size", "P95 latency", "cpu"] {
            assert!(svg.contains(text), "{text}");
        }
        assert!(draw("empty", axis("x"), axis("y"), &[]).is_none());
    }
}
