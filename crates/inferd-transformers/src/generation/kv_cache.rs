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

/// One layer's keys or values, `[tokens × kv_heads·head_dim]`.
#[derive(Debug, Clone)]
enum Rows {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl Rows {
    fn new(precision: KvPrecision) -> Self {
        match precision {
            KvPrecision::F16 => Self::F16(Vec::new()),
            KvPrecision::F32 => Self::F32(Vec::new()),
        }
    }

    fn push(&mut self, row: &[f32]) {
        match self {
            Self::F16(values) => {
                let start = values.len();
                values.resize(start + row.len(), f16::ZERO);
                values[start..].convert_from_f32_slice(row);
            }
            Self::F32(values) => values.extend_from_slice(row),
        }
    }
}

/// One sequence's keys and values, per layer.
#[derive(Debug, Clone)]
pub struct LlamaCache {
    precision: KvPrecision,
    /// Per layer: keys, values.
    layers: Vec<(Rows, Rows)>,
    len: usize,
}

/// One layer's keys and values, `[tokens × kv_heads·head_dim]` each, in the cache's precision.
pub(super) enum LayerRows<'a> {
    /// Stored in `f16`.
    F16(&'a [f16], &'a [f16]),
    /// Stored in `f32`.
    F32(&'a [f32], &'a [f32]),
}

impl LlamaCache {
    /// An empty cache.
    pub fn new(precision: KvPrecision) -> Self {
        Self { precision, layers: Vec::new(), len: 0 }
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
            self.layers.push((Rows::new(self.precision), Rows::new(self.precision)));
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
            (Rows::F16(keys), Rows::F16(values)) => LayerRows::F16(keys, values),
            (Rows::F32(keys), Rows::F32(values)) => LayerRows::F32(keys, values),
            _ => unreachable!("a cache stores keys and values in one precision"),
        }
    }
}

/// An element type of cached keys and values, read as `f32`.
pub(super) trait KvElement: Copy + Send + Sync + 'static {
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
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    fn round_slice(values: &mut [f32]) {
        let mut chunks = values.chunks_exact_mut(8);
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        for chunk in &mut chunks {
            use std::arch::x86_64::*;
            // SAFETY: F16C comes with x86-64-v3 (enabled at compile time); the load and the
            // store touch the chunk's 8 floats.
            unsafe {
                let halves = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(chunk.as_ptr()));
                _mm256_storeu_ps(chunk.as_mut_ptr(), _mm256_cvtph_ps(halves));
            }
        }
        let rest = if cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")) {
            chunks.into_remainder()
        } else {
            values
        };
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
        let mut cache = LlamaCache::new(KvPrecision::F16);
        cache.push(1, &[1.0, 0.1, -65504.0, 1e-8], &[2.0, 3.0, 4.0, 5.0]);
        cache.push(1, &[0.5; 4], &[0.25; 4]);
        let LayerRows::F16(keys, values) = cache.layer(1) else { panic!("f16") };
        assert_eq!(keys.len(), 8);
        assert_eq!(keys[1].to_f32(), f16::from_f32(0.1).to_f32());
        assert_eq!(keys[2].to_f32(), -65504.0);
        assert_eq!(values[7].to_f32(), 0.25);
        assert!(matches!(LlamaCache::new(KvPrecision::F32).precision(), KvPrecision::F32));
        // Rounding a slice: the vector path and the remainder agree with the scalar conversion.
        let mut values: Vec<f32> = (0..19).map(|i| (i as f32 * 0.731).sin() * 300.0).collect();
        let expected: Vec<f32> = values.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        f16::round_slice(&mut values);
        assert_eq!(values, expected);
    }
}
