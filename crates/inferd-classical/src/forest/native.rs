//! The native engine: flattened trees walked by many rows at once.
//!
//! **Keys.** Every feature value becomes an unsigned integer key whose order is the order of the
//! numbers (the usual sign-flip of IEEE 754 bits, with -0 read as +0), and a missing value (NaN)
//! becomes the key of +∞, which real inputs never have. A split then sends a row right exactly
//! when its key lies in one interval: `[key(threshold), key(+∞)]` when missing values go right,
//! `[key(threshold), key(max finite)]` when they go left. That is one subtraction and one
//! unsigned comparison, `key − start <= span`, with no separate test for missing values.
//!
//! **Layout.** Every tree is renumbered so that a split's two children sit side by side (`next`
//! and `next + 1`) and every leaf loops to itself (its interval is empty). A row then takes
//! exactly `depth` steps through a tree with no leaf test: `node = next + (key − start <= span)`.
//!
//! **Blocks.** A block of rows walks each tree level by level, so the steps of different rows
//! are independent and the CPU overlaps their memory loads instead of waiting on one row's chain
//! of nodes. Large batches are split across threads; a small one runs on the caller's thread.
//!
//! LightGBM's `Zero` missing type (values within 1e-35 of zero also take the default way) needs
//! a second interval test on the splits that use it; forests without it never pay for it.

use inferd_core::Rows;
use rayon::prelude::*;

use super::{Arithmetic, Forest, Node, tree_depth};

/// Rows walked through a tree together.
const BLOCK: usize = 64;
/// Node visits (rows × trees × depth) below which a batch stays on one thread: about 0.2 ms of
/// work, against tens of microseconds to hand work to another thread.
const PARALLEL_MIN_VISITS: usize = 300_000;
/// Flags in `feature`, set only in forests with `Zero` missing types.
const ZERO_IS_MISSING: u32 = 1 << 31;
const DEFAULT_RIGHT: u32 = 1 << 30;
const FEATURE: u32 = DEFAULT_RIGHT - 1;

/// The order-preserving integer key of a forest's element type: `u32` keys of `f32` values for
/// XGBoost, `u64` keys of `f64` values for LightGBM.
pub(super) trait Key: Copy + Send + Sync + Ord + std::fmt::Debug {
    /// The sum type: the float the key was made from.
    type Float: Copy + Send + Sync + std::ops::AddAssign;
    /// The key of +∞, which stands for a missing value.
    const MISSING: Self;
    /// The key of the largest finite value.
    const MAX_FINITE: Self;
    /// The largest key: no key reaches it, so an interval starting there is empty.
    const NEVER: Self;
    const ZERO: Self;
    fn of(value: f64) -> Self;
    fn wrapping_sub(self, other: Self) -> Self;
    fn float(value: f64) -> Self::Float;
    fn widen(value: Self::Float) -> f64;
    /// Keys within 1e-35 of zero: `[start, start + span]`.
    fn zero_interval() -> (Self, Self);
}

impl Key for u32 {
    type Float = f32;
    const MISSING: Self = 0xff80_0000;
    const MAX_FINITE: Self = 0xff7f_ffff;
    const NEVER: Self = u32::MAX;
    const ZERO: Self = 0;

    fn of(value: f64) -> Self {
        let value = value as f32;
        if value.is_nan() {
            return Self::MISSING;
        }
        let bits = (value + 0.0).to_bits();
        if bits >> 31 == 1 { !bits } else { bits | 1 << 31 }
    }
    fn wrapping_sub(self, other: Self) -> Self {
        self.wrapping_sub(other)
    }
    fn float(value: f64) -> f32 {
        value as f32
    }
    fn widen(value: f32) -> f64 {
        f64::from(value)
    }
    fn zero_interval() -> (Self, Self) {
        let (low, high) = (Self::of(-1e-35), Self::of(1e-35));
        (low, high - low)
    }
}

impl Key for u64 {
    type Float = f64;
    const MISSING: Self = 0xfff0_0000_0000_0000;
    const MAX_FINITE: Self = 0xffef_ffff_ffff_ffff;
    const NEVER: Self = u64::MAX;
    const ZERO: Self = 0;

    fn of(value: f64) -> Self {
        if value.is_nan() {
            return Self::MISSING;
        }
        let bits = (value + 0.0).to_bits();
        if bits >> 63 == 1 { !bits } else { bits | 1 << 63 }
    }
    fn wrapping_sub(self, other: Self) -> Self {
        self.wrapping_sub(other)
    }
    fn float(value: f64) -> f64 {
        value
    }
    fn widen(value: f64) -> f64 {
        value
    }
    fn zero_interval() -> (Self, Self) {
        let (low, high) = (Self::of(-1e-35), Self::of(1e-35));
        (low, high - low)
    }
}

