//! The figures of one load-test point, from its samples: throughput, latency percentiles,
//! errors by status, generation timings, goodput against a service-level objective, and for an
//! open loop how far the generator fell behind its schedule.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::request::{Outcome, Sample};

/// Percentiles of a set of durations, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Distribution {
    /// The distribution of `values` (`None` when empty). Percentiles interpolate linearly between
    /// the two nearest ranks, as NumPy's default does.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut sorted: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = q * (sorted.len() - 1) as f64;
            let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
        };
        Some(Self {
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: at(0.5),
            p90: at(0.9),
            p95: at(0.95),
            p99: at(0.99),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// A service-level objective for goodput: the most each request may take, per measure. A request
/// counts toward goodput when it succeeded and met every bound given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Time to first token, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft: Option<f64>,
    /// Mean inter-token latency of the request, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub itl: Option<f64>,
    /// Whole request, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<f64>,
}

impl Slo {
    /// Whether no bound is set.
    pub fn is_empty(&self) -> bool {
        self.ttft.is_none() && self.itl.is_none() && self.latency.is_none()
    }

    /// Whether `sample` succeeded within every bound. A bound on a measure the sample lacks (time
    /// to first token of an answer that was not streamed) is not met.
    pub fn met_by(&self, sample: &Sample) -> bool {
        let within = |bound: Option<f64>, value: Option<f64>| match bound {
            None => true,
            Some(bound) => value.is_some_and(|value| value <= bound),
        };
        sample.outcome == Outcome::Ok
            && within(self.ttft, sample.ttft)
            && within(self.itl, sample.itl)
            && within(self.latency, Some(sample.latency))
    }
}

impl FromStr for Slo {
    type Err = String;

    /// `ttft:200ms,itl:50ms,latency:500ms` (any subset, any order; durations as `250ms`, `1.5s`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut slo = Self::default();
        for part in s.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let (name, value) =
                part.split_once(':').ok_or_else(|| format!("'{part}' is not measure:duration (e.g. ttft:200ms)"))?;
            let seconds = parse_seconds(value.trim())?;
            let slot = match name.trim() {
                "ttft" => &mut slo.ttft,
                "itl" => &mut slo.itl,
                "latency" | "e2e" => &mut slo.latency,
                other => return Err(format!("unknown SLO measure '{other}': expected ttft, itl or latency")),
            };
            *slot = Some(seconds);
        }
        if slo.is_empty() {
            return Err("an SLO needs at least one bound, e.g. latency:500ms".to_string());
        }
        Ok(slo)
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [("ttft", self.ttft), ("itl", self.itl), ("latency", self.latency)]
            .into_iter()
            .filter_map(|(name, bound)| bound.map(|bound| format!("{name} ≤ {}", format_seconds(bound))))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// The longest duration [`parse_seconds`] takes: a year.
const LONGEST: f64 = 365.0 * 86_400.0;

/// Seconds from a duration written as `humantime` takes it (`250ms`, `2s`, `1m`) or a bare
/// number of seconds (`0.25`), from 0 to a year.
pub fn parse_seconds(text: &str) -> Result<f64, String> {
    let seconds = parse_any_seconds(text)?;
    if seconds > LONGEST {
        return Err(format!("'{text}' is longer than a year"));
    }
    Ok(seconds)
}

fn parse_any_seconds(text: &str) -> Result<f64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Ok(seconds);
        }
        return Err(format!("'{text}' is not a duration"));
    }
    // humantime has no fractional units ("1.5s"); accept a number with one of ours.
    for (suffix, scale) in [("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("s", 1.0), ("m", 60.0)] {
        if let Some(number) = text.strip_suffix(suffix)
            && let Ok(value) = number.trim().parse::<f64>()
            && value.is_finite()
            && value >= 0.0
        {
            return Ok(value * scale);
        }
    }
    humantime_serde::re::humantime::parse_duration(text)
        .map(|duration| duration.as_secs_f64())
        .map_err(|err| format!("'{text}' is not a duration: {err}"))
}

/// A duration for people: `850 µs`, `12.3 ms`, `1.50 s`.
pub fn format_seconds(seconds: f64) -> String {
    if seconds < 1e-3 {
        format!("{:.0} µs", seconds * 1e6)
    } else if seconds < 1.0 {
        let ms = seconds * 1e3;
        if ms < 10.0 { format!("{ms:.2} ms") } else { format!("{ms:.1} ms") }
    } else {
        format!("{seconds:.2} s")
    }
}

/// Goodput: the requests that met the SLO.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Goodput {
    /// Requests per second that succeeded within the SLO.
    pub requests_per_s: f64,
    /// Their share of all requests sent.
    pub fraction: f64,
}

