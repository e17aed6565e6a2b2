//! inferd's answer to "do I need a GPU?", from the user's own measurements.
//!
//! - [`advise()`]: `inferd advise`, measurements, a catalogue and workloads in, a report out,
//!   through [`evidence`] (operating points from measurements), [`capacity`] (the scaling model
//!   from the machine measured to each size), [`plan`] (replicas, costs, the verdict) and
//!   [`report`] (Markdown and HTML with charts).
//! - [`load`]: `inferd bench`, a load generator for any OpenAI-compatible or Open Inference
//!   Protocol server (closed and open loops, GuideLLM's profile names, goodput against an SLO).
//! - [`catalogue`]: VM sizes, dated and sourced prices, GPU specifications, published figures.
//! - [`criterion`]: reading what `cargo bench` measured (criterion's files and the suite's
//!   manifest: the machine, the devices opened and skipped).
//! - [`host`]: the machine a measurement was taken on (CPU model, vector instruction set,
//!   vCPUs, GPUs), recorded with every benchmark run and load test.
//! - [`workload`]: what a model must deliver (SLO, load, headroom) and the TPM formula.
//!
//! This crate talks HTTP like any client and reads benchmark files; it knows nothing of
//! inferd's model internals or server code.

pub mod advise;
pub mod capacity;
pub mod catalogue;
pub mod criterion;
pub mod evidence;
pub mod host;
pub mod load;
pub mod plan;
pub mod report;
pub mod workload;

pub use advise::{AdviseError, Inputs, advise};

/// Now, as reports and manifests write times: RFC 3339, UTC, whole seconds.
pub fn now_rfc3339() -> String {
    humantime_serde::re::humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
