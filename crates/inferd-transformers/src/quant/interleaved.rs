//! Q4_1 and Q8_0 weights interleaved eight rows at a time.
//!
//! A row-by-row dot product spends most of its instructions on each block's float scaling, not
//! on the integer products. Here eight weight rows share every instruction instead: for each
//! group of four values of a block, one 32-byte vector holds those four values of all eight
//! rows (`maddubs` multiplies them with the same four activation values broadcast to every
//! lane), the eight groups of a block add up in 16-bit lanes (at most 8 × 2 × 15 × 127 = 30,480,
//! no overflow), and one conversion and two fused multiply-adds per block scale eight rows at
//! once. Each activation row is still computed on its own, by the same instructions whatever
//! the number of rows in the product.
//!
//! Layouts, per group of 8 rows and block of 32 columns, as many bytes as the 8 rows take in
//! their plain format:
//! - Q4_1, 160 bytes: the 8 rows' `d` (f16), their 8 `m` (f16), then 4 × 32 bytes `P₀..P₃`,
//!   where byte `4r + j` of `Pg` holds row `r`'s value `4g + j` in its low nibble and value
//!   `4(g + 4) + j` in its high nibble.
//! - Q8_0, 272 bytes: the 8 rows' `d` (f16), then 8 × 32 bytes `V₀..V₇`, where byte `4r + j` of
//!   `Vg` is row `r`'s value `4g + j`. Signed values go through `maddubs` as their magnitude
//!   times the activation with the value's sign; a product reaches 2 × 128 × 127, so each group
//!   is widened to 32 bits before the next is added.

// The kernels index their per-row accumulators by row, mirroring the loads.
#![allow(clippy::needless_range_loop)]

use half::f16;
use rayon::prelude::*;

use inferd_core::CpuLevel;

use super::{BLOCK, BlockFormat, BlockMatrix, QuantizedRows, SharedOutput, TILE};

/// Rows interleaved together.
pub const GROUP: usize = 8;
/// A kernel's results for one activation tile: per activation row, the dot products of up to two
/// groups' rows (one group's kernels fill the first [`GROUP`]).
type Values = [[f32; 2 * GROUP]; TILE];
/// Bytes of one group's block in each format.
const fn group_block_bytes(format: BlockFormat) -> usize {
    match format {
        BlockFormat::Q4_1 => 2 * GROUP * 2 + 4 * 32,
        BlockFormat::Q8_0 => GROUP * 2 + 8 * 32,
    }
}
const Q4_1_GROUP_BYTES: usize = group_block_bytes(BlockFormat::Q4_1);
const Q8_0_GROUP_BYTES: usize = group_block_bytes(BlockFormat::Q8_0);

/// How far ahead of the block being computed its weights are prefetched, in bytes. A product
/// streams each matrix from memory once per step; without a hint the core waits for each line
/// as it computes (at 8 activation rows the waiting and the arithmetic added up instead of
/// overlapping). Measured on the benchmark's matrix shapes, 1280 to 4096 bytes ahead all took
/// 11–17% off a step's products, at 1 row and at 8; 1920 is in the middle. (The x86-64 kernels'
/// hint; the portable ones leave prefetching to the hardware.)
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 1920;

/// A Q4_1 or Q8_0 matrix whose rows are interleaved by groups of [`GROUP`] (the last group
/// padded with zero rows, which are computed and not written).
#[derive(Debug, Clone)]
pub struct Interleaved {
    format: BlockFormat,
    rows: usize,
    columns: usize,
    bytes: Vec<u8>,
}

