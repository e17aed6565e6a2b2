//! The set of configured models and the state of each: loading, ready, or failed with a reason.
//!
//! The set of names is fixed at start; each model loads on its own thread, so models load
//! concurrently and one that fails to load does not hold up or take down the others.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::embedding::EmbeddingService;
use crate::error::InferError;
use crate::generation::GenerationService;
use crate::metrics::Metrics;
use crate::tabular::TabularService;

/// What a served model does, with the service that does it.
pub enum ModelTask {
    /// Rows of features in, predictions out.
    Tabular(TabularService),
    /// Texts in, one vector per text out.
    Embedding(EmbeddingService),
    /// A prompt in, generated tokens out (streamed).
    Generation(GenerationService),
}

/// A loaded model, ready to serve.
pub struct ServedModel {
    /// The name clients address it by.
    pub name: String,
    /// The device it runs on (`cpu`, `cuda:0`).
    pub device: String,
    /// How it computes, for metadata (`native`, `tensor`).
    pub engine: String,
    /// Its service.
    pub task: ModelTask,
}

impl ServedModel {
    /// The tabular service, when this is a tabular model.
    pub fn tabular(&self) -> Option<&TabularService> {
        match &self.task {
            ModelTask::Tabular(service) => Some(service),
            _ => None,
        }
    }

    /// The embedding service, when this is an embedding model.
    pub fn embedding(&self) -> Option<&EmbeddingService> {
        match &self.task {
            ModelTask::Embedding(service) => Some(service),
            _ => None,
        }
    }

    /// The generation service, when this is a generative model.
    pub fn generation(&self) -> Option<&GenerationService> {
        match &self.task {
            ModelTask::Generation(service) => Some(service),
            _ => None,
        }
    }

    /// Whether the model would admit a request now, by its queue's bounds (capacity and
    /// `max_queue_time`): protocol adapters ask before decoding or tokenizing, so that a
    /// refusal under overload costs little. Submitting checks again.
    pub fn check_admission(&self) -> Result<(), InferError> {
        match &self.task {
            ModelTask::Tabular(service) => service.check_admission(),
            ModelTask::Embedding(service) => service.check_admission(),
            ModelTask::Generation(service) => service.check_admission(),
        }
    }

    /// Stops accepting requests; queued ones still run.
    pub fn close(&self) {
        match &self.task {
            ModelTask::Tabular(service) => service.close(),
            ModelTask::Embedding(service) => service.close(),
            ModelTask::Generation(service) => service.close(),
        }
    }
}

/// A model's state, as readiness reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelStatus {
    /// Still loading.
    Loading,
    /// Serving.
    Ready,
    /// Loading failed; the reason says why.
    Failed(String),
}

enum Slot {
    Loading,
    Ready(Arc<ServedModel>),
    Failed(String),
}

/// Duplicate names make a configuration ambiguous.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model name '{0}' is configured more than once")]
pub struct DuplicateModel(pub String);

/// The configured models and their states.
pub struct ModelRegistry {
    slots: BTreeMap<String, RwLock<Slot>>,
    metrics: Arc<Metrics>,
    /// When loading began, to estimate how much longer a loading model takes.
    created: Instant,
}

impl ModelRegistry {
    /// A registry of these names, all loading.
    pub fn new(names: impl IntoIterator<Item = String>, metrics: Arc<Metrics>) -> Result<Self, DuplicateModel> {
        let mut slots = BTreeMap::new();
        for name in names {
            metrics.set_model_ready(&name, false);
            if slots.insert(name.clone(), RwLock::new(Slot::Loading)).is_some() {
                return Err(DuplicateModel(name));
            }
        }
        Ok(Self { slots, metrics, created: Instant::now() })
    }

