//! Reading what `cargo bench` measured: criterion's own files under `target/criterion`, and the
//! manifest inferd's benchmark suite writes beside them (the machine, the devices it opened and
//! those it skipped, and the benchmarks it ran).
//!
//! Benchmark ids are `family/model/device/batch`: `trees/breast-cancer-xgboost/cpu/64`,
//! `embeddings-short/all-minilm-l6-v2/cuda:0+f32/32`, `decode-short/smollm2-135m-instruct/cpu/8`.
//! The device is the one the server would use with its default engine there, or
//! `device+variant` for another engine or precision on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::host::Host;

/// The manifest's file name, in criterion's output folder.
pub const MANIFEST: &str = "inferd-suite.json";
/// The version of the manifest; readers refuse other versions.
pub const MANIFEST_FORMAT: u32 = 1;

/// One run of the benchmark suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteRun {
    /// When it started (RFC 3339, UTC).
    pub started: String,
    /// Whether it ran in quick mode (`INFERD_BENCH_QUICK=1`: fewer sizes, shorter measurements).
    pub quick: bool,
    /// The machine, with the GPUs the suite opened.
    pub host: Host,
    /// Threads the CPU engines computed on.
    pub cpu_threads: usize,
    /// The vector instruction level the CPU kernels used (`avx2`, `avx512`; see `INFERD_CPU`),
    /// when the run recorded it.
    #[serde(default)]
    pub cpu_kernels: Option<String>,
    /// Why GPU groups were skipped, when they were (no `cuda` feature, no device).
    pub gpu_skipped: Option<String>,
}

/// The suite's manifest: the runs whose results criterion's folder still holds, and for each
/// benchmark the run that measured its latest result. A run filtered to some benchmarks
/// (`cargo bench -- trees/`) replaces those and leaves the others' provenance as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The runs.
    pub runs: Vec<SuiteRun>,
    /// Benchmark id → index into `runs`.
    pub benchmarks: BTreeMap<String, usize>,
}

impl Manifest {
    /// The manifest in `folder`, or an empty one when there is none (or one of another format).
    pub fn load_or_empty(folder: &Path) -> Self {
        let empty = Self { format: MANIFEST_FORMAT, runs: Vec::new(), benchmarks: BTreeMap::new() };
        let Ok(value) = read_json(&folder.join(MANIFEST)) else { return empty };
        serde_json::from_value::<Self>(value)
            .ok()
            .filter(|manifest| manifest.format == MANIFEST_FORMAT)
            .unwrap_or(empty)
    }

    /// Records `run` as the source of `measured` (the ids it ran), then drops runs no benchmark
    /// points at any more.
    pub fn record(&mut self, run: SuiteRun, measured: impl IntoIterator<Item = String>) {
        self.runs.push(run);
        let latest = self.runs.len() - 1;
        for id in measured {
            self.benchmarks.insert(id, latest);
        }
        let used: BTreeSet<usize> = self.benchmarks.values().copied().collect();
        let renumber: BTreeMap<usize, usize> = used.iter().enumerate().map(|(new, &old)| (old, new)).collect();
        self.runs = used.iter().map(|&index| self.runs[index].clone()).collect();
        for index in self.benchmarks.values_mut() {
            *index = renumber[index];
        }
    }

    /// Writes it into `folder`.
    pub fn save(&self, folder: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(folder)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(folder.join(MANIFEST), json + "\n")
    }
}

/// The `new/` folders under criterion's `folder`: criterion keeps each benchmark's latest
/// result there (`benchmark.json`, `estimates.json`), the one before in `base/`.
fn latest_results(folder: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if path.file_name().is_some_and(|name| name == "new") {
                found.push(path);
            } else if path.file_name().is_none_or(|name| name != "base" && name != "report") {
                pending.push(path);
            }
        }
    }
    found
}

/// Every result criterion's `folder` holds: (full id, when its latest estimate was written).
pub fn scan(folder: &Path) -> Vec<(String, std::time::SystemTime)> {
    latest_results(folder)
        .into_iter()
        .filter_map(|new| {
            let written = std::fs::metadata(new.join("estimates.json")).and_then(|m| m.modified()).ok()?;
            let benchmark = read_json(&new.join("benchmark.json")).ok()?;
            Some((benchmark.get("full_id")?.as_str()?.to_string(), written))
        })
        .collect()
}

/// Input lengths of the suite's text families, in tokens: `(family, tokens)`. For embeddings the
/// tokens per text (special tokens included), for prefill the prompt, for decode the context
/// each sequence holds when the timed step runs.
pub const TEXT_FAMILIES: &[(&str, usize)] = &[
    ("embeddings-short", 12),
    ("embeddings-medium", 128),
    ("prefill-short", 32),
    ("prefill-medium", 256),
    ("decode-short", 60),
    ("decode-medium", 250),
];