impl Interleaved {
    /// Interleaves a row-major matrix.
    pub fn new(matrix: &BlockMatrix) -> Self {
        let (format, rows, columns) = (matrix.format(), matrix.rows(), matrix.columns());
        let blocks = columns / BLOCK;
        let (block_bytes, group_bytes) = (format.block_bytes(), group_block_bytes(format));
        let row_bytes = blocks * block_bytes;
        let mut bytes = vec![0u8; rows.div_ceil(GROUP) * blocks * group_bytes];
        for (index, out) in bytes.chunks_exact_mut(group_bytes).enumerate() {
            let (group, b) = (index / blocks, index % blocks);
            for r in 0..GROUP.min(rows - group * GROUP) {
                let start = (group * GROUP + r) * row_bytes + b * block_bytes;
                let block = &matrix.bytes[start..start + block_bytes];
                out[2 * r..2 * r + 2].copy_from_slice(&block[0..2]);
                match format {
                    BlockFormat::Q4_1 => {
                        out[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&block[2..4]);
                        let value = |k: usize| if k < 16 { block[4 + k] & 0x0F } else { block[4 + k - 16] >> 4 };
                        for g in 0..4 {
                            for j in 0..4 {
                                out[32 + 32 * g + 4 * r + j] = value(4 * g + j) | (value(4 * (g + 4) + j) << 4);
                            }
                        }
                    }
                    BlockFormat::Q8_0 => {
                        for g in 0..8 {
                            for j in 0..4 {
                                out[16 + 32 * g + 4 * r + j] = block[2 + 4 * g + j];
                            }
                        }
                    }
                }
            }
        }
        Self { format, rows, columns, bytes }
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// `out[m × rows] = x · Wᵀ`, on the current rayon pool, with the kernels of the process's
    /// [`cpu_level`](inferd_core::cpu_level).
    ///
    /// # Panics
    /// When `x` does not have this matrix's columns or `out` is not `x.rows() × rows`.
    pub fn matmul(&self, x: &QuantizedRows, out: &mut [f32]) {
        self.matmul_at(inferd_core::cpu_level(), x, out);
    }

    /// [`Interleaved::matmul`] with the kernels of `level`: AVX-512 VNNI's 8-bit dot products
    /// (`vpdpbusd`, one instruction for AVX2's multiply-and-add pair) where `level` is
    /// [`CpuLevel::Avx512`], else AVX2. The integer sums are exact either way and the float
    /// arithmetic the same, so the two agree bit for bit.
    ///
    /// # Panics
    /// As [`Interleaved::matmul`], and when `level` is above what the CPU has.
    pub fn matmul_at(&self, level: CpuLevel, x: &QuantizedRows, out: &mut [f32]) {
        assert!(level <= inferd_core::cpu::detected(), "matmul: {level} kernels on a CPU without them");
        assert_eq!(x.columns, self.columns, "Interleaved::matmul: columns");
        let m = x.rows;
        assert_eq!(out.len(), m * self.rows, "Interleaved::matmul: output size");
        assert!(x.values.len() >= m * self.columns && x.scales.len() >= m * (self.columns / BLOCK));
        let groups = self.rows.div_ceil(GROUP);
        let group_bytes = self.columns / BLOCK * group_block_bytes(self.format);
        let format = self.format;
        let vnni = level >= CpuLevel::Avx512;
        // With 512-bit VNNI, Q4_1 groups go two at a time: one instruction covers 16 rows, and
        // each broadcast activation serves twice as many.
        let span = if vnni && format == BlockFormat::Q4_1 { 2 } else { 1 };
        let units = groups.div_ceil(span);
        let per_task = units.div_ceil(rayon::current_num_threads() * 4).max(1);
        let output = SharedOutput(out.as_mut_ptr());
        let rows = self.rows;
        (0..units.div_ceil(per_task)).into_par_iter().for_each(|task| {
            for unit in task * per_task..((task + 1) * per_task).min(units) {
                let first_group = unit * span;
                let unit_groups = span.min(groups - first_group);
                let weights = &self.bytes[first_group * group_bytes..(first_group + unit_groups) * group_bytes];
                for tile in 0..m.div_ceil(TILE) {
                    let first = tile * TILE;
                    let count = (m - first).min(TILE);
                    let mut values = [[0f32; 2 * GROUP]; TILE];
                    macro_rules! by_count {
                        ($kernel:ident, $weights:expr, $values:expr) => {
                            match count {
                                1 => $kernel::<1>($weights, x, tile, $values),
                                2 => $kernel::<2>($weights, x, tile, $values),
                                3 => $kernel::<3>($weights, x, tile, $values),
                                4 => $kernel::<4>($weights, x, tile, $values),
                                5 => $kernel::<5>($weights, x, tile, $values),
                                6 => $kernel::<6>($weights, x, tile, $values),
                                7 => $kernel::<7>($weights, x, tile, $values),
                                _ => $kernel::<8>($weights, x, tile, $values),
                            }
                        };
                    }
                    if unit_groups == 2 && count >= 2 {
                        // SAFETY: `span` is 2 only where the CPU has AVX-512 VNNI (`level` never
                        // exceeds what it detects, asserted above).
                        unsafe { by_count!(pair_dot_q4_1_vnni, weights, &mut values) };
                    } else {
                        // One activation row streams the weights from memory, and one group at a
                        // time keeps that stream simple; so does a lone last group.
                        for (j, weights) in weights.chunks_exact(group_bytes).enumerate() {
                            let mut part = [[0f32; 2 * GROUP]; TILE];
                            // SAFETY: the VNNI kernels run only where the CPU has AVX-512 VNNI
                            // (`level` never exceeds what it detects, asserted above).
                            match (format, vnni) {
                                (BlockFormat::Q4_1, false) => by_count!(group_dot_q4_1, weights, &mut part),
                                (BlockFormat::Q8_0, false) => by_count!(group_dot_q8_0, weights, &mut part),
                                (BlockFormat::Q4_1, true) => unsafe {
                                    by_count!(group_dot_q4_1_vnni, weights, &mut part)
                                },
                                (BlockFormat::Q8_0, true) => unsafe {
                                    by_count!(group_dot_q8_0_vnni, weights, &mut part)
                                },
                            }
                            for (values, part) in values.iter_mut().zip(&part).take(count) {
                                values[j * GROUP..(j + 1) * GROUP].copy_from_slice(&part[..GROUP]);
                            }
                        }
                    }
                    let real = (unit_groups * GROUP).min(rows - first_group * GROUP);
                    for (t, values) in values[..count].iter().enumerate() {
                        for (r, &value) in values[..real].iter().enumerate() {
                            // SAFETY: `(first + t) · rows + first_group · 8 + r` is inside `out`
                            // (asserted `m × rows` above), and the unit's columns belong to this
                            // task alone.
                            unsafe { *output.at((first + t) * rows + first_group * GROUP + r) = value };
                        }
                    }
                }
            }
        });
    }

    /// Row `row` in `f32` (for tests and tools).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let blocks = self.columns / BLOCK;
        let group_bytes = group_block_bytes(self.format);
        let (group, r) = (row / GROUP, row % GROUP);
        for (b, values) in out.chunks_exact_mut(BLOCK).enumerate() {
            let block = &self.bytes[(group * blocks + b) * group_bytes..][..group_bytes];
            let d = f16::from_bits(u16::from_le_bytes([block[2 * r], block[2 * r + 1]])).to_f32();
            match self.format {
                BlockFormat::Q4_1 => {
                    let m = f16::from_bits(u16::from_le_bytes([block[16 + 2 * r], block[17 + 2 * r]])).to_f32();
                    for (k, value) in values.iter_mut().enumerate() {
                        let (g, j) = (k / 4 % 4, k % 4);
                        let byte = block[32 + 32 * g + 4 * r + j];
                        let q = if k < 16 { byte & 0x0F } else { byte >> 4 };
                        *value = f32::from(q) * d + m;
                    }
                }
                BlockFormat::Q8_0 => {
                    for (k, value) in values.iter_mut().enumerate() {
                        *value = f32::from(block[16 + 32 * (k / 4) + 4 * r + k % 4] as i8) * d;
                    }
                }
            }
        }
    }
}

