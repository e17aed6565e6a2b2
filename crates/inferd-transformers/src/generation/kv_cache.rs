//! A sequence's key/value cache for the native engine, in `f16` or `f32`.
//!
//! Every decode step reads each sequence's whole cache: with SmolLM2 that is 46 KB per cached
//! token in `f32`, more than the weights once 8 sequences hold 200 tokens each. GGUF models
//! therefore keep keys and values in `f16` and, as llama.cpp does, round the queries and the
//! attention weights to `f16` before their products with them (products and sums stay in
//! `f32`). Checkpoints computed in `f32` keep `f32` throughout, within their reference
//! library's tolerance.

#![allow(unsafe_code)]

use half::f16;
use half::slice::HalfFloatSliceExt;

/// How a cache stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvPrecision {
    /// Half precision (rounded to nearest), half the memory and memory traffic.
    F16,
    /// Single precision, as computed.
    F32,
}

/// One layer's keys or values, head by head: each key/value head's rows lie end to end, so that
/// attention reads each head's cache as one contiguous run of memory (row `i` of head `h`
/// starts at `(h·capacity + i)·head_dim`).
#[derive(Debug, Clone)]
struct HeadRows<T> {
    data: Vec<T>,
    head_dim: usize,
    /// Rows each head has room for.
    capacity: usize,
    len: usize,
}

impl<T: KvElement> HeadRows<T> {
    fn new(head_dim: usize) -> Self {
        Self { data: Vec::new(), head_dim, capacity: 0, len: 0 }
    }

    /// Appends one token's row, `[kv_heads × head_dim]`.
    fn push(&mut self, row: &[f32]) {
        let width = self.head_dim;
        let heads = row.len() / width;
        if self.len == self.capacity {
            // Room doubles, as a `Vec`'s does; each head's rows move to their new places.
            let capacity = (2 * self.capacity).max(16);
            let mut data = vec![T::ZERO; heads * capacity * width];
            for (h, rows) in data.chunks_exact_mut(capacity * width).enumerate() {
                rows[..self.len * width].copy_from_slice(&self.data[h * self.capacity * width..][..self.len * width]);
            }
            self.data = data;
            self.capacity = capacity;
        }
        for (h, head) in row.chunks_exact(width).enumerate() {
            T::store(head, &mut self.data[(h * self.capacity + self.len) * width..][..width]);
        }
        self.len += 1;
    }

    fn heads(&self) -> HeadSlices<'_, T> {
        HeadSlices { data: &self.data, head_dim: self.head_dim, capacity: self.capacity, len: self.len }
    }
}

/// One layer's keys or values, in `f16` or `f32`.
#[derive(Debug, Clone)]
enum Rows {
    F16(HeadRows<f16>),
    F32(HeadRows<f32>),
}

impl Rows {
    fn new(precision: KvPrecision, head_dim: usize) -> Self {
        match precision {
            KvPrecision::F16 => Self::F16(HeadRows::new(head_dim)),
            KvPrecision::F32 => Self::F32(HeadRows::new(head_dim)),
        }
    }

    fn push(&mut self, row: &[f32]) {
        match self {
            Self::F16(rows) => rows.push(row),
            Self::F32(rows) => rows.push(row),
        }
    }
}

/// One sequence's keys and values, per layer.
#[derive(Debug, Clone)]
pub struct LlamaCache {
    precision: KvPrecision,
    head_dim: usize,
    /// Per layer: keys, values.
    layers: Vec<(Rows, Rows)>,
    len: usize,
}

/// The cached rows of one layer's keys or values, head by head.
#[derive(Clone, Copy)]
pub(super) struct HeadSlices<'a, T> {
    data: &'a [T],
    head_dim: usize,
    capacity: usize,
    len: usize,
}

impl<'a, T> HeadSlices<'a, T> {
    /// Head `head`'s rows, `[rows × head_dim]`, end to end.
    ///
    /// # Panics
    /// When the layer has no such head.
    pub(super) fn head(&self, head: usize) -> &'a [T] {
        &self.data[head * self.capacity * self.head_dim..][..self.len * self.head_dim]
    }
}

/// One layer's keys and values, in the cache's precision.
pub(super) enum LayerRows<'a> {
    /// Stored in `f16`.
    F16(HeadSlices<'a, f16>, HeadSlices<'a, f16>),
    /// Stored in `f32`.
    F32(HeadSlices<'a, f32>, HeadSlices<'a, f32>),
}

impl LlamaCache {
    /// An empty cache for heads of `head_dim` values.
    pub fn new(precision: KvPrecision, head_dim: usize) -> Self {
        Self { precision, head_dim, layers: Vec::new(), len: 0 }
    }
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How keys and values are stored.
    pub fn precision(&self) -> KvPrecision {
        self.precision
    }

    /// Appends one token's key and value rows to layer `layer`.
    pub(super) fn push(&mut self, layer: usize, key: &[f32], value: &[f32]) {
        while self.layers.len() <= layer {
            self.layers.push((Rows::new(self.precision, self.head_dim), Rows::new(self.precision, self.head_dim)));
        }
        let (keys, values) = &mut self.layers[layer];
        keys.push(key);
        values.push(value);
    }

