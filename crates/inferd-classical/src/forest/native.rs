//! The native engine: flattened trees walked by many rows at once.
//!
//! **Keys.** Every feature value becomes an unsigned integer key whose order is the order of the
//! numbers (the usual sign-flip of IEEE 754 bits, with -0 read as +0), and a missing value (NaN)
//! becomes a key above +∞. A split then sends a row right exactly when its key lies in one
//! interval: `[key(threshold), key(NaN)]` when missing values go right, `[key(threshold),
//! key(+∞)]` when they go left. That is one subtraction and one unsigned comparison,
//! `key − start <= span`, with no separate test for missing values.
//!
//! **Layout.** Every tree is renumbered so that a split's two children sit side by side (`next`
//! and `next + 1`) and every leaf loops to itself (its interval is empty). A row then takes
//! exactly `depth` steps through a tree with no leaf test: `node = next + (key − start <= span)`.
//!
//! **Blocks.** A block of rows walks each tree level by level, so the steps of different rows
//! are independent and the CPU overlaps their memory loads instead of waiting on one row's chain
//! of nodes. Large batches are split across threads; a small one runs on the caller's thread.
//!
//! LightGBM reads every value within its `kZeroThreshold` (`1e-35f`) of zero as zero; its `Zero`
//! missing type then sends zeros the default way, a second test on the splits that use it, which
//! forests without it never pay for.

use inferd_core::Rows;
use rayon::prelude::*;

use super::{Arithmetic, Forest, Node, tree_depth};

/// Rows whose keys are made together, to be walked while still in cache.
const BLOCK: usize = 64;
/// Rows walked through a tree together, their steps interleaved.
const LANES: usize = 8;
/// Node visits (rows × trees × depth) below which a batch stays on one thread: about 0.2 ms of
/// work, against tens of microseconds to hand work to another thread.
const PARALLEL_MIN_VISITS: usize = 300_000;
/// Flags in `feature`, set only in forests with `Zero` missing types.
const ZERO_IS_MISSING: u32 = 1 << 31;
const DEFAULT_RIGHT: u32 = 1 << 30;
const FEATURE: u32 = DEFAULT_RIGHT - 1;

/// LightGBM's `kZeroThreshold`: `1e-35` as an `f32`, widened.
const LIGHTGBM_ZERO: f64 = 1e-35f32 as f64;

/// The order-preserving integer key of a forest's element type: `u32` keys of `f32` values for
/// XGBoost, `u64` keys of `f64` values for LightGBM, each read as its library reads it.
pub(super) trait Key: Copy + Send + Sync + Ord + std::fmt::Debug {
    /// The sum type: the float the key was made from.
    type Float: Copy + Send + Sync + std::ops::AddAssign;
    /// The key of a missing value (NaN): above +∞.
    const MISSING: Self;
    /// The key of +∞.
    const INFINITY: Self;
    /// The largest key: no value has it, so an interval starting there is empty.
    const NEVER: Self;
    const ZERO: Self;
    /// The key of an input `value` as the library reads it.
    fn of(value: f64) -> Self;
    /// The key of a threshold, exactly (LightGBM's zero snapping applies to inputs only).
    fn threshold(value: f64) -> Self;
    fn wrapping_sub(self, other: Self) -> Self;
    fn float(value: f64) -> Self::Float;
    fn widen(value: Self::Float) -> f64;
}

impl Key for u32 {
    type Float = f32;
    const MISSING: Self = 0xffc0_0000;
    const INFINITY: Self = 0xff80_0000;
    const NEVER: Self = u32::MAX;
    const ZERO: Self = 0;

    /// XGBoost rounds to `f32` (finite values beyond its range become ±∞, compared as such).
    fn of(value: f64) -> Self {
        let value = value as f32;
        if value.is_nan() {
            return Self::MISSING;
        }
        let bits = (value + 0.0).to_bits();
        if bits >> 31 == 1 { !bits } else { bits | 1 << 31 }
    }
    fn threshold(value: f64) -> Self {
        Self::of(value)
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
}

impl Key for u64 {
    type Float = f64;
    const MISSING: Self = 0xfff8_0000_0000_0000;
    const INFINITY: Self = 0xfff0_0000_0000_0000;
    const NEVER: Self = u64::MAX;
    const ZERO: Self = 0;