/// The entry of block 0, row 0 of activation tile `tile`, after checking that the tile's
/// blocks are all inside `x`.
fn tile_start(x: &QuantizedRows, tile: usize) -> usize {
    let tile_blocks = x.columns / BLOCK * TILE;
    let start = tile * tile_blocks;
    assert!(x.scales.len() >= start + tile_blocks && x.sums.len() >= start + tile_blocks);
    assert!(x.values.len() >= (start + tile_blocks) * BLOCK);
    start
}

/// Dot products of a Q4_1 group's 8 rows with the first `N` rows of activation tile `tile`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
fn group_dot_q4_1<const N: usize>(weights: &[u8], x: &QuantizedRows, tile: usize, out: &mut Values) {
    use std::arch::x86_64::*;
    let blocks = x.columns / BLOCK;
    assert!(N <= TILE && weights.len() == blocks * Q4_1_GROUP_BYTES);
    let start = tile_start(x, tile);
    // SAFETY: AVX2 and FMA are enabled at compile time. Weight loads read 16 or 32 bytes inside
    // `weights` (`blocks` blocks of 160 bytes, asserted); activation loads read 4 bytes at
    // offsets below 32 of the tile's blocks, and their scales and sums (inside `x`, asserted by
    // `tile_start`).
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..blocks {
            let base = weights.as_ptr().add(b * Q4_1_GROUP_BYTES);
            crate::kernels::prefetch(base.wrapping_add(PREFETCH_AHEAD), Q4_1_GROUP_BYTES);
            let index = start + b * TILE;
            let activations = x.values.as_ptr().add(index * BLOCK);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(base as *const __m128i));
            let m = _mm256_cvtph_ps(_mm_loadu_si128(base.add(16) as *const __m128i));
            let mut sums = [_mm256_setzero_si256(); N];
            for g in 0..4 {
                let packed = _mm256_loadu_si256(base.add(32 + 32 * g) as *const __m256i);
                let low_values = _mm256_and_si256(packed, low);
                let high_values = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
                for t in 0..N {
                    let row = activations.add(t * BLOCK);
                    let a = _mm256_set1_epi32(std::ptr::read_unaligned(row.add(4 * g) as *const i32));
                    let c = _mm256_set1_epi32(std::ptr::read_unaligned(row.add(4 * (g + 4)) as *const i32));
                    sums[t] = _mm256_add_epi16(sums[t], _mm256_maddubs_epi16(low_values, a));
                    sums[t] = _mm256_add_epi16(sums[t], _mm256_maddubs_epi16(high_values, c));
                }
            }
            for t in 0..N {
                let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(sums[t], ones));
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(*x.scales.get_unchecked(index + t)));
                acc[t] = _mm256_fmadd_ps(scale, products, acc[t]);
                acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(*x.sums.get_unchecked(index + t)), acc[t]);
            }
        }
        for t in 0..N {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }
}