/// How closely an open loop kept to its schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The rate asked for, requests per second.
    pub target_rate: f64,
    /// The rate requests were sent at, from the first to the last.
    pub sent_rate: f64,
    /// How late requests were sent after their scheduled time, seconds.
    pub lag: Distribution,
    /// Requests that waited for a free slot because `max_in_flight` requests were outstanding.
    pub waited_for_slot: u64,
}

/// What an open loop meant to do, for its [`Schedule`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenLoop {
    /// Requests per second asked for.
    pub target_rate: f64,
    /// Requests that waited for a free slot.
    pub waited_for_slot: u64,
}

/// The figures of one point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Requests sent.
    pub requests: u64,
    /// Requests answered with success.
    pub succeeded: u64,
    /// Requests that did not succeed, by outcome (`429`, `503`, `timeout`, `transport`).
    pub errors: BTreeMap<String, u64>,
    /// One example of what went wrong per outcome in `errors`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub error_examples: BTreeMap<String, String>,
    /// From the point's start to its last answer, seconds.
    pub duration: f64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Latency of successful requests.
    pub latency: Option<Distribution>,
    /// Time to first token of successful streamed requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft: Option<Distribution>,
    /// Inter-token latency of successful streamed requests (each request's mean).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub itl: Option<Distribution>,
    /// Generated tokens per second, all successful requests together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens_per_s: Option<f64>,
    /// Prompt and generated tokens per minute, all successful requests together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<f64>,
    /// Mean prompt tokens per successful request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_mean: Option<f64>,
    /// Mean generated tokens per successful request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens_mean: Option<f64>,
    /// Requests within the SLO, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goodput: Option<Goodput>,
    /// Open loops only: the schedule kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

