//! CPU kernels for transformer forward passes, in `f32`: dense layers through weights packed at
//! load for an AVX2/FMA or AVX-512 micro-kernel, or in bf16 for an AVX-512 BF16 one ([`linear`],
//! chosen by [`inferd_core::cpu_level`]), attention's small strided products through the `gemm`
//! crate ([`matmul`]), and the element-wise steps, written so that the compiler vectorises them
//! (reductions in [`LANES`] partial results) and compiled a second time for AVX-512.
//!
//! `exp` and `erf` are polynomial approximations written so that the compiler vectorises them
//! (the library functions are scalar calls): relative error below 2e-7 for `exp`, absolute
//! error below 5e-7 for `erf`, well inside the golden tolerance of the models.

#![allow(unsafe_code)]

use gemm::Parallelism;
use inferd_core::CpuLevel;

/// A matrix view over a slice: element `(i, j)` is at `offset + i * row_stride + j * col_stride`.
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// Start of element `(0, 0)`.
    pub offset: usize,
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
}

impl View {
    /// A dense row-major matrix with `columns` columns, starting at `offset`.
    pub fn rows(offset: usize, columns: usize) -> Self {
        Self { offset, row_stride: columns, col_stride: 1 }
    }

    /// One past the last element an `r × c` matrix reaches (0 when it is empty).
    fn end(&self, r: usize, c: usize) -> usize {
        if r == 0 || c == 0 { 0 } else { self.offset + (r - 1) * self.row_stride + (c - 1) * self.col_stride + 1 }
    }
}

/// `dst[m × n] = (accumulate ? dst : 0) + scale · lhs[m × k] · rhs[k × n]`, on `threads`
/// threads of the current rayon pool (1: the calling thread only).
///
/// # Panics
/// When a view reaches outside its slice, or `dst`'s views overlap (a bug in the caller).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_view: View,
    accumulate: bool,
    lhs: &[f32],
    lhs_view: View,
    rhs: &[f32],
    rhs_view: View,
    scale: f32,
    threads: usize,
) {
    assert!(dst_view.end(m, n) <= dst.len(), "matmul: destination out of bounds");
    assert!(lhs_view.end(m, k) <= lhs.len(), "matmul: left operand out of bounds");
    assert!(rhs_view.end(k, n) <= rhs.len(), "matmul: right operand out of bounds");
    assert!(dst_view.col_stride == 1 && dst_view.row_stride >= n, "matmul: destination must be row-major");
    if m == 0 || n == 0 || k == 0 {
        // Nothing to read; with k = 0 the product is zero, as if no term were added.
        if !accumulate && k == 0 {
            for row in 0..m {
                let start = dst_view.offset + row * dst_view.row_stride;
                dst[start..start + n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    let stride = |s: usize| isize::try_from(s).expect("matmul: stride exceeds isize");
    // SAFETY: the asserts above keep every element each view reaches inside its slice; `dst`
    // is borrowed mutably, so nothing else aliases it, and its rows (row stride ≥ n, column
    // stride 1) do not overlap one another. `gemm` reads `lhs` and `rhs` and writes `dst` within
    // exactly those bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_view.offset),
            stride(dst_view.col_stride),
            stride(dst_view.row_stride),
            accumulate,
            lhs.as_ptr().add(lhs_view.offset),
            stride(lhs_view.col_stride),
            stride(lhs_view.row_stride),
            rhs.as_ptr().add(rhs_view.offset),
            stride(rhs_view.col_stride),
            stride(rhs_view.row_stride),
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

pub use inferd_core::math::exp;

/// The error function, absolute error below 5e-7 (Abramowitz and Stegun's 7.1.26, 1.5e-7, plus
/// `f32` rounding).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    // erf(x) = 1 - t·P(t)·e^{-x²}, t = 1 / (1 + p|x|): Abramowitz and Stegun 7.1.26.
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    let a = x.abs();
    let t = 1.0 / P.mul_add(a, 1.0);
    let mut poly = A[4];
    poly = poly.mul_add(t, A[3]);
    poly = poly.mul_add(t, A[2]);
    poly = poly.mul_add(t, A[1]);
    poly = poly.mul_add(t, A[0]);
    let y = 1.0 - poly * t * exp(-a * a);
    y.copysign(x)
}

/// GELU: exact (`x Φ(x)`, through [`erf`]) or its tanh approximation.
#[inline(always)]
pub fn gelu(x: f32, tanh: bool) -> f32 {
    if tanh {
        // 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³))), with tanh(u) = 1 - 2 / (e^{2u} + 1).
        let u = 0.797_884_6 * x.mul_add(0.044_715 * x * x, x);
        let tanh = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
        0.5 * x * (1.0 + tanh)
    } else {
        0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
    }
}

/// Lanes of the element-wise reductions: independent partial results the compiler keeps in one
/// vector register (a plain `fold` is sequential, as floating-point addition is not associative).
const LANES: usize = 8;

/// Sum of `f(v)` over `values`, in [`LANES`] partial sums.
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut partial = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (p, &v) in partial.iter_mut().zip(chunk) {
            *p += f(v);
        }
    }
    partial.iter().sum::<f32>() + rest.iter().map(|&v| f(v)).sum::<f32>()
}

/// Largest of `values` (−∞ for none), in [`LANES`] partial maxima.
#[inline(always)]
fn lane_max(values: &[f32]) -> f32 {
    let mut partial = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (p, &v) in partial.iter_mut().zip(chunk) {
            *p = p.max(v);
        }
    }
    partial.iter().chain(rest).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Runs `$body` (an element-wise loop) compiled for AVX-512 where the kernels' level is
/// [`CpuLevel::Avx512`], else as built (AVX2). The body is a closure that the compiler inlines
/// into the AVX-512 function in optimised builds (checked: its copy uses zmm registers); without
/// inlining it would simply run as built. The same operations in the same order either way
/// (the compiler never reassociates floating-point arithmetic), so the results are equal bit for
/// bit; only the vector width changes.
macro_rules! elementwise {
    ($body:block) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
            unsafe fn wide(body: impl FnOnce()) {
                body()
            }
            if inferd_core::cpu_level() >= CpuLevel::Avx512 {
                // SAFETY: `cpu_level` is AVX-512 only where the CPU has AVX-512 F, BW and VL.
                unsafe { wide(|| $body) };
                return;
            }
        }
        $body
    }};
}

