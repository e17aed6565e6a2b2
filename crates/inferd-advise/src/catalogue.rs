//! The VM catalogue: sizes (vCPUs, memory, CPU family, GPU and the fraction of it a VM gets), list
//! prices per hour for each pricing tier with their sources and dates, GPU specifications for
//! projections between GPUs, and published figures for GPUs nothing was measured on.
//!
//! The built-in catalogue (`catalogue/azure.toml`) holds Azure's CPU sizes and the T4, A10, A100
//! and H100 sizes. A user's file in the same schema is merged over it, table by table: a field
//! it gives replaces the built-in one (a region's or a discount's prices), a size it adds is
//! added, and published figures it lists are added to the built-in ones.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::host::Isa;

/// The built-in catalogue's text.
pub const BUILT_IN: &str = include_str!("../catalogue/azure.toml");

/// Where a figure comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// What it is.
    pub what: String,
    /// Where to read it.
    pub url: String,
    /// The date it states (or `not stated ...`).
    pub date: String,
}

/// What projections between GPUs need of a GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Dense FP32 TFLOPS (no tensor cores).
    pub fp32_tflops: f64,
    /// Dense FP16 tensor-core TFLOPS.
    pub fp16_tflops: f64,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Memory bandwidth, GB/s.
    pub bandwidth_gb_s: f64,
    /// A key of [`Catalogue::sources`].
    pub source: String,
}

/// A figure published for a model on a GPU (other software's, not inferd's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    /// A key of [`Catalogue::gpus`].
    pub gpu: String,
    /// The model, as workloads name it.
    pub model: String,
    /// `requests` or `tokens`.
    pub unit: String,
    /// Units per second on one whole GPU.
    pub throughput: f64,
    /// The 95th-percentile latency at that throughput, when published.
    #[serde(default, with = "humantime_serde")]
    pub latency_p95: Option<std::time::Duration>,
    /// A key of [`Catalogue::sources`].
    pub source: String,
    /// The conditions (software, precision, batch).
    pub note: String,
}

/// A price per hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// US dollars (or the catalogue's currency) per hour.
    pub usd: f64,
    /// A key of [`Catalogue::sources`].
    pub source: String,
}

/// The GPU part of a size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeGpu {
    /// A key of [`Catalogue::gpus`].
    pub model: String,
    /// GPUs per VM.
    pub count: u32,
    /// The share of each GPU the VM gets (1 for a whole GPU; NVadsA10 v5 sells 1/6, 1/3, 1/2).
    pub fraction: f64,
    /// Memory of each GPU (or of the VM's share of one) when it is not the whole GPU's.
    #[serde(default)]
    pub memory_gib: Option<f64>,
}

/// One VM size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Size {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Processor, as the provider names it.
    pub cpu: String,
    /// The CPU's vector instruction set family.
    pub isa: Isa,
    /// Whether a vCPU is a hyperthread rather than a whole core.
    pub smt: bool,
    /// The GPU, for GPU sizes.
    #[serde(default)]
    pub gpu: Option<SizeGpu>,
    /// Pay-as-you-go price.
    #[serde(default)]
    pub payg: Option<Price>,
    /// Spot price.
    #[serde(default)]
    pub spot: Option<Price>,
    /// One-year reservation, per hour.
    #[serde(default)]
    pub reserved_1y: Option<Price>,
    /// Three-year reservation, per hour.
    #[serde(default)]
    pub reserved_3y: Option<Price>,
    /// Where its specification comes from [default: the catalogue's `spec_source`].
    #[serde(default)]
    pub spec_source: Option<String>,
}

impl Size {
    /// The price for `tier`, when the catalogue has one.
    pub fn price(&self, tier: Tier) -> Option<&Price> {
        match tier {
            Tier::Payg => self.payg.as_ref(),
            Tier::Spot => self.spot.as_ref(),
            Tier::Reserved1y => self.reserved_1y.as_ref(),
            Tier::Reserved3y => self.reserved_3y.as_ref(),
        }
    }

    /// Memory of each of the size's GPUs (or of its share of one), GiB, for GPU sizes: what one
    /// model on one GPU can use.
    pub fn gpu_memory_gib(&self, catalogue: &Catalogue) -> Option<f64> {
        let gpu = self.gpu.as_ref()?;
        gpu.memory_gib.or_else(|| catalogue.gpus.get(&gpu.model).map(|spec| spec.memory_gib * gpu.fraction))
    }

    /// `4 vCPUs, AVX-512` or `T4`, `1/6 A10`, `4 × T4`.
    pub fn hardware(&self) -> String {
        match &self.gpu {
            None => format!("{} vCPUs, {}", self.vcpus, self.isa),
            Some(gpu) if gpu.fraction < 1.0 => format!("1/{:.0} {}", 1.0 / gpu.fraction, gpu.model),
            Some(gpu) if gpu.count > 1 => format!("{} × {}", gpu.count, gpu.model),
            Some(gpu) => gpu.model.clone(),
        }
    }
}