    /// The metrics the registry's models report to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Loads one model on its own thread: `load` builds it, and the slot becomes ready or
    /// failed. Returns the thread's handle, for callers that want to wait.
    pub fn load<F>(self: &Arc<Self>, name: &str, load: F) -> std::thread::JoinHandle<()>
    where
        F: FnOnce(&Metrics) -> Result<ServedModel, String> + Send + 'static,
    {
        let registry = Arc::clone(self);
        let name = name.to_string();
        std::thread::spawn(move || {
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(&registry.metrics)))
                .unwrap_or_else(|_| Err("the loader panicked".to_string()));
            match outcome {
                Ok(model) => {
                    tracing::info!(
                        model = %name,
                        device = %model.device,
                        engine = %model.engine,
                        seconds = started.elapsed().as_secs_f64(),
                        "model ready"
                    );
                    registry.set(&name, Slot::Ready(Arc::new(model)));
                }
                Err(reason) => {
                    tracing::error!(model = %name, %reason, "model failed to load");
                    registry.set(&name, Slot::Failed(reason));
                }
            }
        })
    }

    fn set(&self, name: &str, slot: Slot) {
        if let Some(lock) = self.slots.get(name) {
            self.metrics.set_model_ready(name, matches!(slot, Slot::Ready(_)));
            *lock.write().unwrap_or_else(PoisonError::into_inner) = slot;
        }
    }

    /// The ready model of this name, or why it cannot serve.
    pub fn get(&self, name: &str) -> Result<Arc<ServedModel>, InferError> {
        let lock = self.slots.get(name).ok_or_else(|| InferError::ModelNotFound(name.to_string()))?;
        match &*lock.read().unwrap_or_else(PoisonError::into_inner) {
            Slot::Ready(model) => Ok(Arc::clone(model)),
            // A model still loading is expected to take about as long again as it has so far.
            Slot::Loading => Err(InferError::NotReady {
                model: name.to_string(),
                reason: "loading".into(),
                retry_after: Some(self.created.elapsed().clamp(Duration::from_secs(1), Duration::from_secs(60))),
            }),
            // Retrying cannot help a model that failed to load: no Retry-After.
            Slot::Failed(reason) => Err(InferError::NotReady {
                model: name.to_string(),
                reason: format!("failed to load: {reason}"),
                retry_after: None,
            }),
        }
    }

    /// Whether a model of this name is configured, whatever its state.
    pub fn contains(&self, name: &str) -> bool {
        self.slots.contains_key(name)
    }

    /// Every model's state, by name.
    pub fn statuses(&self) -> Vec<(String, ModelStatus)> {
        self.slots
            .iter()
            .map(|(name, lock)| {
                let status = match &*lock.read().unwrap_or_else(PoisonError::into_inner) {
                    Slot::Loading => ModelStatus::Loading,
                    Slot::Ready(_) => ModelStatus::Ready,
                    Slot::Failed(reason) => ModelStatus::Failed(reason.clone()),
                };
                (name.clone(), status)
            })
            .collect()
    }

    /// Stops every ready model from accepting requests; queued ones still run.
    pub fn close_all(&self) {
        for lock in self.slots.values() {
            if let Slot::Ready(model) = &*lock.read().unwrap_or_else(PoisonError::into_inner) {
                model.close();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_model_does_not_take_the_others_down() {
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(ModelRegistry::new(["good".to_string(), "bad".to_string()], metrics).unwrap());
        assert!(matches!(
            registry.get("good").err(),
            Some(InferError::NotReady { reason, retry_after: Some(_), .. }) if reason == "loading"
        ));
        let bad = registry.load("bad", |_| Err("file not found".into()));
        let panicking = registry.load("good", |_| panic!("boom"));
        bad.join().unwrap();
        panicking.join().unwrap();
        let statuses = registry.statuses();
        assert_eq!(statuses[0], ("bad".to_string(), ModelStatus::Failed("file not found".into())));
        assert_eq!(statuses[1], ("good".to_string(), ModelStatus::Failed("the loader panicked".into())));
        assert!(matches!(registry.get("nope"), Err(InferError::ModelNotFound(_))));
        let err = registry.get("bad").err().unwrap();
        assert!(err.to_string().contains("failed to load: file not found"), "{err}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let metrics = Arc::new(Metrics::new());
        let err = ModelRegistry::new(["a".to_string(), "a".to_string()], metrics).err();
        assert_eq!(err, Some(DuplicateModel("a".into())));
    }
}