/// The token length of a text family (see [`TEXT_FAMILIES`]).
pub fn family_tokens(family: &str) -> Option<usize> {
    TEXT_FAMILIES.iter().find(|(name, _)| *name == family).map(|&(_, tokens)| tokens)
}

/// A benchmark id's parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BenchId {
    /// `linear`, `trees`, `embeddings-short`, `prefill-medium`, `decode-short`, ...
    pub family: String,
    /// The model, named as the bundled configuration names it.
    pub model: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Another engine or precision than the device's default (`tensor-f32`, `f32`).
    pub variant: Option<String>,
    /// Rows, texts or sequences per call.
    pub batch: usize,
}

impl BenchId {
    /// The parts of `family/model/device[+variant]/batch`; `None` for ids of another shape.
    pub fn parse(id: &str) -> Option<Self> {
        let parts: Vec<&str> = id.split('/').collect();
        let [family, model, device, batch] = parts[..] else { return None };
        let (device, variant) = match device.split_once('+') {
            Some((device, variant)) => (device, Some(variant.to_string())),
            None => (device, None),
        };
        Some(Self {
            family: family.to_string(),
            model: model.to_string(),
            device: device.to_string(),
            variant,
            batch: batch.parse().ok()?,
        })
    }

    /// The id as criterion shows it.
    pub fn render(&self) -> String {
        let device = match &self.variant {
            Some(variant) => format!("{}+{variant}", self.device),
            None => self.device.clone(),
        };
        format!("{}/{}/{device}/{}", self.family, self.model, self.batch)
    }

    /// Whether it ran on a GPU.
    pub fn on_gpu(&self) -> bool {
        self.device.starts_with("cuda")
    }
}

/// One benchmark's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Its id.
    pub id: BenchId,
    /// Seconds per call: criterion's slope estimate where it has one, else its mean.
    pub seconds: f64,
    /// Elements (rows, texts, tokens) per call, as the benchmark declared its throughput.
    pub elements: Option<u64>,
}

impl Measured {
    /// Elements per second, when the benchmark declared a throughput.
    pub fn per_second(&self) -> Option<f64> {
        self.elements.map(|elements| elements as f64 / self.seconds)
    }
}

/// A suite's results, each with the run that measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct CriterionResults {
    /// The runs.
    pub runs: Vec<SuiteRun>,
    /// The results, with the index of their run.
    pub measured: Vec<(Measured, usize)>,
}

/// Why criterion's results cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CriterionError {
    /// No manifest: the folder was not written by inferd's suite.
    #[error(
        "{0} has no {MANIFEST}: run `cargo bench` (inferd's suite writes it) or point at the folder criterion wrote"
    )]
    NoManifest(PathBuf),
    /// A file cannot be read or parsed.
    #[error("cannot read {path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Where criterion writes for a target folder: `$CRITERION_HOME`, else `<target>/criterion`.
pub fn output_folder(target: &Path) -> PathBuf {
    std::env::var_os("CRITERION_HOME").map(PathBuf::from).unwrap_or_else(|| target.join("criterion"))
}

/// Where `cargo bench` run from the current folder writes: [`output_folder`] of
/// `$CARGO_TARGET_DIR`, else of `target`.
pub fn default_folder() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    output_folder(&target)
}

fn read_json(path: &Path) -> Result<Value, CriterionError> {
    let unreadable = |reason: String| CriterionError::Unreadable { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|err| unreadable(err.to_string()))?;
    serde_json::from_str(&text).map_err(|err| unreadable(err.to_string()))
}

/// Reads the suite's manifest in `folder` and the results of the benchmarks it lists.
pub fn read(folder: &Path) -> Result<CriterionResults, CriterionError> {
    let path = folder.join(MANIFEST);
    if !path.is_file() {
        return Err(CriterionError::NoManifest(folder.to_path_buf()));
    }
    let manifest: Manifest = serde_json::from_value(read_json(&path)?)
        .map_err(|err| CriterionError::Unreadable { path: path.clone(), reason: err.to_string() })?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(CriterionError::Unreadable {
            path,
            reason: format!("format {} (this inferd reads {MANIFEST_FORMAT})", manifest.format),
        });
    }
    let mut measured = Vec::new();
    for new in latest_results(folder) {
        if let Some(result) = read_result(&new, &manifest)? {
            measured.push(result);
        }
    }
    measured.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    Ok(CriterionResults { runs: manifest.runs, measured })
}

