//! `inferd bench` against the real server, for a tabular, an embedding and a chat model, in
//! closed and open loops: the table, the JSON and the CSV; then `inferd advise` on what it wrote.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Server, bundled_model, embedding_model, llm_model};
use serde_json::Value;

/// Runs `inferd` in `dir`; returns stdout, and stderr on failure.
fn inferd(args: &[&str], dir: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_inferd")).args(args).current_dir(dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "inferd {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_then_advise_against_the_real_server() {
    let models = bundled_model("breast-cancer-xgboost", "") + &embedding_model("") + &llm_model("");
    let server = Server::start_ready(&models, "").await;
    let url = server.url("");
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let runs: [(&str, &str, &[&str]); 3] = [
        (
            "breast-cancer-xgboost",
            "v2",
            &["--profile", "sweep", "--max-concurrency", "4", "--sweep-rates", "2", "--goodput", "latency:1s"],
        ),
        ("all-minilm-l6-v2", "embeddings", &["--profile", "poisson", "--rate", "5,10", "--goodput", "latency:2s"]),
        (
            "smollm2-135m-instruct",
            "chat",
            &["--profile", "concurrent", "--concurrency", "1,2", "--output-tokens", "6", "--input-words", "8"],
        ),
    ];
    let (sync_url, sync_dir) = (url.clone(), dir.path().to_path_buf());
    let tables = tokio::task::spawn_blocking(move || {
        runs.iter()
            .map(|(model, api, extra)| {
                let (json, csv) = (sync_dir.join(format!("{model}.json")), sync_dir.join(format!("{model}.csv")));
                let mut args = vec!["bench", "--url", &sync_url, "--model", model, "--api", api, "--duration", "1s"];
                let (json, csv) = (json.display().to_string(), csv.display().to_string());
                args.extend(["--json", &json, "--csv", &csv, "--quiet"]);
                args.extend(extra.iter());
                inferd(&args, &sync_dir)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();

    // Tabular, a sweep: synchronous, throughput, then two constant rates between them.
    assert!(tables[0].contains("synchronous") && tables[0].contains("throughput") && tables[0].contains("constant"));
    let trees = read_json(Path::new(&path("breast-cancer-xgboost.json")));
    assert_eq!(trees["format"], 1);
    assert_eq!(trees["api"], "v2");
    assert_eq!(trees["loopback"], true);
    assert!(trees["measured_on"]["host"]["vcpus"].as_u64().unwrap() >= 1);
    assert_eq!(trees["payload"]["features"], 30, "the width comes from the model's v2 metadata");
    let points = trees["points"].as_array().unwrap();
    assert_eq!(points.len(), 4, "{points:?}");
    let constant = &points[2]["summary"];
    assert!(constant["schedule"]["target_rate"].as_f64().unwrap() > 0.0, "an open loop reports its schedule");
    for point in points {
        let summary = &point["summary"];
        assert!(summary["succeeded"].as_u64().unwrap() > 0, "{summary}");
        assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
        let latency = &summary["latency"];
        assert!(latency["p50"].as_f64().unwrap() <= latency["p95"].as_f64().unwrap());
        assert!(latency["p95"].as_f64().unwrap() <= latency["p99"].as_f64().unwrap());
        let goodput = summary["goodput"]["fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&goodput));
    }
    let csv = std::fs::read_to_string(path("breast-cancer-xgboost.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "a header and one row per point:\n{csv}");
    assert!(lines[0].starts_with("model,api,profile,loop,concurrency,rate,requests,succeeded"));
    assert!(lines[1].starts_with("breast-cancer-xgboost,v2,synchronous,closed,1,"));

    // Embeddings, Poisson arrivals (an open loop): the schedule kept is reported.
    assert!(tables[1].contains("poisson") && tables[1].contains("late p99"), "{}", tables[1]);
    let embeddings = read_json(Path::new(&path("all-minilm-l6-v2.json")));
    for point in embeddings["points"].as_array().unwrap() {
        assert_eq!(point["load"]["loop"], "open");
        assert_eq!(point["load"]["poisson"], true);
        assert!(point["summary"]["schedule"]["lag"]["p99"].as_f64().is_some());
    }

    // Chat, closed loops, streamed: time to first token, inter-token latency and tokens.
    assert!(tables[2].contains("TTFT p95") && tables[2].contains("tok/min"), "{}", tables[2]);
    let chat = read_json(Path::new(&path("smollm2-135m-instruct.json")));
    for point in chat["points"].as_array().unwrap() {
        let summary = &point["summary"];
        assert_eq!(summary["output_tokens_mean"], 6.0, "ignore_eos makes every answer max_tokens long: {summary}");
        assert!(summary["ttft"]["p95"].as_f64().unwrap() <= summary["latency"]["p95"].as_f64().unwrap());
        assert!(summary["itl"]["p50"].as_f64().unwrap() > 0.0);
        assert!(summary["tokens_per_minute"].as_f64().unwrap() > 0.0);
    }

    // `inferd advise` turns them into a report.
    let workloads = dir.path().join("workloads.toml");
    std::fs::write(
        &workloads,
        "[[workloads]]\nmodel = \"breast-cancer-xgboost\"\np95 = \"1s\"\nrequests_per_second = 10\n\n\
         [[workloads]]\nmodel = \"all-minilm-l6-v2\"\np95 = \"2s\"\nrequests_per_second = 5\n\n\
         [[workloads]]\nmodel = \"smollm2-135m-instruct\"\np95 = \"30s\"\nrequests_per_minute = 6\n\
         prompt_tokens = 40\ncompletion_tokens = 6\n",
    )
    .unwrap();
    let mut args: Vec<String> = vec!["advise".into(), "--workloads".into(), workloads.display().to_string()];
    for model in ["breast-cancer-xgboost", "all-minilm-l6-v2", "smollm2-135m-instruct"] {
        args.extend(["--bench".to_string(), path(&format!("{model}.json"))]);
    }
    args.extend(["--out".to_string(), path("report")]);
    let dir_path = dir.path().to_path_buf();
    let verdicts =
        tokio::task::spawn_blocking(move || inferd(&args.iter().map(String::as_str).collect::<Vec<_>>(), &dir_path))
            .await
            .unwrap();
    for model in ["breast-cancer-xgboost", "all-minilm-l6-v2", "smollm2-135m-instruct"] {
        assert!(verdicts.contains(&format!("{model}: CPU is enough")), "{verdicts}");
    }
    let markdown = std::fs::read_to_string(dir.path().join("report/report.md")).unwrap();
    assert!(markdown.contains("## Verdicts") && markdown.contains("projected × 4/"), "{markdown}");
    let html = std::fs::read_to_string(dir.path().join("report/report.html")).unwrap();
    assert!(html.starts_with("<!doctype html>") && html.matches("<svg").count() >= 3);
    let json = read_json(&dir.path().join("report/report.json"));
    assert_eq!(json["assessments"].as_array().unwrap().len(), 3);
}

#[test]
fn advise_without_measurements_says_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .args(["advise", "--model", "m", "--p95", "50ms", "--rps", "10"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no measurements: run `cargo bench`"), "{stderr}");
}