/// Exact GELU over a slice, in place.
pub fn gelu_erf_all(values: &mut [f32]) {
    elementwise!({ values.iter_mut().for_each(|v| *v = gelu(*v, false)) })
}

/// Tanh-approximated GELU over a slice, in place.
pub fn gelu_tanh_all(values: &mut [f32]) {
    elementwise!({ values.iter_mut().for_each(|v| *v = gelu(*v, true)) })
}

/// ReLU over a slice, in place.
pub fn relu_all(values: &mut [f32]) {
    values.iter_mut().for_each(|v| *v = v.max(0.0));
}

/// Hints the cache lines of the `bytes` bytes from `start` into the first-level cache, for data
/// read soon (a no-op off x86-64). A prefetch reads nothing and never faults, so `start` may
/// point past the end of the data.
#[inline(always)]
pub fn prefetch(start: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..bytes).step_by(64) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch only hints the cache; it reads nothing and never faults, whatever
        // the address (computed with wrapping arithmetic, so never out of bounds as a pointer).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, bytes);
}

/// Softmax of one row, in place.
pub fn softmax(row: &mut [f32]) {
    elementwise!({
        let max = lane_max(row);
        row.iter_mut().for_each(|v| *v = exp(*v - max));
        let inverse = 1.0 / lane_sum(row, |v| v);
        row.iter_mut().for_each(|v| *v *= inverse);
    })
}

/// `row = LayerNorm(row + residual) · gamma + beta`, in place; `residual` may be empty.
pub fn add_layer_norm(row: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    elementwise!({ layer_norm(row, residual, gamma, beta, eps) })
}

