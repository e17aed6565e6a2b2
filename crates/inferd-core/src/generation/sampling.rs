//! Choosing the next token from a model's logits: penalties, temperature, top-k, top-p, a seeded
//! random source, and the log-probabilities OpenAI's `logprobs` reports.
//!
//! The order of the steps is the one Hugging Face and vLLM use: penalties change the logits
//! first; `logprobs` are taken from those (before temperature and truncation, so they describe
//! the model, not the sampler); then temperature scales, top-k and top-p truncate, and a token
//! is drawn. Temperature 0 is greedy: the highest logit, the lowest id on ties.

use std::collections::{HashMap, HashSet};

use crate::error::InferError;
use crate::math;

/// The most alternatives `top_logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How one sequence picks its tokens. Validated by [`SamplingParams::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 for greedy; otherwise logits are divided by it. 0 to 2, as OpenAI allows.
    pub temperature: f32,
    /// Keep the smallest set of most likely tokens whose probabilities reach this (0 < p ≤ 1).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Seed of the random source: the same seed, prompt and parameters give the same tokens.
    pub seed: Option<u64>,
    /// Subtracted from the logit of every token already generated (-2 to 2).
    pub presence_penalty: f32,
    /// Subtracted once per earlier occurrence in the generated text (-2 to 2).
    pub frequency_penalty: f32,
    /// Hugging Face's repetition penalty over prompt and generated tokens (1: none; > 0).
    pub repetition_penalty: f32,
    /// Report log-probabilities of the chosen tokens, with this many alternatives (0–20) each.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Refuses values outside the ranges OpenAI documents (and Hugging Face's for
    /// `repetition_penalty`), naming the parameter.
    pub fn validate(&self) -> Result<(), InferError> {
        let invalid = |message: String| Err(InferError::InvalidInput(message));
        if !(0.0..=2.0).contains(&self.temperature) {
            return invalid(format!("temperature must be between 0 and 2, not {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(format!("top_p must be greater than 0 and at most 1, not {}", self.top_p));
        }
        for (name, value) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if !(-2.0..=2.0).contains(&value) {
                return invalid(format!("{name} must be between -2 and 2, not {value}"));
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return invalid(format!("repetition_penalty must be greater than 0, not {}", self.repetition_penalty));
        }
        if let Some(top) = self.logprobs
            && top > MAX_TOP_LOGPROBS
        {
            return invalid(format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, not {top}"));
        }
        Ok(())
    }
}

/// The log-probability of a chosen token and of the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// Natural log of the chosen token's probability.
    pub logprob: f32,
    /// The most likely tokens with theirs, most likely first (as many as asked for).
    pub top: Vec<(u32, f32)>,
}

/// splitmix64: a small, fast, well-mixed generator; enough for sampling, not for secrets.
#[derive(Debug, Clone)]
struct Random(u64);

impl Random {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One sequence's sampler: its parameters, random source and token counts for penalties.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    random: Random,
    /// Occurrences of each generated token (presence and frequency penalties).
    generated: HashMap<u32, u32>,
    /// Every token seen, prompt included (repetition penalty).
    seen: HashSet<u32>,
    /// Scratch: each token's weight in the last draw, kept to reuse its memory.
    weights: Vec<f64>,
}

impl Sampler {
    /// A sampler for a sequence whose prompt is `prompt`. Without a seed, the random source is
    /// seeded from the clock and an address (different for every request).
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or(0);
            let local = 0u8;
            nanos ^ (&local as *const u8 as u64).rotate_left(32)
        });
        let seen = if params.repetition_penalty == 1.0 { HashSet::new() } else { prompt.iter().copied().collect() };
        Self { params, random: Random(seed), generated: HashMap::new(), seen, weights: Vec::new() }
    }

    /// Chooses the next token from `logits` (changed in place by the penalties), with its
    /// log-probabilities when they were asked for, and remembers it for the penalties.
    pub fn sample(&mut self, logits: &mut [f32]) -> (u32, Option<TokenLogprobs>) {
        self.apply_penalties(logits);
        let id = if self.params.temperature == 0.0 { argmax(logits) } else { self.draw(logits) };
        let logprobs = self.params.logprobs.map(|top| logprobs_of(logits, id, top));
        *self.generated.entry(id).or_insert(0) += 1;
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(id);
        }
        (id, logprobs)
    }

    /// Whether [`Sampler::sample`] takes a pass of `exp` over the whole vocabulary: sampling at a
    /// temperature, or log-probabilities asked for. Greedy choice alone is a cheap maximum.
    pub fn is_costly(&self) -> bool {
        self.params.temperature != 0.0 || self.params.logprobs.is_some()
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let penalty = self.params.repetition_penalty;
        if penalty != 1.0 {
            for &id in &self.seen {
                if let Some(logit) = logits.get_mut(id as usize) {
                    *logit = if *logit > 0.0 { *logit / penalty } else { *logit * penalty };
                }
            }
        }
        let (presence, frequency) = (self.params.presence_penalty, self.params.frequency_penalty);
        if presence != 0.0 || frequency != 0.0 {
            for (&id, &count) in &self.generated {
                if let Some(logit) = logits.get_mut(id as usize) {
                    *logit -= presence + frequency * count as f32;
                }
            }
        }
    }

    /// Temperature, top-k and top-p, then a draw from what is left.
    ///
    /// Nothing here sorts the whole vocabulary (49,152 tokens for SmolLM2, several milliseconds
    /// per token, on the scheduler's thread while the model waits): without truncation the draw
    /// walks the tokens in id order, top-k sorts only its k tokens, and top-p sorts the most
    /// likely tokens a few at a time until they reach p.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let max = logits.iter().copied().filter(|l| l.is_finite()).fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return 0;
        }
        // Every token's weight, once: exp((logit − max) / temperature), 0 for non-finite logits.
        // The exponential in f32, vectorised (libm's, one token at a time, took about a
        // millisecond per token for 49,152 logits); weights are added up in f64.
        let inverse_temperature = 1.0 / self.params.temperature;
        let weights = &mut self.weights;
        weights.clear();
        weights.extend(logits.iter().map(|&logit| {
            let weight = math::exp((logit - max) * inverse_temperature);
            if logit.is_finite() { f64::from(weight) } else { 0.0 }
        }));
        let (top_k, top_p) = (self.params.top_k, f64::from(self.params.top_p));
        let finite = logits.iter().filter(|l| l.is_finite()).count();
        if (top_k == 0 || top_k >= finite) && top_p >= 1.0 {
            // Every token stays: the draw's order does not change the distribution.
            return pick(&mut self.random, weights) as u32;
        }
        let mut candidates: Vec<(u32, f32)> =
            logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(id, &l)| (id as u32, l)).collect();
        // Most likely first, lowest id first among equals: the order decides truncation.
        let by_likelihood = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let weight_of = |candidates: &[(u32, f32)]| -> Vec<f64> {
            candidates.iter().map(|&(id, _)| weights[id as usize]).collect()
        };
        let kept = if top_k > 0 && top_k < finite {
            candidates.select_nth_unstable_by(top_k, by_likelihood);
            candidates.truncate(top_k);
            candidates.sort_unstable_by(by_likelihood);
            let kept = weight_of(&candidates);
            nucleus(&kept, kept.iter().sum(), top_p)
        } else {
            // Top-p alone: the most likely 64, 256, … tokens, sorted, until they reach p.
            let total: f64 = weights.iter().sum();
            let mut sorted = 64.min(finite);
            loop {
                if sorted < finite {
                    candidates.select_nth_unstable_by(sorted, by_likelihood);
                }
                candidates[..sorted].sort_unstable_by(by_likelihood);
                let kept = nucleus(&weight_of(&candidates[..sorted]), total, top_p);
                if kept < sorted || sorted == finite {
                    break kept;
                }
                sorted = (sorted * 4).min(finite);
            }
        };
        candidates[pick(&mut self.random, &weight_of(&candidates[..kept]))].0
    }
}

