//! `inferd bench`: a load generator for any server that speaks the OpenAI API or the Open
//! Inference Protocol (inferd, llama.cpp's server, TEI, vLLM, Triton). It runs the points of a
//! [`Profile`], each bounded in time and in requests, and reports per point throughput,
//! latency percentiles, errors by status, generation timings and goodput.
//!
//! Closed loops keep `concurrency` requests outstanding. Open loops send at their rate whatever
//! the answers; when the generator cannot keep up (a slow client machine, or `max_in_flight`
//! requests outstanding), requests go out late and the point's [`Schedule`](summary::Schedule)
//! says by how much, instead of the loop silently turning into a closed one.

pub mod output;
pub mod payload;
pub mod profile;
pub mod request;
pub mod summary;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_distr::Distribution as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::host::Host;
pub use payload::{Api, PayloadSpec};
pub use profile::{Load, Profile};
pub use request::{Outcome, Sample};
pub use summary::{Distribution, Goodput, Slo, Summary};

/// The version of the JSON a load test writes; readers refuse other versions.
pub const REPORT_FORMAT: u32 = 1;

/// Why a load test cannot run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The HTTP client cannot be built (a header that is not valid HTTP, say).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The server could not be asked for the model's shape.
    #[error("cannot read {url}: {reason}")]
    Metadata {
        /// What was asked.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// Every request of the first point failed.
    #[error("every request failed ({0}): is the server up, and are the URL, model and API right?")]
    NothingServed(String),
}

/// A load test against one model of one server.
#[derive(Debug, Clone)]
pub struct LoadTest {
    /// The server's base URL (`http://127.0.0.1:8080`).
    pub url: String,
    /// The model's name as the server knows it.
    pub model: String,
    /// The protocol.
    pub api: Api,
    /// The shape of the built-in bodies.
    pub payload: PayloadSpec,
    /// A body to send instead of the built-in ones.
    pub body: Option<Value>,
    /// Seconds each point lasts (an open loop's schedule spans this long).
    pub duration: f64,
    /// Requests each point sends at most.
    pub max_requests: u64,
    /// Requests an open loop keeps outstanding at most.
    pub max_in_flight: usize,
    /// Longest a request may take before it counts as a timeout.
    pub timeout: Duration,
    /// Bounds for goodput.
    pub slo: Option<Slo>,
    /// Seeds the Poisson arrivals, so that runs are repeatable.
    pub seed: u64,
    /// `Authorization: Bearer` key.
    pub api_key: Option<String>,
    /// Other headers, as (name, value).
    pub headers: Vec<(String, String)>,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
}

/// One point's load and figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The profile step it belongs to: `synchronous`, `concurrent`, `throughput`, `constant`,
    /// `poisson`.
    pub profile: String,
    /// How requests were offered.
    pub load: Load,
    /// Its figures.
    pub summary: Summary,
}

/// What a load test measured, as `inferd bench --json` writes it and `inferd advise` reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// [`REPORT_FORMAT`].
    pub format: u32,
    /// When it started (RFC 3339, UTC).
    pub started: String,
    /// The server's base URL.
    pub url: String,
    /// The model.
    pub model: String,
    /// The protocol.
    pub api: Api,
    /// Whether the server was on this machine (a loopback address), sharing its CPUs with the
    /// load generator.
    pub loopback: bool,
    /// What the server ran on: this machine when it was on loopback, else the catalogue size the
    /// user named (`--measured-on`), else unknown.
    pub measured_on: MeasuredOn,
    /// The machine the load generator ran on.
    pub client: Host,
    /// The built-in bodies' shape (when no body file was given).
    pub payload: Option<PayloadSpec>,
    /// The goodput bounds.
    pub slo: Option<Slo>,
    /// The points, in the order they ran.
    pub points: Vec<Point>,
}

