//! The native engine for llama-family decoders (Llama, SmolLM, Qwen2): the forward pass written
//! for the CPU, over a ragged batch.
//!
//! The new tokens of every sequence in a step (a whole prompt, or one token) are laid end to end
//! as one `[tokens × hidden]` matrix, so each projection is one matrix product over the whole
//! step: the weights are read once per step, however many sequences decode together. That is
//! what makes continuous batching pay on a CPU, where decoding one sequence is bound by memory
//! bandwidth. Attention alone runs per sequence (and per head, in parallel) against the
//! sequence's own key/value cache. Every step computes each sequence's rows with the same
//! arithmetic whatever else is in the batch, and a prompt's rows the same way as if decoded one
//! by one.

use std::sync::Arc;

use inferd_core::{CausalLm, InferError, SequenceStep};
use rayon::prelude::*;

use super::attention::{attend, dot};
use super::config::{LlamaConfig, RopeStyle};
use super::kv_cache::{KvPrecision, LlamaCache};
use super::step::lay_out;
use super::weights::LlamaWeights;
use crate::kernels;
use crate::quant::QuantizedRows;

/// A llama-family decoder on the CPU.
pub struct NativeLlama {
    config: LlamaConfig,
    weights: LlamaWeights,
    pool: Arc<rayon::ThreadPool>,
    quantized: QuantizedRows,
    kv: KvPrecision,
    /// The last step's logits, `[sequences × vocab]`.
    logits: Vec<f32>,
}