/// One flattened node: a row goes to `next + 1` when `key − start <= span`, else to `next`.
#[derive(Clone, Copy)]
struct FlatNode<K> {
    start: K,
    span: K,
    /// The feature index; in forests with `Zero` missing types, also the flags above.
    feature: u32,
    next: u32,
}

#[derive(Clone, Copy)]
struct FlatTree {
    root: u32,
    depth: u32,
    group: u32,
}

/// A forest flattened for the CPU, in its library's arithmetic.
pub(super) enum NativeForest {
    /// XGBoost: `f32` values.
    F32(Flat<u32>),
    /// LightGBM: `f64` values.
    F64(Flat<u64>),
}

impl NativeForest {
    /// Flattens `forest`; batches use up to `threads` threads (default: every core).
    pub(super) fn new(forest: &Forest, threads: Option<usize>) -> Self {
        let threads = threads.unwrap_or_else(rayon::current_num_threads).max(1);
        match forest.arithmetic {
            Arithmetic::F32 => Self::F32(Flat::new(forest, threads)),
            Arithmetic::F64 => Self::F64(Flat::new(forest, threads)),
        }
    }

    /// Margins `[N × groups]`.
    pub(super) fn margins(&self, rows: &Rows) -> Vec<f64> {
        match self {
            Self::F32(flat) => flat.margins(rows),
            Self::F64(flat) => flat.margins(rows),
        }
    }
}

pub(super) struct Flat<K: Key> {
    nodes: Vec<FlatNode<K>>,
    /// Leaf values (times the tree's weight) by node index; 0 for splits.
    values: Vec<K::Float>,
    trees: Vec<FlatTree>,
    base: Vec<K::Float>,
    n_features: usize,
    n_groups: usize,
    zero_is_missing: bool,
    threads: usize,
}

impl<K: Key> Flat<K> {
    fn new(forest: &Forest, threads: usize) -> Self {
        let zero_is_missing = forest
            .trees
            .iter()
            .flat_map(|tree| &tree.nodes)
            .any(|node| matches!(node, Node::Split { zero_is_missing: true, .. }));
        let leaf = |at: u32| FlatNode { start: K::NEVER, span: K::ZERO, feature: 0, next: at };
        let mut nodes = Vec::new();
        let mut values = Vec::new();
        let mut trees = Vec::with_capacity(forest.trees.len());
        for tree in &forest.trees {
            // Validation already checked the structure, so the depth is known.
            let depth = tree_depth(tree, forest.n_features).unwrap_or(0) as u32;
            let root = nodes.len() as u32;

            // Breadth-first, placing each split's children side by side.
            nodes.push(leaf(root));
            values.push(K::float(0.0));
            let mut queue = std::collections::VecDeque::from([(0usize, root)]);
            while let Some((source, slot)) = queue.pop_front() {
                nodes[slot as usize] = match tree.nodes[source] {
                    Node::Leaf(value) => {
                        values[slot as usize] = Self::leaf_value(value, tree.weight, forest.base_margin[tree.group]);
                        leaf(slot)
                    }
                    Node::Split { feature, threshold, default_left, zero_is_missing: zero, left, right } => {
                        let next = nodes.len() as u32;
                        nodes.extend([leaf(next), leaf(next + 1)]);
                        values.extend([K::float(0.0), K::float(0.0)]);
                        queue.push_back((left as usize, next));
                        queue.push_back((right as usize, next + 1));
                        let (start, span) = Self::interval(threshold, default_left);
                        let flags = if zero_is_missing {
                            (if zero { ZERO_IS_MISSING } else { 0 }) | (if default_left { 0 } else { DEFAULT_RIGHT })
                        } else {
                            0
                        };
                        FlatNode { start, span, feature: feature | flags, next }
                    }
                };
            }
            trees.push(FlatTree { root, depth, group: tree.group as u32 });
        }
        Flat {
            nodes,
            values,
            trees,
            base: forest.base_margin.iter().map(|&b| K::float(b)).collect(),
            n_features: forest.n_features,
            n_groups: forest.n_groups,
            zero_is_missing,
            threads,
        }
    }

