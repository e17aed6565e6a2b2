//! GPU utilisation and memory per device, read through NVML (the library behind `nvidia-smi`)
//! at each scrape. Built with the `nvml` feature (part of `cuda`); NVML is loaded at run time,
//! so where it is absent (a machine without NVIDIA's driver) the GPU metrics are simply not
//! exported.

use prometheus::{GaugeVec, Registry};

/// The GPU gauges and the NVML handle that fills them.
pub(crate) struct GpuMetrics {
    #[cfg(feature = "nvml")]
    nvml: nvml_wrapper::Nvml,
    utilization: GaugeVec,
    memory_used: GaugeVec,
    memory_total: GaugeVec,
}

impl GpuMetrics {
    /// The gauges, registered in `registry`, when NVML can be opened; otherwise `None`.
    pub(crate) fn open(registry: &Registry) -> Option<Self> {
        #[cfg(feature = "nvml")]
        let nvml = match nvml_wrapper::Nvml::init() {
            Ok(nvml) => nvml,
            Err(err) => {
                tracing::info!(%err, "NVML not available; GPU metrics are not exported");
                return None;
            }
        };
        #[cfg(not(feature = "nvml"))]
        {
            let _ = registry;
            None
        }
        #[cfg(feature = "nvml")]
        {
            let gauge = |name: &str, help: &str| GaugeVec::new(prometheus::Opts::new(name, help), &["device"]).ok();
            let metrics = Self {
                nvml,
                utilization: gauge(
                    "inferd_gpu_utilization_ratio",
                    "Fraction of the last sample period in which a kernel ran on the GPU (NVML), 0 to 1.",
                )?,
                memory_used: gauge("inferd_gpu_memory_used_bytes", "GPU memory in use, all processes (NVML).")?,
                memory_total: gauge("inferd_gpu_memory_total_bytes", "GPU memory installed (NVML).")?,
            };
            for gauge in [&metrics.utilization, &metrics.memory_used, &metrics.memory_total] {
                registry.register(Box::new(gauge.clone())).ok()?;
            }
            Some(metrics)
        }
    }

    /// Reads every device's current figures into the gauges.
    pub(crate) fn refresh(&self) {
        #[cfg(feature = "nvml")]
        {
            let count = self.nvml.device_count().unwrap_or(0);
            for index in 0..count {
                let Ok(device) = self.nvml.device_by_index(index) else { continue };
                let label = format!("cuda:{index}");
                if let Ok(rates) = device.utilization_rates() {
                    self.utilization.with_label_values(&[&label]).set(f64::from(rates.gpu) / 100.0);
                }
                if let Ok(memory) = device.memory_info() {
                    self.memory_used.with_label_values(&[&label]).set(memory.used as f64);
                    self.memory_total.with_label_values(&[&label]).set(memory.total as f64);
                }
            }
        }
        #[cfg(not(feature = "nvml"))]
        let _ = (&self.utilization, &self.memory_used, &self.memory_total);
    }
}