impl NativeLlama {
    /// The engine, computing on `threads` threads of its own, caching keys and values in `kv`.
    pub fn new(config: LlamaConfig, weights: LlamaWeights, threads: usize, kv: KvPrecision) -> Result<Self, String> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("inferd-llm-{i}"))
            .build()
            .map_err(|err| format!("cannot start the model's threads: {err}"))?;
        Ok(Self { config, weights, pool: Arc::new(pool), quantized: QuantizedRows::default(), kv, logits: Vec::new() })
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Logits after every token of `tokens` fed to a fresh cache (for tests and tools).
    pub fn logits_of_each(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, InferError> {
        let mut cache = self.new_cache();
        tokens
            .iter()
            .map(|&token| {
                let mut step = [SequenceStep { cache: &mut cache, tokens: std::slice::from_ref(&token) }];
                self.forward(&mut step).map(|mut logits| logits.remove(0))
            })
            .collect()
    }

    fn run(&mut self, batch: &mut [SequenceStep<'_, LlamaCache>]) -> Result<Vec<Vec<f32>>, InferError> {
        let config = &self.config;
        let (h, hd) = (config.hidden_size, config.head_dim);
        let (q_size, kv_size) = (config.heads * hd, config.kv_size());
        let qkv_size = q_size + 2 * kv_size;
        let inter = config.intermediate_size;

        let (spans, total) = lay_out(config, batch, LlamaCache::len)?;

        // Embeddings, and the rotation of every row's position.
        let mut x = vec![0f32; total * h];
        let mut rotations = Vec::with_capacity(total);
        for (step, span) in batch.iter().zip(&spans) {
            for (i, &id) in step.tokens.iter().enumerate() {
                let row = span.start + i;
                self.weights.embeddings.row(id as usize, &mut x[row * h..(row + 1) * h]);
                rotations.push(rotation(span.past + i, hd, config.rope_theta));
            }
        }

        let mut normed = vec![0f32; total * h];
        let mut qkv = vec![0f32; total * qkv_size];
        let mut attended = vec![0f32; total * q_size];
        let mut projected = vec![0f32; total * h];
        let mut gate_up = vec![0f32; total * 2 * inter];
        let mut activated = vec![0f32; total * inter];
        for (index, layer) in self.weights.layers.iter().enumerate() {
            rms_norm_rows(&x, &layer.attention_norm, config.rms_norm_eps, &mut normed);
            layer.qkv.forward(&normed, total, &mut self.quantized, &mut qkv);
            for (row, rotation) in qkv.chunks_exact_mut(qkv_size).zip(&rotations) {
                if let Some(bias) = &layer.qkv_bias {
                    row.iter_mut().zip(bias).for_each(|(value, b)| *value += b);
                }
                let (queries, rest) = row.split_at_mut(q_size);
                for head in queries.chunks_exact_mut(hd).chain(rest[..kv_size].chunks_exact_mut(hd)) {
                    rotate(head, rotation, config.rope);
                }
            }
            for (step, span) in batch.iter_mut().zip(&spans) {
                for row in qkv[span.start * qkv_size..(span.start + span.len) * qkv_size].chunks_exact(qkv_size) {
                    step.cache.push(index, &row[q_size..q_size + kv_size], &row[q_size + kv_size..]);
                }
            }
            attend(config, batch, &spans, index, &qkv, &mut attended);
            layer.output.forward(&attended, total, &mut self.quantized, &mut projected);
            x.iter_mut().zip(&projected).for_each(|(value, p)| *value += p);

            rms_norm_rows(&x, &layer.ffn_norm, config.rms_norm_eps, &mut normed);
            layer.gate_up.forward(&normed, total, &mut self.quantized, &mut gate_up);
            let swiglu = |(row, out): (&[f32], &mut [f32])| {
                let (gate, up) = row.split_at(inter);
                for ((value, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                    *value = g / (1.0 + kernels::exp(-g)) * u;
                }
            };
            // Several rows are worth a dispatch to the other threads; one row is not.
            if total > 1 {
                gate_up.par_chunks_exact(2 * inter).zip(activated.par_chunks_exact_mut(inter)).for_each(swiglu);
            } else {
                gate_up.chunks_exact(2 * inter).zip(activated.chunks_exact_mut(inter)).for_each(swiglu);
            }
            layer.down.forward(&activated, total, &mut self.quantized, &mut projected);
            x.iter_mut().zip(&projected).for_each(|(value, p)| *value += p);
        }
        for (step, span) in batch.iter_mut().zip(&spans) {
            step.cache.set_len(span.past + span.len);
        }

        // Only each sequence's last row is needed for its next token.
        let mut last = vec![0f32; spans.len() * h];
        for (span, out) in spans.iter().zip(last.chunks_exact_mut(h)) {
            let row = span.start + span.len - 1;
            out.copy_from_slice(&x[row * h..(row + 1) * h]);
        }
        let mut last_normed = vec![0f32; last.len()];
        rms_norm_rows(&last, &self.weights.norm, config.rms_norm_eps, &mut last_normed);
        let vocab = config.vocab_size;
        // The head's output buffer is kept from step to step: 1.5 MB for 8 sequences of
        // SmolLM2, which a fresh allocation would fault in page by page.
        self.logits.resize(spans.len() * vocab, 0.0);
        self.weights.head.forward(&last_normed, spans.len(), &mut self.quantized, &mut self.logits);
        Ok(self.logits.par_chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }
}

impl CausalLm for NativeLlama {
    type Cache = LlamaCache;

    fn new_cache(&self) -> LlamaCache {
        LlamaCache::new(self.kv, self.config.head_dim)
    }

    fn forward(&mut self, batch: &mut [SequenceStep<'_, LlamaCache>]) -> Result<Vec<Vec<f32>>, InferError> {
        let pool = Arc::clone(&self.pool);
        pool.install(|| self.run(batch))
    }
}

/// `out = x / rms(x) · weight`, row by row.
fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for (row, out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean = dot(row, row) / width as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// `(cos, sin)` of each frequency of a head at `position`.
fn rotation(position: usize, head_dim: usize, theta: f32) -> Vec<(f32, f32)> {
    (0..head_dim / 2)
        .map(|i| {
            let frequency = f64::from(theta).powf(-2.0 * i as f64 / head_dim as f64);
            let angle = position as f64 * frequency;
            (angle.cos() as f32, angle.sin() as f32)
        })
        .collect()
}

/// Rotates one head's query or key by its position.
fn rotate(head: &mut [f32], rotation: &[(f32, f32)], style: RopeStyle) {
    let half = head.len() / 2;
    for (i, &(cos, sin)) in rotation.iter().enumerate() {
        let (a, b) = match style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::Halves => (i, i + half),
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos - x1 * sin;
        head[b] = x0 * sin + x1 * cos;
    }
}
