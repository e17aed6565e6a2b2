//! The tensor engine: a forest as gathers and matrix products on the model's device (CPU or
//! CUDA), the GEMM formulation of tree ensembles (as in Hummingbird).
//!
//! With every tree padded to `I` splits and `L` leaves:
//! 1. Gathering each split's feature from the rows (`[N × trees·I]`) and comparing with the
//!    thresholds says which way each split sends each row; missing values (a gathered mask)
//!    take the split's default way instead.
//! 2. `C` (`[trees × I × L]`) holds +1 where a leaf lies left of a split on its path and −1
//!    where it lies right; the product with the decisions equals the leaf's count of left turns
//!    (`D`) exactly for the one leaf the row reaches.
//! 3. That one-hot choice times the leaf values gives each tree's output (`[trees × N]`), and a
//!    product with the trees' one-hot output groups (`[trees × groups]`) sums them into margins.
//!
//! Decisions are exact in either precision for XGBoost (its features and thresholds are `f32`).
//! For LightGBM, whose thresholds are `f64`, only `f64` (its default here) is exact; `f32`
//! compares features rounded to `f32`. Sums run in the device's order, so margins agree with the
//! library to rounding, not bit for bit.

use candle_core::{DType, Device, Result, Tensor};
use inferd_core::Rows;

use super::{Arithmetic, Forest, Node};
use crate::engine::Precision;

/// Elements of the intermediates per chunk of rows (about `rows × trees·(I + L)`).
const CHUNK_ELEMENTS: usize = 8 << 20;
/// Largest padded matrix (`trees × I × L`) the engine builds; bigger forests belong on the
/// native engine.
const MAX_MATRIX_ELEMENTS: usize = 32 << 20;
/// LightGBM's `kZeroThreshold` (see the native engine).
const LIGHTGBM_ZERO: f64 = 1e-35f32 as f64;

pub(super) struct TensorForest {
    device: Device,
    dtype: DType,
    arithmetic: Arithmetic,
    n_features: usize,
    n_trees: usize,
    splits: usize,
    leaves: usize,
    zero_is_missing: bool,
    /// `[trees·I]` feature index of each split (u32), its threshold, its default-left flag
    /// (0/1) and its zero-is-missing flag (0/1).
    features: Tensor,
    thresholds: Tensor,
    default_left: Tensor,
    zero_flags: Tensor,
    /// `[trees × I × L]` path signs, `[trees × 1 × L]` left-turn counts, `[trees × L × 1]` leaf
    /// values, `[trees × groups]` output groups.
    paths: Tensor,
    left_turns: Tensor,
    leaf_values: Tensor,
    groups: Tensor,
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
    pub(super) fn new(forest: &Forest, device: &Device, precision: Precision) -> std::result::Result<Self, String> {
        let trees: Vec<Unrolled> = forest.trees.iter().map(|tree| unroll(&tree.nodes)).collect();
        let n_trees = trees.len();
        let splits = trees.iter().map(|t| t.splits.len()).max().unwrap_or(0).max(1);
        let leaves = trees.iter().map(|t| t.leaves.len()).max().unwrap_or(1);
        let padded = n_trees.checked_mul(splits).and_then(|n| n.checked_mul(leaves));
        if padded.is_none_or(|elements| elements > MAX_MATRIX_ELEMENTS) {
            return Err(format!(
                "the forest is too large for the tensor engine ({n_trees} trees of up to {splits} splits and \
                 {leaves} leaves); use engine = \"native\""
            ));
        }
        Self::build(forest, &trees, splits, leaves, device, precision).map_err(|err| err.to_string())
    }

