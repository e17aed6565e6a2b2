//! inferd's classical models.
//!
//! Linear and logistic regression from a documented JSON file ([`linear`]) and gradient-boosted
//! trees from XGBoost and LightGBM model files ([`forest`]), each runnable by two engines that
//! pass the same golden tests: a native CPU engine in the reference library's own arithmetic,
//! and a tensor engine on candle that also runs on CUDA and agrees to rounding (see [`Engine`]).

pub mod engine;
pub mod error;
pub mod forest;
pub mod linear;

pub use engine::{Engine, EngineOptions, Precision};
pub use error::LoadError;
pub use forest::{Forest, ForestPredictor};
pub use linear::{LinearModel, LinearPredictor};