#[inline(always)]
fn layer_norm(row: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    if !residual.is_empty() {
        for (v, r) in row.iter_mut().zip(residual) {
            *v += r;
        }
    }
    let n = row.len() as f32;
    let mean = lane_sum(row, |v| v) / n;
    let variance = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
    let inverse = 1.0 / (variance + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = ((*v - mean) * inverse).mul_add(*g, *b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_accurate() {
        // exp, which erf calls, is tested where it lives (inferd_core::math).
        let mut worst = 0f64;
        for i in -20_000..=20_000 {
            let x = i as f32 * 0.004;
            worst = worst.max((f64::from(erf(x)) - erf_reference(f64::from(x))).abs());
        }
        assert!(worst < 5e-7, "erf absolute error {worst}");
    }

    /// erf in f64 from its Maclaurin series (|x| ≤ 3) or its continued fraction (beyond).
    fn erf_reference(x: f64) -> f64 {
        let a = x.abs();
        let value = if a < 3.0 {
            let mut term = a;
            let mut sum = a;
            for n in 1..200 {
                term *= -a * a / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut fraction = 0.0;
            for n in (1..60).rev() {
                fraction = (n as f64 / 2.0) / (a + fraction);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + fraction)
        };
        value.copysign(x)
    }

    #[test]
    fn matmul_follows_its_views() {
        // lhs [2 × 3], weight [2 × 3] read transposed as [3 × 2].
        let lhs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let weight = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let mut dst = [10.0, 20.0, 30.0, 40.0];
        matmul(
            (2, 2, 3),
            &mut dst,
            View::rows(0, 2),
            true,
            &lhs,
            View::rows(0, 3),
            &weight,
            View { offset: 0, row_stride: 1, col_stride: 3 },
            2.0,
            1,
        );
        assert_eq!(dst, [10.0 + 8.0, 20.0 + 4.0, 30.0 + 20.0, 40.0 + 10.0]);
    }

    #[test]
    fn packed_linear_matches_the_definition() {
        for (m, n, k) in [(1, 1, 1), (7, 33, 5), (13, 16, 64), (100, 40, 17), (6, 100, 3)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32).collect();
            let mut out: Vec<f32> = (0..m).flat_map(|_| bias.iter().copied()).collect();
            linear(&x, &PackedWeight::new(&w, n, k), &mut out, m);
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = bias[j] + (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>();
                    assert!((out[i * n + j] - want).abs() < 1e-4, "{m}x{n}x{k} at ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn avx512_and_avx2_kernels_agree_bit_for_bit() {
        if inferd_core::cpu::detected() < CpuLevel::Avx512 {
            eprintln!("skipped: this CPU has no AVX-512 (VNNI), so only the AVX2 kernel runs here");
            return;
        }
        // Row counts on both sides of both tile heights, columns on both sides of a panel.
        for (m, n, k) in [(1, 16, 384), (13, 40, 17), (48, 1536, 384), (49, 384, 1536), (25, 7, 3)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 311.0).collect();
            let weight = PackedWeight::new(&w, n, k);
            let mut wide = vec![0.5f32; m * n];
            let mut narrow = wide.clone();
            linear_at(CpuLevel::Avx512, &x, &weight, &mut wide, m);
            linear_at(CpuLevel::Avx2, &x, &weight, &mut narrow, m);
            assert!(wide.iter().zip(&narrow).all(|(a, b)| a.to_bits() == b.to_bits()), "{m}x{n}x{k}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_value(bf16_bits(-2.5)), -2.5);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even one, 1.
        assert_eq!(bf16_value(bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to the even one, 1 + 2^-6.
        assert_eq!(bf16_value(bf16_bits(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert_eq!(bf16_value(bf16_bits(1.0 + 1.0 / 256.0 + 1e-6)), 1.0 + 1.0 / 128.0);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_value(bf16_bits(f32::INFINITY)), f32::INFINITY);
        assert_eq!(bf16_value(bf16_bits(f32::MAX)), f32::INFINITY, "rounds up past the largest bf16");
    }

    #[test]
    fn bf16_linear_matches_the_definition_on_rounded_operands() {
        if !bf16_available() {
            eprintln!("skipped: this CPU (or INFERD_CPU) has no AVX-512 BF16, so no bf16 kernel runs here");
            return;
        }
        // Odd and even k, rows on both sides of a tile, columns on both sides of a panel.
        // k = 47 and 390: whole 32-value chunks of the activations' conversion, then a tail.
        for (m, n, k) in [(1, 1, 1), (7, 33, 5), (13, 16, 64), (25, 40, 17), (3, 20, 47), (49, 384, 384), (14, 17, 390)]
        {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 311.0).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 / 8.0).collect();
            let mut out: Vec<f32> = (0..m).flat_map(|_| bias.iter().copied()).collect();
            linear(&x, &PackedWeight::bf16(&w, n, k), &mut out, m);
            let round = |v: f32| f64::from(bf16_value(bf16_bits(v)));
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|t| round(x[i * k + t]) * round(w[j * k + t]));
                    let want = f64::from(bias[j]) + terms.clone().sum::<f64>();
                    let scale = 1.0 + terms.map(f64::abs).sum::<f64>();
                    let error = (f64::from(out[i * n + j]) - want).abs() / scale;
                    assert!(error < 1e-6, "{m}x{n}x{k} at ({i}, {j}): {} against {want}", out[i * n + j]);
                }
            }
        }
    }

    #[test]
    fn layer_norm_and_softmax() {
        let mut row = [1.0, 2.0, 3.0, 4.0];
        add_layer_norm(&mut row, &[1.0; 4], &[1.0; 4], &[0.0; 4], 0.0);
        let expected = [-1.341_640_8, -0.447_213_6, 0.447_213_6, 1.341_640_8];
        assert!(row.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{row:?}");
        let mut p = [0.0, 1.0, f32::NEG_INFINITY];
        softmax(&mut p);
        assert!((p[0] - 0.268_941_4).abs() < 1e-6 && p[2] < 1e-37, "{p:?}");
    }
}

/// Columns per panel of a [`PackedWeight`]: two AVX registers of eight `f32`.
const PANEL: usize = 16;
/// Rows of the output each AVX2 micro-kernel call computes: 6 × 2 accumulators plus the two
/// weight registers and a broadcast fill 15 of the 16 AVX registers.
const TILE_ROWS: usize = 6;
/// Rows each AVX-512 micro-kernel call computes: one 16-wide accumulator per row, the panel's
/// register and a broadcast use 14 of the 32 registers; more rows per weight load than AVX2's 6
/// keeps the loads from binding before the fused multiply-adds do.
const TILE_ROWS_AVX512: usize = 12;
/// Rows of the activations one task works through, panel after panel, while they stay in the
/// core's L2 cache.
const BLOCK_ROWS: usize = 48;

/// A weight matrix `[n × k]` (a linear layer's `out × in`, as checkpoints store it) packed once,
/// at load, for `x · Wᵀ`: panels of 16 output columns, the last panel padded with zeros. In
/// `f32` each panel is `k` steps of 16 contiguous values; in bf16 it is `k / 2` (rounded up)
/// steps of 16 pairs, each pair two consecutive `k` of one column in one `u32` (the layout of
/// AVX-512 BF16's `vdpbf16ps` operands).
pub struct PackedWeight {
    n: usize,
    k: usize,
    panels: Panels,
}

/// The packed values of a [`PackedWeight`], in its precision.
enum Panels {
    F32(Vec<f32>),
    /// Pairs of bf16: the even `k` in the low half, the odd one in the high half.
    Bf16(Vec<u32>),
}

/// `f32` to bf16, rounded to nearest even; a NaN stays a NaN. (`vcvtne2ps2bf16` also flushes
/// subnormals to zero, which this does not; `vdpbf16ps` reads subnormal inputs as zero anyway.)
fn bf16_bits(value: f32) -> u16 {
    let bits = value.to_bits();
    if value.is_nan() {
        return ((bits >> 16) | 0x40) as u16; // quiet, whatever the low bits held
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// A bf16 value as `f32` (exact).
#[cfg(test)]
fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Two values as one bf16 pair: `low` in the low half.
fn bf16_pair(low: f32, high: f32) -> u32 {
    u32::from(bf16_bits(low)) | (u32::from(bf16_bits(high)) << 16)
}

impl PackedWeight {
    /// Packs a row-major `[n × k]` matrix in `f32`.
    ///
    /// # Panics
    /// When `weight` does not hold `n × k` values.
    pub fn new(weight: &[f32], n: usize, k: usize) -> Self {
        Self::check(weight, n, k);
        let count = n.div_ceil(PANEL);
        let mut panels = vec![0f32; count * PANEL * k];
        for (panel, out) in panels.chunks_mut(PANEL * k).enumerate() {
            for column in 0..PANEL.min(n - panel * PANEL) {
                let row = &weight[(panel * PANEL + column) * k..(panel * PANEL + column + 1) * k];
                for (step, &value) in row.iter().enumerate() {
                    out[step * PANEL + column] = value;
                }
            }
        }
        Self { n, k, panels: Panels::F32(panels) }
    }

    /// Packs a row-major `[n × k]` matrix rounded to bf16, for CPUs with AVX-512 BF16
    /// ([`bf16_available`]); [`linear`] rounds the activations to bf16 too and sums in `f32`.
    ///
    /// # Panics
    /// When `weight` does not hold `n × k` values.
    pub fn bf16(weight: &[f32], n: usize, k: usize) -> Self {
        Self::check(weight, n, k);
        let steps = k.div_ceil(2);
        let count = n.div_ceil(PANEL);
        let mut panels = vec![0u32; count * PANEL * steps];
        for (panel, out) in panels.chunks_mut(PANEL * steps).enumerate() {
            for column in 0..PANEL.min(n - panel * PANEL) {
                let row = &weight[(panel * PANEL + column) * k..(panel * PANEL + column + 1) * k];
                for (step, pair) in row.chunks(2).enumerate() {
                    out[step * PANEL + column] = bf16_pair(pair[0], pair.get(1).copied().unwrap_or(0.0));
                }
            }
        }
        Self { n, k, panels: Panels::Bf16(panels) }
    }

    fn check(weight: &[f32], n: usize, k: usize) {
        assert!(n > 0 && k > 0, "PackedWeight: empty matrix");
        assert_eq!(weight.len(), n * k, "PackedWeight: weight size");
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }
}

/// Whether this process can run bf16 [`PackedWeight`]s: the CPU has AVX-512 BF16 and the kernel
/// level in use ([`inferd_core::cpu_level`], which `INFERD_CPU` may lower) is AVX-512.
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        inferd_core::cpu_level() >= CpuLevel::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A `*mut f32` that may cross threads: each task writes a region of the output no other task
/// touches.
#[derive(Clone, Copy)]
struct Output(*mut f32);
// SAFETY: only used by `linear`, whose tasks write disjoint regions.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

impl Output {
    /// The element `offset` places in. (A method, so that closures capture the whole `Output`,
    /// not its raw pointer field.)
    ///
    /// # Safety
    /// `offset` must be inside the output slice.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller keeps `offset` inside the slice.
        unsafe { self.0.add(offset) }
    }
}

/// `out[m × n] += x[m × k] · Wᵀ` for a packed `W`, with both matrices dense and row-major, on the
/// current rayon pool. `out` usually holds the bias already. A bf16 `W` takes the activations
/// rounded to bf16, and sums the products in `f32`.
///
/// # Panics
/// When the slices are not `m × k` and `m × n`, and for a bf16 `W` where [`bf16_available`] is
/// false.
pub fn linear(x: &[f32], weight: &PackedWeight, out: &mut [f32], m: usize) {
    linear_at(inferd_core::cpu_level(), x, weight, out, m);
}

/// [`linear`] with the micro-kernel of `level` for an `f32` weight (AVX-512 where `level` is
/// [`CpuLevel::Avx512`], else AVX2, which builds for x86-64-v3 always have); a bf16 weight has
/// one kernel, AVX-512 BF16.
///
/// # Panics
/// As [`linear`], and when `level` is AVX-512 on a CPU without it.
fn linear_at(level: CpuLevel, x: &[f32], weight: &PackedWeight, out: &mut [f32], m: usize) {
    assert!(level <= inferd_core::cpu::detected(), "linear: {level} kernels on a CPU without them");
    let (n, k) = (weight.n, weight.k);
    assert!(x.len() >= m * k && out.len() >= m * n, "linear: operand sizes");
    match &weight.panels {
        Panels::F32(panels) => {
            let avx512 = level >= CpuLevel::Avx512;
            let tile_rows = if avx512 { TILE_ROWS_AVX512 } else { TILE_ROWS };
            for_each_tile(m, n, tile_rows, out, |rows, panel, c, columns| {
                let a = &x[rows.start * k..rows.end * k];
                let b = &panels[panel * PANEL * k..(panel + 1) * PANEL * k];
                // SAFETY: `for_each_tile` gives each call its own region of `out`, which `c`
                // starts; the AVX-512 tile runs only where the CPU has AVX-512 (`cpu_level`
                // never exceeds what it detects, and `level` is checked above).
                unsafe {
                    if avx512 {
                        tile_avx512(rows.len(), a, k, b, c, n, columns);
                    } else {
                        tile(rows.len(), a, k, b, c, n, columns);
                    }
                }
            });
        }
        Panels::Bf16(panels) => {
            assert!(bf16_available(), "linear: a bf16 weight on a CPU (or CPU level) without AVX-512 BF16");
            let steps = k.div_ceil(2);
            let mut pairs = vec![0u32; m * steps];
            use rayon::prelude::*;
            x[..m * k].par_chunks(k).zip(pairs.par_chunks_mut(steps)).for_each(|(row, out)| {
                // SAFETY: `bf16_available` was checked above.
                unsafe { bf16_pairs(row, out) }
            });
            for_each_tile(m, n, TILE_ROWS_AVX512, out, |rows, panel, c, columns| {
                let a = &pairs[rows.start * steps..rows.end * steps];
                let b = &panels[panel * PANEL * steps..(panel + 1) * PANEL * steps];
                // SAFETY: as above; `bf16_available` was checked before.
                unsafe { tile_bf16(rows.len(), a, steps, b, c, n, columns) };
            });
        }
    }
}

/// `values` rounded to bf16 pairs (`out[i]` holds `values[2i]` and `values[2i + 1]`, zero past
/// the end), 32 values per instruction.
///
/// # Safety
/// The CPU must have AVX-512 F and BF16; `out` must hold `values.len() / 2` pairs, rounded up.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_pairs(values: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    assert_eq!(out.len(), values.len().div_ceil(2), "bf16_pairs: output size");
    let whole = values.len() / 32;
    for (chunk, pairs) in values.chunks_exact(32).zip(out.chunks_exact_mut(16)) {
        // SAFETY: 32 values are read and 16 pairs written, inside the chunks.
        unsafe {
            let low = _mm512_loadu_ps(chunk.as_ptr());
            let high = _mm512_loadu_ps(chunk.as_ptr().add(16));
            // The second operand fills the low half: values in their order.
            let rounded = _mm512_cvtne2ps_pbh(high, low);
            _mm512_storeu_si512(pairs.as_mut_ptr().cast(), std::mem::transmute::<__m512bh, __m512i>(rounded));
        }
    }
    for (pair, values) in out[whole * 16..].iter_mut().zip(values[whole * 32..].chunks(2)) {
        *pair = bf16_pair(values[0], values.get(1).copied().unwrap_or(0.0));
    }
}

/// Never called: bf16 weights are never packed for use off x86-64 ([`bf16_available`]).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn bf16_pairs(_: &[f32], _: &mut [u32]) {
    unreachable!("bf16 kernels exist on x86-64 only")
}

/// Splits `out[m × n]` into tiles of up to `tile_rows` rows by one 16-column panel and calls
/// `tile(rows, panel, c, columns)` for each, on the current rayon pool, where `c` points at the
/// tile's first element of `out` and `columns` is how many of the panel's 16 columns are real.
/// Each call's region of `out` belongs to it alone.
fn for_each_tile(
    m: usize,
    n: usize,
    tile_rows: usize,
    out: &mut [f32],
    tile: impl Fn(std::ops::Range<usize>, usize, *mut f32, usize) + Sync,
) {
    assert!(out.len() >= m * n, "linear: output size");
    let panels = n.div_ceil(PANEL);
    let blocks = m.div_ceil(BLOCK_ROWS);
    // At least eight tasks per thread, so that threads finish together: with few row blocks,
    // split the panels too.
    let wanted = 8 * rayon::current_num_threads();
    let groups = if blocks >= wanted { 1 } else { wanted.div_ceil(blocks.max(1)).min(panels) };
    let per_group = panels.div_ceil(groups);
    let output = Output(out.as_mut_ptr());
    use rayon::prelude::*;
    (0..blocks * groups).into_par_iter().for_each(|task| {
        let (block, group) = (task / groups, task % groups);
        let rows = block * BLOCK_ROWS..((block + 1) * BLOCK_ROWS).min(m);
        let panel_range = group * per_group..((group + 1) * per_group).min(panels);
        for panel in panel_range {
            let columns = PANEL.min(n - panel * PANEL);
            let mut row = rows.start;
            while row < rows.end {
                let count = tile_rows.min(rows.end - row);
                // SAFETY: rows `row..row + count`, columns `panel·16..panel·16 + columns` of
                // `out` are inside it (asserted above) and belong to this call alone: tasks split
                // rows by block and columns by panel group.
                let c = unsafe { output.at(row * n + panel * PANEL) };
                tile(row..row + count, panel, c, columns);
                row += count;
            }
        }
    });
}

/// Adds `count` rows of `sums` (their first `columns`) to `c`.
///
/// # Safety
/// `c` must be valid for reads and writes of `count` rows of `columns` values, `ldc` apart.
unsafe fn add_tile(sums: &[[f32; PANEL]], count: usize, c: *mut f32, ldc: usize, columns: usize) {
    for (r, sum) in sums.iter().enumerate().take(count) {
        // SAFETY: inside the region the caller vouches for.
        let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), columns) };
        if let Ok(row) = <&mut [f32; PANEL]>::try_from(&mut *row) {
            // A whole panel: a fixed length, which the compiler vectorises.
            row.iter_mut().zip(sum).for_each(|(out, value)| *out += value);
        } else {
            row.iter_mut().zip(sum).for_each(|(out, value)| *out += value);
        }
    }
}

/// `c[count × columns] += a[count × k] · b[k × 16]` (the first `columns` of the panel).
///
/// # Safety
/// `c` must be valid for reads and writes of `count` rows of `columns` values, `ldc` apart.
unsafe fn tile(count: usize, a: &[f32], k: usize, b: &[f32], c: *mut f32, ldc: usize, columns: usize) {
    let mut sums = [[0f32; PANEL]; TILE_ROWS];
    match count {
        6 => micro::<6>(a, k, b, &mut sums),
        5 => micro::<5>(a, k, b, &mut sums),
        4 => micro::<4>(a, k, b, &mut sums),
        3 => micro::<3>(a, k, b, &mut sums),
        2 => micro::<2>(a, k, b, &mut sums),
        _ => micro::<1>(a, k, b, &mut sums),
    }
    // SAFETY: the caller vouches for `c`.
    unsafe { add_tile(&sums, count, c, ldc, columns) };
}

/// Calls the micro-kernel `$micro::<R>` for `R = $count` rows (1 to [`TILE_ROWS_AVX512`]; the
/// row count is a constant of each kernel, so that its accumulators stay in registers).
#[cfg(target_arch = "x86_64")]
macro_rules! by_rows {
    ($count:expr, $micro:ident, $($arg:expr),*) => {
        match $count {
            12 => $micro::<12>($($arg),*),
            11 => $micro::<11>($($arg),*),
            10 => $micro::<10>($($arg),*),
            9 => $micro::<9>($($arg),*),
            8 => $micro::<8>($($arg),*),
            7 => $micro::<7>($($arg),*),
            6 => $micro::<6>($($arg),*),
            5 => $micro::<5>($($arg),*),
            4 => $micro::<4>($($arg),*),
            3 => $micro::<3>($($arg),*),
            2 => $micro::<2>($($arg),*),
            _ => $micro::<1>($($arg),*),
        }
    };
}

/// [`tile`] with AVX-512, up to [`TILE_ROWS_AVX512`] rows. Each output is the same chain of
/// fused multiply-adds in the same order as [`tile`]'s, so the two agree bit for bit.
///
/// # Safety
/// As [`tile`]; and the CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_avx512(count: usize, a: &[f32], k: usize, b: &[f32], c: *mut f32, ldc: usize, columns: usize) {
    let mut sums = [[0f32; PANEL]; TILE_ROWS_AVX512];
    // SAFETY: the caller vouches for AVX-512 F.
    unsafe {
        by_rows!(count, micro_avx512, a, k, b, &mut sums);
        add_tile(&sums, count, c, ldc, columns);
    }
}

/// Never called: `cpu_level` is never AVX-512 off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_avx512(count: usize, a: &[f32], k: usize, b: &[f32], c: *mut f32, ldc: usize, columns: usize) {
    // SAFETY: the caller vouches for `c`.
    unsafe { tile(count, a, k, b, c, ldc, columns) }
}

