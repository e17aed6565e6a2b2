//! The native engine: BERT's forward pass written for the CPU, in `f32`, without padding.
//!
//! The sequences of a batch are laid end to end as one `[tokens × hidden]` matrix, so every
//! dense layer (the fused query-key-value projection, the attention output, both feed-forward
//! matrices) is one large matrix product over real tokens only; attention alone runs per
//! sequence, and per sequence in parallel. Bias, activation, residual and layer norm are fused
//! into the passes that produce or consume each product.

use inferd_core::{EmbeddingModel, InferError, TokenLayout};
use rayon::prelude::*;

use super::config::{Activation, BertConfig};
use super::weights::Weights;
use crate::embedding::Pooling;
use crate::error::LoadError;
use crate::kernels::{self, PackedWeight, View, matmul};

/// One encoder layer's weights; matrices packed for [`kernels::linear`].
struct Layer {
    /// Query, key and value stacked: `[3·hidden × hidden]`.
    qkv: PackedWeight,
    qkv_bias: Vec<f32>,
    output: PackedWeight,
    output_bias: Vec<f32>,
    attention_norm: (Vec<f32>, Vec<f32>),
    intermediate: PackedWeight,
    intermediate_bias: Vec<f32>,
    feed_forward: PackedWeight,
    feed_forward_bias: Vec<f32>,
    output_norm: (Vec<f32>, Vec<f32>),
}

/// A BERT encoder with its pooling, on the CPU.
pub struct NativeBert {
    config: BertConfig,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embedding_norm: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    pooling: Pooling,
    normalize: bool,
    pool: rayon::ThreadPool,
}