/// A random index of `weights`, each as likely as its weight (the last one with a weight when
/// rounding leaves the target past the end).
fn pick(random: &mut Random, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut target = random.next_f64() * total;
    let mut last = 0;
    for (index, &weight) in weights.iter().enumerate().filter(|(_, w)| **w > 0.0) {
        if target < weight {
            return index;
        }
        target -= weight;
        last = index;
    }
    last
}

/// How many of `weights` (most likely first, out of `total`) top-p keeps: the fewest whose share
/// reaches `top_p`, or all of them when they do not.
fn nucleus(weights: &[f64], total: f64, top_p: f64) -> usize {
    if top_p >= 1.0 {
        return weights.len();
    }
    let mut share = 0.0;
    for (index, weight) in weights.iter().enumerate() {
        share += weight / total;
        if share >= top_p {
            return index + 1;
        }
    }
    weights.len()
}

/// The index of the largest finite logit, the lowest on ties (0 when there is none).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_logit = f32::NEG_INFINITY;
    for (id, &logit) in logits.iter().enumerate() {
        if logit > best_logit {
            best = id;
            best_logit = logit;
        }
    }
    best as u32
}

/// `log_softmax(logits)[id]` and the `top` most likely tokens with theirs.
fn logprobs_of(logits: &[f32], id: u32, top: usize) -> TokenLogprobs {
    let max = logits.iter().copied().filter(|l| l.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| if l.is_finite() { f64::from(math::exp(l - max)) } else { 0.0 }).sum();
    let log_total = max as f64 + sum.ln();
    let logprob = |id: u32| logits.get(id as usize).map_or(f32::NEG_INFINITY, |&l| (f64::from(l) - log_total) as f32);
    let mut best: Vec<u32> = Vec::with_capacity(top + 1);
    if top > 0 {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        if top < order.len() {
            order.select_nth_unstable_by(top, by_logit);
            order.truncate(top);
        }
        order.sort_unstable_by(by_logit);
        best = order;
    }
    TokenLogprobs { logprob: logprob(id), top: best.into_iter().map(|id| (id, logprob(id))).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams { temperature, ..SamplingParams::default() }
    }

    #[test]
    fn greedy_takes_the_highest_logit_and_the_lowest_id_on_ties() {
        let mut sampler = Sampler::new(params(0.0), &[]);
        assert_eq!(sampler.sample(&mut [0.5, 2.0, 2.0, -1.0]).0, 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn a_seed_reproduces_the_draws_and_top_k_1_is_greedy() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let seeded = SamplingParams { seed: Some(7), ..params(1.0) };
        let draws = |p: &SamplingParams| {
            let mut sampler = Sampler::new(p.clone(), &[]);
            (0..20).map(|_| sampler.sample(&mut logits.clone()).0).collect::<Vec<_>>()
        };
        assert_eq!(draws(&seeded), draws(&seeded));
        assert_ne!(draws(&seeded), draws(&SamplingParams { seed: Some(8), ..seeded.clone() }));
        let top1 = SamplingParams { top_k: 1, ..seeded.clone() };
        assert!(draws(&top1).iter().all(|&id| id == argmax(&logits)));
        // A tiny top_p keeps only the most likely token too.
        let nucleus = SamplingParams { top_p: 1e-6, ..seeded };
        assert!(draws(&nucleus).iter().all(|&id| id == argmax(&logits)));
    }

    #[test]
    fn draws_follow_the_distribution() {
        // p = softmax([ln 1, ln 3]) = [0.25, 0.75].
        let mut sampler = Sampler::new(SamplingParams { seed: Some(1), ..params(1.0) }, &[]);
        let ones = (0..20_000).filter(|_| sampler.sample(&mut [0.0, 3f32.ln()]).0 == 1).count();
        assert!((14_400..15_600).contains(&ones), "{ones}");
    }

    #[test]
    fn top_k_and_top_p_keep_only_the_most_likely_tokens() {
        // 1,000 tokens, logits falling with the id but shuffled across the vocabulary, so that
        // the most likely tokens are not the first ids.
        let rank = |id: u32| (id * 7919) % 1000;
        let logits: Vec<f32> = (0..1000).map(|id| -(rank(id) as f32) * 0.01).collect();
        let probabilities: Vec<f64> = {
            let weights: Vec<f64> = logits.iter().map(|&l| f64::from(l).exp()).collect();
            let total: f64 = weights.iter().sum();
            weights.iter().map(|w| w / total).collect()
        };
        // The fewest most likely tokens reaching half the probability: far more than 64, so
        // top-p widens its sorted prefix.
        let mut share = 0.0;
        let nucleus = (0..1000)
            .position(|r| {
                share += probabilities[(0..1000).find(|&id| rank(id) == r).unwrap() as usize];
                share >= 0.5
            })
            .unwrap() as u32
            + 1;
        assert!(nucleus > 64, "{nucleus}");
        let draws = |params: SamplingParams| {
            let mut sampler = Sampler::new(params, &[]);
            (0..4000).map(|_| rank(sampler.sample(&mut logits.clone()).0)).collect::<Vec<_>>()
        };
        let top_p = draws(SamplingParams { top_p: 0.5, seed: Some(3), ..params(1.0) });
        assert!(top_p.iter().all(|&r| r < nucleus));
        assert!(top_p.iter().any(|&r| r >= 64) && top_p.iter().any(|&r| r >= nucleus * 3 / 4));
        let top_k = draws(SamplingParams { top_k: 5, seed: Some(3), ..params(1.0) });
        assert!(top_k.iter().all(|&r| r < 5) && (0..5).all(|r| top_k.contains(&r)));
        // Without truncation every token may come.
        let all = draws(SamplingParams { seed: Some(3), ..params(1.0) });
        assert!(all.iter().any(|&r| r >= nucleus));
    }

    #[test]
    fn logprobs_are_log_softmax_with_the_best_alternatives() {
        let mut sampler = Sampler::new(SamplingParams { logprobs: Some(2), ..params(0.0) }, &[]);
        let (id, logprobs) = sampler.sample(&mut [1.0, 3.0, 2.0]);
        let logprobs = logprobs.unwrap();
        let total = (1f64.exp() + 3f64.exp() + 2f64.exp()).ln();
        assert_eq!(id, 1);
        assert!((f64::from(logprobs.logprob) - (3.0 - total)).abs() < 1e-6);
        assert_eq!(logprobs.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((f64::from(logprobs.top[1].1) - (2.0 - total)).abs() < 1e-6);
    }

    #[test]
    fn penalties_push_repeated_tokens_down() {
        let presence = SamplingParams { presence_penalty: 2.0, ..params(0.0) };
        let mut sampler = Sampler::new(presence, &[]);
        assert_eq!(sampler.sample(&mut [1.0, 0.5]).0, 0);
        // Token 0 was generated: 1.0 - 2.0 < 0.5.
        assert_eq!(sampler.sample(&mut [1.0, 0.5]).0, 1);
        let repetition = SamplingParams { repetition_penalty: 4.0, ..params(0.0) };
        // Token 0 is in the prompt: 1.0 / 4 < 0.5.
        assert_eq!(Sampler::new(repetition, &[0]).sample(&mut [1.0, 0.5]).0, 1);
    }

    #[test]
    fn out_of_range_parameters_are_refused_by_name() {
        for (bad, name) in [
            (SamplingParams { temperature: 2.5, ..params(1.0) }, "temperature"),
            (SamplingParams { temperature: -0.1, ..params(1.0) }, "temperature"),
            (SamplingParams { top_p: 0.0, ..params(1.0) }, "top_p"),
            (SamplingParams { frequency_penalty: 3.0, ..params(1.0) }, "frequency_penalty"),
            (SamplingParams { repetition_penalty: 0.0, ..params(1.0) }, "repetition_penalty"),
            (SamplingParams { logprobs: Some(21), ..params(1.0) }, "top_logprobs"),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
        assert!(params(0.0).validate().is_ok());
    }
}
