//! Where a model runs: parsing a device request (`auto`, `cpu`, `cuda`, `cuda:N`) and resolving
//! it against what this build and this machine have.

use std::fmt;
use std::str::FromStr;

pub use candle_core::Device;

/// A requested device, as written in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    /// CUDA device 0 when this build has the `cuda` feature and a GPU answers, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device with this ordinal (`cuda` means `cuda:0`).
    Cuda(usize),
}

/// Why a device request cannot be met.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The text is not a device name.
    #[error("unknown device '{0}': expected auto, cpu, cuda or cuda:N")]
    Unknown(String),
    /// CUDA was asked for, but this binary was built without the `cuda` feature.
    #[error("device {0} requested, but this build of inferd has no CUDA support (build with `--features cuda`)")]
    CudaNotBuilt(DeviceSpec),
    /// CUDA was asked for, but the device could not be opened (no GPU, no driver, bad ordinal).
    #[error("device {spec} is not available: {reason}")]
    CudaUnavailable {
        /// The device asked for.
        spec: DeviceSpec,
        /// What the CUDA runtime said.
        reason: String,
    },
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim().to_ascii_lowercase();
        match text.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Unknown(s.to_string())),
        }
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl DeviceSpec {
    /// Opens the requested device. `Auto` never fails: it falls back to the CPU when no CUDA
    /// device can be opened. (A `cuda` build links the CUDA driver and libraries dynamically:
    /// on a host without them the process does not start at all, so there is nothing to fall
    /// back from; ship CUDA builds only where a driver is installed.)
    pub fn resolve(self) -> Result<Device, DeviceError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => open_cuda(ordinal).map_err(|reason| {
                if cfg!(feature = "cuda") {
                    DeviceError::CudaUnavailable { spec: self, reason }
                } else {
                    DeviceError::CudaNotBuilt(self)
                }
            }),
            Self::Auto => match open_cuda(0) {
                Ok(device) => Ok(device),
                Err(reason) => {
                    if cfg!(feature = "cuda") {
                        tracing::info!(%reason, "device auto: no usable CUDA device, using the CPU");
                    }
                    Ok(Device::Cpu)
                }
            },
        }
    }
}

/// The name of a resolved device as users write it: `cpu` or `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The product name the NVIDIA driver reports for CUDA device `ordinal` (`NVIDIA A10`, `Tesla
/// T4`), read through NVML; `None` in builds without the `nvml` feature (part of `cuda`) or where
/// NVML cannot be opened. Benchmarks and reports use it to say which GPU a figure comes from.
pub fn cuda_device_name(ordinal: usize) -> Option<String> {
    #[cfg(feature = "nvml")]
    {
        let nvml = nvml_wrapper::Nvml::init().ok()?;
        let index = u32::try_from(ordinal).ok()?;
        nvml.device_by_index(index).ok()?.name().ok()
    }
    #[cfg(not(feature = "nvml"))]
    {
        let _ = ordinal;
        None
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device, String> {
    // Opening a device goes through the driver API; guard against a panic in the bindings so
    // that a broken driver is a start-up error, not a crash.
    match std::panic::catch_unwind(|| Device::new_cuda(ordinal)) {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("the CUDA driver panicked while opening the device".to_string()),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<Device, String> {
    Err("this build has no CUDA support".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!(matches!("cuda:x".parse::<DeviceSpec>(), Err(DeviceError::Unknown(_))));
        assert!(matches!("tpu".parse::<DeviceSpec>(), Err(DeviceError::Unknown(_))));
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn auto_and_cpu_resolve_here() {
        assert_eq!(device_name(&DeviceSpec::Cpu.resolve().unwrap()), "cpu");
        // Auto always yields some device.
        assert!(DeviceSpec::Auto.resolve().is_ok());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_on_a_cpu_build_is_a_clear_error() {
        let err = DeviceSpec::Cuda(0).resolve().unwrap_err();
        assert_eq!(err, DeviceError::CudaNotBuilt(DeviceSpec::Cuda(0)));
        assert!(err.to_string().contains("--features cuda"));
    }
}
