//! The tensor engine: a forest as a few matrix products on the model's device (CPU or CUDA),
//! the GEMM formulation of tree ensembles (as in Hummingbird).
//!
//! With every tree padded to `I` splits and `L` leaves:
//! 1. `X · A` picks each split's feature value (`A` is a one-hot `[F × trees·I]` matrix), and
//!    comparing with the thresholds says which way each split sends the row; missing values
//!    (a mask `M · A`) take the split's default way instead.
//! 2. `C` (`[trees × I × L]`) holds +1 where a leaf lies left of a split on its path and −1
//!    where it lies right; the product with the decisions equals the leaf's count of left turns
//!    (`D`) exactly for the one leaf the row reaches.
//! 3. That one-hot leaf choice times the leaf values (`E`, `[trees × L × groups]`), summed over
//!    trees, is the margin.
//!
//! Decisions are exact in either precision for XGBoost (its features are `f32` anyway). For
//! LightGBM, whose thresholds are `f64`, only `f64` is exact; `f32` compares features rounded
//! to `f32`.

use candle_core::{DType, Device, Result, Tensor};
use inferd_core::Rows;

use super::{Arithmetic, Forest, Node};
use crate::engine::Precision;

/// Elements of the widest intermediate (`rows × trees·I`) per chunk of rows.
const CHUNK_ELEMENTS: usize = 8 << 20;

pub(super) struct TensorForest {
    device: Device,
    dtype: DType,
    arithmetic: Arithmetic,
    n_features: usize,
    n_trees: usize,
    splits: usize,
    zero_is_missing: bool,
    /// `[F × trees·I]` one-hot feature selection.
    select: Tensor,
    /// `[trees·I]` thresholds, default-left flags (0/1), zero-is-missing flags (0/1).
    thresholds: Tensor,
    default_left: Tensor,
    zero_flags: Tensor,
    /// `[trees × I × L]` path signs, `[trees × 1 × L]` left-turn counts, `[trees × L × groups]`
    /// leaf values.
    paths: Tensor,
    left_turns: Tensor,
    leaves: Tensor,
    base: Tensor,
}

/// One tree's splits and leaves in depth-first order, with each leaf's path.
struct Unrolled {
    /// `(feature, threshold, default_left, zero_is_missing)` per split.
    splits: Vec<(u32, f64, bool, bool)>,
    /// `(value, path of (split index, went left))` per leaf.
    leaves: Vec<(f64, Vec<(usize, bool)>)>,
}

fn unroll(nodes: &[Node]) -> Unrolled {
    let mut unrolled = Unrolled { splits: Vec::new(), leaves: Vec::new() };
    let mut stack = vec![(0usize, Vec::new())];
    while let Some((index, path)) = stack.pop() {
        match nodes[index] {
            Node::Leaf(value) => unrolled.leaves.push((value, path)),
            Node::Split { feature, threshold, default_left, zero_is_missing, left, right } => {
                let split = unrolled.splits.len();
                unrolled.splits.push((feature, threshold, default_left, zero_is_missing));
                let mut right_path = path.clone();
                right_path.push((split, false));
                let mut left_path = path;
                left_path.push((split, true));
                stack.push((right as usize, right_path));
                stack.push((left as usize, left_path));
            }
        }
    }
    unrolled
}