/// `c[count × columns] += a[count × steps] · b[steps × 16]` in bf16 pairs (the first `columns`
/// of the panel), up to [`TILE_ROWS_AVX512`] rows, summed in `f32`.
///
/// # Safety
/// As [`tile`]; and the CPU must have AVX-512 F and BF16.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_bf16(count: usize, a: &[u32], steps: usize, b: &[u32], c: *mut f32, ldc: usize, columns: usize) {
    let mut sums = [[0f32; PANEL]; TILE_ROWS_AVX512];
    // SAFETY: the caller vouches for AVX-512 F and BF16.
    unsafe {
        by_rows!(count, micro_bf16, a, steps, b, &mut sums);
        add_tile(&sums, count, c, ldc, columns);
    }
}

/// Never called: bf16 weights are never packed for use off x86-64 ([`bf16_available`]).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_bf16(_: usize, _: &[u32], _: usize, _: &[u32], _: *mut f32, _: usize, _: usize) {
    unreachable!("bf16 kernels exist on x86-64 only")
}

/// The bf16 micro-kernel: `R` rows of bf16 pairs times one 16-column panel of pairs, each step
/// one `vdpbf16ps` per row (two multiply-adds per lane), into `sums`.
///
/// # Safety
/// The CPU must have AVX-512 F and BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_bf16<const R: usize>(a: &[u32], steps: usize, b: &[u32], sums: &mut [[f32; PANEL]; TILE_ROWS_AVX512]) {
    use std::arch::x86_64::*;
    assert!(R <= TILE_ROWS_AVX512 && a.len() >= R * steps && b.len() >= PANEL * steps);
    // SAFETY: the loads read `b[step·16 .. step·16 + 16]` and `a[r·steps + step]` for
    // step < steps and r < R, inside the slices (asserted above); the caller vouches for the
    // CPU. The activation pair is broadcast by the instruction's own memory operand
    // (`{1to16}`), as the compiler does for `f32`'s fused multiply-adds but not for this
    // intrinsic: a separate broadcast per product halves the kernel's speed on AMD Zen 4.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); R];
        let (a, b) = (a.as_ptr(), b.as_ptr());
        for step in 0..steps {
            let weights = _mm512_loadu_ps(b.add(step * PANEL).cast());
            for (r, acc) in acc.iter_mut().enumerate() {
                std::arch::asm!(
                    "vdpbf16ps {acc}, {weights}, dword ptr [{pair}]{{1to16}}",
                    acc = inout(zmm_reg) *acc,
                    weights = in(zmm_reg) weights,
                    pair = in(reg) a.add(r * steps + step),
                    options(pure, readonly, nostack, preserves_flags),
                );
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(sums[r].as_mut_ptr(), *acc);
        }
    }
}

