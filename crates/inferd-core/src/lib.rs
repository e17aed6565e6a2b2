//! inferd's serving core: devices, the model traits (tabular, embedding, generation), the dynamic
//! batcher and its policy, the generation scheduler (continuous batching of sequences),
//! admission by expected queue time, the model registry and readiness, error kinds, and metric
//! handles.
//!
//! This crate knows nothing of HTTP or of model file formats: protocol adapters
//! (`inferd-server`) sit above it, model families (`inferd-classical`, `inferd-transformers`)
//! implement its traits.

pub mod admission;
pub mod batcher;
pub mod calendar;
pub mod cpu;
pub mod device;
pub mod embedding;
pub mod engine;
pub mod error;
pub mod generation;
pub mod math;
pub mod metrics;
mod queue;
pub mod registry;
pub mod tabular;

pub use batcher::{BatchItem, BatchModel, BatchPolicy, BatchStats, Batcher, Completed, TokenCount, TokenLayout};
pub use cpu::{CpuLevel, cpu_level};
pub use device::{Device, DeviceError, DeviceSpec, cuda_device_name, device_name};
pub use embedding::{EmbeddingInfo, EmbeddingModel, EmbeddingService, TextEncoder, TextInput, TokenizedInputs};
pub use engine::{Engine, Precision, PrecisionFamily};
pub use error::{InferError, Overload};
pub use generation::{
    CausalLm, ChatMessage, Event, FinishReason, GenerationInfo, GenerationRequest, GenerationService, GenerationStream,
    SamplingParams, SchedulerPolicy, SequenceStep, TextCodec,
};
pub use metrics::{BatchMetrics, InFlightRequest, Metrics, RejectReason};
pub use registry::{ModelRegistry, ModelStatus, ModelTask, ServedModel};
pub use tabular::{OutputSpec, Rows, TabularModel, TabularOutput, TabularSchema, TabularService, ValueKind, Values};
