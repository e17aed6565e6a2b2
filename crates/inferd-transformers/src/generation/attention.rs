//! Causal attention of a step's new rows against each sequence's key/value cache, on the CPU.
//!
//! Work is split into tasks per sequence, key/value head and up to [`ROWS`] new rows, so that
//! the query heads sharing a key/value head read its keys and values together and long prompts
//! still spread over the threads. Within a task, up to three of those query heads are computed
//! at once, so that each cached key and value is loaded (and converted from `f16`) once for all
//! of them. Every row is computed by the same instructions whatever the batch: scores are dot
//! products in eight lanes added in a fixed order ([`dot`]), four keys and three heads at a time
//! but each pair on its own; the weighted sum of values runs over the keys in order.

#![allow(unsafe_code)]

use inferd_core::SequenceStep;
use rayon::prelude::*;

use super::config::LlamaConfig;
use super::kv_cache::{KvElement, LayerRows, LlamaCache};
use super::step::Span;
use crate::kernels;

/// New rows per attention task.
const ROWS: usize = 16;

/// One head's cached keys or values: row `i` is `data[i·width..][..width]`.
struct Rows<'a, T> {
    data: &'a [T],
    width: usize,
}

impl<T> Clone for Rows<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Rows<'_, T> {}

impl<T> Rows<'_, T> {
    fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.width..][..self.width]
    }
}

/// Causal attention of every new row against its sequence's cache (which already holds the new
/// keys and values) for layer `layer`, per sequence, key/value head and chunk of rows in
/// parallel. `qkv` is `[rows × (q | k | v)]`; `out` receives `[rows × heads·head_dim]`.
pub(super) fn attend(
    config: &LlamaConfig,
    batch: &[SequenceStep<'_, LlamaCache>],
    spans: &[Span],
    layer: usize,
    qkv: &[f32],
    out: &mut [f32],
) {
    let hd = config.head_dim;
    let (q_size, kv_size) = (config.heads * hd, config.kv_size());
    let qkv_size = q_size + 2 * kv_size;
    let group = config.heads / config.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let tasks: Vec<(usize, usize, usize)> = spans
        .iter()
        .enumerate()
        .flat_map(|(s, span)| {
            (0..config.kv_heads)
                .flat_map(move |kv| (0..span.len.div_ceil(ROWS)).map(move |chunk| (s, kv, chunk * ROWS)))
        })
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(s, kv, first)| {
            let span = spans[s];
            let rows = ROWS.min(span.len - first);
            let task = Task { qkv, qkv_size, span, first, rows, kv, group, head_dim: hd, scale };
            match batch[s].cache.layer(layer) {
                LayerRows::F16(keys, values) => task.run(keys.head(kv), values.head(kv)),
                LayerRows::F32(keys, values) => task.run(keys.head(kv), values.head(kv)),
            }
        })
        .collect();
    for (&(s, kv, first), result) in tasks.iter().zip(results) {
        let span = spans[s];
        for (i, values) in result.chunks_exact(group * hd).enumerate() {
            let row = span.start + first + i;
            let start = row * q_size + kv * group * hd;
            out[start..start + group * hd].copy_from_slice(values);
        }
    }
}

/// One attention task: rows `first..first + rows` of a sequence, for the query heads of
/// key/value head `kv`.
struct Task<'a> {
    qkv: &'a [f32],
    qkv_size: usize,
    span: Span,
    first: usize,
    rows: usize,
    kv: usize,
    group: usize,
    head_dim: usize,
    scale: f32,
}

impl Task<'_> {
    /// `[rows × group × head_dim]`, against the key/value head's cached keys and values
    /// (`[tokens × head_dim]` each).
    fn run<T: KvElement>(&self, keys: &[T], values: &[T]) -> Vec<f32> {
        let hd = self.head_dim;
        let keys = Rows { data: keys, width: hd };
        let values = Rows { data: values, width: hd };
        let mut result = vec![0f32; self.rows * self.group * hd];
        let mut scores = Vec::with_capacity(QUERIES * (self.span.past + self.span.len));
        let mut queries = vec![0f32; QUERIES * hd];
        for (i, outputs) in result.chunks_exact_mut(self.group * hd).enumerate() {
            let row = self.span.start + self.first + i;
            let visible = self.span.past + self.first + i + 1;
            let heads = &self.qkv[row * self.qkv_size + self.kv * self.group * hd..][..self.group * hd];
            for (heads, outputs) in heads.chunks(QUERIES * hd).zip(outputs.chunks_mut(QUERIES * hd)) {
                let queries = &mut queries[..heads.len()];
                queries.copy_from_slice(heads);
                T::round_slice(queries);
                let attend = match heads.len() / hd {
                    1 => attend_heads::<T, 1>,
                    2 => attend_heads::<T, 2>,
                    _ => attend_heads::<T, QUERIES>,
                };
                attend(queries, keys, values, visible, self.scale, &mut scores, outputs);
            }
        }
        result
    }
}