fn read_result(new: &Path, manifest: &Manifest) -> Result<Option<(Measured, usize)>, CriterionError> {
    let (benchmark, estimates) = (new.join("benchmark.json"), new.join("estimates.json"));
    if !benchmark.is_file() || !estimates.is_file() {
        return Ok(None);
    }
    let benchmark = read_json(&benchmark)?;
    let Some(full_id) = benchmark.get("full_id").and_then(Value::as_str) else { return Ok(None) };
    let Some(&run) = manifest.benchmarks.get(full_id).filter(|&&run| run < manifest.runs.len()) else {
        return Ok(None);
    };
    let Some(id) = BenchId::parse(full_id) else { return Ok(None) };
    let estimates = read_json(&estimates)?;
    let nanoseconds = ["slope", "mean"]
        .iter()
        .find_map(|name| estimates.pointer(&format!("/{name}/point_estimate")).and_then(Value::as_f64))
        .filter(|ns| ns.is_finite() && *ns > 0.0);
    let Some(nanoseconds) = nanoseconds else { return Ok(None) };
    let elements = benchmark.pointer("/throughput/Elements").and_then(Value::as_u64);
    Ok(Some((Measured { id, seconds: nanoseconds * 1e-9, elements }, run)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_four_parts_and_an_optional_variant() {
        let id = BenchId::parse("embeddings-short/all-minilm-l6-v2/cuda:0+f32/32").unwrap();
        assert_eq!(
            (id.family.as_str(), id.device.as_str(), id.variant.as_deref(), id.batch),
            ("embeddings-short", "cuda:0", Some("f32"), 32)
        );
        assert!(id.on_gpu());
        assert_eq!(id.render(), "embeddings-short/all-minilm-l6-v2/cuda:0+f32/32");
        assert!(BenchId::parse("kernels/q4_1/cpu/rows/1").is_none());
        assert!(BenchId::parse("trees/m/cpu/many").is_none());
    }

    fn run(started: &str) -> SuiteRun {
        SuiteRun {
            started: started.into(),
            quick: true,
            host: Host::from_proc("", "", 2),
            cpu_threads: 2,
            cpu_kernels: None,
            gpu_skipped: Some("no GPU".into()),
        }
    }

    #[test]
    fn reads_the_results_the_manifest_lists_with_their_runs() {
        let dir = tempfile::tempdir().unwrap();
        let write = |id: &str, sub: &str, ns: f64, elements: u64| {
            let new = dir.path().join(sub).join("new");
            std::fs::create_dir_all(&new).unwrap();
            std::fs::write(
                new.join("benchmark.json"),
                serde_json::json!({"full_id": id, "throughput": {"Elements": elements}}).to_string(),
            )
            .unwrap();
            std::fs::write(
                new.join("estimates.json"),
                serde_json::json!({"mean": {"point_estimate": ns * 1.1}, "slope": {"point_estimate": ns}}).to_string(),
            )
            .unwrap();
        };
        write("trees/m/cpu/64", "trees_m/cpu/64", 2_000.0, 64);
        write("trees/m/cpu/1", "trees_m/cpu/1", 100.0, 1);
        write("trees/unlisted/cpu/1", "trees_unlisted/cpu/1", 100.0, 1);
        assert!(matches!(read(dir.path()), Err(CriterionError::NoManifest(_))));
        assert_eq!(scan(dir.path()).len(), 3);

        let mut manifest = Manifest::load_or_empty(dir.path());
        manifest.record(run("2026-12-01T00:00:00Z"), ["trees/m/cpu/64".to_string(), "trees/m/cpu/1".to_string()]);
        // A later run of one benchmark takes it over; the first run keeps the other.
        manifest.record(run("2026-12-02T00:00:00Z"), ["trees/m/cpu/1".to_string()]);
        manifest.save(dir.path()).unwrap();
        let results = read(dir.path()).unwrap();
        assert_eq!(results.runs.len(), 2);
        assert_eq!(results.measured.len(), 2, "{:?}", results.measured);
        let (batch64, run64) = results.measured.iter().find(|(m, _)| m.id.batch == 64).unwrap();
        let (_, run1) = results.measured.iter().find(|(m, _)| m.id.batch == 1).unwrap();
        assert_eq!(results.runs[*run64].started, "2026-12-01T00:00:00Z");
        assert_eq!(results.runs[*run1].started, "2026-12-02T00:00:00Z");
        assert!((batch64.seconds - 2e-6).abs() < 1e-15);
        assert!((batch64.per_second().unwrap() - 32e6).abs() < 1e-3);

        // A run that takes over every benchmark leaves one run.
        let mut manifest = Manifest::load_or_empty(dir.path());
        manifest.record(run("2026-12-03T00:00:00Z"), ["trees/m/cpu/64".to_string(), "trees/m/cpu/1".to_string()]);
        assert_eq!(manifest.runs.len(), 1);
        assert!(manifest.benchmarks.values().all(|&run| run == 0));
    }
}