/// The machine a server ran on during a load test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeasuredOn {
    /// A machine described by detection (the load generator's own, for a loopback server).
    Host(Host),
    /// A size of the VM catalogue (`Standard_NC4as_T4_v3`), as the user stated it.
    Size(String),
    /// A whole GPU of this product (`H200`, `NVIDIA A10`) that is not a catalogue size, as the
    /// user stated it.
    Gpu(String),
    /// Not stated: such a report cannot be scaled to other sizes.
    Unknown,
}

impl LoadTest {
    fn client(&self) -> Result<reqwest::Client, LoadError> {
        let mut headers = reqwest::header::HeaderMap::new();
        let invalid = |what: &str| LoadError::Client(format!("invalid header {what}"));
        if let Some(key) = &self.api_key {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| invalid("Authorization (the API key)"))?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        for (name, value) in &self.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid(name))?;
            let value = reqwest::header::HeaderValue::from_str(value).map_err(|_| invalid(name.as_str()))?;
            headers.insert(name, value);
        }
        reqwest::Client::builder()
            .default_headers(headers)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(usize::MAX)
            .build()
            .map_err(|err| LoadError::Client(err.to_string()))
    }

    fn endpoint(&self) -> String {
        format!("{}{}", self.url.trim_end_matches('/'), self.api.path(&self.model))
    }

    /// Asks a v2 server for the model's input width (`GET /v2/models/{model}`: the last
    /// dimension of its first input) and uses it for the built-in bodies.
    pub async fn read_v2_features(&mut self) -> Result<usize, LoadError> {
        let url = format!("{}/v2/models/{}", self.url.trim_end_matches('/'), self.model);
        let failed = |reason: String| LoadError::Metadata { url: url.clone(), reason };
        let response = self.client()?.get(&url).send().await.map_err(|err| failed(err.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("status {}", response.status())));
        }
        let metadata: Value = response.json().await.map_err(|err| failed(err.to_string()))?;
        let width = metadata
            .pointer("/inputs/0/shape")
            .and_then(Value::as_array)
            .and_then(|shape| shape.last())
            .and_then(Value::as_i64)
            .and_then(|width| usize::try_from(width).ok())
            .filter(|&width| width > 0)
            .ok_or_else(|| failed("no input shape with a fixed last dimension in the model metadata".into()))?;
        self.payload.features = width;
        Ok(width)
    }

    /// Runs every point of `profile`, calling `done` after each.
    pub async fn run(&self, profile: &Profile, mut done: impl FnMut(&Point)) -> Result<Vec<Point>, LoadError> {
        let client = self.client()?;
        let mut points = Vec::new();
        for (step, load) in profile.initial_points() {
            let point = self.point(&client, step, load).await;
            if points.is_empty() && point.summary.succeeded == 0 {
                let mut reason = point.summary.errors_text();
                if let Some(example) = point.summary.error_examples.values().next() {
                    reason.push_str(&format!("; for example: {example}"));
                }
                return Err(LoadError::NothingServed(reason));
            }
            done(&point);
            points.push(point);
        }
        if let Profile::Sweep { rates, .. } = profile {
            let synchronous = points[0].summary.requests_per_s;
            let throughput = points.get(1).map_or(0.0, |point| point.summary.requests_per_s);
            for rate in profile::sweep_rates(synchronous, throughput, *rates) {
                let point = self.point(&client, "constant", Load::Open { rate, poisson: false }).await;
                done(&point);
                points.push(point);
            }
        }
        Ok(points)
    }

    async fn point(&self, client: &reqwest::Client, step: &str, load: Load) -> Point {
        let progress = self.progress_bar(&format!("{step} {load}"));
        let started = Instant::now();
        let counts = Arc::new(Counts::default());
        let ticker = {
            let (progress, counts, total) = (progress.clone(), Arc::clone(&counts), self.duration);
            tokio::spawn(async move {
                loop {
                    let elapsed = started.elapsed().as_secs_f64();
                    progress.set_position((elapsed.min(total) * 10.0) as u64);
                    progress.set_message(format!(
                        "{} answered, {} failed",
                        counts.ok.load(Ordering::Relaxed),
                        counts.failed.load(Ordering::Relaxed)
                    ));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let (samples, duration, open) = match load {
            Load::Closed { concurrency } => {
                let (samples, duration) = self.closed(client, concurrency, started, &counts).await;
                (samples, duration, None)
            }
            Load::Open { rate, poisson } => {
                let (samples, waited) = self.open(client, rate, poisson, started, &counts).await;
                let open = summary::OpenLoop { target_rate: rate, waited_for_slot: waited };
                let duration = open_loop_duration(&samples);
                (samples, duration, Some(open))
            }
        };
        ticker.abort();
        progress.finish_and_clear();
        Point { profile: step.to_string(), load, summary: Summary::of(&samples, duration, self.slo.as_ref(), open) }
    }

    fn progress_bar(&self, label: &str) -> indicatif::ProgressBar {
        if !self.progress {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new((self.duration * 10.0).ceil() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix:>28} [{bar:30}] {elapsed:>4} {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        bar
    }

    fn body(&self, seed: u64) -> Value {
        payload::body(self.api, &self.model, &self.payload, self.body.as_ref(), seed)
    }

    /// `concurrency` clients, each sending until the point's time or request budget is spent;
    /// returns the samples and the duration they took (see [`closed_loop_duration`]).
    async fn closed(
        &self,
        client: &reqwest::Client,
        concurrency: usize,
        started: Instant,
        counts: &Arc<Counts>,
    ) -> (Vec<Sample>, f64) {
        let issued = Arc::new(AtomicU64::new(0));
        let deadline = started + Duration::from_secs_f64(self.duration);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (client, url, issued, counts, this) =
                (client.clone(), self.endpoint(), Arc::clone(&issued), Arc::clone(counts), self.clone());
            tasks.spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let number = issued.fetch_add(1, Ordering::Relaxed);
                    if number >= this.max_requests || Instant::now() >= deadline {
                        break;
                    }
                    let sent = started.elapsed().as_secs_f64();
                    let mut sample = request::send(&client, &url, &this.body(number), this.timeout).await;
                    sample.scheduled = sent;
                    sample.sent = sent;
                    counts.record(&sample);
                    samples.push(sample);
                }
                samples
            });
        }
        let mut clients = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            clients.push(joined.unwrap_or_default());
        }
        let duration = closed_loop_duration(&clients);
        let mut samples: Vec<Sample> = clients.into_iter().flatten().collect();
        samples.sort_by(|a, b| a.sent.total_cmp(&b.sent));
        (samples, duration)
    }

    /// Requests sent on a schedule at `rate`; returns the samples and how many requests had to
    /// wait for one of the `max_in_flight` slots.
    async fn open(
        &self,
        client: &reqwest::Client,
        rate: f64,
        poisson: bool,
        started: Instant,
        counts: &Arc<Counts>,
    ) -> (Vec<Sample>, u64) {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.max_in_flight.max(1)));
        let mut gaps = rand::rngs::StdRng::seed_from_u64(self.seed);
        let exponential = rand_distr::Exp::new(rate).ok();
        let mut tasks = tokio::task::JoinSet::new();
        let (mut due, mut number, mut waited) = (0.0f64, 0u64, 0u64);
        while due < self.duration && number < self.max_requests {
            tokio::time::sleep_until((started + Duration::from_secs_f64(due)).into()).await;
            let permit = match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    waited += 1;
                    match Arc::clone(&slots).acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => break,
                    }
                }
            };
            let (client, url, body, timeout, counts) =
                (client.clone(), self.endpoint(), self.body(number), self.timeout, Arc::clone(counts));
            let scheduled = due;
            tasks.spawn(async move {
                let sent = started.elapsed().as_secs_f64();
                let mut sample = request::send(&client, &url, &body, timeout).await;
                drop(permit);
                sample.scheduled = scheduled;
                sample.sent = sent;
                counts.record(&sample);
                sample
            });
            number += 1;
            due += match (&exponential, poisson) {
                (Some(exponential), true) => exponential.sample(&mut gaps),
                _ => 1.0 / rate,
            };
        }
        let mut samples = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            if let Ok(sample) = joined {
                samples.push(sample);
            }
        }
        samples.sort_by(|a, b| a.sent.total_cmp(&b.sent));
        (samples, waited)
    }
}