/// Query heads of one key/value head computed together: each key and value is loaded (and
/// converted from `f16`) once for all of them.
const QUERIES: usize = 3;

/// The attention of `N` query heads (`queries`, `[N × head_dim]`, already rounded to the cache's
/// precision) over the first `visible` keys and values they share, into `outputs`
/// (`[N × head_dim]`). Each head's attention weights are rounded to the cache's precision
/// ([`KvElement::round_slice`]) before the weighted sum.
fn attend_heads<T: KvElement, const N: usize>(
    queries: &[f32],
    keys: Rows<'_, T>,
    values: Rows<'_, T>,
    visible: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    outputs: &mut [f32],
) {
    // The first rows of both, which the prefetches running ahead of each pass do not cover.
    let ahead = PREFETCH_ROWS.min(visible) * std::mem::size_of::<T>();
    kernels::prefetch(keys.data.as_ptr().cast(), ahead * keys.width);
    kernels::prefetch(values.data.as_ptr().cast(), ahead * values.width);
    scores.clear();
    scores.resize(N * visible, 0.0);
    key_scores::<T, N>(queries, keys, scale, scores);
    for head in scores.chunks_exact_mut(visible) {
        kernels::softmax(head);
        T::round_slice(head);
    }
    weighted_sum::<T, N>(scores, values, outputs);
}

/// `scores[h·visible + i] = (query h · key i) · scale`, four keys at a time, each pair through
/// [`dot`]'s arithmetic.
fn key_scores<T: KvElement, const N: usize>(queries: &[f32], keys: Rows<'_, T>, scale: f32, scores: &mut [f32]) {
    let visible = scores.len() / N;
    let mut i = key_scores_by_four::<T, N>(queries, keys, scale, scores);
    while i + 4 <= visible {
        for ahead in i + PREFETCH_ROWS..(i + PREFETCH_ROWS + 4).min(visible) {
            prefetch_row(keys, ahead);
        }
        let rows = [keys.row(i), keys.row(i + 1), keys.row(i + 2), keys.row(i + 3)];
        store_scores(&dots::<T, N, 4>(queries, rows), scores, visible, i, scale);
        i += 4;
    }
    while i < visible {
        store_scores(&dots::<T, N, 1>(queries, [keys.row(i)]), scores, visible, i, scale);
        i += 1;
    }
}

/// [`key_scores`] for the leading multiple of four keys, when rows are whole vectors: each
/// pair through [`dot`]'s arithmetic, with fewer instructions than [`dots`] spends on four keys
/// (whose twelve sums, with three queries, would not all stay in registers); returns the keys
/// done.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
fn key_scores_by_four<T: KvElement, const N: usize>(
    queries: &[f32],
    keys: Rows<'_, T>,
    scale: f32,
    scores: &mut [f32],
) -> usize {
    use std::arch::x86_64::*;
    let width = keys.width;
    let visible = scores.len() / N;
    let whole = visible / 4 * 4;
    if !width.is_multiple_of(8) || width == 0 {
        return 0;
    }
    assert!(queries.len() == N * width && scores.len() == N * visible && keys.data.len() >= visible * width);
    let (q, row_bytes) = (queries.as_ptr(), width * std::mem::size_of::<T>());
    // SAFETY: AVX2, FMA and F16C are enabled at compile time. Key loads read 8 values at
    // `(i + key)·width + k` with `i + key < visible` and `k + 8 ≤ width` (rows inside
    // `keys.data`, asserted); query loads read `h·width + k < N·width`; stores write 4 scores
    // at `h·visible + i`, `i + 4 ≤ visible`.
    unsafe {
        let mut i = 0;
        while i < whole {
            let base = keys.data.as_ptr().add(i * width);
            kernels::prefetch(base.wrapping_add(PREFETCH_ROWS * width).cast(), 4 * row_bytes);
            // Keys 0 and 1, then 2 and 3 (2·N sums live with N query chunks); each pair's sums
            // folded to half width (sⱼ = pⱼ + pⱼ₊₄) before the next pair starts, and two
            // horizontal additions of all four give (s₀ + s₁) + (s₂ + s₃), `dot`'s order.
            let pair = |first: usize| -> [__m256; N] {
                let mut acc = [[_mm256_setzero_ps(); 2]; N];
                let (row0, row1) = (base.add(first * width), base.add((first + 1) * width));
                let mut k = 0;
                while k < width {
                    let xs: [__m256; N] = std::array::from_fn(|h| _mm256_loadu_ps(q.add(h * width + k)));
                    let y = T::load8(row0.add(k));
                    for (acc, x) in acc.iter_mut().zip(&xs) {
                        acc[0] = _mm256_fmadd_ps(*x, y, acc[0]);
                    }
                    let y = T::load8(row1.add(k));
                    for (acc, x) in acc.iter_mut().zip(&xs) {
                        acc[1] = _mm256_fmadd_ps(*x, y, acc[1]);
                    }
                    k += 8;
                }
                acc.map(|[p, r]| {
                    _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(p, r), _mm256_permute2f128_ps::<0x31>(p, r))
                })
            };
            let (first, second) = (pair(0), pair(2));
            let scale = _mm_set1_ps(scale);
            for h in 0..N {
                // (s₀ + s₁) + (s₂ + s₃); lanes: keys 0, 2, -, - | keys 1, 3, -, -.
                let sums = _mm256_hadd_ps(_mm256_hadd_ps(first[h], second[h]), _mm256_setzero_ps());
                let ordered = _mm_unpacklo_ps(_mm256_castps256_ps128(sums), _mm256_extractf128_ps::<1>(sums));
                _mm_storeu_ps(scores.as_mut_ptr().add(h * visible + i), _mm_mul_ps(ordered, scale));
            }
            i += 4;
        }
        whole
    }
}