/// Dot products of a Q4_1 group's 8 rows with the first `N` rows of activation tile `tile`
/// (scalar, the same arithmetic as the AVX2 path).
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn group_dot_q4_1<const N: usize>(weights: &[u8], x: &QuantizedRows, tile: usize, out: &mut Values) {
    let blocks = x.columns / BLOCK;
    let start = tile_start(x, tile);
    for t in 0..N {
        let mut acc = [0f32; GROUP];
        for b in 0..blocks {
            let block = &weights[b * Q4_1_GROUP_BYTES..(b + 1) * Q4_1_GROUP_BYTES];
            let index = start + b * TILE + t;
            let activations = &x.values[index * BLOCK..(index + 1) * BLOCK];
            for (r, acc) in acc.iter_mut().enumerate() {
                let mut sum = 0i32;
                for g in 0..4 {
                    for j in 0..4 {
                        let byte = block[32 + 32 * g + 4 * r + j];
                        sum += i32::from(byte & 0x0F) * i32::from(activations[4 * g + j]);
                        sum += i32::from(byte >> 4) * i32::from(activations[4 * (g + 4) + j]);
                    }
                }
                let d = f16::from_bits(u16::from_le_bytes([block[2 * r], block[2 * r + 1]])).to_f32();
                let m = f16::from_bits(u16::from_le_bytes([block[16 + 2 * r], block[17 + 2 * r]])).to_f32();
                *acc = (d * x.scales[index]).mul_add(sum as f32, *acc);
                *acc = m.mul_add(x.sums[index], *acc);
            }
        }
        out[t][..GROUP].copy_from_slice(&acc);
    }
}

