//! Quantized matrix products for the CPU, the way llama.cpp computes them: weights keep their
//! GGUF block formats (Q4_1, Q8_0; [`BlockMatrix`] as the file stores them, for loading, row
//! lookups and stacking; [`Interleaved`] eight rows at a time, for products), activations are
//! quantized per row to 8-bit blocks of 32 ([`QuantizedRows`]), and each 32-value block
//! contributes an integer dot product scaled by the two blocks' factors.
//!
//! Formats (ggml's, little-endian):
//! - Q4_1: 20 bytes per 32 weights: `d` (f16), `m` (f16), 16 bytes of 4-bit values `q`; weight
//!   `j` is `q_j·d + m`, with `q_j` the low nibble of byte `j` for `j < 16` and the high nibble
//!   of byte `j − 16` otherwise.
//! - Q8_0: 34 bytes per 32 weights: `d` (f16), 32 signed bytes `q`; weight `j` is `q_j·d`.
//! - Activations: per block of 32, `d = max|x|/127`, `q = round(x/d)`, and `s = d·Σq` (so that a
//!   Q4_1 block's offset `m` contributes `m·s`). `d` and `s` are rounded to f16, as llama.cpp
//!   stores them.
//!
//! Every output element is computed by the same instructions in the same order whatever the
//! number of rows computed with it, so a sequence's result does not depend on the batch it runs
//! in. The AVX2 paths are chosen at compile time (x86-64-v3 builds); other targets use the
//! scalar paths.

#![allow(unsafe_code)]

mod interleaved;

use half::f16;
use rayon::prelude::*;

pub use interleaved::{GROUP, Interleaved};

/// Values per quantization block.
pub const BLOCK: usize = 32;
/// Bytes per Q4_1 block.
pub const Q4_1_BYTES: usize = 20;
/// Bytes per Q8_0 block.
pub const Q8_0_BYTES: usize = 34;

/// A weight matrix `[rows × columns]` in a GGUF block format, row-major, as the file stores it.
#[derive(Debug, Clone)]
pub struct BlockMatrix {
    format: BlockFormat,
    rows: usize,
    columns: usize,
    bytes: Vec<u8>,
}

/// The block formats [`BlockMatrix`] computes with directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// 4-bit values with a scale and an offset per block.
    Q4_1,
    /// 8-bit values with a scale per block.
    Q8_0,
}

impl BlockFormat {
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => Q4_1_BYTES,
            Self::Q8_0 => Q8_0_BYTES,
        }
    }
}

fn half(bytes: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32()
}

impl BlockMatrix {
    /// Wraps a file's bytes; `None` when `columns` is not a multiple of 32 or the size is wrong.
    pub fn new(format: BlockFormat, rows: usize, columns: usize, bytes: Vec<u8>) -> Option<Self> {
        let expected = rows.checked_mul(columns / BLOCK)?.checked_mul(format.block_bytes())?;
        (columns.is_multiple_of(BLOCK) && columns > 0 && bytes.len() == expected).then_some(Self {
            format,
            rows,
            columns,
            bytes,
        })
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// The format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    fn row_bytes(&self) -> usize {
        self.columns / BLOCK * self.format.block_bytes()
    }

    /// These matrices' rows stacked, when all share this one's format and columns.
    pub fn stack(parts: &[&Self]) -> Option<Self> {
        let first = parts.first()?;
        if parts.iter().any(|part| part.format != first.format || part.columns != first.columns) {
            return None;
        }
        let bytes = parts.iter().flat_map(|part| part.bytes.iter().copied()).collect();
        Some(Self {
            format: first.format,
            rows: parts.iter().map(|part| part.rows).sum(),
            columns: first.columns,
            bytes,
        })
    }

    /// Row `row` in `f32` (for embedding lookups).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let bytes = &self.bytes[row * self.row_bytes()..(row + 1) * self.row_bytes()];
        for (block, values) in bytes.chunks_exact(self.format.block_bytes()).zip(out.chunks_exact_mut(BLOCK)) {
            let d = half(block);
            match self.format {
                BlockFormat::Q4_1 => {
                    let m = half(&block[2..]);
                    for (j, &byte) in block[4..20].iter().enumerate() {
                        values[j] = f32::from(byte & 0x0F) * d + m;
                        values[j + 16] = f32::from(byte >> 4) * d + m;
                    }
                }
                BlockFormat::Q8_0 => {
                    for (value, &q) in values.iter_mut().zip(&block[2..34]) {
                        *value = f32::from(q as i8) * d;
                    }
                }
            }
        }
    }

    /// The whole matrix in `f32`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.columns];
        for (row, values) in out.chunks_exact_mut(self.columns).enumerate() {
            self.dequantize_row(row, values);
        }
        out
    }
}

