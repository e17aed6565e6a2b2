//! Loading an embedding model from the Hugging Face hub, through hf-hub's real download code:
//! a local HTTP server answers the hub's routes (the file listing and `resolve` with ranges)
//! for a repository made of the fetched all-MiniLM-L6-v2 folder, `HF_ENDPOINT` points the real
//! `inferd` binary at it, and `HF_HOME` gives it a fresh cache. Then the same model loads
//! offline (`HF_HUB_OFFLINE=1`) from that cache alone, with the server gone.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::Server;
use serde_json::{Value, json};

const REPO: &str = "sentence-transformers/all-MiniLM-L6-v2";
const COMMIT: &str = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf";

/// A hub with one model repository, counting the requests for each file.
#[derive(Clone)]
struct Hub {
    files: Arc<BTreeMap<String, Vec<u8>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

fn files_under(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

async fn listing(
    State(hub): State<Hub>,
    UrlPath((org, name, revision)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("none").to_string();
    hub.requests.lock().unwrap().push(format!("list {org}/{name}@{revision} auth={auth}"));
    if format!("{org}/{name}") != REPO || !(revision == "main" || revision == COMMIT) {
        return (StatusCode::NOT_FOUND, "Repository not found").into_response();
    }
    let siblings: Vec<Value> = hub.files.keys().map(|name| json!({ "rfilename": name })).collect();
    axum::Json(json!({ "id": REPO, "sha": COMMIT, "siblings": siblings })).into_response()
}

/// `GET /{org}/{name}/resolve/{revision}/{file}` with `Range: bytes=start-[end]`, as the hub
/// answers it: 206 with `Content-Range`, the commit in `x-repo-commit`, and an `ETag`.
async fn resolve(
    State(hub): State<Hub>,
    UrlPath((org, name, revision, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    hub.requests.lock().unwrap().push(format!("get {file} {range}"));
    let Some(bytes) = hub.files.get(&file).filter(|_| format!("{org}/{name}") == REPO) else {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    if !(revision == "main" || revision == COMMIT) {
        return (StatusCode::NOT_FOUND, "Revision not found").into_response();
    }
    let size = bytes.len();
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((start, end)) => {
            let start: usize = start.parse().unwrap();
            let end = if end.is_empty() { size.saturating_sub(1) } else { end.parse().unwrap() };
            (start, end.min(size.saturating_sub(1)))
        }
        None => (0, size.saturating_sub(1)),
    };
    let body = if size == 0 { Vec::new() } else { bytes[start..=end].to_vec() };
    let mut response = (StatusCode::PARTIAL_CONTENT, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")).unwrap());
    headers.insert("x-repo-commit", HeaderValue::from_static(COMMIT));
    let etag = format!("\"{:016x}{:08x}\"", fxhash(bytes), size);
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).unwrap());
    response
}

/// A content hash for the ETag (any stable hash does; the hub uses the git or LFS hash).
fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

async fn start_hub() -> (String, Hub, tokio::task::JoinHandle<()>) {
    let folder = common::repo().join("models/all-minilm-l6-v2");
    assert!(folder.join("model.safetensors").is_file(), "run models/fetch-models.sh first");
    let hub = Hub { files: Arc::new(files_under(&folder)), requests: Arc::new(Mutex::new(Vec::new())) };
    let app = Router::new()
        .route("/api/models/{org}/{name}/revision/{revision}", get(listing))
        .route("/{org}/{name}/resolve/{revision}/{*file}", get(resolve))
        .with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, hub, task)
}

fn model(source: &str) -> String {
    format!("[[models]]\nname = \"minilm\"\nkind = \"embedding\"\npath = \"{source}\"\n")
}

async fn embed(server: &Server) -> Vec<f32> {
    let response =
        server.post_json("/v1/embeddings", &json!({ "model": "minilm", "input": "Hello from the hub." })).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["data"][0]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

async fn wait_ready(server: &Server) {
    let started = Instant::now();
    while server.get("/v2/health/ready").await.status() != 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "not ready:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn(source: &str, env: &[(&str, &str)]) -> Server {
    Server::spawn_with_env(&model(source), "", &[], env)
}

#[tokio::test]
async fn models_load_from_the_hub_and_then_offline_from_its_cache() {
    let (url, hub, task) = start_hub().await;
    let cache = tempfile::tempdir().unwrap();
    let home = cache.path().to_str().unwrap().to_string();

    // Online: the listing, then each file the model needs, fetched into the cache.
    let env = [("HF_ENDPOINT", url.as_str()), ("HF_HOME", home.as_str()), ("HF_TOKEN", "hf_test_token")];
    let mut server = spawn(&format!("hf:{REPO}"), &env);
    server.wait_listening().await;
    wait_ready(&server).await;
    let online = embed(&server).await;
    assert_eq!(online.len(), 384);
    let requests = hub.requests.lock().unwrap().clone();
    assert!(
        requests.iter().any(|r| r.starts_with("list ") && r.ends_with("auth=Bearer hf_test_token")),
        "{requests:?}"
    );
    assert!(requests.iter().any(|r| r.starts_with("get model.safetensors")), "{requests:?}");
    let cached: PathBuf = cache.path().join("hub/models--sentence-transformers--all-MiniLM-L6-v2");
    assert!(cached.join("snapshots").join(COMMIT).join("model.safetensors").exists());
    drop(server);

    // A pinned revision that the hub does not have is a clear load failure, not a crash.
    let mut server = spawn(&format!("hf:{REPO}@v9"), &[("HF_ENDPOINT", &url), ("HF_HOME", &home)]);
    server.wait_listening().await;
    let started = Instant::now();
    let reason = loop {
        let body: Value = server.get("/v2/health/ready").await.json().await.unwrap();
        let state = body["models"]["minilm"].as_str().unwrap().to_string();
        if state != "loading" {
            break state;
        }
        assert!(started.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("failed") && reason.contains("@v9"), "{reason}");
    drop(server);

    // Offline, with the hub gone: the same model from the cache alone.
    task.abort();
    let mut server = spawn(&format!("hf:{REPO}"), &[("HF_HUB_OFFLINE", "1"), ("HF_HOME", &home)]);
    server.wait_listening().await;
    wait_ready(&server).await;
    let offline = embed(&server).await;
    assert_eq!(online, offline);
}