/// Dot products of a Q8_0 group's 8 rows with the first `N` rows of activation tile `tile`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
fn group_dot_q8_0<const N: usize>(weights: &[u8], x: &QuantizedRows, tile: usize, out: &mut Values) {
    use std::arch::x86_64::*;
    let blocks = x.columns / BLOCK;
    assert!(N <= TILE && weights.len() == blocks * Q8_0_GROUP_BYTES);
    let start = tile_start(x, tile);
    // SAFETY: as in `group_dot_q4_1`, with blocks of 272 bytes (loads at offsets 0 and 16 + 32g).
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..blocks {
            let base = weights.as_ptr().add(b * Q8_0_GROUP_BYTES);
            crate::kernels::prefetch(base.wrapping_add(PREFETCH_AHEAD), Q8_0_GROUP_BYTES);
            let index = start + b * TILE;
            let activations = x.values.as_ptr().add(index * BLOCK);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(base as *const __m128i));
            let mut sums = [_mm256_setzero_si256(); N];
            for g in 0..8 {
                let values = _mm256_loadu_si256(base.add(16 + 32 * g) as *const __m256i);
                let magnitudes = _mm256_sign_epi8(values, values);
                for t in 0..N {
                    let row = activations.add(t * BLOCK);
                    let a = _mm256_set1_epi32(std::ptr::read_unaligned(row.add(4 * g) as *const i32));
                    let products = _mm256_maddubs_epi16(magnitudes, _mm256_sign_epi8(a, values));
                    sums[t] = _mm256_add_epi32(sums[t], _mm256_madd_epi16(products, ones));
                }
            }
            for t in 0..N {
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(*x.scales.get_unchecked(index + t)));
                acc[t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums[t]), acc[t]);
            }
        }
        for t in 0..N {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }
}

/// Dot products of a Q8_0 group's 8 rows with the first `N` rows of activation tile `tile`
/// (scalar, the same arithmetic as the AVX2 path).
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn group_dot_q8_0<const N: usize>(weights: &[u8], x: &QuantizedRows, tile: usize, out: &mut Values) {
    let blocks = x.columns / BLOCK;
    let start = tile_start(x, tile);
    for t in 0..N {
        let mut acc = [0f32; GROUP];
        for b in 0..blocks {
            let block = &weights[b * Q8_0_GROUP_BYTES..(b + 1) * Q8_0_GROUP_BYTES];
            let index = start + b * TILE + t;
            let activations = &x.values[index * BLOCK..(index + 1) * BLOCK];
            for (r, acc) in acc.iter_mut().enumerate() {
                let sum: i32 = (0..BLOCK)
                    .map(|k| i32::from(block[16 + 32 * (k / 4) + 4 * r + k % 4] as i8) * i32::from(activations[k]))
                    .sum();
                let d = f16::from_bits(u16::from_le_bytes([block[2 * r], block[2 * r + 1]])).to_f32();
                *acc = (d * x.scales[index]).mul_add(sum as f32, *acc);
            }
        }
        out[t][..GROUP].copy_from_slice(&acc);
    }
}

