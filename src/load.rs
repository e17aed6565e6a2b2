//! Loading a configured model into a served one: reading its file, binding it to its device and
//! engine, and starting its batcher.

use inferd_classical::{Forest, ForestPredictor, LinearModel, LinearPredictor};
use inferd_core::{
    Device, EmbeddingService, Engine, GenerationService, Metrics, ModelTask, ServedModel, TabularModel, TabularService,
    cpu_level, device_name,
};
use inferd_transformers::{ModelSource, load_embedding, load_generation};

use crate::config::{ModelConfig, ModelKind};

/// Loads `config` onto an already resolved `device` and starts serving it.
pub fn load_model(config: &ModelConfig, device: &Device, metrics: &Metrics) -> Result<ServedModel, String> {
    let options = config.engine_options();
    let (predictor, engine): (Box<dyn TabularModel>, _) = match config.kind {
        ModelKind::Linear => {
            let model = LinearModel::load(&config.path).map_err(|err| err.to_string())?;
            let predictor = LinearPredictor::new(model, device, options)?;
            let engine = predictor.engine();
            (Box::new(predictor), engine)
        }
        ModelKind::Embedding => return load_embedding_model(config, device, metrics),
        ModelKind::Llm => return load_generation_model(config, device, metrics),
        ModelKind::Xgboost | ModelKind::Lightgbm => {
            let forest = if config.kind == ModelKind::Xgboost {
                Forest::load_xgboost(&config.path)
            } else {
                Forest::load_lightgbm(&config.path)
            }
            .map_err(|err| err.to_string())?;
            let predictor = ForestPredictor::new(forest, device, options)?;
            let engine = predictor.engine();
            (Box::new(predictor), engine)
        }
    };
    let service =
        TabularService::start(&config.name, predictor, config.batching.clone(), metrics.batcher(&config.name))?;
    Ok(ServedModel {
        name: config.name.clone(),
        device: device_name(device),
        engine: engine.name().to_string(),
        task: ModelTask::Tabular(service),
    })
}

/// Loads a sentence-transformers model (a folder or a hub repository), checks and warms it on
/// its device, and starts its batcher.
fn load_embedding_model(config: &ModelConfig, device: &Device, metrics: &Metrics) -> Result<ServedModel, String> {
    let text = config.path.to_string_lossy();
    let source = ModelSource::parse(&text).map_err(|err| err.to_string())?;
    let loaded = load_embedding(&source, device, config.embedding_options()).map_err(|err| err.to_string())?;
    // The native engine's CPU kernels are chosen at start (AVX2 or AVX-512): say which.
    let engine = match loaded.engine {
        Engine::Native => format!("native ({}, {})", loaded.precision.name(), cpu_level()),
        _ => format!("{} ({})", loaded.engine.name(), loaded.precision.name()),
    };
    let service = EmbeddingService::start(
        &config.name,
        loaded.info,
        loaded.encoder,
        loaded.model,
        config.batching.clone(),
        metrics.batcher(&config.name),
    )?;
    Ok(ServedModel {
        name: config.name.clone(),
        device: device_name(device),
        engine,
        task: ModelTask::Embedding(service),
    })
}

/// Loads a generative model (a GGUF file, or a folder or hub repository) and starts its
/// continuous-batching scheduler.
fn load_generation_model(config: &ModelConfig, device: &Device, metrics: &Metrics) -> Result<ServedModel, String> {
    let text = config.path.to_string_lossy();
    let source = ModelSource::parse(&text).map_err(|err| err.to_string())?;
    let loaded = load_generation(&source, device, &config.generation_options()).map_err(|err| err.to_string())?;
    let service = GenerationService::start(
        &config.name,
        loaded.info,
        loaded.codec,
        loaded.model,
        config.generation.clone(),
        metrics.batcher(&config.name),
    )?;
    Ok(ServedModel {
        name: config.name.clone(),
        device: device_name(device),
        engine: loaded.engine,
        task: ModelTask::Generation(service),
    })
}
