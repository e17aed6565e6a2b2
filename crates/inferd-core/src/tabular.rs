//! Tabular models: rows of numeric features in, named outputs out.
//!
//! A [`TabularModel`] predicts for a matrix of rows. [`TabularService`] puts one behind a
//! [`Batcher`]: requests are validated against the model's [`TabularSchema`] before they queue
//! (so one bad request never fails a batch), their rows are stacked into one matrix per batch,
//! and each output is split back per request.

use std::time::Instant;

use crate::batcher::{BatchItem, BatchModel, BatchPolicy, Batcher, Completed};
use crate::error::InferError;
use crate::metrics::BatchMetrics;

/// A row-major matrix of features; `NaN` marks a missing value.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    n_rows: usize,
    n_features: usize,
    values: Vec<f64>,
}

impl Rows {
    /// Wraps `values` as `n_rows` rows of `n_features`; fails when the lengths disagree.
    pub fn new(n_rows: usize, n_features: usize, values: Vec<f64>) -> Result<Self, InferError> {
        if n_rows.checked_mul(n_features) != Some(values.len()) {
            return Err(InferError::InvalidInput(format!(
                "{} values cannot form {n_rows} rows of {n_features} features",
                values.len()
            )));
        }
        Ok(Self { n_rows, n_features, values })
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Number of features per row.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// All values, row after row.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// One row's features.
    pub fn row(&self, index: usize) -> &[f64] {
        &self.values[index * self.n_features..(index + 1) * self.n_features]
    }

    fn concat(parts: &[Rows]) -> Rows {
        let n_features = parts.first().map_or(0, |rows| rows.n_features);
        let n_rows = parts.iter().map(|rows| rows.n_rows).sum();
        let mut values = Vec::with_capacity(n_rows * n_features);
        for rows in parts {
            values.extend_from_slice(&rows.values);
        }
        Rows { n_rows, n_features, values }
    }
}

impl BatchItem for Rows {
    fn size(&self) -> usize {
        self.n_rows
    }
}

/// The element type of an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Real numbers (probabilities, margins, regression values).
    Float,
    /// Integers (class labels that are numbers).
    Int,
    /// Text (class labels that are names).
    Text,
}

/// One output's values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// See [`ValueKind::Float`].
    Float(Vec<f64>),
    /// See [`ValueKind::Int`].
    Int(Vec<i64>),
    /// See [`ValueKind::Text`].
    Text(Vec<String>),
}

impl Values {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::Float(v) => v.len(),
            Self::Int(v) => v.len(),
            Self::Text(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn kind(&self) -> ValueKind {
        match self {
            Self::Float(_) => ValueKind::Float,
            Self::Int(_) => ValueKind::Int,
            Self::Text(_) => ValueKind::Text,
        }
    }

    fn slice(&self, range: std::ops::Range<usize>) -> Self {
        match self {
            Self::Float(v) => Self::Float(v[range].to_vec()),
            Self::Int(v) => Self::Int(v[range].to_vec()),
            Self::Text(v) => Self::Text(v[range].to_vec()),
        }
    }
}

/// One named output for a set of rows; `shape[0]` is the number of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct TabularOutput {
    /// The output's name, as in the schema.
    pub name: String,
    /// Rows first, then the per-row shape.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub values: Values,
}

/// What a model declares about one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// The output's name.
    pub name: String,
    /// Its element type.
    pub kind: ValueKind,
    /// Its shape per row: `[]` for one value per row, `[k]` for k values.
    pub row_shape: Vec<usize>,
    /// Whether it is returned when a request names no outputs.
    pub default: bool,
}

/// What a tabular model accepts and produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TabularSchema {
    /// A name for the model family, shown as the model's platform (`inferd_linear`, ...).
    pub platform: String,
    /// Features per row.
    pub n_features: usize,
    /// Feature names, when the model file has them.
    pub feature_names: Option<Vec<String>>,
    /// Every output the model produces, in the order `predict` returns them.
    pub outputs: Vec<OutputSpec>,
    /// Whether non-finite inputs are valid, as tree libraries read them (`NaN` is a missing
    /// value, ±∞ compares as itself); if not, they are a 400.
    pub accepts_non_finite: bool,
}

impl TabularSchema {
    /// Checks a request's rows before they queue.
    pub fn validate(&self, rows: &Rows) -> Result<(), InferError> {
        if rows.n_features() != self.n_features {
            return Err(InferError::InvalidInput(format!(
                "expected {} features per row, got {}",
                self.n_features,
                rows.n_features()
            )));
        }
        if rows.n_rows() == 0 {
            return Err(InferError::InvalidInput("the input has no rows".into()));
        }
        if !self.accepts_non_finite
            && let Some(position) = rows.values().iter().position(|v| !v.is_finite())
        {
            let what = if rows.values()[position].is_nan() { "missing (NaN)" } else { "infinite" };
            return Err(InferError::InvalidInput(format!(
                "row {} feature {} is {what}, and this model takes only finite values",
                position / self.n_features,
                position % self.n_features
            )));
        }
        Ok(())
    }

    /// The output with this name.
    pub fn output(&self, name: &str) -> Option<&OutputSpec> {
        self.outputs.iter().find(|output| output.name == name)
    }
}

/// A model that predicts for rows of features. It runs on the batcher's worker thread.
pub trait TabularModel: Send + 'static {
    /// What the model accepts and produces; constant for the model's life.
    fn schema(&self) -> TabularSchema;

    /// Predicts every output in the schema, in schema order, for rows already validated against
    /// the schema.
    fn predict(&mut self, rows: &Rows) -> Result<Vec<TabularOutput>, InferError>;
}