/// [`group_dot_q4_1`] with AVX-512 VNNI: `vpdpbusd` multiplies the unsigned 4-bit weights by the
/// signed 8-bit activations and adds each four products into a 32-bit lane, in one instruction.
///
/// # Safety
/// The CPU must have AVX-512 F, VL and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn group_dot_q4_1_vnni<const N: usize>(weights: &[u8], x: &QuantizedRows, tile: usize, out: &mut Values) {
    use std::arch::x86_64::*;
    let blocks = x.columns / BLOCK;
    assert!(N <= TILE && weights.len() == blocks * Q4_1_GROUP_BYTES);
    let start = tile_start(x, tile);
    // SAFETY: the loads are `group_dot_q4_1`'s; the caller vouches for the instructions.
    unsafe {
        let low = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..blocks {
            let base = weights.as_ptr().add(b * Q4_1_GROUP_BYTES);
            crate::kernels::prefetch(base.wrapping_add(PREFETCH_AHEAD), Q4_1_GROUP_BYTES);
            let index = start + b * TILE;
            let activations = x.values.as_ptr().add(index * BLOCK);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(base as *const __m128i));
            let m = _mm256_cvtph_ps(_mm_loadu_si128(base.add(16) as *const __m128i));
            let mut sums = [_mm256_setzero_si256(); N];
            for g in 0..4 {
                let packed = _mm256_loadu_si256(base.add(32 + 32 * g) as *const __m256i);
                let low_values = _mm256_and_si256(packed, low);
                let high_values = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
                for t in 0..N {
                    let row = activations.add(t * BLOCK);
                    let a = _mm256_set1_epi32(std::ptr::read_unaligned(row.add(4 * g) as *const i32));
                    let c = _mm256_set1_epi32(std::ptr::read_unaligned(row.add(4 * (g + 4)) as *const i32));
                    sums[t] = _mm256_dpbusd_epi32(sums[t], low_values, a);
                    sums[t] = _mm256_dpbusd_epi32(sums[t], high_values, c);
                }
            }
            for t in 0..N {
                let products = _mm256_cvtepi32_ps(sums[t]);
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(*x.scales.get_unchecked(index + t)));
                acc[t] = _mm256_fmadd_ps(scale, products, acc[t]);
                acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(*x.sums.get_unchecked(index + t)), acc[t]);
            }
        }
        for t in 0..N {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }
}

/// [`group_dot_q8_0`] with AVX-512 VNNI: the weights' magnitudes (unsigned) times the activations
/// carrying the weights' signs, four products per 32-bit lane in one `vpdpbusd`.
///
/// # Safety
/// The CPU must have AVX-512 F, VL and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn group_dot_q8_0_vnni<const N: usize>(weights: &[u8], x: &QuantizedRows, tile: usize, out: &mut Values) {
    use std::arch::x86_64::*;
    let blocks = x.columns / BLOCK;
    assert!(N <= TILE && weights.len() == blocks * Q8_0_GROUP_BYTES);
    let start = tile_start(x, tile);
    // SAFETY: the loads are `group_dot_q8_0`'s; the caller vouches for the instructions.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..blocks {
            let base = weights.as_ptr().add(b * Q8_0_GROUP_BYTES);
            crate::kernels::prefetch(base.wrapping_add(PREFETCH_AHEAD), Q8_0_GROUP_BYTES);
            let index = start + b * TILE;
            let activations = x.values.as_ptr().add(index * BLOCK);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(base as *const __m128i));
            let mut sums = [_mm256_setzero_si256(); N];
            for g in 0..8 {
                let values = _mm256_loadu_si256(base.add(16 + 32 * g) as *const __m256i);
                let magnitudes = _mm256_sign_epi8(values, values);
                for t in 0..N {
                    let row = activations.add(t * BLOCK);
                    let a = _mm256_set1_epi32(std::ptr::read_unaligned(row.add(4 * g) as *const i32));
                    sums[t] = _mm256_dpbusd_epi32(sums[t], magnitudes, _mm256_sign_epi8(a, values));
                }
            }
            for t in 0..N {
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(*x.scales.get_unchecked(index + t)));
                acc[t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums[t]), acc[t]);
            }
        }
        for t in 0..N {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }
}

