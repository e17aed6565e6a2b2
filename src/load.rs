//! Loading a configured model into a served one: reading its file, binding it to its device and
//! engine, and starting its batcher.

use inferd_classical::{LinearModel, LinearPredictor};
use inferd_core::{Device, Metrics, ModelTask, ServedModel, TabularService, device_name};

use crate::config::{ModelConfig, ModelKind};

/// Loads `config` onto an already resolved `device` and starts serving it.
pub fn load_model(config: &ModelConfig, device: &Device, metrics: &Metrics) -> Result<ServedModel, String> {
    match config.kind {
        ModelKind::Linear => {
            let model = LinearModel::load(&config.path).map_err(|err| err.to_string())?;
            let predictor = LinearPredictor::new(model, device, config.engine_options())?;
            let engine = predictor.engine().name().to_string();
            let service = TabularService::start(
                &config.name,
                Box::new(predictor),
                config.batching.clone(),
                metrics.batcher(&config.name),
            )?;
            Ok(ServedModel {
                name: config.name.clone(),
                device: device_name(device),
                engine,
                task: ModelTask::Tabular(service),
            })
        }
    }
}