impl NativeBert {
    /// Builds the engine from a checkpoint's weights, with its pooling and whether it normalises
    /// (`pipeline`); `bf16` packs the dense layers' weights in bf16, and is refused where
    /// [`crate::bf16_available`] is false; `threads` defaults to every core.
    pub fn new(
        weights: &Weights,
        config: &BertConfig,
        (pooling, normalize): (Pooling, bool),
        bf16: bool,
        threads: Option<usize>,
    ) -> Result<Self, LoadError> {
        if bf16 && !kernels::bf16_available() {
            return Err(LoadError::Device(format!(
                "bf16 needs AVX-512 BF16, and the CPU kernels in use are {} without it",
                inferd_core::cpu_level()
            )));
        }
        let pack = if bf16 { PackedWeight::bf16 } else { PackedWeight::new };
        let h = config.hidden_size;
        let i = config.intermediate_size;
        let norm = |name: &str| -> Result<(Vec<f32>, Vec<f32>), LoadError> {
            Ok((weights.f32(&format!("{name}.weight"), &[h])?, weights.f32(&format!("{name}.bias"), &[h])?))
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            let at = |name: &str| format!("encoder.layer.{index}.{name}");
            let mut qkv = Vec::with_capacity(3 * h * h);
            let mut qkv_bias = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                qkv.extend(weights.f32(&at(&format!("attention.self.{part}.weight")), &[h, h])?);
                qkv_bias.extend(weights.f32(&at(&format!("attention.self.{part}.bias")), &[h])?);
            }
            layers.push(Layer {
                qkv: pack(&qkv, 3 * h, h),
                qkv_bias,
                output: pack(&weights.f32(&at("attention.output.dense.weight"), &[h, h])?, h, h),
                output_bias: weights.f32(&at("attention.output.dense.bias"), &[h])?,
                attention_norm: norm(&at("attention.output.LayerNorm"))?,
                intermediate: pack(&weights.f32(&at("intermediate.dense.weight"), &[i, h])?, i, h),
                intermediate_bias: weights.f32(&at("intermediate.dense.bias"), &[i])?,
                feed_forward: pack(&weights.f32(&at("output.dense.weight"), &[h, i])?, h, i),
                feed_forward_bias: weights.f32(&at("output.dense.bias"), &[h])?,
                output_norm: norm(&at("output.LayerNorm"))?,
            });
        }
        let threads = threads.unwrap_or_else(inferd_core::cpu::default_threads).max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|index| format!("inferd-bert-{index}"))
            .build()
            .map_err(|err| LoadError::Device(format!("cannot start the engine's threads: {err}")))?;
        Ok(Self {
            word: weights.f32("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position: weights.f32("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?,
            token_type: weights.f32("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?,
            embedding_norm: norm("embeddings.LayerNorm")?,
            config: config.clone(),
            layers,
            pooling,
            normalize,
            pool,
        })
    }

    /// The final hidden states of `sequences`, end to end: `[total tokens × hidden]`.
    fn encode(&self, sequences: &[&[u32]]) -> Result<Vec<f32>, InferError> {
        let h = self.config.hidden_size;
        let eps = self.config.layer_norm_eps as f32;
        let tokens: usize = sequences.iter().map(|ids| ids.len()).sum();
        let starts: Vec<usize> = sequences
            .iter()
            .scan(0, |at, ids| {
                let start = *at;
                *at += ids.len();
                Some(start)
            })
            .collect();

        // Embeddings: word + position + token type 0, then layer norm.
        let mut x = vec![0f32; tokens * h];
        for (ids, &start) in sequences.iter().zip(&starts) {
            if ids.len() > self.config.max_position_embeddings {
                return Err(InferError::InvalidInput(format!(
                    "a sequence of {} tokens is longer than the model's {} positions",
                    ids.len(),
                    self.config.max_position_embeddings
                )));
            }
            for (position, &id) in ids.iter().enumerate() {
                let id = id as usize;
                if id >= self.config.vocab_size {
                    return Err(InferError::InvalidInput(format!("token id {id} is outside the vocabulary")));
                }
                let row = &mut x[(start + position) * h..(start + position + 1) * h];
                let word = &self.word[id * h..(id + 1) * h];
                let place = &self.position[position * h..(position + 1) * h];
                for (((v, w), p), t) in row.iter_mut().zip(word).zip(place).zip(&self.token_type[..h]) {
                    *v = w + p + t;
                }
                add_norm(row, &[], &self.embedding_norm, eps);
            }
        }

        let mut qkv = vec![0f32; tokens * 3 * h];
        let mut context = vec![0f32; tokens * h];
        let mut attended = vec![0f32; tokens * h];
        let mut inner = vec![0f32; tokens * self.config.intermediate_size];
        for layer in &self.layers {
            self.attention(layer, sequences, &starts, &x, &mut qkv, &mut context);
            // attended = LayerNorm(x + context · Wo + bo)
            self.dense(&context, &layer.output, &layer.output_bias, &mut attended, tokens);
            x.par_chunks_mut(h)
                .zip(attended.par_chunks(h))
                .for_each(|(row, residual)| add_norm(row, residual, &layer.attention_norm, eps));
            // x = LayerNorm(x + act(x · Wi + bi) · Wf + bf)
            let i = self.config.intermediate_size;
            self.dense(&x, &layer.intermediate, &layer.intermediate_bias, &mut inner, tokens);
            let activation = match self.config.activation {
                Activation::Gelu => kernels::gelu_erf_all,
                Activation::GeluTanh => kernels::gelu_tanh_all,
                Activation::Relu => kernels::relu_all,
            };
            inner[..tokens * i].par_chunks_mut(i).for_each(activation);
            self.dense(&inner, &layer.feed_forward, &layer.feed_forward_bias, &mut attended, tokens);
            x.par_chunks_mut(h)
                .zip(attended.par_chunks(h))
                .for_each(|(row, residual)| add_norm(row, residual, &layer.output_norm, eps));
        }
        Ok(x)
    }

    /// `out[tokens × n] = input[tokens × k] · weight[n × k]ᵀ + bias`.
    fn dense(&self, input: &[f32], weight: &PackedWeight, bias: &[f32], out: &mut [f32], tokens: usize) {
        let n = weight.n();
        for row in out[..tokens * n].chunks_mut(n) {
            row.copy_from_slice(bias);
        }
        kernels::linear(input, weight, out, tokens);
    }

    /// Multi-head self-attention of every sequence: fills `context` (`[tokens × hidden]`).
    fn attention(
        &self,
        layer: &Layer,
        sequences: &[&[u32]],
        starts: &[usize],
        x: &[f32],
        qkv: &mut [f32],
        context: &mut [f32],
    ) {
        let h = self.config.hidden_size;
        let tokens = x.len() / h;
        self.dense(x, &layer.qkv, &layer.qkv_bias, qkv, tokens);
        let heads = self.config.num_attention_heads;
        let d = self.config.head_size();
        let scale = 1.0 / (d as f32).sqrt();
        let qkv = &*qkv;

        // Each sequence writes its own rows of `context`.
        let mut parts = Vec::with_capacity(sequences.len());
        let mut rest = &mut context[..tokens * h];
        for ids in sequences {
            let (part, tail) = rest.split_at_mut(ids.len() * h);
            parts.push(part);
            rest = tail;
        }
        parts.into_par_iter().zip(starts.par_iter()).for_each(|(out, &start)| {
            let len = out.len() / h;
            let mut scores = vec![0f32; len * len];
            for head in 0..heads {
                let q = View { offset: start * 3 * h + head * d, row_stride: 3 * h, col_stride: 1 };
                let k = View { offset: start * 3 * h + h + head * d, row_stride: 1, col_stride: 3 * h };
                let v = View { offset: start * 3 * h + 2 * h + head * d, row_stride: 3 * h, col_stride: 1 };
                matmul((len, len, d), &mut scores, View::rows(0, len), false, qkv, q, qkv, k, scale, 1);
                scores.chunks_mut(len).for_each(kernels::softmax);
                let out_view = View { offset: head * d, row_stride: h, col_stride: 1 };
                matmul((len, d, len), out, out_view, false, &scores, View::rows(0, len), qkv, v, 1.0, 1);
            }
        });
    }

    /// Pools each sequence's states into one vector, normalised when the pipeline says so.
    fn pool(&self, states: &[f32], sequences: &[&[u32]]) -> Vec<Vec<f32>> {
        let h = self.config.hidden_size;
        let mut start = 0;
        let mut pooled = Vec::with_capacity(sequences.len());
        for ids in sequences {
            let rows = &states[start * h..(start + ids.len()) * h];
            start += ids.len();
            let mut vector = match self.pooling {
                Pooling::Cls => rows[..h].to_vec(),
                Pooling::Mean => {
                    let mut sum = vec![0f32; h];
                    for row in rows.chunks(h) {
                        sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                    }
                    let count = ids.len() as f32;
                    sum.iter_mut().for_each(|s| *s /= count);
                    sum
                }
                Pooling::Max => {
                    let mut max = vec![f32::NEG_INFINITY; h];
                    for row in rows.chunks(h) {
                        max.iter_mut().zip(row).for_each(|(m, v)| *m = m.max(*v));
                    }
                    max
                }
            };
            if self.normalize {
                let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                vector.iter_mut().for_each(|v| *v /= norm);
            }
            pooled.push(vector);
        }
        pooled
    }
}

fn add_norm(row: &mut [f32], residual: &[f32], norm: &(Vec<f32>, Vec<f32>), eps: f32) {
    kernels::add_layer_norm(row, residual, &norm.0, &norm.1, eps);
}

impl EmbeddingModel for NativeBert {
    /// Sequences are laid end to end: a batch costs its real tokens.
    fn token_layout(&self) -> TokenLayout {
        TokenLayout::Ragged
    }

    fn embed(&mut self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, InferError> {
        if sequences.iter().any(|ids| ids.is_empty()) {
            return Err(InferError::InvalidInput("an empty sequence cannot be embedded".into()));
        }
        self.pool.install(|| {
            let states = self.encode(sequences)?;
            Ok(self.pool(&states, sequences))
        })
    }
}