/// [`key_scores`]' leading keys (scalar: none; the caller's loop does every key).
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn key_scores_by_four<T: KvElement, const N: usize>(
    _queries: &[f32],
    _keys: Rows<'_, T>,
    _scale: f32,
    _scores: &mut [f32],
) -> usize {
    0
}

/// How many keys or values ahead of the one being read its row is prefetched. A sequence's
/// cache is read once per step and layer, usually from memory (the weights streamed through
/// the caches since); without the hint each row's lines are waited for in turn.
const PREFETCH_ROWS: usize = 24;

/// Hints the cache lines of row `i` into the first-level cache.
#[inline(always)]
fn prefetch_row<T>(rows: Rows<'_, T>, i: usize) {
    let row = rows.row(i);
    kernels::prefetch(row.as_ptr().cast(), std::mem::size_of_val(row));
}

/// Puts the scaled dot products of `N` heads with keys `first..first + K` in their places.
#[inline(always)]
fn store_scores<const N: usize, const K: usize>(
    dots: &[[f32; K]; N],
    scores: &mut [f32],
    visible: usize,
    first: usize,
    scale: f32,
) {
    for (head, dots) in dots.iter().enumerate() {
        for (k, value) in dots.iter().enumerate() {
            scores[head * visible + first + k] = value * scale;
        }
    }
}

/// `outputs[h] = Σᵢ scores[h·visible + i] · value i` for each of the `N` heads, over the keys
/// in order (each column its own sum of fused multiply-adds).
fn weighted_sum<T: KvElement, const N: usize>(scores: &[f32], values: Rows<'_, T>, outputs: &mut [f32]) {
    let width = outputs.len() / N;
    let visible = scores.len() / N;
    let done = weighted_sum_chunks::<T, N>(scores, values, outputs);
    if done < width {
        for (weights, output) in scores.chunks_exact(visible).zip(outputs.chunks_exact_mut(width)) {
            let rest = &mut output[done..];
            rest.fill(0.0);
            for (i, &weight) in weights.iter().enumerate() {
                for (o, &v) in rest.iter_mut().zip(&values.row(i)[done..]) {
                    *o = weight.mul_add(v.to_f32(), *o);
                }
            }
        }
    }
}

/// [`weighted_sum`] over the leading columns, in chunks whose `N` heads' sums stay in registers
/// and are enough to keep the multipliers busy; returns the columns done.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
fn weighted_sum_chunks<T: KvElement, const N: usize>(
    scores: &[f32],
    values: Rows<'_, T>,
    outputs: &mut [f32],
) -> usize {
    // Each sum takes one fused multiply-add per key, so a chunk needs about 8 sums in flight to
    // keep the multipliers busy (4 cycles' latency, 2 per cycle).
    let width = outputs.len() / N;
    let mut done = 0;
    if N >= 3 {
        // Three heads: 9 sums, 3 weights and a value in 13 registers (12 sums would spill one,
        // and a spilled sum waits on a store and a load every key).
        while width - done >= 24 {
            done = weighted_sum_lanes::<T, N, 3>(scores, values, outputs, done);
        }
        while width - done >= 16 {
            done = weighted_sum_lanes::<T, N, 2>(scores, values, outputs, done);
        }
    } else {
        while width - done >= 32 {
            done = weighted_sum_lanes::<T, N, 4>(scores, values, outputs, done);
        }
    }
    while width - done >= 8 {
        done = weighted_sum_lanes::<T, N, 1>(scores, values, outputs, done);
    }
    done
}