/// The duration that makes a closed loop's requests per second the sum of its clients' own
/// rates (each client's requests over the time until its last answer). Dividing by the time of
/// the last answer of all instead would count, for every client but the last to finish, the
/// tail after its own last answer, and understate the rate by up to one request's latency over
/// the point's duration.
fn closed_loop_duration(clients: &[Vec<Sample>]) -> f64 {
    let rate: f64 = clients
        .iter()
        .filter_map(|samples| {
            let end = samples.iter().map(|sample| sample.sent + sample.latency).fold(0.0, f64::max);
            (end > 0.0).then(|| samples.len() as f64 / end)
        })
        .sum();
    let count: usize = clients.iter().map(Vec::len).sum();
    if rate > 0.0 { count as f64 / rate } else { 0.0 }
}

/// An open loop's duration: the span of its answers, stretched by n / (n − 1) so that n answers
/// spread evenly over a duration D give D. (From the first request sent to the last answer
/// would add one request's latency to D.)
fn open_loop_duration(samples: &[Sample]) -> f64 {
    let ends: Vec<f64> = samples.iter().map(|sample| sample.sent + sample.latency).collect();
    let first = ends.iter().copied().fold(f64::INFINITY, f64::min);
    let last = ends.iter().copied().fold(0.0, f64::max);
    if ends.len() < 2 || last <= first { last } else { (last - first) * ends.len() as f64 / (ends.len() - 1) as f64 }
}

