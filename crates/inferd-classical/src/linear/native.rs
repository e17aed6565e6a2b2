//! The native engine: plain loops in `f64` on the CPU.

use inferd_core::Rows;

use super::{LinearModel, Link};

/// Margins `[N × K]` and probabilities `[N × C]` (empty for regression), row-major.
pub(super) fn evaluate(model: &LinearModel, rows: &Rows) -> (Vec<f64>, Vec<f64>) {
    let k = model.n_margins();
    let mut margins = Vec::with_capacity(rows.n_rows() * k);
    for index in 0..rows.n_rows() {
        let row = rows.row(index);
        for (coefficients, intercept) in model.coefficients.chunks_exact(model.n_features).zip(&model.intercepts) {
            let dot: f64 = coefficients.iter().zip(row).map(|(w, x)| w * x).sum();
            margins.push(intercept + dot);
        }
    }
    let probabilities = match model.link {
        Link::Identity => Vec::new(),
        Link::Logistic => margins
            .iter()
            .flat_map(|&m| {
                let p = 1.0 / (1.0 + (-m).exp());
                [1.0 - p, p]
            })
            .collect(),
        Link::Softmax => margins.chunks_exact(k).flat_map(softmax).collect(),
    };
    (margins, probabilities)
}

fn softmax(margins: &[f64]) -> Vec<f64> {
    let max = margins.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = margins.iter().map(|m| (m - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}
