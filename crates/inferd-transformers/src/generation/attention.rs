//! Causal attention of a step's new rows against each sequence's key/value cache, on the CPU.
//!
//! Work is split into tasks per sequence, key/value head and up to [`ROWS`] new rows, so that
//! the query heads sharing a key/value head read its keys and values together and long prompts
//! still spread over the threads. Every row is computed by the same instructions whatever the
//! batch: scores are dot products in eight lanes added in a fixed order ([`dot`]), four keys at
//! a time but each key on its own; the weighted sum of values runs over the keys in order.

#![allow(unsafe_code)]

use inferd_core::SequenceStep;
use rayon::prelude::*;

use super::config::LlamaConfig;
use super::kv_cache::{KvElement, LayerRows, LlamaCache};
use super::step::Span;
use crate::kernels;

/// New rows per attention task.
const ROWS: usize = 16;

/// One head's keys or values in a cache: row `i` is `data[i·stride + offset ..][..width]`.
struct Rows<'a, T> {
    data: &'a [T],
    stride: usize,
    offset: usize,
}

impl<T> Clone for Rows<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Rows<'_, T> {}

impl<T> Rows<'_, T> {
    fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.stride + self.offset..]
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
                LayerRows::F16(keys, values) => task.run(keys, values, kv_size),
                LayerRows::F32(keys, values) => task.run(keys, values, kv_size),
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
    /// `[rows × group × head_dim]`, against the cache's keys and values (`[tokens × stride]`).
    fn run<T: KvElement>(&self, keys: &[T], values: &[T], stride: usize) -> Vec<f32> {
        let hd = self.head_dim;
        let keys = Rows { data: keys, stride, offset: self.kv * hd };
        let values = Rows { data: values, stride, offset: self.kv * hd };
        let mut result = vec![0f32; self.rows * self.group * hd];
        let mut scores = Vec::with_capacity(self.span.past + self.span.len);
        let mut query = vec![0f32; hd];
        for (i, outputs) in result.chunks_exact_mut(self.group * hd).enumerate() {
            let row = self.span.start + self.first + i;
            let visible = self.span.past + self.first + i + 1;
            for (g, output) in outputs.chunks_exact_mut(hd).enumerate() {
                let head = self.kv * self.group + g;
                query.copy_from_slice(&self.qkv[row * self.qkv_size + head * hd..][..hd]);
                T::round_slice(&mut query);
                attend_row(&query, keys, values, visible, self.scale, &mut scores, output);
            }
        }
        result
    }
}

/// One query row's attention over the first `visible` keys and values. The query and the
/// attention weights are rounded to the cache's precision first ([`KvElement::round_slice`]).
fn attend_row<T: KvElement>(
    query: &[f32],
    keys: Rows<'_, T>,
    values: Rows<'_, T>,
    visible: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    output: &mut [f32],
) {
    scores.clear();
    scores.resize(visible, 0.0);
    key_scores(query, keys, scale, scores);
    kernels::softmax(scores);
    T::round_slice(scores);
    weighted_sum(scores, values, output);
}

/// `scores[i] = (query · key i) · scale`, four keys at a time, each key through [`dot`]'s
/// arithmetic.
fn key_scores<T: KvElement>(query: &[f32], keys: Rows<'_, T>, scale: f32, scores: &mut [f32]) {
    let width = query.len();
    let mut quads = scores.chunks_exact_mut(4);
    let mut i = 0;
    for quad in &mut quads {
        let rows = [keys.row(i), keys.row(i + 1), keys.row(i + 2), keys.row(i + 3)];
        let dots = dot4(query, rows.map(|row| &row[..width]));
        for (score, value) in quad.iter_mut().zip(dots) {
            *score = value * scale;
        }
        i += 4;
    }
    for score in quads.into_remainder() {
        *score = dot4(query, [&keys.row(i)[..width]])[0] * scale;
        i += 1;
    }
}

/// `output = Σ scores[i] · value i`, over the keys in order (each column its own sum of fused
/// multiply-adds).
fn weighted_sum<T: KvElement>(scores: &[f32], values: Rows<'_, T>, output: &mut [f32]) {
    let width = output.len();
    let done = weighted_sum_chunks(scores, values, output);
    if done < width {
        let rest = &mut output[done..];
        rest.fill(0.0);
        for (i, &weight) in scores.iter().enumerate() {
            for (o, &v) in rest.iter_mut().zip(&values.row(i)[done..width]) {
                *o = weight.mul_add(v.to_f32(), *o);
            }
        }
    }
}