/// Live counts for the progress bar.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Counts {
    fn record(&self, sample: &Sample) {
        let counter = if sample.outcome == Outcome::Ok { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether `url`'s host is a loopback address (`127.0.0.0/8`, `::1`, `localhost`).
pub fn is_loopback(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else { return false };
    let Some(host) = parsed.host_str() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent: f64, latency: f64) -> Sample {
        Sample {
            scheduled: sent,
            sent,
            latency,
            outcome: Outcome::Ok,
            ttft: None,
            itl: None,
            prompt_tokens: None,
            output_tokens: None,
            detail: None,
        }
    }

    #[test]
    fn durations_do_not_count_the_tail() {
        // Two clients of 1 s requests over a 10 s point, one starting half a second late: each
        // does 1 request per second; the second's last answer comes at 10.5 s.
        let a: Vec<Sample> = (0..10).map(|i| sample(f64::from(i), 1.0)).collect();
        let b: Vec<Sample> = (0..10).map(|i| sample(f64::from(i) + 0.5, 1.0)).collect();
        let duration = closed_loop_duration(&[a, b]);
        let rate = 20.0 / duration;
        assert!((rate - (1.0 + 10.0 / 10.5)).abs() < 1e-12, "{rate}");
        // An open loop at 10 per second for 2 s whose answers take 3 s each: 10 per second.
        let open: Vec<Sample> = (0..20).map(|i| sample(f64::from(i) * 0.1, 3.0)).collect();
        assert!((20.0 / open_loop_duration(&open) - 10.0).abs() < 1e-9);
        assert_eq!(closed_loop_duration(&[]), 0.0);
    }

    #[test]
    fn loopback_urls() {
        assert!(is_loopback("http://127.0.0.1:8080"));
        assert!(is_loopback("http://localhost:8080/"));
        assert!(is_loopback("http://[::1]:8080"));
        assert!(!is_loopback("https://myendpoint.example.com"));
        assert!(!is_loopback("http://10.0.0.4:8080"));
        assert!(!is_loopback("not a url"));
    }
}