    /// What a leaf adds to the sum, in the library's arithmetic. XGBoost's DART predicts each
    /// tree on top of the base margin, takes the base away again and scales by the tree's
    /// weight, all in `f32`; that rounding is reproduced here once per leaf.
    fn leaf_value(value: f64, weight: Option<f64>, base: f64) -> K::Float {
        let Some(weight) = weight else { return K::float(value) };
        let on_base = K::widen(K::float(K::widen(K::float(base)) + K::widen(K::float(value))));
        let contribution = K::widen(K::float(on_base - K::widen(K::float(base))));
        K::float(contribution * K::widen(K::float(weight)))
    }

    /// The keys that go right at a split: from the threshold up to +∞ (missing included) or up
    /// to the largest finite value (missing excluded).
    fn interval(threshold: f64, default_left: bool) -> (K, K) {
        let start = K::of(threshold);
        let end = if default_left { K::MAX_FINITE } else { K::MISSING };
        if start > end { (K::NEVER, K::ZERO) } else { (start, end.wrapping_sub(start)) }
    }

    fn margins(&self, rows: &Rows) -> Vec<f64> {
        let n_rows = rows.n_rows();
        let mut sums: Vec<K::Float> = self.base.iter().copied().cycle().take(n_rows * self.n_groups).collect();
        let visits = n_rows * self.trees.iter().map(|tree| tree.depth as usize + 1).sum::<usize>();
        if self.threads > 1 && visits >= PARALLEL_MIN_VISITS {
            let chunk = n_rows.div_ceil(self.threads * 4).next_multiple_of(BLOCK);
            rows.values()
                .par_chunks(chunk * self.n_features)
                .zip(sums.par_chunks_mut(chunk * self.n_groups))
                .with_max_len(1)
                .for_each(|(values, sums)| self.accumulate(values, sums));
        } else {
            self.accumulate(rows.values(), &mut sums);
        }
        sums.into_iter().map(K::widen).collect()
    }

    /// Adds every tree's leaf to `sums` for the rows in `values`, block by block.
    fn accumulate(&self, values: &[f64], sums: &mut [K::Float]) {
        if self.zero_is_missing {
            self.accumulate_with::<true>(values, sums);
        } else {
            self.accumulate_with::<false>(values, sums);
        }
    }

    fn accumulate_with<const ZERO: bool>(&self, values: &[f64], sums: &mut [K::Float]) {
        let width = self.n_features;
        let zero = K::zero_interval();
        // Keys are made a block at a time, so that they are still in cache for the walk.
        let mut block = Vec::with_capacity(BLOCK * width);
        for (block_values, block_sums) in values.chunks(BLOCK * width).zip(sums.chunks_mut(BLOCK * self.n_groups)) {
            block.clear();
            block.extend(block_values.iter().map(|&v| K::of(v)));
            let block = block.as_slice();
            let rows = block.len() / width;
            let mut at = [0u32; BLOCK];
            for tree in &self.trees {
                // The first step starts every row at the root.
                for (row, node) in at[..rows].iter_mut().enumerate() {
                    *node = self.step::<ZERO>(tree.root, block, row * width, zero);
                }
                for _ in 1..tree.depth {
                    for (row, node) in at[..rows].iter_mut().enumerate() {
                        *node = self.step::<ZERO>(*node, block, row * width, zero);
                    }
                }
                let group = tree.group as usize;
                for (sum, &node) in block_sums[group..].iter_mut().step_by(self.n_groups).zip(&at[..rows]) {
                    *sum += self.values[node as usize];
                }
            }
        }
    }

    /// One step down from `node` for the row starting at `row` in `block`.
    #[inline(always)]
    #[allow(unsafe_code)]
    fn step<const ZERO: bool>(&self, node: u32, block: &[K], row: usize, zero: (K, K)) -> u32 {
        let feature_of = |node: &FlatNode<K>| if ZERO { node.feature & FEATURE } else { node.feature } as usize;
        // SAFETY: every `node` is produced by flattening: a split's `next` and `next + 1` and a
        // leaf's self-loop are all below `nodes.len()`. Every feature index is below
        // `n_features` (validated at load), and `row` starts a whole row of `block`. This is
        // the innermost loop of tree evaluation, where bounds checks cost a third of the time.
        let (node, key) = unsafe {
            let node = self.nodes.get_unchecked(node as usize);
            (node, *block.get_unchecked(row + feature_of(node)))
        };
        debug_assert!(feature_of(node) < self.n_features && row + self.n_features <= block.len());
        let mut go_right = key.wrapping_sub(node.start) <= node.span;
        if ZERO && node.feature & ZERO_IS_MISSING != 0 && key.wrapping_sub(zero.0) <= zero.1 {
            go_right = node.feature & DEFAULT_RIGHT != 0;
        }
        node.next + u32::from(go_right)
    }
}