/// `x.round()` (halves away from zero, as llama.cpp's `roundf`), written so that it vectorises:
/// `f32::round` is a library call. Exact for every `x` (`x − trunc(x)` is exact in `f32`).
#[cfg_attr(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", not(test)), allow(dead_code))]
#[inline(always)]
fn round_half_away(x: f32) -> f32 {
    let whole = x.trunc();
    if (x - whole).abs() >= 0.5 { whole + 1f32.copysign(x) } else { whole }
}

/// A `*mut f32` that may cross threads: the tasks of a product write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOutput(*mut f32);
// SAFETY: only used by the products of this module, whose tasks write disjoint elements.
unsafe impl Send for SharedOutput {}
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// The element at `offset` (a method, so that closures capture the whole value).
    ///
    /// # Safety
    /// `offset` must be inside the output slice, and no other task may touch that element.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller keeps `offset` inside the slice.
        unsafe { self.0.add(offset) }
    }
}

/// Activation rows computed together by the products: each tile's rows lie side by side, block
/// by block, so that a product reaches all of a tile's rows from one address.
pub const TILE: usize = 8;

/// A tile's (or a run of a tile's blocks') quantized values, scales and sums.
type TileParts<'a> = ((&'a mut [i8], &'a mut [f32]), &'a mut [f32]);

/// Rows of activations quantized to 8-bit blocks of 32, in tiles of [`TILE`] rows: block `b` of
/// row `r` is entry `(r / TILE · blocks + b) · TILE + r % TILE` of `scales` and `sums`, and its
/// 32 values start at 32 times that in `values` (the last tile padded).
#[derive(Debug, Clone, Default)]
pub struct QuantizedRows {
    rows: usize,
    columns: usize,
    /// Per block: `d`.
    scales: Vec<f32>,
    /// Per block: `d·Σq`.
    sums: Vec<f32>,
    /// 32 per block.
    values: Vec<i8>,
}

impl QuantizedRows {
    /// Quantizes `x`, `rows × columns` row-major (`columns` a multiple of 32), reusing this
    /// value's buffers.
    ///
    /// # Panics
    /// When `columns` is not a multiple of 32 or `x` is not `rows × columns`.
    pub fn quantize(&mut self, x: &[f32], rows: usize, columns: usize) {
        assert!(columns.is_multiple_of(BLOCK), "QuantizedRows: columns must be a multiple of 32");
        assert_eq!(x.len(), rows * columns, "QuantizedRows: size");
        let per_row = columns / BLOCK;
        let tile_blocks = per_row * TILE;
        let blocks = rows.div_ceil(TILE) * tile_blocks;
        self.rows = rows;
        self.columns = columns;
        self.scales.resize(blocks, 0.0);
        self.sums.resize(blocks, 0.0);
        self.values.resize(blocks * BLOCK, 0);
        // Blocks `first..` of tile `tile`, into slices that start at that block.
        let quantize_part = |tile: usize, first: usize, ((values, scales), sums): TileParts<'_>| {
            for t in 0..TILE.min(rows - tile * TILE) {
                let row = &x[(tile * TILE + t) * columns..][..columns];
                for (b, block) in row.chunks_exact(BLOCK).skip(first).take(scales.len() / TILE).enumerate() {
                    let index = b * TILE + t;
                    let (d, total) = quantize_block(block, &mut values[index * BLOCK..(index + 1) * BLOCK]);
                    // Scales rounded to f16 as llama.cpp stores them, so that both compute alike.
                    scales[index] = f16::from_f32(d).to_f32();
                    sums[index] = f16::from_f32(d * total as f32).to_f32();
                }
            }
        };
        if rows > TILE {
            self.values
                .par_chunks_mut(tile_blocks * BLOCK)
                .zip(self.scales.par_chunks_mut(tile_blocks))
                .zip(self.sums.par_chunks_mut(tile_blocks))
                .enumerate()
                .for_each(|(tile, parts)| quantize_part(tile, 0, parts));
        } else if rows > 1 {
            // One tile: its blocks split between the threads (several rows are worth a
            // dispatch; one row is not).
            let per_part = per_row.div_ceil(rayon::current_num_threads()).max(1);
            self.values[..tile_blocks * BLOCK]
                .par_chunks_mut(per_part * TILE * BLOCK)
                .zip(self.scales[..tile_blocks].par_chunks_mut(per_part * TILE))
                .zip(self.sums[..tile_blocks].par_chunks_mut(per_part * TILE))
                .enumerate()
                .for_each(|(part, parts)| quantize_part(0, part * per_part, parts));
        } else {
            let values = &mut self.values[..tile_blocks * BLOCK];
            quantize_part(0, 0, ((values, &mut self.scales[..tile_blocks]), &mut self.sums[..tile_blocks]));
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// One block: `d = max|x|/127`, `q = round(x/d)` (halves away from zero); returns `d` and `Σq`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
fn quantize_block(block: &[f32], q: &mut [i8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    assert!(block.len() == BLOCK && q.len() == BLOCK);
    // SAFETY: AVX2 is enabled at compile time; loads read the 32 floats of `block` and the store
    // writes the 32 bytes of `q` (lengths asserted).
    unsafe {
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(block.as_ptr().add(8 * i)));
        let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let abs = v.map(|v| _mm256_and_ps(v, magnitude));
        let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let max = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = max / 127.0;
        let inverse = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
        let (one, half) = (_mm256_set1_ps(1.0), _mm256_set1_ps(0.5));
        let ints = v.map(|v| {
            // round_half_away, lane-wise: trunc(x) + (|x − trunc(x)| ≥ ½ ? ±1 : 0).
            let x = _mm256_mul_ps(v, inverse);
            let whole = _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            let away = _mm256_cmp_ps(_mm256_and_ps(_mm256_sub_ps(x, whole), magnitude), half, _CMP_GE_OQ);
            let step = _mm256_and_ps(away, _mm256_or_ps(_mm256_and_ps(x, sign), one));
            _mm256_cvttps_epi32(_mm256_add_ps(whole, step))
        });
        let total = _mm256_add_epi32(_mm256_add_epi32(ints[0], ints[1]), _mm256_add_epi32(ints[2], ints[3]));
        let total = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
        let total = _mm_add_epi32(total, _mm_shuffle_epi32(total, 0b01_00_11_10));
        let total = _mm_cvtsi128_si32(_mm_add_epi32(total, _mm_shuffle_epi32(total, 0b10_11_00_01)));
        // Packing interleaves 128-bit lanes; the permutation puts the 4-byte groups back in order.
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(ints[0], ints[1]), _mm256_packs_epi32(ints[2], ints[3]));
        let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, ordered);
        (d, total)
    }
}

