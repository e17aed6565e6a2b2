//! What every family's benchmarks share: quick mode, the devices to run on (and why GPUs were
//! skipped), benchmark ids, and the manifest that `inferd advise` reads beside criterion's files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkGroup, SamplingMode, measurement::WallTime};
use inferd::advise::criterion::{MANIFEST, Manifest, SuiteRun, scan};
use inferd::advise::host::{Gpu, Host};
use inferd::core::{Device, DeviceSpec, cuda_device_name};

/// One device the suite runs on.
pub struct BenchDevice {
    /// `cpu` or `cuda:N`.
    pub name: String,
    pub device: Device,
}

impl BenchDevice {
    pub fn is_gpu(&self) -> bool {
        !self.device.is_cpu()
    }
}

/// The run's settings, devices and the ids it measured.
pub struct Suite {
    pub quick: bool,
    pub devices: Vec<BenchDevice>,
    gpu_skipped: Option<String>,
    host: Host,
    started: String,
    ids: Vec<String>,
}

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

impl Suite {
    /// Reads quick mode from `INFERD_BENCH_QUICK`, opens the CPU and every CUDA device this
    /// build and machine have, and says on stderr which GPU groups are skipped and why.
    pub fn start() -> Self {
        let quick = std::env::var("INFERD_BENCH_QUICK").is_ok_and(|value| !value.is_empty() && value != "0");
        let mut devices = vec![BenchDevice { name: "cpu".into(), device: Device::Cpu }];
        let mut host = Host::detect();
        let mut gpu_skipped = None;
        for ordinal in 0.. {
            match DeviceSpec::Cuda(ordinal).resolve() {
                Ok(device) => {
                    let name = format!("cuda:{ordinal}");
                    host.gpus.push(Gpu { device: name.clone(), name: cuda_device_name(ordinal) });
                    devices.push(BenchDevice { name, device });
                }
                Err(err) => {
                    if ordinal == 0 {
                        gpu_skipped = Some(err.to_string());
                    }
                    break;
                }
            }
        }
        eprintln!(
            "inferd bench suite on {}; CPU kernels: {}{}",
            host.summary(),
            inferd::core::cpu_level(),
            if quick { " (quick mode)" } else { "" }
        );
        if let Some(reason) = &gpu_skipped {
            eprintln!("GPU groups skipped: {reason}");
        }
        let started = inferd::advise::now_rfc3339();
        Self { quick, devices, gpu_skipped, host, started, ids: Vec::new() }
    }

    /// Timing settings for a group whose calls take about `call` each: short in quick mode;
    /// flat sampling for slow calls, so that ten samples need only ten calls.
    pub fn configure(&self, group: &mut BenchmarkGroup<'_, WallTime>, call: Duration) {
        group.sample_size(10);
        if self.quick {
            group.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        } else {
            group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
        }
        if call >= Duration::from_millis(20) {
            group.sampling_mode(SamplingMode::Flat);
        }
    }

    /// Records `family/model/device/batch` as measured and returns the group and function ids
    /// criterion takes (`family/model` and `device`); the batch is the benchmark's parameter.
    pub fn id(&mut self, family: &str, model: &str, device: &str, batch: usize) -> (String, String) {
        self.ids.push(format!("{family}/{model}/{device}/{batch}"));
        (format!("{family}/{model}"), device.to_string())
    }

    /// Records in the manifest beside criterion's files the benchmarks this run measured (in
    /// `cargo bench` runs only: not when `cargo test` runs each benchmark once, nor for
    /// `--list`), and repeats what was skipped.
    pub fn finish(self) {
        if let Some(reason) = &self.gpu_skipped {
            eprintln!("GPU groups skipped: {reason}");
        }
        let args: Vec<String> = std::env::args().collect();
        if !args.iter().any(|arg| arg == "--bench") || args.iter().any(|arg| arg == "--list") {
            return;
        }
        let folder = criterion_folder();
        // The benchmarks a filter (`cargo bench -- trees/`) left out keep their older results.
        let since = humantime_serde::re::humantime::parse_rfc3339(&self.started)
            .map(|started| started - Duration::from_secs(1))
            .unwrap_or(std::time::UNIX_EPOCH);
        let fresh: std::collections::BTreeSet<String> =
            scan(&folder).into_iter().filter(|(_, written)| *written >= since).map(|(id, _)| id).collect();
        let measured: Vec<String> = self.ids.into_iter().filter(|id| fresh.contains(id)).collect();
        let run = SuiteRun {
            started: self.started,
            quick: self.quick,
            host: self.host,
            cpu_threads: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
            cpu_kernels: Some(inferd::core::cpu_level().to_string()),
            gpu_skipped: self.gpu_skipped,
        };
        let mut manifest = Manifest::load_or_empty(&folder);
        let count = measured.len();
        manifest.record(run, measured);
        match manifest.save(&folder) {
            Ok(()) => eprintln!("recorded {count} results in {}", folder.join(MANIFEST).display()),
            Err(err) => eprintln!("cannot write {}: {err}", folder.join(MANIFEST).display()),
        }
    }
}

/// criterion's output folder: `$CRITERION_HOME`, else `criterion` in the target folder (this
/// benchmark runs from `<target>/<profile>/deps/`).
fn criterion_folder() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
            .unwrap_or_else(|| root().join("target"))
    });
    inferd::advise::criterion::output_folder(&target)
}