/// A pricing tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Tier {
    /// Pay as you go.
    #[serde(rename = "payg")]
    Payg,
    /// Spot (evictable).
    #[serde(rename = "spot")]
    Spot,
    /// One-year reservation.
    #[serde(rename = "reserved-1y")]
    Reserved1y,
    /// Three-year reservation.
    #[serde(rename = "reserved-3y")]
    Reserved3y,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Payg => "pay-as-you-go",
            Self::Spot => "spot",
            Self::Reserved1y => "1-year reservation",
            Self::Reserved3y => "3-year reservation",
        })
    }
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "payg" => Ok(Self::Payg),
            "spot" => Ok(Self::Spot),
            "reserved-1y" | "1y" => Ok(Self::Reserved1y),
            "reserved-3y" | "3y" => Ok(Self::Reserved3y),
            _ => Err(format!("unknown pricing tier '{s}': expected payg, spot, reserved-1y or reserved-3y")),
        }
    }
}

/// The catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    /// The region its prices are for.
    pub region: String,
    /// The currency of its prices.
    pub currency: String,
    /// The source of sizes' specifications that name none.
    pub spec_source: String,
    /// Sources by key.
    pub sources: BTreeMap<String, Source>,
    /// GPUs by model name (`T4`, `A10`).
    pub gpus: BTreeMap<String, GpuSpec>,
    /// Published figures.
    #[serde(default)]
    pub published: Vec<Published>,
    /// Sizes by name.
    pub sizes: BTreeMap<String, Size>,
}

/// Why a catalogue cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// The file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// It is not a catalogue.
    #[error("catalogue {origin}: {reason}")]
    Invalid {
        /// The built-in catalogue or the file.
        origin: String,
        /// What is wrong.
        reason: String,
    },
}

impl Catalogue {
    /// The built-in catalogue.
    pub fn built_in() -> Result<Self, CatalogueError> {
        Self::merged(BUILT_IN, None)
    }

    /// The built-in catalogue with the file at `path` merged over it.
    pub fn with_overrides(path: &Path) -> Result<Self, CatalogueError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| CatalogueError::Io { path: path.display().to_string(), reason: err.to_string() })?;
        Self::merged(BUILT_IN, Some((&path.display().to_string(), &text)))
    }

    /// `base` with `overrides` (origin, text) merged over it, validated.
    pub fn merged(base: &str, overrides: Option<(&str, &str)>) -> Result<Self, CatalogueError> {
        let invalid = |origin: &str, reason: String| CatalogueError::Invalid { origin: origin.to_string(), reason };
        let mut value: toml::Table = toml::from_str(base).map_err(|err| invalid("(built in)", err.to_string()))?;
        let origin = match overrides {
            Some((origin, text)) => {
                let overrides: toml::Table = toml::from_str(text).map_err(|err| invalid(origin, err.to_string()))?;
                merge(&mut value, overrides);
                origin
            }
            None => "(built in)",
        };
        let catalogue: Self =
            toml::Value::Table(value).try_into().map_err(|err: toml::de::Error| invalid(origin, err.to_string()))?;
        catalogue.validate().map_err(|reason| invalid(origin, reason))?;
        Ok(catalogue)
    }

    /// Checks that every source and GPU named exists and that figures are positive.
    fn validate(&self) -> Result<(), String> {
        let source = |key: &str, what: &str| {
            if self.sources.contains_key(key) {
                Ok(())
            } else {
                Err(format!("{what} names source '{key}', which is not in [sources]"))
            }
        };
        source(&self.spec_source, "spec_source")?;
        for (name, gpu) in &self.gpus {
            source(&gpu.source, &format!("GPU {name}"))?;
            if [gpu.fp32_tflops, gpu.fp16_tflops, gpu.bandwidth_gb_s, gpu.memory_gib]
                .iter()
                .any(|v| v.is_nan() || *v <= 0.0)
            {
                return Err(format!("GPU {name}: every figure must be positive"));
            }
        }
        for published in &self.published {
            source(&published.source, &format!("the published figure for {} on {}", published.model, published.gpu))?;
            if !self.gpus.contains_key(&published.gpu) {
                return Err(format!("a published figure names GPU '{}', which is not in [gpus]", published.gpu));
            }
            if published.unit != "requests" && published.unit != "tokens" {
                return Err(format!("published unit '{}': expected requests or tokens", published.unit));
            }
            if published.throughput.is_nan() || published.throughput <= 0.0 {
                return Err(format!("the published figure for {} must be positive", published.model));
            }
        }
        for (name, size) in &self.sizes {
            if let Some(spec) = &size.spec_source {
                source(spec, &format!("size {name}"))?;
            }
            if size.vcpus == 0 {
                return Err(format!("size {name}: vcpus must be at least 1"));
            }
            for price in [&size.payg, &size.spot, &size.reserved_1y, &size.reserved_3y].into_iter().flatten() {
                source(&price.source, &format!("a price of {name}"))?;
                if price.usd.is_nan() || price.usd < 0.0 {
                    return Err(format!("size {name}: prices must not be negative"));
                }
            }
            if let Some(gpu) = &size.gpu {
                if !self.gpus.contains_key(&gpu.model) {
                    return Err(format!("size {name} names GPU '{}', which is not in [gpus]", gpu.model));
                }
                if !(gpu.fraction > 0.0 && gpu.fraction <= 1.0) || gpu.count == 0 {
                    return Err(format!("size {name}: GPU count must be at least 1 and fraction in (0, 1]"));
                }
            }
        }
        Ok(())
    }

    /// The catalogue's GPU model a product name means (`NVIDIA A10` → `A10`, `Tesla T4` → `T4`;
    /// `NVIDIA A100 80GB PCIe` → `A100`, never `A10`): a word of the name equal to a model.
    pub fn gpu_model_of(&self, product: &str) -> Option<String> {
        product
            .split(|c: char| !c.is_ascii_alphanumeric())
            .find_map(|word| self.gpus.keys().find(|model| model.eq_ignore_ascii_case(word)).cloned())
    }
}

