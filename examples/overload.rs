//! A load test at a multiple of the server's measured capacity, on loopback, bounded in time:
//!
//! 1. capacity: `--clients` closed-loop clients for `--measure` seconds give the requests per
//!    second the server sustains;
//! 2. overload: an open loop offers `--factor` times that rate for `--overload` seconds;
//! 3. recovery: right after, one client sends `--recovery` requests.
//!
//! It checks that every request got an answer (200, or 429/503 with a `Retry-After`), that the
//! server's resident memory (its own `/metrics`) stayed flat during the overload, against what
//! serving at capacity took; that the first requests after the load were all served; and
//! (unless `--max-p99-ratio 0`) that the server kept at least `--min-throughput` of its capacity
//! during the overload while the requests it admitted kept their p99 latency within
//! `--max-p99-ratio` times the p99 at capacity. It prints the figures and exits non-zero
//! otherwise.
//!
//! Requests are OpenAI embeddings of one 40-token sentence, or, with `--rows N`, Open Inference
//! Protocol requests of N rows for a tabular model (its feature count read from its metadata),
//! in the binary tensor extension as tritonclient sends them (outputs in binary too), so that
//! the model rather than JSON parsing is what the load exhausts.
//!
//! ```text
//! cargo run --release -- serve &                   # the bundled models, on 127.0.0.1:8080
//! cargo run --release --example overload -- --url http://127.0.0.1:8080
//! cargo run --release --example overload -- --model breast-cancer-xgboost --rows 64
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

struct Options {
    url: String,
    model: String,
    clients: usize,
    measure: f64,
    factor: f64,
    overload: f64,
    recovery: usize,
    rows: Option<usize>,
    min_throughput: f64,
    max_p99_ratio: f64,
}

fn options() -> Options {
    let mut options = Options {
        url: "http://127.0.0.1:8080".into(),
        model: "all-minilm-l6-v2".into(),
        clients: 16,
        measure: 5.0,
        factor: 4.0,
        overload: 15.0,
        recovery: 20,
        rows: None,
        min_throughput: 0.9,
        max_p99_ratio: 3.0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else { panic!("flags take a value: {pair:?}") };
        match flag.as_str() {
            "--url" => options.url = value.clone(),
            "--model" => options.model = value.clone(),
            "--clients" => options.clients = value.parse().unwrap(),
            "--measure" => options.measure = value.parse().unwrap(),
            "--factor" => options.factor = value.parse().unwrap(),
            "--overload" => options.overload = value.parse().unwrap(),
            "--recovery" => options.recovery = value.parse().unwrap(),
            "--rows" => options.rows = Some(value.parse().unwrap()),
            "--min-throughput" => options.min_throughput = value.parse().unwrap(),
            "--max-p99-ratio" => options.max_p99_ratio = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    options
}

/// What one request came back with.
#[derive(Debug)]
enum Outcome {
    Ok(Duration),
    Refused { status: u16, retry_after: Option<u64>, message: String },
    Other(String),
}

/// One request's body: JSON, or the Open Inference Protocol's binary tensor extension (a JSON
/// header of `header_length` bytes, then the raw tensor), which tritonclient sends by default.
enum Payload {
    Json(serde_json::Value),
    /// `Bytes` (axum's re-export of the `bytes` crate's), so that each request shares one buffer.
    Binary {
        bytes: axum::body::Bytes,
        header_length: usize,
    },
}

async fn send(client: &reqwest::Client, url: &str, payload: &Payload) -> Outcome {
    let started = Instant::now();
    let request = match payload {
        Payload::Json(body) => client.post(url).json(body),
        Payload::Binary { bytes, header_length } => client
            .post(url)
            .header("content-type", "application/octet-stream")
            .header("inference-header-content-length", *header_length)
            .body(bytes.clone()),
    };
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after =
                response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            // Read the body to its end, as a real client does.
            let body = response.bytes().await.unwrap_or_default();
            match status {
                200 => Outcome::Ok(started.elapsed()),
                429 | 503 => {
                    Outcome::Refused { status, retry_after, message: String::from_utf8_lossy(&body).into_owned() }
                }
                other => Outcome::Other(format!("HTTP {other}")),
            }
        }
        Err(err) => Outcome::Other(err.to_string()),
    }
}