impl Summary {
    /// The errors in words: `429 × 3, 503 × 1`, or `-` when there were none.
    pub fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "-".to_string();
        }
        self.errors.iter().map(|(label, count)| format!("{label} × {count}")).collect::<Vec<_>>().join(", ")
    }

    /// Summarises `samples` of a point that lasted `duration` seconds; `open` describes an open
    /// loop's schedule (none for a closed loop).
    pub fn of(samples: &[Sample], duration: f64, slo: Option<&Slo>, open: Option<OpenLoop>) -> Self {
        let ok: Vec<&Sample> = samples.iter().filter(|sample| sample.outcome == Outcome::Ok).collect();
        let mut errors = BTreeMap::new();
        let mut error_examples = BTreeMap::new();
        for sample in samples.iter().filter(|sample| sample.outcome != Outcome::Ok) {
            *errors.entry(sample.outcome.label()).or_insert(0) += 1;
            if let Some(detail) = &sample.detail {
                error_examples.entry(sample.outcome.label()).or_insert_with(|| detail.clone());
            }
        }
        let per_second = |count: f64| if duration > 0.0 { count / duration } else { 0.0 };
        let output: Vec<u64> = ok.iter().filter_map(|sample| sample.output_tokens).collect();
        let prompt: Vec<u64> = ok.iter().filter_map(|sample| sample.prompt_tokens).collect();
        let mean =
            |values: &[u64]| (!values.is_empty()).then(|| values.iter().sum::<u64>() as f64 / values.len() as f64);
        let output_total = output.iter().sum::<u64>() as f64;
        let generated = !output.is_empty();
        let schedule = open.map(|open| {
            // Requests per second between the first and the last sent: the target rate when the
            // generator kept its schedule, less when it fell behind.
            let first = samples.iter().map(|sample| sample.sent).fold(f64::INFINITY, f64::min);
            let last = samples.iter().map(|sample| sample.sent).fold(0.0, f64::max);
            Schedule {
                target_rate: open.target_rate,
                sent_rate: if last > first { (samples.len() - 1) as f64 / (last - first) } else { 0.0 },
                lag: Distribution::of(samples.iter().map(|sample| (sample.sent - sample.scheduled).max(0.0)))
                    .unwrap_or(Distribution { mean: 0.0, p50: 0.0, p90: 0.0, p95: 0.0, p99: 0.0, max: 0.0 }),
                waited_for_slot: open.waited_for_slot,
            }
        });
        Self {
            requests: samples.len() as u64,
            succeeded: ok.len() as u64,
            errors,
            error_examples,
            duration,
            requests_per_s: per_second(ok.len() as f64),
            latency: Distribution::of(ok.iter().map(|sample| sample.latency)),
            ttft: Distribution::of(ok.iter().filter_map(|sample| sample.ttft)),
            itl: Distribution::of(ok.iter().filter_map(|sample| sample.itl)),
            output_tokens_per_s: generated.then(|| per_second(output_total)),
            tokens_per_minute: generated.then(|| per_second(output_total + prompt.iter().sum::<u64>() as f64) * 60.0),
            prompt_tokens_mean: mean(&prompt),
            output_tokens_mean: mean(&output),
            goodput: slo.map(|slo| {
                let good = samples.iter().filter(|sample| slo.met_by(sample)).count() as f64;
                Goodput {
                    requests_per_s: per_second(good),
                    fraction: if samples.is_empty() { 0.0 } else { good / samples.len() as f64 },
                }
            }),
            schedule,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(latency: f64, outcome: Outcome, ttft: Option<f64>, itl: Option<f64>, tokens: Option<u64>) -> Sample {
        Sample {
            scheduled: 0.0,
            sent: 0.0,
            latency,
            outcome,
            ttft,
            itl,
            prompt_tokens: tokens.map(|_| 10),
            output_tokens: tokens,
            detail: (outcome != Outcome::Ok).then(|| "refused".to_string()),
        }
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let d = Distribution::of((1..=101).map(f64::from)).unwrap();
        assert_eq!((d.p50, d.p90, d.p95, d.p99, d.max, d.mean), (51.0, 91.0, 96.0, 100.0, 101.0, 51.0));
        let d = Distribution::of([1.0, 2.0]).unwrap();
        assert_eq!(d.p50, 1.5);
        assert!((d.p95 - 1.95).abs() < 1e-12);
        assert!(Distribution::of([]).is_none());
    }

    #[test]
    fn slo_parses_and_goodput_counts_requests_within_every_bound() {
        let slo: Slo = "ttft:200ms, itl:50ms,latency:1.5s".parse().unwrap();
        assert_eq!(slo, Slo { ttft: Some(0.2), itl: Some(0.05), latency: Some(1.5) });
        assert!("ttft=1s".parse::<Slo>().is_err());
        assert!("speed:1s".parse::<Slo>().is_err());
        assert!("".parse::<Slo>().is_err());
        assert_eq!(slo.to_string(), "ttft ≤ 200.0 ms, itl ≤ 50.0 ms, latency ≤ 1.50 s");
        let samples = [
            sample(1.0, Outcome::Ok, Some(0.1), Some(0.04), Some(20)), // good
            sample(1.0, Outcome::Ok, Some(0.3), Some(0.04), Some(20)), // ttft too slow
            sample(1.6, Outcome::Ok, Some(0.1), Some(0.04), Some(20)), // too long
            sample(1.0, Outcome::Ok, Some(0.1), Some(0.06), Some(20)), // itl too slow
            sample(0.01, Outcome::Status(429), None, None, None),
        ];
        let summary = Summary::of(&samples, 2.0, Some(&slo), None);
        assert_eq!(summary.requests, 5);
        assert_eq!(summary.succeeded, 4);
        assert_eq!(summary.errors, BTreeMap::from([("429".to_string(), 1)]));
        assert_eq!(summary.error_examples, BTreeMap::from([("429".to_string(), "refused".to_string())]));
        assert_eq!(summary.requests_per_s, 2.0);
        let goodput = summary.goodput.unwrap();
        assert_eq!(goodput.requests_per_s, 0.5);
        assert_eq!(goodput.fraction, 0.2);
        assert_eq!(summary.output_tokens_per_s, Some(40.0));
        assert_eq!(summary.tokens_per_minute, Some((80.0 + 40.0) / 2.0 * 60.0));
        assert_eq!(summary.output_tokens_mean, Some(20.0));
        assert!(summary.schedule.is_none());
        assert_eq!(summary.latency.unwrap().max, 1.6);
    }

    #[test]
    fn an_open_loop_reports_how_late_it_fell() {
        let mut samples: Vec<Sample> = (0..11).map(|_| sample(0.01, Outcome::Ok, None, None, None)).collect();
        for (i, sample) in samples.iter_mut().enumerate() {
            sample.scheduled = i as f64 * 0.1;
            // The last five went out 50 ms late each.
            sample.sent = sample.scheduled + if i > 5 { 0.05 } else { 0.0 };
        }
        let open = OpenLoop { target_rate: 10.0, waited_for_slot: 2 };
        let schedule = Summary::of(&samples, 1.1, None, Some(open)).schedule.unwrap();
        assert!((schedule.sent_rate - 10.0 / 1.05).abs() < 1e-9, "{}", schedule.sent_rate);
        assert!((schedule.lag.max - 0.05).abs() < 1e-12);
        assert_eq!(schedule.lag.p50, 0.0);
        assert_eq!(schedule.waited_for_slot, 2);
    }

    #[test]
    fn durations_parse_in_every_spelling() {
        assert_eq!(parse_seconds("250ms").unwrap(), 0.25);
        assert_eq!(parse_seconds("1.5s").unwrap(), 1.5);
        assert_eq!(parse_seconds("2").unwrap(), 2.0);
        assert_eq!(parse_seconds("1m 30s").unwrap(), 90.0);
        assert!(parse_seconds("soon").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("1e20").unwrap_err().contains("longer than a year"));
        assert_eq!(format_seconds(0.0123), "12.3 ms");
        assert_eq!(format_seconds(0.00042), "420 µs");
        assert_eq!(format_seconds(2.0), "2.00 s");
    }
}
