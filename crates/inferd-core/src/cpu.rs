//! Which vector instructions the CPU kernels use, chosen once per process: the widest level the
//! CPU offers, or a lower one asked for with `INFERD_CPU` (`avx2`, `avx512`), so that both paths
//! can be tested on an AVX-512 machine and users can pin behaviour. A level the CPU lacks is never
//! chosen, whatever is asked, and neither is one below the build's baseline (an x86-64 build's
//! kernels are AVX2 at least, so there `portable` gives `avx2`).
//!
//! Builds target `x86-64-v3` (AVX2, FMA): [`CpuLevel::Avx2`] is the baseline, and the
//! [`CpuLevel::Avx512`] kernels are compiled beside it and chosen at start on CPUs with
//! AVX-512 F, BW, VL and VNNI (Intel Ice Lake and later, AMD EPYC Genoa and later).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// A level of vector instructions the kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuLevel {
    /// No x86 vector kernels: portable Rust, which the compiler vectorises for the target (the
    /// level of builds for other architectures, such as aarch64).
    Portable,
    /// AVX2 and FMA, 256-bit vectors.
    Avx2,
    /// AVX-512 F, BW, VL and VNNI, 512-bit vectors and 8-bit dot products.
    Avx512,
}

impl fmt::Display for CpuLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        })
    }
}

impl FromStr for CpuLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" => Ok(Self::Portable),
            "avx2" => Ok(Self::Avx2),
            "avx512" | "avx-512" => Ok(Self::Avx512),
            other => Err(format!("unknown CPU level '{other}': expected portable, avx2 or avx512")),
        }
    }
}

/// Threads a native engine uses for one batch unless its model sets `threads`: candle's
/// default (`RAYON_NUM_THREADS` when set, else one per physical core of the CPUs this process
/// may run on), but never more than the CPUs it may use, which in a container is its CPU
/// quota (a Kubernetes CPU limit); more threads than that are throttled, not faster.
pub fn default_threads() -> usize {
    let preferred = candle_core::utils::get_num_threads();
    let allowed = std::thread::available_parallelism().map_or(preferred, usize::from);
    preferred.min(allowed).max(1)
}

/// The widest level this CPU offers.
pub fn detected() -> CpuLevel {
    #[cfg(target_arch = "x86_64")]
    {
        let has = |avx512: bool| {
            if avx512 {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            } else {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
            }
        };
        if has(true) {
            return CpuLevel::Avx512;
        }
        if has(false) {
            return CpuLevel::Avx2;
        }
    }
    CpuLevel::Portable
}

/// The lowest level this build's kernels have: AVX2 for x86-64 (builds target x86-64-v3),
/// portable elsewhere.
pub const BASELINE: CpuLevel = if cfg!(target_arch = "x86_64") { CpuLevel::Avx2 } else { CpuLevel::Portable };

/// The level asked for (`requested`, from `INFERD_CPU`) between the build's [`BASELINE`] and
/// what the CPU offers, and a warning when the request could not be met.
pub fn choose(detected: CpuLevel, requested: Option<&str>) -> (CpuLevel, Option<String>) {
    let Some(requested) = requested.filter(|text| !text.trim().is_empty()) else { return (detected, None) };
    match requested.parse::<CpuLevel>() {
        Ok(level) if level > detected => {
            (detected, Some(format!("INFERD_CPU={level} asked for, but this CPU offers only {detected}")))
        }
        Ok(level) if level < BASELINE && BASELINE <= detected => {
            (BASELINE, Some(format!("INFERD_CPU={level} asked for, but this build's kernels are {BASELINE} at least")))
        }
        Ok(level) => (level, None),
        Err(err) => (detected, Some(format!("INFERD_CPU: {err}; using {detected}"))),
    }
}

static LEVEL: OnceLock<CpuLevel> = OnceLock::new();

/// The level the kernels use in this process: chosen on first use from the CPU and
/// `INFERD_CPU`, then fixed (a warning is logged when `INFERD_CPU` could not be honoured).
pub fn cpu_level() -> CpuLevel {
    *LEVEL.get_or_init(|| {
        let requested = std::env::var("INFERD_CPU").ok();
        let (level, warning) = choose(detected(), requested.as_deref());
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        level
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_can_lower_the_level_never_raise_it() {
        assert_eq!(choose(CpuLevel::Avx512, None), (CpuLevel::Avx512, None));
        assert_eq!(choose(CpuLevel::Avx512, Some("avx2")), (CpuLevel::Avx2, None));
        assert_eq!(choose(CpuLevel::Avx512, Some(" AVX512 ")), (CpuLevel::Avx512, None));
        let (level, warning) = choose(CpuLevel::Avx2, Some("portable"));
        if cfg!(target_arch = "x86_64") {
            assert_eq!(level, CpuLevel::Avx2);
            assert!(warning.unwrap().contains("avx2 at least"));
        } else {
            assert_eq!((level, warning), (CpuLevel::Portable, None));
        }
        assert_eq!(choose(CpuLevel::Portable, Some("portable")), (CpuLevel::Portable, None));
        let (level, warning) = choose(CpuLevel::Avx2, Some("avx512"));
        assert_eq!(level, CpuLevel::Avx2);
        assert!(warning.unwrap().contains("offers only avx2"));
        let (level, warning) = choose(CpuLevel::Avx2, Some("sse"));
        assert_eq!(level, CpuLevel::Avx2);
        assert!(warning.unwrap().contains("unknown CPU level"));
        assert!(CpuLevel::Portable < CpuLevel::Avx2 && CpuLevel::Avx2 < CpuLevel::Avx512);
    }

    #[test]
    fn the_chosen_level_is_one_this_cpu_has() {
        assert!(cpu_level() <= detected());
    }
}