async fn resident_bytes(client: &reqwest::Client, base: &str) -> f64 {
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("process_resident_memory_bytes "))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let options = options();
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(1024).timeout(Duration::from_secs(60)).build().unwrap();
    let (url, body) = match options.rows {
        None => {
            // A sentence of about 40 tokens, so that the model, not HTTP, is the bottleneck.
            let text = "The quick brown fox jumps over the lazy dog while the server measures how many \
                        requests per second it can answer before it has to shed load politely";
            (format!("{}/v1/embeddings", options.url), Payload::Json(json!({ "model": options.model, "input": text })))
        }
        Some(rows) => {
            let metadata: serde_json::Value = client
                .get(format!("{}/v2/models/{}", options.url, options.model))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let input = &metadata["inputs"][0];
            let features = input["shape"][1].as_u64().expect("a tabular model's input is [-1, features]") as usize;
            // As tritonclient sends it by default: binary inputs, and every output asked for in
            // binary.
            let header = json!({ "inputs": [{ "name": input["name"], "shape": [rows, features], "datatype": "FP64",
                                              "parameters": { "binary_data_size": rows * features * 8 } }],
                                 "parameters": { "binary_data_output": true } })
            .to_string();
            let mut bytes = header.clone().into_bytes();
            // Varied values, so that rows take different paths through the trees.
            for i in 0..rows * features {
                bytes.extend_from_slice(&(((i * 7919) % 1000) as f64 / 50.0).to_le_bytes());
            }
            let payload = Payload::Binary { bytes: bytes.into(), header_length: header.len() };
            (format!("{}/v2/models/{}/infer", options.url, options.model), payload)
        }
    };
    let body = Arc::new(body);

    let rss_start = resident_bytes(&client, &options.url).await;

    // 1. Capacity.
    let served = Arc::new(AtomicUsize::new(0));
    let refused_at_capacity = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(options.measure);
    let mut tasks = Vec::new();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..options.clients {
        let (client, url, body, served, latencies, refused_at_capacity) = (
            client.clone(),
            url.clone(),
            Arc::clone(&body),
            Arc::clone(&served),
            Arc::clone(&latencies),
            Arc::clone(&refused_at_capacity),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match send(&client, &url, &body).await {
                    Outcome::Ok(latency) => {
                        served.fetch_add(1, Ordering::Relaxed);
                        latencies.lock().await.push(latency);
                    }
                    // Closed-loop clients beyond what the model computes within its queue-time
                    // target are refused too; like the official clients, they come back after
                    // Retry-After.
                    Outcome::Refused { retry_after, .. } => {
                        refused_at_capacity.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
                    }
                    other => panic!("capacity phase: {other:?}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let capacity = served.load(Ordering::Relaxed) as f64 / options.measure;
    // What serving at capacity takes (the buffers of the requests in flight, which the allocator
    // keeps), against which the overload must not grow.
    let rss_at_capacity = resident_bytes(&client, &options.url).await;
    let mut base = latencies.lock().await.clone();
    base.sort();
    println!(
        "capacity: {capacity:.0} req/s with {} clients (p50 {:.1} ms, p99 {:.1} ms; {} refused, retried after Retry-After)",
        options.clients,
        percentile(&base, 0.5),
        percentile(&base, 0.99),
        refused_at_capacity.load(Ordering::Relaxed)
    );

    // 2. Overload: an open loop at `factor` × capacity.
    let rate = capacity * options.factor;
    let total = (rate * options.overload).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let outcomes = Arc::new(Mutex::new(Vec::with_capacity(total)));
    // The server's memory, sampled twice a second while the load lasts.
    let sampling = Arc::new(AtomicUsize::new(1));
    let sampler = {
        let (client, base, sampling) = (client.clone(), options.url.clone(), Arc::clone(&sampling));
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while sampling.load(Ordering::Relaxed) == 1 {
                peak = peak.max(resident_bytes(&client, &base).await);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            peak
        })
    };
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for sent in 0..total {
        let due = started + interval.mul_f64(sent as f64);
        tokio::time::sleep_until(due.into()).await;
        let (client, url, body, outcomes) = (client.clone(), url.clone(), Arc::clone(&body), Arc::clone(&outcomes));
        tasks.push(tokio::spawn(async move {
            let outcome = send(&client, &url, &body).await;
            outcomes.lock().await.push(outcome);
        }));
    }
    let offered_for = started.elapsed();
    for task in tasks {
        task.await.unwrap();
    }
    let drained_after = started.elapsed();
    sampling.store(0, Ordering::Relaxed);
    let rss_end = resident_bytes(&client, &options.url).await;
    let rss_peak = sampler.await.unwrap().max(rss_end).max(rss_at_capacity);

    let outcomes = outcomes.lock().await;
    let mut ok = Vec::new();
    let mut refused: BTreeMap<u16, usize> = BTreeMap::new();
    let mut retry_afters: Vec<u64> = Vec::new();
    let mut missing_retry_after = 0;
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in outcomes.iter() {
        match outcome {
            Outcome::Ok(latency) => ok.push(*latency),
            Outcome::Refused { status, retry_after, message } => {
                if !refused.contains_key(status) {
                    println!("first {status}: {message}");
                }
                *refused.entry(*status).or_default() += 1;
                match retry_after {
                    Some(seconds) => retry_afters.push(*seconds),
                    None => missing_retry_after += 1,
                }
            }
            Outcome::Other(what) => *others.entry(what.clone()).or_default() += 1,
        }
    }
    ok.sort();
    retry_afters.sort();
    let throughput = ok.len() as f64 / drained_after.as_secs_f64();
    let p99_ratio = percentile(&ok, 0.99) / percentile(&base, 0.99);
    println!(
        "overload: offered {rate:.0} req/s ({:.1}× capacity) for {:.1} s: {} requests; {} served ({throughput:.0} req/s, {:.0}% of capacity, p50 {:.1} ms, p99 {:.1} ms, {p99_ratio:.1}× the p99 at capacity), refused {:?}, Retry-After {}..{} s",
        options.factor,
        offered_for.as_secs_f64(),
        outcomes.len(),
        ok.len(),
        100.0 * throughput / capacity,
        percentile(&ok, 0.5),
        percentile(&ok, 0.99),
        refused,
        retry_afters.first().copied().unwrap_or(0),
        retry_afters.last().copied().unwrap_or(0),
    );
    println!(
        "memory: resident {:.0} MiB before, {:.0} MiB after serving at capacity, {:.0} MiB peak during the overload, {:.0} MiB after",
        rss_start / 1048576.0,
        rss_at_capacity / 1048576.0,
        rss_peak / 1048576.0,
        rss_end / 1048576.0
    );

    // 3. Recovery: the load is gone; the next requests must be served at once.
    let recovery_started = Instant::now();
    let mut recovered = Vec::new();
    let mut failures = Vec::new();
    for _ in 0..options.recovery {
        match send(&client, &url, &body).await {
            Outcome::Ok(latency) => recovered.push(latency),
            other => failures.push(format!("{other:?}")),
        }
    }
    recovered.sort();
    println!(
        "recovery: {} of {} requests served right after the load, p50 {:.1} ms (in {:.2} s)",
        recovered.len(),
        options.recovery,
        percentile(&recovered, 0.5),
        recovery_started.elapsed().as_secs_f64()
    );

    let mut problems = Vec::new();
    if !others.is_empty() {
        problems.push(format!("answers that were neither 200 nor 429/503: {others:?}"));
    }
    if missing_retry_after > 0 {
        problems.push(format!("{missing_retry_after} refusals without Retry-After"));
    }
    if retry_afters.iter().any(|&seconds| seconds == 0 || seconds > 60) {
        problems.push("a Retry-After outside 1..60 s".into());
    }
    // Flat: the overload takes at most 100 MiB more than serving at capacity took (the
    // allocator keeps what the requests in flight used; refused requests must not add to it).
    if rss_peak > rss_at_capacity + 100.0 * 1048576.0 {
        problems.push(format!("resident memory grew from {rss_at_capacity} at capacity to {rss_peak} bytes"));
    }
    if !failures.is_empty() {
        problems.push(format!("not served after the load: {failures:?}"));
    }
    if options.max_p99_ratio > 0.0 {
        if throughput < options.min_throughput * capacity {
            problems.push(format!(
                "served {throughput:.0} req/s during the overload, under {:.0}% of the capacity {capacity:.0} req/s",
                100.0 * options.min_throughput
            ));
        }
        if p99_ratio > options.max_p99_ratio {
            problems.push(format!(
                "admitted requests' p99 was {p99_ratio:.1}× the p99 at capacity, over {}×",
                options.max_p99_ratio
            ));
        }
    }
    if problems.is_empty() {
        println!("overload test passed");
    } else {
        for problem in &problems {
            eprintln!("overload test failed: {problem}");
        }
        std::process::exit(1);
    }
}