/// Dot products of two consecutive Q4_1 groups' 16 rows (`weights` holds both) with the first `N`
/// rows of activation tile `tile`, with 512-bit VNNI: lanes 0–7 are the first group's rows,
/// 8–15 the second's, each computed by the same arithmetic as [`group_dot_q4_1_vnni`].
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn pair_dot_q4_1_vnni<const N: usize>(weights: &[u8], x: &QuantizedRows, tile: usize, out: &mut Values) {
    use std::arch::x86_64::*;
    let blocks = x.columns / BLOCK;
    assert!(N <= TILE && weights.len() == 2 * blocks * Q4_1_GROUP_BYTES);
    let start = tile_start(x, tile);
    // SAFETY: each group's loads are `group_dot_q4_1`'s, the second group's `blocks · 160` bytes
    // after the first's (inside `weights`, asserted); the caller vouches for the instructions.
    unsafe {
        let low = _mm512_set1_epi8(0x0F);
        let second = blocks * Q4_1_GROUP_BYTES;
        let both = |base: *const u8, offset: usize| {
            let first = _mm256_loadu_si256(base.add(offset) as *const __m256i);
            let next = _mm256_loadu_si256(base.add(second + offset) as *const __m256i);
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(first), next)
        };
        let halves = |base: *const u8, offset: usize| {
            let first = _mm_loadu_si128(base.add(offset) as *const __m128i);
            let next = _mm_loadu_si128(base.add(second + offset) as *const __m128i);
            _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(first), next))
        };
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..blocks {
            let base = weights.as_ptr().add(b * Q4_1_GROUP_BYTES);
            crate::kernels::prefetch(base.wrapping_add(PREFETCH_AHEAD), Q4_1_GROUP_BYTES);
            crate::kernels::prefetch(base.wrapping_add(second + PREFETCH_AHEAD), Q4_1_GROUP_BYTES);
            let index = start + b * TILE;
            let activations = x.values.as_ptr().add(index * BLOCK);
            let d = halves(base, 0);
            let m = halves(base, 16);
            let mut sums = [_mm512_setzero_si512(); N];
            for g in 0..4 {
                let packed = both(base, 32 + 32 * g);
                let low_values = _mm512_and_si512(packed, low);
                let high_values = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low);
                for t in 0..N {
                    let row = activations.add(t * BLOCK);
                    let a = _mm512_set1_epi32(std::ptr::read_unaligned(row.add(4 * g) as *const i32));
                    let c = _mm512_set1_epi32(std::ptr::read_unaligned(row.add(4 * (g + 4)) as *const i32));
                    sums[t] = _mm512_dpbusd_epi32(sums[t], low_values, a);
                    sums[t] = _mm512_dpbusd_epi32(sums[t], high_values, c);
                }
            }
            for t in 0..N {
                let products = _mm512_cvtepi32_ps(sums[t]);
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(*x.scales.get_unchecked(index + t)));
                acc[t] = _mm512_fmadd_ps(scale, products, acc[t]);
                acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(*x.sums.get_unchecked(index + t)), acc[t]);
            }
        }
        for t in 0..N {
            _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }
}

/// Never called: `cpu_level` is never AVX-512 off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn pair_dot_q4_1_vnni<const N: usize>(w: &[u8], x: &QuantizedRows, tile: usize, out: &mut Values) {
    let half = w.len() / 2;
    let mut second: Values = [[0.0; 2 * GROUP]; TILE];
    group_dot_q4_1::<N>(&w[..half], x, tile, out);
    group_dot_q4_1::<N>(&w[half..], x, tile, &mut second);
    for t in 0..N {
        out[t][GROUP..].copy_from_slice(&second[t][..GROUP]);
    }
}

/// Never called: `cpu_level` is never AVX-512 off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn group_dot_q4_1_vnni<const N: usize>(w: &[u8], x: &QuantizedRows, tile: usize, out: &mut Values) {
    group_dot_q4_1::<N>(w, x, tile, out)
}

/// Never called: `cpu_level` is never AVX-512 off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn group_dot_q8_0_vnni<const N: usize>(w: &[u8], x: &QuantizedRows, tile: usize, out: &mut Values) {
    group_dot_q8_0::<N>(w, x, tile, out)
}
