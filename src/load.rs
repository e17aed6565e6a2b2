//! Loading a configured model into a served one: reading its file, binding it to its device and
//! engine, and starting its batcher.

use inferd_classical::{Forest, ForestPredictor, LinearModel, LinearPredictor};
use inferd_core::{Device, Metrics, ModelTask, ServedModel, TabularModel, TabularService, device_name};

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