/// [`weighted_sum`] over the leading columns in chunks of 64 whose sums stay in registers;
/// returns the columns done.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
fn weighted_sum_chunks<T: KvElement>(scores: &[f32], values: Rows<'_, T>, output: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    const CHUNK: usize = 64;
    let width = output.len();
    let mut start = 0;
    while start + CHUNK <= width {
        // SAFETY: AVX2 and FMA are enabled at compile time; each load reads 8 values of a row
        // slice checked to hold `start + 64` of them, and each store 8 floats of `output`
        // (`start + 64 ≤ width`).
        unsafe {
            let mut sum = [_mm256_setzero_ps(); CHUNK / 8];
            for (i, &weight) in scores.iter().enumerate() {
                let row = &values.row(i)[..start + CHUNK];
                let weight = _mm256_set1_ps(weight);
                for (lane, sum) in sum.iter_mut().enumerate() {
                    *sum = _mm256_fmadd_ps(weight, T::load8(row.as_ptr().add(start + 8 * lane)), *sum);
                }
            }
            for (lane, sum) in sum.iter().enumerate() {
                _mm256_storeu_ps(output.as_mut_ptr().add(start + 8 * lane), *sum);
            }
        }
        start += CHUNK;
    }
    start
}

/// [`weighted_sum`]'s chunks (scalar: none; the caller's loop does every column).
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn weighted_sum_chunks<T: KvElement>(_scores: &[f32], _values: Rows<'_, T>, _output: &mut [f32]) -> usize {
    0
}

/// `a · b` in eight lane-wise partial sums (fused multiply-adds over chunks of eight), added as
/// `((p₀+p₄)+(p₁+p₅))+((p₂+p₆)+(p₃+p₇))`, then the elements past the last chunk in order.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot4(a, [b; 1])[0]
}

/// [`dot`] of `a` with each of `N` vectors (the same arithmetic, `a` loaded once).
#[inline(always)]
fn dot4<T: KvElement, const N: usize>(a: &[f32], bs: [&[T]; N]) -> [f32; N] {
    let len = a.len();
    assert!(bs.iter().all(|b| b.len() == len), "dot: lengths differ");
    let chunks = len / 8 * 8;
    let mut totals = lanes(a, bs, chunks);
    for (total, b) in totals.iter_mut().zip(bs) {
        for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
            *total += x * y.to_f32();
        }
    }
    totals
}

/// The chunked part of [`dot4`], in AVX2.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline(always)]
fn lanes<T: KvElement, const N: usize>(a: &[f32], bs: [&[T]; N], chunks: usize) -> [f32; N] {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 and FMA are enabled at compile time; loads read 8 floats at offsets below
    // `chunks` ≤ the length of `a` and of every `b` (asserted by the caller).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); N];
        let mut k = 0;
        while k < chunks {
            let x = _mm256_loadu_ps(a.as_ptr().add(k));
            for (acc, b) in acc.iter_mut().zip(&bs) {
                *acc = _mm256_fmadd_ps(x, T::load8(b.as_ptr().add(k)), *acc);
            }
            k += 8;
        }
        acc.map(|acc| {
            // (p₀+p₄, p₁+p₅, p₂+p₆, p₃+p₇), then (s₀+s₁) + (s₂+s₃).
            let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            let u = _mm_add_ps(s, _mm_shuffle_ps(s, s, 0b10_11_00_01));
            _mm_cvtss_f32(_mm_add_ss(u, _mm_movehl_ps(u, u)))
        })
    }
}

/// The chunked part of [`dot4`] (scalar, the same arithmetic as the AVX2 path).
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
#[inline(always)]
fn lanes<T: KvElement, const N: usize>(a: &[f32], bs: [&[T]; N], chunks: usize) -> [f32; N] {
    bs.map(|b| {
        let mut p = [0f32; 8];
        for (x, y) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
            for lane in 0..8 {
                p[lane] = x[lane].mul_add(y[lane].to_f32(), p[lane]);
            }
        }
        ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_keys_at_a_time_equal_one_at_a_time() {
        let a: Vec<f32> = (0..67).map(|i| (i as f32 * 0.37).sin()).collect();
        let bs: Vec<Vec<f32>> = (0..4).map(|k| (0..67).map(|i| (i as f32 * 0.11 + k as f32).cos()).collect()).collect();
        let together = dot4(&a, [&bs[0][..], &bs[1][..], &bs[2][..], &bs[3][..]]);
        for (k, b) in bs.iter().enumerate() {
            assert_eq!(together[k], dot(&a, b));
            let exact: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            assert!((f64::from(together[k]) - exact).abs() < 1e-5, "{} vs {exact}", together[k]);
        }
    }
}