    fn build(
        forest: &Forest,
        trees: &[Unrolled],
        splits: usize,
        leaves: usize,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        let dtype = match precision {
            // `EngineOptions::resolve` refuses it first.
            Precision::F16 | Precision::Bf16 => {
                candle_core::bail!("classical models compute in f32 or f64, not {}", precision.name())
            }
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        };
        let n_trees = trees.len();
        let groups = forest.n_groups;
        let columns = n_trees * splits;
        let mut features = vec![0u32; columns];
        let mut thresholds = vec![0.0; columns];
        let mut default_left = vec![0.0; columns];
        let mut zero_flags = vec![0.0; columns];
        let mut paths = vec![0.0; n_trees * splits * leaves];
        let mut left_turns = vec![-1.0; n_trees * leaves];
        let mut leaf_values = vec![0.0; n_trees * leaves];
        let mut tree_groups = vec![0.0; n_trees * groups];
        for (t, (tree, source)) in trees.iter().zip(&forest.trees).enumerate() {
            for (i, &(feature, threshold, left, zero)) in tree.splits.iter().enumerate() {
                let column = t * splits + i;
                features[column] = feature;
                thresholds[column] = threshold;
                default_left[column] = f64::from(u8::from(left));
                zero_flags[column] = f64::from(u8::from(zero));
            }
            for (l, (value, path)) in tree.leaves.iter().enumerate() {
                for &(split, went_left) in path {
                    paths[(t * splits + split) * leaves + l] = if went_left { 1.0 } else { -1.0 };
                }
                left_turns[t * leaves + l] = path.iter().filter(|(_, went_left)| *went_left).count() as f64;
                leaf_values[t * leaves + l] = *value;
            }
            tree_groups[t * groups + source.group] = 1.0;
        }
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
            leaves,
            zero_is_missing: zero_flags.iter().any(|&flag| flag != 0.0),
            features: Tensor::from_vec(features, columns, device)?,
            thresholds: upload(thresholds, &[columns])?,
            default_left: upload(default_left, &[columns])?,
            zero_flags: upload(zero_flags, &[columns])?,
            paths: upload(paths, &[n_trees, splits, leaves])?,
            left_turns: upload(left_turns, &[n_trees, 1, leaves])?,
            leaf_values: upload(leaf_values, &[n_trees, leaves, 1])?,
            groups: upload(tree_groups, &[n_trees, groups])?,
            base: upload(forest.base_margin.clone(), &[groups])?,
        })
    }

    /// Margins `[N × groups]`, in chunks of rows that bound the intermediates' size.
    pub(super) fn margins(&self, rows: &Rows) -> Result<Vec<f64>> {
        let per_row = self.n_trees * (self.splits + self.leaves);
        let chunk_rows = (CHUNK_ELEMENTS / per_row).max(1);
        let width = self.n_features;
        let mut margins = Vec::new();
        for chunk in rows.values().chunks(chunk_rows * width) {
            margins.extend(self.chunk_margins(chunk, chunk.len() / width)?);
        }
        Ok(margins)
    }

    fn chunk_margins(&self, values: &[f64], n_rows: usize) -> Result<Vec<f64>> {
        // Read values as the library does: XGBoost rounds to f32, LightGBM reads values within
        // its zero threshold as zero.
        let read: Vec<f64> = match self.arithmetic {
            Arithmetic::F32 => values.iter().map(|&v| f64::from(v as f32)).collect(),
            Arithmetic::F64 => values.iter().map(|&v| if v.abs() <= LIGHTGBM_ZERO { 0.0 } else { v }).collect(),
        };
        let upload = |data: Vec<f64>| {
            Tensor::from_vec(data, (n_rows, self.n_features), &Device::Cpu)?
                .to_dtype(self.dtype)?
                .to_device(&self.device)
        };
        let mask = |test: fn(f64) -> bool| read.iter().map(|&v| f64::from(u8::from(test(v)))).collect::<Vec<f64>>();

        // A gather, not a product with a one-hot matrix: NaN and ±∞ stay where they are.
        let chosen = upload(read.clone())?.index_select(&self.features, 1)?;
        let below = chosen.broadcast_lt(&self.thresholds)?.to_dtype(self.dtype)?;
        let mut missing = upload(mask(f64::is_nan))?.index_select(&self.features, 1)?;
        if self.zero_is_missing {
            let zeros = upload(mask(|v| v == 0.0))?.index_select(&self.features, 1)?.broadcast_mul(&self.zero_flags)?;
            missing = (missing + zeros)?.clamp(0.0, 1.0)?;
        }
        // Left = default where missing, else the comparison: below + missing · (default − below).
        let go_left = (&below + missing.mul(&self.default_left.broadcast_sub(&below)?)?)?;
        let decisions = go_left.reshape((n_rows, self.n_trees, self.splits))?.transpose(0, 1)?.contiguous()?;
        let reached = decisions.matmul(&self.paths)?.broadcast_eq(&self.left_turns)?.to_dtype(self.dtype)?;
        // [trees × N × 1] → [N × trees] · [trees × groups] → [N × groups].
        let per_tree = reached.matmul(&self.leaf_values)?.squeeze(2)?.t()?.contiguous()?;
        let margins = per_tree.matmul(&self.groups)?.broadcast_add(&self.base)?;
        margins.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
    }
}