/// The AVX-512 micro-kernel: `R` rows of `a` times one 16-column panel (one register), into
/// `sums`.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_avx512<const R: usize>(a: &[f32], k: usize, b: &[f32], sums: &mut [[f32; PANEL]; TILE_ROWS_AVX512]) {
    use std::arch::x86_64::*;
    assert!(R <= TILE_ROWS_AVX512 && a.len() >= R * k && b.len() >= PANEL * k);
    // SAFETY: the loads read `b[step·16 .. step·16 + 16]` and `a[r·k + step]` for step < k and
    // r < R, inside the slices (asserted above); the caller vouches for AVX-512 F.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); R];
        let (a, b) = (a.as_ptr(), b.as_ptr());
        for step in 0..k {
            let weights = _mm512_loadu_ps(b.add(step * PANEL));
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(r * k + step)), weights, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(sums[r].as_mut_ptr(), *acc);
        }
    }
}

/// The micro-kernel: `R` rows of `a` times one 16-column panel, into `sums`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline(always)]
fn micro<const R: usize>(a: &[f32], k: usize, b: &[f32], sums: &mut [[f32; PANEL]; TILE_ROWS]) {
    use std::arch::x86_64::*;
    assert!(a.len() >= R * k && b.len() >= PANEL * k);
    // SAFETY: the loads read `b[step·16 .. step·16 + 16]` and `a[r·k + step]` for step < k and
    // r < R, inside the slices (asserted above); AVX2 and FMA are enabled at compile time.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let (a, b) = (a.as_ptr(), b.as_ptr());
        for step in 0..k {
            let b0 = _mm256_loadu_ps(b.add(step * PANEL));
            let b1 = _mm256_loadu_ps(b.add(step * PANEL + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let value = _mm256_broadcast_ss(&*a.add(r * k + step));
                acc[0] = _mm256_fmadd_ps(value, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(value, b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(sums[r].as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(sums[r].as_mut_ptr().add(8), acc[1]);
        }
    }
}

/// The same, portably, for builds without AVX2 and FMA.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn micro<const R: usize>(a: &[f32], k: usize, b: &[f32], sums: &mut [[f32; PANEL]; TILE_ROWS]) {
    for (r, sum) in sums.iter_mut().enumerate().take(R) {
        for step in 0..k {
            let value = a[r * k + step];
            for (s, w) in sum.iter_mut().zip(&b[step * PANEL..(step + 1) * PANEL]) {
                *s = value.mul_add(*w, *s);
            }
        }
    }
}