/// [`weighted_sum_chunks`] in chunks of `8·L` columns.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline(always)]
fn weighted_sum_lanes<T: KvElement, const N: usize, const L: usize>(
    scores: &[f32],
    values: Rows<'_, T>,
    outputs: &mut [f32],
    start: usize,
) -> usize {
    use std::arch::x86_64::*;
    let chunk = 8 * L;
    let width = outputs.len() / N;
    let visible = scores.len() / N;
    assert!(outputs.len() == N * width && scores.len() == N * visible);
    let stride = values.width;
    assert!(values.data.len() >= visible * stride && width <= stride);
    let row_bytes = stride * std::mem::size_of::<T>();
    if start + chunk <= width {
        // SAFETY: AVX2 and FMA are enabled at compile time; each load reads 8 values at
        // `i·stride + start + 8·lane < visible·stride` (inside `values.data`, asserted), each
        // weight is `scores[h·visible + i]` (`i < visible`, asserted), and each store 8 floats of
        // head `h`'s output (`h·width + start + 8·L ≤ N·width`, asserted).
        unsafe {
            let mut sum = [[_mm256_setzero_ps(); L]; N];
            for i in 0..visible {
                let row = values.data.as_ptr().add(i * stride);
                if start == 0 {
                    kernels::prefetch(row.wrapping_add(PREFETCH_ROWS * stride).cast(), row_bytes);
                }
                let weights: [__m256; N] =
                    std::array::from_fn(|h| _mm256_set1_ps(*scores.get_unchecked(h * visible + i)));
                for lane in 0..L {
                    let value = T::load8(row.add(start + 8 * lane));
                    for (sums, weight) in sum.iter_mut().zip(&weights) {
                        sums[lane] = _mm256_fmadd_ps(*weight, value, sums[lane]);
                    }
                }
            }
            for (h, sums) in sum.iter().enumerate() {
                for (lane, sum) in sums.iter().enumerate() {
                    _mm256_storeu_ps(outputs.as_mut_ptr().add(h * width + start + 8 * lane), *sum);
                }
            }
        }
    }
    start + chunk
}

/// [`weighted_sum`]'s chunks (scalar: none; the caller's loop does every column).
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn weighted_sum_chunks<T: KvElement, const N: usize>(
    _scores: &[f32],
    _values: Rows<'_, T>,
    _outputs: &mut [f32],
) -> usize {
    0
}

/// `a · b` in eight lane-wise partial sums (fused multiply-adds over chunks of eight), added as
/// `((p₀+p₄)+(p₁+p₅))+((p₂+p₆)+(p₃+p₇))`, then the elements past the last chunk in order.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    dots::<f32, 1, 1>(a, [b])[0][0]
}

/// [`dot`] of each of `N` vectors laid end to end in `a` with each of `K` vectors (the same
/// arithmetic for every pair; each vector loaded once).
#[inline(always)]
fn dots<T: KvElement, const N: usize, const K: usize>(a: &[f32], bs: [&[T]; K]) -> [[f32; K]; N] {
    let len = a.len() / N;
    assert!(a.len() == N * len && bs.iter().all(|b| b.len() == len), "dot: lengths differ");
    let chunks = len / 8 * 8;
    let mut totals = lanes::<T, N, K>(a, bs, chunks);
    for (totals, a) in totals.iter_mut().zip(a.chunks_exact(len)) {
        for (total, b) in totals.iter_mut().zip(bs) {
            for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
                *total += x * y.to_f32();
            }
        }
    }
    totals
}