/// Merges `overrides` into `base`: tables merge key by key, arrays are appended, other values
/// are replaced.
fn merge(base: &mut toml::Table, overrides: toml::Table) {
    for (key, value) in overrides {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(value)) => merge(base, value),
            (Some(toml::Value::Array(base)), toml::Value::Array(value)) => base.extend(value),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_catalogue_is_valid_and_dated() {
        let catalogue = Catalogue::built_in().unwrap();
        assert!(catalogue.sizes.len() >= 30);
        for (name, size) in &catalogue.sizes {
            let payg = size.payg.as_ref().unwrap_or_else(|| panic!("{name} has no pay-as-you-go price"));
            assert!(!catalogue.sources[&payg.source].date.is_empty());
        }
        for name in [
            "Standard_NC4as_T4_v3",
            "Standard_NC8as_T4_v3",
            "Standard_NC16as_T4_v3",
            "Standard_NV6ads_A10_v5",
            "Standard_NV12ads_A10_v5",
            "Standard_NV36ads_A10_v5",
        ] {
            assert!(catalogue.sizes[name].gpu.is_some(), "{name}");
        }
        let nv6 = &catalogue.sizes["Standard_NV6ads_A10_v5"];
        assert_eq!(nv6.hardware(), "1/6 A10");
        assert_eq!(nv6.gpu_memory_gib(&catalogue), Some(4.0));
        assert_eq!(catalogue.sizes["Standard_D4s_v5"].hardware(), "4 vCPUs, AVX-512");
    }

    #[test]
    fn overrides_replace_fields_and_add_sizes() {
        let overrides = r#"
            region = "westeurope"
            [sources.my-ea]
            what = "our enterprise agreement"
            url = "https://example.com/ea"
            date = "2026-12-01"
            [sizes.Standard_D4s_v5]
            payg = { usd = 0.15, source = "my-ea" }
            reserved_1y = { usd = 0.11, source = "my-ea" }
            [sizes.Custom_Box]
            vcpus = 64
            memory_gib = 256
            cpu = "on premises"
            isa = "avx2"
            smt = true
            payg = { usd = 1.0, source = "my-ea" }
        "#;
        let catalogue = Catalogue::merged(BUILT_IN, Some(("mine.toml", overrides))).unwrap();
        assert_eq!(catalogue.region, "westeurope");
        let d4 = &catalogue.sizes["Standard_D4s_v5"];
        assert_eq!(d4.price(Tier::Payg).unwrap().usd, 0.15);
        assert_eq!(d4.price(Tier::Reserved1y).unwrap().usd, 0.11);
        assert_eq!(d4.vcpus, 4, "fields not given stay");
        assert!(catalogue.sizes.contains_key("Custom_Box"));
        let bad = Catalogue::merged(
            BUILT_IN,
            Some(("bad.toml", "[sizes.Standard_D4s_v5]\npayg = { usd = 1, source = \"nowhere\" }")),
        );
        assert!(bad.unwrap_err().to_string().contains("nowhere"));
        assert!(Catalogue::merged(BUILT_IN, Some(("typo.toml", "[sizes.Standard_D4s_v5]\nvcpu = 3"))).is_err());
    }

    #[test]
    fn gpu_product_names_map_to_models() {
        let catalogue = Catalogue::built_in().unwrap();
        assert_eq!(catalogue.gpu_model_of("Tesla T4").as_deref(), Some("T4"));
        assert_eq!(catalogue.gpu_model_of("NVIDIA A10").as_deref(), Some("A10"));
        assert_eq!(catalogue.gpu_model_of("NVIDIA A100 80GB PCIe").as_deref(), Some("A100"));
        assert_eq!(catalogue.gpu_model_of("NVIDIA H200").as_deref(), Some("H200"));
        assert_eq!(catalogue.gpu_model_of("NVIDIA L4"), None);
        assert_eq!("1y".parse::<Tier>().unwrap(), Tier::Reserved1y);
    }
}