impl TensorForest {
    pub(super) fn new(forest: &Forest, device: &Device, precision: Precision) -> Result<Self> {
        let dtype = match precision {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        };
        let trees: Vec<Unrolled> = forest.trees.iter().map(|tree| unroll(&tree.nodes)).collect();
        let n_trees = trees.len();
        let splits = trees.iter().map(|t| t.splits.len()).max().unwrap_or(0).max(1);
        let leaves = trees.iter().map(|t| t.leaves.len()).max().unwrap_or(1);
        let groups = forest.n_groups;
        let columns = n_trees * splits;

        let mut select = vec![0.0; forest.n_features * columns];
        let mut thresholds = vec![0.0; columns];
        let mut default_left = vec![0.0; columns];
        let mut zero_flags = vec![0.0; columns];
        let mut paths = vec![0.0; n_trees * splits * leaves];
        let mut left_turns = vec![-1.0; n_trees * leaves];
        let mut values = vec![0.0; n_trees * leaves * groups];
        for (t, (tree, source)) in trees.iter().zip(&forest.trees).enumerate() {
            for (i, &(feature, threshold, left, zero)) in tree.splits.iter().enumerate() {
                let column = t * splits + i;
                select[feature as usize * columns + column] = 1.0;
                thresholds[column] = threshold;
                default_left[column] = f64::from(u8::from(left));
                zero_flags[column] = f64::from(u8::from(zero));
            }
            for (l, (value, path)) in tree.leaves.iter().enumerate() {
                for &(split, went_left) in path {
                    paths[(t * splits + split) * leaves + l] = if went_left { 1.0 } else { -1.0 };
                }
                left_turns[t * leaves + l] = path.iter().filter(|(_, went_left)| *went_left).count() as f64;
                values[(t * leaves + l) * groups + source.group] = value * source.weight.unwrap_or(1.0);
            }
        }
        let zero_is_missing = zero_flags.iter().any(|&flag| flag != 0.0);
        let upload = |data: Vec<f64>, shape: &[usize]| -> Result<Tensor> {
            Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)
        };
        Ok(Self {
            device: device.clone(),
            dtype,
            arithmetic: forest.arithmetic,
            n_features: forest.n_features,
            n_trees,
            splits,
            zero_is_missing,
            select: upload(select, &[forest.n_features, columns])?,
            thresholds: upload(thresholds, &[columns])?,
            default_left: upload(default_left, &[columns])?,
            zero_flags: upload(zero_flags, &[columns])?,
            paths: upload(paths, &[n_trees, splits, leaves])?,
            left_turns: upload(left_turns, &[n_trees, 1, leaves])?,
            leaves: upload(values, &[n_trees, leaves, groups])?,
            base: upload(forest.base_margin.clone(), &[groups])?,
        })
    }

    /// Margins `[N × groups]`, in chunks of rows that bound the intermediates' size.
    pub(super) fn margins(&self, rows: &Rows) -> Result<Vec<f64>> {
        let chunk_rows = (CHUNK_ELEMENTS / (self.n_trees * self.splits)).max(1);
        let width = self.n_features;
        let mut margins = Vec::new();
        for chunk in rows.values().chunks(chunk_rows * width) {
            margins.extend(self.chunk_margins(chunk, chunk.len() / width)?);
        }
        Ok(margins)
    }

    fn chunk_margins(&self, values: &[f64], n_rows: usize) -> Result<Vec<f64>> {
        let shape = (n_rows, self.n_features);
        let rounded: Vec<f64> = match self.arithmetic {
            Arithmetic::F32 => values.iter().map(|&v| f64::from(v as f32)).collect(),
            Arithmetic::F64 => values.to_vec(),
        };
        // NaN would poison the products: zero it and carry "missing" in masks instead.
        let features: Vec<f64> = rounded.iter().map(|&v| if v.is_nan() { 0.0 } else { v }).collect();
        let nan_mask: Vec<f64> = rounded.iter().map(|&v| f64::from(u8::from(v.is_nan()))).collect();
        let upload =
            |data: Vec<f64>| Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(self.dtype)?.to_device(&self.device);

        let chosen = upload(features)?.matmul(&self.select)?;
        let below = chosen.broadcast_lt(&self.thresholds)?.to_dtype(self.dtype)?;
        let mut missing = upload(nan_mask)?.matmul(&self.select)?;
        if self.zero_is_missing {
            let zeros: Vec<f64> = rounded.iter().map(|&v| f64::from(u8::from(v.abs() <= 1e-35))).collect();
            let zero_missing = upload(zeros)?.matmul(&self.select)?.broadcast_mul(&self.zero_flags)?;
            missing = (missing + zero_missing)?.clamp(0.0, 1.0)?;
        }
        // Left = default where missing, else the comparison: below + missing · (default − below).
        let go_left = (&below + missing.mul(&self.default_left.broadcast_sub(&below)?)?)?;
        let decisions = go_left.reshape((n_rows, self.n_trees, self.splits))?.transpose(0, 1)?.contiguous()?;
        let reached = decisions.matmul(&self.paths)?.broadcast_eq(&self.left_turns)?.to_dtype(self.dtype)?;
        let margins = reached.matmul(&self.leaves)?.sum(0)?.broadcast_add(&self.base)?;
        margins.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
    }
}
