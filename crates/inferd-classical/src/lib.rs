//! inferd's classical models.
//!
//! Linear and logistic regression from a documented JSON file ([`linear`]), each runnable by two
//! engines that give the same answers: a native CPU evaluator in `f64`, and a tensor evaluator on
//! candle that also runs on CUDA (see [`Engine`]).

pub mod engine;
pub mod error;
pub mod linear;

pub use engine::{Engine, EngineOptions, Precision};
pub use error::LoadError;
pub use linear::{LinearModel, LinearPredictor};