    /// LightGBM reads values within `kZeroThreshold` of zero as zero.
    fn of(value: f64) -> Self {
        Self::threshold(if value.abs() <= LIGHTGBM_ZERO { 0.0 } else { value })
    }
    fn threshold(value: f64) -> Self {
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

/// A forest flattened for the CPU, in its library's arithmetic, with the threads its large
/// batches may use.
pub(super) struct NativeForest {
    flat: Flats,
    threads: usize,
    /// A pool of exactly `threads` threads when the model sets a limit; else rayon's global pool.
    pool: Option<rayon::ThreadPool>,
}

enum Flats {
    /// XGBoost: `f32` values.
    F32(Flat<u32>),
    /// LightGBM: `f64` values.
    F64(Flat<u64>),
}

impl NativeForest {
    /// Flattens `forest`; a large batch uses at most `threads` threads (default: every core).
    pub(super) fn new(forest: &Forest, threads: Option<usize>) -> Result<Self, String> {
        let pool = match threads {
            Some(limit) if limit > 1 => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(limit)
                    .thread_name(|index| format!("inferd-trees-{index}"))
                    .build()
                    .map_err(|err| format!("cannot start {limit} tree threads: {err}"))?,
            ),
            _ => None,
        };
        let flat = match forest.arithmetic {
            Arithmetic::F32 => Flats::F32(Flat::new(forest)),
            Arithmetic::F64 => Flats::F64(Flat::new(forest)),
        };
        Ok(Self { flat, threads: threads.unwrap_or_else(rayon::current_num_threads).max(1), pool })
    }

    /// Margins `[N × groups]`. A small batch runs on the caller's thread with no hand-off.
    pub(super) fn margins(&self, rows: &Rows) -> Vec<f64> {
        let visits = match &self.flat {
            Flats::F32(flat) => flat.visits(rows.n_rows()),
            Flats::F64(flat) => flat.visits(rows.n_rows()),
        };
        let split = (self.threads > 1 && visits >= PARALLEL_MIN_VISITS).then_some(self.threads);
        let run = || match &self.flat {
            Flats::F32(flat) => flat.margins(rows, split),
            Flats::F64(flat) => flat.margins(rows, split),
        };
        match (&self.pool, split) {
            (Some(pool), Some(_)) => pool.install(run),
            _ => run(),
        }
    }
}

pub(super) struct Flat<K: Key> {
    nodes: Vec<FlatNode<K>>,
    /// Leaf values by node index; 0 for splits.
    values: Vec<K::Float>,
    trees: Vec<FlatTree>,
    base: Vec<K::Float>,
    n_features: usize,
    n_groups: usize,
    zero_is_missing: bool,
}

impl<K: Key> Flat<K> {
    fn new(forest: &Forest) -> Self {
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
                        values[slot as usize] = K::float(value);
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
        }
    }

    /// The keys that go right at a split: from the threshold's up to missing's (missing values
    /// go right) or up to +∞'s (they go left).
    fn interval(threshold: f64, default_left: bool) -> (K, K) {
        let start = K::threshold(threshold);
        let end = if default_left { K::INFINITY } else { K::MISSING };
        if start > end { (K::NEVER, K::ZERO) } else { (start, end.wrapping_sub(start)) }
    }

    /// Node visits for `n_rows` rows: the work of a batch.
    fn visits(&self, n_rows: usize) -> usize {
        n_rows.saturating_mul(self.trees.iter().map(|tree| tree.depth as usize + 1).sum::<usize>())
    }

    /// Margins `[N × groups]`, split into chunks for `threads` threads if given.
    fn margins(&self, rows: &Rows, threads: Option<usize>) -> Vec<f64> {
        let n_rows = rows.n_rows();
        let mut sums: Vec<K::Float> = self.base.iter().copied().cycle().take(n_rows * self.n_groups).collect();
        if let Some(threads) = threads {
            let chunk = n_rows.div_ceil(threads * 4).next_multiple_of(BLOCK);
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
        let zero = K::of(0.0);
        // Keys are made a block at a time, so that they are still in cache for the walk.
        let mut block = Vec::with_capacity(BLOCK * width);
        for (block_values, block_sums) in values.chunks(BLOCK * width).zip(sums.chunks_mut(BLOCK * self.n_groups)) {
            block.clear();
            block.extend(block_values.iter().map(|&v| K::of(v)));
            let block = block.as_slice();
            let rows = block.len() / width;
            for tree in &self.trees {
                let group = tree.group as usize;
                // LANES rows at a time walk the whole tree with their nodes in registers, their
                // steps interleaved; the rest of the block one by one.
                let mut row = 0;
                while row + LANES <= rows {
                    let mut at = [tree.root; LANES];
                    for _ in 0..tree.depth {
                        for (lane, node) in at.iter_mut().enumerate() {
                            *node = self.step::<ZERO>(*node, block, (row + lane) * width, zero);
                        }
                    }
                    for (lane, node) in at.into_iter().enumerate() {
                        block_sums[(row + lane) * self.n_groups + group] += self.values[node as usize];
                    }
                    row += LANES;
                }
                for row in row..rows {
                    let mut node = tree.root;
                    for _ in 0..tree.depth {
                        node = self.step::<ZERO>(node, block, row * width, zero);
                    }
                    block_sums[row * self.n_groups + group] += self.values[node as usize];
                }
            }
        }
    }

    /// One step down from `node` for the row starting at `row` in `block`.
    #[inline(always)]
    #[allow(unsafe_code)]
    fn step<const ZERO: bool>(&self, node: u32, block: &[K], row: usize, zero: K) -> u32 {
        let feature_of = |node: &FlatNode<K>| if ZERO { node.feature & FEATURE } else { node.feature } as usize;
        debug_assert!((node as usize) < self.nodes.len() && row + self.n_features <= block.len());
        // SAFETY: every `node` is produced by flattening: a split's `next` and `next + 1` and a
        // leaf's self-loop are all below `nodes.len()`. Every feature index is below
        // `n_features` (checked by `Forest::validated`, which `ForestPredictor::new` runs), and
        // `row` starts a whole row of `block`. This is the innermost loop of tree evaluation,
        // where bounds checks cost a third of the time.
        let (node, key) = unsafe {
            let node = self.nodes.get_unchecked(node as usize);
            debug_assert!(feature_of(node) < self.n_features);
            (node, *block.get_unchecked(row + feature_of(node)))
        };
        let mut go_right = key.wrapping_sub(node.start) <= node.span;
        if ZERO && node.feature & ZERO_IS_MISSING != 0 && key == zero {
            go_right = node.feature & DEFAULT_RIGHT != 0;
        }
        node.next + u32::from(go_right)
    }
}
