//! The machine a measurement was taken on: its CPU (model, vector instruction set, vCPUs), its
//! memory and its GPUs. Every benchmark run and load test records one, so that the advisor knows
//! what a figure speaks for (a measurement on AVX2 does not speak for AVX-512, nor the reverse).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The widest vector instruction set family a CPU offers, as far as inferd's kernels care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    /// x86-64 with AVX2 and FMA, no AVX-512 (AMD EPYC Milan and older, Intel before Ice Lake).
    Avx2,
    /// x86-64 with AVX-512 F/BW/VL (Intel Ice Lake and later, AMD EPYC Genoa and later).
    Avx512,
    /// Anything else (an older x86-64, or another architecture).
    Other,
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Avx2 => "AVX2",
            Self::Avx512 => "AVX-512",
            Self::Other => "other",
        })
    }
}

impl Isa {
    /// The family of a CPU with these `/proc/cpuinfo` flags.
    pub fn from_flags<'a>(flags: impl IntoIterator<Item = &'a str> + Clone) -> Self {
        let has = |name: &str| flags.clone().into_iter().any(|flag| flag == name);
        if has("avx512f") && has("avx512bw") && has("avx512vl") {
            Self::Avx512
        } else if has("avx2") && has("fma") {
            Self::Avx2
        } else {
            Self::Other
        }
    }
}

/// One GPU a benchmark could open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    /// How inferd names it: `cuda:0`.
    pub device: String,
    /// The product name the driver reports (`NVIDIA A10`, `Tesla T4`), when known.
    pub name: Option<String>,
}

/// A machine that measurements come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// The CPU's model name (`AMD EPYC 7763 64-Core Processor`).
    pub cpu: String,
    /// Its vector instruction set family.
    pub isa: Isa,
    /// The instruction set extensions beyond the family that matter for inference kernels
    /// (`avx512_vnni`, `avx512_bf16`, `amx_int8`, ...), as the CPU reports them.
    #[serde(default)]
    pub cpu_extensions: Vec<String>,
    /// Logical CPUs this process may run on.
    pub vcpus: usize,
    /// Installed memory, GiB.
    pub memory_gib: f64,
    /// The GPUs the measuring program opened (none for a CPU-only run).
    #[serde(default)]
    pub gpus: Vec<Gpu>,
}

/// Extensions worth naming in a report, in the order they are listed.
const NOTABLE: &[&str] =
    &["avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "sve", "sve2"];

impl Host {
    /// This machine, read from `/proc/cpuinfo` and `/proc/meminfo` (on other systems the CPU is
    /// `unknown` and the memory 0), with no GPUs: callers add the ones they opened.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let vcpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        Self::from_proc(&cpuinfo, &meminfo, vcpus)
    }

    /// The host described by the text of `/proc/cpuinfo` and `/proc/meminfo`.
    pub fn from_proc(cpuinfo: &str, meminfo: &str, vcpus: usize) -> Self {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
        };
        let flags = field("flags").or_else(|| field("Features")).unwrap_or_default();
        let flags: Vec<&str> = flags.split_whitespace().collect();
        let cpu = field("model name").or_else(|| field("CPU part")).unwrap_or_else(|| "unknown".to_string());
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpu,
            isa: Isa::from_flags(flags.iter().copied()),
            cpu_extensions: NOTABLE.iter().filter(|name| flags.contains(name)).map(|name| name.to_string()).collect(),
            vcpus,
            memory_gib: (memory_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            gpus: Vec::new(),
        }
    }

    /// One line for report headers: `AMD EPYC 7763 (AVX2), 2 vCPUs, 24 GiB, no GPU`.
    pub fn summary(&self) -> String {
        let gpus = if self.gpus.is_empty() {
            "no GPU".to_string()
        } else {
            self.gpus
                .iter()
                .map(|gpu| format!("{} {}", gpu.device, gpu.name.as_deref().unwrap_or("(unnamed GPU)")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let extensions =
            if self.cpu_extensions.is_empty() { String::new() } else { format!(", {}", self.cpu_extensions.join(" ")) };
        format!("{} ({}{extensions}), {} vCPUs, {} GiB, {gpus}", self.cpu, self.isa, self.vcpus, self.memory_gib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cpu_family_and_memory() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core Processor\n\
                       flags\t\t: fpu sse2 avx2 fma bmi2\n\nprocessor\t: 1\n";
        let host = Host::from_proc(cpuinfo, "MemTotal:       24567808 kB\nMemFree: 1 kB\n", 2);
        assert_eq!(host.cpu, "AMD EPYC 7763 64-Core Processor");
        assert_eq!(host.isa, Isa::Avx2);
        assert_eq!(host.vcpus, 2);
        assert!((host.memory_gib - 23.4).abs() < 1e-9, "{}", host.memory_gib);
        assert!(host.cpu_extensions.is_empty());
        assert_eq!(host.summary(), "AMD EPYC 7763 64-Core Processor (AVX2), 2 vCPUs, 23.4 GiB, no GPU");
    }

    #[test]
    fn avx512_needs_its_three_core_subsets() {
        assert_eq!(Isa::from_flags("avx2 fma avx512f avx512bw avx512vl".split(' ')), Isa::Avx512);
        assert_eq!(Isa::from_flags("avx2 fma avx512f".split(' ')), Isa::Avx2);
        assert_eq!(Isa::from_flags("sse2".split(' ')), Isa::Other);
        let host = Host::from_proc("flags : avx2 fma avx512f avx512bw avx512vl avx512_vnni amx_int8\n", "", 2);
        assert_eq!(host.cpu_extensions, ["avx512_vnni", "amx_int8"]);
    }
}