/// One block (scalar, the same arithmetic as the AVX2 path).
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn quantize_block(block: &[f32], q: &mut [i8]) -> (f32, i32) {
    quantize_block_scalar(block, q)
}

/// [`quantize_block`] written plainly: the scalar path, and the reference in tests.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", not(test)), allow(dead_code))]
fn quantize_block_scalar(block: &[f32], q: &mut [i8]) -> (f32, i32) {
    let max = block.iter().fold(0f32, |max, v| max.max(v.abs()));
    let d = max / 127.0;
    let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut total = 0i32;
    for (q, &v) in q.iter_mut().zip(block) {
        let rounded = round_half_away(v * inverse) as i32;
        *q = rounded as i8;
        total += rounded;
    }
    (d, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence in [-1, 1).
    fn noise(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn blocks(format: BlockFormat, rows: usize, columns: usize) -> BlockMatrix {
        let mut bytes = Vec::new();
        let values = noise(rows * columns, 3);
        for (i, chunk) in values.chunks(BLOCK).enumerate() {
            let d = f16::from_f32(0.01 + (i % 7) as f32 * 0.003).to_bits().to_le_bytes();
            bytes.extend_from_slice(&d);
            match format {
                BlockFormat::Q4_1 => {
                    bytes.extend_from_slice(&f16::from_f32(-0.05).to_bits().to_le_bytes());
                    bytes.extend(chunk[..16].iter().map(|v| (v.abs() * 255.0) as u8));
                }
                BlockFormat::Q8_0 => bytes.extend(chunk.iter().map(|v| ((v * 127.0) as i8) as u8)),
            }
        }
        BlockMatrix::new(format, rows, columns, bytes).unwrap()
    }

    #[test]
    fn products_match_the_dequantized_weights_and_do_not_depend_on_the_batch() {
        for format in [BlockFormat::Q4_1, BlockFormat::Q8_0] {
            // 37 rows: the last group of eight is padded.
            let (rows, columns, m) = (37, 96, 7);
            let plain = blocks(format, rows, columns);
            let weights = Interleaved::new(&plain);
            let dense = plain.dequantize();
            let mut row = vec![0f32; columns];
            for r in 0..rows {
                weights.dequantize_row(r, &mut row);
                assert_eq!(row, dense[r * columns..(r + 1) * columns], "{format:?} row {r}");
            }
            let x = noise(m * columns, 11);
            let mut quantized = QuantizedRows::default();
            quantized.quantize(&x, m, columns);
            let mut out = vec![0f32; m * rows];
            weights.matmul(&quantized, &mut out);
            for t in 0..m {
                for r in 0..rows {
                    let exact: f32 = (0..columns).map(|c| x[t * columns + c] * dense[r * columns + c]).sum();
                    let scale: f32 = (0..columns).map(|c| (x[t * columns + c] * dense[r * columns + c]).abs()).sum();
                    let got = out[t * rows + r];
                    assert!((got - exact).abs() <= 0.02 * scale + 1e-5, "{format:?} ({t},{r}): {got} vs {exact}");
                }
                // The same row alone gives bit-identical results.
                let mut single = QuantizedRows::default();
                single.quantize(&x[t * columns..(t + 1) * columns], 1, columns);
                let mut alone = vec![0f32; rows];
                weights.matmul(&single, &mut alone);
                assert_eq!(alone, out[t * rows..(t + 1) * rows], "{format:?} row {t}");
            }
        }
    }

    #[test]
    fn vnni_and_avx2_products_agree_bit_for_bit() {
        if inferd_core::cpu::detected() < inferd_core::CpuLevel::Avx512 {
            eprintln!("skipped: this CPU has no AVX-512 VNNI, so only the AVX2 products run here");
            return;
        }
        // 37 rows: five groups, the last padded and alone; 45: three pairs of groups.
        for (format, rows) in [(BlockFormat::Q4_1, 37), (BlockFormat::Q4_1, 45), (BlockFormat::Q8_0, 45)] {
            let columns = 576;
            // Every byte value, -128 for Q8_0 included, with scales like a model's.
            let mut bytes = Vec::new();
            for block in 0..rows * columns / BLOCK {
                bytes.extend_from_slice(&f16::from_f32(0.004 + (block % 13) as f32 * 1e-3).to_bits().to_le_bytes());
                let count = match format {
                    BlockFormat::Q4_1 => {
                        bytes.extend_from_slice(&f16::from_f32(-0.07).to_bits().to_le_bytes());
                        16
                    }
                    BlockFormat::Q8_0 => 32,
                };
                bytes.extend((0..count).map(|i| ((block * 37 + i * 101) % 256) as u8));
            }
            let weights = Interleaved::new(&BlockMatrix::new(format, rows, columns, bytes).unwrap());
            for m in [1, 3, 8, 9, 17] {
                let x = noise(m * columns, 29);
                let mut quantized = QuantizedRows::default();
                quantized.quantize(&x, m, columns);
                let (mut vnni, mut avx2) = (vec![0f32; m * rows], vec![0f32; m * rows]);
                weights.matmul_at(inferd_core::CpuLevel::Avx512, &quantized, &mut vnni);
                weights.matmul_at(inferd_core::CpuLevel::Avx2, &quantized, &mut avx2);
                let same = vnni.iter().zip(&avx2).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{format:?}, {rows} weight rows, {m} activation rows");
            }
        }
    }

    #[test]
    fn blocks_quantize_as_the_scalar_reference() {
        let mut values = noise(BLOCK * 200, 5);
        // Halves, zeros and a block of one value.
        values[..BLOCK].iter_mut().enumerate().for_each(|(i, v)| *v = (i as f32 - 16.0) * 0.5);
        values[BLOCK..2 * BLOCK].fill(0.0);
        values[2 * BLOCK..3 * BLOCK].fill(-3.0);
        for block in values.chunks_exact(BLOCK) {
            let (mut fast, mut plain) = ([0i8; BLOCK], [0i8; BLOCK]);
            assert_eq!(quantize_block(block, &mut fast), quantize_block_scalar(block, &mut plain));
            assert_eq!(fast, plain);
        }
    }

    #[test]
    fn rounding_matches_the_library() {
        for x in [0.5f32, -0.5, 1.5, -2.5, 0.49999997, -0.49999997, 126.5, -127.0, 0.0, -0.0, 3.2, -3.7] {
            assert_eq!(round_half_away(x), x.round(), "{x}");
        }
        for x in noise(10_000, 9) {
            let x = x * 130.0;
            assert_eq!(round_half_away(x), x.round(), "{x}");
        }
    }

    #[test]
    fn stacking_concatenates_rows() {
        let a = blocks(BlockFormat::Q4_1, 3, 64);
        let b = blocks(BlockFormat::Q4_1, 2, 64);
        let both = BlockMatrix::stack(&[&a, &b]).unwrap();
        assert_eq!(both.rows(), 5);
        let mut row = vec![0f32; 64];
        let mut expected = vec![0f32; 64];
        both.dequantize_row(4, &mut row);
        b.dequantize_row(1, &mut expected);
        assert_eq!(row, expected);
        assert!(BlockMatrix::stack(&[&a, &blocks(BlockFormat::Q8_0, 1, 64)]).is_none());
        assert!(BlockMatrix::new(BlockFormat::Q8_0, 1, 40, vec![0; 34]).is_none());
    }
}