    /// Records that `len` tokens are cached in every layer.
    pub(super) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// Layer `layer`'s keys and values.
    ///
    /// # Panics
    /// When nothing was pushed to that layer.
    pub(super) fn layer(&self, layer: usize) -> LayerRows<'_> {
        match &self.layers[layer] {
            (Rows::F16(keys), Rows::F16(values)) => LayerRows::F16(keys.heads(), values.heads()),
            (Rows::F32(keys), Rows::F32(values)) => LayerRows::F32(keys.heads(), values.heads()),
            _ => unreachable!("a cache stores keys and values in one precision"),
        }
    }
}

/// An element type of cached keys and values, read as `f32`.
pub(super) trait KvElement: Copy + Send + Sync + 'static {
    /// Zero.
    const ZERO: Self;

    /// `values` in this type, into `out` (of the same length).
    fn store(values: &[f32], out: &mut [Self]);

    /// The value in `f32`.
    fn to_f32(self) -> f32;

    /// Rounds `values` to this type's precision, in place: the other operand of a product
    /// with cached values, rounded as llama.cpp rounds it.
    fn round_slice(values: &mut [f32]);

    /// Eight consecutive values in `f32`.
    ///
    /// # Safety
    /// `ptr` must point to 8 readable values.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256;
}

impl KvElement for f32 {
    const ZERO: Self = 0.0;

    fn store(values: &[f32], out: &mut [Self]) {
        out.copy_from_slice(values);
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline(always)]
    fn round_slice(_values: &mut [f32]) {}

    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    #[inline(always)]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller provides 8 readable values.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(ptr) }
    }
}

impl KvElement for f16 {
    const ZERO: Self = f16::ZERO;

    fn store(values: &[f32], out: &mut [Self]) {
        out.convert_from_f32_slice(values);
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    fn round_slice(values: &mut [f32]) {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        let rest = {
            let mut chunks = values.chunks_exact_mut(8);
            for chunk in &mut chunks {
                use std::arch::x86_64::*;
                // SAFETY: F16C comes with x86-64-v3 (enabled at compile time); the load and the
                // store touch the chunk's 8 floats.
                unsafe {
                    let halves = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(chunk.as_ptr()));
                    _mm256_storeu_ps(chunk.as_mut_ptr(), _mm256_cvtph_ps(halves));
                }
            }
            chunks.into_remainder()
        };
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
        let rest = values;
        rest.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32());
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    #[inline(always)]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller provides 8 readable values (16 bytes); F16C comes with x86-64-v3.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(ptr as *const __m128i)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_rows_round_to_nearest() {
        let mut cache = LlamaCache::new(KvPrecision::F16, 2);
        cache.push(1, &[1.0, 0.1, -65504.0, 1e-8], &[2.0, 3.0, 4.0, 5.0]);
        cache.push(1, &[0.5; 4], &[0.25; 4]);
        let LayerRows::F16(keys, values) = cache.layer(1) else { panic!("f16") };
        let as_f32 = |rows: &[f16]| rows.iter().map(|v| v.to_f32()).collect::<Vec<_>>();
        assert_eq!(as_f32(keys.head(0)), [1.0, f16::from_f32(0.1).to_f32(), 0.5, 0.5]);
        assert_eq!(as_f32(keys.head(1))[..2], [-65504.0, f16::from_f32(1e-8).to_f32()]);
        assert_eq!(as_f32(values.head(1)), [4.0, 5.0, 0.25, 0.25]);
        assert!(matches!(LlamaCache::new(KvPrecision::F32, 2).precision(), KvPrecision::F32));
        // Rounding a slice: the vector path and the remainder agree with the scalar conversion.
        let mut values: Vec<f32> = (0..19).map(|i| (i as f32 * 0.731).sin() * 300.0).collect();
        let expected: Vec<f32> = values.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        f16::round_slice(&mut values);
        assert_eq!(values, expected);
    }

    #[test]
    fn each_head_keeps_its_rows_in_order_as_the_cache_grows() {
        let (heads, width, tokens) = (3, 4, 40);
        let mut cache = LlamaCache::new(KvPrecision::F32, width);
        let value = |token: usize, h: usize, j: usize| (token * 100 + h * 10 + j) as f32;
        for token in 0..tokens {
            let row: Vec<f32> = (0..heads * width).map(|k| value(token, k / width, k % width)).collect();
            let negated: Vec<f32> = row.iter().map(|v| -v).collect();
            cache.push(0, &row, &negated);
        }
        let LayerRows::F32(keys, values) = cache.layer(0) else { panic!("f32") };
        for h in 0..heads {
            let expected: Vec<f32> = (0..tokens).flat_map(|t| (0..width).map(move |j| value(t, h, j))).collect();
            assert_eq!(keys.head(h), expected);
            assert_eq!(values.head(h), expected.iter().map(|v| -v).collect::<Vec<_>>());
        }
    }
}