/// Runs a [`TabularModel`] on batches: stacks the requests' rows, predicts once, splits.
struct TabularRunner {
    model: Box<dyn TabularModel>,
}

impl BatchModel for TabularRunner {
    type Request = Rows;
    type Response = Vec<TabularOutput>;

    fn run_batch(&mut self, requests: Vec<Rows>) -> Result<Vec<Vec<TabularOutput>>, InferError> {
        if let [rows] = requests.as_slice() {
            return Ok(vec![self.model.predict(rows)?]);
        }
        let outputs = self.model.predict(&Rows::concat(&requests))?;
        let mut answers = vec![Vec::with_capacity(outputs.len()); requests.len()];
        for output in &outputs {
            let per_row: usize = output.shape[1..].iter().product();
            let mut start = 0;
            for (answer, rows) in answers.iter_mut().zip(&requests) {
                let end = start + rows.n_rows() * per_row;
                let mut shape = output.shape.clone();
                shape[0] = rows.n_rows();
                answer.push(TabularOutput {
                    name: output.name.clone(),
                    shape,
                    values: output.values.slice(start..end),
                });
                start = end;
            }
        }
        Ok(answers)
    }
}

/// A tabular model served behind its own batcher.
pub struct TabularService {
    schema: TabularSchema,
    batcher: Batcher<TabularRunner>,
}

impl TabularService {
    /// Starts serving `model` with the given batching policy.
    pub fn start(
        name: &str,
        model: Box<dyn TabularModel>,
        policy: BatchPolicy,
        metrics: BatchMetrics,
    ) -> Result<Self, String> {
        let schema = model.schema();
        let batcher = Batcher::spawn(name, TabularRunner { model }, policy, metrics)?;
        Ok(Self { schema, batcher })
    }

    /// What the model accepts and produces.
    pub fn schema(&self) -> &TabularSchema {
        &self.schema
    }

    /// The batching policy in force.
    pub fn policy(&self) -> &BatchPolicy {
        self.batcher.policy()
    }

    /// Whether the model's queue would admit a request now (see [`Batcher::check_admission`]):
    /// for refusing before decoding a large body.
    pub fn check_admission(&self) -> Result<(), InferError> {
        self.batcher.check_admission()
    }

    /// Validates `rows` and predicts every output for them through the batcher.
    pub async fn predict(
        &self,
        rows: Rows,
        deadline: Option<Instant>,
    ) -> Result<Completed<Vec<TabularOutput>>, InferError> {
        self.schema.validate(&rows)?;
        self.batcher.submit(rows, deadline).await
    }

    /// Stops accepting requests; queued ones still run.
    pub fn close(&self) {
        self.batcher.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums each row and reports it twice: once per row, once as a [2]-vector per row.
    struct RowSum;

    impl TabularModel for RowSum {
        fn schema(&self) -> TabularSchema {
            TabularSchema {
                platform: "test".into(),
                n_features: 2,
                feature_names: None,
                outputs: vec![],
                accepts_non_finite: false,
            }
        }

        fn predict(&mut self, rows: &Rows) -> Result<Vec<TabularOutput>, InferError> {
            let sums: Vec<f64> = (0..rows.n_rows()).map(|i| rows.row(i).iter().sum()).collect();
            let pairs = sums.iter().flat_map(|s| [*s, -s]).collect();
            Ok(vec![
                TabularOutput { name: "sum".into(), shape: vec![rows.n_rows()], values: Values::Float(sums) },
                TabularOutput { name: "pair".into(), shape: vec![rows.n_rows(), 2], values: Values::Float(pairs) },
            ])
        }
    }

    #[test]
    fn batches_are_split_back_per_request() {
        let mut runner = TabularRunner { model: Box::new(RowSum) };
        let a = Rows::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = Rows::new(1, 2, vec![10.0, 20.0]).unwrap();
        let answers = runner.run_batch(vec![a, b]).unwrap();
        assert_eq!(answers[0][0].values, Values::Float(vec![3.0, 7.0]));
        assert_eq!(answers[0][1].shape, vec![2, 2]);
        assert_eq!(answers[0][1].values, Values::Float(vec![3.0, -3.0, 7.0, -7.0]));
        assert_eq!(answers[1][0].shape, vec![1]);
        assert_eq!(answers[1][1].values, Values::Float(vec![30.0, -30.0]));
    }

    #[test]
    fn validation_names_the_problem() {
        let schema = RowSum.schema();
        let wrong_width = Rows::new(1, 3, vec![0.0; 3]).unwrap();
        assert!(schema.validate(&wrong_width).unwrap_err().to_string().contains("expected 2 features"));
        let missing = Rows::new(2, 2, vec![0.0, 0.0, 0.0, f64::NAN]).unwrap();
        assert!(schema.validate(&missing).unwrap_err().to_string().contains("row 1 feature 1 is missing"));
        let infinite = Rows::new(1, 2, vec![f64::INFINITY, 0.0]).unwrap();
        assert!(schema.validate(&infinite).unwrap_err().to_string().contains("infinite"));
        let trees = TabularSchema { accepts_non_finite: true, ..schema };
        assert!(trees.validate(&infinite).is_ok() && trees.validate(&missing).is_ok());
        assert!(Rows::new(2, 2, vec![0.0; 3]).is_err());
    }
}