/// The chunked part of [`dots`], in AVX2.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline(always)]
fn lanes<T: KvElement, const N: usize, const K: usize>(a: &[f32], bs: [&[T]; K], chunks: usize) -> [[f32; K]; N] {
    use std::arch::x86_64::*;
    let len = a.len() / N;
    // SAFETY: AVX2 and FMA are enabled at compile time; loads read 8 floats at offsets below
    // `chunks` ≤ the length of every `b` and of each of `a`'s `N` vectors (asserted by the
    // caller).
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); K]; N];
        let mut k = 0;
        while k < chunks {
            let xs: [__m256; N] = std::array::from_fn(|h| _mm256_loadu_ps(a.as_ptr().add(h * len + k)));
            for (key, b) in bs.iter().enumerate() {
                let y = T::load8(b.as_ptr().add(k));
                for (acc, x) in acc.iter_mut().zip(&xs) {
                    acc[key] = _mm256_fmadd_ps(*x, y, acc[key]);
                }
            }
            k += 8;
        }
        acc.map(|acc| {
            acc.map(|acc| {
                // (p₀+p₄, p₁+p₅, p₂+p₆, p₃+p₇), then (s₀+s₁) + (s₂+s₃).
                let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
                let u = _mm_add_ps(s, _mm_shuffle_ps(s, s, 0b10_11_00_01));
                _mm_cvtss_f32(_mm_add_ss(u, _mm_movehl_ps(u, u)))
            })
        })
    }
}

/// The chunked part of [`dots`] (scalar, the same arithmetic as the AVX2 path).
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
#[inline(always)]
fn lanes<T: KvElement, const N: usize, const K: usize>(a: &[f32], bs: [&[T]; K], chunks: usize) -> [[f32; K]; N] {
    let len = a.len() / N;
    std::array::from_fn(|h| {
        let a = &a[h * len..(h + 1) * len];
        bs.map(|b| {
            let mut p = [0f32; 8];
            for (x, y) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
                for lane in 0..8 {
                    p[lane] = x[lane].mul_add(y[lane].to_f32(), p[lane]);
                }
            }
            ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_keys_together_equal_one_pair_at_a_time() {
        let a: Vec<f32> = (0..3 * 67).map(|i| (i as f32 * 0.37).sin()).collect();
        let bs: Vec<Vec<f32>> = (0..4).map(|k| (0..67).map(|i| (i as f32 * 0.11 + k as f32).cos()).collect()).collect();
        let together = dots::<f32, 3, 4>(&a, [&bs[0][..], &bs[1][..], &bs[2][..], &bs[3][..]]);
        for (h, query) in a.chunks_exact(67).enumerate() {
            for (k, b) in bs.iter().enumerate() {
                assert_eq!(together[h][k], dot(query, b));
                let exact: f64 = query.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
                assert!((f64::from(together[h][k]) - exact).abs() < 1e-5, "{} vs {exact}", together[h][k]);
            }
        }
    }

    #[test]
    fn scores_four_keys_at_a_time_equal_each_dot_product() {
        use half::f16;
        // 3 heads of width 64; 11 keys: two groups of four, then three one by one.
        let (width, tokens, scale) = (64, 11, 0.125);
        let stored: Vec<f16> = (0..tokens * width).map(|i| f16::from_f32((i as f32 * 0.017).sin())).collect();
        let keys = Rows { data: &stored[..], width };
        let mut queries: Vec<f32> = (0..3 * width).map(|i| (i as f32 * 0.07).cos() * 1.5).collect();
        f16::round_slice(&mut queries);
        let mut scores = vec![0f32; 3 * tokens];
        key_scores::<f16, 3>(&queries, keys, scale, &mut scores);
        for (h, query) in queries.chunks_exact(width).enumerate() {
            for i in 0..tokens {
                let key: Vec<f32> = keys.row(i).iter().map(|v| v.to_f32()).collect();
                assert_eq!(scores[h * tokens + i], dot(query, &key) * scale, "head {h}, key {i}");
            }
        }
    }

    #[test]
    fn heads_attended_together_equal_heads_attended_alone() {
        use half::f16;
        // 3 heads of width 72 (two vector chunks and a scalar remainder), 11 cached tokens.
        let (width, tokens) = (72, 11);
        let stored: Vec<f16> = (0..tokens * width).map(|i| f16::from_f32((i as f32 * 0.013).sin())).collect();
        let values: Vec<f16> = (0..tokens * width).map(|i| f16::from_f32((i as f32 * 0.029).cos())).collect();
        let keys = Rows { data: &stored[..], width };
        let values = Rows { data: &values[..], width };
        let mut queries: Vec<f32> = (0..3 * width).map(|i| (i as f32 * 0.05).cos() * 2.0).collect();
        f16::round_slice(&mut queries);
        let (mut scores, mut together) = (Vec::new(), vec![0f32; 3 * width]);
        attend_heads::<f16, 3>(&queries, keys, values, tokens, 0.125, &mut scores, &mut together);
        for (query, expected) in queries.chunks_exact(width).zip(together.chunks_exact(width)) {
            let mut alone = vec![0f32; width];
            attend_heads::<f16, 1>(query, keys, values, tokens, 0.125, &mut scores, &mut alone);
            assert_eq!(alone, expected);
        }
    }
}
